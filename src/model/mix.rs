//! Several styles in one network (conditional instance norm, Dumoulin, Shlens & Kudlur 2017):
//! the styles a model file holds, and a mix of them.
//!
//! Every instance norm of such a network has one scale row and one shift row per style; the
//! convolutions are shared. A mix is a weight per style (summing to 1): each norm's scale
//! and shift become `Σ wₖ·rowₖ`, which collapses the network into an ordinary single-style
//! one ([`Transformer::mixed`]) — so a blend costs nothing per frame. A mix of one style
//! gives that style's rows exactly.

use crate::backend::Backend;
use crate::model::Transformer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Metadata key: the styles of a network of several styles, in row order (JSON list of
/// [`StyleEntry`]).
pub const STYLES_KEY: &str = "impasto.styles";
/// The loss weights a trained model records (`crate::loss::LossConfig` as JSON).
pub const LOSS_KEY: &str = "impasto.loss";
/// Metadata key: the mix a collapsed network was made with (`name=weight,…`).
pub const MIX_KEY: &str = "impasto.mix";

/// One style of a model: its name and where it came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StyleEntry {
    pub name: String,
    /// The painting it was trained on (as given), and its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub painting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The painting's thumbnail (JPEG, base64), as single-style files keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
    /// Training steps this style's rows took (a style added later trains on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// The style weight this style trained with, where it differs from run to run (a run
    /// of several styles may weight each painting differently): what `evaluate` scores a
    /// pick of this style with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_weight: Option<f64>,
}

/// A style name: what `--mix` and `mix=` can spell (letters, digits, `_`, `-`, `.`).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "style name {:?}: use 1 to 64 letters, digits, `_`, `-` or `.`",
            crate::error::clip(name, 64)
        ))
    }
}

/// A style name from a painting's file name (its stem, other characters as `_`).
pub fn name_from_path(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "style".into()
    } else {
        name
    }
}

/// Weights for some of a model's styles, by name: `starry_night` (one style) or
/// `a=0.7,b=0.3` (a blend; normalised to sum 1 when applied).
#[derive(Clone, Debug, PartialEq)]
pub struct Mix(pub Vec<(String, f64)>);

impl Mix {
    /// Parse `NAME` or `NAME=W,NAME=W,…`. Weights are finite and not negative; a name
    /// appears once.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut parts = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let (name, w) = match part.split_once('=') {
                None => (part, 1.0),
                Some((n, w)) => {
                    let w: f64 = w.trim().parse().map_err(|_| {
                        format!(
                            "mix {:?}: the weight of {:?} is not a number",
                            crate::error::clip(text, 80),
                            n.trim()
                        )
                    })?;
                    (n.trim(), w)
                }
            };
            if name.is_empty() {
                return Err(format!(
                    "mix {:?}: expected NAME or NAME=WEIGHT,NAME=WEIGHT",
                    crate::error::clip(text, 80)
                ));
            }
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!(
                    "mix {:?}: the weight of {name:?} is {w}; weights are finite numbers, 0 or more",
                    crate::error::clip(text, 80)
                ));
            }
            if parts.iter().any(|(n, _)| n == name) {
                return Err(format!("mix: {name:?} is named twice"));
            }
            parts.push((name.to_string(), w));
        }
        Ok(Mix(parts))
    }

    /// One weight per style of `names`, normalised to sum 1; unknown names and an
    /// all-zero mix are errors that list the model's styles.
    pub fn weights(&self, names: &[String]) -> Result<Vec<f64>, String> {
        let mut w = vec![0.0; names.len()];
        let unknown: Vec<&str> = self
            .0
            .iter()
            .filter(|(n, _)| !names.contains(n))
            .map(|(n, _)| n.as_str())
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "the model has no style {}; its styles: {}",
                unknown.join(", "),
                names.join(", ")
            ));
        }
        for (n, v) in &self.0 {
            let k = names.iter().position(|m| m == n).expect("checked");
            w[k] = *v;
        }
        let total: f64 = w.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            return Err(
                "the mix's weights are all zero: give at least one style a weight above 0".into(),
            );
        }
        Ok(w.into_iter().map(|v| v / total).collect())
    }

    /// `name=weight,…` of normalised weights, the styles with weight 0 left out.
    pub fn describe(names: &[String], w: &[f64]) -> String {
        names
            .iter()
            .zip(w)
            .filter(|(_, w)| **w > 0.0)
            .map(|(n, w)| format!("{n}={}", (w * 1e4).round() / 1e4))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl<B: Backend> Transformer<B> {
    /// How many styles the network holds.
    pub fn style_count(&self) -> usize {
        self.config.styles
    }

    /// The styles, in row order: the file's list, or for a single-style model one entry
    /// named after the painting it was trained on.
    pub fn styles(&self) -> Vec<StyleEntry> {
        if let Some(list) = self
            .metadata
            .get(STYLES_KEY)
            .and_then(|js| serde_json::from_str::<Vec<StyleEntry>>(js).ok())
        {
            return list;
        }
        if self.config.styles > 1 {
            return (0..self.config.styles)
                .map(|k| StyleEntry {
                    name: format!("style{k}"),
                    ..Default::default()
                })
                .collect();
        }
        let train = crate::model::provenance::Provenance::from_metadata(&self.metadata)
            .and_then(|p| p.ok())
            .and_then(|p| p.train);
        let painting = train
            .as_ref()
            .and_then(|t| t.other.get("style"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        vec![StyleEntry {
            name: painting
                .as_deref()
                .map(|p| name_from_path(std::path::Path::new(p)))
                .unwrap_or_else(|| "style".into()),
            painting,
            sha256: self.metadata.get("impasto.style_sha256").cloned(),
            thumbnail: self.metadata.get(crate::styles::THUMBNAIL_KEY).cloned(),
            steps: None,
            style_weight: None,
        }]
    }

    /// The style names, in row order.
    pub fn style_names(&self) -> Vec<String> {
        self.styles().into_iter().map(|s| s.name).collect()
    }

    /// Record the styles (names checked, one per style).
    pub fn set_styles(&mut self, styles: &[StyleEntry]) -> Result<(), String> {
        check_styles(self.config.styles, styles)?;
        self.metadata.insert(
            STYLES_KEY.into(),
            serde_json::to_string(styles).expect("serialises"),
        );
        Ok(())
    }

    /// The weights of `mix` for this model (see [`Mix::weights`]); no mix: the first style.
    pub fn mix_weights(&self, mix: Option<&Mix>) -> Result<Vec<f64>, String> {
        match mix {
            Some(m) => m.weights(&self.style_names()),
            None => {
                let mut w = vec![0.0; self.config.styles];
                w[0] = 1.0;
                Ok(w)
            }
        }
    }

    /// The network to run for `mix` (None: the first style): an error that names the
    /// model's styles when the mix does not fit them.
    pub fn select(&self, mix: Option<&Mix>) -> Result<Transformer<B>, String> {
        if mix.is_none() && self.config.styles == 1 {
            return Ok(self.clone());
        }
        Ok(self.mixed(&self.mix_weights(mix)?))
    }

    /// The single-style network of a mix (normalised weights, one per style): every norm's
    /// scale and shift are `Σ wₖ·rowₖ` (float64, rounded once), the convolutions are the
    /// same. A weight of 1 on one style gives its rows bit for bit. A single-style network
    /// comes back as it is.
    pub fn mixed(&self, w: &[f64]) -> Transformer<B> {
        assert_eq!(w.len(), self.config.styles, "one weight per style");
        if self.config.styles == 1 {
            return self.clone();
        }
        let host = self.host_params();
        let mut config = self.config.clone();
        config.styles = 1;
        let plan = self.plan();
        let mut params = Vec::new();
        for (id, spec) in plan.params.iter().enumerate() {
            match spec.style {
                None => params.push(host[id].clone()),
                Some(k) if k > 0 => {}
                Some(_) => {
                    // Style 0's row: the mixed row goes here, in plan order.
                    let norm = plan
                        .norms
                        .iter()
                        .find(|n| n.scale[0] == id || n.shift[0] == id)
                        .expect("a norm's row");
                    let rows = if norm.scale[0] == id {
                        &norm.scale
                    } else {
                        &norm.shift
                    };
                    let mixed = (0..spec.len())
                        .map(|c| {
                            rows.iter()
                                .zip(w)
                                .filter(|(_, w)| **w != 0.0)
                                .map(|(&r, w)| host[r][c] as f64 * w)
                                .sum::<f64>() as f32
                        })
                        .collect();
                    params.push(mixed);
                }
            }
        }
        let styles = self.styles();
        let mut metadata = self.metadata.clone();
        metadata.remove(STYLES_KEY);
        metadata.insert(MIX_KEY.into(), Mix::describe(&self.style_names(), w));
        // One style: its name and painting, hash and thumbnail, as a single-style file has
        // them.
        if let Some(k) = w.iter().position(|&v| v == 1.0) {
            metadata.insert(
                STYLES_KEY.into(),
                serde_json::to_string(&styles[k..=k]).expect("serialises"),
            );
            for (key, v) in [
                ("impasto.style_sha256", &styles[k].sha256),
                (crate::styles::THUMBNAIL_KEY, &styles[k].thumbnail),
            ] {
                match v {
                    Some(v) => metadata.insert(key.into(), v.clone()),
                    None => metadata.remove(key),
                };
            }
            // Its own style weight, where the run weighted its paintings differently.
            if let (Some(sw), Some(js)) = (styles[k].style_weight, metadata.get(LOSS_KEY)) {
                if let Ok(mut loss) = serde_json::from_str::<crate::loss::LossConfig>(js) {
                    loss.style_weight = sw;
                    let js = serde_json::to_string(&loss).expect("serialises");
                    metadata.insert(LOSS_KEY.into(), js);
                }
            }
        }
        Transformer::build(self.backend().clone(), config, params, metadata)
    }
}

impl Transformer {
    /// This network with `n` more styles, for training them alone: the convolutions and
    /// the existing styles' rows as they are, each new style's rows the mean of the
    /// existing ones (a start that already stylizes, rather than the identity). The
    /// metadata starts empty: a run records its own.
    pub fn with_new_styles(&self, n: usize) -> Transformer {
        let old = self.config.styles;
        let mut config = self.config.clone();
        config.styles = old + n;
        let host = self.host_params();
        let (from, to) = (self.plan(), config.plan());
        let mut params = vec![Vec::new(); to.params.len()];
        for (f, t) in from.convs.iter().zip(&to.convs) {
            params[t.weight] = host[f.weight].clone();
            if let (Some(fb), Some(tb)) = (f.bias, t.bias) {
                params[tb] = host[fb].clone();
            }
        }
        for (f, t) in from.norms.iter().zip(&to.norms) {
            for (fr, tr) in [(&f.scale, &t.scale), (&f.shift, &t.shift)] {
                for (k, &id) in tr.iter().enumerate() {
                    params[id] = match fr.get(k) {
                        Some(&src) => host[src].clone(),
                        None => (0..f.channels)
                            .map(|c| {
                                (fr.iter().map(|&r| host[r][c] as f64).sum::<f64>() / old as f64)
                                    as f32
                            })
                            .collect(),
                    };
                }
            }
        }
        Transformer::build(crate::backend::Cpu, config, params, BTreeMap::new())
    }
}

/// The networks of the mixes of one model asked for lately (most recent last, at most
/// [`Mixes::KEPT`]): a mix is built once, then every picture or frame with it runs at the
/// plain network's cost. Shared between threads.
pub struct Mixes<B: Backend> {
    kept: std::sync::Mutex<Vec<Kept<B>>>,
}

type Kept<B> = (Vec<f64>, std::sync::Arc<Transformer<B>>);

impl<B: Backend> Default for Mixes<B> {
    fn default() -> Self {
        Mixes {
            kept: Default::default(),
        }
    }
}

impl<B: Backend> Mixes<B> {
    pub const KEPT: usize = 8;

    /// The network of `model` for weights `w` (normalised, one per style; None: the first
    /// style); a single-style model is itself.
    pub fn get(
        &self,
        model: &std::sync::Arc<Transformer<B>>,
        w: Option<&[f64]>,
    ) -> std::sync::Arc<Transformer<B>> {
        let n = model.config.styles;
        if n == 1 {
            return model.clone();
        }
        let mut first = vec![0.0; n];
        first[0] = 1.0;
        let w = w.unwrap_or(&first);
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = kept.iter().position(|(k, _)| k.as_slice() == w) {
            let hit = kept.remove(i);
            let net = hit.1.clone();
            kept.push(hit);
            return net;
        }
        let net = std::sync::Arc::new(model.mixed(w));
        if kept.len() == Self::KEPT {
            kept.remove(0);
        }
        kept.push((w.to_vec(), net.clone()));
        net
    }
}

/// The style list of a network of `n` styles: `n` entries, names valid and distinct.
pub fn check_styles(n: usize, styles: &[StyleEntry]) -> Result<(), String> {
    if styles.len() != n {
        return Err(format!(
            "{} style names for a network of {n} styles",
            styles.len()
        ));
    }
    let mut seen = BTreeMap::new();
    for s in styles {
        check_name(&s.name)?;
        if seen.insert(s.name.as_str(), ()).is_some() {
            return Err(format!("the style name {:?} is used twice", s.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::format::Precision;
    use crate::model::{Arch, TransformerConfig};
    use crate::rng::Rng;
    use crate::tensor::Tensor;

    /// A small network of `n` styles whose rows differ (so a wrong row shows).
    fn model(arch: Arch, n: usize, seed: u64) -> Transformer {
        let mut cfg = TransformerConfig::new(arch);
        cfg.channels = [8, 12, 16];
        cfg.res_blocks = 2;
        crate::testutil::styled_model(cfg, n, seed)
    }

    fn image(seed: u64, h: usize, w: usize) -> Tensor {
        let mut rng = Rng::new(seed);
        Tensor::from_vec(
            1,
            3,
            h,
            w,
            (0..3 * h * w).map(|_| rng.f32() * 255.0).collect(),
        )
    }

    #[test]
    fn a_mix_is_parsed_and_checked_against_the_styles() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let w = Mix::parse("a=0.7, b=0.7").unwrap().weights(&names).unwrap();
        assert_eq!(w, [0.5, 0.5, 0.0]);
        assert_eq!(
            Mix::parse("c").unwrap().weights(&names).unwrap(),
            [0.0, 0.0, 1.0]
        );
        for (bad, want) in [
            ("a=-1", "0 or more"),
            ("a=x", "not a number"),
            ("a=inf", "0 or more"),
            ("a,,b", "expected NAME"),
            ("a=1,a=2", "twice"),
        ] {
            let e = Mix::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e = Mix::parse("a=1,zz=1,yy")
            .unwrap()
            .weights(&names)
            .unwrap_err();
        assert!(e.contains("zz, yy") && e.contains("a, b, c"), "{e}");
        let e = Mix::parse("a=0,b=0").unwrap().weights(&names).unwrap_err();
        assert!(e.contains("all zero"), "{e}");
    }

    /// A mix of one style is that style's network bit for bit: the same picture as
    /// running the style's rows directly, and after a save and a load.
    #[test]
    fn one_style_of_a_mix_is_that_style_exactly() {
        for arch in [Arch::Johnson, Arch::Seed] {
            let m = model(arch, 3, 5);
            let x = image(1, 20, 28);
            for k in 0..3 {
                let mut direct = m.clone();
                direct.set_style(k);
                let mut w = vec![0.0; 3];
                w[k] = 1.0;
                let single = m.mixed(&w);
                assert_eq!(single.config.styles, 1);
                let want = direct.forward(&x);
                assert_eq!(single.forward(&x).data, want.data, "{arch:?} style {k}");
                let back =
                    Transformer::from_bytes(&single.to_file().to_bytes(Precision::F32).unwrap())
                        .unwrap();
                assert_eq!(back.forward(&x).data, want.data);
            }
            // A single-style network is its own mix.
            let one = model(arch, 1, 2);
            assert_eq!(one.mixed(&[1.0]).forward(&x).data, one.forward(&x).data);
        }
    }

    /// The file keeps each norm's styles as rows of one `[styles, channels]` tensor, and
    /// reads back into the same rows; a file with the wrong row count is refused.
    #[test]
    fn several_styles_round_trip_through_the_file() {
        let m = model(Arch::Johnson, 3, 7);
        let f = m.to_file();
        assert_eq!(f.tensors["in3.weight"].0, [3, 16]);
        assert_eq!(f.tensors["conv1.conv2d.weight"].0, [8, 3, 9, 9]);
        let back = Transformer::from_bytes(&f.to_bytes(Precision::F32).unwrap()).unwrap();
        assert_eq!(back.style_names(), ["a", "b", "c"]);
        for ((s, a), (_, b)) in m.params().zip(back.params()) {
            assert_eq!(a, b, "{}", s.key());
        }
        let mut bad = m.to_file();
        bad.tensors.get_mut("in2.bias").unwrap().0 = vec![12, 3];
        let e = Transformer::from_bytes(&bad.to_bytes(Precision::F32).unwrap()).unwrap_err();
        assert!(e.to_string().contains("in2.bias"), "{e}");
        let mut bad = m.to_file();
        bad.metadata.insert(
            STYLES_KEY.into(),
            r#"[{"name":"a"},{"name":"a"},{"name":"b"}]"#.into(),
        );
        let e = Transformer::from_bytes(&bad.to_bytes(Precision::F32).unwrap()).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
    }

    /// Conditional instance norm's backward pass: the active style's rows get the gradient
    /// (checked against central differences of L = Σ r ⊙ y), the other styles' none.
    #[test]
    fn the_active_styles_rows_match_finite_differences() {
        for arch in [Arch::Johnson, Arch::Seed] {
            let mut m = model(arch, 3, 11);
            m.set_style(1);
            let x = image(3, 24, 32);
            let (y, tape) = m.forward_train(&x, true);
            let mut rng = Rng::new(4);
            let r: Vec<f32> = (0..y.data.len()).map(|_| rng.f32() - 0.5).collect();
            let dy = Tensor::from_vec(y.n, y.c, y.h, y.w, r.clone());
            let grads = m.backward(&tape, &dy);
            let loss = |m: &Transformer| -> f64 {
                m.forward(&x)
                    .data
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum()
            };
            for key in [
                "in1.weight[1]",
                "in2.bias[1]",
                "res2.in1.weight[1]",
                "in5.bias[1]",
            ] {
                let id = m.plan().param_id(key).unwrap();
                let g = grads.0[id]
                    .as_ref()
                    .expect("the active row has a gradient")
                    .data
                    .clone();
                let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                let h = 1e-3 / norm;
                let shifted = |sign: f64| {
                    let mut s = m.clone();
                    s.edit_param(key, |p| {
                        for (v, d) in p.iter_mut().zip(&g) {
                            *v += (sign * h * *d as f64) as f32;
                        }
                    });
                    loss(&s)
                };
                let num = (shifted(1.0) - shifted(-1.0)) / (2.0 * h);
                let ana = norm * norm;
                assert!(
                    (num - ana).abs() < 0.03 * ana,
                    "{arch:?} {key}: {num:.4e} vs {ana:.4e}"
                );
            }
            for (id, spec) in m.plan().params.iter().enumerate() {
                if spec.style.is_some_and(|k| k != 1) {
                    assert!(grads.0[id].is_none(), "{} has a gradient", spec.key());
                }
            }
        }
    }

    /// A 50/50 blend lies between its two styles: its output's distance to each pure
    /// style's output is smaller than theirs to each other.
    #[test]
    fn a_blend_lies_between_its_styles() {
        let m = model(Arch::Johnson, 2, 9);
        let x = image(8, 24, 24);
        let a = m.mixed(&[1.0, 0.0]).forward(&x);
        let b = m.mixed(&[0.0, 1.0]).forward(&x);
        let ab = m.mixed(&[0.5, 0.5]).forward(&x);
        let d = |p: &Tensor, q: &Tensor| {
            p.data
                .iter()
                .zip(&q.data)
                .map(|(u, v)| ((u - v) as f64).powi(2))
                .sum::<f64>()
        };
        assert!(d(&ab, &a) < d(&a, &b) && d(&ab, &b) < d(&a, &b));
    }
}

#[cfg(test)]
mod single_style_files {
    use crate::model::Transformer;

    /// A single-style file reads and writes exactly as before networks of several styles
    /// existed: the config has no `styles` field, every tensor keeps its name and shape, and
    /// the model comes back from a round trip value for value. The built-ins: their files
    /// as embedded, and a style of an embedded network of several as it is written.
    #[test]
    fn single_style_files_are_unchanged() {
        // A file written before networks held several styles (a live twin, stored as f16),
        // and every built-in name, each as the model of one style it stands for.
        let fixture = (
            "tests/fixtures/single-style-live.safetensors".to_string(),
            include_bytes!("../../tests/fixtures/single-style-live.safetensors").to_vec(),
        );
        let files: Vec<(String, Vec<u8>)> = std::iter::once(fixture)
            .chain(crate::styles::names().into_iter().map(|n| {
                let bytes = match crate::styles::row_of(n) {
                    None => crate::styles::builtin_bytes(n).expect("listed").to_vec(),
                    Some(_) => crate::styles::builtin(n)
                        .unwrap()
                        .unwrap()
                        .to_file()
                        .to_bytes(crate::model::format::Precision::F32)
                        .unwrap(),
                };
                (n.to_string(), bytes)
            }))
            .collect();
        for (name, bytes) in files {
            let bytes = &bytes[..];
            let original = crate::model::format::TensorFile::from_bytes(bytes).unwrap();
            let m = Transformer::from_bytes(bytes).unwrap();
            assert_eq!(m.style_count(), 1);
            let f = m.to_file();
            assert!(!f.metadata[crate::model::transformer::CONFIG_KEY].contains("styles"));
            let names = |t: &crate::model::format::TensorFile| {
                t.tensors
                    .iter()
                    .filter(|(k, _)| !k.ends_with(crate::model::format::Q8_SCALE))
                    .map(|(k, (s, _))| (k.clone(), s.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>()
            };
            assert_eq!(names(&f), names(&original), "{name}");
            let back = Transformer::from_file(f).unwrap();
            for ((s, a), (_, b)) in m.params().zip(back.params()) {
                assert_eq!(a, b, "{name} {}", s.name);
            }
        }
    }
}
