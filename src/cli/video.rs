//! `impasto video`.
use anyhow::Result;
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
    #[command(flatten)]
    look: super::stylize::Look,
    /// Reduce flicker: carry instance-norm statistics from frame to frame.
    #[arg(long)]
    smooth: bool,
    /// How much of the previous frame's statistics --smooth keeps (0..1).
    #[arg(long, default_value_t = 0.9, value_parser = super::args::fraction_below_one)]
    smooth_momentum: f32,
}

pub fn run(a: Args) -> Result<i32> {
    let model = a.look.model()?;
    let opts = VideoOptions {
        stylize: a.look.options(),
        smooth: if a.smooth { a.smooth_momentum } else { 0.0 },
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
