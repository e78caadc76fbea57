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
    #[arg(long)]
    workers: Option<usize>,
    /// Requests that may wait for a worker; beyond this the answer is 503.
    #[arg(long, default_value_t = ServeConfig::default().queue)]
    queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = ServeConfig::default().max_bytes)]
    max_bytes: usize,
    /// Largest image in pixels (413 beyond).
    #[arg(long, default_value_t = ServeConfig::default().max_pixels)]
    max_pixels: u64,
    /// Images are stylized at most this large (longest side); larger ones are scaled down.
    #[arg(long, default_value_t = ServeConfig::default().max_side)]
    max_side: u32,
    /// Longest side of live webcam frames.
    #[arg(long, default_value_t = ServeConfig::default().live_max_side)]
    live_max_side: u32,
    /// Seconds a request may take in all (queueing included) before the answer is 503.
    #[arg(long, default_value_t = ServeConfig::default().timeout.as_secs_f64())]
    timeout: f64,
}

pub fn run(a: Args) -> Result<i32> {
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        return Err(
            impasto::Error::Usage("--timeout must be a positive number of seconds".into()).into(),
        );
    }
    let d = ServeConfig::default();
    impasto::serve::serve(ServeConfig {
        addr: a.addr,
        models: a.models,
        workers: a.workers.unwrap_or(d.workers),
        queue: a.queue,
        max_bytes: a.max_bytes,
        max_pixels: a.max_pixels,
        max_side: a.max_side.max(1),
        live_max_side: a.live_max_side.max(1),
        timeout: Duration::from_secs_f64(a.timeout),
    })?;
    Ok(0)
}
