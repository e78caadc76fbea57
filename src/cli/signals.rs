//! Ctrl-C, SIGTERM and SIGHUP for the synchronous commands.
//!
//! By default a signal removes the temporary files being written (so no `.part` file is
//! left behind) and exits with 130. A command that can stop cleanly (`train`: save a
//! checkpoint first) asks for [`graceful`] handling: the first signal only sets the flag it
//! polls; a second one exits at once, still removing partial files (the previous
//! checkpoint is never touched until its replacement is complete).
use std::sync::atomic::{AtomicBool, Ordering};

pub static STOP: AtomicBool = AtomicBool::new(false);
static GRACEFUL: AtomicBool = AtomicBool::new(false);

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if GRACEFUL.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst) {
            return;
        }
        impasto::io::remove_partial_files();
        std::process::exit(130);
    });
}

/// Let the first signal set [`STOP`] instead of exiting.
pub fn graceful() {
    GRACEFUL.store(true, Ordering::SeqCst);
}
