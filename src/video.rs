//! `impasto video`: frames decoded and encoded by the system `ffmpeg` (raw RGB over pipes),
//! stylized one by one, audio copied from the source. Written to a temporary file and
//! renamed, so a failed run leaves no half-written video.

use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::stylize::{stylize_frame, SmoothStats, StylizeOptions};
use image::RgbImage;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone, Debug)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Frame rate as ffmpeg states it ("30000/1001").
    pub rate: String,
    pub frames: Option<u64>,
}

fn tool(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Environment(format!("`{name}` was not found on PATH; video needs the system ffmpeg (e.g. `apt-get install ffmpeg`)")))
}

/// Size, frame rate and (if known) frame count of the first video stream.
pub fn probe(input: &Path) -> Result<VideoInfo> {
    if !input.exists() {
        return Err(Error::io(
            input,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let out = Command::new(tool("ffprobe")?)
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_packets",
            "-show_entries",
            "stream=width,height,r_frame_rate,nb_read_packets,sample_aspect_ratio:stream_side_data=rotation:stream_tags=rotate",
            "-of",
            "json",
        ])
        .arg(input)
        .output()
        .map_err(|e| Error::io(input, e))?;
    let bad = |m: String| Error::image(input, m);
    if !out.status.success() {
        return Err(bad(format!(
            "not a readable video: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| bad(format!("ffprobe said something unexpected: {e}")))?;
    let s = v["streams"]
        .get(0)
        .ok_or_else(|| bad("no video stream".into()))?;
    let num = |k: &str| {
        s[k].as_u64()
            .or_else(|| s[k].as_str().and_then(|t| t.parse().ok()))
    };
    let (width, height) = (
        num("width").unwrap_or(0) as u32,
        num("height").unwrap_or(0) as u32,
    );
    if width == 0 || height == 0 {
        return Err(bad("the video stream has no size".into()));
    }
    let (width, height) = display_size(width, height, s);
    Ok(VideoInfo {
        width,
        height,
        rate: s["r_frame_rate"].as_str().unwrap_or("25/1").to_string(),
        frames: num("nb_read_packets"),
    })
}

/// The size a stream is shown at, which is the size ffmpeg decodes it to (it applies the
/// rotation itself): the coded size stretched by a non-square sample aspect ratio, then
/// turned by a display matrix or `rotate` tag of ±90° (phone videos).
fn display_size(width: u32, height: u32, stream: &serde_json::Value) -> (u32, u32) {
    let (mut w, h) = (width, height);
    if let Some((n, d)) = stream["sample_aspect_ratio"]
        .as_str()
        .and_then(|r| r.split_once(':'))
        .and_then(|(n, d)| Some((n.parse::<u64>().ok()?, d.parse::<u64>().ok()?)))
    {
        if n > 0 && d > 0 && n != d {
            w = ((w as u64 * n + d / 2) / d).clamp(1, u32::MAX as u64) as u32;
        }
    }
    let from_side = stream["side_data_list"].as_array().and_then(|l| {
        l.iter().find_map(|sd| {
            sd["rotation"]
                .as_f64()
                .or_else(|| sd["rotation"].as_str()?.parse().ok())
        })
    });
    let from_tag = stream["tags"]["rotate"]
        .as_str()
        .and_then(|t| t.parse::<f64>().ok());
    let quarter_turns = from_side
        .or(from_tag)
        .map_or(0, |r| (r / 90.0).round() as i64);
    if quarter_turns.rem_euclid(2) == 1 {
        (h, w)
    } else {
        (w, h)
    }
}

pub struct VideoOptions {
    pub stylize: StylizeOptions,
    /// Momentum of the statistics smoothing (0 = off).
    pub smooth: f32,
}

/// Stylize `input` into `output`; `progress(done, total)` after each frame.
pub fn stylize_video<B: crate::backend::Backend>(
    model: &Transformer<B>,
    input: &Path,
    output: &Path,
    opts: &VideoOptions,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<u64> {
    crate::batch::guard_output(output, &[input])?;
    let info = probe(input)?;
    let ffmpeg = tool("ffmpeg")?;
    let (w, h) = processing_size(&info, opts.stylize.max_size);
    let mut dec = spawn_decoder(&ffmpeg, input, w, h)?;
    let tmp = partial_file(output)?;
    let _partial = crate::io::Partial::register(tmp.path());
    let mut enc = spawn_encoder(&ffmpeg, input, &info.rate, w, h, tmp.path())?;
    let src = dec.stdout.take().expect("piped");
    let mut sink = enc.stdin.take().expect("piped");
    let (frames, reader) = decode_ahead(src, (w * h * 3) as usize);
    let mut stats = SmoothStats::new(opts.smooth);
    let mut blend = TemporalBlend::new(opts.smooth);
    let mut n = 0u64;
    let mut failure = None;
    for buf in frames {
        let frame = RgbImage::from_raw(w, h, buf).expect("frame size");
        let out = match stylize_frame(model, &frame, &opts.stylize, &mut stats) {
            Ok(out) => blend.apply(&frame, out),
            Err(c) => {
                failure = Some(Stop::Stylize(c));
                break;
            }
        };
        if let Err(e) = sink.write_all(out.as_raw()) {
            failure = Some(Stop::Encoder(e));
            break;
        }
        n += 1;
        progress(n, info.frames);
    }
    drop(sink);
    let _ = reader.join();
    let dstat = dec.wait_with_output().map_err(|e| Error::io(&ffmpeg, e))?;
    let estat = enc.wait_with_output().map_err(|e| Error::io(&ffmpeg, e))?;
    check_run(input, output, &dstat, &estat, failure, n)?;
    #[cfg(unix)]
    {
        // tempfile creates 0600; give the video the usual permissions, as for pictures.
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(output)
        .map_err(|e| Error::output(output, e.error.to_string()))?;
    Ok(n)
}

/// Why the frame loop stopped early.
enum Stop {
    Stylize(crate::stylize::Stopped),
    Encoder(std::io::Error),
}

/// The size frames are processed at: the display size, within `max_size`, then even
/// (yuv420p needs even sides).
fn processing_size(info: &VideoInfo, max_size: Option<u32>) -> (u32, u32) {
    let (mut w, mut h) = (info.width, info.height);
    if let Some(m) = max_size {
        if w.max(h) > m {
            let k = m as f64 / w.max(h) as f64;
            w = (w as f64 * k).round() as u32;
            h = (h as f64 * k).round() as u32;
        }
    }
    ((w.max(2) / 2) * 2, (h.max(2) / 2) * 2)
}

/// ffmpeg decoding the first video stream to raw RGB frames of `w×h` on its stdout.
fn spawn_decoder(ffmpeg: &Path, input: &Path, w: u32, h: u32) -> Result<std::process::Child> {
    Command::new(ffmpeg)
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(input)
        .args([
            "-map",
            "0:v:0",
            "-vf",
            &format!("scale={w}:{h}:flags=lanczos"),
        ])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(ffmpeg, e))
}

/// The temporary file the video is written to, beside `output` (renamed over it at the
/// end, so a failed run leaves no half-written video).
fn partial_file(output: &Path) -> Result<tempfile::NamedTempFile> {
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("mp4")
        .to_string();
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::io::remove_stale_partial_files(dir);
    tempfile::Builder::new()
        .prefix(&crate::io::prefix())
        .suffix(&format!(".part.{ext}"))
        .tempfile_in(dir)
        .map_err(|e| Error::output(output, e.to_string()))
}

/// ffmpeg encoding raw RGB frames from its stdin as H.264 into `to`, with the audio of
/// `input` copied.
fn spawn_encoder(
    ffmpeg: &Path,
    input: &Path,
    rate: &str,
    w: u32,
    h: u32,
    to: &Path,
) -> Result<std::process::Child> {
    Command::new(ffmpeg)
        .args(["-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"])
        .args(["-s", &format!("{w}x{h}"), "-r", rate, "-i", "-", "-i"])
        .arg(input)
        .args(["-map", "0:v:0", "-map", "1:a?", "-c:a", "copy"])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18"])
        .args(["-preset", "medium", "-shortest"])
        .arg(to)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(ffmpeg, e))
}

/// Frames read ahead on a thread (two in flight), so that ffmpeg and the network overlap.
fn decode_ahead(
    mut src: impl Read + Send + 'static,
    frame_bytes: usize,
) -> (
    std::sync::mpsc::Receiver<Vec<u8>>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    let reader = std::thread::spawn(move || loop {
        let mut buf = vec![0u8; frame_bytes];
        if src.read_exact(&mut buf).is_err() || tx.send(buf).is_err() {
            return;
        }
    });
    (rx, reader)
}

/// The run's verdict from both ffmpeg processes and the frame loop: the first problem,
/// named by the file it is about.
fn check_run(
    input: &Path,
    output: &Path,
    dec: &std::process::Output,
    enc: &std::process::Output,
    failure: Option<Stop>,
    frames: u64,
) -> Result<()> {
    let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).trim().to_string();
    if !dec.status.success() {
        return Err(Error::image(
            input,
            format!("ffmpeg could not decode it: {}", said(dec)),
        ));
    }
    match failure {
        Some(Stop::Stylize(c)) => return Err(c.into()),
        Some(Stop::Encoder(e)) => {
            return Err(Error::output(
                output,
                format!("ffmpeg stopped taking frames ({e}): {}", said(enc)),
            ))
        }
        None => {}
    }
    if !enc.status.success() {
        return Err(Error::output(
            output,
            format!("ffmpeg could not encode: {}", said(enc)),
        ));
    }
    if frames == 0 {
        return Err(Error::image(input, "no frames could be decoded"));
    }
    Ok(())
}

/// Motion-masked temporal blending: where the input did not change since the last frame,
/// the output keeps `momentum` of the previous output; where it moved, the new stylization
/// wins (weight falls off as exp(−|Δinput|/8)). Removes texture flicker in still regions
/// without ghosting moving ones.
pub struct TemporalBlend {
    momentum: f32,
    prev: Option<(RgbImage, Vec<f32>)>,
}

impl TemporalBlend {
    pub fn new(momentum: f32) -> Self {
        TemporalBlend {
            momentum,
            prev: None,
        }
    }

    pub fn apply(&mut self, input: &RgbImage, out: RgbImage) -> RgbImage {
        if self.momentum <= 0.0 {
            return out;
        }
        let cur: Vec<f32> = out.as_raw().iter().map(|&v| v as f32).collect();
        let blended = match &self.prev {
            Some((pin, pout)) if pin.dimensions() == input.dimensions() => {
                let (a, b) = (input.as_raw(), pin.as_raw());
                let mut res = cur.clone();
                for px in 0..a.len() / 3 {
                    let d: f32 = (0..3)
                        .map(|c| (a[3 * px + c] as f32 - b[3 * px + c] as f32).abs())
                        .sum::<f32>()
                        / 3.0;
                    let wgt = self.momentum * (-d / 8.0).exp();
                    for c in 0..3 {
                        let i = 3 * px + c;
                        res[i] = wgt * pout[i] + (1.0 - wgt) * cur[i];
                    }
                }
                res
            }
            _ => cur,
        };
        let img = RgbImage::from_raw(
            input.width(),
            input.height(),
            blended
                .iter()
                .map(|v| v.round().clamp(0.0, 255.0) as u8)
                .collect(),
        )
        .expect("size");
        self.prev = Some((input.clone(), blended));
        img
    }
}

/// Mean absolute change between consecutive frames (0..255), to measure flicker.
pub fn mean_frame_change(frames: &[RgbImage]) -> f64 {
    let mut total = 0.0;
    for p in frames.windows(2) {
        let s: u64 = p[0]
            .as_raw()
            .iter()
            .zip(p[1].as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).unsigned_abs() as u64)
            .sum();
        total += s as f64 / p[0].as_raw().len() as f64;
    }
    total / (frames.len().saturating_sub(1).max(1)) as f64
}

/// Decode every frame of a (small) video as RGB, for measurements and tests.
pub fn read_frames(input: &Path) -> Result<Vec<RgbImage>> {
    let info = probe(input)?;
    let out = Command::new(tool("ffmpeg")?)
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(input)
        .args(["-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .map_err(|e| Error::io(input, e))?;
    let fb = (info.width * info.height * 3) as usize;
    Ok(out
        .stdout
        .chunks_exact(fb)
        .map(|c| RgbImage::from_raw(info.width, info.height, c.to_vec()).expect("size"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_and_anamorphic_streams_are_shown_at_their_display_size() {
        let js = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        let plain = js(r#"{"sample_aspect_ratio": "1:1"}"#);
        assert_eq!(display_size(320, 240, &plain), (320, 240));
        let side =
            js(r#"{"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}"#);
        assert_eq!(display_size(320, 240, &side), (240, 320));
        let tag = js(r#"{"tags": {"rotate": "270"}}"#);
        assert_eq!(display_size(320, 240, &tag), (240, 320));
        let half = js(r#"{"side_data_list": [{"rotation": 180}]}"#);
        assert_eq!(display_size(320, 240, &half), (320, 240));
        // DVD widescreen: 720×480 coded, 32:27 pixels, shown at 853×480.
        let wide = js(r#"{"sample_aspect_ratio": "32:27"}"#);
        assert_eq!(display_size(720, 480, &wide), (853, 480));
    }
}
