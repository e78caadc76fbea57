//! Instance normalisation, fused with ReLU and the residual add.
//!
//! The statistics are kept apart from their use so that tiled inference can share one set of
//! global statistics between all tiles: [`moments`] accumulates per-channel sums in f64 (burn's
//! naive f32 reductions drift by percents on large planes; these do not), [`NormStats`] turns
//! them into mean and 1/σ, and [`apply`] normalises in place.

use rayon::prelude::*;

/// Per-channel Σx and Σx² (f64) and the pixel count.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub sum: Vec<f64>,
    pub sumsq: Vec<f64>,
    pub count: u64,
}

impl Moments {
    pub fn zeros(c: usize) -> Self {
        Moments {
            sum: vec![0.0; c],
            sumsq: vec![0.0; c],
            count: 0,
        }
    }

    pub fn add(&mut self, other: &Moments) {
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sumsq.iter_mut().zip(&other.sumsq) {
            *a += b;
        }
        self.count += other.count;
    }

    /// Mean and 1/sqrt(biased variance + eps) per channel.
    pub fn stats(&self, eps: f64) -> NormStats {
        let (mean, inv_std) = self
            .sum
            .iter()
            .zip(&self.sumsq)
            .map(|(&s, &q)| channel_stats(s, q, self.count, eps))
            .unzip();
        NormStats { mean, inv_std }
    }
}

/// Mean and 1/sqrt(biased variance + eps) of one channel from its Σx, Σx² and count.
pub fn channel_stats(sum: f64, sumsq: f64, count: u64, eps: f64) -> (f32, f32) {
    let n = count.max(1) as f64;
    let m = sum / n;
    let var = (sumsq / n - m * m).max(0.0);
    (m as f32, (1.0 / (var + eps).sqrt()) as f32)
}

#[derive(Clone, Debug, PartialEq)]
pub struct NormStats {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Lanes of the float32 partial sums in [`moments_region`].
const LANES: usize = 16;
/// Lanes of the float64 sums in [`backward`].
const LANES64: usize = 8;

/// Σx and Σx² (f64) of the rectangle `rows × cols` of one plane `w` wide.
pub fn plane_sums(
    plane: &[f32],
    w: usize,
    rows: (usize, usize),
    cols: (usize, usize),
) -> (f64, f64) {
    let (mut s, mut q) = (0.0f64, 0.0f64);
    for y in rows.0..rows.1 {
        let row = &plane[y * w + cols.0..y * w + cols.1];
        // f32 partial sums over short runs in fixed lanes (independent chains that
        // vectorise, the same on every ISA), f64 across them.
        for chunk in row.chunks(64) {
            let (mut ps, mut pq) = ([0.0f32; LANES], [0.0f32; LANES]);
            let mut vs = chunk.chunks_exact(LANES);
            for v in &mut vs {
                for l in 0..LANES {
                    ps[l] += v[l];
                    pq[l] += v[l] * v[l];
                }
            }
            for (l, &v) in vs.remainder().iter().enumerate() {
                ps[l] += v;
                pq[l] += v * v;
            }
            s += ps.iter().sum::<f32>() as f64;
            q += pq.iter().sum::<f32>() as f64;
        }
    }
    (s, q)
}

/// Moments of the rectangle `[y0,y1)×[x0,x1)` of each of the `c` planes of `h×w` in `x`.
pub fn moments_region(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    rows: (usize, usize),
    cols: (usize, usize),
) -> Moments {
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| plane_sums(&x[ch * h * w..(ch + 1) * h * w], w, rows, cols))
        .collect();
    Moments {
        sum: per.iter().map(|p| p.0).collect(),
        sumsq: per.iter().map(|p| p.1).collect(),
        count: ((rows.1 - rows.0) * (cols.1 - cols.0)) as u64,
    }
}

#[cfg(test)]
pub fn moments(x: &[f32], c: usize, h: usize, w: usize) -> Moments {
    moments_region(x, c, h, w, (0, h), (0, w))
}

/// `x ← γ·(x − μ)/σ + β`, then ReLU if asked, then `+ residual` if given; in place.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    x: &mut [f32],
    c: usize,
    hw: usize,
    st: &NormStats,
    gamma: &[f32],
    beta: &[f32],
    relu: bool,
    residual: Option<&[f32]>,
) {
    x.par_chunks_mut(hw)
        .take(c)
        .enumerate()
        .for_each(|(ch, plane)| {
            let res = residual.map(|r| &r[ch * hw..(ch + 1) * hw]);
            apply_plane(
                plane,
                st.mean[ch],
                st.inv_std[ch],
                gamma[ch],
                beta[ch],
                relu,
                res,
            );
        });
}

/// [`apply`] on one channel's plane.
#[inline]
fn apply_plane(
    plane: &mut [f32],
    mean: f32,
    inv_std: f32,
    gamma: f32,
    beta: f32,
    relu: bool,
    residual: Option<&[f32]>,
) {
    let scale = gamma * inv_std;
    let shift = beta - mean * scale;
    match (relu, residual) {
        (false, None) => plane.iter_mut().for_each(|v| *v = *v * scale + shift),
        (true, None) => plane
            .iter_mut()
            .for_each(|v| *v = (*v * scale + shift).max(0.0)),
        (r, Some(res)) => {
            for (v, &a) in plane.iter_mut().zip(res) {
                let y = *v * scale + shift;
                *v = a + if r { y.max(0.0) } else { y };
            }
        }
    }
}

/// Training's instance norm of every plane of a batch (`n·c` planes of `h × w`) in one
/// parallel pass: each plane's own statistics, x̂ into `xhat`, `γ·x̂ + β` (ReLU, `+ residual`)
/// in place, each plane's 1/σ into `inv_std`. The same sums and arithmetic as [`moments_region`]
/// and [`apply`] (x̂ is `apply` with γ = 1, β = 0), bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn train(
    x: &mut [f32],
    xhat: &mut [f32],
    inv_std: &mut [f32],
    c: usize,
    (h, w): (usize, usize),
    eps: f64,
    gamma: &[f32],
    beta: &[f32],
    relu: bool,
    residual: Option<&[f32]>,
) {
    let hw = h * w;
    x.par_chunks_mut(hw)
        .zip(xhat.par_chunks_mut(hw))
        .zip(inv_std.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((plane, xh), inv))| {
            let (s, q) = plane_sums(plane, w, (0, h), (0, w));
            let (mean, is) = channel_stats(s, q, hw as u64, eps);
            *inv = is;
            xh.copy_from_slice(plane);
            apply_plane(xh, mean, is, 1.0, 0.0, false, None);
            let ch = i % c;
            let res = residual.map(|r| &r[i * hw..(i + 1) * hw]);
            apply_plane(plane, mean, is, gamma[ch], beta[ch], relu, res);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Training's one-pass norm gives the bits of the statistics-then-apply path (x̂ as
    /// `apply` with γ = 1, β = 0), with and without ReLU and the residual add.
    #[test]
    fn the_training_pass_equals_moments_then_apply_bit_for_bit() {
        let mut r = crate::rng::Rng::new(3);
        let (n, c, h, w) = (3usize, 5usize, 7usize, 37usize);
        let hw = h * w;
        let mut v = |len: usize| (0..len).map(|_| r.f32() * 4.0 - 1.0).collect::<Vec<f32>>();
        let (x, res, gamma, beta) = (v(n * c * hw), v(n * c * hw), v(c), v(c));
        let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        for relu in [false, true] {
            for residual in [None, Some(res.as_slice())] {
                let (mut y, mut xhat, mut inv) = (x.clone(), vec![0.0; x.len()], vec![0.0; n * c]);
                train(
                    &mut y,
                    &mut xhat,
                    &mut inv,
                    c,
                    (h, w),
                    1e-5,
                    &gamma,
                    &beta,
                    relu,
                    residual,
                );
                for s in 0..n {
                    let plane = |a: &[f32]| a[s * c * hw..(s + 1) * c * hw].to_vec();
                    let st = moments_region(&plane(&x), c, h, w, (0, h), (0, w)).stats(1e-5);
                    let (mut want, mut want_hat) = (plane(&x), plane(&x));
                    let ones = vec![1.0; c];
                    apply(&mut want_hat, c, hw, &st, &ones, &vec![0.0; c], false, None);
                    let rs = residual.map(plane);
                    apply(&mut want, c, hw, &st, &gamma, &beta, relu, rs.as_deref());
                    assert_eq!(bits(&plane(&y)), bits(&want), "relu {relu}");
                    assert_eq!(bits(&plane(&xhat)), bits(&want_hat));
                    assert_eq!(bits(&inv[s * c..(s + 1) * c]), bits(&st.inv_std));
                }
            }
        }
    }

    #[test]
    fn moments_are_accurate_on_large_planes() {
        // 10M × 0.1: a naive f32 sum is ~9% off here.
        let x = vec![0.1f32; 10_000_000];
        let m = moments(&x, 1, 1000, 10_000);
        let st = m.stats(1e-5);
        assert!((st.mean[0] - 0.1).abs() < 1e-6, "{}", st.mean[0]);
    }

    #[test]
    fn apply_normalises_and_fuses() {
        let x: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, -1.0, -1.0, 1.0, 1.0];
        let m = moments(&x, 2, 2, 2);
        let st = m.stats(0.0);
        let mut y = x.clone();
        apply(&mut y, 2, 4, &st, &[1.0, 2.0], &[0.0, 1.0], false, None);
        let s = 1.0 / 1.25f32.sqrt();
        let want = [-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s, -1.0, -1.0, 3.0, 3.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        let mut z = x.clone();
        let res = vec![10.0f32; 8];
        apply(
            &mut z,
            2,
            4,
            &st,
            &[1.0, 2.0],
            &[0.0, 1.0],
            true,
            Some(&res),
        );
        assert!((z[0] - 10.0).abs() < 1e-6 && (z[3] - (10.0 + 1.5 * s)).abs() < 1e-5);
    }
}

/// Backward of `y = γ·x̂ + β` with `x̂ = (x − μ)·inv_std` over one sample's `c` planes of
/// `hw`: writes dx (every element), and adds to dγ, dβ. `dy` is the gradient at `y` (after
/// any ReLU mask).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    xhat: &[f32],
    dy: &[f32],
    c: usize,
    hw: usize,
    inv_std: &[f32],
    gamma: &[f32],
    dgamma: &mut [f64],
    dbeta: &mut [f64],
    dx: &mut [f32],
) {
    assert_eq!(dx.len(), c * hw, "norm backward: dx size");
    let sums: Vec<(f64, f64)> = dx
        .par_chunks_mut(hw)
        .enumerate()
        .map(|(ch, dxp)| {
            let (xh, g) = (&xhat[ch * hw..(ch + 1) * hw], &dy[ch * hw..(ch + 1) * hw]);
            // Float64 sums in fixed lanes: independent chains that vectorise (one chain was
            // bound by the add's latency), the same on every ISA.
            let (mut lg, mut lgx) = ([0.0f64; LANES64], [0.0f64; LANES64]);
            let (mut xs, mut gs) = (xh.chunks_exact(LANES64), g.chunks_exact(LANES64));
            for (a, b) in (&mut xs).zip(&mut gs) {
                for l in 0..LANES64 {
                    lg[l] += b[l] as f64;
                    lgx[l] += (a[l] * b[l]) as f64;
                }
            }
            for (l, (&a, &b)) in xs.remainder().iter().zip(gs.remainder()).enumerate() {
                lg[l] += b as f64;
                lgx[l] += (a * b) as f64;
            }
            let (sg, sgx) = (lg.iter().sum::<f64>(), lgx.iter().sum::<f64>());
            // dx̂ = γ·dy; dx = inv_std·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))
            let n = hw as f64;
            let m1 = (gamma[ch] as f64 * sg / n) as f32;
            let m2 = (gamma[ch] as f64 * sgx / n) as f32;
            let (gm, is) = (gamma[ch], inv_std[ch]);
            for ((d, &a), &b) in dxp.iter_mut().zip(xh).zip(g) {
                *d = is * (gm * b - m1 - a * m2);
            }
            (sgx, sg)
        })
        .collect();
    for (ch, (sgx, sg)) in sums.into_iter().enumerate() {
        dgamma[ch] += sgx;
        dbeta[ch] += sg;
    }
}

#[cfg(test)]
mod grad_tests {
    use super::*;

    #[test]
    fn norm_backward_matches_finite_differences() {
        let (c, hw) = (2, 10);
        let mut r = crate::rng::Rng::new(5);
        let x: Vec<f32> = (0..c * hw).map(|_| r.f32() * 4.0 - 1.0).collect();
        let dy: Vec<f32> = (0..c * hw).map(|_| r.f32() - 0.5).collect();
        let (gamma, beta) = (vec![1.3f32, -0.7], vec![0.2f32, 0.1]);
        let eps = 1e-5;
        let f = |x: &[f32]| -> f64 {
            let st = moments(x, c, 1, hw).stats(eps);
            let mut y = x.to_vec();
            apply(&mut y, c, hw, &st, &gamma, &beta, false, None);
            y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let st = moments(&x, c, 1, hw).stats(eps);
        let xhat: Vec<f32> = (0..c * hw)
            .map(|i| (x[i] - st.mean[i / hw]) * st.inv_std[i / hw])
            .collect();
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        let mut dx = vec![f32::NAN; c * hw];
        backward(
            &xhat,
            &dy,
            c,
            hw,
            &st.inv_std,
            &gamma,
            &mut dg,
            &mut db,
            &mut dx,
        );
        for i in 0..c * hw {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += 1e-2;
            m[i] -= 1e-2;
            let num = (f(&p) - f(&m)) / 2e-2;
            assert!(
                (num - dx[i] as f64).abs() < 2e-3,
                "dx[{i}] {num} vs {}",
                dx[i]
            );
        }
        let want_db: f64 = dy[..hw].iter().map(|&v| v as f64).sum();
        assert!((db[0] - want_db).abs() < 1e-6);
    }
}
