//! `impasto serve`.
use anyhow::Result;
use impasto::serve::ServeConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value_t = ServeConfig::default().addr)]
    addr: SocketAddr,
    /// Folder of extra model files (`NAME.safetensors` is served as style NAME).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Images stylized at a time (default: the number of cores).
    #[arg(long, value_parser = super::args::at_least_usize(1))]
    workers: Option<usize>,
    /// Requests that may wait for a worker; beyond this the answer is 503.
    #[arg(long, default_value_t = ServeConfig::default().queue)]
    queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = ServeConfig::default().max_bytes, value_parser = super::args::at_least_usize(1))]
    max_bytes: usize,
    /// Largest image in pixels (413 beyond).
    #[arg(long, default_value_t = ServeConfig::default().max_pixels, value_parser = super::args::at_least_u64(1))]
    max_pixels: u64,
    /// Images are stylized at most this large (longest side); larger ones are scaled down.
    #[arg(long, default_value_t = ServeConfig::default().max_side, value_parser = super::args::at_least_u32(1))]
    max_side: u32,
    /// Longest side of live webcam frames.
    #[arg(long, default_value_t = ServeConfig::default().live_max_side, value_parser = super::args::at_least_u32(1))]
    live_max_side: u32,
    /// Seconds a request may take in all (queueing included) before the answer is 503.
    #[arg(long, default_value_t = ServeConfig::default().timeout.as_secs_f64(), value_parser = super::args::seconds)]
    timeout: f64,
    /// Seconds a client may take to send a request's headers, or pause while sending its
    /// body (slow or stalled clients are disconnected, or answered 408).
    #[arg(long, default_value_t = ServeConfig::default().read_timeout.as_secs_f64(), value_parser = super::args::seconds)]
    read_timeout: f64,
    /// Open connections at most; more are answered 503 and closed.
    #[arg(long, default_value_t = ServeConfig::default().max_connections, value_parser = super::args::at_least_usize(1))]
    max_connections: usize,
    /// On SIGTERM / Ctrl-C, seconds the requests in flight get to finish.
    #[arg(long, default_value_t = ServeConfig::default().shutdown_grace.as_secs_f64(), value_parser = super::args::seconds_or_zero)]
    shutdown_grace: f64,
    /// Seconds a live frame may take; a frame over it is stopped and answered with an
    /// error, and the connection goes on with the next.
    #[arg(long, default_value_t = ServeConfig::default().live_frame_budget.as_secs_f64(), value_parser = super::args::seconds)]
    live_frame_budget: f64,
}

pub fn run(a: Args) -> Result<i32> {
    let d = ServeConfig::default();
    impasto::serve::serve(
        ServeConfig {
            addr: a.addr,
            models: a.models,
            workers: a.workers.unwrap_or(d.workers),
            queue: a.queue,
            max_bytes: a.max_bytes,
            max_pixels: a.max_pixels,
            max_side: a.max_side,
            live_max_side: a.live_max_side,
            timeout: Duration::from_secs_f64(a.timeout),
            read_timeout: Duration::from_secs_f64(a.read_timeout),
            max_connections: a.max_connections,
            shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
            live_frame_budget: Duration::from_secs_f64(a.live_frame_budget),
            device: super::device()?,
        },
        |addr| {
            // The first line on stdout: scripts and tests read the address from it.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on http://{addr}");
            let _ = out.flush();
        },
    )?;
    Ok(0)
}
