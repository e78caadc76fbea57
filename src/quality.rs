//! Artifact measures for stylized images, used by `impasto evaluate` and the built-in style
//! tests. Both work on luminance and are relative to its standard deviation, so they compare
//! across models and images.
//!
//! - [`grid_artifact`]: patterns locked to the pixel grid — the checkerboard that strided
//!   transposed convolutions leave, with period 2 or 4 after two ×2 upsampling stages. It is
//!   the largest Fourier coefficient at the 15 non-zero frequencies of period 2 and 4,
//!   |mean(Y·e^{-2πi(ux+vy)/4})|, over the luminance's standard deviation. Texture that is
//!   not locked to the grid averages out (≈ 1/√pixels); a checkerboard adds up.
//! - [`border_artifact`]: a frame along the edges (zero padding darkens or brightens it):
//!   (mean of the outer 4-pixel ring − mean of the next 4-pixel ring) over the standard
//!   deviation. Signed: texture makes it wander either way from image to image, a frame
//!   pushes it the same way every time, so average it over many images before taking its
//!   magnitude.

use crate::tensor::Tensor;

/// Rec. 601 luminance of an RGB tensor (0..255, batch 1), clamped to 0..255 as displayed.
pub fn luminance(t: &Tensor) -> Vec<f32> {
    assert_eq!((t.n, t.c), (1, 3));
    let hw = t.plane();
    (0..hw)
        .map(|i| {
            let c = |k: usize| t.data[k * hw + i].clamp(0.0, 255.0);
            0.299 * c(0) + 0.587 * c(1) + 0.114 * c(2)
        })
        .collect()
}

fn mean_std(y: &[f32]) -> (f64, f64) {
    let n = y.len().max(1) as f64;
    let m = y.iter().map(|&v| v as f64).sum::<f64>() / n;
    let v = y.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt().max(1e-9))
}

/// See the module documentation: the worst spectral peak ratio at the 15 grid frequencies,
/// over the three colour channels of an RGB tensor (0..255, batch 1, clamped as displayed).
pub fn grid_artifact(t: &Tensor) -> f64 {
    assert_eq!((t.n, t.c), (1, 3));
    let (h, w) = (t.h / 4 * 4, t.w / 4 * 4);
    if h < 32 || w < 32 {
        return 0.0;
    }
    let hann = |i: usize, n: usize| {
        0.5 - 0.5 * (std::f64::consts::TAU * (i as f64 + 0.5) / n as f64).cos()
    };
    let (wy, wx): (Vec<f64>, Vec<f64>) = (
        (0..h).map(|i| hann(i, h)).collect(),
        (0..w).map(|i| hann(i, w)).collect(),
    );
    // Bins around each grid frequency: ±1 is the peak (the window spreads a line over
    // three bins), Chebyshev distance 3..=5 the background.
    const OUT: i64 = 5;
    let mut worst = 0f64;
    for c in 0..3 {
        let plane = &t.data[c * t.plane()..(c + 1) * t.plane()];
        let mut p = vec![0f64; h * w];
        let mut mean = 0f64;
        for r in 0..h {
            for x in 0..w {
                let v = plane[r * t.w + x].clamp(0.0, 255.0) as f64;
                p[r * w + x] = v;
                mean += v;
            }
        }
        mean /= (h * w) as f64;
        for r in 0..h {
            for x in 0..w {
                p[r * w + x] = (p[r * w + x] - mean) * wy[r] * wx[x];
            }
        }
        // Row transforms at the needed column frequencies, computed once per bin.
        let row_dft = |kx: usize| -> Vec<(f64, f64)> {
            (0..h)
                .map(|r| {
                    let (mut re, mut im) = (0f64, 0f64);
                    for x in 0..w {
                        let ph = -std::f64::consts::TAU * ((kx * x) % w) as f64 / w as f64;
                        re += p[r * w + x] * ph.cos();
                        im += p[r * w + x] * ph.sin();
                    }
                    (re, im)
                })
                .collect()
        };
        let mut rows: std::collections::HashMap<usize, Vec<(f64, f64)>> = Default::default();
        let mut power = |ky: i64, kx: i64| -> f64 {
            let (ky, kx) = (
                ky.rem_euclid(h as i64) as usize,
                kx.rem_euclid(w as i64) as usize,
            );
            let row = rows.entry(kx).or_insert_with(|| row_dft(kx));
            let (mut re, mut im) = (0f64, 0f64);
            for (r, &(a, b)) in row.iter().enumerate() {
                let ph = -std::f64::consts::TAU * ((ky * r) % h) as f64 / h as f64;
                let (cs, sn) = (ph.cos(), ph.sin());
                re += a * cs - b * sn;
                im += a * sn + b * cs;
            }
            re * re + im * im
        };
        // (u, v) and (4-u, 4-v) are conjugates: half the grid suffices.
        for (u, v) in [
            (0, 1),
            (0, 2),
            (1, 0),
            (2, 0),
            (1, 1),
            (1, 2),
            (2, 1),
            (2, 2),
            (1, 3),
            (2, 3),
        ] {
            let (fy, fx) = ((u * h / 4) as i64, (v * w / 4) as i64);
            let (mut peak, mut bg, mut nbg) = (0f64, 0f64, 0usize);
            for dy in -OUT..=OUT {
                for dx in -OUT..=OUT {
                    let d = dy.abs().max(dx.abs());
                    if d == 2 {
                        continue;
                    }
                    let pw = power(fy + dy, fx + dx);
                    if d <= 1 {
                        peak += pw;
                    } else {
                        bg += pw;
                        nbg += 1;
                    }
                }
            }
            let ratio = peak / 9.0 / (bg / nbg as f64).max(1e-12);
            worst = worst.max(ratio);
        }
    }
    worst
}

/// See the module documentation. `y` is `h × w`, row-major; 0 for images under 24 pixels.
pub fn border_artifact(y: &[f32], h: usize, w: usize) -> f64 {
    const R: usize = 4;
    if h < 6 * R || w < 6 * R {
        return 0.0;
    }
    let ring = |k: usize| {
        // Pixels at distance k*R ..(k+1)*R from the nearest edge.
        let (mut sum, mut n) = (0f64, 0usize);
        for r in 0..h {
            for c in 0..w {
                let d = r.min(c).min(h - 1 - r).min(w - 1 - c);
                if d >= k * R && d < (k + 1) * R {
                    sum += y[r * w + c] as f64;
                    n += 1;
                }
            }
        }
        sum / n.max(1) as f64
    };
    let (_, std) = mean_std(y);
    (ring(0) - ring(1)) / std
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texture(h: usize, w: usize) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(5);
        (0..h * w)
            .map(|i| {
                let (r, c) = ((i / w) as f32, (i % w) as f32);
                128.0 + 40.0 * (r * 0.13 + c * 0.07).sin() + 40.0 * (rng.f32() - 0.5)
            })
            .collect()
    }

    fn rgb(y: &[f32], h: usize, w: usize) -> Tensor {
        let mut d = y.to_vec();
        d.extend_from_slice(y);
        d.extend_from_slice(y);
        Tensor::from_vec(1, 3, h, w, d)
    }

    #[test]
    fn grid_artifact_sees_a_checkerboard_and_not_a_texture() {
        let (h, w) = (128, 160);
        let clean = texture(h, w);
        let g0 = grid_artifact(&rgb(&clean, h, w));
        assert!(g0 < 4.0, "texture {g0}");
        // Add a faint period-2 checkerboard (5% of the texture's std).
        let checked: Vec<f32> = clean
            .iter()
            .enumerate()
            .map(|(i, v)| v + if (i / w + i % w) % 2 == 0 { 1.5 } else { -1.5 })
            .collect();
        let g1 = grid_artifact(&rgb(&checked, h, w));
        assert!(g1 > 3.0 * g0, "checkerboard {g1} vs {g0}");
    }

    #[test]
    fn border_artifact_sees_a_dark_frame() {
        let (h, w) = (96, 96);
        let clean = texture(h, w);
        let b0 = border_artifact(&clean, h, w).abs();
        let framed: Vec<f32> = clean
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (r, c) = (i / w, i % w);
                if r.min(c).min(h - 1 - r).min(w - 1 - c) < 3 {
                    v - 30.0
                } else {
                    *v
                }
            })
            .collect();
        let b1 = -border_artifact(&framed, h, w);
        assert!(b0 < 0.1 && b1 > 0.4, "{b0} {b1}");
    }
}
