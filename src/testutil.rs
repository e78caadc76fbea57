//! Helpers shared by tests: where `../shared` is, and a visible skip when it is missing.
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
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: ../shared/{rel} not found (set IMPASTO_SHARED)"
                );
            }
            None
        }
    }
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
