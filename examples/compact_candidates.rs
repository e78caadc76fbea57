//! Groundwork for the live models: the speed, FLOPs and
//! parameters of narrower / shallower configs of the johnson network, which the layer plan
//! makes a config change. Weights are random (speed does not depend on them); quality needs
//! distillation and is not measured here.
//!
//!     cargo run --release --example compact_candidates [RUNS]
//!
//! Run with `RAYON_NUM_THREADS=2` to match the benches. Prints a markdown table.
use impasto::model::{Arch, Transformer, TransformerConfig};
use impasto::tensor::Tensor;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let candidates: [([usize; 3], usize); 6] = [
        ([32, 64, 128], 5),
        ([24, 48, 96], 5),
        ([16, 32, 64], 5),
        ([16, 32, 64], 3),
        ([12, 24, 48], 3),
        ([8, 16, 32], 2),
    ];
    println!("| channels | residual blocks | parameters | GFLOP at 320×240 | ms at 320×240 | ms at 640×480 | fps at 320×240 |");
    println!("|---|---|---|---|---|---|---|");
    for (channels, res_blocks) in candidates {
        let mut config = TransformerConfig::new(Arch::Johnson);
        config.channels = channels;
        config.res_blocks = res_blocks;
        let m = Transformer::init(config, 1);
        let mut ms = Vec::new();
        for (w, h) in [(320usize, 240usize), (640, 480)] {
            let x = Tensor::from_vec(
                1,
                3,
                h,
                w,
                (0..3 * h * w).map(|i| (i % 251) as f32).collect(),
            );
            m.forward(&x); // warm-up
            let t: Vec<f64> = (0..runs)
                .map(|_| {
                    let t0 = Instant::now();
                    std::hint::black_box(m.forward(&x));
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ms.push(median(t));
        }
        println!(
            "| {channels:?} | {res_blocks} | {} | {:.2} | {:.1} | {:.1} | {:.0} |",
            m.plan().param_count(),
            m.flops(240, 320) / 1e9,
            ms[0],
            ms[1],
            1e3 / ms[0]
        );
    }
}
