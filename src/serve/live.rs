//! Live mode: webcam frames over a WebSocket.
//!
//! The client sends its settings as JSON text (`{"style", "strength", "preserve_color",
//! "max_size"}`, any time) and frames as binary messages (JPEG, PNG or WebP). For each frame
//! it stylizes, the server sends a JSON text record (`frame`, `ms`, `width`, `height`,
//! `dropped`) followed by the stylized JPEG. A frame that arrives while the previous one is
//! still waiting replaces it, and the replaced one is answered with `{"skipped": N,
//! "dropped": total}`: a slow server shows fewer frames, never older ones, and a client
//! that waits for an answer to each frame is never left hanging. Connections wait for a
//! worker in turn (first come, first served), so many clients share the workers fairly. Each connection blends
//! its instance-norm statistics across frames (as `impasto video --smooth` does) so the
//! picture does not flicker; a new style starts afresh.

use super::api::{clip, ApiError, Params};
use super::App;
use crate::stylize::{stylize_frame, SmoothStats};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

/// Statistics blending for live frames (see `SmoothStats`).
const MOMENTUM: f32 = 0.6;

pub async fn upgrade(State(app): State<Arc<App>>, ws: WebSocketUpgrade) -> Response {
    let limit = app.cfg.max_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session(app, socket))
}

#[derive(Default)]
struct Shared {
    /// The newest frame not yet taken: (number, bytes, settings when it arrived).
    slot: Mutex<Option<(u64, axum::body::Bytes, Params)>>,
    wake: Notify,
    dropped: AtomicU64,
}

async fn session(app: Arc<App>, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    // Set when this connection ends (the client left): a frame being stylized stops.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_on_drop = super::StopOnDrop(stop.clone());
    let shared = Arc::new(Shared::default());
    // Text records for the client besides the frames' own: errors and skipped-frame notices.
    let (err_tx, mut err_rx) = mpsc::channel::<String>(64);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let (close_tx, mut close_rx) = mpsc::channel::<(u16, String)>(1);

    // Reader: settings and frames in; the newest frame waits in the slot.
    let reader = {
        let (app, shared) = (app.clone(), shared.clone());
        tokio::spawn(async move {
            let mut params: Option<Params> = None;
            let mut n = 0u64;
            while let Some(msg) = rx.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        // A message over --max-bytes (or a broken frame): say why in the
                        // close frame, as RFC 6455 asks (1009: too big to process).
                        let text = e.to_string();
                        let too_big = text.contains("too long") || text.contains("limit");
                        let (code, reason) = if too_big {
                            (
                                1009,
                                format!(
                                    "message over this server's limit of {} bytes",
                                    app.cfg.max_bytes
                                ),
                            )
                        } else {
                            (1002, clip(&text, 100))
                        };
                        let _ = close_tx.send((code, reason)).await;
                        break;
                    }
                };
                match msg {
                    Message::Text(t) => match settings(&t, &app) {
                        Ok(p) => params = Some(p),
                        Err(e) => {
                            let _ = err_tx.send(e.json().to_string()).await;
                        }
                    },
                    Message::Binary(b) => {
                        n += 1;
                        let Some(p) = params.clone() else {
                            let e = ApiError::bad(
                                "send the settings (JSON text with a style) before frames",
                            );
                            let _ = err_tx.send(e.json().to_string()).await;
                            continue;
                        };
                        let old = shared.slot.lock().unwrap().replace((n, b, p));
                        if let Some((old_n, ..)) = old {
                            // Answer the replaced frame too, so that a client waiting for
                            // an answer to each frame is never left hanging.
                            let total = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                            let rec = serde_json::json!({"skipped": old_n, "dropped": total});
                            let _ = err_tx.try_send(rec.to_string());
                        }
                        shared.wake.notify_one();
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = done_tx.send(()).await;
        })
    };

    // Stylizer/writer: takes the newest frame whenever the previous one is done.
    let mut smooth: Option<(String, SmoothStats)> = None;
    loop {
        tokio::select! {
            biased;
            Some((code, reason)) = close_rx.recv() => {
                let frame = axum::extract::ws::CloseFrame { code, reason: reason.into() };
                let _ = tx.send(Message::Close(Some(frame))).await;
                break;
            }
            _ = done_rx.recv() => break,
            Some(e) = err_rx.recv() => {
                if tx.send(Message::Text(e.into())).await.is_err() { break; }
            }
            _ = shared.wake.notified() => {
                if shared.slot.lock().unwrap().is_none() { continue }
                // Wait for a worker in turn with every other connection and request (fair:
                // first come, first served); frames that arrive meanwhile replace this one.
                let worker = match app.pool.worker().await {
                    Ok(w) => w,
                    Err(e) => { let _ = tx.send(Message::Text(ApiError::bad(e).json().to_string().into())).await; break; }
                };
                if reader.is_finished() { break; }
                let Some((n, bytes, params)) = shared.slot.lock().unwrap().take() else { continue };
                let model = app.styles.get(&params.style).expect("checked").network(params.mix.as_deref());
                let mut stats = match smooth.take() {
                    Some((s, st)) if s == params.style => st,
                    _ => SmoothStats::new(MOMENTUM),
                };
                let max_side = params.max_size.unwrap_or(app.cfg.live_max_side).min(app.cfg.live_max_side);
                // Each frame has a time budget; the connection's end and the server's halt
                // stop it too.
                let budget = app.cfg.live_frame_budget;
                let opts = crate::stylize::StylizeOptions {
                    cancel: app.cancel(&stop),
                    ..params.options(max_side)
                };
                let max_pixels = app.cfg.max_pixels;
                let job = move || {
                    let t0 = Instant::now();
                    let deadline = t0 + budget;
                    let opts = crate::stylize::StylizeOptions {
                        cancel: opts.cancel.clone().or(crate::stylize::Cancel::when(move || Instant::now() > deadline)),
                        ..opts
                    };
                    let r = frame(&bytes, max_pixels, max_side, &model, &opts, &mut stats, budget);
                    (r, stats, t0.elapsed().as_secs_f64() * 1e3)
                };
                let (r, stats, ms) = match app.pool.run_on(worker, job).await {
                    Ok(x) => x,
                    Err(e) => { let _ = tx.send(Message::Text(ApiError::bad(e).json().to_string().into())).await; break; }
                };
                smooth = Some((params.style.clone(), stats));
                // Notices about frames replaced meanwhile go out before this frame's answer,
                // so a client sees every earlier frame answered first.
                while let Ok(e) = err_rx.try_recv() {
                    if tx.send(Message::Text(e.into())).await.is_err() { break; }
                }
                let sent = match r {
                    Ok((jpg, w, h)) => {
                        let mix = params.mix.as_ref().map(|w| {
                            let names = &app.styles.get(&params.style).expect("checked").styles;
                            crate::model::Mix::describe(names, w)
                        });
                        let rec = serde_json::json!({
                            "frame": n, "ms": (ms * 10.0).round() / 10.0, "width": w, "height": h,
                            "style": params.style, "mix": mix, "dropped": shared.dropped.load(Ordering::Relaxed),
                        });
                        match tx.send(Message::Text(rec.to_string().into())).await {
                            Ok(()) => tx.send(Message::Binary(jpg.into())).await,
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => tx.send(Message::Text(e.json().to_string().into())).await,
                };
                if sent.is_err() { break; }
            }
        }
    }
    reader.abort();
}

fn settings(text: &str, app: &App) -> Result<Params, ApiError> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::bad(format!("settings are not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad("settings must be a JSON object"))?;
    let mut q = HashMap::new();
    for (k, v) in obj {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            other => other.to_string(),
        };
        q.insert(k.clone(), s);
    }
    let p = Params::parse(&q, app)?;
    refuse_costly(&p, app)?;
    Ok(p)
}

/// Refuse live settings whose frames would cost far more than the budget allows: the
/// network's padded input at the largest frame this server takes, against that of a plain
/// frame (`live_max_side`, margin 64) with room for twice that.
fn refuse_costly(p: &Params, app: &App) -> Result<(), ApiError> {
    let side = p
        .max_size
        .unwrap_or(app.cfg.live_max_side)
        .min(app.cfg.live_max_side) as f64;
    let factor = match p.scale {
        crate::stylize::Scale::Factor(f) => f as f64,
        crate::stylize::Scale::Auto => 1.0,
    };
    let model = &app.styles.get(&p.style).expect("checked").model;
    let margin = p
        .margin
        .or(model.margin())
        .unwrap_or(crate::stylize::DEFAULT_MARGIN) as f64;
    let cost = (side / factor + 2.0 * margin).powi(2);
    let allowed = 2.0 * (app.cfg.live_max_side as f64 + 128.0).powi(2);
    if cost > allowed {
        return Err(ApiError::bad(format!(
            "these live settings cost too much per frame: {:.0}x{:.0} pixels through the network at max_size {side}, scale {factor}, margin {margin} (this server allows about {:.0}x{:.0}); raise scale or lower margin or max_size",
            side / factor + 2.0 * margin,
            side / factor + 2.0 * margin,
            allowed.sqrt(),
            allowed.sqrt()
        )));
    }
    Ok(())
}

/// One live frame as a WebSocket connection handles it, with the live defaults (settings
/// `{"style"}` only): decode, scale to at most `max_side`, stylize with blended statistics,
/// JPEG-encode. For `impasto bench --frames`, which times exactly the server's work per frame.
pub fn default_frame<B: crate::backend::Backend>(
    bytes: &[u8],
    model: &crate::model::Transformer<B>,
    max_side: u32,
    stats: &mut Option<SmoothStats>,
) -> Result<Vec<u8>, String> {
    let opts = crate::stylize::StylizeOptions {
        max_size: Some(max_side),
        ..Default::default()
    };
    let st = stats.get_or_insert_with(|| SmoothStats::new(MOMENTUM));
    frame(
        bytes,
        u64::MAX,
        max_side,
        model,
        &opts,
        st,
        std::time::Duration::MAX,
    )
    .map(|(jpg, _, _)| jpg)
    .map_err(|e| e.json().to_string())
}

fn frame<B: crate::backend::Backend>(
    bytes: &[u8],
    max_pixels: u64,
    max_side: u32,
    model: &crate::model::Transformer<B>,
    opts: &crate::stylize::StylizeOptions,
    stats: &mut SmoothStats,
    budget: std::time::Duration,
) -> Result<(Vec<u8>, u32, u32), ApiError> {
    let d = crate::imageio::read_bytes(
        bytes,
        std::path::Path::new("frame"),
        &crate::imageio::Limits::max_pixels(max_pixels),
    )?;
    let img = if d.width().max(d.height()) > max_side {
        d.image.thumbnail(max_side, max_side)
    } else {
        d.image
    };
    let rgb = img.to_rgb8();
    let out = stylize_frame(model, &rgb, opts, stats).map_err(|e| match e {
        crate::stylize::Stopped::Cancelled => ApiError::frame_too_slow(budget),
        device => crate::Error::from(device).into(),
    })?;
    let jpg = crate::imageio::encode_jpeg(&out, 85)
        .map_err(|e| ApiError::bad(format!("cannot encode the frame: {e}")))?;
    Ok((jpg, out.width(), out.height()))
}
