//! `impasto stylize`: files, folders and stdin in; a file, a folder or stdout out.
use anyhow::{bail, Result};
use impasto::batch::{self, Source, Target};
use impasto::imageio;
use impasto::model::Transformer;
use impasto::stylize::{stylize, StylizeOptions};
use impasto::Error;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};
use std::path::Path;
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
    /// A model of several styles: pick one (`NAME`) or blend them (`a=0.7,b=0.3`,
    /// normalised). Default: its first style. `impasto styles MODEL` lists them.
    #[arg(long, value_name = "NAME|NAME=W,…", value_parser = impasto::model::Mix::parse)]
    mix: Option<impasto::model::Mix>,
}

impl Look {
    /// The style's network, on the device `--device` chose.
    pub(super) fn model(&self) -> impasto::Result<Transformer<impasto::backend::Device>> {
        Ok(self.model_on_host()?.to_backend(super::device()?))
    }

    fn model_on_host(&self) -> impasto::Result<Transformer> {
        self.network()?
            .select(self.mix.as_ref())
            .map_err(|m| super::mix_error(&self.style, m))
    }

    fn network(&self) -> impasto::Result<Transformer> {
        if self.live {
            impasto::styles::resolve_live(&self.style).map_err(|e| match e {
                // The command that makes one.
                impasto::Error::Usage(m) => impasto::Error::Usage(format!(
                    "{m} (`impasto distill --teacher {} --data PHOTOS -o live.safetensors`)",
                    self.style
                )),
                e => e,
            })
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
    #[arg(long, value_parser = batch::OUTPUT_FORMATS)]
    format: Option<String>,
    /// Follow links that lead out of an input folder (by default only links that stay
    /// inside it are followed, and the others are reported).
    #[arg(long = "follow")]
    follow_links: bool,
    /// One JSON record per image on stdout.
    #[arg(long)]
    json: bool,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = imageio::DEFAULT_MAX_PIXELS, value_parser = super::args::at_least_u64(1))]
    max_pixels: u64,
    /// Tile size for large images (pixels, at least 64).
    #[arg(long, default_value_t = impasto::stylize::DEFAULT_TILE, value_parser = super::args::at_least_usize(64))]
    tile: usize,
    /// Allow writing over an input image (e.g. `-o` naming the input folder itself).
    #[arg(long)]
    overwrite_inputs: bool,
    /// Images over this many pixels are processed in tiles (bounded memory).
    #[arg(long, default_value_t = impasto::stylize::DEFAULT_TILE_THRESHOLD)]
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

pub fn run(a: Args) -> Result<i32> {
    // The plan from inputs to outputs is the library's: walking, naming, and the guard
    // against writing over an input. Unreadable folders and link loops are reported; the
    // rest is done.
    let batch = batch::plan(&batch::BatchRequest {
        inputs: a.inputs.clone(),
        output: a.output.clone(),
        format: a.format.clone(),
        overwrite_inputs: a.overwrite_inputs,
        walk: impasto::walk::WalkOptions {
            follow_links: a.follow_links,
        },
    })
    .map_err(|e| match e {
        Error::Usage(m) if m.contains("overwrite the input") => Error::Usage(format!(
            "{m} (or pass --overwrite-inputs to replace the originals)"
        )),
        e => e,
    })?;
    for w in &batch.warnings {
        eprintln!("impasto: warning: {w}");
    }
    for e in &batch.errors {
        eprintln!("impasto: error: {e}");
    }
    for n in &batch.notes {
        eprintln!("impasto: note: {n}");
    }
    let walk_failed = batch.errors.len();
    if batch.items.is_empty() {
        // Only folders were given, and they hold no images (said above).
        return Ok(if walk_failed > 0 { 2 } else { 0 });
    }
    if a.json
        && batch
            .items
            .iter()
            .any(|(_, t)| matches!(t, Target::Stdout(_)))
    {
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

    let bar = if batch.many {
        ProgressBar::new(batch.items.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}  {msg}")
            .unwrap(),
    );
    let mut failed = 0usize;
    for (input, out) in &batch.items {
        let name = input.name();
        bar.set_message(name.display().to_string());
        let t0 = Instant::now();
        match one(&model, input, out, &opts, a.max_pixels) {
            Ok((w, h, notes)) => {
                for n in &notes {
                    bar.suspend(|| eprintln!("impasto: note: {}: {n}", name.display()));
                }
                if a.json {
                    let rec = serde_json::json!({
                        "input": name.display().to_string(),
                        "output": match out { Target::File(p) => p.display().to_string(), Target::Stdout(_) => "-".into() },
                        "width": w, "height": h,
                        "seconds": t0.elapsed().as_secs_f64(),
                        "device": "cpu",
                        "notes": notes,
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
                bar.suspend(|| eprintln!("impasto: error: {}", super::flags(&format!("{e:#}"))));
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
        eprintln!("impasto: {failed} of {} images failed", batch.items.len());
        return Ok(2);
    }
    if walk_failed > 0 {
        eprintln!("impasto: {walk_failed} folders could not be read; the images found elsewhere were done");
        return Ok(2);
    }
    Ok(0)
}

fn one(
    model: &Transformer<impasto::backend::Device>,
    input: &Source,
    out: &Target,
    opts: &StylizeOptions,
    max_pixels: u64,
) -> Result<(u32, u32, Vec<String>)> {
    let decoded = match input {
        Source::Stdin => {
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
        Source::File { path, .. } => {
            imageio::read_path(path, &imageio::Limits::max_pixels(max_pixels))?
        }
    };
    let notes = decoded.notes.clone();
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
    let img = stylize(model, decoded, opts, Some(&progress)).map_err(Error::from)?;
    tbar.finish_and_clear();
    let (w, h) = (img.width(), img.height());
    match out {
        Target::Stdout(f) => {
            let mut buf = Vec::new();
            imageio::encode(&img, *f, &mut buf)?;
            let mut so = std::io::stdout().lock();
            so.write_all(&buf)?;
            so.flush()?;
        }
        Target::File(p) => {
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
    Ok((w, h, notes))
}
