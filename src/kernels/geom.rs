//! What every convolution kernel shares, and nothing else: the geometry (padding, stride,
//! dilation and the index maps), a layer's weights as the kernels read them, its gradients,
//! the padding and gathering helpers and the pointer the row tasks write through. A leaf:
//! the GEMM, direct, Winograd and gradient kernels all read it, and it reads none of them.
use crate::tensor::Tensor;

/// A convolution layer's weights as every kernel reads them: `[c_out][c_in·k·k]`.
#[derive(Clone, Debug)]
pub struct ConvWeights {
    pub c_in: usize,
    pub c_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Gradients of one convolution, summed over the batch.
pub struct ConvGrad {
    /// d/dx, when asked for.
    pub dx: Option<Tensor>,
    /// d/dW in the layer's own `[c_out][c_in·k·k]` layout.
    pub dw: Vec<f32>,
    pub db: Vec<f32>,
}

/// How the border is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Zero,
    Reflect,
    /// Repeat the edge pixel.
    Replicate,
}

/// Geometry of one convolution: kernel, stride, padding (top, bottom, left, right) and the
/// input resampling that precedes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub k: usize,
    pub stride: usize,
    pub pad: [usize; 4],
    pub mode: PadMode,
    /// Nearest-neighbour upsampling factor applied before padding (1 = none).
    pub upsample: usize,
    /// Zero insertion between input pixels (transposed convolution), 1 = none.
    pub dilate: usize,
}

impl ConvGeom {
    /// For a padded `hp × wp` plane of an `h × w` input: the source row of each padded row
    /// and the source column of each padded column (negative: a zero), by this layer's
    /// padding before the first row and column and its mode.
    pub fn padded_sources(
        &self,
        h: usize,
        w: usize,
        hp: usize,
        wp: usize,
    ) -> (Vec<isize>, Vec<isize>) {
        let map = |n: usize, len: usize, before: usize| -> Vec<isize> {
            (0..n)
                .map(|p| pad_source(p as isize - before as isize, len, self.mode))
                .collect()
        };
        (map(hp, h, self.pad[0]), map(wp, w, self.pad[2]))
    }

    pub fn simple(k: usize, stride: usize, pad: usize, mode: PadMode) -> Self {
        ConvGeom {
            k,
            stride,
            pad: [pad; 4],
            mode,
            upsample: 1,
            dilate: 1,
        }
    }

    fn logical_len(&self, n: usize) -> usize {
        if self.dilate > 1 {
            (n - 1) * self.dilate + 1
        } else {
            n * self.upsample
        }
    }

    /// Output size for an input of `h × w`.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let lh = self.logical_len(h) + self.pad[0] + self.pad[1];
        let lw = self.logical_len(w) + self.pad[2] + self.pad[3];
        assert!(
            lh >= self.k && lw >= self.k,
            "convolution input {h}x{w} smaller than its kernel"
        );
        (
            (lh - self.k) / self.stride + 1,
            (lw - self.k) / self.stride + 1,
        )
    }

    /// For each output coordinate and kernel tap, the source index (or -1 for a zero).
    pub(crate) fn index_map(&self, n_in: usize, n_out: usize, pad_before: usize) -> Vec<i32> {
        let len = self.logical_len(n_in) as isize;
        let mut map = Vec::with_capacity(n_out * self.k);
        for o in 0..n_out {
            for t in 0..self.k {
                let mut l = (o * self.stride + t) as isize - pad_before as isize;
                let src = if l < 0 || l >= len {
                    match self.mode {
                        PadMode::Zero => -1,
                        PadMode::Reflect => {
                            l = reflect(l, len);
                            self.resample(l)
                        }
                        PadMode::Replicate => self.resample(l.clamp(0, len - 1)),
                    }
                } else {
                    self.resample(l)
                };
                map.push(src as i32);
            }
        }
        map
    }

    fn resample(&self, l: isize) -> isize {
        if self.dilate > 1 {
            if l % self.dilate as isize != 0 {
                -1
            } else {
                l / self.dilate as isize
            }
        } else {
            l / self.upsample as isize
        }
    }
}

/// `[a][b][k][k]` → `[b][a][k][k]` with each kernel rotated 180°: between a convolution and
/// its transposed convolution, in either direction (and between their weight gradients).
pub fn flip_transpose(w: &[f32], a: usize, b: usize, k: usize) -> Vec<f32> {
    use rayon::prelude::*;
    assert_eq!(w.len(), a * b * k * k, "kernel size");
    let mut t = vec![0.0f32; w.len()];
    // Row j of the result: a pure permutation, so the threads may share it out.
    let row = |(j, tj): (usize, &mut [f32])| {
        for i in 0..a {
            for y in 0..k {
                for x in 0..k {
                    tj[(i * k + (k - 1 - y)) * k + (k - 1 - x)] = w[((i * b + j) * k + y) * k + x];
                }
            }
        }
    };
    if t.is_empty() {
        return t;
    }
    if t.len() < 1 << 16 {
        t.chunks_mut(a * k * k).enumerate().for_each(row);
    } else {
        t.par_chunks_mut(a * k * k).enumerate().for_each(row);
    }
    t
}

/// One plane (`w` wide) with its padding written out into `dst`: padded row `r`, column
/// `c` is source pixel (`rows[r]`, `cols[c]`), or zero where either is negative. The
/// interior (the columns that read the source in order) is one copy per row.
pub fn pad_plane(src: &[f32], w: usize, rows: &[isize], cols: &[isize], dst: &mut [f32]) {
    let wp = cols.len();
    // The padded column that reads source column 0, when columns 0..w follow it in order.
    let interior = (0..(wp + 1).saturating_sub(w)).find(|&p| {
        cols[p..p + w]
            .iter()
            .enumerate()
            .all(|(i, &c)| c == i as isize)
    });
    for (r, &sy) in rows.iter().enumerate() {
        let row = &mut dst[r * wp..(r + 1) * wp];
        if sy < 0 {
            row.fill(0.0);
            continue;
        }
        let s = &src[sy as usize * w..(sy as usize + 1) * w];
        let (a, b) = match interior {
            Some(p) => {
                row[p..p + w].copy_from_slice(s);
                (p, p + w)
            }
            None => (0, 0),
        };
        for p in (0..a).chain(b..wp) {
            let sx = cols[p];
            row[p] = if sx < 0 { 0.0 } else { s[sx as usize] };
        }
    }
}

/// The inverse of [`pad_plane`] for gradients: `dst` (`h × w`, `w` wide) gets the padded
/// plane `src`'s interior (rows from `at.0`, columns from `at.1`), and every padding pixel
/// added onto the source pixel (`rows[r]`, `cols[c]`) it was read from (nothing where
/// either is negative).
pub fn fold_plane(
    src: &[f32],
    w: usize,
    rows: &[isize],
    cols: &[isize],
    at: (usize, usize),
    dst: &mut [f32],
) {
    let (wp, h) = (cols.len(), dst.len() / w);
    let (r0, c0) = at;
    // The interior maps one to one (copied, so `dst` needs no clearing first).
    for y in 0..h {
        dst[y * w..(y + 1) * w].copy_from_slice(&src[(r0 + y) * wp + c0..][..w]);
    }
    for (py, &sy) in rows.iter().enumerate() {
        if sy < 0 {
            continue;
        }
        let drow = &mut dst[sy as usize * w..(sy as usize + 1) * w];
        let srow = &src[py * wp..(py + 1) * wp];
        if !(r0..r0 + h).contains(&py) {
            drow.iter_mut()
                .zip(&srow[c0..c0 + w])
                .for_each(|(a, b)| *a += b);
        }
        for px in (0..c0).chain(c0 + w..wp) {
            let sx = cols[px];
            if sx >= 0 {
                drow[sx as usize] += srow[px];
            }
        }
    }
}

/// The source index that padded coordinate `l` (relative to the first real pixel) reads
/// in a line of `n` pixels, or -1 for a zero.
pub fn pad_source(l: isize, n: usize, mode: PadMode) -> isize {
    let n = n as isize;
    if l >= 0 && l < n {
        return l;
    }
    match mode {
        PadMode::Zero => -1,
        PadMode::Replicate => l.clamp(0, n - 1),
        PadMode::Reflect => reflect(l, n),
    }
}

pub(crate) fn reflect(l: isize, len: isize) -> isize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    let m = l.rem_euclid(period);
    if m < len {
        m
    } else {
        period - m
    }
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only dereferenced by tasks that write disjoint elements of a buffer
// that outlives them (each use says which part it owns).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: shared only between tasks writing disjoint elements.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn new(p: *mut f32) -> Self {
        SendPtr(p)
    }
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// The output columns `lo..hi` of `ox0..ox1` whose tap `kx` reads a source column inside a
/// `w`-wide row (no upsampling or dilation): column `ox` reads `stride·ox + kx − pad`, and
/// `lo` reads `s0`. The columns outside the run read the padding. (An empty run, `lo == hi`,
/// may lie wholly in the padding; `s0` is then unused.)
pub(crate) fn interior(
    g: &ConvGeom,
    kx: usize,
    w: usize,
    ox0: usize,
    ox1: usize,
) -> (usize, usize, usize) {
    let (s, off) = (g.stride as isize, kx as isize - g.pad[2] as isize);
    // The first column with stride·ox + off ≥ 0 and the first past stride·ox + off ≤ w − 1.
    let first = (-off).max(0).div_euclid(s) + isize::from((-off).max(0) % s != 0);
    let end = if w as isize - off <= 0 {
        0
    } else {
        (w as isize - 1 - off).div_euclid(s) + 1
    };
    let lo = first.clamp(ox0 as isize, ox1 as isize) as usize;
    let hi = end.clamp(lo as isize, ox1 as isize) as usize;
    let s0 = if hi > lo {
        (s * lo as isize + off) as usize
    } else {
        0
    };
    (lo, hi, s0)
}

/// Gather the patch matrix of output pixels `p0..p1`: row `(c, ky, kx)`, one column per
/// pixel, padding and resampling resolved through the index maps.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather(
    g: &ConvGeom,
    x: &[f32],
    c_in: usize,
    h: usize,
    w: usize,
    ymap: &[i32],
    xmap: &[i32],
    wo: usize,
    p0: usize,
    p1: usize,
    col: &mut [f32],
) {
    let k = g.k;
    let n = p1 - p0;
    let plain = g.dilate == 1 && g.upsample == 1;
    for c in 0..c_in {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (c * k + ky) * k + kx;
                let row = &mut col[r * n..(r + 1) * n];
                let mut p = p0;
                while p < p1 {
                    let oy = p / wo;
                    let ox0 = p % wo;
                    let ox1 = wo.min(ox0 + (p1 - p));
                    let dst = &mut row[p - p0..p - p0 + (ox1 - ox0)];
                    let sy = ymap[oy * k + ky];
                    if sy < 0 {
                        dst.fill(0.0);
                    } else {
                        let src = &plane[sy as usize * w..(sy as usize + 1) * w];
                        let scalar = |dst: &mut [f32], from: usize| {
                            for (d, ox) in dst.iter_mut().zip(from..) {
                                let sx = xmap[ox * k + kx];
                                *d = if sx < 0 { 0.0 } else { src[sx as usize] };
                            }
                        };
                        if plain {
                            // Output column ox reads source column stride·ox + off inside the
                            // picture; only the columns at either edge are padding. Copy the
                            // interior run, resolve the edges through the map.
                            let (lo, hi, s0) = interior(g, kx, w, ox0, ox1);
                            let (left, rest) = dst.split_at_mut(lo - ox0);
                            let (mid, right) = rest.split_at_mut(hi - lo);
                            scalar(left, ox0);
                            if g.stride == 1 {
                                mid.copy_from_slice(&src[s0..s0 + mid.len()]);
                            } else {
                                for (d, v) in mid.iter_mut().zip(src[s0..].iter().step_by(g.stride))
                                {
                                    *d = *v;
                                }
                            }
                            scalar(right, hi);
                        } else {
                            scalar(dst, ox0);
                        }
                    }
                    p += ox1 - ox0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interior run is exactly the columns whose source lies inside the row, for every
    /// stride, pad, tap, width and run of output columns.
    #[test]
    fn interior_runs_are_the_columns_that_read_inside_the_row() {
        for stride in 1..=3 {
            for pad in 0..=4 {
                for k in [1usize, 3, 9] {
                    let g = ConvGeom::simple(k, stride, pad, PadMode::Zero);
                    for w in 1..=12 {
                        let wo = (w + 2 * pad).saturating_sub(k) / stride + 1;
                        for kx in 0..k {
                            for ox0 in 0..wo {
                                for ox1 in ox0..=wo {
                                    let (lo, hi, s0) = interior(&g, kx, w, ox0, ox1);
                                    let inside = |ox: usize| {
                                        let sx = (stride * ox + kx) as isize - pad as isize;
                                        (0..w as isize).contains(&sx)
                                    };
                                    assert!(ox0 <= lo && lo <= hi && hi <= ox1);
                                    for ox in ox0..ox1 {
                                        assert_eq!(
                                            (lo..hi).contains(&ox),
                                            inside(ox),
                                            "s{stride} p{pad} k{k} w{w} kx{kx} {ox0}..{ox1}: {ox}"
                                        );
                                    }
                                    if hi > lo {
                                        assert_eq!(s0, stride * lo + kx - pad);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
