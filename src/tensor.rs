//! A minimal dense NCHW float32 tensor: the engine's only data structure.
//!
//! Large buffers are recycled through a small process-wide pool: a forward pass at 1024²
//! would otherwise map and fault in about 1 GB of fresh pages every time (measured: ~10% of
//! the run in the kernel's page-fault path). Training raises the pool's limit
//! ([`set_pool_limit`]): its tapes free and reallocate about a gigabyte each step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Buffers below this many floats are not pooled.
const POOL_MIN: usize = 1 << 18;
const POOL_MAX_BUFFERS: usize = 64;
/// At most this many floats are kept (512 MiB unless raised), so that the pool does not
/// decide peak memory of inference.
static POOL_MAX_FLOATS: AtomicUsize = AtomicUsize::new(1 << 27);
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Keep up to `bytes` of freed large buffers for reuse (never below the default 512 MiB).
/// Training sets 2 GiB: with the default, a 256² step at batch 4 spent about 15% of its
/// time in the kernel mapping, zeroing and unmapping pages.
pub fn set_pool_limit(bytes: usize) {
    POOL_MAX_FLOATS.store((bytes / 4).max(1 << 27), Ordering::Relaxed);
}

/// A buffer of `n` floats whose contents are unspecified (the caller overwrites all of it).
pub fn take_buffer(n: usize) -> Vec<f32> {
    take_pooled(n).unwrap_or_else(|| vec![0.0; n])
}

/// A pooled buffer of `n` floats (stale contents), if the pool has one that fits.
fn take_pooled(n: usize) -> Option<Vec<f32>> {
    if n < POOL_MIN {
        return None;
    }
    let mut b = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest pooled buffer that fits without wasting more than half of it.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= n && b.capacity() <= 2 * n)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        pool.swap_remove(best)
    };
    // Only the elements the buffer held are initialised (stale, which is fine): cut it to
    // `n`, or fill the rest. (`set_len` up to the capacity exposed memory never written,
    // which is undefined behaviour.)
    if b.len() >= n {
        b.truncate(n);
    } else {
        let have = b.len();
        let rest = &mut b.spare_capacity_mut()[..n - have];
        par_for_each_chunk(rest, |c| c.fill(std::mem::MaybeUninit::new(0.0)));
        // SAFETY: elements `have..n` were written just above; the capacity is at least `n`.
        unsafe { b.set_len(n) };
    }
    Some(b)
}

/// Floats from which a fill or copy is split across the threads: a step's large buffers
/// were cleared and copied by the thread that asked for them while the others waited.
const PAR_FLOATS: usize = 1 << 19;

/// `f` on `dst` in chunks, across the threads when `dst` is large.
fn par_for_each_chunk<T: Send>(dst: &mut [T], f: impl Fn(&mut [T]) + Sync + Send) {
    use rayon::prelude::*;
    if dst.len() < PAR_FLOATS {
        f(dst);
    } else {
        dst.par_chunks_mut(1 << 16).for_each(&f);
    }
}

/// `dst.copy_from_slice(src)`, across the threads when large.
pub fn par_copy(dst: &mut [f32], src: &[f32]) {
    use rayon::prelude::*;
    assert_eq!(dst.len(), src.len(), "copy between different lengths");
    if dst.len() < PAR_FLOATS {
        dst.copy_from_slice(src);
    } else {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
}

/// Hand a buffer back for reuse.
pub fn recycle(b: Vec<f32>) {
    if b.capacity() >= POOL_MIN {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let limit = POOL_MAX_FLOATS.load(Ordering::Relaxed);
        if b.capacity() > limit {
            return;
        }
        // Make room, dropping the smallest buffers first.
        while pool.iter().map(|x| x.capacity()).sum::<usize>() + b.capacity() > limit {
            let Some((i, _)) = pool.iter().enumerate().min_by_key(|(_, x)| x.capacity()) else {
                break;
            };
            pool.swap_remove(i);
        }
        if pool.len() >= POOL_MAX_BUFFERS {
            // Drop the smallest to keep the big ones.
            if let Some((i, _)) = pool.iter().enumerate().min_by_key(|(_, b)| b.capacity()) {
                if pool[i].capacity() < b.capacity() {
                    pool.swap_remove(i);
                } else {
                    return;
                }
            }
        }
        pool.push(b);
    }
}

/// Dense `N×C×H×W` float32 tensor in row-major (NCHW) order.
#[derive(Debug, PartialEq)]
pub struct Tensor {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

/// A copy lands in a recycled buffer: training copies its large activations onto its tapes,
/// and fresh pages for each would cost a page fault (and the kernel's zeroing) per 4 KiB.
impl Clone for Tensor {
    fn clone(&self) -> Self {
        let mut data = take_buffer(self.data.len());
        par_copy(&mut data, &self.data);
        Tensor { data, ..*self }
    }
}

impl Tensor {
    pub fn zeros(n: usize, c: usize, h: usize, w: usize) -> Self {
        // A recycled buffer is cleared; a fresh one comes zeroed from the allocator.
        let data = match take_pooled(n * c * h * w) {
            Some(mut b) => {
                par_for_each_chunk(&mut b, |c| c.fill(0.0));
                b
            }
            None => vec![0.0; n * c * h * w],
        };
        Tensor { n, c, h, w, data }
    }

    /// A tensor whose contents are unspecified: for kernels that write every element.
    pub fn for_overwrite(n: usize, c: usize, h: usize, w: usize) -> Self {
        Tensor {
            n,
            c,
            h,
            w,
            data: take_buffer(n * c * h * w),
        }
    }

    /// Give up the data (the tensor is left empty).
    pub fn into_data(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
    }

    pub fn from_vec(n: usize, c: usize, h: usize, w: usize, data: Vec<f32>) -> Self {
        assert_eq!(
            data.len(),
            n * c * h * w,
            "tensor data does not match its shape"
        );
        Tensor { n, c, h, w, data }
    }

    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    pub fn plane(&self) -> usize {
        self.h * self.w
    }

    /// One sample as a `C×H×W` slice.
    pub fn sample(&self, i: usize) -> &[f32] {
        let s = self.c * self.plane();
        &self.data[i * s..(i + 1) * s]
    }

    pub fn sample_mut(&mut self, i: usize) -> &mut [f32] {
        let s = self.c * self.plane();
        &mut self.data[i * s..(i + 1) * s]
    }

    /// Copy of the rectangle `[y0, y0+h) × [x0, x0+w)` of every plane.
    pub fn crop(&self, y0: usize, x0: usize, h: usize, w: usize) -> Tensor {
        assert!(
            y0 + h <= self.h && x0 + w <= self.w,
            "crop outside the tensor"
        );
        let mut out = Tensor::zeros(self.n, self.c, h, w);
        for p in 0..self.n * self.c {
            let src = &self.data[p * self.plane()..];
            let dst = &mut out.data[p * h * w..];
            for y in 0..h {
                dst[y * w..(y + 1) * w].copy_from_slice(&src[(y0 + y) * self.w + x0..][..w]);
            }
        }
        out
    }

    /// Relative L2 error ‖self − other‖ / ‖other‖ (the golden files' metric).
    pub fn rel_error(&self, other: &Tensor) -> f64 {
        assert_eq!(self.shape(), other.shape(), "shape mismatch");
        rel_error(&self.data, &other.data)
    }

    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape(), other.shape(), "shape mismatch");
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.data));
    }
}

/// ‖a − b‖₂ / ‖b‖₂ accumulated in f64.
pub fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = x as f64 - y as f64;
        num += d * d;
        den += (y as f64) * (y as f64);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}
