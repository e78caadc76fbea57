//! Stroke scale: the working size a [`Scale`] gives, and the result brought back to full
//! size (guided upsampling when the working size is smaller).
use super::*;

/// The longest side at which `Scale::Auto` stops enlarging strokes: pictures up to this
/// size are stylized at full resolution, larger ones at this size and brought back up.
pub const REFERENCE_SIDE: u32 = 1024;

/// How large the painting's strokes are drawn. The network paints strokes of a fixed size
/// in pixels (learned on 128–256 px crops), so on a large photo they shrink to a fine
/// texture. A factor `s` > 1 stylizes at 1/s of the size and brings the result back to
/// full size by guided upsampling onto the photo's own luminance ([`guided`]): strokes `s`
/// times larger, the photo's fine detail kept. `s` < 1 stylizes enlarged (finer strokes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// `max(1, longest side / REFERENCE_SIDE)`: a print looks like the same painting at
    /// 1024 px and at 4096 px.
    Auto,
    Factor(f32),
}

impl Scale {
    pub fn factor(self, w: u32, h: u32) -> f32 {
        match self {
            Scale::Auto => (w.max(h) as f32 / REFERENCE_SIDE as f32).max(1.0),
            Scale::Factor(s) => s,
        }
    }

    /// The factor for a `w×h` picture and the working size it gives, or `None` when the
    /// picture is stylized at its own size.
    pub(super) fn working_size(self, w: usize, h: usize) -> Option<(f32, u32, u32)> {
        let f = self.factor(w as u32, h as u32);
        let lw = ((w as f32 / f).round() as u32).max(1);
        let lh = ((h as f32 / f).round() as u32).max(1);
        ((lw as usize, lh as usize) != (w, h)).then_some((f, lw, lh))
    }

    /// `auto` or a factor from 0.25 to 16.
    pub fn parse(s: &str) -> Result<Scale, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Scale::Auto);
        }
        match s.trim().parse::<f32>() {
            Ok(v) if (0.25..=16.0).contains(&v) => Ok(Scale::Factor(v)),
            _ => Err(format!(
                "{s:?}: expected auto or a stroke scale from 0.25 to 16"
            )),
        }
    }
}

/// Guided upsampling's window radius (working-resolution pixels) and regularisation (0..255
/// scale, a variance): see `guided`. Not tuned — one setting, checked by eye on
/// `docs/stroke-scale.jpg`; the measured figure in the README is for these values.
pub(super) const GUIDE_RADIUS: usize = 2;
pub(super) const GUIDE_EPS: f32 = 100.0;

/// The network's output for `content` as three planes (0..255, unclamped).
pub(super) fn network_planes<B: crate::backend::Backend>(
    model: &Transformer<B>,
    content: &Content,
    opts: &StylizeOptions,
    progress: Option<Progress>,
) -> Result<[guided::Plane; 3], Stopped> {
    let (h, w) = content.dims();
    let mut p = [
        guided::Plane::new(w, h),
        guided::Plane::new(w, h),
        guided::Plane::new(w, h),
    ];
    run_network(model, content, opts, progress, |y, x, s| {
        for c in 0..3 {
            p[c].data[y * w + x] = s[c];
        }
    })?;
    Ok(p)
}

/// BT.601 luminance of a content image, as a plane (0..255).
pub(super) fn luma_plane(c: &Content) -> guided::Plane {
    let (h, w) = c.dims();
    let mut p = guided::Plane::new(w, h);
    for y in 0..h {
        for x in 0..w {
            p.data[y * w + x] = to_ycc(c.get(x, y))[0];
        }
    }
    p
}

/// A stylization made at the working size (`planes`, of the working-size content `low`)
/// brought to the size of `full`, row by row into `emit(y, row)`: guided upsampling onto
/// the full-resolution luminance when enlarging, plain resampling when reducing.
pub(super) fn resample_to(
    planes: &[guided::Plane; 3],
    low: &Content,
    full: &Content,
    factor: f32,
    mut emit: impl FnMut(usize, &[[f32; 3]]),
) {
    let (h, w) = full.dims();
    if factor > 1.0 {
        let guide_low = luma_plane(low);
        let a = [0, 1, 2].map(|c| guided::slope(&guide_low, &planes[c], GUIDE_RADIUS, GUIDE_EPS));
        let guide_row = |y: usize| (0..w).map(|x| to_ycc(full.get(x, y))[0]).collect();
        guided::upsample_rgb(planes, &a, &guide_low, w, h, guide_row, emit);
    } else {
        // `image` resamples floating-point pictures on its 0..1 scale and clamps to it, so
        // the 0..255 planes go through it divided by 255 (clamping there is the output's
        // own clamp).
        let (lh, lw) = low.dims();
        let img = Rgb32FImage::from_fn(lw as u32, lh as u32, |x, y| {
            let i = y as usize * lw + x as usize;
            image::Rgb([0, 1, 2].map(|c| planes[c].data[i] / 255.0))
        });
        let r = image::imageops::resize(
            &img,
            w as u32,
            h as u32,
            image::imageops::FilterType::Lanczos3,
        );
        for y in 0..h {
            let row: Vec<[f32; 3]> = (0..w)
                .map(|x| r.get_pixel(x as u32, y as u32).0.map(|v| v * 255.0))
                .collect();
            emit(y, &row);
        }
    }
}
