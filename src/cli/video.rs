//! `impasto video`.
use anyhow::Result;
use impasto::stylize::StylizeOptions;
use impasto::video::{stylize_video, VideoOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The video to stylize (anything ffmpeg reads).
    input: PathBuf,
    /// The video to write (H.264; audio copied).
    #[arg(short, long)]
    output: PathBuf,
    /// A built-in style or a model file.
    #[arg(
        short = 's',
        long = "style",
        visible_alias = "model",
        short_alias = 'm',
        value_name = "NAME|FILE"
    )]
    style: String,
    /// Scale frames so the longest side is at most N.
    #[arg(long, value_name = "N")]
    max_size: Option<u32>,
    /// How much style: 1 = full, 0 = the video unchanged.
    #[arg(long, default_value_t = 1.0, value_parser = super::stylize::parse_strength)]
    strength: f32,
    #[arg(long)]
    preserve_color: bool,
    /// Reduce flicker: carry instance-norm statistics from frame to frame.
    #[arg(long)]
    smooth: bool,
    /// How much of the previous frame's statistics --smooth keeps (0..1).
    #[arg(long, default_value_t = 0.9)]
    smooth_momentum: f32,
}

pub fn run(a: Args) -> Result<i32> {
    let model = impasto::styles::resolve(&a.style)?;
    let opts = VideoOptions {
        stylize: StylizeOptions {
            max_size: a.max_size,
            strength: a.strength,
            preserve_color: a.preserve_color,
            ..Default::default()
        },
        smooth: if a.smooth {
            a.smooth_momentum.clamp(0.0, 0.999)
        } else {
            0.0
        },
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} frames  {per_sec}  eta {eta}").unwrap(),
    );
    let t0 = std::time::Instant::now();
    let n = stylize_video(&model, &a.input, &a.output, &opts, |done, total| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let s = t0.elapsed().as_secs_f64();
    eprintln!(
        "{n} frames in {s:.1} s ({:.2} fps) -> {}",
        n as f64 / s,
        a.output.display()
    );
    Ok(0)
}
