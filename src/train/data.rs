//! The training data pipeline: a recursive scan of a photo folder, a deterministic order
//! (a fresh permutation per epoch from `--seed`), decode → resize → crop in parallel on a
//! background thread that keeps batches ready, and corrupt files skipped and counted.
//!
//! Everything random about an image (its crop) is derived from the seed, the epoch and its
//! index, so a resumed run sees exactly the batches an uninterrupted one would.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

pub const EXTS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// All images under `dir`, sorted. Each folder is entered once (link loops are skipped);
/// folders that cannot be read are left out. What was skipped is in [`Scan::warnings`].
pub fn scan_reporting(dir: &Path) -> Result<Scan> {
    let w = crate::walk::images(dir, &EXTS);
    if let Some((d, e)) = w.unreadable.iter().find(|(d, _)| d == dir) {
        return Err(Error::io(d, std::io::Error::new(e.kind(), e.to_string())));
    }
    let warnings = w.warnings().chain(w.errors()).collect();
    let mut files: Vec<PathBuf> = w.files.into_iter().map(|f| f.path).collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Data(format!(
            "{}: no images (jpg, png, webp) found",
            dir.display()
        )));
    }
    Ok(Scan { files, warnings })
}

/// What [`scan_reporting`] found.
pub struct Scan {
    pub files: Vec<PathBuf>,
    /// One line per folder skipped (a link loop, or unreadable).
    pub warnings: Vec<String>,
}

/// [`scan_reporting`] without the warnings.
pub fn scan(dir: &Path) -> Result<Vec<PathBuf>> {
    scan_reporting(dir).map(|s| s.files)
}

/// Where the stream stands: the next image is `order(epoch)[index]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPos {
    pub epoch: u64,
    pub index: usize,
}

/// The permutation of `n` files for an epoch.
pub fn order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(0x51)).shuffle(&mut v);
    v
}

/// Decode `path` and make a `size × size` RGB crop: shorter side resized to `size`, then a
/// crop placed by `rng` (or centred when `rng` is None).
pub fn load_crop(path: &Path, size: usize, rng: Option<&mut Rng>) -> Result<Vec<f32>> {
    let img = crate::imageio::read_path(path, &Default::default())?.image;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let s = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * s).round() as usize).max(size),
        ((h as f64 * s).round() as usize).max(size),
    );
    let img = if (nw, nh) == (w, h) {
        img.to_rgb8()
    } else {
        img.resize_exact(nw as u32, nh as u32, FilterType::Triangle)
            .to_rgb8()
    };
    let (x0, y0) = match rng {
        Some(r) => (r.below(nw - size + 1), r.below(nh - size + 1)),
        None => ((nw - size) / 2, (nh - size) / 2),
    };
    let mut out = vec![0.0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let p = img.get_pixel((x0 + x) as u32, (y0 + y) as u32).0;
            for c in 0..3 {
                out[(c * size + y) * size + x] = p[c] as f32;
            }
        }
    }
    Ok(out)
}

/// One batch and where the stream stands after it.
pub struct Batch {
    pub images: Tensor,
    pub next: DataPos,
    /// Files that failed to load while filling this batch (skipped).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Batches produced ahead of time on a background thread.
pub struct Loader {
    rx: Receiver<Batch>,
    pub files: usize,
}

impl Loader {
    pub fn new(files: Vec<PathBuf>, seed: u64, size: usize, batch: usize, start: DataPos) -> Self {
        let (tx, rx) = sync_channel(2);
        let n = files.len();
        std::thread::spawn(move || {
            let mut pos = start;
            let mut perm = order(n, seed, pos.epoch);
            let mut bad = 0usize;
            loop {
                let mut imgs: Vec<Vec<f32>> = Vec::with_capacity(batch);
                let mut skipped = Vec::new();
                while imgs.len() < batch {
                    // The next candidates, in stream order, decoded in parallel.
                    let want = batch - imgs.len();
                    let mut cand = Vec::with_capacity(want);
                    for _ in 0..want {
                        if pos.index >= n {
                            pos = DataPos {
                                epoch: pos.epoch + 1,
                                index: 0,
                            };
                            perm = order(n, seed, pos.epoch);
                        }
                        cand.push((pos, perm[pos.index]));
                        pos.index += 1;
                    }
                    let loaded: Vec<(usize, Result<Vec<f32>>)> = cand
                        .par_iter()
                        .map(|&(p, f)| {
                            let mut r = Rng::new(
                                seed ^ 0xc0ffee
                                    ^ p.epoch.wrapping_mul(1_000_003)
                                    ^ (p.index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
                            );
                            (f, load_crop(&files[f], size, Some(&mut r)))
                        })
                        .collect();
                    for (f, r) in loaded {
                        match r {
                            Ok(v) => imgs.push(v),
                            Err(e) => {
                                bad += 1;
                                skipped.push((files[f].clone(), e.to_string()));
                            }
                        }
                    }
                    if bad >= n && imgs.is_empty() {
                        // Every file is unreadable: stop rather than spin.
                        return;
                    }
                }
                let images = Tensor::from_vec(batch, 3, size, size, imgs.concat());
                if tx
                    .send(Batch {
                        images,
                        next: pos,
                        skipped,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        Loader { rx, files: n }
    }

    /// The next batch, or None if no file in the set can be read.
    pub fn next(&self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_deterministic_and_resumable() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..7u8 {
            let img = image::RgbImage::from_fn(40 + i as u32, 30, |x, y| {
                image::Rgb([i * 30, x as u8, y as u8])
            });
            img.save(d.path().join(format!("{i}.png"))).unwrap();
        }
        std::fs::write(d.path().join("bad.jpg"), b"not an image").unwrap();
        let files = scan(d.path()).unwrap();
        assert_eq!(files.len(), 8);
        let a = Loader::new(files.clone(), 3, 16, 3, DataPos::default());
        let seq: Vec<Batch> = (0..5).map(|_| a.next().unwrap()).collect();
        assert!(
            seq.iter().map(|b| b.skipped.len()).sum::<usize>() >= 1,
            "the bad file is skipped"
        );
        // Start again from the position after batch 2: the same batches 3 and 4.
        let b = Loader::new(files, 3, 16, 3, seq[2].next);
        for want in &seq[3..] {
            let got = b.next().unwrap();
            assert_eq!(got.images, want.images);
            assert_eq!(got.next, want.next);
        }
    }
}
