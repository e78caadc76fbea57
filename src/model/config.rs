//! The transformation network's configuration: its architecture, widths and depth, what a
//! model file records. A leaf: the layer plan and the network both read it.
use crate::backend::OutputFn;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Johnson,
    Seed,
}

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
    /// Styles the network holds (conditional instance norm, Dumoulin et al. 2017): every
    /// norm has one scale and shift per style; the convolutions are shared. 1: an ordinary
    /// single-style network (not written to the file, so such files stay as they were).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub styles: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// The most styles one network holds.
pub const MAX_STYLES: usize = 256;

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
                styles: 1,
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
                styles: 1,
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
        if self.styles == 0 || self.styles > MAX_STYLES {
            return Err(format!(
                "implausible network: {} styles (1..={MAX_STYLES})",
                self.styles
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

    /// Every parameter: its unique key (a style's scale and shift are keyed per style) and
    /// shape, in forward order (from the plan).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.plan()
            .params
            .into_iter()
            .map(|p| (p.key(), p.shape))
            .collect()
    }

    /// How many instance norms the forward pass runs.
    pub fn norm_count(&self) -> usize {
        self.plan().norms.len()
    }
}
