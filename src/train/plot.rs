//! The loss-curve PNG: training loss (smoothed) and validation loss against the step, on a
//! log scale, drawn with the `image` crate and a tiny built-in pixel font (no font files,
//! no plotting dependency).

use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

const W: u32 = 800;
const H: u32 = 480;
const L: u32 = 70; // left margin
const B: u32 = 40; // bottom margin
const T: u32 = 30; // top margin
const R: u32 = 20; // right margin

/// 3×5 glyphs, one row per u8 (3 low bits, MSB left).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        'e' => [0, 7, 7, 4, 7],
        's' => [0, 7, 6, 1, 7],
        't' => [2, 7, 2, 2, 3],
        'p' => [0, 7, 5, 7, 4],
        'r' => [0, 6, 5, 4, 4],
        'a' => [0, 6, 3, 5, 7],
        'i' => [2, 0, 2, 2, 2],
        'n' => [0, 6, 5, 5, 5],
        'v' => [0, 5, 5, 5, 2],
        'l' => [6, 2, 2, 2, 7],
        'o' => [0, 7, 5, 5, 7],
        'b' => [4, 6, 5, 5, 6],
        'c' => [0, 7, 4, 4, 7],
        'd' => [1, 3, 5, 5, 3],
        'f' => [3, 4, 6, 4, 4],
        'g' => [0, 7, 5, 3, 6],
        'h' => [4, 6, 5, 5, 5],
        'j' => [1, 0, 1, 5, 2],
        'k' => [4, 5, 6, 5, 5],
        'm' => [0, 7, 7, 5, 5],
        'q' => [0, 7, 5, 7, 1],
        'u' => [0, 5, 5, 5, 7],
        'w' => [0, 5, 5, 7, 7],
        'x' => [0, 5, 2, 2, 5],
        'y' => [0, 5, 7, 1, 6],
        'z' => [0, 7, 2, 4, 7],
        '_' => [0, 0, 0, 0, 7],
        _ => [0; 5],
    }
}

fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>) {
    draw_text(img, x, y, s, color, 2);
}

/// Draw `s` with the 3×5 pixel font at `scale` pixels per font pixel (digits, '.', '-',
/// '+', '_' and lower-case letters; other characters are blank).
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>, scale: u32) {
    let (w, h) = img.dimensions();
    for (i, c) in s.chars().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (i as u32 * 4 + col) * scale + dx;
                            let py = y + row as u32 * scale + dy;
                            if px < w && py < h {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        if x >= 0.0 && y >= 0.0 && (x as u32) < W && (y as u32) < H {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draw the curves of the metrics log at `metrics` into `out`.
pub fn loss_curve(metrics: &Path, out: &Path) -> Result<()> {
    let text_in = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for l in text_in.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(t) = v["total"].as_f64() {
            train.push((step, t));
        } else if let Some(t) = v["val"]["total"].as_f64() {
            val.push((step, t));
        }
    }
    // Exponential smoothing of the noisy per-batch loss.
    let mut s = None;
    for p in train.iter_mut() {
        let v: f64 = s.map_or(p.1, |s: f64| 0.9 * s + 0.1 * p.1);
        s = Some(v);
        p.1 = v;
    }
    let all: Vec<&(f64, f64)> = train
        .iter()
        .chain(&val)
        .filter(|p| p.1 > 0.0 && p.1.is_finite())
        .collect();
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    if !all.is_empty() {
        let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max);
        let lmin = all
            .iter()
            .map(|p| p.1.log10())
            .fold(f64::INFINITY, f64::min)
            .floor();
        let lmax = all
            .iter()
            .map(|p| p.1.log10())
            .fold(f64::NEG_INFINITY, f64::max)
            .ceil()
            .max(lmin + 1.0);
        let px = |x: f64| L as f64 + x / xmax * (W - L - R) as f64;
        let py = |v: f64| T as f64 + (lmax - v.log10()) / (lmax - lmin) * (H - T - B) as f64;
        let grey = Rgb([220, 220, 220]);
        let mut e = lmin;
        while e <= lmax {
            let y = py(10f64.powf(e));
            line(&mut img, (L as f64, y), ((W - R) as f64, y), grey);
            text(
                &mut img,
                4,
                (y as u32).saturating_sub(5),
                &format!("1e{}", e as i64),
                Rgb([0, 0, 0]),
            );
            e += 1.0;
        }
        for i in 0..=4 {
            let x = xmax * i as f64 / 4.0;
            line(&mut img, (px(x), T as f64), (px(x), (H - B) as f64), grey);
            text(
                &mut img,
                (px(x) as u32).saturating_sub(10),
                H - B + 8,
                &format!("{}", x.round() as u64),
                Rgb([0, 0, 0]),
            );
        }
        let black = Rgb([0, 0, 0]);
        line(
            &mut img,
            (L as f64, T as f64),
            (L as f64, (H - B) as f64),
            black,
        );
        line(
            &mut img,
            (L as f64, (H - B) as f64),
            ((W - R) as f64, (H - B) as f64),
            black,
        );
        text(&mut img, W / 2 - 20, H - 16, "step", black);
        let (blue, red) = (Rgb([30, 90, 200]), Rgb([210, 40, 40]));
        for (pts, c) in [(&train, blue), (&val, red)] {
            for w in pts.windows(2) {
                if w[0].1 > 0.0 && w[1].1 > 0.0 {
                    line(
                        &mut img,
                        (px(w[0].0), py(w[0].1)),
                        (px(w[1].0), py(w[1].1)),
                        c,
                    );
                }
            }
            for p in pts.iter().filter(|p| p.1 > 0.0) {
                if pts.len() < 100 {
                    for d in 0..3 {
                        line(
                            &mut img,
                            (px(p.0) - 1.0, py(p.1) - 1.0 + d as f64),
                            (px(p.0) + 1.0, py(p.1) - 1.0 + d as f64),
                            c,
                        );
                    }
                }
            }
        }
        text(&mut img, W - 150, 8, "train", blue);
        text(&mut img, W - 90, 8, "val", red);
    }
    crate::imageio::write_path(&image::DynamicImage::ImageRgb8(img), out)
}
