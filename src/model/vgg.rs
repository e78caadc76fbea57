//! The frozen VGG16 loss network, conv1_1 … conv4_3, with the four loss taps
//! relu1_2, relu2_2, relu3_3, relu4_3.
//!
//! Two weight conventions exist and each file says which it is in its metadata: the Caffe
//! weights Johnson et al. used (BGR, 0..255, mean subtracted) and torchvision's (RGB, /255,
//! mean/std). The network always takes RGB on the 0..255 scale and applies the file's own
//! preprocessing, so callers never need to know.

use crate::backend::{Backend, ConvSpec, Cpu, Padding};
use crate::error::{Error, ModelError, Result};
use crate::model::format::TensorFile;
use std::path::Path;

/// The 10 convolutions up to conv4_3: (name, c_in, c_out).
pub const LAYERS: [(&str, usize, usize); 10] = [
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3", 512, 512),
];

/// Indices (into LAYERS) after which a tap is taken and, except for the last, a pool follows.
pub const TAPS: [usize; 4] = [1, 3, 6, 9];
pub const TAP_NAMES: [&str; 4] = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"];

/// Input preprocessing: network channel `i` = `scale[i] · rgb[src[i]] + shift[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    pub convention: String,
    pub src: [usize; 3],
    pub scale: [f32; 3],
    pub shift: [f32; 3],
}

impl Preprocess {
    fn from_metadata(
        md: &std::collections::BTreeMap<String, String>,
    ) -> std::result::Result<Self, ModelError> {
        let bad = |key: &str, msg: String| ModelError::Metadata {
            key: key.into(),
            msg,
        };
        let triple = |key: &str| -> std::result::Result<[f64; 3], ModelError> {
            let s = md.get(key).ok_or_else(|| bad(key, "missing".into()))?;
            let not_three = || bad(key, format!("{s:?} is not three numbers"));
            let v: Vec<f64> = s
                .split(',')
                .map(|t| t.trim().parse::<f64>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| not_three())?;
            v.try_into().map_err(|_| not_three())
        };
        match md.get("channel_order").map(String::as_str) {
            Some("bgr") => {
                let m = triple("mean_bgr")?;
                Ok(Preprocess {
                    convention: "caffe".into(),
                    src: [2, 1, 0],
                    scale: [1.0; 3],
                    shift: [-m[0] as f32, -m[1] as f32, -m[2] as f32],
                })
            }
            Some("rgb") => {
                let m = triple("mean_rgb")?;
                let s = triple("std_rgb")?;
                let f = |i: usize| ((1.0 / 255.0) / s[i]) as f32;
                let b = |i: usize| (-m[i] / s[i]) as f32;
                Ok(Preprocess {
                    convention: "torchvision".into(),
                    src: [0, 1, 2],
                    scale: [f(0), f(1), f(2)],
                    shift: [b(0), b(1), b(2)],
                })
            }
            other => Err(bad(
                "channel_order",
                format!("{other:?}; expected \"bgr\" (Caffe) or \"rgb\" (torchvision)"),
            )),
        }
    }

    fn apply<B: Backend>(&self, b: &B, x: &B::Tensor) -> B::Tensor {
        b.channel_affine(x, self.src, self.scale, self.shift)
    }
}

/// How the loss network multiplies. Its weights are frozen and only its gradient flows on,
/// so fast training lets it round products to bfloat16 where the CPU has a matrix unit for
/// them (AMX); everywhere else both are the fast f32 kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    F32,
    Bf16,
}

/// The loss network on a backend: VGG16's convolutions up to conv4_3 (frozen).
#[derive(Clone, Debug)]
pub struct Vgg16<B: Backend = Cpu> {
    pub pre: Preprocess,
    backend: B,
    convs: Vec<B::Conv>,
}

impl Vgg16<Cpu> {
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_on(Cpu, path)
    }

    pub fn from_file(f: TensorFile) -> std::result::Result<Self, ModelError> {
        Self::from_file_on(Cpu, f)
    }
}

impl<B: Backend> Vgg16<B> {
    pub fn load_on(backend: B, path: &Path) -> Result<Self> {
        let file = TensorFile::read(path)?;
        Self::from_file_on(backend, file).map_err(|m| Error::model(path, m))
    }

    pub fn from_file_on(backend: B, mut f: TensorFile) -> std::result::Result<Self, ModelError> {
        let pre = Preprocess::from_metadata(&f.metadata)?;
        let mut convs = Vec::new();
        for (name, ci, co) in LAYERS {
            let w = f.take(&format!("{name}.weight"), &[co, ci, 3, 3])?;
            let b = f.take(&format!("{name}.bias"), &[co])?;
            convs.push(backend.conv(&ConvSpec::new(ci, co, 3, 1, Padding::Zero), &w, Some(&b)));
        }
        Ok(Vgg16 {
            pre,
            backend,
            convs,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The four tap activations for an RGB 0..255 batch.
    pub fn forward(&self, x: &B::Tensor) -> Vec<B::Tensor> {
        self.run(x, TAPS.len() - 1, Arith::F32, None)
    }

    /// The tap activations up to tap `upto` (0..4) and no further: the content target
    /// needs VGG16 only up to relu2_2.
    pub fn forward_to(&self, x: &B::Tensor, upto: usize, arith: Arith) -> Vec<B::Tensor> {
        self.run(x, upto, arith, None)
    }

    fn conv(&self, i: usize, x: &B::Tensor, arith: Arith) -> B::Tensor {
        match arith {
            Arith::F32 => self.backend.conv_forward(&self.convs[i], x, false),
            Arith::Bf16 => self.backend.conv_forward_bf16(&self.convs[i], x),
        }
    }

    /// Forward up to tap `upto` (0..4). Without a tape, returns the taps; with one, moves
    /// every ReLU output onto it (no copies: the taps are read from the tape) and returns
    /// nothing.
    fn run(
        &self,
        x: &B::Tensor,
        upto: usize,
        arith: Arith,
        mut tape: Option<&mut VggTape<B>>,
    ) -> Vec<B::Tensor> {
        let b = &self.backend;
        // The next convolution's input: owned here, or the tape's last ReLU output.
        let mut input = Some(self.pre.apply(b, x));
        let mut taps = Vec::with_capacity(4);
        for i in 0..self.convs.len() {
            let mut h = match (&input, tape.as_deref()) {
                (Some(x), _) => self.conv(i, x, arith),
                (None, Some(t)) => self.conv(i, t.relu.last().expect("taped"), arith),
                (None, None) => unreachable!("an input is owned unless taped"),
            };
            b.relu(&mut h);
            let tap = TAPS.iter().position(|&t| t == i);
            match tape.as_deref_mut() {
                Some(t) => {
                    t.size.push(b.dims(&h));
                    t.relu.push(h);
                    let h = t.relu.last().expect("just pushed");
                    input = match tap {
                        Some(k) if k == upto => break,
                        Some(_) => Some(b.max_pool2(h)),
                        None => None,
                    };
                }
                None => match tap {
                    Some(k) if k == upto => {
                        taps.push(h);
                        break;
                    }
                    Some(_) => {
                        input = Some(b.max_pool2(&h));
                        taps.push(h);
                    }
                    None => input = Some(h),
                },
            }
        }
        taps
    }
}

/// The activations the VGG backward pass needs: every ReLU output.
pub struct VggTape<B: Backend = Cpu> {
    relu: Vec<B::Tensor>,
    size: Vec<[usize; 4]>,
    /// The backward pass multiplies as the forward pass did.
    arith: Arith,
}

impl<B: Backend> VggTape<B> {
    /// The tap activations the pass reached, in order.
    pub fn taps(&self) -> Vec<&B::Tensor> {
        TAPS.iter().filter_map(|&i| self.relu.get(i)).collect()
    }
}

impl<B: Backend> Vgg16<B> {
    /// Forward up to the tap `upto` (0..4) recording the ReLU outputs; the taps are the
    /// tape's ([`VggTape::taps`]).
    pub fn forward_train(&self, x: &B::Tensor, upto: usize, arith: Arith) -> VggTape<B> {
        let mut tape = VggTape {
            relu: Vec::new(),
            size: Vec::new(),
            arith,
        };
        self.run(x, upto, arith, Some(&mut tape));
        tape
    }

    /// d(loss)/d(input RGB) given d(loss)/d(tap) for each recorded tap (None = no gradient).
    pub fn backward(&self, tape: &VggTape<B>, dtaps: &[Option<B::Tensor>]) -> B::Tensor {
        let b = &self.backend;
        let top = tape.relu.len() - 1;
        let mut d: Option<B::Tensor> = None;
        for i in (0..=top).rev() {
            if let Some(t) = TAPS.iter().position(|&t| t == i) {
                if i != top {
                    // Through the pool that followed this tap.
                    d = d.take().map(|dd| b.max_pool2_backward(&tape.relu[i], &dd));
                }
                if let Some(Some(dt)) = dtaps.get(t) {
                    d = Some(match d.take() {
                        None => dt.clone(),
                        Some(mut a) => {
                            b.add(&mut a, dt);
                            a
                        }
                    });
                }
            }
            let Some(mut g) = d.take() else { continue };
            // ReLU mask, then the conv's input gradient.
            b.relu_mask(&mut g, &tape.relu[i]);
            let [_, _, h, w] = tape.size[i];
            d = Some(match tape.arith {
                Arith::F32 => b.conv_input_grad(&self.convs[i], &g, h, w),
                Arith::Bf16 => b.conv_input_grad_bf16(&self.convs[i], &g, h, w),
            });
        }
        let d = d.expect("at least one tap gradient");
        // Preprocessing: net[i] = scale[i]·rgb[src[i]] + shift[i].
        b.channel_affine_backward(&d, self.pre.src, self.pre.scale)
    }
}

/// Indices of the 10 convolutions in torchvision's / timm's `features` sequence.
const TORCHVISION_FEATURES: [usize; 10] = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21];

/// File names looked for in the cache, in order of preference.
pub const CACHE_FILES: [&str; 2] = [
    "vgg16_caffe_relu4_3.safetensors",
    "vgg16_torchvision_relu4_3.safetensors",
];

/// `$IMPASTO_CACHE`, else `$XDG_CACHE_HOME/impasto`, else `~/.cache/impasto`.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("IMPASTO_CACHE") {
        return Some(p.into());
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(std::path::PathBuf::from(p).join("impasto"));
    }
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/impasto"))
}

/// Find the VGG16 weights: `--vgg`, then `$IMPASTO_VGG`, then the cache folder.
pub fn locate(flag: Option<&Path>) -> Result<std::path::PathBuf> {
    if let Some(p) = flag {
        return if p.exists() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "VGG16 weights not found"),
            ))
        };
    }
    if let Some(p) = std::env::var_os("IMPASTO_VGG") {
        let p = std::path::PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(Error::io(
                &p,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "IMPASTO_VGG points to a missing file",
                ),
            ))
        };
    }
    let dir = cache_dir();
    if let Some(d) = &dir {
        for f in CACHE_FILES {
            if d.join(f).exists() {
                return Ok(d.join(f));
            }
        }
    }
    Err(Error::Environment(format!(
        "no VGG16 weights found (the loss network training needs): give `vgg` a weights file, set IMPASTO_VGG=FILE, or download torchvision's VGG16 from the Hugging Face hub (`impasto fetch-vgg`) into {}",
        dir.map(|d| d.display().to_string()).unwrap_or_else(|| "the cache folder".into())
    )))
}

/// Convert torchvision/timm VGG16 weights (`features.N.weight`) into impasto's layout
/// (`conv1_1.weight` …) with the torchvision preprocessing in the metadata.
pub fn convert_torchvision(mut f: TensorFile) -> std::result::Result<TensorFile, ModelError> {
    let mut out = TensorFile::default();
    for (&idx, (name, ci, co)) in TORCHVISION_FEATURES.iter().zip(LAYERS) {
        let w = f.take(&format!("features.{idx}.weight"), &[co, ci, 3, 3])?;
        let b = f.take(&format!("features.{idx}.bias"), &[co])?;
        out.tensors
            .insert(format!("{name}.weight"), (vec![co, ci, 3, 3], w));
        out.tensors.insert(format!("{name}.bias"), (vec![co], b));
    }
    for (k, v) in [
        ("format", "vgg16-conv"),
        ("channel_order", "rgb"),
        ("scale", "1/255"),
        ("mean_rgb", "0.485,0.456,0.406"),
        ("std_rgb", "0.229,0.224,0.225"),
        ("input", "RGB channel order, pixel values scaled to 0..1, then (x - mean) / std"),
        ("layout", "weight OIHW, bias O; conv 3x3 stride 1 pad 1, ReLU after each conv, 2x2 max-pool stride 2 after conv1_2, conv2_2, conv3_3"),
        ("source", "timm/vgg16.tv_in1k (torchvision ImageNet VGG16), converted by impasto fetch-vgg"),
        ("license", "torchvision model weights: BSD-3-Clause (pytorch/vision)"),
    ] {
        out.metadata.insert(k.into(), v.into());
    }
    Ok(out)
}

#[cfg(feature = "hub")]
/// Download torchvision's VGG16 (`timm/vgg16.tv_in1k`) and convert it into `dir`.
pub fn fetch(dir: &Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(dir.join("hf"))
        .with_progress(true)
        .build()
        .map_err(|e| Error::Network(format!("cannot set up the Hugging Face hub client: {e}")))?;
    let src = api.model("timm/vgg16.tv_in1k".into()).get("model.safetensors").map_err(|e| {
        Error::Network(format!(
            "could not download timm/vgg16.tv_in1k from the Hugging Face hub ({e}). Without network access, copy VGG16 weights in impasto's format to {} or give `vgg` a weights file",
            dir.join(CACHE_FILES[1]).display()
        ))
    })?;
    let f = TensorFile::read(&src)?;
    let out = convert_torchvision(f).map_err(|m| Error::model(&src, m))?;
    let dst = dir.join(CACHE_FILES[1]);
    out.write(&dst, false)?;
    Ok(dst)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::Device;
    use crate::rng::Rng;
    use crate::tensor::Tensor;

    /// A random VGG16 in impasto's layout (enough to exercise training without the shared
    /// weights).
    pub(crate) fn random_file() -> TensorFile {
        let mut rng = Rng::new(4);
        let mut f = TensorFile::default();
        for (name, ci, co) in LAYERS {
            let b = (2.0 / (ci * 9) as f32).sqrt();
            let w = (0..co * ci * 9)
                .map(|_| (rng.f32() * 2.0 - 1.0) * b)
                .collect();
            f.tensors
                .insert(format!("{name}.weight"), (vec![co, ci, 3, 3], w));
            f.tensors
                .insert(format!("{name}.bias"), (vec![co], vec![0.0; co]));
        }
        f.metadata.insert("channel_order".into(), "bgr".into());
        f.metadata
            .insert("mean_bgr".into(), "103.939,116.779,123.68".into());
        f
    }

    fn rel_rms(a: &Tensor, b: &Tensor) -> f64 {
        let (mut d, mut n) = (0.0f64, 0.0f64);
        for (x, y) in a.data.iter().zip(&b.data) {
            d += f64::from(x - y).powi(2);
            n += f64::from(*y).powi(2);
        }
        (d / n).sqrt()
    }

    /// The loss network in bf16 products, through the device seam the trainer uses: its
    /// taps and its input gradient stay within bf16 rounding of the f32 ones; on a CPU with
    /// AMX the bf16 kernels did run (the bits differ), elsewhere both are the f32 kernels.
    #[test]
    fn bf16_products_stay_within_rounding_of_f32_through_taps_and_gradient() {
        let vgg = Vgg16::from_file_on(Device::Cpu(Cpu), random_file()).unwrap();
        let b = vgg.backend();
        let mut rng = Rng::new(9);
        // 128 wide: every layer from conv1_2 on has whole 16-pixel tiles (conv4 is 16 wide).
        let mut x = Tensor::zeros(1, 3, 40, 128);
        x.data.iter_mut().for_each(|v| *v = rng.f32() * 255.0);
        let x = b.upload(&x);
        let run = |arith| {
            let tape = vgg.forward_train(&x, 3, arith);
            let taps: Vec<Tensor> = tape.taps().into_iter().map(|t| b.download(t)).collect();
            let d = taps.iter().map(|t| Some(b.upload(t))).collect::<Vec<_>>();
            let g = b.download(&vgg.backward(&tape, &d));
            (taps, g)
        };
        let (t32, g32) = run(Arith::F32);
        let (t16, g16) = run(Arith::Bf16);
        for (i, (a, e)) in t16.iter().zip(&t32).enumerate() {
            let r = rel_rms(a, e);
            assert!(r < 0.015, "tap {i}: relative rms {r}");
        }
        let r = rel_rms(&g16, &g32);
        assert!(r < 0.015, "input gradient: relative rms {r}");
        let content = vgg.forward_to(&x, 1, Arith::Bf16);
        assert_eq!(
            b.download(&content[1]).data,
            t16[1].data,
            "one path for taps and content"
        );
        let amx = crate::kernels::amx::available();
        assert_eq!(
            g16.data != g32.data,
            amx,
            "bf16 kernels ran exactly where AMX is"
        );
    }
}
