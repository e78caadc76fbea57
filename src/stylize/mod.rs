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
//!
//! Rooms: `tiles` (the network over a picture, whole or tiled, margin and statistics),
//! `scale` (stroke scale: working size and the way back, with [`guided`] upsampling),
//! `colour` (colour preservation and strength), `frames` (video and live frames with
//! blended statistics), `cancel` (stopping early); here: the options and [`stylize`].

mod cancel;
mod colour;
mod frames;
pub mod guided;
mod scale;
mod tiles;

use cancel::Checked;
pub use cancel::{Cancel, Cancelled, Stopped};
use colour::{finish, to_ycc};
pub use frames::{stylize_frame, SmoothStats};
use scale::{network_planes, resample_to};
pub use scale::{Scale, REFERENCE_SIDE};
use tiles::{run_network, Content};
pub use tiles::{Picture, PictureStats, Progress};

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
    pub fn margin_for<B: crate::backend::Backend>(&self, model: &Transformer<B>) -> usize {
        self.margin.or(model.margin()).unwrap_or(DEFAULT_MARGIN)
    }
}

/// Stylize one decoded image; the result has the input's size (after `max_size`) and keeps
/// its alpha channel.
pub fn stylize<B: crate::backend::Backend>(
    model: &Transformer<B>,
    input: Decoded,
    opts: &StylizeOptions,
    progress: Option<Progress>,
) -> Result<DynamicImage, Stopped> {
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

/// The raw network output (0..255, unclamped) for an RGB tensor of any size, tiled or not;
/// used to measure tiled against whole-image inference.
pub fn stylize_tensor<B: crate::backend::Backend>(
    model: &Transformer<B>,
    x: &Tensor,
    opts: &StylizeOptions,
) -> Result<Tensor, Stopped> {
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

    /// `img` stylized by `model` at stroke scale `scale`, all else default.
    fn at_scale<B: crate::backend::Backend>(
        model: &Transformer<B>,
        img: DynamicImage,
        scale: Scale,
    ) -> RgbImage {
        let o = StylizeOptions {
            scale,
            ..Default::default()
        };
        stylize(model, Decoded::from_image(img), &o, None)
            .unwrap()
            .to_rgb8()
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
        model.forward_with(x.clone(), &mut bare).unwrap().unwrap();
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
        model
            .forward_with(padded.clone(), &mut ours)
            .unwrap()
            .unwrap();
        let mut whole = First(crate::model::transformer::OwnStats, None);
        model.forward_with(padded, &mut whole).unwrap().unwrap();
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
        let run = |img: DynamicImage, scale: Scale| at_scale(&model, img, scale);
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
        let still = |scale: Scale| at_scale(&model, DynamicImage::ImageRgb8(rgb.clone()), scale);
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
