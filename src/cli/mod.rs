//! Command definitions and dispatch.
/// `println!` that hands back the error instead of panicking, so that a closed stdout
/// (`impasto evaluate … | head -1`) ends the command quietly (see `is_broken_pipe`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}

mod args;
mod bench;
mod serve;
mod sheet;
mod signals;
mod stylize;
mod train;
mod video;

use anyhow::Result;
use clap::{Parser, Subcommand};
use impasto::model::{Arch, Transformer};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "impasto",
    version,
    about = "Real-time neural style transfer (Johnson et al. 2016)",
    propagate_version = true
)]
pub struct Cli {
    /// Worker threads, 1 to 256 (default: all cores; an empty IMPASTO_THREADS too).
    #[arg(long, global = true, env = "IMPASTO_THREADS", value_parser = args::thread_count)]
    pub threads: Option<usize>,
    /// More detail on stderr (-v: debug, -vv: trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Where the networks run: `auto` (a real GPU when there is one, else the CPU), `cpu`,
    /// or `gpu` (the best GPU adapter, a software one if that is all; an error if none).
    #[arg(long, global = true, env = "IMPASTO_DEVICE", default_value = "auto")]
    pub device: impasto::backend::DeviceChoice,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Stylize images: files, folders (recursive) or - for stdin.
    Stylize(stylize::Args),
    /// Convert a fast-style-transfer ONNX model (ml5 / lengstrom) into an impasto model file.
    Import {
        /// The .onnx file.
        input: PathBuf,
        /// The model file to write (.safetensors).
        #[arg(short, long)]
        output: PathBuf,
        /// Store the weights as float16 (half the size).
        #[arg(long)]
        half: bool,
    },
    /// List the built-in styles, or the styles a model holds (a model file or a built-in
    /// name; a model of several styles lists each, for `stylize --mix`).
    Styles { model: Option<String> },
    /// Render a photo in every built-in style as one labelled contact sheet.
    Sheet(sheet::Args),
    /// Stylize a video (decoded and encoded by the system ffmpeg; audio copied).
    Video(video::Args),
    /// Write a model as ONNX (opset 13) for onnxruntime and other engines: a model file or a
    /// built-in name (`builtins`: the five built-in styles, the style weights a second input).
    Export {
        model: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Rewrite a model file (or a built-in, by name), e.g. as float16 (half the size) or from
    /// a plain TransformerNet state dict into an impasto model with its config recorded.
    Convert {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Store the weights as float16.
        #[arg(long, conflicts_with = "f32")]
        half: bool,
        /// Store the conv weights as int8 with per-channel scales (a quarter of f32).
        #[arg(long, conflicts_with_all = ["half", "f32"])]
        int8: bool,
        /// Store the weights as float32. Without --half, --int8 or --f32 the input's own
        /// precision is kept.
        #[arg(long)]
        f32: bool,
        /// Record a thumbnail of the style painting in the file (for galleries such as
        /// `impasto serve`'s page).
        #[arg(long, value_name = "PAINTING")]
        style_image: Option<PathBuf>,
        /// Record the mirror margin (pixels) the model runs with when none is asked for,
        /// for a network whose edge effect the default 8 does not hide (measure it with
        /// `impasto evaluate --margin N`); 0 runs it bare.
        #[arg(long, value_name = "N", value_parser = args::at_most_usize(impasto::model::transformer::MAX_MARGIN), conflicts_with = "no_margin")]
        margin: Option<usize>,
        /// Drop a recorded margin (back to the default).
        #[arg(long)]
        no_margin: bool,
    },
    /// Serve the styles over HTTP: a JSON API, a web page and live webcam stylization.
    Serve(serve::Args),
    /// Show a model's architecture and how it was made (a file or a built-in style name).
    Info { model: PathBuf },
    /// Time the transformation network at several sizes (median of runs).
    Bench(bench::Args),
    /// Train a style: `--style painting.jpg --data photos/ -o style.safetensors`.
    Train(train::TrainArgs),
    /// Distill a compact live model from a trained style: `--teacher great_wave --data photos/
    /// -o great_wave_live.safetensors` (no VGG backward through the teacher: several times
    /// cheaper per step than `train`).
    Distill(train::DistillArgs),
    /// Mean content, style and TV loss of a model over a folder of photos.
    Evaluate(train::EvalArgs),
    /// Gatys et al.: optimise one image's pixels against the perceptual loss (slow; the
    /// quality yardstick).
    Optimize(train::OptimizeArgs),
    /// List the GPU adapters impasto can run on (and what `--device auto` picks).
    Devices {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Download torchvision's VGG16 from the Hugging Face hub into the cache.
    FetchVgg {
        /// Where to put it (default: the cache folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The device `--device` asked for, opened on first use (once per process).
static DEVICE: std::sync::OnceLock<(
    impasto::backend::DeviceChoice,
    std::sync::OnceLock<impasto::backend::Device>,
)> = std::sync::OnceLock::new();

/// Where this command's networks run; says which on stderr the first time, unless the
/// user asked for the CPU.
pub fn device() -> impasto::Result<impasto::backend::Device> {
    let (choice, cell) = DEVICE.get().expect("run() records the choice");
    if let Some(d) = cell.get() {
        return Ok(d.clone());
    }
    let d = impasto::backend::Device::open(*choice)?;
    if *choice != impasto::backend::DeviceChoice::Cpu {
        tracing::info!("running on {}", d.describe());
    }
    Ok(cell.get_or_init(|| d).clone())
}

pub fn run(cli: Cli) -> Result<i32> {
    let _ = DEVICE.set((cli.device, std::sync::OnceLock::new()));
    // `serve` shuts down through its own (async) signal handling.
    if !matches!(cli.cmd, Cmd::Serve(_)) {
        signals::install();
    }
    match cli.cmd {
        Cmd::Stylize(a) => stylize::run(a),
        Cmd::Import {
            input,
            output,
            half,
        } => {
            impasto::batch::guard_output(&output, &[&input])?;
            let model = impasto::onnx::import(&input)?;
            model.save(&output, half)?;
            eprintln!(
                "imported {} ({:?}, {} residual blocks, eps {}) -> {}",
                input.display(),
                model.config.arch,
                model.config.res_blocks,
                model.config.norm_eps,
                output.display()
            );
            Ok(0)
        }
        Cmd::Video(a) => video::run(a),
        Cmd::Styles { model: None } => sheet::list(),
        Cmd::Styles { model: Some(m) } => sheet::list_model(&m),
        Cmd::Sheet(a) => sheet::sheet(a),
        Cmd::Export { model, output } => {
            impasto::batch::guard_output(&output, &[&model])?;
            let m = impasto::styles::resolve(&model.to_string_lossy())?;
            impasto::onnx_export::export(&m, &output)?;
            eprintln!("wrote {} ({:?})", output.display(), m.config.arch);
            Ok(0)
        }
        Cmd::Convert {
            input,
            output,
            half,
            int8,
            f32,
            style_image,
            margin,
            no_margin,
        } => {
            use impasto::model::format::Precision;
            impasto::batch::guard_output(&output, &[&input])?;
            let spec = input.to_string_lossy();
            let mut m = impasto::styles::resolve(&spec)?;
            let precision = match (half, int8, f32) {
                (_, true, _) => Precision::Int8,
                (true, ..) => Precision::F16,
                (.., true) => Precision::F32,
                // The built-ins are stored as int8.
                _ if impasto::styles::builtin_bytes(&spec).is_some() => Precision::Int8,
                _ => Precision::of_file(&input)?,
            };
            if let Some(p) = style_image {
                let t = impasto::styles::painting_thumbnail(&p)?;
                m.metadata.insert(impasto::styles::THUMBNAIL_KEY.into(), t);
            }
            if margin.is_some() || no_margin {
                m.set_margin(margin);
            }
            m.save_as(&output, precision)?;
            eprintln!(
                "wrote {} ({precision:?}, {:?})",
                output.display(),
                m.config.arch
            );
            Ok(0)
        }
        Cmd::Info { model } => {
            let m = impasto::styles::resolve(&model.to_string_lossy())?;
            let n: usize = m.plan().param_count();
            let mut js = serde_json::json!({
                "file": model.display().to_string(),
                "config": m.config,
                "parameters": n,
                "styles_held": m.style_names(),
            });
            for (k, v) in &m.metadata {
                js[k] = if k == impasto::model::mix::STYLES_KEY {
                    // Each style without its thumbnail's base64.
                    let mut list = serde_json::to_value(m.styles())?;
                    for s in list.as_array_mut().into_iter().flatten() {
                        if let Some(t) = s.get("thumbnail").and_then(|t| t.as_str()) {
                            s["thumbnail"] =
                                format!("<JPEG thumbnail, {} bytes of base64>", t.len()).into();
                        }
                    }
                    list
                } else if k == impasto::styles::THUMBNAIL_KEY {
                    // Not the whole base64 picture: what it is and how big.
                    serde_json::Value::String(format!(
                        "<JPEG thumbnail of the painting, {} bytes of base64>",
                        v.len()
                    ))
                } else {
                    serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone()))
                };
            }
            outln!("{}", serde_json::to_string_pretty(&js)?);
            Ok(0)
        }
        Cmd::Bench(a) => bench::run(a),
        Cmd::Train(a) => train::train(a),
        Cmd::Distill(a) => train::distill(a),
        Cmd::Evaluate(a) => train::evaluate(a),
        Cmd::Optimize(a) => train::optimize(a),
        Cmd::Devices { json } => devices(json),
        Cmd::FetchVgg { dir } => train::fetch_vgg(dir),
        Cmd::Serve(a) => serve::run(a),
    }
}

/// `impasto devices`: the adapters, best first, and what `auto` picks.
fn devices(json: bool) -> Result<i32> {
    let survey = impasto::backend::device::survey();
    if json {
        outln!("{}", serde_json::to_string(&survey)?);
        return Ok(0);
    }
    let list = &survey.adapters;
    if !survey.gpu_backend {
        outln!("this build of impasto has no GPU backend (cargo feature `gpu`)");
    } else if list.is_empty() {
        outln!("no GPU adapter (Vulkan, Metal or DX12) was found");
    } else {
        outln!("| # | adapter | backend | type | max buffer | max binding | driver |");
        outln!("|---|---|---|---|---|---|---|");
        for (i, a) in list.iter().enumerate() {
            outln!(
                "| {i} | {} | {} | {} | {} MiB | {} MiB | {} |",
                a.name,
                a.backend,
                a.kind,
                a.max_buffer_bytes >> 20,
                a.max_binding_bytes >> 20,
                a.driver
            );
        }
    }
    outln!(
        "--device auto runs on the {} here; the CPU has {} threads",
        survey.auto,
        survey.cpu_threads
    );
    Ok(0)
}

/// Load `--model` (a file or a built-in name), or a freshly initialised network of `arch`
/// when none is given.
pub fn model_or_init(model: &Option<PathBuf>, arch: Arch) -> Result<Transformer> {
    Ok(match model {
        Some(p) => impasto::styles::resolve(&p.to_string_lossy())?,
        None => Transformer::init(impasto::model::TransformerConfig::new(arch), 1),
    })
}

/// A mix the model `spec` cannot take, as a usage error; for a built-in style, where its
/// style blends with the others.
pub fn mix_error(spec: &str, msg: String) -> impasto::Error {
    let hint = impasto::styles::blend_hint(spec)
        .filter(|_| msg.contains("has no style"))
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    impasto::Error::Usage(format!("{spec}: {msg}{hint}"))
}

/// The library names a setting as its parameter in backticks (`max_pixels`); on the command
/// line that is a flag (`--max-pixels`).
pub fn flags(msg: &str) -> String {
    const PARAMS: [&str; 13] = [
        "max_pixels",
        "mix",
        "resume",
        "vgg",
        "workers",
        "models",
        "style",
        "steps",
        "epochs",
        "data",
        "lr",
        "live",
        "teacher",
    ];
    let mut out = msg.to_string();
    for p in PARAMS {
        out = out.replace(&format!("`{p}`"), &format!("--{}", p.replace('_', "-")));
    }
    out
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(c.downcast_ref::<impasto::Error>(), Some(impasto::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
