//! The styles a server offers: the built-in ones plus the model files of `--models`, keyed
//! by name. Requests look names up here; nothing a client sends is ever turned into a path.

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::stylize::{stylize, StylizeOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub struct Style {
    pub name: String,
    /// `built-in` or the model file's name.
    pub source: String,
    /// The network, on the server's device.
    pub model: Arc<Transformer<Device>>,
    /// JPEG: the painting when the file carries one, else the style applied to a small
    /// generated landscape.
    pub thumbnail: Vec<u8>,
    /// SHA-256 of the model file (or the built-in's bytes): what a live twin's provenance
    /// names as its teacher.
    pub sha256: String,
    /// The model's styles (one for an ordinary model), for `mix=`.
    pub styles: Vec<String>,
    /// The networks of the mixes asked for lately.
    mixes: crate::model::mix::Mixes<Device>,
}

impl Style {
    /// The network of a mix of this model's styles (normalised weights, one per style;
    /// None: its first style).
    pub fn network(&self, mix: Option<&[f64]>) -> Arc<Transformer<Device>> {
        self.mixes.get(&self.model, mix)
    }
}

#[derive(Default)]
pub struct Registry {
    styles: BTreeMap<String, Style>,
    /// Where the styles' networks run.
    device: Device,
}

/// Style names: 1–64 of `A-Z a-z 0-9 _ -`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Registry {
    /// The built-in styles and every loadable `*.safetensors` in `models` (not recursive).
    /// Files that fail to load are skipped and reported in the returned warnings; a missing
    /// or unreadable folder is an error.
    pub fn load(models: Option<&Path>, device: &Device) -> Result<(Self, Vec<String>)> {
        let mut reg = Registry {
            device: device.clone(),
            ..Registry::default()
        };
        let mut warnings = Vec::new();
        for n in crate::styles::names()
            .into_iter()
            .chain(crate::styles::blends())
        {
            let m = crate::styles::builtin(n).expect("listed")?;
            let bytes = crate::styles::builtin_bytes(n).expect("listed");
            reg.insert(n.to_string(), "built-in".into(), m, sha256(bytes));
        }
        if let Some(dir) = models {
            let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut files: Vec<_> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"))
                .filter(|p| !p.to_string_lossy().ends_with(".ckpt.safetensors"))
                .collect();
            files.sort();
            for p in files {
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !valid_name(&stem) {
                    warnings.push(format!(
                        "{}: skipped: a style name may only use letters, digits, _ and -",
                        p.display()
                    ));
                    continue;
                }
                match load_with_sha256(&p) {
                    Ok((m, sha)) => {
                        if reg.styles.contains_key(&stem) {
                            warnings.push(format!(
                                "{}: replaces the built-in style {stem}",
                                p.display()
                            ));
                        }
                        let src = p
                            .file_name()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        reg.insert(stem, src, m, sha);
                    }
                    Err(e) => warnings.push(format!("skipped: {e}")),
                }
            }
        }
        Ok((reg, warnings))
    }

    /// Add a style; `sha256` is its file's (see [`Style::sha256`]).
    pub fn insert(&mut self, name: String, source: String, model: Transformer, sha256: String) {
        let thumbnail = crate::styles::thumbnail_of(&model).unwrap_or_else(|| rendered(&model));
        self.styles.insert(
            name.clone(),
            Style {
                name,
                source,
                styles: model.style_names(),
                model: Arc::new(model.to_backend(self.device.clone())),
                thumbnail,
                sha256,
                mixes: Default::default(),
            },
        );
    }

    /// The live twin of style `name`: the style `NAME_live`, if it was distilled from this
    /// very model (its provenance names the teacher's SHA-256) and holds the same styles (a
    /// built-in style is a row of the network its twin's row was distilled from). A user's
    /// model that takes a built-in's name does not get the built-in's twin.
    pub fn twin_of(&self, name: &str) -> Option<&Style> {
        let teacher = self.get(name)?;
        let twin = self.get(&format!("{name}{}", crate::styles::LIVE_SUFFIX))?;
        (teacher_sha256(&twin.model).as_deref() == Some(teacher.sha256.as_str())
            && twin.styles == teacher.styles)
            .then_some(twin)
    }

    /// The style a live twin was distilled from, if it is served (see [`Registry::twin_of`]).
    pub fn teacher_of(&self, name: &str) -> Option<&Style> {
        let teacher = name.strip_suffix(crate::styles::LIVE_SUFFIX)?;
        self.twin_of(teacher)
            .map(|_| self.get(teacher).expect("found"))
    }

    pub fn get(&self, name: &str) -> Option<&Style> {
        self.styles.get(name)
    }
    pub fn names(&self) -> Vec<&str> {
        self.styles.keys().map(String::as_str).collect()
    }
    pub fn len(&self) -> usize {
        self.styles.len()
    }
    pub fn is_empty(&self) -> bool {
        self.styles.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Style> {
        self.styles.values()
    }
}

/// A model file and its SHA-256, from one read.
fn load_with_sha256(p: &Path) -> Result<(Transformer, String)> {
    let bytes = crate::io::read_regular(p, crate::model::format::MAX_FILE_BYTES, "model file")?;
    let model = Transformer::from_bytes(&bytes).map_err(|m| Error::model(p, m))?;
    Ok((model, sha256(&bytes)))
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// The teacher's SHA-256 a distilled model records in its provenance.
fn teacher_sha256<B: crate::backend::Backend>(model: &Transformer<B>) -> Option<String> {
    let p = crate::model::provenance::Provenance::from_metadata(&model.metadata)?.ok()?;
    let sha = p
        .train?
        .other
        .get("distill")?
        .get("teacher_sha256")?
        .as_str()?
        .to_string();
    (!sha.is_empty()).then_some(sha)
}

/// A small generated landscape (sky, sun, hills, water) stylized by `model`, as JPEG.
fn rendered(model: &Transformer) -> Vec<u8> {
    let scene = landscape(128);
    let d = crate::imageio::Decoded::from_image(image::DynamicImage::ImageRgb8(scene));
    let out = stylize(model, d, &StylizeOptions::default(), None).expect("nothing cancels it");
    let mut jpg = Vec::new();
    crate::imageio::encode(&out, image::ImageFormat::Jpeg, &mut jpg).expect("in memory");
    jpg
}

fn landscape(n: u32) -> image::RgbImage {
    let f = n as f32;
    image::RgbImage::from_fn(n, n, |x, y| {
        let (u, v) = (x as f32 / f, y as f32 / f);
        let hill1 = 0.62 + 0.08 * (u * 5.0).sin();
        let hill2 = 0.72 + 0.05 * (u * 9.0 + 1.0).cos();
        let sun = ((u - 0.7).powi(2) + (v - 0.25).powi(2)).sqrt();
        let c: [f32; 3] = if v > 0.85 {
            [40.0, 90.0 + 60.0 * (u * 30.0 + v * 90.0).sin().abs(), 160.0]
        } else if v > hill2 {
            [60.0, 120.0, 50.0]
        } else if v > hill1 {
            [110.0, 150.0, 70.0]
        } else if sun < 0.1 {
            [250.0, 210.0, 80.0]
        } else {
            [90.0 + 120.0 * v, 150.0 + 80.0 * v, 235.0]
        };
        image::Rgb(c.map(|c| c.clamp(0.0, 255.0) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_be_paths() {
        for ok in ["great_wave", "a", "Style-2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", "a.b", "..", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn models_folder_skips_bad_files_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let m = Transformer::init(
            crate::model::TransformerConfig::new(crate::model::Arch::Johnson),
            1,
        );
        m.save(&dir.path().join("mine.safetensors"), true).unwrap();
        m.save(&dir.path().join("bad name.safetensors"), true)
            .unwrap();
        std::fs::write(dir.path().join("broken.safetensors"), b"garbage").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not a model").unwrap();
        let (reg, warnings) = Registry::load(Some(dir.path()), &Device::default()).unwrap();
        assert!(reg.get("mine").is_some());
        assert!(reg.get("broken").is_none() && reg.get("bad name").is_none());
        let builtins = crate::styles::names().len() + crate::styles::blends().len();
        assert_eq!(reg.len(), builtins + 1);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("broken.safetensors")));
        let t = &reg.get("mine").unwrap().thumbnail;
        assert_eq!(image::guess_format(t).unwrap(), image::ImageFormat::Jpeg);
        assert!(Registry::load(Some(&dir.path().join("missing")), &Device::default()).is_err());
    }

    /// A twin belongs to the model it was distilled from: the built-ins keep theirs; a
    /// user's model that takes a built-in's name does not get the built-in's twin, and a
    /// user's own twin (its provenance naming the user's model) is that model's.
    #[test]
    fn a_twin_belongs_to_the_model_it_was_distilled_from() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, _) = Registry::load(None, &Device::default()).unwrap();
        for n in crate::styles::names()
            .into_iter()
            .chain(crate::styles::blends())
        {
            if let Some(t) = crate::styles::live_twin(n) {
                assert_eq!(reg.twin_of(n).map(|s| s.name.as_str()), Some(t), "{n}");
                assert_eq!(reg.teacher_of(t).map(|s| s.name.as_str()), Some(n));
            }
        }
        let mine = Transformer::init(
            crate::model::TransformerConfig::new(crate::model::Arch::Johnson),
            3,
        );
        mine.save(&dir.path().join("great_wave.safetensors"), true)
            .unwrap();
        let (reg, warnings) = Registry::load(Some(dir.path()), &Device::default()).unwrap();
        assert!(warnings.iter().any(|w| w.contains("replaces the built-in")));
        assert!(
            reg.twin_of("great_wave").is_none(),
            "the built-in twin is not the user's"
        );
        assert!(reg.teacher_of("great_wave_live").is_none());
        // The user's own twin: its provenance names the user's file.
        let sha = reg.get("great_wave").unwrap().sha256.clone();
        let mut twin = crate::train::distill::live_config();
        twin.res_blocks = 1;
        let mut twin = Transformer::init(twin, 4);
        let prov = serde_json::json!({"made_by": "impasto distill", "train": {"distill": {"teacher_sha256": sha}}});
        twin.metadata
            .insert("impasto.provenance".into(), prov.to_string());
        twin.save(&dir.path().join("great_wave_live.safetensors"), true)
            .unwrap();
        let (reg, _) = Registry::load(Some(dir.path()), &Device::default()).unwrap();
        assert_eq!(
            reg.twin_of("great_wave").map(|s| s.source.as_str()),
            Some("great_wave_live.safetensors")
        );
    }
}
