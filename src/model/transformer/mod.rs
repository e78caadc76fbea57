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
//! The topology is written once, in [`TransformerConfig::plan`] (`model::plan`); this file
//! runs that plan on any [`Backend`]: one forward pass (which records a tape only when
//! training) and the backward pass that walks the same blocks in reverse.
//!
//! The forward pass hands each instance norm's pre-activation to a caller-supplied
//! statistics source, so that tiled inference can impose global statistics on every tile
//! (see the tiled path of `stylize`). Plain inference computes them from the tensor itself.

use crate::backend::{Backend, Cpu, DeviceError, Padding, Resample};
use crate::error::{Error, ModelError, Result};
use crate::model::format::TensorFile;
use crate::model::plan::{Block, Init, ParamId, ParamSpec, Plan};
use crate::tensor::Tensor;

use std::collections::BTreeMap;
use std::path::Path;

mod backward;

pub use crate::model::config::{Arch, TransformerConfig};
pub use crate::model::stats::{Activation, OwnStats, StatsSource};
pub use backward::Tape;

pub use crate::backend::OutputFn;

/// A transformation network on a backend: its plan, its parameters (one store, indexed by
/// [`ParamId`]) and each convolution prepared for the backend.
///
/// Every parameter lives twice: on the host (what files, ONNX and the accessors read) and on
/// the backend (what the passes read, and what an optimiser steps in place with
/// [`Transformer::update_on_backend`], after which the host copy is refreshed only when it
/// is asked for: one readback per checkpoint, not per step).
pub struct Transformer<B: Backend = Cpu> {
    pub config: TransformerConfig,
    /// Free-form provenance (how the model was made), kept with the file.
    pub metadata: BTreeMap<String, String>,
    plan: Plan,
    params: Vec<Vec<f32>>,
    backend: B,
    convs: Vec<B::Conv>,
    /// Every parameter on the backend, flat (`[1, 1, 1, len]`).
    dev: Vec<B::Tensor>,
    /// The backend's parameters are newer than `params`.
    stale: bool,
    /// The style whose norm rows the passes use (0 in a single-style network).
    style: usize,
}

impl<B: Backend> Clone for Transformer<B> {
    fn clone(&self) -> Self {
        self.to_backend(self.backend.clone())
    }
}

impl<B: Backend> std::fmt::Debug for Transformer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("config", &self.config)
            .field("backend", &self.backend.name())
            .field("parameters", &self.plan.param_count())
            .finish()
    }
}

pub const CONFIG_KEY: &str = "impasto.config";

/// Metadata key: the mirror margin (whole pixels, at most [`MAX_MARGIN`]) the stylize
/// pipeline gives this model unless told otherwise, for a network whose own edge effect
/// reaches further into the picture than the default margin hides (measured with
/// `impasto evaluate --margin N`; written by `impasto convert --margin N`).
pub const MARGIN_KEY: &str = "impasto.margin";
/// The widest mirror margin anything accepts.
pub const MAX_MARGIN: usize = 256;

/// A [`MARGIN_KEY`] value: a whole number of pixels from 0 to [`MAX_MARGIN`].
pub fn parse_margin(v: &str) -> std::result::Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(m) if m <= MAX_MARGIN => Ok(m),
        _ => Err(format!(
            "{:?}: expected a whole number of pixels from 0 to {MAX_MARGIN}",
            crate::error::clip(v, 64)
        )),
    }
}

/// Per-parameter gradients on the backend (flat), indexed by [`ParamId`]; `None` for a
/// parameter the loss does not reach.
pub struct Grads<B: Backend = Cpu>(pub Vec<Option<B::Tensor>>);

impl<B: Backend> Grads<B> {
    /// The gradients on the host (empty for `None`): tests and finite-difference checks.
    pub fn to_host(&self, b: &B) -> Vec<Vec<f32>> {
        self.0
            .iter()
            .map(|g| {
                g.as_ref()
                    .map_or_else(Vec::new, |g| b.download(g).into_data())
            })
            .collect()
    }

    /// `Σ g²` over every gradient, on the backend (finite exactly when every gradient is).
    pub fn sum_squares(&self, b: &B) -> Vec<B::Scalar> {
        use rayon::prelude::*;
        // On the host, one gradient per task (each summed in its own order, as before).
        if self.0.iter().flatten().all(|g| b.as_host(g).is_some()) {
            return self
                .0
                .par_iter()
                .flatten()
                .map(|g| b.sum_squares(g))
                .collect();
        }
        self.0.iter().flatten().map(|g| b.sum_squares(g)).collect()
    }
}

impl Transformer<Cpu> {
    /// Sizes the network maps to themselves: multiples of 4 (two stride-2 stages).
    pub const ALIGN: usize = 4;

    pub fn load(path: &Path) -> Result<Self> {
        Self::load_on(Cpu, path)
    }

    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, ModelError> {
        Self::from_file(TensorFile::from_bytes(bytes)?)
    }

    pub fn from_file(file: TensorFile) -> std::result::Result<Self, ModelError> {
        Self::from_file_on(Cpu, file)
    }

    /// From named tensors (PyTorch layouts); every tensor of the config's plan must be there
    /// with its shape, and nothing else.
    pub fn from_named(
        config: TransformerConfig,
        tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        metadata: BTreeMap<String, String>,
    ) -> std::result::Result<Self, ModelError> {
        Self::from_named_on(Cpu, config, tensors, metadata)
    }

    /// From every parameter in plan order (a checkpoint's), checked like a loaded file.
    pub fn from_params(
        config: TransformerConfig,
        params: Vec<Vec<f32>>,
    ) -> std::result::Result<Transformer, ModelError> {
        config.validate()?;
        let plan = config.plan();
        if params.len() != plan.params.len() {
            return Err(format!(
                "{} parameters, the network has {}",
                params.len(),
                plan.params.len()
            )
            .into());
        }
        if let Some((spec, v)) = plan
            .params
            .iter()
            .zip(&params)
            .find(|(s, v)| s.len() != v.len())
        {
            return Err(format!(
                "`{}` holds {} values, expected {}",
                spec.key(),
                v.len(),
                spec.len()
            )
            .into());
        }
        let t = Transformer::build(Cpu, config, params, BTreeMap::new());
        t.validate()?;
        Ok(t)
    }

    /// A freshly initialised network (PyTorch's default: weights and biases uniform in
    /// ±1/√fan_in, instance-norm scale 1 and shift 0), reproducible from `seed`.
    pub fn init(config: TransformerConfig, seed: u64) -> Self {
        Self::init_on(Cpu, config, seed)
    }
}

impl<B: Backend> Transformer<B> {
    pub(crate) fn build(
        backend: B,
        config: TransformerConfig,
        params: Vec<Vec<f32>>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        let plan = config.plan();
        assert_eq!(
            params.len(),
            plan.params.len(),
            "parameters for another plan"
        );
        let convs = plan
            .convs
            .iter()
            .map(|l| {
                let bias = l.bias.map(|b| params[b].as_slice());
                backend.conv(&l.spec, &params[l.weight], bias)
            })
            .collect();
        let dev = Self::upload_params(&backend, &params);
        Transformer {
            config,
            metadata,
            plan,
            params,
            backend,
            convs,
            dev,
            stale: false,
            style: 0,
        }
    }

    fn upload_params(backend: &B, params: &[Vec<f32>]) -> Vec<B::Tensor> {
        params
            .iter()
            .map(|p| backend.upload(&crate::backend::vector(p.clone())))
            .collect()
    }

    /// The parameters on the host: the stored copy, or the backend's when they are newer.
    pub(crate) fn host_params(&self) -> std::borrow::Cow<'_, [Vec<f32>]> {
        if self.stale {
            std::borrow::Cow::Owned(
                self.dev
                    .iter()
                    .map(|t| self.backend.download(t).into_data())
                    .collect(),
            )
        } else {
            std::borrow::Cow::Borrowed(&self.params)
        }
    }

    /// Bring the host copy of the parameters up to date with the backend's (after
    /// [`Transformer::update_on_backend`]): one readback of every parameter.
    pub fn sync_host(&mut self) {
        if self.stale {
            self.params = self.host_params().into_owned();
            self.stale = false;
        }
    }

    fn assert_fresh(&self) {
        assert!(
            !self.stale,
            "the parameters were stepped on the backend: call `sync_host` before reading them"
        );
    }

    pub fn load_on(backend: B, path: &Path) -> Result<Self> {
        let file = TensorFile::read(path)?;
        Self::from_file_on(backend, file).map_err(|msg| Error::model(path, msg))
    }

    pub fn from_file_on(backend: B, file: TensorFile) -> std::result::Result<Self, ModelError> {
        let config = match file.metadata.get(CONFIG_KEY) {
            Some(js) => serde_json::from_str::<TransformerConfig>(js).map_err(|e| ModelError::Metadata { key: CONFIG_KEY.into(), msg: e.to_string() })?,
            // A plain pytorch/examples TransformerNet state dict.
            None if file.tensors.contains_key("conv1.conv2d.weight") => TransformerConfig::new(Arch::Johnson),
            None => return Err("not an impasto model: no `impasto.config` metadata and no `conv1.conv2d.weight` tensor".into()),
        };
        let mut metadata = file.metadata;
        metadata.remove(CONFIG_KEY);
        Self::from_named_on(
            backend,
            config,
            file.tensors.into_iter().collect(),
            metadata,
        )
    }

    /// [`Transformer::from_named`] on any backend.
    pub fn from_named_on(
        backend: B,
        config: TransformerConfig,
        mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        metadata: BTreeMap<String, String>,
    ) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let plan = config.plan();
        // Several styles: a norm's `[styles, channels]` tensor holds one row per style.
        let mut rows: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        if plan.styles() > 1 {
            for norm in &plan.norms {
                for name in [
                    format!("{}.weight", norm.name),
                    format!("{}.bias", norm.name),
                ] {
                    let want = vec![plan.styles(), norm.channels];
                    match tensors.remove(&name) {
                        None => return Err(ModelError::MissingTensor(name)),
                        Some((got, _)) if got != want => {
                            return Err(ModelError::Shape { name, got, want })
                        }
                        Some((_, v)) => {
                            rows.insert(name, v);
                        }
                    }
                }
            }
        }
        let mut params = Vec::new();
        for p in plan.params {
            if let (Some(k), Some(all)) = (p.style, rows.get(&p.name)) {
                params.push(all[k * p.len()..(k + 1) * p.len()].to_vec());
                continue;
            }
            match tensors.remove(&p.name) {
                None => return Err(ModelError::MissingTensor(p.name)),
                Some((got, _)) if got != p.shape => {
                    return Err(ModelError::Shape {
                        name: p.name,
                        got,
                        want: p.shape,
                    })
                }
                Some((_, v)) if v.len() != p.len() => {
                    return Err(format!(
                        "`{}` holds {} values, expected {}",
                        p.name,
                        v.len(),
                        p.len()
                    )
                    .into())
                }
                Some((_, v)) => params.push(v),
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(ModelError::UnexpectedTensor {
                name: extra.clone(),
                arch: format!("{:?}", config.arch),
            });
        }
        let t = Self::build(backend, config, params, metadata);
        t.validate()?;
        Ok(t)
    }

    /// [`Transformer::init`] on any backend.
    pub fn init_on(backend: B, config: TransformerConfig, seed: u64) -> Self {
        let mut rng = crate::rng::Rng::new(seed);
        let params = config
            .plan()
            .params
            .iter()
            .map(|p| match p.init {
                Init::Ones => vec![1.0; p.len()],
                Init::Zeros => vec![0.0; p.len()],
                Init::Uniform { fan_in } => {
                    let b = 1.0 / (fan_in as f32).sqrt();
                    (0..p.len()).map(|_| (rng.f32() * 2.0 - 1.0) * b).collect()
                }
            })
            .collect();
        Self::build(backend, config, params, BTreeMap::new())
    }

    /// The same network on another backend.
    pub fn to_backend<C: Backend>(&self, backend: C) -> Transformer<C> {
        let mut t = Transformer::build(
            backend,
            self.config.clone(),
            self.host_params().into_owned(),
            self.metadata.clone(),
        );
        t.style = self.style;
        t
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Every parameter with its spec, in plan order.
    pub fn params(&self) -> impl Iterator<Item = (&ParamSpec, &[f32])> {
        self.assert_fresh();
        self.plan
            .params
            .iter()
            .zip(&self.params)
            .map(|(s, v)| (s, v.as_slice()))
    }

    /// A parameter by its id.
    pub fn param_values(&self, id: ParamId) -> &[f32] {
        self.assert_fresh();
        &self.params[id]
    }

    /// A parameter by its file name.
    pub fn param(&self, name: &str) -> Option<&[f32]> {
        self.assert_fresh();
        self.plan.param_id(name).map(|i| self.params[i].as_slice())
    }

    /// Change parameters on the host (a test's edit, a warm start); the backend's copy and
    /// the prepared convolutions follow.
    pub fn update_params(&mut self, f: impl FnOnce(&Plan, &mut [Vec<f32>])) {
        self.sync_host();
        f(&self.plan, &mut self.params);
        self.dev = Self::upload_params(&self.backend, &self.params);
        self.refresh_convs();
    }

    /// Change parameters where they live on the backend (an optimiser step): nothing is read
    /// back. A host backend's copy is current at once; a device's is refreshed by
    /// [`Transformer::sync_host`] (the accessors that borrow host values ask for it).
    pub fn update_on_backend(&mut self, f: impl FnOnce(&B, &mut [B::Tensor])) {
        f(&self.backend, &mut self.dev);
        self.stale = true;
        if self.dev.iter().all(|t| self.backend.as_host(t).is_some()) {
            for (p, t) in self.params.iter_mut().zip(&self.dev) {
                p.copy_from_slice(self.backend.as_host(t).expect("host tensor"));
            }
            self.stale = false;
        }
        self.refresh_convs();
    }

    /// The style whose norm rows the passes use from now on (training takes one style per
    /// batch); to blend styles, see [`Transformer::mixed`].
    pub fn set_style(&mut self, style: usize) {
        assert!(
            style < self.config.styles,
            "style {style} of {}",
            self.config.styles
        );
        self.style = style;
    }

    /// The style the passes use.
    pub fn style(&self) -> usize {
        self.style
    }

    /// The parameters on the backend, in plan order.
    pub fn backend_params(&self) -> &[B::Tensor] {
        &self.dev
    }

    fn refresh_convs(&mut self) {
        for (l, conv) in self.plan.convs.iter().zip(&mut self.convs) {
            let bias = l.bias.map(|b| &self.dev[b]);
            self.backend.conv_set(conv, &self.dev[l.weight], bias);
        }
    }

    /// Edit one named parameter (see [`Transformer::update_params`]).
    pub fn edit_param(&mut self, name: &str, f: impl FnOnce(&mut [f32])) {
        let id = self
            .plan
            .param_id(name)
            .unwrap_or_else(|| panic!("no parameter `{name}`"));
        self.update_params(|_, p| f(&mut p[id]));
    }

    /// The model as a tensor file (config and provenance in the metadata).
    pub fn to_file(&self) -> TensorFile {
        let mut f = TensorFile::default();
        for (spec, v) in self.plan.params.iter().zip(self.host_params().iter()) {
            match spec.style {
                None => {
                    f.tensors
                        .insert(spec.name.clone(), (spec.shape.clone(), v.to_vec()));
                }
                // Style k's row of the norm's `[styles, channels]` tensor (rows in order).
                Some(_) => {
                    let e = f.tensors.entry(spec.name.clone()).or_insert_with(|| {
                        (
                            vec![0, spec.len()],
                            Vec::with_capacity(spec.len() * self.plan.styles()),
                        )
                    });
                    e.0[0] += 1;
                    e.1.extend_from_slice(v);
                }
            }
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
        use crate::model::format::Precision;
        self.save_as(path, if half { Precision::F16 } else { Precision::F32 })
    }

    /// [`Transformer::save`] in any [`Precision`](crate::model::format::Precision).
    pub fn save_as(&self, path: &Path, precision: crate::model::format::Precision) -> Result<()> {
        use crate::model::format::Precision;
        self.validate().map_err(|m| Error::model(path, m))?;
        if precision != Precision::F32 {
            // f16 overflows to infinity above 65504.
            if let Some((spec, _)) = self
                .plan
                .params
                .iter()
                .zip(self.host_params().iter())
                .find(|(_, v)| v.iter().any(|x| x.abs() > 65504.0))
            {
                return Err(Error::model(
                    path,
                    format!(
                        "`{}` has values beyond float16's range (±65504); save it as f32",
                        spec.key()
                    ),
                ));
            }
        }
        self.to_file().write_as(path, precision)
    }

    /// The mirror margin this model file asks for ([`MARGIN_KEY`]), if it names one.
    pub fn margin(&self) -> Option<usize> {
        self.metadata
            .get(MARGIN_KEY)
            .and_then(|v| parse_margin(v).ok())
    }

    /// Record (or, with `None`, drop) the margin the model runs with by default.
    pub fn set_margin(&mut self, margin: Option<usize>) {
        assert!(
            margin.is_none_or(|m| m <= MAX_MARGIN),
            "margin over {MAX_MARGIN}"
        );
        match margin {
            Some(m) => self.metadata.insert(MARGIN_KEY.into(), m.to_string()),
            None => self.metadata.remove(MARGIN_KEY),
        };
    }

    /// The one check every model passes before it is used or written: a plausible config,
    /// finite parameters and readable settings.
    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        self.config.validate()?;
        if let Some(v) = self.metadata.get(MARGIN_KEY) {
            parse_margin(v).map_err(|msg| ModelError::Metadata {
                key: MARGIN_KEY.into(),
                msg,
            })?;
        }
        if let Some(js) = self.metadata.get(crate::model::mix::STYLES_KEY) {
            let bad = |msg: String| ModelError::Metadata {
                key: crate::model::mix::STYLES_KEY.into(),
                msg,
            };
            let list: Vec<crate::model::mix::StyleEntry> =
                serde_json::from_str(js).map_err(|e| bad(e.to_string()))?;
            crate::model::mix::check_styles(self.config.styles, &list).map_err(bad)?;
        }
        for (spec, v) in self.plan.params.iter().zip(self.host_params().iter()) {
            if let Some(&value) = v.iter().find(|x| !x.is_finite()) {
                return Err(ModelError::NonFinite {
                    name: spec.key(),
                    value,
                });
            }
        }
        Ok(())
    }

    /// Approximate multiply-adds ×2 for one `h × w` forward pass.
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        self.plan.flops(h, w)
    }

    /// Ordinary forward pass; any batch size. Input and output RGB on the 0..255 scale.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut outs = Vec::with_capacity(x.n);
        for b in 0..x.n {
            let s = Tensor::from_vec(1, x.c, x.h, x.w, x.sample(b).to_vec());
            outs.push(
                self.forward_with(s, &mut OwnStats)
                    .unwrap_or_else(|e| panic!("{e}"))
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

    /// Forward pass of a batch already on the backend (ordinary instance norm).
    pub fn forward_batch(&self, x: &B::Tensor) -> B::Tensor {
        self.pass(x, &mut OwnStats)
            .expect("own statistics never stop")
    }

    /// Forward pass of one sample with instance-norm statistics from `src`.
    /// Returns `None` if `src` stopped the pass, and the device's error if reading the
    /// picture back found one (out of memory, a lost device).
    /// Takes the input by value: on the CPU neither it nor the output is copied.
    pub fn forward_with(
        &self,
        x: Tensor,
        src: &mut dyn StatsSource,
    ) -> Result<Option<Tensor>, DeviceError> {
        assert_eq!(x.n, 1, "forward_with takes one sample");
        match self.pass(&self.backend.upload_owned(x), src) {
            Some(y) => self.backend.try_download_owned(y).map(Some),
            None => Ok(None),
        }
    }

    /// Forward pass of a batch on the backend that records what [`Transformer::backward`]
    /// needs. `precise`: the exact kernels (im2col + GEMM) instead of the fast ones
    /// (Winograd, direct, sub-pixel) that inference uses.
    pub fn forward_train(&self, x: &B::Tensor, precise: bool) -> (B::Tensor, Tape<B>) {
        let mut tape = Tape {
            inputs: Vec::new(),
            xhat: Vec::new(),
            inv_std: Vec::new(),
            pre_output: None,
            bf16: !precise,
        };
        // The gradient of the perceptual loss is sensitive to rounding in the forward pass:
        // on AVX2 machines Winograd's larger rounding error in the residual blocks moved
        // every gradient by 2.5e-3 against PyTorch's float64 golden, the exact kernels by
        // 6e-6, so the golden checks `precise`. Whether the fast kernels train as well is a
        // question for a hold-out loss (docs/performance.md: over four seeds, yes), so
        // training defaults to them.
        let y = self.pass_train(x, &mut tape, precise);
        (y, tape)
    }

    /// The training pass: the plan's blocks in order, each conv's input and each norm's x̂
    /// and 1/σ recorded. Every block's output is moved onto the tape as the next block's
    /// input and read from there (instead of copies: about 70 MB a step at 128², batch 4).
    fn pass_train(&self, x: &B::Tensor, t: &mut Tape<B>, precise: bool) -> B::Tensor {
        let b = &self.backend;
        assert_eq!(b.dims(x)[1], 3, "the network takes RGB input");
        // The fast kernels multiply in bfloat16 where the backend has a matrix unit for it
        // (AMX: the residual blocks); the hold-out loss decided that (docs/performance.md).
        let conv = |i: usize, x: &B::Tensor| match precise {
            true => b.conv_forward(&self.convs[i], x, true),
            false => b.conv_forward_bf16(&self.convs[i], x),
        };
        t.inputs.push(x.clone());
        for block in &self.plan.blocks {
            // This block's input: the last tensor on the tape.
            let input = t.inputs.len() - 1;
            let out = match *block {
                Block::ConvNormRelu { conv: c, norm } => {
                    let mut z = conv(c, &t.inputs[input]);
                    self.norm_train(norm, &mut z, true, None, t);
                    z
                }
                Block::Residual {
                    conv1,
                    norm1,
                    conv2,
                    norm2,
                } => {
                    let mut a = conv(conv1, &t.inputs[input]);
                    self.norm_train(norm1, &mut a, true, None, t);
                    t.inputs.push(a);
                    let mut z = conv(conv2, &t.inputs[input + 1]);
                    self.norm_train(norm2, &mut z, false, Some(input), t);
                    z
                }
                Block::Output { conv: c, norm } => {
                    let mut y = conv(c, &t.inputs[input]);
                    if let Some(n) = norm {
                        self.norm_train(n, &mut y, false, None, t);
                    }
                    t.pre_output = Some(y.clone());
                    b.output(&mut y, self.plan.output);
                    return y;
                }
            };
            t.inputs.push(out);
        }
        unreachable!("a plan ends with its output block")
    }

    /// Instance norm `i` in training: each sample's own statistics over its whole plane,
    /// fused ReLU and the residual add (tape input `residual`); x̂ and 1/σ onto the tape.
    fn norm_train(
        &self,
        i: usize,
        z: &mut B::Tensor,
        relu: bool,
        residual: Option<usize>,
        t: &mut Tape<B>,
    ) {
        let layer = &self.plan.norms[i];
        let (gamma, beta) = (
            &self.dev[layer.scale[self.style]],
            &self.dev[layer.shift[self.style]],
        );
        let residual = residual.map(|r| &t.inputs[r]);
        let (xhat, inv) =
            self.backend
                .norm_train(z, self.plan.norm_eps, gamma, beta, relu, residual);
        t.xhat.push(xhat);
        t.inv_std.push(inv);
    }

    /// The plan's blocks in order, on the backend, on the fast kernels (inference).
    fn pass(&self, x: &B::Tensor, src: &mut dyn StatsSource) -> Option<B::Tensor> {
        assert_eq!(self.backend.dims(x)[1], 3, "the network takes RGB input");
        let mut h: Option<B::Tensor> = None;
        for block in &self.plan.blocks {
            let input = h.as_ref().unwrap_or(x);
            let conv =
                |i: usize, x: &B::Tensor| self.backend.conv_forward(&self.convs[i], x, false);
            let out = match *block {
                Block::ConvNormRelu { conv: c, norm } => {
                    let mut z = conv(c, input);
                    self.norm(norm, &mut z, true, None, src)?;
                    z
                }
                Block::Residual {
                    conv1,
                    norm1,
                    conv2,
                    norm2,
                } => {
                    let mut a = conv(conv1, input);
                    self.norm(norm1, &mut a, true, None, src)?;
                    let mut z = conv(conv2, &a);
                    drop(a);
                    self.norm(norm2, &mut z, false, Some(input), src)?;
                    z
                }
                Block::Output { conv: c, norm } => {
                    let mut y = conv(c, input);
                    if let Some(n) = norm {
                        self.norm(n, &mut y, false, None, src)?;
                    }
                    self.backend.output(&mut y, self.plan.output);
                    y
                }
            };
            h = Some(out);
        }
        h
    }

    /// Instance norm `i` of every sample, with statistics from `src`; fused ReLU and
    /// residual add.
    fn norm(
        &self,
        i: usize,
        z: &mut B::Tensor,
        relu: bool,
        residual: Option<&B::Tensor>,
        src: &mut dyn StatsSource,
    ) -> Option<()> {
        let b = &self.backend;
        let [n, c, h, w] = b.dims(z);
        let layer = &self.plan.norms[i];
        let (gamma, beta) = (
            &self.dev[layer.scale[self.style]],
            &self.dev[layer.shift[self.style]],
        );
        // Statistics that are the activation's own moments over a rectangle are computed
        // and applied where the activation lives (no readback on a GPU).
        if let Some(region) = src.own_region(i, h, w) {
            for s in 0..n {
                b.norm_own(
                    z,
                    s,
                    region,
                    self.plan.norm_eps,
                    gamma,
                    beta,
                    relu,
                    residual,
                );
            }
            return Some(());
        }
        // Statistics from elsewhere (the tiled path's whole-picture statistics): on the host.
        for s in 0..n {
            let st = {
                let zr: &B::Tensor = z;
                let region = |rows, cols| b.moments(zr, s, rows, cols);
                let act = Activation {
                    c,
                    h,
                    w,
                    region: &region,
                };
                src.stats(i, &act, self.plan.norm_eps)?
            };
            b.norm_apply(z, s, &st, gamma, beta, relu, residual);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Reference;
    use crate::rng::Rng;

    fn image(rng: &mut Rng, n: usize, h: usize, w: usize) -> Tensor {
        Tensor::from_vec(
            n,
            3,
            h,
            w,
            (0..n * 3 * h * w).map(|_| rng.f32() * 255.0).collect(),
        )
    }

    /// A network whose seed output is kept out of tanh saturation, so that gradients are
    /// real.
    fn model(config: TransformerConfig, seed: u64) -> Transformer {
        let mut m = Transformer::init(config, seed);
        if m.config.final_norm {
            m.edit_param("in6.weight", |p| p.fill(0.01));
        }
        m
    }

    /// The whole network, forward and backward, on the CPU backend against the reference
    /// backend: both architectures, a batch of two, an odd-ish size.
    #[test]
    fn cpu_and_reference_backends_run_the_same_network() {
        let mut rng = Rng::new(2);
        for arch in [Arch::Johnson, Arch::Seed] {
            let mut config = TransformerConfig::new(arch);
            config.channels = [8, 16, 24];
            config.res_blocks = 2;
            let cpu = model(config, 9);
            let reference = cpu.to_backend(Reference);
            let x = image(&mut rng, 2, 20, 28);
            let (yc, tc) = cpu.forward_train(&x, true);
            let (yr, tr) = reference.forward_train(&x, true);
            let e = yc.rel_error(&yr);
            assert!(e < 1e-5, "{arch:?} forward: {e:.2e}");
            assert!(cpu.forward(&x).rel_error(&yr) < 1e-4, "{arch:?} inference");
            let dy = image(&mut rng, 2, 20, 28);
            let (gc, gr) = (
                cpu.backward(&tc, &dy).to_host(&Cpu),
                reference.backward(&tr, &dy).to_host(&Reference),
            );
            for (id, p) in cpu.plan().params.iter().enumerate() {
                let e = crate::tensor::rel_error(&gc[id], &gr[id]);
                // Conv biases before a norm have an exactly-zero gradient: compare sizes.
                let tiny = gr[id].iter().all(|v| v.abs() < 1e-3);
                assert!(e < 1e-3 || tiny, "{arch:?} {}: {e:.2e}", p.name);
            }
        }
    }

    /// The whole network on the wgpu backend (lavapipe where there is no GPU) against the
    /// CPU backend: both architectures, forward, inference and every parameter gradient
    /// within the tolerances the CPU meets against the reference.
    #[cfg(feature = "gpu")]
    #[test]
    fn wgpu_and_cpu_backends_run_the_same_network() {
        use crate::backend::Backend;
        let Some(gpu) = crate::testutil::gpu() else {
            return;
        };
        let mut rng = Rng::new(2);
        for arch in [Arch::Johnson, Arch::Seed] {
            let mut config = TransformerConfig::new(arch);
            config.channels = [8, 16, 24];
            config.res_blocks = 2;
            let cpu = model(config, 9);
            let dev = cpu.to_backend(gpu.clone());
            let x = image(&mut rng, 2, 20, 28);
            let (yc, tc) = cpu.forward_train(&x, true);
            let (yg, tg) = dev.forward_train(&gpu.upload(&x), true);
            let e = gpu.download(&yg).rel_error(&yc);
            assert!(e < 1e-5, "{arch:?} forward: {e:.2e}");
            let e = dev.forward(&x).rel_error(&cpu.forward(&x));
            assert!(e < 1e-4, "{arch:?} inference: {e:.2e}");
            let dy = image(&mut rng, 2, 20, 28);
            let (gc, gg) = (
                cpu.backward(&tc, &dy).to_host(&Cpu),
                dev.backward(&tg, &gpu.upload(&dy)).to_host(&gpu),
            );
            let max = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            for (id, p) in cpu.plan().params.iter().enumerate() {
                let e = crate::tensor::rel_error(&gg[id], &gc[id]);
                // A shift that a later instance norm removes (a conv bias before a norm, a
                // residual block's last β: reflect-padded convs carry constants through)
                // has an exactly-zero gradient; both backends leave rounding noise there,
                // far below the gradient of the layer's weight or scale.
                let plan = cpu.plan();
                let sibling = (plan.convs.iter().find(|c| c.bias == Some(id)))
                    .map(|c| c.weight)
                    .or_else(|| {
                        plan.norms
                            .iter()
                            .find(|n| n.shift[0] == id)
                            .map(|n| n.scale[0])
                    });
                let noise = sibling.is_some_and(|w| {
                    let scale = max(&gc[w]);
                    max(&gc[id]) < 1e-4 * scale && max(&gg[id]) < 1e-4 * scale
                });
                assert!(e < 1e-3 || noise, "{arch:?} {}: {e:.2e}", p.name);
            }
        }
    }

    /// The whole network's backward pass, both architectures, against central differences
    /// of L = Σ r ⊙ y along each checked tensor's own gradient.
    #[test]
    fn backward_matches_finite_differences_for_both_architectures() {
        for arch in [Arch::Johnson, Arch::Seed] {
            let model = model(TransformerConfig::new(arch), 11);
            let mut rng = Rng::new(3);
            let x = image(&mut rng, 1, 32, 48);
            let (y, tape) = model.forward_train(&x, true);
            let r: Vec<f32> = (0..y.data.len()).map(|_| rng.f32() - 0.5).collect();
            let dy = Tensor::from_vec(y.n, y.c, y.h, y.w, r.clone());
            let grads = model.backward(&tape, &dy).to_host(&Cpu);
            let loss = |m: &Transformer| -> f64 {
                m.forward(&x)
                    .data
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum()
            };
            for name in [
                "conv1.conv2d.weight",
                "in2.weight",
                "res2.conv1.conv2d.weight",
                "res5.in2.weight",
                "deconv1.conv2d.weight",
                "in5.bias",
                "deconv3.conv2d.weight",
            ] {
                let id = model.plan().param_id(name).unwrap();
                let g = &grads[id];
                let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                let pnorm = model
                    .param_values(id)
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1.0);
                let h = 1e-3 * pnorm / norm;
                let shifted = |sign: f64| {
                    let mut m = model.clone();
                    m.edit_param(name, |p| {
                        for (v, d) in p.iter_mut().zip(g) {
                            *v += (sign * h * *d as f64) as f32;
                        }
                    });
                    loss(&m)
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

    /// On a GPU a training step (forward, VGG losses, backward, the Adam step of every
    /// parameter) reads back once: its losses and the gradients' sums of squares, together;
    /// an inference pass reads back once, the picture. The step still trains: the loss falls.
    #[cfg(feature = "gpu")]
    #[test]
    fn a_gpu_training_step_reads_back_once() {
        use crate::backend::Backend;
        use crate::train::step::{apply, loss_and_grads, Optimizer, StyleTarget};
        if crate::testutil::gpu().is_none() {
            return;
        }
        // A device of its own: the other tests' readbacks must not count here.
        let gpu = crate::backend::Wgpu::best().expect("an adapter");
        let vgg =
            crate::model::Vgg16::from_file_on(gpu.clone(), crate::model::vgg::tests::random_file())
                .unwrap();
        let mut rng = Rng::new(6);
        let target = StyleTarget::new(&vgg, &gpu.upload(&image(&mut rng, 1, 32, 32)));
        let cfg = crate::loss::LossConfig::default();
        for arch in [Arch::Johnson, Arch::Seed] {
            let mut config = TransformerConfig::new(arch);
            config.channels = [8, 12, 16];
            config.res_blocks = 2;
            let mut m = model(config, 1).to_backend(gpu.clone());
            let x = gpu.upload(&image(&mut rng, 2, 32, 32));
            let mut opt = Optimizer::new(1e-2);
            let mut totals = Vec::new();
            for _ in 0..3 {
                let before = gpu.readbacks();
                let (l, g) = loss_and_grads(&m, &vgg, &target, &cfg, &x, false);
                let (l, sums) = l.read(&gpu, &g.sum_squares(&gpu)).unwrap();
                apply(&mut m, &mut opt, &g);
                assert_eq!(gpu.readbacks() - before, 1, "{arch:?}: readbacks in a step");
                assert!(sums.iter().all(|v| v.is_finite() && *v >= 0.0));
                totals.push(l.total);
            }
            assert!(totals[2] < totals[0], "{arch:?}: {totals:?}");
            let before = gpu.readbacks();
            m.forward(&image(&mut rng, 1, 32, 32));
            assert_eq!(
                gpu.readbacks() - before,
                1,
                "{arch:?}: readbacks in inference"
            );
            // The host copy follows only when asked (one readback per parameter).
            m.sync_host();
            assert!(m.params().all(|(_, v)| v.iter().all(|x| x.is_finite())));
        }
    }

    fn random_vgg() -> crate::model::Vgg16 {
        crate::model::Vgg16::from_file(crate::model::vgg::tests::random_file()).unwrap()
    }

    /// The topology lives in the config: other widths and another block count train, save,
    /// load, export and (seed) import back without any other change.
    #[test]
    fn a_config_with_other_widths_and_blocks_trains_and_exports() {
        use crate::train::step::{apply, loss_and_grads, Optimizer, StyleTarget};
        let vgg = random_vgg();
        let mut rng = Rng::new(6);
        let style = image(&mut rng, 1, 32, 32);
        let target = StyleTarget::new(&vgg, &style);
        let cfg = crate::loss::LossConfig::default();
        for arch in [Arch::Johnson, Arch::Seed] {
            let mut config = TransformerConfig::new(arch);
            config.channels = [8, 12, 20];
            config.res_blocks = 3;
            let mut m = model(config.clone(), 1);
            assert_eq!(m.plan().convs.len(), 6 + 2 * 3);
            let x = image(&mut rng, 2, 32, 32);
            let mut opt = Optimizer::new(1e-2);
            let (first, _) = loss_and_grads(&m, &vgg, &target, &cfg, &x, false);
            let first = first.get(&Cpu);
            for _ in 0..8 {
                let (_, g) = loss_and_grads(&m, &vgg, &target, &cfg, &x, false);
                apply(&mut m, &mut opt, &g);
            }
            let (last, _) = loss_and_grads(&m, &vgg, &target, &cfg, &x, false);
            let last = last.get(&Cpu);
            assert!(
                last.total < first.total,
                "{arch:?}: {} -> {}",
                first.total,
                last.total
            );
            let y = m.forward(&x);
            assert_eq!(y.shape(), [2, 3, 32, 32]);
            let dir = tempfile::tempdir().unwrap();
            m.save(&dir.path().join("m.safetensors"), false).unwrap();
            let back = Transformer::load(&dir.path().join("m.safetensors")).unwrap();
            assert_eq!(back.config, config);
            assert_eq!(back.forward(&x), y, "{arch:?}: saved and loaded");
            let onnx = crate::onnx_export::to_onnx(&m);
            if arch == Arch::Seed {
                let imported = crate::onnx::import_bytes(&onnx).unwrap();
                // ONNX holds epsilon as a float32.
                let want = TransformerConfig {
                    norm_eps: config.norm_eps as f32 as f64,
                    ..config.clone()
                };
                assert_eq!(imported.config, want);
                let e = imported.forward(&x).rel_error(&y);
                assert!(e < 1e-6, "exported and imported: {e:.2e}");
            } else {
                // 12 convolutions, 11 norms, 3 residual adds in the graph.
                let count = |s: &[u8]| onnx.windows(s.len()).filter(|w| *w == s).count();
                assert_eq!(count(b"\x22\x04Conv"), 12);
                assert_eq!(count(b"InstanceNormalization"), 11);
            }
        }
    }
}
