//! The `impasto` command line: a thin layer over the library.
//! Errors go to stderr; exit 0 on success, 2 when any input, model or output was bad (the
//! rest of the work is still done), 1 for anything else. A closed stdout ends quietly.

mod cli;

use clap::Parser;

/// What the library reports (`tracing`) goes to stderr: its progress and notes at the
/// default level, warnings alone with `-q`, more with `-v`; `RUST_LOG` overrides.
fn log_to_stderr(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (_, 0) => "warn,impasto=info",
        (_, 1) => "info,impasto=debug",
        _ => "debug,impasto=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
}

fn main() {
    // An empty IMPASTO_THREADS means "not set" (the default), as for most tools.
    if std::env::var_os("IMPASTO_THREADS").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("IMPASTO_THREADS");
    }
    let args = cli::Cli::parse();
    log_to_stderr(args.verbose, args.quiet);
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .ok();
    }
    let code = match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            if cli::is_broken_pipe(&e) {
                0
            } else {
                // impasto's errors already name their cause (the path, then the problem);
                // anything else gets anyhow's chain.
                match e.downcast_ref::<impasto::Error>() {
                    Some(ie) => {
                        eprintln!("impasto: error: {}", cli::flags(&ie.to_string()));
                        2
                    }
                    // Writing to stdout failed (a full disk, /dev/full): the output is bad.
                    None if e.downcast_ref::<std::io::Error>().is_some() => {
                        eprintln!("impasto: error: cannot write to stdout: {e:#}");
                        2
                    }
                    None => {
                        eprintln!("impasto: error: {e:#}");
                        1
                    }
                }
            }
        }
    };
    std::process::exit(code);
}
