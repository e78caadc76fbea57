//! Helpers shared by tests: where `../shared` is, and skips that are visible, counted and,
//! under `IMPASTO_STRICT_TESTS=1` (which `.ci/run` sets), failures: a green strict run has
//! compared everything against the reference tensors, run every tool and every path this
//! machine can run.
use std::io::Write;
use std::path::PathBuf;

/// The shared data folder: `$IMPASTO_SHARED`, else `../shared` beside the repository.
pub fn shared_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("IMPASTO_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    p.join("README.md").exists().then_some(p)
}

/// A file under the shared folder, or `None` after printing a visible SKIP line (written
/// straight to stderr so the test harness does not swallow it).
pub fn shared(rel: &str, test: &str) -> Option<PathBuf> {
    match shared_dir() {
        Some(d) if d.join(rel).exists() => Some(d.join(rel)),
        _ => {
            // One line per test, however many files it looked for.
            static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
            let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
            if !said.iter().any(|t| t == test) {
                said.push(test.to_string());
                drop(said);
                skip(
                    test,
                    &format!("../shared/{rel} not found (set IMPASTO_SHARED)"),
                );
            }
            None
        }
    }
}

/// Whether a skip is a failure: `IMPASTO_STRICT_TESTS=1`.
pub fn strict() -> bool {
    std::env::var_os("IMPASTO_STRICT_TESTS").is_some_and(|v| v == "1")
}

/// `test` cannot run here for want of `what` (a file, a program, a permission): a
/// `SKIPPED` line on stderr, or under [`strict`] a failure naming what is missing.
pub fn skip(test: &str, what: &str) {
    assert!(
        !strict(),
        "{test}: {what} (IMPASTO_STRICT_TESTS=1 makes a skipped test a failure)"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {what}");
}

/// `test` (or part of it) needs a CPU feature this machine lacks: a `SKIPPED (cpu)` line,
/// strict or not, since no install brings it; `.ci/run` counts these apart.
pub fn skip_cpu(test: &str, what: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED (cpu) {test}: {what}");
}

/// A generated RGB test image: gradients plus a fine diagonal pattern.
pub fn photo(w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    }))
}

/// The GPU backend on the best adapter this machine has (a software one, lavapipe, where
/// there is no GPU), opened once; `None` after a skip when there is none.
#[cfg(feature = "gpu")]
pub fn gpu() -> Option<crate::backend::Wgpu> {
    static GPU: std::sync::OnceLock<Result<crate::backend::Wgpu, String>> =
        std::sync::OnceLock::new();
    match GPU.get_or_init(|| crate::backend::Wgpu::best().map_err(|e| e.to_string())) {
        Ok(g) => Some(g.clone()),
        Err(e) => {
            skip(
                "gpu",
                &format!("{e} (install mesa-vulkan-drivers for the software adapter)"),
            );
            None
        }
    }
}

/// A network of `n` styles (`config`'s shape) named `a`, `b`, `c`, … whose norm rows are
/// random and differ from style to style, so a wrong row shows in the output.
pub fn styled_model(
    mut config: crate::model::TransformerConfig,
    n: usize,
    seed: u64,
) -> crate::model::Transformer {
    use crate::model::{StyleEntry, Transformer};
    config.styles = n;
    let mut m = Transformer::init(config, seed);
    let mut rng = crate::rng::Rng::new(seed + 1);
    let seed_arch = m.config.final_norm;
    m.update_params(|plan, p| {
        for (spec, v) in plan.params.iter().zip(p.iter_mut()) {
            if spec.style.is_some() || (n == 1 && spec.name.starts_with("in")) {
                let base = if spec.name.ends_with(".weight") {
                    1.0
                } else {
                    0.0
                };
                for x in v.iter_mut() {
                    *x = base + (rng.f32() - 0.5) * 0.6;
                }
                // The seed network's output norm: keep tanh out of saturation.
                if seed_arch && spec.name == "in6.weight" {
                    v.fill(0.01);
                }
            }
        }
    });
    let names: Vec<StyleEntry> = (0..n)
        .map(|k| StyleEntry {
            name: ((b'a' + (k % 26) as u8) as char).to_string() + &"x".repeat(k / 26),
            ..Default::default()
        })
        .collect();
    m.set_styles(&names).expect("distinct names");
    m
}
