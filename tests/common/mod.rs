//! Helpers shared by the end-to-end test crates (each crate uses its own subset).
#![allow(dead_code)]
pub mod server;

use impasto::model::{Arch, Transformer, TransformerConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The real `impasto` binary, without the caller's thread setting, on the CPU (tests that
/// compare outputs bit for bit must not move to a GPU where a machine has one; the GPU's
/// own tests ask for it with `--device gpu`).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_impasto"));
    c.env_remove("IMPASTO_THREADS");
    c.env("IMPASTO_DEVICE", "cpu");
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run impasto")
}

/// `impasto stylize INPUT -m MODEL -o OUTPUT EXTRA...`.
pub fn stylize(input: &Path, model: &Path, output: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("stylize")
        .arg(input)
        .arg("-m")
        .arg(model)
        .arg("-o")
        .arg(output)
        .args(extra)
        .output()
        .expect("run impasto")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A small random-weight johnson model written to `dir`.
pub fn model(dir: &Path) -> PathBuf {
    let p = dir.join("model.safetensors");
    if !p.exists() {
        Transformer::init(TransformerConfig::new(Arch::Johnson), 7)
            .save(&p, false)
            .unwrap();
    }
    p
}
