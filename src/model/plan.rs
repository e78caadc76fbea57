//! The transformation network's layer plan: the one place its topology is written down.
//!
//! [`TransformerConfig::plan`] lists the blocks the way pytorch/examples'
//! `transformer_net.py` and the paper do — three conv-norm-ReLU stages (9×9, then two
//! stride-2 3×3), residual blocks, two ×2 upsampling stages, a 9×9 output conv — and
//! everything else derives from that list: the parameters (names, shapes, ids, fan-in),
//! construction on any backend, the forward pass (with or without a tape), the backward pass,
//! the FLOP count, ONNX export and import.

use crate::backend::{ConvSpec, OutputFn, Padding, Resample};
use crate::model::config::{Arch, TransformerConfig};

/// Index of a parameter in [`Plan::params`] (and in a model's parameter store, its
/// gradients and its optimiser state).
pub type ParamId = usize;

/// One learnable tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Its name in model files (pytorch/examples `TransformerNet` naming).
    pub name: String,
    pub shape: Vec<usize>,
    /// How a fresh network initialises it.
    pub init: Init,
    /// The style whose scale or shift this is, in a network of several styles (the file
    /// stores a norm's styles as the rows of one `[styles, channels]` tensor named `name`).
    pub style: Option<usize>,
}

impl ParamSpec {
    /// A name unique in the plan: `name`, or `name[k]` for style `k`'s row.
    pub fn key(&self) -> String {
        match self.style {
            None => self.name.clone(),
            Some(k) => format!("{}[{k}]", self.name),
        }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// PyTorch's default initialisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in ±1/√fan_in (conv weights and biases).
    Uniform { fan_in: usize },
    /// All ones (instance-norm scale).
    Ones,
    /// All zeros (instance-norm shift).
    Zeros,
}

/// A convolution of the plan and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLayer {
    pub name: String,
    pub spec: ConvSpec,
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

/// An instance norm of the plan and its parameters: one scale and one shift per style
/// (conditional instance norm; a single-style network has one of each).
#[derive(Clone, Debug, PartialEq)]
pub struct NormLayer {
    pub name: String,
    pub channels: usize,
    pub scale: Vec<ParamId>,
    pub shift: Vec<ParamId>,
}

/// One stage of the network; the numbers index [`Plan::convs`] and [`Plan::norms`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// `relu(norm(conv(x)))`: the encoder and the upsampling stages.
    ConvNormRelu { conv: usize, norm: usize },
    /// `x + norm2(conv2(relu(norm1(conv1(x)))))`.
    Residual {
        conv1: usize,
        norm1: usize,
        conv2: usize,
        norm2: usize,
    },
    /// `out(norm(conv(x)))` (the norm only where the architecture has one).
    Output { conv: usize, norm: Option<usize> },
}

impl Block {
    /// The block's first convolution (the one that reads its input).
    pub fn first_conv(&self) -> usize {
        match *self {
            Block::ConvNormRelu { conv, .. } | Block::Output { conv, .. } => conv,
            Block::Residual { conv1, .. } => conv1,
        }
    }
}

/// The network as a list of blocks over numbered layers and parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub blocks: Vec<Block>,
    pub convs: Vec<ConvLayer>,
    pub norms: Vec<NormLayer>,
    pub params: Vec<ParamSpec>,
    pub norm_eps: f64,
    pub output: OutputFn,
}

impl Plan {
    /// A parameter by its key ([`ParamSpec::key`]: the file name, or `name[k]` for style
    /// `k`'s scale or shift).
    pub fn param_id(&self, key: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.key() == key)
    }

    /// How many styles the norms hold.
    pub fn styles(&self) -> usize {
        self.norms.first().map_or(1, |n| n.scale.len())
    }

    /// Whether a parameter is shared by every style (a convolution's), not one style's.
    pub fn shared(&self, id: ParamId) -> bool {
        self.params[id].style.is_none() || self.styles() == 1
    }

    /// Nominal multiply-adds ×2 for one `h × w` forward pass.
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        // The convolutions run in sequence along the main path (a residual block keeps its
        // input's size), so each sees the previous one's output size.
        let (mut h, mut w, mut total) = (h, w, 0.0);
        for c in &self.convs {
            total += c.spec.flops(h, w);
            (h, w) = c.spec.out_size(h, w);
        }
        total
    }

    /// The largest single activation (bytes, f32) of one `h × w` forward pass: what a device
    /// with a per-buffer limit must hold at once.
    pub fn activation_bytes(&self, h: usize, w: usize) -> u64 {
        let (mut h, mut w, mut most) = (h, w, 0u64);
        for c in &self.convs {
            (h, w) = c.spec.out_size(h, w);
            most = most.max((4 * c.spec.c_out * h * w) as u64);
        }
        most
    }

    /// The total number of parameters.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(ParamSpec::len).sum()
    }
}

/// Builds a plan layer by layer, numbering convolutions, norms and parameters in forward
/// order (which is also the order a fresh network draws its random weights in).
struct Builder<'a> {
    cfg: &'a TransformerConfig,
    plan: Plan,
}

impl Builder<'_> {
    fn param(&mut self, name: String, shape: Vec<usize>, init: Init) -> ParamId {
        self.styled(name, shape, init, None)
    }

    fn styled(
        &mut self,
        name: String,
        shape: Vec<usize>,
        init: Init,
        style: Option<usize>,
    ) -> ParamId {
        self.plan.params.push(ParamSpec {
            name,
            shape,
            init,
            style,
        });
        self.plan.params.len() - 1
    }

    fn conv(&mut self, name: &str, c_in: usize, c_out: usize, k: usize, stride: usize) -> usize {
        self.conv_resampled(name, c_in, c_out, k, stride, Resample::None)
    }

    fn conv_resampled(
        &mut self,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        resample: Resample,
    ) -> usize {
        let padding = match (self.cfg.arch, resample) {
            (Arch::Johnson, _) => Padding::Reflect,
            (Arch::Seed, Resample::Transposed) => Padding::Zero,
            (Arch::Seed, _) => Padding::SameUpper,
        };
        let spec = ConvSpec {
            c_in,
            c_out,
            k,
            stride,
            padding,
            resample,
            bias: self.cfg.conv_bias,
        };
        let fan_in = spec.fan_in();
        let weight = self.param(
            format!("{name}.conv2d.weight"),
            spec.weight_shape().to_vec(),
            Init::Uniform { fan_in },
        );
        let bias = spec.bias.then(|| {
            self.param(
                format!("{name}.conv2d.bias"),
                vec![c_out],
                Init::Uniform { fan_in },
            )
        });
        self.plan.convs.push(ConvLayer {
            name: name.into(),
            spec,
            weight,
            bias,
        });
        self.plan.convs.len() - 1
    }

    fn norm(&mut self, name: &str, channels: usize) -> usize {
        // One style: plain parameters (pytorch/examples names); several: one row each.
        let n = self.cfg.styles;
        let style = |k: usize| (n > 1).then_some(k);
        let scale = (0..n)
            .map(|k| {
                self.styled(
                    format!("{name}.weight"),
                    vec![channels],
                    Init::Ones,
                    style(k),
                )
            })
            .collect();
        let shift = (0..n)
            .map(|k| {
                self.styled(
                    format!("{name}.bias"),
                    vec![channels],
                    Init::Zeros,
                    style(k),
                )
            })
            .collect();
        self.plan.norms.push(NormLayer {
            name: name.into(),
            channels,
            scale,
            shift,
        });
        self.plan.norms.len() - 1
    }

    fn conv_norm_relu(&mut self, conv: usize, norm: &str) {
        let c = self.plan.convs[conv].spec.c_out;
        let norm = self.norm(norm, c);
        self.plan.blocks.push(Block::ConvNormRelu { conv, norm });
    }

    fn residual(&mut self, name: &str, c: usize) {
        let conv1 = self.conv(&format!("{name}.conv1"), c, c, 3, 1);
        let norm1 = self.norm(&format!("{name}.in1"), c);
        let conv2 = self.conv(&format!("{name}.conv2"), c, c, 3, 1);
        let norm2 = self.norm(&format!("{name}.in2"), c);
        self.plan.blocks.push(Block::Residual {
            conv1,
            norm1,
            conv2,
            norm2,
        });
    }
}

impl TransformerConfig {
    /// The network, block by block.
    pub fn plan(&self) -> Plan {
        let [c1, c2, c3] = self.channels;
        let mut b = Builder {
            cfg: self,
            plan: Plan {
                blocks: Vec::new(),
                convs: Vec::new(),
                norms: Vec::new(),
                params: Vec::new(),
                norm_eps: self.norm_eps,
                output: self.output,
            },
        };
        // Encoder: 9×9 conv, then two stride-2 3×3 convs.
        let conv = b.conv("conv1", 3, c1, 9, 1);
        b.conv_norm_relu(conv, "in1");
        let conv = b.conv("conv2", c1, c2, 3, 2);
        b.conv_norm_relu(conv, "in2");
        let conv = b.conv("conv3", c2, c3, 3, 2);
        b.conv_norm_relu(conv, "in3");
        for r in 1..=self.res_blocks {
            b.residual(&format!("res{r}"), c3);
        }
        // Decoder: two ×2 upsampling stages (nearest + conv, or transposed conv).
        let up = match self.arch {
            Arch::Johnson => Resample::Upsample,
            Arch::Seed => Resample::Transposed,
        };
        let conv = b.conv_resampled("deconv1", c3, c2, 3, 1, up);
        b.conv_norm_relu(conv, "in4");
        let conv = b.conv_resampled("deconv2", c2, c1, 3, 1, up);
        b.conv_norm_relu(conv, "in5");
        // Output: 9×9 conv to RGB, the seed network's final norm, the output function.
        let conv = b.conv("deconv3", c1, 3, 9, 1);
        let norm = self.final_norm.then(|| b.norm("in6", 3));
        b.plan.blocks.push(Block::Output { conv, norm });
        b.plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_names_and_shapes_every_parameter_like_pytorch() {
        let p = TransformerConfig::new(Arch::Johnson).plan();
        assert_eq!(p.params.len(), 3 * 4 + 5 * 8 + 2 * 4 + 2);
        assert_eq!(p.params[0].name, "conv1.conv2d.weight");
        assert_eq!(p.params[0].shape, [32, 3, 9, 9]);
        let id = p.param_id("deconv1.conv2d.weight").unwrap();
        assert_eq!(p.params[id].shape, [64, 128, 3, 3]);
        assert_eq!(p.param_count(), 1_679_235);
        let s = TransformerConfig::new(Arch::Seed).plan();
        // ConvTranspose layout [c_in, c_out, k, k], no conv biases, a final norm.
        let id = s.param_id("deconv1.conv2d.weight").unwrap();
        assert_eq!(s.params[id].shape, [128, 64, 3, 3]);
        assert!(s.param_id("conv1.conv2d.bias").is_none());
        assert!(s.param_id("in6.weight").is_some());
        assert_eq!(s.norms.len(), 16);
        assert_eq!(p.norms.len(), 15);
    }

    #[test]
    fn several_styles_add_only_norm_rows() {
        let one = TransformerConfig::new(Arch::Johnson).plan();
        let mut cfg = TransformerConfig::new(Arch::Johnson);
        cfg.styles = 3;
        let three = cfg.plan();
        assert_eq!(three.styles(), 3);
        let norm_params: usize = one.norms.iter().map(|n| 2 * n.channels).sum();
        assert_eq!(three.param_count(), one.param_count() + 2 * norm_params);
        let n = &three.norms[0];
        assert_eq!(three.params[n.scale[2]].key(), "in1.weight[2]");
        assert_eq!(three.param_id("in1.bias[1]"), Some(n.shift[1]));
        assert!(three.shared(three.convs[0].weight) && !three.shared(n.scale[0]));
        // The convolutions draw their random weights in the same order.
        let convs = |p: &Plan| {
            p.convs
                .iter()
                .map(|c| c.weight)
                .map(|id| p.params[id].key())
                .collect::<Vec<_>>()
        };
        assert_eq!(convs(&one), convs(&three));
    }

    #[test]
    fn flops_follow_the_plan() {
        let p = TransformerConfig::new(Arch::Johnson).plan();
        // conv1, deconv3 and deconv2 at full size; conv2 and deconv1 at half; the rest at
        // a quarter.
        let px = 256.0 * 256.0;
        let want = 2.0 * px * (32.0 * 3.0 * 81.0 * 2.0 + 64.0 * 32.0 * 9.0)
            + 2.0 * px / 4.0 * (32.0 * 64.0 * 9.0 + 128.0 * 64.0 * 9.0)
            + 2.0 * px / 16.0 * (64.0 * 128.0 * 9.0 + 10.0 * 128.0 * 128.0 * 9.0);
        assert!((p.flops(256, 256) - want).abs() < 1e-6 * want);
    }
}
