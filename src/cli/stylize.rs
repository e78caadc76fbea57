//! `impasto stylize`: files, folders and stdin in; a file, a folder or stdout out.
use anyhow::{bail, Result};
use image::ImageFormat;
use impasto::imageio;
use impasto::model::Transformer;
use impasto::stylize::{stylize, StylizeOptions};
use impasto::Error;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the result looks like: the options `stylize` and `video` share.
#[derive(clap::Args, Debug)]
pub struct Look {
    /// A built-in style (see `impasto styles`) or a model file (.safetensors).
    #[arg(
        short = 's',
        long = "style",
        visible_alias = "model",
        short_alias = 'm',
        value_name = "NAME|FILE"
    )]
    style: String,
    /// Scale the input down so that the longest side is at most N pixels.
    #[arg(long, value_name = "N", value_parser = super::args::at_least_u32(1))]
    max_size: Option<u32>,
    /// How much style: 1 = full, 0 = the input unchanged.
    #[arg(long, default_value_t = 1.0, value_parser = parse_strength)]
    strength: f32,
    /// Keep the input's colours; stylize the luminance only.
    #[arg(long)]
    preserve_color: bool,
    /// Mirror margin (pixels) around the picture, so that the network's own edge falls
    /// outside it; 0 runs the bare network (statistics are the picture's either way).
    /// Default: the model's own (`impasto info` shows `impasto.margin`), else 8.
    #[arg(long, value_parser = super::args::at_most_usize(impasto::model::transformer::MAX_MARGIN))]
    margin: Option<usize>,
    /// Stroke size: auto (strokes grow with pictures larger than 1024 px, so a print looks
    /// like the same painting at any size), or a factor (2 = strokes twice as large).
    #[arg(long, default_value = "auto", value_parser = impasto::stylize::Scale::parse)]
    scale: impasto::stylize::Scale,
    /// Use the style's live twin: the compact network distilled from it (several times
    /// faster, for previews and real time; `impasto styles` lists them).
    #[arg(long)]
    live: bool,
}

impl Look {
    pub(super) fn model(&self) -> impasto::Result<Transformer> {
        if self.live {
            impasto::styles::resolve_live(&self.style)
        } else {
            impasto::styles::resolve(&self.style)
        }
    }
    pub(super) fn options(&self) -> StylizeOptions {
        StylizeOptions {
            max_size: self.max_size,
            strength: self.strength,
            preserve_color: self.preserve_color,
            margin: self.margin,
            scale: self.scale,
            ..Default::default()
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images or folders (searched recursively); - reads one image from stdin.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output: a file (format from its extension), a folder, or - for stdout.
    /// Default: NAME.stylized.EXT beside a single input, ./stylized/ for several.
    #[arg(short, long)]
    output: Option<String>,
    #[command(flatten)]
    look: Look,
    /// Output format for folders and stdout (default: the input's, else png).
    #[arg(long, value_parser = ["png", "jpg", "webp"])]
    format: Option<String>,
    /// One JSON record per image on stdout.
    #[arg(long)]
    json: bool,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = imageio::DEFAULT_MAX_PIXELS, value_parser = super::args::at_least_u64(1))]
    max_pixels: u64,
    /// Tile size for large images (pixels, at least 64).
    #[arg(long, default_value_t = 1024, value_parser = super::args::at_least_usize(64))]
    tile: usize,
    /// Allow writing over an input image (e.g. `-o` naming the input folder itself).
    #[arg(long)]
    overwrite_inputs: bool,
    /// Images over this many pixels are processed in tiles (bounded memory).
    #[arg(long, default_value_t = 2048 * 2048)]
    tile_threshold: u64,
}

pub(super) fn parse_strength(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("strength must be between 0 and 1, got {v}"))
    }
}

#[derive(Debug, Clone)]
enum Input {
    Stdin,
    File { path: PathBuf, rel: PathBuf },
}

#[derive(Debug, Clone)]
enum Output {
    Stdout(ImageFormat),
    File(PathBuf),
}

const IMAGE_EXTS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "jfif"];

fn format_named(s: &str) -> ImageFormat {
    match s {
        "jpg" => ImageFormat::Jpeg,
        "webp" => ImageFormat::WebP,
        _ => ImageFormat::Png,
    }
}

/// The output extension for an input file: --format, else the input's own if we can write it.
fn out_ext(a: &Args, input: &Path) -> String {
    if let Some(f) = &a.format {
        return f.clone();
    }
    match input
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
    {
        Some(e) if e == "jpg" || e == "jpeg" => "jpg".into(),
        Some(e) if e == "webp" => "webp".into(),
        _ => "png".into(),
    }
}

pub fn run(a: Args) -> Result<i32> {
    // Gather inputs. Unreadable folders and link loops are reported; the rest is done.
    let mut inputs = Vec::new();
    let mut any_dir = false;
    let mut walk_failed = 0usize;
    for s in &a.inputs {
        if s == "-" {
            inputs.push(Input::Stdin);
            continue;
        }
        let p = PathBuf::from(s);
        if p.is_dir() {
            any_dir = true;
            let w = impasto::walk::images(&p, &IMAGE_EXTS);
            for l in &w.loops {
                eprintln!(
                    "impasto: warning: {}: skipped: a link to a folder already searched (link loop)",
                    l.display()
                );
            }
            for (d, e) in &w.unreadable {
                walk_failed += 1;
                eprintln!("impasto: error: {}: cannot read folder: {e}", d.display());
            }
            if w.files.is_empty() && w.unreadable.is_empty() {
                eprintln!("impasto: warning: {}: no images found", p.display());
            }
            inputs.extend(w.files.into_iter().map(|f| Input::File {
                path: f.path,
                rel: f.rel,
            }));
        } else {
            let rel = PathBuf::from(p.file_name().unwrap_or(p.as_os_str()));
            inputs.push(Input::File { path: p, rel });
        }
    }
    if inputs.is_empty() {
        // Only folders were given, and they hold no images (said above).
        return Ok(if walk_failed > 0 { 2 } else { 0 });
    }
    if inputs.iter().filter(|i| matches!(i, Input::Stdin)).count() > 1 {
        bail!(Error::Usage("stdin (-) can be read only once".into()));
    }
    let many = any_dir || inputs.len() > 1;

    // Decide outputs.
    let outs: Vec<Output> = if many {
        if a.output.as_deref() == Some("-") {
            bail!(Error::Usage(
                "several images cannot all go to stdout; give -o a folder".into()
            ));
        }
        let dir = PathBuf::from(a.output.clone().unwrap_or_else(|| "stylized".into()));
        if dir.exists() && !dir.is_dir() {
            bail!(Error::Usage(format!(
                "{}: several inputs need an output folder, and this is a file",
                dir.display()
            )));
        }
        inputs
            .iter()
            .map(|i| match i {
                Input::Stdin => Output::File(
                    dir.join(format!("stdin.{}", a.format.as_deref().unwrap_or("png"))),
                ),
                Input::File { path, rel } => {
                    Output::File(dir.join(rel).with_extension(out_ext(&a, path)))
                }
            })
            .collect()
    } else {
        let out = match (&inputs[0], a.output.as_deref()) {
            (Input::Stdin, None) | (_, Some("-")) => {
                Output::Stdout(format_named(a.format.as_deref().unwrap_or("png")))
            }
            (Input::File { path, .. }, None) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| "image".into());
                Output::File(path.with_file_name(format!("{stem}.stylized.{}", out_ext(&a, path))))
            }
            (i, Some(o)) => {
                let op = PathBuf::from(o);
                if op.is_dir() || o.ends_with('/') {
                    let name = match i {
                        Input::Stdin => format!("stdin.{}", a.format.as_deref().unwrap_or("png")),
                        Input::File { path, .. } => {
                            let stem = path
                                .file_stem()
                                .map(|s| s.to_string_lossy().to_string())
                                .unwrap_or_default();
                            format!("{stem}.{}", out_ext(&a, path))
                        }
                    };
                    Output::File(op.join(name))
                } else {
                    imageio::format_for(&op)?;
                    Output::File(op)
                }
            }
        };
        vec![out]
    };
    let outs = distinct_outputs(&inputs, outs)?;
    if !a.overwrite_inputs {
        refuse_inputs_as_outputs(&inputs, &outs)?;
    }
    if a.json && outs.iter().any(|o| matches!(o, Output::Stdout(_))) {
        bail!(Error::Usage(
            "--json writes to stdout, which the image already uses; give -o a file".into()
        ));
    }

    let model = a.look.model()?;
    let opts = StylizeOptions {
        tile: a.tile,
        tile_threshold: a.tile_threshold,
        ..a.look.options()
    };

    let bar = if many {
        ProgressBar::new(inputs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}  {msg}")
            .unwrap(),
    );
    let mut failed = 0usize;
    for (input, out) in inputs.iter().zip(&outs) {
        let name = input_name(input);
        bar.set_message(name.display().to_string());
        let t0 = Instant::now();
        match one(&model, input, out, &opts, a.max_pixels) {
            Ok((w, h)) => {
                if a.json {
                    let rec = serde_json::json!({
                        "input": name.display().to_string(),
                        "output": match out { Output::File(p) => p.display().to_string(), Output::Stdout(_) => "-".into() },
                        "width": w, "height": h,
                        "seconds": t0.elapsed().as_secs_f64(),
                        "device": "cpu",
                        "ok": true,
                    });
                    bar.suspend(|| -> std::io::Result<()> {
                        outln!("{rec}");
                        Ok(())
                    })?;
                }
            }
            Err(e) => {
                if super::is_broken_pipe(&e) {
                    return Ok(0);
                }
                failed += 1;
                bar.suspend(|| eprintln!("impasto: error: {e:#}"));
                if a.json {
                    let cat = e
                        .downcast_ref::<Error>()
                        .map(|e| e.category())
                        .unwrap_or("other");
                    let rec = serde_json::json!({"input": name.display().to_string(), "ok": false, "error": format!("{e:#}"), "category": cat});
                    bar.suspend(|| -> std::io::Result<()> {
                        outln!("{rec}");
                        Ok(())
                    })?;
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if failed > 0 {
        eprintln!("impasto: {failed} of {} images failed", inputs.len());
        return Ok(2);
    }
    if walk_failed > 0 {
        eprintln!("impasto: {walk_failed} folders could not be read; the images found elsewhere were done");
        return Ok(2);
    }
    Ok(0)
}

/// The key under which two output paths are the same file: lower case, so that a
/// case-insensitive file system (macOS, Windows) cannot merge them either.
fn clash_key(p: &Path) -> String {
    p.to_string_lossy().to_lowercase()
}

/// Give every input its own output file: where two inputs map to one name (`a/x.jpg` and
/// `b/x.jpg` into one folder, `y.bmp` and `y.tiff` both to `y.png`), the later ones get
/// `NAME-2.EXT`, `NAME-3.EXT`, … and a note says so.
fn distinct_outputs(inputs: &[Input], outs: Vec<Output>) -> Result<Vec<Output>> {
    use std::collections::{HashMap, HashSet};
    let mut taken: HashSet<String> = outs
        .iter()
        .filter_map(|o| match o {
            Output::File(p) => Some(clash_key(p)),
            Output::Stdout(_) => None,
        })
        .collect();
    let mut first: HashMap<String, usize> = HashMap::new();
    let mut result = Vec::with_capacity(outs.len());
    for (i, o) in outs.into_iter().enumerate() {
        let Output::File(p) = o else {
            result.push(o);
            continue;
        };
        let key = clash_key(&p);
        let Some(&j) = first.get(&key) else {
            first.insert(key, i);
            result.push(Output::File(p));
            continue;
        };
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = p
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let q = (2..)
            .map(|n| p.with_file_name(format!("{stem}-{n}{ext}")))
            .find(|q| !taken.contains(&clash_key(q)))
            .expect("some name is free");
        taken.insert(clash_key(&q));
        first.insert(clash_key(&q), i);
        eprintln!(
            "impasto: note: {} and {} would both be written to {}; writing the second to {}",
            input_name(&inputs[j]).display(),
            input_name(&inputs[i]).display(),
            p.display(),
            q.display()
        );
        result.push(Output::File(q));
    }
    Ok(result)
}

fn input_name(i: &Input) -> PathBuf {
    match i {
        Input::Stdin => PathBuf::from("<stdin>"),
        Input::File { path, .. } => path.clone(),
    }
}

/// The file a path names once links are followed, if it exists (or its folder does).
fn resolved(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
}

/// Never write over an input unless asked to: `-o` naming an input (or the input folder
/// itself, through links or not) would replace the originals with their stylizations.
fn refuse_inputs_as_outputs(inputs: &[Input], outs: &[Output]) -> Result<()> {
    let ins: std::collections::HashMap<PathBuf, &Path> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::File { path, .. } => Some((resolved(path)?, path.as_path())),
            Input::Stdin => None,
        })
        .collect();
    for o in outs {
        if let Output::File(p) = o {
            if let Some(input) = resolved(p).and_then(|r| ins.get(&r)) {
                bail!(Error::Usage(format!(
                    "{}: the output would overwrite the input image {}; choose another -o (or pass --overwrite-inputs to replace the originals)",
                    p.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

fn one(
    model: &Transformer,
    input: &Input,
    out: &Output,
    opts: &StylizeOptions,
    max_pixels: u64,
) -> Result<(u32, u32)> {
    let decoded = match input {
        Input::Stdin => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Error::io("<stdin>", e))?;
            imageio::read_bytes(
                &buf,
                Path::new("<stdin>"),
                &imageio::Limits::max_pixels(max_pixels),
            )?
        }
        Input::File { path, .. } => {
            imageio::read_path(path, &imageio::Limits::max_pixels(max_pixels))?
        }
    };
    // Big images take a while: show the tile passes.
    let px = decoded.width() as u64 * decoded.height() as u64;
    let tbar = if px > opts.tile_threshold {
        ProgressBar::new(1)
    } else {
        ProgressBar::hidden()
    };
    tbar.set_style(ProgressStyle::with_template("tiles {bar:40} {pos}/{len}  eta {eta}").unwrap());
    let progress = |done: u64, total: u64| {
        tbar.set_length(total);
        tbar.set_position(done);
    };
    let img = stylize(model, decoded, opts, Some(&progress));
    tbar.finish_and_clear();
    let (w, h) = (img.width(), img.height());
    match out {
        Output::Stdout(f) => {
            let mut buf = Vec::new();
            imageio::encode(&img, *f, &mut buf)?;
            let mut so = std::io::stdout().lock();
            so.write_all(&buf)?;
            so.flush()?;
        }
        Output::File(p) => {
            if let Some(d) = p.parent() {
                if !d.as_os_str().is_empty() {
                    std::fs::create_dir_all(d).map_err(|e| {
                        Error::output(p, format!("cannot create folder {}: {e}", d.display()))
                    })?;
                }
            }
            imageio::write_path(&img, p)?;
        }
    }
    Ok((w, h))
}
