//! Embed the built-in style models (`styles/*.safetensors`, int8 conv weights) in the binary.
use std::io::Write;

fn main() {
    println!("cargo:rerun-if-changed=styles");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("styles");
    let mut names: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .map(|p| (p.file_stem().unwrap().to_string_lossy().to_string(), p))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("builtin_styles.rs");
    let mut f = std::fs::File::create(out).unwrap();
    writeln!(f, "pub static BUILTIN: &[(&str, &[u8])] = &[").unwrap();
    for (n, p) in names {
        println!("cargo:rerun-if-changed={}", p.display());
        writeln!(
            f,
            "    ({n:?}, include_bytes!({:?})),",
            p.display().to_string()
        )
        .unwrap();
    }
    writeln!(f, "];").unwrap();
}
