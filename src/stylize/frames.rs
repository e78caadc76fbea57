//! Video and live frames: instance-norm statistics blended from frame to frame.
use super::*;

/// Statistics for video frames: each norm's own statistics blended with the previous
/// frame's (an exponential moving average), so that global colour and contrast do not jump
/// from frame to frame. `momentum` 0 is plain per-frame instance norm.
pub struct SmoothStats {
    pub momentum: f32,
    prev: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    /// Where the frame lies in the padded input (set by [`stylize_frame`]).
    frame: Option<PictureStats>,
}

impl SmoothStats {
    pub fn new(momentum: f32) -> Self {
        SmoothStats {
            momentum,
            prev: Vec::new(),
            frame: None,
        }
    }
}

impl StatsSource for SmoothStats {
    fn stats(&mut self, index: usize, x: &Activation, eps: f64) -> Option<NormStats> {
        let own = match &self.frame {
            Some(f) => f.moments(x),
            None => x.moments(),
        }
        .stats(eps);
        if self.prev.len() <= index {
            self.prev.resize(index + 1, None);
        }
        // Blend mean and variance(+eps); keep the blend for the next frame.
        let var: Vec<f32> = own.inv_std.iter().map(|s| 1.0 / (s * s)).collect();
        let (mean, var) = match &self.prev[index] {
            Some((pm, pv)) if pm.len() == own.mean.len() => {
                let m = self.momentum;
                (
                    own.mean
                        .iter()
                        .zip(pm)
                        .map(|(a, b)| m * b + (1.0 - m) * a)
                        .collect::<Vec<f32>>(),
                    var.iter()
                        .zip(pv)
                        .map(|(a, b)| m * b + (1.0 - m) * a)
                        .collect::<Vec<f32>>(),
                )
            }
            _ => (own.mean.clone(), var),
        };
        let inv_std = var.iter().map(|v| 1.0 / v.sqrt()).collect();
        self.prev[index] = Some((mean.clone(), var));
        Some(NormStats { mean, inv_std })
    }
}

/// Stylize one RGB frame (any size; untiled) with statistics from `src`.
pub fn stylize_frame<B: crate::backend::Backend>(
    model: &Transformer<B>,
    frame: &RgbImage,
    opts: &StylizeOptions,
    src: &mut SmoothStats,
) -> Result<RgbImage, Stopped> {
    let (fw, fh) = (frame.width() as usize, frame.height() as usize);
    let working = opts.scale.working_size(fw, fh);
    let full = Content::U8(frame.clone());
    let resized;
    let work = match working {
        Some((factor, lw, lh)) => {
            let filter = if factor > 1.0 {
                image::imageops::FilterType::Triangle
            } else {
                image::imageops::FilterType::CatmullRom
            };
            resized = Content::U8(image::imageops::resize(frame, lw, lh, filter));
            &resized
        }
        None => &full,
    };
    let (h, w) = work.dims();
    let a = Transformer::ALIGN;
    let m = opts.margin_for(model);
    let (h4, w4) = ((h + 2 * m).div_ceil(a) * a, (w + 2 * m).div_ceil(a) * a);
    src.frame = Some(PictureStats {
        picture: Picture {
            y0: m,
            y1: m + h,
            x0: m,
            x1: m + w,
        },
        h: h4,
        w: w4,
    });
    let x = work.tensor(0, 0, h4, w4, m);
    let cancel = &opts.cancel;
    cancel.check()?;
    let y = model
        .forward_with(
            x,
            &mut Checked {
                inner: &mut *src,
                cancel,
            },
        )?
        .ok_or(Cancelled)?;
    let hw = h4 * w4;
    let at = |px: usize, py: usize| {
        let i = (py + m) * w4 + px + m;
        [y.data[i], y.data[hw + i], y.data[2 * hw + i]]
    };
    let mut out = RgbImage::new(fw as u32, fh as u32);
    let Some((factor, ..)) = working else {
        use rayon::prelude::*;
        let raw: &mut [u8] = &mut out;
        raw.par_chunks_mut(3 * fw)
            .enumerate()
            .for_each(|(py, row)| {
                for (px, p) in row.chunks_exact_mut(3).enumerate() {
                    p.copy_from_slice(&finish(opts, full.get(px, py), at(px, py)));
                }
            });
        return Ok(out);
    };
    {
        let mut planes = [
            guided::Plane::new(w, h),
            guided::Plane::new(w, h),
            guided::Plane::new(w, h),
        ];
        for py in 0..h {
            for px in 0..w {
                let v = at(px, py);
                for c in 0..3 {
                    planes[c].data[py * w + px] = v[c];
                }
            }
        }
        resample_to(&planes, work, &full, factor, |py, row| {
            for (px, s) in row.iter().enumerate() {
                let c = full.get(px, py);
                out.put_pixel(px as u32, py as u32, image::Rgb(finish(opts, c, *s)));
            }
        });
    }
    Ok(out)
}
