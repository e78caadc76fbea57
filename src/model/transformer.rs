//! The image transformation network (Johnson et al. 2016), one definition for every use.
//!
//! Two architectures share the layer plan `9×9 conv → two stride-2 convs → residual blocks →
//! two ×2 upsampling stages → 9×9 conv`, each conv followed by instance norm and ReLU:
//! - `johnson` (default): reflection padding, nearest ×2 upsample + conv, eps 1e-5, linear
//!   output; parameter names as pytorch/examples `TransformerNet`.
//! - `seed`: lengstrom/fast-style-transfer as exported by ml5: zero "SAME" padding, stride-2
//!   transposed convolutions, eps 1e-3, an instance norm on the output, then
//!   `clip(150·tanh(x) + 127.5, 0, 255)`; no conv biases.
//!
//! The forward pass hands each instance norm's pre-activation to a caller-supplied
//! statistics source, so that tiled inference can impose global statistics on every tile
//! (see `stylize::tiled`). Plain inference computes them from the tensor itself.

use crate::error::{Error, Result};
use crate::kernels::conv::{SubPixel, UpsampleConv};
use crate::kernels::{norm, Conv2d, ConvGeom, PadMode};
use crate::model::format::TensorFile;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Johnson,
    Seed,
}

pub use crate::backend::OutputFn;

/// Everything that defines the network's shape; stored in the model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    pub arch: Arch,
    /// Channels after conv1, conv2, conv3.
    pub channels: [usize; 3],
    pub res_blocks: usize,
    pub norm_eps: f64,
    pub conv_bias: bool,
    pub final_norm: bool,
    pub output: OutputFn,
}

impl TransformerConfig {
    pub fn new(arch: Arch) -> Self {
        match arch {
            Arch::Johnson => TransformerConfig {
                arch,
                channels: [32, 64, 128],
                res_blocks: 5,
                norm_eps: 1e-5,
                conv_bias: true,
                final_norm: false,
                output: OutputFn::Linear,
            },
            Arch::Seed => TransformerConfig {
                arch,
                channels: [32, 64, 128],
                res_blocks: 5,
                norm_eps: 1e-3,
                conv_bias: false,
                final_norm: true,
                output: OutputFn::ScaledTanh {
                    scale: 150.0,
                    shift: 127.5,
                },
            },
        }
    }

    /// Refuse configs no network of ours has (and that would make absurd allocations or
    /// non-finite outputs): widths 1..=4096, at most 64 residual blocks, 0 < eps < 1, a
    /// finite output scale and shift.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channels.iter().any(|&c| c == 0 || c > 4096) {
            return Err(format!(
                "implausible channel widths {:?} (each must be 1..=4096)",
                self.channels
            ));
        }
        if self.res_blocks > 64 {
            return Err(format!(
                "implausible network: {} residual blocks (at most 64)",
                self.res_blocks
            ));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return Err(format!(
                "instance-norm epsilon {} out of range (0 < eps < 1)",
                self.norm_eps
            ));
        }
        if let OutputFn::ScaledTanh { scale, shift } = self.output {
            if !(scale.is_finite() && shift.is_finite()) {
                return Err(format!(
                    "output scale {scale} / shift {shift} must be finite numbers"
                ));
            }
        }
        Ok(())
    }

    /// Every parameter: name and shape, in forward order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let [c1, c2, c3] = self.channels;
        let mut v = Vec::new();
        let conv = |v: &mut Vec<(String, Vec<usize>)>, name: &str, shape: [usize; 4]| {
            v.push((format!("{name}.conv2d.weight"), shape.to_vec()));
            if self.conv_bias {
                let out =
                    if name.starts_with("deconv") && self.arch == Arch::Seed && name != "deconv3" {
                        shape[1]
                    } else {
                        shape[0]
                    };
                v.push((format!("{name}.conv2d.bias"), vec![out]));
            }
        };
        let normp = |v: &mut Vec<(String, Vec<usize>)>, name: &str, c: usize| {
            v.push((format!("{name}.weight"), vec![c]));
            v.push((format!("{name}.bias"), vec![c]));
        };
        conv(&mut v, "conv1", [c1, 3, 9, 9]);
        normp(&mut v, "in1", c1);
        conv(&mut v, "conv2", [c2, c1, 3, 3]);
        normp(&mut v, "in2", c2);
        conv(&mut v, "conv3", [c3, c2, 3, 3]);
        normp(&mut v, "in3", c3);
        for r in 1..=self.res_blocks {
            conv(&mut v, &format!("res{r}.conv1"), [c3, c3, 3, 3]);
            normp(&mut v, &format!("res{r}.in1"), c3);
            conv(&mut v, &format!("res{r}.conv2"), [c3, c3, 3, 3]);
            normp(&mut v, &format!("res{r}.in2"), c3);
        }
        match self.arch {
            // ConvTranspose weights are [c_in, c_out, k, k].
            Arch::Seed => {
                conv(&mut v, "deconv1", [c3, c2, 3, 3]);
                normp(&mut v, "in4", c2);
                conv(&mut v, "deconv2", [c2, c1, 3, 3]);
                normp(&mut v, "in5", c1);
            }
            Arch::Johnson => {
                conv(&mut v, "deconv1", [c2, c3, 3, 3]);
                normp(&mut v, "in4", c2);
                conv(&mut v, "deconv2", [c1, c2, 3, 3]);
                normp(&mut v, "in5", c1);
            }
        }
        conv(&mut v, "deconv3", [3, c1, 9, 9]);
        if self.final_norm {
            normp(&mut v, "in6", 3);
        }
        v
    }

    /// How many instance norms the forward pass runs.
    pub fn norm_count(&self) -> usize {
        5 + 2 * self.res_blocks + self.final_norm as usize
    }
}

fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("IMPASTO_PROFILE").is_some())
}

fn profile_start() -> Option<std::time::Instant> {
    profiling().then(std::time::Instant::now)
}

/// With `IMPASTO_PROFILE` set, print each layer's time to stderr.
fn profile_end(t: Option<std::time::Instant>, what: impl FnOnce() -> String) {
    if let Some(t) = t {
        eprintln!(
            "profile {:>8.2} ms  {}",
            t.elapsed().as_secs_f64() * 1e3,
            what()
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resample {
    None,
    Upsample,
    Transposed,
}

#[derive(Clone, Debug)]
struct Layer {
    name: String,
    conv: Conv2d,
    /// The sub-pixel form of an upsample + 3×3 conv (johnson's decoder).
    up: Option<UpsampleConv>,
    k: usize,
    stride: usize,
    resample: Resample,
}

#[derive(Clone, Debug)]
struct Norm {
    name: String,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// Source of instance-norm statistics: given the norm's index and its (single-sample)
/// pre-activation, return the statistics to normalise with, or `None` to stop the pass.
pub trait StatsSource {
    fn stats(&mut self, index: usize, x: &Tensor, eps: f64) -> Option<norm::NormStats>;
}

/// Statistics of the tensor itself: ordinary instance norm.
pub struct OwnStats;

impl StatsSource for OwnStats {
    fn stats(&mut self, _index: usize, x: &Tensor, eps: f64) -> Option<norm::NormStats> {
        Some(norm::moments(&x.data, x.c, x.h, x.w).stats(eps))
    }
}

struct ProfileGuard(Option<std::time::Instant>, usize);
impl Drop for ProfileGuard {
    fn drop(&mut self) {
        let i = self.1;
        profile_end(self.0, || format!("norm {i}"));
    }
}

/// A loaded transformation network.
#[derive(Clone, Debug)]
pub struct Transformer {
    pub config: TransformerConfig,
    /// The file's parameters as stored (PyTorch layouts), for saving and export.
    pub params: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Free-form provenance (how the model was made), kept with the file.
    pub metadata: BTreeMap<String, String>,
    layers: Vec<Layer>,
    norms: Vec<Norm>,
}

pub const CONFIG_KEY: &str = "impasto.config";

impl Transformer {
    pub fn load(path: &Path) -> Result<Self> {
        let file = TensorFile::read(path)?;
        Self::from_file(file).map_err(|msg| Error::model(path, msg))
    }

    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        Self::from_file(TensorFile::from_bytes(bytes)?)
    }

    pub fn from_file(mut file: TensorFile) -> std::result::Result<Self, String> {
        let config = match file.metadata.get(CONFIG_KEY) {
            Some(js) => serde_json::from_str::<TransformerConfig>(js).map_err(|e| format!("bad `{CONFIG_KEY}` metadata: {e}"))?,
            // A plain pytorch/examples TransformerNet state dict.
            None if file.tensors.contains_key("conv1.conv2d.weight") => TransformerConfig::new(Arch::Johnson),
            None => return Err("not an impasto model: no `impasto.config` metadata and no `conv1.conv2d.weight` tensor".into()),
        };
        config.validate()?;
        let mut params = BTreeMap::new();
        for (name, shape) in config.param_shapes() {
            let v = file.take(&name, &shape)?;
            params.insert(name, (shape, v));
        }
        if let Some(extra) = file.tensors.keys().next() {
            return Err(format!(
                "unexpected tensor `{extra}` for the {:?} architecture",
                config.arch
            ));
        }
        let mut metadata = file.metadata;
        metadata.remove(CONFIG_KEY);
        let t = Self::from_params(config, params, metadata);
        t.validate()?;
        Ok(t)
    }

    /// Build from parameters already checked against `config.param_shapes()`.
    pub fn from_params(
        config: TransformerConfig,
        params: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        let p = |n: &str| params[n].1.clone();
        let bias = |n: &str| {
            if config.conv_bias {
                Some(p(&format!("{n}.conv2d.bias")))
            } else {
                None
            }
        };
        let shape = |n: &str| params[&format!("{n}.conv2d.weight")].0.clone();
        let mk = |name: &str, stride: usize, resample: Resample| {
            let s = shape(name);
            let w = p(&format!("{name}.conv2d.weight"));
            let conv = if resample == Resample::Transposed {
                Conv2d::from_transposed(s[0], s[1], s[2], &w, bias(name))
            } else {
                Conv2d::new(s[0], s[1], s[2], w, bias(name))
            };
            let up = match resample {
                _ if s[2] != 3 => None,
                Resample::Upsample => Some(UpsampleConv::new(&conv, 3, SubPixel::Upsample)),
                Resample::Transposed => Some(UpsampleConv::new(&conv, 3, SubPixel::Transposed)),
                Resample::None => None,
            };
            Layer {
                name: name.to_string(),
                conv,
                up,
                k: s[2],
                stride,
                resample,
            }
        };
        let up = if config.arch == Arch::Seed {
            Resample::Transposed
        } else {
            Resample::Upsample
        };
        let mut layers = vec![
            mk("conv1", 1, Resample::None),
            mk("conv2", 2, Resample::None),
            mk("conv3", 2, Resample::None),
        ];
        let mut norm_names = vec!["in1".to_string(), "in2".into(), "in3".into()];
        for r in 1..=config.res_blocks {
            layers.push(mk(&format!("res{r}.conv1"), 1, Resample::None));
            layers.push(mk(&format!("res{r}.conv2"), 1, Resample::None));
            norm_names.push(format!("res{r}.in1"));
            norm_names.push(format!("res{r}.in2"));
        }
        layers.push(mk("deconv1", 1, up));
        layers.push(mk("deconv2", 1, up));
        layers.push(mk("deconv3", 1, Resample::None));
        norm_names.push("in4".into());
        norm_names.push("in5".into());
        if config.final_norm {
            norm_names.push("in6".into());
        }
        let norms = norm_names
            .iter()
            .map(|n| Norm {
                name: n.clone(),
                gamma: p(&format!("{n}.weight")),
                beta: p(&format!("{n}.bias")),
            })
            .collect();
        Transformer {
            config,
            params,
            metadata,
            layers,
            norms,
        }
    }

    /// A freshly initialised network (PyTorch's default: weights and biases uniform in
    /// ±1/√fan_in, instance-norm scale 1 and shift 0), reproducible from `seed`.
    pub fn init(config: TransformerConfig, seed: u64) -> Self {
        let mut rng = crate::rng::Rng::new(seed);
        let mut params = BTreeMap::new();
        let shapes = config.param_shapes();
        for (name, shape) in &shapes {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if shape.len() == 1 && !name.contains("conv2d") {
                vec![if name.ends_with(".weight") { 1.0 } else { 0.0 }; n]
            } else {
                // fan_in of the conv this tensor belongs to.
                let wname = name.replace(".bias", ".weight");
                let ws = &shapes
                    .iter()
                    .find(|(n, _)| *n == wname)
                    .expect("conv weight")
                    .1;
                let fan_in = if config.arch == Arch::Seed
                    && name.starts_with("deconv")
                    && name != "deconv3.conv2d.weight"
                {
                    ws[1] * ws[2] * ws[3]
                } else {
                    ws[1..].iter().product()
                };
                let b = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * b).collect()
            };
            params.insert(name.clone(), (shape.clone(), v));
        }
        Self::from_params(config, params, BTreeMap::new())
    }

    /// The model as a tensor file (config and provenance in the metadata).
    pub fn to_file(&self) -> TensorFile {
        let mut f = TensorFile::default();
        for (n, (s, v)) in &self.params {
            f.tensors.insert(n.clone(), (s.clone(), v.clone()));
        }
        f.metadata = self.metadata.clone();
        f.metadata.insert(
            CONFIG_KEY.into(),
            serde_json::to_string(&self.config).expect("config serialises"),
        );
        f
    }

    /// Write the model file. A model that `load` would refuse (non-finite weights, an
    /// implausible config) is refused here too, so no command writes a file impasto cannot
    /// read back.
    pub fn save(&self, path: &Path, half: bool) -> Result<()> {
        self.validate().map_err(|m| Error::model(path, m))?;
        if half {
            // f16 overflows to infinity above 65504.
            if let Some((n, _)) = self
                .params
                .iter()
                .find(|(_, (_, v))| v.iter().any(|x| x.abs() > 65504.0))
            {
                return Err(Error::model(
                    path,
                    format!("`{n}` has values beyond float16's range (±65504); save it as f32"),
                ));
            }
        }
        self.to_file().write(path, half)
    }

    /// The one check every model passes before it is used or written: a plausible config
    /// and finite parameters of the config's shapes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.config.validate()?;
        for (name, shape) in self.config.param_shapes() {
            match self.params.get(&name) {
                None => return Err(format!("missing tensor `{name}`")),
                Some((s, v)) => {
                    if *s != shape || v.len() != shape.iter().product::<usize>() {
                        return Err(format!("`{name}` has shape {s:?}, expected {shape:?}"));
                    }
                    if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                        return Err(format!("`{name}` holds a non-finite value ({x})"));
                    }
                }
            }
        }
        Ok(())
    }

    fn geom(&self, l: &Layer, h: usize, w: usize) -> ConvGeom {
        match (self.config.arch, l.resample) {
            (Arch::Johnson, r) => ConvGeom {
                k: l.k,
                stride: l.stride,
                pad: [l.k / 2; 4],
                mode: PadMode::Reflect,
                upsample: if r == Resample::Upsample { 2 } else { 1 },
                dilate: 1,
            },
            // ConvTranspose k3 s2 pads (0, 1): zero-insert, pad k-1 before and k-2 after.
            (Arch::Seed, Resample::Transposed) => ConvGeom {
                k: l.k,
                stride: 1,
                pad: [l.k - 1, l.k - 2, l.k - 1, l.k - 2],
                mode: PadMode::Zero,
                upsample: 1,
                dilate: 2,
            },
            (Arch::Seed, _) => {
                let same = |n: usize| {
                    let out = n.div_ceil(l.stride);
                    let total = ((out - 1) * l.stride + l.k).saturating_sub(n);
                    (total / 2, total - total / 2)
                };
                let (t, b) = same(h);
                let (le, r) = same(w);
                ConvGeom {
                    k: l.k,
                    stride: l.stride,
                    pad: [t, b, le, r],
                    mode: PadMode::Zero,
                    upsample: 1,
                    dilate: 1,
                }
            }
        }
    }

    fn conv(&self, i: usize, x: &Tensor) -> Tensor {
        self.conv_in(i, x, true)
    }

    fn conv_in(&self, i: usize, x: &Tensor, winograd: bool) -> Tensor {
        let l = &self.layers[i];
        let t = profile_start();
        let y = match &l.up {
            Some(up) => up.forward(x),
            None if winograd => l.conv.forward(x, &self.geom(l, x.h, x.w)),
            None => l.conv.forward_exact(x, &self.geom(l, x.h, x.w)),
        };
        profile_end(t, || {
            format!(
                "conv {i} {}x{}x{} -> {}x{}x{}",
                x.c, x.h, x.w, y.c, y.h, y.w
            )
        });
        y
    }

    fn norm(
        &self,
        i: usize,
        x: &mut Tensor,
        st: &norm::NormStats,
        relu: bool,
        residual: Option<&Tensor>,
    ) {
        let n = &self.norms[i];
        let (c, hw) = (x.c, x.plane());
        let t = profile_start();
        let _g = ProfileGuard(t, i);
        norm::apply(
            &mut x.data,
            c,
            hw,
            st,
            &n.gamma,
            &n.beta,
            relu,
            residual.map(|r| r.data.as_slice()),
        );
    }

    /// Ordinary forward pass; any batch size. Input and output RGB on the 0..255 scale.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut outs = Vec::with_capacity(x.n);
        for b in 0..x.n {
            let s = Tensor::from_vec(1, x.c, x.h, x.w, x.sample(b).to_vec());
            outs.push(
                self.forward_with(&s, &mut OwnStats)
                    .expect("own statistics never stop"),
            );
        }
        if outs.len() == 1 {
            return outs.pop().unwrap();
        }
        let (c, h, w) = (outs[0].c, outs[0].h, outs[0].w);
        Tensor::from_vec(
            x.n,
            c,
            h,
            w,
            outs.into_iter().flat_map(|t| t.into_data()).collect(),
        )
    }

    /// Forward pass of one sample with instance-norm statistics from `src`.
    /// Returns `None` if `src` stopped the pass.
    pub fn forward_with(&self, x: &Tensor, src: &mut dyn StatsSource) -> Option<Tensor> {
        assert_eq!(x.n, 1, "forward_with takes one sample");
        assert_eq!(x.c, 3, "the network takes RGB input");
        let eps = self.config.norm_eps;
        let mut ni = 0;
        let mut step = |t: &mut Tensor,
                        relu_after: bool,
                        residual: Option<&Tensor>,
                        this: &Self|
         -> Option<()> {
            let st = src.stats(ni, t, eps)?;
            this.norm(ni, t, &st, relu_after, residual);
            ni += 1;
            Some(())
        };
        let mut h = self.conv(0, x);
        step(&mut h, true, None, self)?;
        for i in 1..3 {
            h = self.conv(i, &h);
            step(&mut h, true, None, self)?;
        }
        for r in 0..self.config.res_blocks {
            let mut a = self.conv(3 + 2 * r, &h);
            step(&mut a, true, None, self)?;
            let mut b = self.conv(4 + 2 * r, &a);
            drop(a);
            step(&mut b, false, Some(&h), self)?;
            h = b;
        }
        let base = 3 + 2 * self.config.res_blocks;
        for i in base..base + 2 {
            h = self.conv(i, &h);
            step(&mut h, true, None, self)?;
        }
        let mut y = self.conv(base + 2, &h);
        drop(h);
        if self.config.final_norm {
            step(&mut y, false, None, self)?;
        }
        if let OutputFn::ScaledTanh { scale, shift } = self.config.output {
            for v in y.data.iter_mut() {
                *v = (scale * v.tanh() + shift).clamp(0.0, 255.0);
            }
        }
        Some(y)
    }

    /// Sizes the network maps to themselves: multiples of 4 (two stride-2 stages).
    pub const ALIGN: usize = 4;

    /// Approximate multiply-adds ×2 for one `h × w` forward pass.
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        let px = (h * w) as f64;
        let [c1, c2, c3] = self.config.channels.map(|c| c as f64);
        let full = 2.0 * px * (c1 * 3.0 * 81.0 + 3.0 * c1 * 81.0 + c1 * c2 * 9.0);
        let half = 2.0 * px / 4.0 * (c2 * c1 * 9.0 + c3 * c2 * 9.0);
        let quarter =
            2.0 * px / 16.0 * (c3 * c2 * 9.0 + 2.0 * self.config.res_blocks as f64 * c3 * c3 * 9.0);
        full + half + quarter
    }
}

/// What the training forward pass keeps for the backward pass.
pub struct Tape {
    /// The input of every conv layer, in order.
    inputs: Vec<Tensor>,
    /// Per instance norm: x̂ (normalised, before γ/β) and each sample's 1/σ.
    xhat: Vec<Tensor>,
    inv_std: Vec<Vec<Vec<f32>>>,
    /// The value the output function was applied to (seed: after the last norm).
    pre_output: Tensor,
}

/// Per-parameter gradients, by parameter name (the model file's layouts).
pub type Grads = BTreeMap<String, Vec<f32>>;

impl Transformer {
    /// Instance norm of a batch with its own statistics; returns the output and records x̂.
    fn norm_train(
        &self,
        i: usize,
        z: &Tensor,
        relu_after: bool,
        residual: Option<&Tensor>,
        tape: &mut Tape,
    ) -> Tensor {
        let n = &self.norms[i];
        let hw = z.plane();
        let mut xhat = z.clone();
        let mut out = z.clone();
        let mut inv = Vec::with_capacity(z.n);
        for s in 0..z.n {
            let st = norm::moments(z.sample(s), z.c, z.h, z.w).stats(self.config.norm_eps);
            let ones = vec![1.0f32; z.c];
            let zeros = vec![0.0f32; z.c];
            norm::apply(xhat.sample_mut(s), z.c, hw, &st, &ones, &zeros, false, None);
            norm::apply(
                out.sample_mut(s),
                z.c,
                hw,
                &st,
                &n.gamma,
                &n.beta,
                relu_after,
                residual.map(|r| r.sample(s)),
            );
            inv.push(st.inv_std);
        }
        tape.xhat.push(xhat);
        tape.inv_std.push(inv);
        out
    }

    /// Forward pass of a batch that records what [`Transformer::backward`] needs.
    pub fn forward_train(&self, x: &Tensor) -> (Tensor, Tape) {
        let mut tape = Tape {
            inputs: Vec::new(),
            xhat: Vec::new(),
            inv_std: Vec::new(),
            pre_output: Tensor::zeros(0, 0, 0, 0),
        };
        // Without Winograd: the gradient of the perceptual loss is sensitive to rounding in
        // the forward pass (on AVX2 machines Winograd's larger rounding error in the
        // residual blocks moved every gradient by 2.5e-3 against PyTorch's float64 golden;
        // the exact kernels give 6e-6). Inference keeps Winograd.
        let conv = |i: usize, h: &Tensor, tape: &mut Tape| {
            tape.inputs.push(h.clone());
            self.conv_in(i, h, false)
        };
        let mut ni = 0;
        let mut h = x.clone();
        for i in 0..3 {
            let z = conv(i, &h, &mut tape);
            h = self.norm_train(ni, &z, true, None, &mut tape);
            ni += 1;
        }
        for r in 0..self.config.res_blocks {
            let z = conv(3 + 2 * r, &h, &mut tape);
            let a = self.norm_train(ni, &z, true, None, &mut tape);
            let z = conv(4 + 2 * r, &a, &mut tape);
            h = self.norm_train(ni + 1, &z, false, Some(&h), &mut tape);
            ni += 2;
        }
        let base = 3 + 2 * self.config.res_blocks;
        for i in base..base + 2 {
            let z = conv(i, &h, &mut tape);
            h = self.norm_train(ni, &z, true, None, &mut tape);
            ni += 1;
        }
        let mut y = conv(base + 2, &h, &mut tape);
        if self.config.final_norm {
            y = self.norm_train(ni, &y, false, None, &mut tape);
        }
        tape.pre_output = y.clone();
        if let OutputFn::ScaledTanh { scale, shift } = self.config.output {
            for v in y.data.iter_mut() {
                *v = (scale * v.tanh() + shift).clamp(0.0, 255.0);
            }
        }
        (y, tape)
    }

    /// Backward of one norm (index `i`) given the gradient at its output (after any ReLU
    /// mask): the gradient at its input; γ/β gradients go into `grads`.
    fn norm_backward(&self, i: usize, tape: &Tape, dout: &Tensor, grads: &mut Grads) -> Tensor {
        let n = &self.norms[i];
        let xhat = &tape.xhat[i];
        let (c, hw) = (xhat.c, xhat.plane());
        let (mut dg, mut db) = (vec![0.0f64; c], vec![0.0f64; c]);
        let mut dz = Tensor::zeros(xhat.n, c, xhat.h, xhat.w);
        for s in 0..xhat.n {
            let d = norm::backward(
                xhat.sample(s),
                dout.sample(s),
                c,
                hw,
                &tape.inv_std[i][s],
                &n.gamma,
                &mut dg,
                &mut db,
            );
            dz.sample_mut(s).copy_from_slice(&d);
        }
        grads.insert(
            format!("{}.weight", n.name),
            dg.into_iter().map(|v| v as f32).collect(),
        );
        grads.insert(
            format!("{}.bias", n.name),
            db.into_iter().map(|v| v as f32).collect(),
        );
        dz
    }

    /// Backward of conv layer `i`: the gradient at its input (if wanted); W/b into `grads`.
    fn conv_backward(
        &self,
        i: usize,
        tape: &Tape,
        dz: &Tensor,
        want_dx: bool,
        grads: &mut Grads,
    ) -> Option<Tensor> {
        let l = &self.layers[i];
        let mut x = &tape.inputs[i];
        let geom = self.geom(l, x.h, x.w);
        // The first conv sees the image (0..255): its weight gradient Σ x·dz sums large
        // terms whose total nearly cancels, because dz (coming back through instance norm)
        // has zero mean per channel. Centring x per channel is exact in that case (with
        // reflection padding the padded pixels shift with it) and removes the cancellation:
        // without it float32 loses three digits on machines whose kernels sum in another
        // order (AVX2: 2.5e-3 relative error against PyTorch, 4e-7 with it).
        let centred;
        if i == 0 && l.up.is_none() && geom.mode == PadMode::Reflect && !want_dx {
            centred = centre_channels(x);
            x = &centred;
        }
        let t = profile_start();
        let g = match &l.up {
            Some(up) => up.backward(x, dz, want_dx),
            None => l.conv.backward(&geom, x, dz, want_dx),
        };
        profile_end(t, || format!("conv {i} backward {}x{}x{}", x.c, x.h, x.w));
        let wname = format!("{}.conv2d.weight", l.name);
        let dw = if l.resample == Resample::Transposed {
            // Back from the flipped forward layout to ConvTranspose's [c_in][c_out][k][k].
            crate::kernels::conv::flip_transpose(&g.dw, l.conv.c_out, l.conv.c_in, l.k)
        } else {
            g.dw
        };
        grads.insert(wname, dw);
        if self.config.conv_bias {
            grads.insert(format!("{}.conv2d.bias", l.name), g.db);
        }
        g.dx
    }

    /// Gradients of a scalar loss with respect to every parameter, given d(loss)/d(output).
    pub fn backward(&self, tape: &Tape, dy: &Tensor) -> Grads {
        let mut grads = Grads::new();
        let mut d = dy.clone();
        if let OutputFn::ScaledTanh { scale, shift } = self.config.output {
            for (g, &u) in d.data.iter_mut().zip(&tape.pre_output.data) {
                let t = u.tanh();
                let y = scale * t + shift;
                *g = if y > 0.0 && y < 255.0 {
                    *g * scale * (1.0 - t * t)
                } else {
                    0.0
                };
            }
        }
        let mut ni = self.norms.len();
        if self.config.final_norm {
            ni -= 1;
            d = self.norm_backward(ni, tape, &d, &mut grads);
        }
        let last = self.layers.len() - 1;
        let mask = |d: &mut Tensor, x: &Tensor| {
            for (g, &v) in d.data.iter_mut().zip(&x.data) {
                if v <= 0.0 {
                    *g = 0.0;
                }
            }
        };
        // deconv3, then the two upsampling stages.
        let mut dh = self
            .conv_backward(last, tape, &d, true, &mut grads)
            .expect("dx");
        for i in (last - 2..last).rev() {
            mask(&mut dh, &tape.inputs[i + 1]);
            ni -= 1;
            let dz = self.norm_backward(ni, tape, &dh, &mut grads);
            dh = self
                .conv_backward(i, tape, &dz, true, &mut grads)
                .expect("dx");
        }
        // Residual blocks: h_out = h_in + IN2(conv2(relu(IN1(conv1(h_in))))).
        for r in (0..self.config.res_blocks).rev() {
            let (c1, c2) = (3 + 2 * r, 4 + 2 * r);
            ni -= 2;
            let dz2 = self.norm_backward(ni + 1, tape, &dh, &mut grads);
            let mut da = self
                .conv_backward(c2, tape, &dz2, true, &mut grads)
                .expect("dx");
            mask(&mut da, &tape.inputs[c2]);
            let dz1 = self.norm_backward(ni, tape, &da, &mut grads);
            let dx = self
                .conv_backward(c1, tape, &dz1, true, &mut grads)
                .expect("dx");
            dh.data.iter_mut().zip(&dx.data).for_each(|(a, b)| *a += b);
        }
        // conv3, conv2, conv1.
        for i in (0..3).rev() {
            mask(&mut dh, &tape.inputs[i + 1]);
            ni -= 1;
            let dz = self.norm_backward(ni, tape, &dh, &mut grads);
            match self.conv_backward(i, tape, &dz, i > 0, &mut grads) {
                Some(dx) => dh = dx,
                None => break,
            }
        }
        debug_assert_eq!(ni, 0);
        grads
    }
}

/// `x` with each sample's per-channel mean subtracted (f64 sums).
fn centre_channels(x: &Tensor) -> Tensor {
    let mut y = x.clone();
    let hw = x.plane();
    for plane in y.data.chunks_mut(hw) {
        let m = (plane.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
        plane.iter_mut().for_each(|v| *v -= m);
    }
    y
}

#[cfg(test)]
mod grad_tests {
    use super::*;

    /// The whole network's backward pass, both architectures, against central differences
    /// of L = Σ r ⊙ y for a few parameters of every kind of layer.
    #[test]
    fn backward_matches_finite_differences_for_both_architectures() {
        for arch in [Arch::Johnson, Arch::Seed] {
            let mut model = Transformer::init(TransformerConfig::new(arch), 11);
            if arch == Arch::Seed {
                // Keep tanh out of saturation so that the check sees real gradients.
                let p = &mut model.params.get_mut("in6.weight").unwrap().1;
                p.iter_mut().for_each(|v| *v = 0.01);
                model = Transformer::from_params(
                    model.config.clone(),
                    model.params.clone(),
                    Default::default(),
                );
            }
            let mut rng = crate::rng::Rng::new(3);
            let x = Tensor::from_vec(
                1,
                3,
                32,
                48,
                (0..3 * 32 * 48).map(|_| rng.f32() * 255.0).collect(),
            );
            let (y, tape) = model.forward_train(&x);
            let r: Vec<f32> = (0..y.data.len()).map(|_| rng.f32() - 0.5).collect();
            let dy = Tensor::from_vec(y.n, y.c, y.h, y.w, r.clone());
            let grads = model.backward(&tape, &dy);
            let loss = |m: &Transformer| -> f64 {
                m.forward(&x)
                    .data
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum()
            };
            // Directional derivative along each tensor's own gradient: a large, robust signal
            // (single-coordinate differences drown in ReLU kinks and float32 noise).
            for name in [
                "conv1.conv2d.weight",
                "in2.weight",
                "res2.conv1.conv2d.weight",
                "res5.in2.weight",
                "deconv1.conv2d.weight",
                "in5.bias",
                "deconv3.conv2d.weight",
            ] {
                let g = &grads[name];
                let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                let pw = &model.params[name].1;
                let pnorm = pw
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1.0);
                let h = 1e-3 * pnorm / norm;
                let shifted = |sign: f64| {
                    let mut p = model.params.clone();
                    for (v, d) in p.get_mut(name).unwrap().1.iter_mut().zip(g) {
                        *v += (sign * h * *d as f64) as f32;
                    }
                    loss(&Transformer::from_params(
                        model.config.clone(),
                        p,
                        Default::default(),
                    ))
                };
                let num = (shifted(1.0) - shifted(-1.0)) / (2.0 * h);
                let ana = norm * norm;
                assert!(
                    (num - ana).abs() < 0.03 * ana,
                    "{arch:?} {name}: numeric {num:.5e} vs analytic {ana:.5e}"
                );
            }
        }
    }
}
