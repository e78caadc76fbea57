//! `impasto export`: write a model as an ONNX graph (opset 13) that onnxruntime, browsers
//! (onnxruntime-web) and other engines run. Both architectures:
//! - johnson: `Pad(reflect)` + `Conv`, `InstanceNormalization`, `Relu`, `Add`, and
//!   `Resize(nearest, asymmetric, floor)` before the two upsampling convs;
//! - seed: `Conv(auto_pad=SAME_UPPER)`, `ConvTranspose(stride 2, pads 0,0,1,1)`, the final
//!   norm, `Tanh`, `Mul`, `Add`, `Clip`.
//!
//! Input `image` `[1, 3, H, W]` RGB 0..255 with H and W multiples of 4; output `stylized`.

use crate::backend::{OutputFn, Padding, Resample};
use crate::error::Result;
use crate::model::plan::{Block, ParamId};
use crate::model::transformer::Transformer;
use std::path::Path;

/// A protobuf message under construction.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn key(&mut self, field: u32, wire: u32) {
        self.varint(((field << 3) | wire) as u64);
    }
    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes(field, &m.0)
    }
    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

enum Attr<'a> {
    Ints(&'a str, &'a [i64]),
    Float(&'a str, f32),
    Str(&'a str, &'a str),
}

fn attr(a: &Attr) -> Msg {
    let mut m = Msg::default();
    match a {
        Attr::Ints(n, v) => {
            m.str(1, n).int(20, 7);
            for x in *v {
                m.int(8, *x);
            }
        }
        Attr::Float(n, v) => {
            m.str(1, n).int(20, 1).float(2, *v);
        }
        Attr::Str(n, v) => {
            m.str(1, n).int(20, 3).bytes(4, v.as_bytes());
        }
    }
    m
}

#[derive(Default)]
struct Graph {
    nodes: Vec<Msg>,
    inits: Vec<Msg>,
    counter: usize,
    /// Tests: write this initializer (name, dims, values) instead of the model's, to make
    /// malformed files for the importer.
    #[cfg(test)]
    replace: Option<(String, Vec<usize>, Vec<f32>)>,
}

impl Graph {
    fn fresh(&mut self, p: &str) -> String {
        self.counter += 1;
        format!("{p}_{}", self.counter)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        let mut n = Msg::default();
        for i in inputs {
            n.str(1, i);
        }
        n.str(2, &out).str(3, &out).str(4, op);
        for a in attrs {
            n.msg(5, &attr(a));
        }
        self.nodes.push(n);
        out
    }

    fn init_f32(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        #[cfg(test)]
        let replaced = self.replace.clone().filter(|r| r.0 == name);
        #[cfg(test)]
        let (dims, v) = match &replaced {
            Some((_, d, x)) => (d.as_slice(), x.as_slice()),
            None => (dims, v),
        };
        let mut t = Msg::default();
        for d in dims {
            t.int(1, *d as i64);
        }
        t.int(2, 1).str(8, name);
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        t.bytes(9, &raw);
        self.inits.push(t);
        name.to_string()
    }

    fn init_i64(&mut self, name: &str, v: &[i64]) -> String {
        let mut t = Msg::default();
        t.int(1, v.len() as i64).int(2, 7).str(8, name);
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        t.bytes(9, &raw);
        self.inits.push(t);
        name.to_string()
    }
}

/// An image input or output: float `[1, 3, h, w]`.
fn value_info(name: &str) -> Msg {
    tensor_info(name, &["1", "3", "h", "w"])
}

/// A float tensor whose dimensions are numbers or names.
fn tensor_info(name: &str, dims: &[&str]) -> Msg {
    let mut shape = Msg::default();
    for &d in dims {
        let mut dim = Msg::default();
        match d.parse::<i64>() {
            Ok(v) => dim.int(1, v),
            Err(_) => dim.str(2, d),
        };
        shape.msg(1, &dim);
    }
    let mut tt = Msg::default();
    tt.int(1, 1).msg(2, &shape);
    let mut ty = Msg::default();
    ty.msg(1, &tt);
    let mut vi = Msg::default();
    vi.str(1, name).msg(2, &ty);
    vi
}

/// The graph's second input in a model of several styles: the style weights, a float
/// vector with one entry per style (normalised to sum 1 by the graph).
pub const STYLE_INPUT: &str = "style";

/// The ONNX bytes of `model`.
pub fn to_onnx(model: &Transformer) -> Vec<u8> {
    to_onnx_in(model, Graph::default())
}

fn to_onnx_in(model: &Transformer, mut g: Graph) -> Vec<u8> {
    let plan = model.plan();
    let p = |id: ParamId| -> (&[usize], &[f32]) {
        let spec = &plan.params[id];
        (&spec.shape, model.param_values(id))
    };
    let init = |g: &mut Graph, id: ParamId| -> String {
        let (shape, v) = p(id);
        g.init_f32(&plan.params[id].name, shape, v)
    };
    let eps = plan.norm_eps as f32;
    // One node (or a few) per conv of the plan, by its padding and resampling.
    let conv = |g: &mut Graph, x: &str, i: usize| -> String {
        let layer = &plan.convs[i];
        let s = layer.spec;
        let (k, stride) = (s.k as i64, s.stride as i64);
        let mut inputs = vec![x.to_string(), init(g, layer.weight)];
        if let Some(b) = layer.bias {
            inputs.push(init(g, b));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        match (s.padding, s.resample) {
            (_, Resample::Transposed) => g.node(
                "ConvTranspose",
                &refs,
                &[
                    Attr::Ints("kernel_shape", &[k, k]),
                    Attr::Ints("strides", &[2, 2]),
                    Attr::Ints("pads", &[0, 0, 1, 1]),
                ],
            ),
            (Padding::SameUpper, _) => g.node(
                "Conv",
                &refs,
                &[
                    Attr::Str("auto_pad", "SAME_UPPER"),
                    Attr::Ints("kernel_shape", &[k, k]),
                    Attr::Ints("strides", &[stride, stride]),
                ],
            ),
            (padding, resample) => {
                let mut x = x.to_string();
                if resample == Resample::Upsample {
                    let sn = g.fresh("scales");
                    let scales = g.init_f32(&sn, &[4], &[1.0, 1.0, 2.0, 2.0]);
                    x = g.node(
                        "Resize",
                        &[&x, "", &scales],
                        &[
                            Attr::Str("mode", "nearest"),
                            Attr::Str("coordinate_transformation_mode", "asymmetric"),
                            Attr::Str("nearest_mode", "floor"),
                        ],
                    );
                }
                let pd = k / 2;
                let pn = g.fresh("pads");
                let pads = g.init_i64(&pn, &[0, 0, pd, pd, 0, 0, pd, pd]);
                let mode = if padding == Padding::Reflect {
                    "reflect"
                } else {
                    "constant"
                };
                let padded = g.node("Pad", &[&x, &pads], &[Attr::Str("mode", mode)]);
                let mut r = refs.clone();
                r[0] = &padded;
                g.node(
                    "Conv",
                    &r,
                    &[
                        Attr::Ints("kernel_shape", &[k, k]),
                        Attr::Ints("strides", &[stride, stride]),
                    ],
                )
            }
        }
    };
    // Several styles: a second input, the style weights (N), normalised to sum 1 in the
    // graph; each norm's scale and shift are their product with its `[N, C]` rows.
    let styles = plan.styles();
    let weights = (styles > 1).then(|| {
        let total = g.node("ReduceSum", &[STYLE_INPUT], &[]);
        g.node("Div", &[STYLE_INPUT, &total], &[])
    });
    let rows = |g: &mut Graph, ids: &[ParamId]| -> String {
        let Some(w) = &weights else {
            return init(g, ids[0]);
        };
        let spec = &plan.params[ids[0]];
        let all: Vec<f32> = ids.iter().flat_map(|&id| p(id).1.to_vec()).collect();
        let table = g.init_f32(&spec.name, &[ids.len(), spec.len()], &all);
        g.node("MatMul", &[w, &table], &[])
    };
    let norm = |g: &mut Graph, x: &str, i: usize, relu: bool| -> String {
        let layer = &plan.norms[i];
        let gn = rows(g, &layer.scale);
        let bn = rows(g, &layer.shift);
        let y = g.node(
            "InstanceNormalization",
            &[x, &gn, &bn],
            &[Attr::Float("epsilon", eps)],
        );
        if relu {
            g.node("Relu", &[&y], &[])
        } else {
            y
        }
    };
    let mut h = "image".to_string();
    for block in &plan.blocks {
        h = match *block {
            Block::ConvNormRelu { conv: c, norm: n } => {
                let z = conv(&mut g, &h, c);
                norm(&mut g, &z, n, true)
            }
            Block::Residual {
                conv1,
                norm1,
                conv2,
                norm2,
            } => {
                let z = conv(&mut g, &h, conv1);
                let a = norm(&mut g, &z, norm1, true);
                let z = conv(&mut g, &a, conv2);
                let b = norm(&mut g, &z, norm2, false);
                g.node("Add", &[&h, &b], &[])
            }
            Block::Output { conv: c, norm: n } => {
                let mut y = conv(&mut g, &h, c);
                if let Some(n) = n {
                    y = norm(&mut g, &y, n, false);
                }
                if let OutputFn::ScaledTanh { scale, shift } = plan.output {
                    let t = g.node("Tanh", &[&y], &[]);
                    let sc = g.init_f32("out.scale", &[], &[scale]);
                    let m = g.node("Mul", &[&t, &sc], &[]);
                    let sh = g.init_f32("out.shift", &[], &[shift]);
                    let a = g.node("Add", &[&m, &sh], &[]);
                    let lo = g.init_f32("out.min", &[], &[0.0]);
                    let hi = g.init_f32("out.max", &[], &[255.0]);
                    y = g.node("Clip", &[&a, &lo, &hi], &[]);
                }
                y
            }
        };
    }
    let y = h;
    let mut id = Msg::default();
    id.str(1, &y)
        .str(2, "stylized")
        .str(3, "output")
        .str(4, "Identity");
    g.nodes.push(id);

    let mut graph = Msg::default();
    for n in &g.nodes {
        graph.msg(1, n);
    }
    graph.str(2, "impasto");
    for t in &g.inits {
        graph.msg(5, t);
    }
    graph.msg(11, &value_info("image"));
    if styles > 1 {
        graph.msg(11, &tensor_info(STYLE_INPUT, &[&styles.to_string()]));
    }
    graph.msg(12, &value_info("stylized"));
    let mut opset = Msg::default();
    opset.str(1, "").int(2, 13);
    let mut m = Msg::default();
    m.int(1, 8)
        .msg(8, &opset)
        .str(2, "impasto")
        .str(3, env!("CARGO_PKG_VERSION"))
        .msg(7, &graph);
    if styles > 1 {
        // The styles' names (the order of the `style` input), as model metadata.
        let mut prop = Msg::default();
        prop.str(1, crate::model::mix::STYLES_KEY).str(
            2,
            &serde_json::to_string(&model.style_names()).expect("serialises"),
        );
        m.msg(14, &prop);
    }
    m.0
}

pub fn export(model: &Transformer, path: &Path) -> Result<()> {
    crate::io::write_atomic(path, &to_onnx(model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, TransformerConfig};

    /// The exported seed graph reads back through impasto's own importer into the same
    /// network (the johnson graph is checked against onnxruntime by scripts/check_export.sh).
    #[test]
    fn seed_export_round_trips_through_import() {
        let m = Transformer::init(TransformerConfig::new(Arch::Seed), 4);
        let back = crate::onnx::import_bytes(&to_onnx(&m)).unwrap();
        assert_eq!(back.config.channels, m.config.channels);
        for (spec, v) in m.params() {
            assert_eq!(back.param(&spec.name).unwrap(), v, "{}", spec.name);
        }
    }

    /// A seed network of three styles exports with the style weights as an input and
    /// imports back into the same three styles, row for row.
    #[test]
    fn a_three_style_export_round_trips_through_import() {
        let m = crate::testutil::styled_model(TransformerConfig::new(Arch::Seed), 3, 4);
        let back = crate::onnx::import_bytes(&to_onnx(&m)).unwrap();
        assert_eq!(back.config.styles, 3);
        assert_eq!(back.style_names(), ["a", "b", "c"]);
        for (spec, v) in m.params() {
            assert_eq!(back.param(&spec.key()).unwrap(), v, "{}", spec.key());
        }
    }

    fn with_initializer(m: &Transformer, name: &str, dims: Vec<usize>, v: Vec<f32>) -> Vec<u8> {
        let g = Graph {
            replace: Some((name.to_string(), dims, v)),
            ..Default::default()
        };
        to_onnx_in(m, g)
    }

    /// Malformed ONNX files are errors that say what is wrong, never a panic, and the
    /// importer never returns a model that `load` would refuse.
    #[test]
    fn malformed_onnx_initializers_are_errors() {
        let m = Transformer::init(TransformerConfig::new(Arch::Seed), 4);
        let w = "conv1.conv2d.weight";
        for (dims, v, want) in [
            (vec![], vec![0.5], "4 dimensions"),
            (vec![32], vec![0.5; 32], "4 dimensions"),
            (vec![32, 3, 9, 0], vec![], "4 dimensions"),
            (vec![32, 3, 9, 9], vec![f32::NAN; 32 * 3 * 81], "non-finite"),
        ] {
            let bytes = with_initializer(&m, w, dims.clone(), v);
            let e = crate::onnx::import_bytes(&bytes).err();
            assert!(
                e.as_deref().is_some_and(|e| e.contains(want)),
                "{dims:?}: {e:?}"
            );
        }
        let e = crate::onnx::import_bytes(&with_initializer(
            &m,
            "in6.weight",
            vec![3],
            vec![f32::INFINITY; 3],
        ))
        .err();
        assert!(e.is_some_and(|e| e.contains("non-finite")));
    }
}
