//! The stylize pipeline: image → (resize) → network, whole or in tiles → colour and strength
//! → image.
//!
//! **Tiling with exact statistics.** Instance norm normalises every channel by its mean and
//! variance over the *whole* image, so tiles that each used their own statistics would show
//! seams and colour shifts. Large images are therefore cut into tiles with a halo wider than
//! the network's receptive field, and the statistics of every instance norm are computed
//! globally first: pass `k` runs each tile up to norm `k` (using the already-known global
//! statistics of norms `0..k`) and accumulates that norm's moments over the tile's core
//! only, so every pixel counts once. The final pass runs each tile through the whole network
//! with the global statistics and keeps its core. The result equals whole-image inference
//! up to float rounding, while memory is bounded by the tile size. The price is compute: the
//! statistics passes cost about 6× a plain forward pass, so tiling only starts above
//! `tile_threshold` pixels.

pub mod guided;

use crate::imageio::Decoded;
use crate::kernels::norm::{Moments, NormStats};
use crate::model::transformer::{Activation, StatsSource, Transformer};
use crate::tensor::Tensor;
use image::{DynamicImage, Rgb32FImage, RgbImage, RgbaImage};

/// See [`StylizeOptions::margin`]; measured with `impasto evaluate` (border artifact). A
/// model file may ask for a wider one ([`MARGIN_KEY`](crate::model::transformer::MARGIN_KEY)).
pub const DEFAULT_MARGIN: usize = 8;

/// Default core tile side (pixels) for pictures processed in tiles.
pub const DEFAULT_TILE: usize = 1024;

/// Default number of (padded) pixels above which a picture is processed in tiles.
pub const DEFAULT_TILE_THRESHOLD: u64 = 2048 * 2048;

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
    fn working_size(self, w: usize, h: usize) -> Option<(f32, u32, u32)> {
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
const GUIDE_RADIUS: usize = 2;
const GUIDE_EPS: f32 = 100.0;

/// A way to stop a stylization early (a client that left, a time limit, Ctrl-C): checked
/// at every instance norm of the network (a few dozen times a pass) and between tiles, so
/// a stop lands within one layer. Cloning shares it.
#[derive(Clone, Default)]
pub struct Cancel(Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>);

impl Cancel {
    /// Stops once `flag` is set.
    pub fn flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Cancel::when(move || flag.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Stops once `stop()` answers true (it is asked from the computing thread).
    pub fn when(stop: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Cancel(Some(std::sync::Arc::new(stop)))
    }

    /// Stops when either does.
    pub fn or(self, other: Cancel) -> Self {
        match (self.0, other.0) {
            (None, o) | (o, None) => Cancel(o),
            (Some(a), Some(b)) => Cancel::when(move || a() || b()),
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f())
    }

    fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Cancel(set)"
        } else {
            "Cancel(never)"
        })
    }
}

/// A stylization stopped by its [`Cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stopped before it finished")]
pub struct Cancelled;

/// Statistics from `inner`, unless the work was cancelled: then none, which ends the pass
/// at this norm.
struct Checked<'a, S> {
    inner: S,
    cancel: &'a Cancel,
}

impl<S: StatsSource> StatsSource for Checked<'_, S> {
    fn stats(&mut self, index: usize, x: &Activation, eps: f64) -> Option<NormStats> {
        if self.cancel.is_cancelled() {
            return None;
        }
        self.inner.stats(index, x, eps)
    }
}

#[derive(Clone, Debug)]
pub struct StylizeOptions {
    /// Longest side to process at; larger inputs are scaled down first.
    pub max_size: Option<u32>,
    /// 1 = fully stylized, 0 = the content unchanged.
    pub strength: f32,
    /// Keep the content's colours; take only the luminance from the stylized image.
    pub preserve_color: bool,
    /// Core tile size (pixels, a multiple of 4) when tiling.
    pub tile: usize,
    /// Halo around each tile (pixels, a multiple of 4), at least the receptive field.
    pub halo: usize,
    /// Images with more (padded) pixels than this are tiled.
    pub tile_threshold: u64,
    /// Stroke size (see [`Scale`]).
    pub scale: Scale,
    /// Mirror-padding (pixels) added around the image before the network and cropped after,
    /// so the network's own edge effects fall outside the picture. The instance norms take
    /// their statistics from the picture alone ([`Picture`]), so 0 is the bare network and
    /// any margin changes only the edges. `None`: the model's own
    /// ([`Transformer::margin`]), else [`DEFAULT_MARGIN`].
    pub margin: Option<usize>,
    /// Stop early when this says so ([`Cancelled`]); never by default.
    pub cancel: Cancel,
}

impl Default for StylizeOptions {
    fn default() -> Self {
        StylizeOptions {
            max_size: None,
            strength: 1.0,
            preserve_color: false,
            tile: DEFAULT_TILE,
            halo: 96,
            tile_threshold: DEFAULT_TILE_THRESHOLD,
            margin: None,
            scale: Scale::Auto,
            cancel: Cancel::default(),
        }
    }
}

impl StylizeOptions {
    /// The mirror margin `model` is run with: the one asked for, else the model file's,
    /// else [`DEFAULT_MARGIN`].
    pub fn margin_for(&self, model: &Transformer) -> usize {
        self.margin.or(model.margin()).unwrap_or(DEFAULT_MARGIN)
    }
}

/// Source pixels, RGB on the 0..255 scale: full precision for images processed whole, 8-bit
/// for huge tiled ones to bound memory.
enum Content {
    F32(Rgb32FImage),
    U8(RgbImage),
}

impl Content {
    fn dims(&self) -> (usize, usize) {
        match self {
            Content::F32(i) => (i.height() as usize, i.width() as usize),
            Content::U8(i) => (i.height() as usize, i.width() as usize),
        }
    }

    #[inline]
    fn get(&self, x: usize, y: usize) -> [f32; 3] {
        match self {
            Content::F32(i) => {
                let p = i.get_pixel(x as u32, y as u32).0;
                [p[0] * 255.0, p[1] * 255.0, p[2] * 255.0]
            }
            Content::U8(i) => {
                let p = i.get_pixel(x as u32, y as u32).0;
                [p[0] as f32, p[1] as f32, p[2] as f32]
            }
        }
    }

    /// The rectangle as a 1×3×h×w tensor, in the coordinates of the image extended by
    /// `m` pixels of mirror padding on every side (and mirrored further up to a multiple of 4).
    fn tensor(&self, y0: usize, x0: usize, h: usize, w: usize, m: usize) -> Tensor {
        use rayon::prelude::*;
        let (ih, iw) = self.dims();
        let mut t = Tensor::zeros(1, 3, h, w);
        let hw = h * w;
        let xs: Vec<usize> = (0..w)
            .map(|x| mirror((x0 + x) as i64 - m as i64, iw))
            .collect();
        // Rows in parallel (a live frame's conversion is otherwise serial beside the
        // network's parallel layers); each task writes its row of the three planes.
        let (r, rest) = t.data.split_at_mut(hw);
        let (g, b) = rest.split_at_mut(hw);
        r.par_chunks_mut(w)
            .zip(g.par_chunks_mut(w))
            .zip(b.par_chunks_mut(w))
            .enumerate()
            .for_each(|(y, ((r, g), b))| {
                let sy = mirror((y0 + y) as i64 - m as i64, ih);
                for (x, &sx) in xs.iter().enumerate() {
                    let p = self.get(sx, sy);
                    (r[x], g[x], b[x]) = (p[0], p[1], p[2]);
                }
            });
        t
    }
}

/// Index `i` reflected into `0..n` (edge not repeated), for any `i`.
fn mirror(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let p = 2 * (n as i64 - 1);
    let r = i.rem_euclid(p);
    (if r < n as i64 { r } else { p - r }) as usize
}

/// One tile: the region run through the network (with halo) and its core, in padded-image
/// coordinates.
#[derive(Clone, Copy, Debug)]
struct Tile {
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
    cy0: usize,
    cy1: usize,
    cx0: usize,
    cx1: usize,
}

fn plan(h4: usize, w4: usize, core: usize, halo: usize) -> Vec<Tile> {
    let mut tiles = Vec::new();
    for cy0 in (0..h4).step_by(core) {
        for cx0 in (0..w4).step_by(core) {
            let (cy1, cx1) = ((cy0 + core).min(h4), (cx0 + core).min(w4));
            tiles.push(Tile {
                y0: cy0.saturating_sub(halo),
                y1: (cy1 + halo).min(h4),
                x0: cx0.saturating_sub(halo),
                x1: (cx1 + halo).min(w4),
                cy0,
                cy1,
                cx0,
                cx1,
            });
        }
    }
    tiles
}

/// Where the picture lies in the network's (mirror-padded, aligned) input: rows
/// `[y0, y1)`, columns `[x0, x1)`. Instance-norm statistics are taken over it alone, so the
/// margin and the alignment padding change only what the network sees at the picture's
/// edges, never the statistics that set its colours and contrast everywhere else: with
/// `margin` 0 the output is the bare network's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picture {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
}

/// Padded rows `[a, b)` seen in an activation whose row 0 is padded row `origin`, at
/// `s` padded rows per row, `n` rows: clipped to it, rounded outward.
fn span(a: usize, b: usize, origin: usize, s: usize, n: usize) -> (usize, usize) {
    let hi = b.saturating_sub(origin).div_ceil(s).min(n);
    let lo = (a.saturating_sub(origin) / s).min(hi);
    (lo, hi)
}

impl Picture {
    /// The picture's moments in activation `x`, which covers padded rows
    /// `[oy, oy + sh·x.h)` and columns `[ox, ox + sw·x.w)`, intersected with
    /// `[ry0, ry1) × [rx0, rx1)` (a tile's core; the whole image when untiled).
    #[allow(clippy::too_many_arguments)]
    fn moments(
        &self,
        x: &Activation,
        oy: usize,
        ox: usize,
        sh: usize,
        sw: usize,
        core: (usize, usize, usize, usize),
    ) -> Moments {
        let (ry0, ry1, rx0, rx1) = core;
        let rows = span(self.y0.max(ry0), self.y1.min(ry1), oy, sh, x.h);
        let cols = span(self.x0.max(rx0), self.x1.min(rx1), ox, sw, x.w);
        if rows.0 == rows.1 || cols.0 == cols.1 {
            return Moments::zeros(x.c);
        }
        x.moments_region(rows, cols)
    }
}

/// Statistics for pass `k`: the known global ones before `k`, accumulate at `k`, then stop.
struct PassStats<'a> {
    known: &'a [NormStats],
    acc: Option<Moments>,
    tile: Tile,
    picture: Picture,
}

impl StatsSource for PassStats<'_> {
    fn stats(&mut self, index: usize, x: &Activation, _eps: f64) -> Option<NormStats> {
        if index < self.known.len() {
            return Some(self.known[index].clone());
        }
        // The level of this activation: the tile is 2^level times its size.
        let t = &self.tile;
        let (sh, sw) = ((t.y1 - t.y0) / x.h, (t.x1 - t.x0) / x.w);
        self.acc = Some(
            self.picture
                .moments(x, t.y0, t.x0, sh, sw, (t.cy0, t.cy1, t.cx0, t.cx1)),
        );
        None
    }
}

/// Statistics of the picture inside one whole (untiled) padded input.
pub struct PictureStats {
    pub picture: Picture,
    /// The padded input's size.
    pub h: usize,
    pub w: usize,
}

impl PictureStats {
    fn moments(&self, x: &Activation) -> Moments {
        let (sh, sw) = (self.h / x.h, self.w / x.w);
        self.picture
            .moments(x, 0, 0, sh, sw, (0, self.h, 0, self.w))
    }
}

impl StatsSource for PictureStats {
    fn stats(&mut self, _index: usize, x: &Activation, eps: f64) -> Option<NormStats> {
        Some(self.moments(x).stats(eps))
    }
}

/// Progress reporting for long (tiled) runs: `(done, total)` work units.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Run the network over the content at its padded size; returns the stylized tensor's
/// pixels via `emit(y, x, rgb)` for every pixel of the unpadded image.
fn run_network(
    model: &Transformer,
    content: &Content,
    opts: &StylizeOptions,
    progress: Option<Progress>,
    mut emit: impl FnMut(usize, usize, [f32; 3]),
) -> Result<(), Cancelled> {
    let cancel = &opts.cancel;
    let (h, w) = content.dims();
    let a = Transformer::ALIGN;
    let m = opts.margin_for(model);
    let (h4, w4) = ((h + 2 * m).div_ceil(a) * a, (w + 2 * m).div_ceil(a) * a);
    let core = (opts.tile.max(a) / a) * a;
    let halo = opts.halo.div_ceil(a) * a;
    let tiled = (h4 * w4) as u64 > opts.tile_threshold && (h4 > core || w4 > core);
    let tiles = if tiled {
        plan(h4, w4, core, halo)
    } else {
        plan(h4, w4, h4.max(w4), 0)
    };
    let picture = Picture {
        y0: m,
        y1: m + h,
        x0: m,
        x1: m + w,
    };
    let n_norms = model.config.norm_count();
    let total = if tiled {
        (n_norms as u64 + 1) * tiles.len() as u64
    } else {
        1
    };
    let mut done = 0u64;
    let mut known: Vec<NormStats> = Vec::new();
    if tiled {
        for _ in 0..n_norms {
            let mut acc: Option<Moments> = None;
            for t in &tiles {
                cancel.check()?;
                let x = content.tensor(t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0, m);
                let mut src = Checked {
                    inner: PassStats {
                        known: &known,
                        acc: None,
                        tile: *t,
                        picture,
                    },
                    cancel,
                };
                let _ = model.forward_with(x, &mut src);
                cancel.check()?;
                let m = src.inner.acc.expect("pass reaches its norm");
                match &mut acc {
                    None => acc = Some(m),
                    Some(a) => a.add(&m),
                }
                done += 1;
                if let Some(p) = progress {
                    p(done, total);
                }
            }
            known.push(acc.expect("at least one tile").stats(model.config.norm_eps));
        }
    }
    for t in &tiles {
        cancel.check()?;
        let x = content.tensor(t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0, m);
        // With every statistic known, a pass stops early only when cancelled.
        let y = if tiled {
            let inner = PassStats {
                known: &known,
                acc: None,
                tile: *t,
                picture,
            };
            model.forward_with(x, &mut Checked { inner, cancel })
        } else {
            let inner = PictureStats {
                picture,
                h: h4,
                w: w4,
            };
            model.forward_with(x, &mut Checked { inner, cancel })
        }
        .ok_or(Cancelled)?;
        let (th, tw) = (y.h, y.w);
        let hw = th * tw;
        for py in t.cy0.max(m)..t.cy1.min(h + m) {
            for px in t.cx0.max(m)..t.cx1.min(w + m) {
                let i = (py - t.y0) * tw + (px - t.x0);
                emit(
                    py - m,
                    px - m,
                    [y.data[i], y.data[hw + i], y.data[2 * hw + i]],
                );
            }
        }
        done += 1;
        if let Some(p) = progress {
            p(done, total);
        }
    }
    Ok(())
}

/// RGB → (Y, Cb, Cr), BT.601 full range, 0..255.
fn to_ycc(p: [f32; 3]) -> [f32; 3] {
    let [r, g, b] = p;
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    [
        y,
        128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b,
        128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b,
    ]
}

fn from_ycc(p: [f32; 3]) -> [f32; 3] {
    let [y, cb, cr] = p;
    [
        y + 1.402 * (cr - 128.0),
        y - 0.344_136 * (cb - 128.0) - 0.714_136 * (cr - 128.0),
        y + 1.772 * (cb - 128.0),
    ]
}

/// Colour preservation and strength blending for one pixel.
fn finish(opts: &StylizeOptions, content: [f32; 3], styl: [f32; 3]) -> [u8; 3] {
    let mut s = styl;
    if opts.preserve_color {
        let (ys, yc) = (to_ycc(s), to_ycc(content));
        s = from_ycc([ys[0], yc[1], yc[2]]);
    }
    let k = opts.strength.clamp(0.0, 1.0);
    let mut out = [0u8; 3];
    for c in 0..3 {
        let v = content[c] + k * (s[c] - content[c]);
        out[c] = v.round().clamp(0.0, 255.0) as u8;
    }
    out
}

/// Stylize one decoded image; the result has the input's size (after `max_size`) and keeps
/// its alpha channel.
pub fn stylize(
    model: &Transformer,
    input: Decoded,
    opts: &StylizeOptions,
    progress: Option<Progress>,
) -> Result<DynamicImage, Cancelled> {
    let mut img = input.image;
    if let Some(m) = opts.max_size {
        let (w, h) = (img.width(), img.height());
        if w.max(h) > m && m > 0 {
            let s = m as f64 / w.max(h) as f64;
            let (nw, nh) = (
                ((w as f64 * s).round() as u32).max(1),
                ((h as f64 * s).round() as u32).max(1),
            );
            img = img.resize_exact(nw, nh, image::imageops::FilterType::Lanczos3);
        }
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let alpha = if input.has_alpha {
        Some(img.to_luma_alpha8())
    } else {
        None
    };
    let working = opts.scale.working_size(w, h);
    let content = if (w * h) as u64 > opts.tile_threshold {
        Content::U8(img.to_rgb8())
    } else {
        Content::F32(img.to_rgb32f())
    };
    let mut out = RgbImage::new(w as u32, h as u32);
    if let Some((factor, lw, lh)) = working {
        // Stylize at the working size, then bring the result to full size.
        let filter = if factor > 1.0 {
            image::imageops::FilterType::Lanczos3
        } else {
            image::imageops::FilterType::CatmullRom
        };
        let low = Content::F32(img.resize_exact(lw, lh, filter).to_rgb32f());
        drop(img);
        let planes = network_planes(model, &low, opts, progress)?;
        resample_to(&planes, &low, &content, factor, |y, row| {
            for (x, s) in row.iter().enumerate() {
                let c = content.get(x, y);
                out.put_pixel(x as u32, y as u32, image::Rgb(finish(opts, c, *s)));
            }
        });
    } else {
        drop(img);
        run_network(model, &content, opts, progress, |y, x, s| {
            let c = content.get(x, y);
            out.put_pixel(x as u32, y as u32, image::Rgb(finish(opts, c, s)));
        })?;
    }
    Ok(match alpha {
        None => DynamicImage::ImageRgb8(out),
        Some(a) => {
            let mut rgba = RgbaImage::new(w as u32, h as u32);
            for (x, y, p) in rgba.enumerate_pixels_mut() {
                let c = out.get_pixel(x, y).0;
                *p = image::Rgba([c[0], c[1], c[2], a.get_pixel(x, y).0[1]]);
            }
            DynamicImage::ImageRgba8(rgba)
        }
    })
}

/// The network's output for `content` as three planes (0..255, unclamped).
fn network_planes(
    model: &Transformer,
    content: &Content,
    opts: &StylizeOptions,
    progress: Option<Progress>,
) -> Result<[guided::Plane; 3], Cancelled> {
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
fn luma_plane(c: &Content) -> guided::Plane {
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
fn resample_to(
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

/// The raw network output (0..255, unclamped) for an RGB tensor of any size, tiled or not;
/// used to measure tiled against whole-image inference.
pub fn stylize_tensor(
    model: &Transformer,
    x: &Tensor,
    opts: &StylizeOptions,
) -> Result<Tensor, Cancelled> {
    assert_eq!((x.n, x.c), (1, 3));
    let mut img = Rgb32FImage::new(x.w as u32, x.h as u32);
    let hw = x.plane();
    for (px, py, p) in img.enumerate_pixels_mut() {
        let i = py as usize * x.w + px as usize;
        *p = image::Rgb([
            x.data[i] / 255.0,
            x.data[hw + i] / 255.0,
            x.data[2 * hw + i] / 255.0,
        ]);
    }
    let content = Content::F32(img);
    let mut out = Tensor::zeros(1, 3, x.h, x.w);
    run_network(model, &content, opts, None, |y, xx, s| {
        for (c, v) in s.into_iter().enumerate() {
            out.data[c * hw + y * x.w + xx] = v;
        }
    })?;
    Ok(out)
}

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
pub fn stylize_frame(
    model: &Transformer,
    frame: &RgbImage,
    opts: &StylizeOptions,
    src: &mut SmoothStats,
) -> Result<RgbImage, Cancelled> {
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
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transformer::{Arch, TransformerConfig};
    use std::collections::BTreeMap;

    /// A network with random weights (deterministic), small enough for fast tests.
    pub(crate) fn random_model(arch: Arch, seed: u32) -> Transformer {
        let config = TransformerConfig::new(arch);
        let mut s = seed.wrapping_mul(747796405).wrapping_add(1);
        let mut params = BTreeMap::new();
        for (name, shape) in config.param_shapes() {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            let scale = if name.ends_with(".weight") && shape.len() == 1 {
                0.0
            } else {
                (1.0 / fan_in as f32).sqrt()
            };
            let base = if name.ends_with(".weight") && shape.len() == 1 {
                1.0
            } else {
                0.0
            };
            let v = (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    base + scale * ((s as f32 / u32::MAX as f32) * 2.0 - 1.0) * 1.7
                })
                .collect();
            params.insert(name, (shape, v));
        }
        Transformer::from_named(config, params, BTreeMap::new()).unwrap()
    }

    fn smooth_image(h: usize, w: usize) -> Tensor {
        let mut t = Tensor::zeros(1, 3, h, w);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = 127.5
                        + 100.0
                            * ((x as f32 * 0.05 + c as f32).sin()
                                * (y as f32 * 0.031 - c as f32).cos());
                    t.data[(c * h + y) * w + x] = v;
                }
            }
        }
        t
    }

    #[test]
    fn tiled_inference_matches_whole_image() {
        for arch in [Arch::Johnson, Arch::Seed] {
            let model = random_model(arch, 9);
            let x = smooth_image(200, 236);
            let whole = stylize_tensor(&model, &x, &StylizeOptions::default()).unwrap();
            let opts = StylizeOptions {
                tile: 64,
                tile_threshold: 0,
                ..Default::default()
            };
            let tiled = stylize_tensor(&model, &x, &opts).unwrap();
            let d = tiled.max_abs_diff(&whole);
            assert!(d < 0.05, "{arch:?}: tiled differs from whole by {d}");
        }
    }

    /// `margin` 0 is the bare network, bit for bit, whatever the architecture.
    #[test]
    fn margin_zero_is_the_bare_network() {
        for arch in [Arch::Johnson, Arch::Seed] {
            let model = random_model(arch, 5);
            let x = smooth_image(64, 96);
            let opts = StylizeOptions {
                margin: Some(0),
                ..Default::default()
            };
            let y = stylize_tensor(&model, &x, &opts).unwrap();
            let bare = model.forward(&x);
            // (The pipeline's 0..1 image round trip may move the input by an ulp.)
            let d = y.max_abs_diff(&bare);
            assert!(d < 1e-2, "{arch:?}: {d}");
        }
    }

    /// A model file's margin (`impasto.margin`) is what the pipeline uses when none is asked
    /// for, in still pictures and live frames alike; an explicit margin still wins.
    #[test]
    fn the_model_files_margin_is_the_default_and_an_explicit_one_wins() {
        let mut model = random_model(Arch::Johnson, 6);
        let x = smooth_image(40, 52);
        let at = |m: Option<usize>, model: &Transformer| {
            let o = StylizeOptions {
                margin: m,
                ..Default::default()
            };
            stylize_tensor(model, &x, &o).unwrap()
        };
        let (m8, m20) = (at(Some(8), &model), at(Some(20), &model));
        assert!(m8.max_abs_diff(&m20) > 0.5, "margins 8 and 20 must differ");
        assert_eq!(at(None, &model).data, m8.data, "no margin recorded: 8");
        model.set_margin(Some(20));
        assert_eq!(model.margin(), Some(20));
        assert_eq!(at(None, &model).data, m20.data, "the file's margin");
        assert_eq!(at(Some(8), &model).data, m8.data, "an explicit margin wins");
        // The live path (`stylize_frame`) takes the same margin.
        let frame = RgbImage::from_fn(52, 40, |xx, yy| {
            image::Rgb([(xx * 4) as u8, (yy * 6) as u8, ((xx + yy) * 2) as u8])
        });
        let live = |m: Option<usize>, model: &Transformer| {
            let o = StylizeOptions {
                margin: m,
                ..Default::default()
            };
            stylize_frame(model, &frame, &o, &mut SmoothStats::new(0.0)).unwrap()
        };
        assert_eq!(live(None, &model), live(Some(20), &model));
        assert_ne!(live(None, &model), live(Some(8), &model));
        // Recorded in the file and read back; a bad value is refused on load.
        let mut f = model.to_file();
        let back = Transformer::from_file(f.clone()).unwrap();
        assert_eq!(back.margin(), Some(20));
        f.metadata
            .insert(crate::model::transformer::MARGIN_KEY.into(), "9999".into());
        let e = Transformer::from_file(f.clone()).unwrap_err().to_string();
        assert!(e.contains("impasto.margin") && e.contains("9999"), "{e}");
        // A hostile file's megabyte of digits is echoed only in part.
        f.metadata.insert(
            crate::model::transformer::MARGIN_KEY.into(),
            "7".repeat(1 << 20),
        );
        let e = Transformer::from_file(f).unwrap_err().to_string();
        assert!(
            e.contains("impasto.margin") && e.len() < 400,
            "{} bytes",
            e.len()
        );
    }

    /// With a margin, the instance norms see the picture only: the first norm (whose input
    /// over the picture is the same with a mirror margin as with the network's own
    /// reflection padding) gets the bare network's statistics, where the whole padded
    /// input's statistics used to differ.
    #[test]
    fn the_margin_keeps_the_pictures_statistics() {
        struct First<S>(S, Option<NormStats>);
        impl<S: StatsSource> StatsSource for First<S> {
            fn stats(&mut self, i: usize, x: &Activation, eps: f64) -> Option<NormStats> {
                let s = self.0.stats(i, x, eps)?;
                if i == 0 {
                    self.1 = Some(s.clone());
                }
                Some(s)
            }
        }
        let model = random_model(Arch::Johnson, 8);
        let (h, w, m) = (64, 96, 16);
        let x = smooth_image(h, w);
        let mut bare = First(crate::model::transformer::OwnStats, None);
        model.forward_with(x.clone(), &mut bare).unwrap();
        let img = Rgb32FImage::from_fn(w as u32, h as u32, |xx, yy| {
            let i = yy as usize * w + xx as usize;
            let hw = h * w;
            image::Rgb([0, 1, 2].map(|c| x.data[c * hw + i] / 255.0))
        });
        let padded = Content::F32(img).tensor(0, 0, h + 2 * m, w + 2 * m, m);
        let pic = Picture {
            y0: m,
            y1: m + h,
            x0: m,
            x1: m + w,
        };
        let mut ours = First(
            PictureStats {
                picture: pic,
                h: h + 2 * m,
                w: w + 2 * m,
            },
            None,
        );
        model.forward_with(padded.clone(), &mut ours).unwrap();
        let mut whole = First(crate::model::transformer::OwnStats, None);
        model.forward_with(padded, &mut whole).unwrap();
        let (b, o, wh) = (bare.1.unwrap(), ours.1.unwrap(), whole.1.unwrap());
        let diff = |a: &NormStats, b: &NormStats| {
            a.mean
                .iter()
                .zip(&b.mean)
                .chain(a.inv_std.iter().zip(&b.inv_std))
                .map(|(p, q)| ((p - q) / q.abs().max(1e-3)).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(
            diff(&o, &b) < 1e-4,
            "picture statistics differ: {}",
            diff(&o, &b)
        );
        assert!(
            diff(&wh, &b) > 1e-3,
            "the test cannot tell: {}",
            diff(&wh, &b)
        );
    }

    /// `scale` S stylizes at 1/S and brings the result back to full size: the output keeps
    /// the input's size, and brought down again it is the stylization of the small picture
    /// (guided upsampling adds the photo's detail without moving what the network painted).
    #[test]
    fn stroke_scale_enlarges_strokes_and_keeps_the_size() {
        let model = random_model(Arch::Johnson, 12);
        let x = smooth_image(96, 128);
        let img = DynamicImage::ImageRgb32F(Rgb32FImage::from_fn(128, 96, |xx, yy| {
            let i = yy as usize * 128 + xx as usize;
            image::Rgb([0, 1, 2].map(|c| x.data[c * 96 * 128 + i] / 255.0))
        }));
        let run = |img: DynamicImage, scale: Scale| {
            let d = Decoded {
                image: img,
                has_alpha: false,
                notes: Vec::new(),
            };
            let o = StylizeOptions {
                scale,
                ..Default::default()
            };
            stylize(&model, d, &o, None).unwrap().to_rgb8()
        };
        let big = run(img.clone(), Scale::Factor(2.0));
        assert_eq!(big.dimensions(), (128, 96));
        let small_in = img.resize_exact(64, 48, image::imageops::FilterType::Lanczos3);
        let small = run(small_in, Scale::Factor(1.0));
        let down = image::imageops::resize(&big, 64, 48, image::imageops::FilterType::Triangle);
        let mean: f64 = down
            .as_raw()
            .iter()
            .zip(small.as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / small.as_raw().len() as f64;
        assert!(mean < 6.0, "mean difference {mean}");
        // Auto leaves pictures up to 1024 px alone.
        assert_eq!(Scale::Auto.factor(1024, 700), 1.0);
        assert_eq!(Scale::Auto.factor(4096, 3072), 4.0);
        assert!(Scale::parse("0").is_err() && Scale::parse("auto").is_ok());
    }

    /// Every accepted stroke scale, below 1 too, gives a stylization that follows the
    /// photo, for stills and for live frames (scales below 1 once came out flat black: the
    /// 0..255 planes went through a resampler that clamps to 0..1).
    #[test]
    fn every_stroke_scale_follows_the_picture() {
        // A real style on a real photo: a random network's output of a smooth picture is
        // nearly flat at some sizes, which would prove nothing.
        let model = crate::styles::resolve("great_wave_live").unwrap();
        let photo = crate::imageio::read_path(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/coffee.jpg")),
            &Default::default(),
        )
        .unwrap();
        let rgb = photo
            .image
            .resize_exact(96, 64, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let still = |scale: Scale| {
            let d = Decoded {
                image: DynamicImage::ImageRgb8(rgb.clone()),
                has_alpha: false,
                notes: Vec::new(),
            };
            let o = StylizeOptions {
                scale,
                ..Default::default()
            };
            stylize(&model, d, &o, None).unwrap().to_rgb8()
        };
        let frame = |scale: Scale| {
            let o = StylizeOptions {
                scale,
                ..Default::default()
            };
            stylize_frame(&model, &rgb, &o, &mut SmoothStats::new(0.0)).unwrap()
        };
        let stats = |a: &RgbImage, b: &RgbImage| {
            let (a, b) = (a.as_raw(), b.as_raw());
            let n = a.len() as f64;
            let ma = a.iter().map(|v| *v as f64).sum::<f64>() / n;
            let mb = b.iter().map(|v| *v as f64).sum::<f64>() / n;
            let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
            for (p, q) in a.iter().zip(b) {
                let (p, q) = (*p as f64 - ma, *q as f64 - mb);
                sab += p * q;
                saa += p * p;
                sbb += q * q;
            }
            ((saa / n).sqrt(), sab / (saa * sbb).sqrt())
        };
        for run in [&still as &dyn Fn(Scale) -> RgbImage, &frame] {
            let own = run(Scale::Factor(1.0));
            for s in [0.25, 0.5, 0.7, 0.99, 1.5, 2.0] {
                let out = run(Scale::Factor(s));
                assert_eq!(out.dimensions(), (96, 64), "scale {s}");
                let (spread, corr) = stats(&out, &own);
                assert!(spread > 10.0, "scale {s}: flat output (spread {spread:.2})");
                assert!(corr > 0.5, "scale {s}: correlation {corr:.3} with scale 1");
            }
        }
    }

    #[test]
    fn odd_and_tiny_sizes_keep_their_size() {
        let model = random_model(Arch::Johnson, 3);
        for (h, w) in [(1, 1), (2, 3), (5, 7), (33, 17)] {
            let x = smooth_image(h, w);
            let y = stylize_tensor(&model, &x, &StylizeOptions::default()).unwrap();
            assert_eq!((y.h, y.w), (h, w));
            assert!(y.data.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn strength_zero_is_the_content_and_preserve_color_keeps_chroma() {
        let o = StylizeOptions {
            strength: 0.0,
            ..Default::default()
        };
        assert_eq!(
            finish(&o, [10.0, 200.0, 30.0], [250.0, 0.0, 3.0]),
            [10, 200, 30]
        );
        let o = StylizeOptions {
            preserve_color: true,
            ..Default::default()
        };
        let c = [200.0, 40.0, 40.0];
        let out = finish(&o, c, [100.0, 100.0, 100.0]);
        let (yo, yc) = (to_ycc(out.map(|v| v as f32)), to_ycc(c));
        assert!(
            (yo[0] - 100.0).abs() < 1.5
                && (yo[1] - yc[1]).abs() < 1.5
                && (yo[2] - yc[2]).abs() < 1.5,
            "{yo:?}"
        );
    }
}
