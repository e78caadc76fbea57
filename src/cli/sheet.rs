//! `impasto styles` and `impasto sheet`.
use anyhow::Result;
use impasto::stylize::{stylize, StylizeOptions};
use impasto::Error;
use std::path::PathBuf;

pub fn list() -> Result<i32> {
    let names = impasto::styles::names();
    if names.is_empty() {
        outln!("no built-in styles in this build");
    }
    for n in names {
        let m = impasto::styles::builtin(n).expect("listed")?;
        let prov = impasto::model::provenance::Provenance::from_metadata(&m.metadata)
            .transpose()?
            .unwrap_or_default();
        let t = prov.train.unwrap_or_default();
        let show = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        let margin = m
            .margin()
            .map(|px| format!("; runs with a {px}-pixel margin"))
            .unwrap_or_default();
        let row = impasto::styles::row_of(n);
        let of = row
            .map(|(whole, _)| format!(", a style of {whole}"))
            .unwrap_or_default();
        if let Some(d) = t.other.get("distill") {
            // A row of a twin of several styles: the batches took the styles in turn.
            let (teacher, steps) = match row {
                Some((whole, style)) => {
                    let n = impasto::styles::names()
                        .into_iter()
                        .filter(|m| impasto::styles::row_of(m).map(|r| r.0) == Some(whole))
                        .count();
                    // The file records the run's steps, not each row's share of them (a
                    // run resumed from another build's checkpoint may have split them
                    // otherwise), so the line says the run.
                    let steps = prov
                        .steps_done
                        .map(|v| format!("a run of {v} steps over {n} styles"));
                    (style.to_string(), steps)
                }
                None => (
                    d["teacher"].as_str().unwrap_or("?").to_string(),
                    prov.steps_done.map(|v| format!("{v} steps")),
                ),
            };
            outln!(
                "{n:<20} live: {:?} channels, {} residual blocks ({} parameters), distilled from {teacher} in {} at {}²{of}{margin}",
                m.config.channels,
                m.config.res_blocks,
                m.plan().param_count(),
                show(steps),
                show(t.image_size.map(|v| v.to_string())),
            );
            continue;
        }
        // A row of a network of several styles: its own steps and style weight.
        let style = m.styles().into_iter().next().unwrap_or_default();
        let steps = match row {
            Some(_) => style.steps,
            None => prov.steps_done,
        };
        let weight = match row {
            Some(_) => style.style_weight,
            None => t.loss.map(|l| l.style_weight),
        };
        outln!(
            "{n:<20} {:?}, trained {} steps at {}² on {} photos (style weight {}){of}{margin}",
            m.config.arch,
            show(steps.map(|v| v.to_string())),
            show(t.image_size.map(|v| v.to_string())),
            show(t.dataset_size.map(|v| v.to_string())),
            show(weight.map(|v| v.to_string()))
        );
    }
    for n in impasto::styles::blends() {
        let m = impasto::styles::builtin(n).expect("listed")?;
        outln!(
            "{n:<20} the {} styles {} in one network: blend them with --style {n} --mix {}=0.5,{}=0.5",
            m.style_count(),
            m.style_names().join(", "),
            m.style_names()[0],
            m.style_names()[1],
        );
    }
    Ok(0)
}

/// `impasto styles MODEL`: the styles one model holds, a line each.
pub fn list_model(model: &str) -> Result<i32> {
    let m = impasto::styles::resolve(model)?;
    let n = m.style_count();
    outln!(
        "{model}: {n} style{} ({:?}, {} parameters)",
        if n == 1 { "" } else { "s" },
        m.config.arch,
        m.plan().param_count()
    );
    for s in m.styles() {
        let steps = s.steps.map(|v| format!(", {v} steps")).unwrap_or_default();
        let painting = s.painting.as_deref().unwrap_or("painting not recorded");
        outln!("{:<20} {painting}{steps}", s.name);
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The photo.
    photo: PathBuf,
    /// The sheet to write (png, jpg, webp).
    #[arg(short, long)]
    output: PathBuf,
    /// Longest side of each tile.
    #[arg(long, default_value_t = 384, value_parser = super::args::at_least_u32(16))]
    max_size: u32,
    /// Only these styles, in this order: built-in names or model files (labelled by file
    /// name), e.g. to put impasto's model beside another project's; `photo` places the photo
    /// itself (then it is not put first on its own), e.g. `--columns 3 --style photo --style
    /// great_wave --style great_wave_live` per row. Default: every built-in.
    #[arg(long = "style", value_name = "NAME|FILE")]
    styles: Vec<String>,
    /// Tiles per row.
    #[arg(long, default_value_t = 4, value_parser = super::args::at_least_u32(1))]
    columns: u32,
    /// For a model of several styles: a tile per mix given (`a=0.75,b=0.25`; repeat it
    /// for a row of blends) instead of a tile per style.
    #[arg(long, value_name = "NAME|NAME=W,…", value_parser = impasto::model::Mix::parse)]
    mix: Vec<impasto::model::Mix>,
}

pub fn sheet(a: Args) -> Result<i32> {
    impasto::imageio::format_for(&a.output)?;
    let reads: Vec<&std::path::Path> = std::iter::once(a.photo.as_path())
        .chain(a.styles.iter().map(std::path::Path::new))
        .collect();
    impasto::batch::guard_output(&a.output, &reads)?;
    let names: Vec<String> = if a.styles.is_empty() {
        impasto::styles::names()
            .into_iter()
            .map(String::from)
            .collect()
    } else {
        a.styles.clone()
    };
    if names.is_empty() {
        return Err(Error::Usage("this build has no built-in styles".into()).into());
    }
    let mut models = Vec::new();
    let mut several = false;
    for n in &names {
        if n == "photo" {
            models.push((n.clone(), None));
            continue;
        }
        let label = match impasto::styles::builtin(n) {
            Some(_) => n.clone(),
            None => std::path::Path::new(n)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| n.clone()),
        };
        let m = impasto::styles::resolve(n)?;
        if m.style_count() == 1 {
            models.push((label, Some(m.to_backend(super::device()?))));
            continue;
        }
        // A model of several styles: a tile per style, or per mix asked for.
        several = true;
        let names = m.style_names();
        let weights: Vec<Vec<f64>> = if a.mix.is_empty() {
            (0..names.len())
                .map(|k| {
                    (0..names.len())
                        .map(|i| f64::from(u8::from(i == k)))
                        .collect()
                })
                .collect()
        } else {
            a.mix
                .iter()
                .map(|mix| mix.weights(&names))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Usage(format!("{n}: {e}")))?
        };
        for w in weights {
            let tag = impasto::model::Mix::describe(&names, &w);
            let tag = tag.strip_suffix("=1").unwrap_or(&tag).to_string();
            models.push((tag, Some(m.mixed(&w).to_backend(super::device()?))));
        }
    }
    if !a.mix.is_empty() && !several {
        return Err(Error::Usage(
            "--mix blends the styles of a model of several styles, and the sheet has none (`impasto styles MODEL` lists a model's styles)".into(),
        )
        .into());
    }
    let decoded = impasto::imageio::read_path(&a.photo, &Default::default())?;
    let opts = StylizeOptions {
        max_size: Some(a.max_size),
        ..Default::default()
    };
    let original = decoded.image.clone();
    let photo = || ("photo".to_string(), stylize_none(&original, a.max_size));
    let mut tiles = Vec::new();
    if models.iter().all(|(_, m)| m.is_some()) {
        tiles.push(photo());
    }
    for (label, m) in &models {
        let Some(m) = m else {
            tiles.push(photo());
            continue;
        };
        let d = impasto::imageio::Decoded::from_image(original.clone());
        tiles.push((label.clone(), stylize(m, d, &opts, None)?.to_rgb8()));
    }
    let (tw, th) = tiles[0].1.dimensions();
    let cols = (tiles.len() as u32).min(a.columns.max(1));
    let rows = (tiles.len() as u32).div_ceil(cols);
    let (pad, label) = (8u32, 26u32);
    let mut img = image::RgbImage::from_pixel(
        cols * (tw + pad) + pad,
        rows * (th + label + pad) + pad,
        image::Rgb([255, 255, 255]),
    );
    for (i, (name, t)) in tiles.iter().enumerate() {
        let (x0, y0) = (
            pad + (i as u32 % cols) * (tw + pad),
            pad + (i as u32 / cols) * (th + label + pad),
        );
        image::imageops::overlay(&mut img, t, x0 as i64, y0 as i64);
        // The largest lettering that fits the tile (a blend's label is long), else cut.
        let chars = name.chars().count() as u32;
        let scale = [3, 2, 1]
            .into_iter()
            .find(|s| chars * 4 * s <= tw)
            .unwrap_or(1);
        let fit: String = name.chars().take((tw / (4 * scale)) as usize).collect();
        impasto::train::plot::draw_text(
            &mut img,
            x0,
            y0 + th + 5,
            &fit,
            image::Rgb([20, 20, 20]),
            scale,
        );
    }
    impasto::imageio::write_path(&image::DynamicImage::ImageRgb8(img), &a.output)?;
    let styles = models.iter().filter(|(_, m)| m.is_some()).count();
    eprintln!("wrote {} ({styles} styles)", a.output.display());
    Ok(0)
}

fn stylize_none(img: &image::DynamicImage, max: u32) -> image::RgbImage {
    let (w, h) = (img.width(), img.height());
    if w.max(h) <= max {
        return img.to_rgb8();
    }
    let k = max as f64 / w.max(h) as f64;
    img.resize_exact(
        ((w as f64 * k).round() as u32).max(1),
        ((h as f64 * k).round() as u32).max(1),
        image::imageops::FilterType::Lanczos3,
    )
    .to_rgb8()
}
