//! Stroke scale, measured: a photo printed at 4096 px should look like the same painting as
//! at 1024 px. Stylizes the photo at 1024 px (the reference) and at 4096 px with and without
//! the stroke-scale control, brings the 4096 results down to 1024 and scores each against
//! the reference by Gram style distance (VGG16, relu1_2…relu4_3, style weight 1) — lower
//! means the big print carries the same strokes — and writes a comparison sheet of crops.
//!
//!     cargo run --release --example stroke_scale -- STYLE PHOTO VGG SHEET.jpg [SIDE]
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use impasto::imageio::Decoded;
use impasto::model::Vgg16;
use impasto::stylize::{stylize, Scale, StylizeOptions};
use impasto::tensor::Tensor;
use std::time::Instant;

fn tensor(img: &RgbImage) -> Tensor {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut t = Tensor::zeros(1, 3, h, w);
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            t.data[(c * h + y as usize) * w + x as usize] = p.0[c] as f32;
        }
    }
    t
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: stroke_scale STYLE PHOTO VGG SHEET.jpg [SIDE]");
        std::process::exit(2);
    }
    let model = impasto::styles::resolve(&a[1]).unwrap_or_else(|e| panic!("{e}"));
    let photo = image::open(&a[2]).unwrap().to_rgb8();
    let vgg = Vgg16::load(a[3].as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let side: u32 = a.get(5).map(|s| s.parse().unwrap()).unwrap_or(4096);
    let fit = |img: &RgbImage, s: u32| {
        let k = s as f64 / img.width().max(img.height()) as f64;
        let (w, h) = (
            (img.width() as f64 * k).round() as u32,
            (img.height() as f64 * k).round() as u32,
        );
        image::imageops::resize(img, w, h, FilterType::Lanczos3)
    };
    let small = fit(&photo, 1024);
    let big = fit(&photo, side);
    let run = |img: &RgbImage, scale: Scale| -> (RgbImage, f64) {
        let t = Instant::now();
        let d = Decoded::from_image(DynamicImage::ImageRgb8(img.clone()));
        let opts = StylizeOptions {
            scale,
            ..Default::default()
        };
        let out = stylize(&model, d, &opts, None)
            .expect("nothing cancels it")
            .to_rgb8();
        (out, t.elapsed().as_secs_f64())
    };
    let (reference, t_ref) = run(&small, Scale::Factor(1.0));
    let (auto, t_auto) = run(&big, Scale::Auto);
    let (plain, t_plain) = run(&big, Scale::Factor(1.0));
    let down = |img: &RgbImage| {
        image::imageops::resize(
            img,
            reference.width(),
            reference.height(),
            FilterType::Lanczos3,
        )
    };
    // Gram distance of each downscaled big print to the 1024 stylization.
    let target = impasto::train::step::StyleTarget::new(&vgg, &tensor(&reference));
    let gram_dist = |img: &RgbImage| -> f64 {
        let f = vgg.forward(&tensor(img));
        (0..4)
            .map(|t| impasto::loss::style(&impasto::backend::Cpu, &f[t], &target.grams[t], 1.0).0)
            .sum()
    };
    let photo_small = down(&big);
    let (g_auto, g_plain, g_photo) = (
        gram_dist(&down(&auto)),
        gram_dist(&down(&plain)),
        gram_dist(&photo_small),
    );
    println!(
        "{{\"side\": {side}, \"gram_to_1024_stylization\": {{\"scale_auto\": {g_auto:.4e}, \"scale_1\": {g_plain:.4e}, \"photo_itself\": {g_photo:.4e}}}, \"seconds\": {{\"1024\": {t_ref:.2}, \"auto\": {t_auto:.2}, \"scale_1\": {t_plain:.2}}}}}"
    );
    // Sheet: the same region (a quarter of the width) from the 1024 stylization enlarged,
    // the big print with --scale 1, and with --scale auto, side by side.
    let (bw, bh) = (big.width(), big.height());
    let (cw, ch) = (bw / 4, bh / 4);
    let (cx, cy) = (bw * 3 / 8, bh * 3 / 8);
    let crop = |img: &RgbImage, x: u32, y: u32, w: u32, h: u32| {
        image::imageops::crop_imm(img, x, y, w, h).to_image()
    };
    let k = reference.width() as f64 / bw as f64;
    let r = crop(
        &reference,
        (cx as f64 * k) as u32,
        (cy as f64 * k) as u32,
        (cw as f64 * k) as u32,
        (ch as f64 * k) as u32,
    );
    let r = image::imageops::resize(&r, cw, ch, FilterType::Nearest);
    let tiles = [
        r,
        crop(&plain, cx, cy, cw, ch),
        crop(&auto, cx, cy, cw, ch),
        crop(&big, cx, cy, cw, ch),
    ];
    let gap = 8;
    let mut sheet = RgbImage::from_pixel(4 * cw + 3 * gap, ch, image::Rgb([255, 255, 255]));
    for (i, t) in tiles.iter().enumerate() {
        image::imageops::replace(&mut sheet, t, (i as u32 * (cw + gap)) as i64, 0);
    }
    let sheet = image::imageops::resize(
        &sheet,
        sheet.width().min(2400),
        (sheet.height() as f64 * sheet.width().min(2400) as f64 / sheet.width() as f64) as u32,
        FilterType::Lanczos3,
    );
    sheet.save(&a[4]).unwrap();
    // Whole pictures, downscaled, for a look (beside the build, not in the repository).
    let _ = std::fs::create_dir_all("target");
    let stem = "target/stroke-scale";
    down(&auto).save(format!("{stem}-auto-1024.jpg")).unwrap();
    down(&plain)
        .save(format!("{stem}-scale1-1024.jpg"))
        .unwrap();
    reference
        .save(format!("{stem}-reference-1024.jpg"))
        .unwrap();
}
