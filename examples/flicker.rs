//! Mean absolute frame-to-frame change (0..255) of videos, to measure flicker:
//!
//!     cargo run --release --example flicker -- a.mp4 b.mp4 ...
fn main() {
    for p in std::env::args().skip(1) {
        let frames = impasto::video::read_frames(p.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "{p}: {} frames, mean frame-to-frame change {:.2}",
            frames.len(),
            impasto::video::mean_frame_change(&frames)
        );
    }
}
