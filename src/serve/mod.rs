//! `impasto serve`: the styles over HTTP.
//!
//! - `GET /` — the web page (embedded, no external network): upload, style gallery, strength,
//!   preserve-colour, before/after, download, and live webcam mode.
//! - `GET /v1/styles` — names, architecture, how each was trained, thumbnail URLs;
//!   `GET /v1/styles/{name}/thumbnail` — a JPEG.
//! - `POST /v1/stylize?style=&strength=&preserve_color=&max_size=&format=&scale=&margin=` — the image as the
//!   body or as a multipart field; answers the stylized image.
//! - `GET /v1/live` — WebSocket: JSON settings as text, frames as binary; answers each frame
//!   it processes with a JSON text record and the stylized JPEG. Frames that arrive while the
//!   previous one is still being stylized replace it (dropped, never queued).
//! - `GET /healthz`.
//!
//! Errors are JSON `{"error": {"status", "category", "message"}}`: 400 unreadable input or bad
//! parameter, 404 unknown style, 413 too many bytes or pixels, 503 queue full or request
//! timed out. Inference runs on a bounded pool (`workers` at a time, `queue` more waiting,
//! the rest turned away at once). Styles are looked up by name in a table built at start-up;
//! no request ever names a file.

mod api;
mod error;
mod live;
mod params;
mod pool;
mod registry;

pub use live::default_frame as live_frame;
pub use pool::Pool;
pub use registry::{Registry, Style};

use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// Extra model files (`*.safetensors` in this folder; the file stem is the style name).
    pub models: Option<PathBuf>,
    /// Inferences at a time.
    pub workers: usize,
    /// Requests allowed to wait for a worker; more get 503.
    pub queue: usize,
    /// Largest request body (bytes); more gets 413.
    pub max_bytes: usize,
    /// Largest decoded image (pixels); more gets 413.
    pub max_pixels: u64,
    /// Images are processed at most this large (longest side); larger ones are scaled down.
    pub max_side: u32,
    /// Longest side of live (WebSocket) frames.
    pub live_max_side: u32,
    /// Whole-request limit; after it the answer is 503.
    pub timeout: Duration,
    /// A client must send a request's headers within this time (slow or stalled clients are
    /// disconnected) and must not pause longer than this while sending its body (408).
    pub read_timeout: Duration,
    /// Open connections at most; more are answered 503 at once and closed.
    pub max_connections: usize,
    /// On SIGTERM / Ctrl-C, requests in flight get this long to finish; then their work is
    /// stopped and the process ends.
    pub shutdown_grace: Duration,
    /// A live frame that takes longer is stopped (at the next layer) and answered with an
    /// error; settings whose frames would cost far more than a frame at `live_max_side` are
    /// refused up front.
    pub live_frame_budget: Duration,
    /// Where the networks run.
    pub device: crate::backend::Device,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            models: None,
            workers: cores,
            queue: 32,
            max_bytes: 32 << 20,
            max_pixels: 50_000_000,
            max_side: 2048,
            live_max_side: 640,
            timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(10),
            max_connections: 256,
            shutdown_grace: Duration::from_secs(30),
            live_frame_budget: Duration::from_secs(2),
            device: crate::backend::Device::default(),
        }
    }
}

/// What every handler shares.
pub struct App {
    pub cfg: ServeConfig,
    pub styles: Registry,
    pub pool: Pool,
    /// Set when the shutdown grace is over: all work in flight stops at its next layer.
    pub halt: Arc<std::sync::atomic::AtomicBool>,
}

impl App {
    pub fn new(cfg: ServeConfig, styles: Registry) -> App {
        let pool = Pool::new(cfg.workers, cfg.queue);
        App {
            cfg,
            styles,
            pool,
            halt: Arc::default(),
        }
    }

    /// A stop for one piece of work: when `stop` is set (its client left or its time ran
    /// out) or when the server halts.
    pub fn cancel(&self, stop: &Arc<std::sync::atomic::AtomicBool>) -> crate::stylize::Cancel {
        use crate::stylize::Cancel;
        Cancel::flag(stop.clone()).or(Cancel::flag(self.halt.clone()))
    }
}

/// Sets its flag when dropped: a request handler holds one, so that a request whose
/// future is dropped (it timed out, or its client disconnected) stops its computation.
pub struct StopOnDrop(pub Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The router, for embedding in another server or for tests.
pub fn router(app: Arc<App>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(api::page))
        .route("/healthz", get(api::healthz))
        .route("/v1/styles", get(api::styles))
        .route("/v1/styles/{name}/thumbnail", get(api::thumbnail))
        .route("/v1/stylize", post(api::stylize))
        .route("/v1/live", get(live::upgrade))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn(api::guard))
        .with_state(app)
}

/// Load the styles, listen on `cfg.addr` and serve until Ctrl-C / SIGTERM; `on_listening`
/// is called with the bound address once the socket accepts connections. Progress and
/// warnings are reported through `tracing`.
pub fn serve(cfg: ServeConfig, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    if cfg.workers == 0 {
        return Err(Error::Usage("`workers` must be at least 1".into()));
    }
    let (styles, warnings) = Registry::load(cfg.models.as_deref(), &cfg.device)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if styles.is_empty() {
        return Err(Error::Usage(
            "no styles to serve: this build has no built-in styles and `models` gave none".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(cfg.workers + 2)
        .thread_name("impasto-serve")
        .enable_all()
        .build()
        .map_err(|e| Error::Server(format!("cannot start the server runtime: {e}")))?;
    let addr = cfg.addr;
    let app = Arc::new(App::new(cfg, styles));
    let r = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Server(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Server(format!("cannot listen on {addr}: {e}")))?;
        tracing::info!(
            "{} styles ({}), {} workers, queue {}",
            app.styles.len(),
            app.styles.names().join(", "),
            app.cfg.workers,
            app.cfg.queue
        );
        on_listening(local);
        accept_loop(listener, app).await;
        Ok(())
    });
    // Work still running was told to stop (`App::halt`); do not wait for it beyond a moment.
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

/// Request headers over this many bytes are refused by hyper itself (a 431 without a body);
/// `api::limits` refuses anything over [`MAX_HEADER_BYTES`] with a JSON 431 first.
const HYPER_MAX_HEADER_BYTES: usize = 1 << 20;
const HYPER_MAX_HEADERS: usize = 1000;
/// The limits clients see (JSON 431 beyond).
pub const MAX_HEADER_BYTES: usize = 64 << 10;
pub const MAX_HEADERS: usize = 100;

/// Accept connections until a shutdown signal, then let the requests in flight finish (at
/// most `shutdown_grace`). Each connection must send its headers within `read_timeout`;
/// beyond `max_connections` open ones a new connection gets a JSON 503 and is closed.
async fn accept_loop(listener: tokio::net::TcpListener, app: Arc<App>) {
    use tokio::sync::{watch, Semaphore};
    let router = router(app.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(app.cfg.read_timeout)
        .max_header_size(HYPER_MAX_HEADER_BYTES)
        .max_buf_size(HYPER_MAX_HEADER_BYTES + (64 << 10))
        .max_headers(HYPER_MAX_HEADERS);
    let conns = Arc::new(Semaphore::new(app.cfg.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    // A live frame's answer is two writes (its record, then the JPEG): with
                    // Nagle's algorithm the second waits for the client's delayed ACK
                    // (~40 ms a frame).
                    let _ = s.set_nodelay(true);
                    s
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream, app.cfg.max_connections));
            continue;
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(io, svc).with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = app.cfg.shutdown_grace;
    let busy = app.cfg.max_connections - conns.available_permits();
    tracing::info!(
        "shutting down ({busy} connections open; requests in flight get up to {} s)",
        grace.as_secs_f64()
    );
    let _ = stop_tx.send(true);
    let all = conns.acquire_many(app.cfg.max_connections as u32);
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(
            "{} connections still open after {} s; stopping their work and closing them",
            app.cfg.max_connections - conns.available_permits(),
            grace.as_secs_f64()
        );
        app.halt.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Too many connections: a JSON 503 and close, without reading the request.
async fn refuse_connection(mut stream: tokio::net::TcpStream, max: usize) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::json!({"error": {"status": 503, "category": "busy",
        "message": format!("server busy: {max} connections open; retry later")}})
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
