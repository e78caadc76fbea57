//! Tiled against whole-image inference on one image: the max and mean absolute difference
//! of the raw network output (0..255 scale) and of the 8-bit images.
//!
//!     cargo run --release --example tile_diff -- MODEL IMAGE [SIZE] [TILE]
use impasto::model::Transformer;
use impasto::stylize::{stylize_tensor, StylizeOptions};
use impasto::tensor::Tensor;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: tile_diff MODEL IMAGE [SIZE] [TILE]");
        std::process::exit(2);
    }
    let model = Transformer::load(args[1].as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let size: u32 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(2048);
    let tile: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(1024);
    let img = image::open(&args[2])
        .unwrap()
        .resize_exact(size, size, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut x = Tensor::zeros(1, 3, h, w);
    for (px, py, p) in img.enumerate_pixels() {
        for c in 0..3 {
            x.data[(c * h + py as usize) * w + px as usize] = p.0[c] as f32;
        }
    }
    let t = Instant::now();
    let whole = stylize_tensor(
        &model,
        &x,
        &StylizeOptions {
            tile_threshold: u64::MAX,
            ..Default::default()
        },
    )
    .expect("nothing cancels it");
    let tw = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let tiled = stylize_tensor(
        &model,
        &x,
        &StylizeOptions {
            tile,
            tile_threshold: 0,
            ..Default::default()
        },
    )
    .expect("nothing cancels it");
    let tt = t.elapsed().as_secs_f64();
    let mean = whole
        .data
        .iter()
        .zip(&tiled.data)
        .map(|(a, b)| (a - b).abs() as f64)
        .sum::<f64>()
        / whole.data.len() as f64;
    let q = |v: f32| v.round().clamp(0.0, 255.0) as i32;
    let max8 = whole
        .data
        .iter()
        .zip(&tiled.data)
        .map(|(a, b)| (q(*a) - q(*b)).abs())
        .max()
        .unwrap();
    println!(
        "{size}x{size}, tile {tile}: max abs diff {:.3e}, mean abs diff {mean:.3e} (0..255 scale); 8-bit images differ by at most {max8}; whole {tw:.1} s, tiled {tt:.1} s",
        whole.max_abs_diff(&tiled)
    );
}
