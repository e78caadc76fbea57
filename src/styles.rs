//! Built-in styles: models impasto trained, embedded in the binary (see `styles/`), so that
//! `stylize --style NAME` needs no set-up. `--style` takes a built-in name or a model file.

use crate::error::{Error, Result};
use crate::model::Transformer;
use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/builtin_styles.rs"));

/// The built-in style names, sorted.
pub fn names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// A built-in style by name.
pub fn builtin(name: &str) -> Option<Result<Transformer>> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(n, bytes)| {
        Transformer::from_bytes(bytes).map_err(|m| Error::model(format!("<built-in style {n}>"), m))
    })
}

/// `--style` / `--model`: a built-in name, else a model file.
pub fn resolve(spec: &str) -> Result<Transformer> {
    if let Some(m) = builtin(spec) {
        return m;
    }
    let p = Path::new(spec);
    if !p.exists() && !spec.contains('/') && !spec.contains('.') {
        return Err(Error::Usage(format!(
            "unknown style {spec:?}: built-in styles are {}; or give a model file",
            if names().is_empty() {
                "none yet".to_string()
            } else {
                names().join(", ")
            }
        )));
    }
    Transformer::load(p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_builtin_style_loads() {
        for n in super::names() {
            let m = super::builtin(n).unwrap().unwrap();
            assert!(
                m.metadata.contains_key("impasto.provenance"),
                "{n} records how it was made"
            );
        }
    }
}
