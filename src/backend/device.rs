//! Where the networks run, chosen at run time: the CPU backend, or the GPU backend on the
//! best adapter there is. [`Device`] is itself a [`Backend`] that forwards every op to the
//! one it holds (as candle's `Device` does), so the stylize pipeline, video, the server and
//! the Python package run one `Transformer<Device>` whatever the machine has.

use super::{AdamStep, Backend, ConvGrads, ConvSpec, Cpu, DeviceError, OutputFn};
use crate::kernels::norm::{Moments, NormStats};
use crate::tensor::Tensor;

#[cfg(feature = "gpu")]
use super::wgpu::{GpuConv, GpuScalar, GpuTensor, Wgpu};

/// What the user asked for (`--device`, `IMPASTO_DEVICE`, `device=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A real GPU when there is one, the CPU otherwise.
    #[default]
    Auto,
    Cpu,
    /// The best GPU adapter, or a software one (lavapipe) if that is all there is.
    Gpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" => Ok(DeviceChoice::Gpu),
            other => Err(format!(
                "unknown device `{other}` (expected cpu, gpu or auto)"
            )),
        }
    }
}

impl DeviceChoice {
    /// `IMPASTO_DEVICE`, or `auto`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("IMPASTO_DEVICE") {
            Ok(v) => v.parse().map_err(|e| format!("IMPASTO_DEVICE: {e}")),
            Err(_) => Ok(DeviceChoice::Auto),
        }
    }
}

/// One GPU adapter as `impasto devices` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` (software, such as llvmpipe) or `other`.
    pub kind: String,
    pub driver: String,
    /// The largest single buffer the adapter allows, in bytes.
    pub max_buffer_bytes: u64,
    /// The largest storage binding (one tensor), in bytes.
    pub max_binding_bytes: u64,
}

impl AdapterSummary {
    /// A real GPU (not a CPU or software adapter): what `auto` takes.
    pub fn is_hardware(&self) -> bool {
        self.kind != "cpu"
    }
}

/// What `impasto devices` and `impasto.devices()` report: the adapters (best first), what
/// `auto` picks here, and the CPU's threads.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Survey {
    /// Whether this build has the GPU backend (cargo feature `gpu`).
    pub gpu_backend: bool,
    pub adapters: Vec<AdapterSummary>,
    /// `gpu` or `cpu`.
    pub auto: &'static str,
    pub cpu_threads: usize,
}

/// Lists the adapters (one enumeration).
pub fn survey() -> Survey {
    #[cfg(feature = "gpu")]
    let adapters = super::wgpu::adapters();
    #[cfg(not(feature = "gpu"))]
    let adapters = Vec::new();
    let auto = if adapters.iter().any(AdapterSummary::is_hardware) {
        "gpu"
    } else {
        "cpu"
    };
    Survey {
        gpu_backend: cfg!(feature = "gpu"),
        adapters,
        auto,
        cpu_threads: rayon::current_num_threads(),
    }
}

/// A backend chosen at run time.
#[derive(Clone, Debug)]
pub enum Device {
    Cpu(Cpu),
    #[cfg(feature = "gpu")]
    Gpu(Wgpu),
}

impl Default for Device {
    fn default() -> Self {
        Device::Cpu(Cpu)
    }
}

/// A [`Device`]'s tensor.
#[derive(Clone)]
pub enum DeviceTensor {
    Host(Tensor),
    #[cfg(feature = "gpu")]
    Gpu(GpuTensor),
}

/// A [`Device`]'s scalar (a loss value).
#[derive(Clone)]
pub enum DeviceScalar {
    Host(f64),
    #[cfg(feature = "gpu")]
    Gpu(GpuScalar),
}

/// A [`Device`]'s prepared convolution (a few per network: their size does not matter).
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub enum DeviceConv {
    Cpu(<Cpu as Backend>::Conv),
    #[cfg(feature = "gpu")]
    Gpu(GpuConv),
}

impl Device {
    /// Opens what `choice` asks for. `auto` never fails: without a real GPU it is the CPU.
    pub fn open(choice: DeviceChoice) -> crate::Result<Device> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu(Cpu)),
            #[cfg(feature = "gpu")]
            DeviceChoice::Auto => Ok(Wgpu::hardware().map_or(Device::Cpu(Cpu), Device::Gpu)),
            #[cfg(not(feature = "gpu"))]
            DeviceChoice::Auto => Ok(Device::Cpu(Cpu)),
            #[cfg(feature = "gpu")]
            DeviceChoice::Gpu => Wgpu::best().map(Device::Gpu).map_err(|e| {
                crate::Error::Device(format!(
                    "--device gpu: {e}. Install the GPU's Vulkan driver (Linux: mesa-vulkan-drivers for AMD, Intel and the software adapter lavapipe; NVIDIA's driver brings its own), or run with --device cpu"
                ))
            }),
            #[cfg(not(feature = "gpu"))]
            DeviceChoice::Gpu => Err(crate::Error::Device(
                "--device gpu: this build of impasto has no GPU backend (cargo feature `gpu`)"
                    .into(),
            )),
        }
    }

    /// One line saying where the work runs.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu(_) => format!("cpu ({} threads)", rayon::current_num_threads()),
            #[cfg(feature = "gpu")]
            Device::Gpu(g) => {
                let a = g.adapter();
                format!("gpu: {} ({}, {})", a.name, a.backend, a.kind)
            }
        }
    }

    /// An error naming `what`, its size and the device's limit when one tensor of `bytes`
    /// would not fit in one of the device's buffers (checked before work starts, so that a
    /// request too large for a GPU is a clear error instead of a failed allocation).
    pub fn check_fits(&self, bytes: u64, what: &str) -> crate::Result<()> {
        match self.max_tensor_bytes() {
            Some(limit) if bytes > limit => Err(crate::Error::Device(format!(
                "{what} needs a {} MiB tensor, more than the {} MiB one buffer may hold on {}; use smaller sizes or --device cpu",
                bytes.div_ceil(1 << 20),
                limit >> 20,
                self.describe()
            ))),
            _ => Ok(()),
        }
    }

    /// `cpu` or `gpu`.
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Cpu(_) => "cpu",
            #[cfg(feature = "gpu")]
            Device::Gpu(_) => "gpu",
        }
    }
}

fn host(t: &DeviceTensor) -> &Tensor {
    match t {
        DeviceTensor::Host(t) => t,
        #[cfg(feature = "gpu")]
        DeviceTensor::Gpu(_) => panic!("a GPU tensor given to the CPU backend"),
    }
}

fn host_mut(t: &mut DeviceTensor) -> &mut Tensor {
    match t {
        DeviceTensor::Host(t) => t,
        #[cfg(feature = "gpu")]
        DeviceTensor::Gpu(_) => panic!("a GPU tensor given to the CPU backend"),
    }
}

#[cfg(feature = "gpu")]
fn gpu(t: &DeviceTensor) -> &GpuTensor {
    match t {
        DeviceTensor::Gpu(t) => t,
        DeviceTensor::Host(_) => panic!("a host tensor given to the GPU backend"),
    }
}

#[cfg(feature = "gpu")]
fn gpu_mut(t: &mut DeviceTensor) -> &mut GpuTensor {
    match t {
        DeviceTensor::Gpu(t) => t,
        DeviceTensor::Host(_) => panic!("a host tensor given to the GPU backend"),
    }
}

fn cpu_conv(c: &DeviceConv) -> &<Cpu as Backend>::Conv {
    match c {
        DeviceConv::Cpu(c) => c,
        #[cfg(feature = "gpu")]
        DeviceConv::Gpu(_) => panic!("a GPU convolution given to the CPU backend"),
    }
}

#[cfg(feature = "gpu")]
fn gpu_conv(c: &DeviceConv) -> &GpuConv {
    match c {
        DeviceConv::Gpu(c) => c,
        DeviceConv::Cpu(_) => panic!("a CPU convolution given to the GPU backend"),
    }
}

/// `dispatch!(self, |b, T, t, C, c| expr)`: `expr` on the CPU and on the GPU, with `t`
/// unwrapping a tensor, `tm` a mutable one, `c` a convolution and `T` wrapping a result.
macro_rules! dispatch {
    ($self:expr, |$b:ident, $wrap:ident, $t:ident, $tm:ident, $c:ident| $e:expr) => {
        match $self {
            Device::Cpu($b) => {
                #[allow(unused)]
                let ($wrap, $t, $tm, $c) = (DeviceTensor::Host, host, host_mut, cpu_conv);
                $e
            }
            #[cfg(feature = "gpu")]
            Device::Gpu($b) => {
                #[allow(unused)]
                let ($wrap, $t, $tm, $c) = (DeviceTensor::Gpu, gpu, gpu_mut, gpu_conv);
                $e
            }
        }
    };
}

impl Backend for Device {
    type Tensor = DeviceTensor;
    type Conv = DeviceConv;
    type Scalar = DeviceScalar;

    fn name(&self) -> &'static str {
        dispatch!(self, |b, w, t, tm, c| b.name())
    }

    fn read_scalars(&self, s: &[&DeviceScalar]) -> Result<Vec<f64>, DeviceError> {
        match self {
            Device::Cpu(_) => Ok(s
                .iter()
                .map(|v| match v {
                    DeviceScalar::Host(v) => *v,
                    #[cfg(feature = "gpu")]
                    DeviceScalar::Gpu(_) => panic!("a GPU scalar given to the CPU backend"),
                })
                .collect()),
            #[cfg(feature = "gpu")]
            Device::Gpu(b) => {
                let g: Vec<&GpuScalar> = s
                    .iter()
                    .map(|v| match v {
                        DeviceScalar::Gpu(v) => v,
                        DeviceScalar::Host(_) => panic!("a host scalar given to the GPU backend"),
                    })
                    .collect();
                b.read_scalars(&g)
            }
        }
    }

    fn scalar(&self, v: f64) -> DeviceScalar {
        match self {
            Device::Cpu(_) => DeviceScalar::Host(v),
            #[cfg(feature = "gpu")]
            Device::Gpu(b) => DeviceScalar::Gpu(b.scalar(v)),
        }
    }

    fn upload(&self, x: &Tensor) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.upload(x)))
    }

    fn download(&self, x: &DeviceTensor) -> Tensor {
        dispatch!(self, |b, w, t, tm, c| b.download(t(x)))
    }

    fn upload_owned(&self, x: Tensor) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.upload_owned(x)))
    }

    fn download_owned(&self, x: DeviceTensor) -> Tensor {
        match (self, x) {
            (Device::Cpu(_), DeviceTensor::Host(x)) => x,
            #[cfg(feature = "gpu")]
            (Device::Gpu(b), DeviceTensor::Gpu(x)) => b.download_owned(x),
            #[cfg(feature = "gpu")]
            _ => panic!("a tensor given to another device's backend"),
        }
    }

    fn try_download_owned(&self, x: DeviceTensor) -> Result<Tensor, DeviceError> {
        match (self, x) {
            (Device::Cpu(_), DeviceTensor::Host(x)) => Ok(x),
            #[cfg(feature = "gpu")]
            (Device::Gpu(b), DeviceTensor::Gpu(x)) => b.try_download_owned(x),
            #[cfg(feature = "gpu")]
            _ => panic!("a tensor given to another device's backend"),
        }
    }

    fn dims(&self, x: &DeviceTensor) -> [usize; 4] {
        dispatch!(self, |b, w, t, tm, c| b.dims(t(x)))
    }

    fn as_host<'a>(&self, x: &'a DeviceTensor) -> Option<&'a [f32]> {
        match x {
            DeviceTensor::Host(t) => Some(&t.data),
            #[cfg(feature = "gpu")]
            DeviceTensor::Gpu(_) => None,
        }
    }

    fn max_tensor_bytes(&self) -> Option<u64> {
        dispatch!(self, |b, w, t, tm, c| b.max_tensor_bytes())
    }

    fn conv(&self, spec: &ConvSpec, weight: &[f32], bias: Option<&[f32]>) -> DeviceConv {
        match self {
            Device::Cpu(b) => DeviceConv::Cpu(b.conv(spec, weight, bias)),
            #[cfg(feature = "gpu")]
            Device::Gpu(b) => DeviceConv::Gpu(b.conv(spec, weight, bias)),
        }
    }

    fn conv_set(&self, conv: &mut DeviceConv, weight: &DeviceTensor, bias: Option<&DeviceTensor>) {
        match (self, conv) {
            (Device::Cpu(b), DeviceConv::Cpu(c)) => b.conv_set(c, host(weight), bias.map(host)),
            #[cfg(feature = "gpu")]
            (Device::Gpu(b), DeviceConv::Gpu(c)) => b.conv_set(c, gpu(weight), bias.map(gpu)),
            #[cfg(feature = "gpu")]
            _ => panic!("a convolution given to another device's backend"),
        }
    }

    fn conv_forward(&self, conv: &DeviceConv, x: &DeviceTensor, precise: bool) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.conv_forward(
            c(conv),
            t(x),
            precise
        )))
    }

    fn conv_backward(
        &self,
        conv: &DeviceConv,
        x: &DeviceTensor,
        dy: &DeviceTensor,
        want_dx: bool,
    ) -> ConvGrads<DeviceTensor> {
        dispatch!(self, |b, w, t, tm, c| {
            let g = b.conv_backward(c(conv), t(x), t(dy), want_dx);
            ConvGrads {
                dx: g.dx.map(w),
                dw: w(g.dw),
                db: w(g.db),
            }
        })
    }

    fn conv_input_grad(
        &self,
        conv: &DeviceConv,
        dy: &DeviceTensor,
        h: usize,
        wd: usize,
    ) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.conv_input_grad(
            c(conv),
            t(dy),
            h,
            wd
        )))
    }

    fn bf16_products(&self) -> bool {
        match self {
            Device::Cpu(b) => b.bf16_products(),
            #[cfg(feature = "gpu")]
            Device::Gpu(b) => b.bf16_products(),
        }
    }

    fn conv_forward_bf16(&self, conv: &DeviceConv, x: &DeviceTensor) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.conv_forward_bf16(c(conv), t(x))))
    }

    fn conv_backward_bf16(
        &self,
        conv: &DeviceConv,
        x: &DeviceTensor,
        dy: &DeviceTensor,
        want_dx: bool,
    ) -> ConvGrads<DeviceTensor> {
        dispatch!(self, |b, w, t, tm, c| {
            let g = b.conv_backward_bf16(c(conv), t(x), t(dy), want_dx);
            ConvGrads {
                dx: g.dx.map(w),
                dw: w(g.dw),
                db: w(g.db),
            }
        })
    }

    fn conv_input_grad_bf16(
        &self,
        conv: &DeviceConv,
        dy: &DeviceTensor,
        h: usize,
        wd: usize,
    ) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.conv_input_grad_bf16(
            c(conv),
            t(dy),
            h,
            wd
        )))
    }

    fn moments(
        &self,
        x: &DeviceTensor,
        sample: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> Moments {
        dispatch!(self, |b, w, t, tm, c| b.moments(t(x), sample, rows, cols))
    }

    fn norm_apply(
        &self,
        x: &mut DeviceTensor,
        sample: usize,
        stats: &NormStats,
        gamma: &DeviceTensor,
        beta: &DeviceTensor,
        relu: bool,
        residual: Option<&DeviceTensor>,
    ) {
        dispatch!(self, |b, w, t, tm, c| b.norm_apply(
            tm(x),
            sample,
            stats,
            t(gamma),
            t(beta),
            relu,
            residual.map(t)
        ))
    }

    fn norm_own(
        &self,
        x: &mut DeviceTensor,
        sample: usize,
        region: ((usize, usize), (usize, usize)),
        eps: f64,
        gamma: &DeviceTensor,
        beta: &DeviceTensor,
        relu: bool,
        residual: Option<&DeviceTensor>,
    ) {
        dispatch!(self, |b, w, t, tm, c| b.norm_own(
            tm(x),
            sample,
            region,
            eps,
            t(gamma),
            t(beta),
            relu,
            residual.map(t)
        ))
    }

    fn norm_train(
        &self,
        x: &mut DeviceTensor,
        eps: f64,
        gamma: &DeviceTensor,
        beta: &DeviceTensor,
        relu: bool,
        residual: Option<&DeviceTensor>,
    ) -> (DeviceTensor, DeviceTensor) {
        dispatch!(self, |b, w, t, tm, c| {
            let (xhat, inv) = b.norm_train(tm(x), eps, t(gamma), t(beta), relu, residual.map(t));
            (w(xhat), w(inv))
        })
    }

    fn norm_backward(
        &self,
        xhat: &DeviceTensor,
        dy: &DeviceTensor,
        inv_std: &DeviceTensor,
        gamma: &DeviceTensor,
    ) -> (DeviceTensor, DeviceTensor, DeviceTensor) {
        dispatch!(self, |b, w, t, tm, c| {
            let (dx, dg, db) = b.norm_backward(t(xhat), t(dy), t(inv_std), t(gamma));
            (w(dx), w(dg), w(db))
        })
    }

    fn relu(&self, x: &mut DeviceTensor) {
        dispatch!(self, |b, w, t, tm, c| b.relu(tm(x)))
    }

    fn relu_mask(&self, d: &mut DeviceTensor, y: &DeviceTensor) {
        dispatch!(self, |b, w, t, tm, c| b.relu_mask(tm(d), t(y)))
    }

    fn add(&self, a: &mut DeviceTensor, x: &DeviceTensor) {
        dispatch!(self, |b, w, t, tm, c| b.add(tm(a), t(x)))
    }

    fn centre(&self, x: &DeviceTensor) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.centre(t(x))))
    }

    fn channel_affine(
        &self,
        x: &DeviceTensor,
        src: [usize; 3],
        scale: [f32; 3],
        shift: [f32; 3],
    ) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.channel_affine(
            t(x),
            src,
            scale,
            shift
        )))
    }

    fn channel_affine_backward(
        &self,
        dy: &DeviceTensor,
        src: [usize; 3],
        scale: [f32; 3],
    ) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.channel_affine_backward(
            t(dy),
            src,
            scale
        )))
    }

    fn output(&self, x: &mut DeviceTensor, f: OutputFn) {
        dispatch!(self, |b, w, t, tm, c| b.output(tm(x), f))
    }

    fn output_backward(&self, d: &mut DeviceTensor, pre: &DeviceTensor, f: OutputFn) {
        dispatch!(self, |b, w, t, tm, c| b.output_backward(tm(d), t(pre), f))
    }

    fn max_pool2(&self, x: &DeviceTensor) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.max_pool2(t(x))))
    }

    fn max_pool2_backward(&self, x: &DeviceTensor, dy: &DeviceTensor) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.max_pool2_backward(t(x), t(dy))))
    }

    fn gram(&self, f: &DeviceTensor) -> Vec<Vec<f32>> {
        dispatch!(self, |b, w, t, tm, c| b.gram(t(f)))
    }

    fn gram_backward(&self, f: &DeviceTensor, dg: &[Vec<f32>]) -> DeviceTensor {
        dispatch!(self, |b, w, t, tm, c| w(b.gram_backward(t(f), dg)))
    }

    fn style_loss(
        &self,
        f: &DeviceTensor,
        target: &DeviceTensor,
        wt: f64,
    ) -> (DeviceScalar, DeviceTensor) {
        match self {
            Device::Cpu(b) => {
                let (l, g) = b.style_loss(host(f), host(target), wt);
                (DeviceScalar::Host(l), DeviceTensor::Host(g))
            }
            #[cfg(feature = "gpu")]
            Device::Gpu(b) => {
                let (l, g) = b.style_loss(gpu(f), gpu(target), wt);
                (DeviceScalar::Gpu(l), DeviceTensor::Gpu(g))
            }
        }
    }

    fn mse(&self, a: &DeviceTensor, x: &DeviceTensor, wt: f64) -> (DeviceScalar, DeviceTensor) {
        match self {
            Device::Cpu(b) => {
                let (l, g) = b.mse(host(a), host(x), wt);
                (DeviceScalar::Host(l), DeviceTensor::Host(g))
            }
            #[cfg(feature = "gpu")]
            Device::Gpu(b) => {
                let (l, g) = b.mse(gpu(a), gpu(x), wt);
                (DeviceScalar::Gpu(l), DeviceTensor::Gpu(g))
            }
        }
    }

    fn tv(&self, y: &DeviceTensor, wt: f64) -> (DeviceScalar, DeviceTensor) {
        match self {
            Device::Cpu(b) => {
                let (l, g) = b.tv(host(y), wt);
                (DeviceScalar::Host(l), DeviceTensor::Host(g))
            }
            #[cfg(feature = "gpu")]
            Device::Gpu(b) => {
                let (l, g) = b.tv(gpu(y), wt);
                (DeviceScalar::Gpu(l), DeviceTensor::Gpu(g))
            }
        }
    }

    fn sum_squares(&self, x: &DeviceTensor) -> DeviceScalar {
        match self {
            Device::Cpu(b) => DeviceScalar::Host(b.sum_squares(host(x))),
            #[cfg(feature = "gpu")]
            Device::Gpu(b) => DeviceScalar::Gpu(b.sum_squares(gpu(x))),
        }
    }

    fn adam(
        &self,
        p: &mut DeviceTensor,
        g: &DeviceTensor,
        m: &mut DeviceTensor,
        v: &mut DeviceTensor,
        step: &AdamStep,
    ) {
        dispatch!(self, |b, w, t, tm, c| b.adam(
            tm(p),
            t(g),
            tm(m),
            tm(v),
            step
        ))
    }
}
