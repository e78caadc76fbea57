//! `impasto import`: read a lengstrom/ml5-style fast-style-transfer ONNX file into an impasto
//! `seed` model.
//!
//! ONNX is protobuf; the handful of messages we need (model → graph → nodes, attributes,
//! initializers) are decoded here by a small wire-format reader instead of pulling in a
//! protobuf code generator. Every read is bounds-checked: a truncated or hostile file is a
//! clear error, never a panic.

use crate::backend::{OutputFn, Resample};
use crate::error::{Error, Result};
use crate::model::transformer::{Arch, Transformer, TransformerConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

type R<T> = std::result::Result<T, String>;

/// One protobuf field: number and value.
enum Val<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

fn fields(mut b: &[u8]) -> R<Vec<(u32, Val<'_>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (num, wt) = ((key >> 3) as u32, key & 7);
        let v = match wt {
            0 => Val::Varint(varint(&mut b)?),
            1 => {
                take(&mut b, 8)?;
                Val::Fixed64
            }
            2 => {
                let n = varint(&mut b)?;
                let n = usize::try_from(n).map_err(|_| "length overflow".to_string())?;
                Val::Bytes(take(&mut b, n)?)
            }
            5 => Val::Fixed32(u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap())),
            _ => return Err(format!("unsupported protobuf wire type {wt}")),
        };
        out.push((num, v));
    }
    Ok(out)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> R<&'a [u8]> {
    if b.len() < n {
        return Err("truncated protobuf message".into());
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn varint(b: &mut &[u8]) -> R<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.first().ok_or("truncated varint")?;
        *b = &b[1..];
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn string(v: &Val) -> R<String> {
    match v {
        Val::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".into()),
        _ => Err("expected a string field".into()),
    }
}

fn ints(v: &Val, out: &mut Vec<i64>) -> R<()> {
    match v {
        Val::Varint(x) => out.push(*x as i64),
        Val::Bytes(b) => {
            let mut b = *b;
            while !b.is_empty() {
                out.push(varint(&mut b)? as i64);
            }
        }
        _ => return Err("expected an integer field".into()),
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Tensor {
    name: String,
    dims: Vec<usize>,
    data: Vec<f32>,
}

fn tensor(b: &[u8]) -> R<Tensor> {
    let mut t = Tensor::default();
    let (mut dtype, mut raw, mut floats) = (0u64, None, Vec::new());
    for (num, v) in fields(b)? {
        match num {
            1 => {
                let mut d = Vec::new();
                ints(&v, &mut d)?;
                for x in d {
                    t.dims
                        .push(usize::try_from(x).map_err(|_| "negative dimension")?);
                }
            }
            2 => {
                if let Val::Varint(x) = v {
                    dtype = x
                }
            }
            4 => match v {
                Val::Fixed32(x) => floats.push(f32::from_bits(x)),
                Val::Bytes(b) => floats.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
                ),
                _ => return Err("bad float_data".into()),
            },
            8 => t.name = string(&v)?,
            9 => {
                if let Val::Bytes(b) = v {
                    raw = Some(b)
                }
            }
            _ => {}
        }
    }
    if dtype != 1 {
        return Err(format!(
            "initializer `{}` has data type {dtype}; only float32 is supported",
            t.name
        ));
    }
    t.data = match raw {
        Some(b) => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        None => floats,
    };
    let n: usize = t
        .dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("tensor size overflows")?;
    if n != t.data.len() {
        return Err(format!(
            "initializer `{}` has {} values for shape {:?}",
            t.name,
            t.data.len(),
            t.dims
        ));
    }
    Ok(t)
}

#[derive(Debug, Default)]
struct Node {
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    ints: HashMap<String, Vec<i64>>,
    floats: HashMap<String, f32>,
    strings: HashMap<String, String>,
}

fn node(b: &[u8]) -> R<Node> {
    let mut n = Node::default();
    for (num, v) in fields(b)? {
        match num {
            1 => n.inputs.push(string(&v)?),
            2 => n.outputs.push(string(&v)?),
            4 => n.op = string(&v)?,
            5 => {
                let Val::Bytes(ab) = v else {
                    return Err("bad attribute".into());
                };
                let (mut name, mut is, mut f, mut s) = (String::new(), Vec::new(), None, None);
                for (an, av) in fields(ab)? {
                    match (an, &av) {
                        (1, _) => name = string(&av)?,
                        (2, Val::Fixed32(x)) => f = Some(f32::from_bits(*x)),
                        (3, _) | (8, _) => ints(&av, &mut is)?,
                        (4, _) => s = Some(string(&av)?),
                        _ => {}
                    }
                }
                if let Some(f) = f {
                    n.floats.insert(name.clone(), f);
                }
                if let Some(s) = s {
                    n.strings.insert(name.clone(), s);
                }
                n.ints.insert(name, is);
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Decode an ONNX fast-style-transfer graph into a `seed` transformer.
pub fn import_bytes(bytes: &[u8]) -> R<Transformer> {
    let model = fields(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model
        .iter()
        .find_map(|(n, v)| {
            if let (7, Val::Bytes(b)) = (n, v) {
                Some(*b)
            } else {
                None
            }
        })
        .ok_or("not an ONNX model: no graph")?;
    // The style names an impasto export records (metadata_props).
    let mut names: Option<Vec<String>> = None;
    for (n, v) in &model {
        if let (14, Val::Bytes(b)) = (n, v) {
            let kv = fields(b)?;
            let get = |k: u32| {
                kv.iter()
                    .find(|(n, _)| *n == k)
                    .and_then(|(_, v)| string(v).ok())
            };
            if get(1).as_deref() == Some(crate::model::mix::STYLES_KEY) {
                names = get(2).and_then(|js| serde_json::from_str(&js).ok());
            }
        }
    }
    let mut inits = HashMap::new();
    let mut nodes = Vec::new();
    for (num, v) in fields(graph)? {
        match (num, v) {
            (1, Val::Bytes(b)) => nodes.push(node(b)?),
            (5, Val::Bytes(b)) => {
                let t = tensor(b)?;
                inits.insert(t.name.clone(), t);
            }
            _ => {}
        }
    }
    let init = |name: &str| {
        inits
            .get(name)
            .ok_or_else(|| format!("missing initializer `{name}`"))
    };
    let convs: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.op == "Conv" || n.op == "ConvTranspose")
        .collect();
    let norms: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.op == "InstanceNormalization")
        .collect();
    let n_res = nodes
        .iter()
        .filter(|n| n.op == "Add" && n.inputs.iter().all(|i| !inits.contains_key(i)))
        .count();
    if convs.len() < 6 || convs.len() != 6 + 2 * n_res || norms.len() != convs.len() {
        return Err(format!(
            "unsupported graph: {} convolutions, {} instance norms, {} residual adds; expected the fast-style-transfer network",
            convs.len(),
            norms.len(),
            n_res
        ));
    }
    // The graph's hyper-parameters first; then the plan of that config says what every
    // node must be, in order.
    let mut eps = None;
    for n in &norms {
        let e = *n.floats.get("epsilon").unwrap_or(&1e-5) as f64;
        if eps.is_some_and(|x: f64| (x - e).abs() > 1e-9) {
            return Err("instance norms with different epsilons".into());
        }
        eps = Some(e);
    }
    let width = |i: usize| -> R<usize> {
        let w = init(convs[i].inputs.get(1).ok_or("convolution without weight")?)?;
        match w.dims.as_slice() {
            [o, _, _, _] if *o > 0 => Ok(*o),
            d => Err(format!(
                "convolution {i}: weight `{}` has shape {d:?}, expected 4 dimensions",
                convs[i].inputs[1]
            )),
        }
    };
    // A norm's scale and shift: initializers, or (a model of several styles) the product
    // of the style weights with a `[styles, channels]` initializer.
    let table = |name: &str| -> R<&Tensor> {
        if let Some(t) = inits.get(name) {
            return Ok(t);
        }
        match nodes.iter().find(|n| n.outputs.iter().any(|o| o == name)) {
            Some(n) if n.op == "MatMul" && n.inputs.len() == 2 => init(&n.inputs[1]),
            _ => Err(format!("missing initializer `{name}`")),
        }
    };
    let norm_tables = |n: &Node| -> R<(&Tensor, &Tensor)> {
        Ok((
            table(n.inputs.get(1).ok_or("norm without scale")?)?,
            table(n.inputs.get(2).ok_or("norm without bias")?)?,
        ))
    };
    let styles = match norm_tables(norms[0])?.0.dims.as_slice() {
        [n, _] if *n > 1 => *n,
        _ => 1,
    };
    let mut config = TransformerConfig::new(Arch::Seed);
    config.styles = styles;
    config.res_blocks = n_res;
    config.norm_eps = eps.unwrap_or(1e-3);
    config.channels = [width(0)?, width(1)?, width(2)?];
    config.output = output_fn(&nodes, &inits)?;
    config.validate()?;
    let plan = config.plan();
    let mut params = BTreeMap::new();
    for (i, (c, layer)) in convs.iter().zip(&plan.convs).enumerate() {
        let name = &layer.name;
        let s = layer.spec;
        let transposed = s.resample == Resample::Transposed;
        if transposed != (c.op == "ConvTranspose") {
            return Err(format!(
                "layer {i} ({name}) is a {}, not what the seed network has there",
                c.op
            ));
        }
        if c.inputs.len() != 2 + s.bias as usize {
            return Err(format!(
                "{name}: convolutions with bias are not supported in the seed architecture"
            ));
        }
        let stride = if transposed { 2 } else { s.stride as i64 };
        if c.ints.get("strides").map(|s| s.as_slice()) != Some(&[stride, stride][..]) {
            return Err(format!(
                "{name}: strides {:?}, expected [{stride}, {stride}]",
                c.ints.get("strides")
            ));
        }
        if transposed {
            if c.ints.get("pads").map(|s| s.as_slice()) != Some(&[0, 0, 1, 1][..]) {
                return Err(format!(
                    "{name}: pads {:?}, expected [0, 0, 1, 1]",
                    c.ints.get("pads")
                ));
            }
        } else if c.strings.get("auto_pad").map(String::as_str) != Some("SAME_UPPER") {
            return Err(format!("{name}: padding must be SAME_UPPER"));
        }
        let w = init(&c.inputs[1])?;
        if w.dims.len() != 4 || w.dims.contains(&0) {
            return Err(format!(
                "{name}: weight `{}` has shape {:?}, expected 4 dimensions",
                c.inputs[1], w.dims
            ));
        }
        let spec = &plan.params[layer.weight];
        params.insert(spec.name.clone(), (w.dims.clone(), w.data.clone()));
    }
    for (n, layer) in norms.iter().zip(&plan.norms) {
        let (g, b) = norm_tables(n)?;
        for (id, t) in [(layer.scale[0], g), (layer.shift[0], b)] {
            params.insert(
                plan.params[id].name.clone(),
                (t.dims.clone(), t.data.clone()),
            );
        }
    }
    // Checks every name and shape against the plan.
    let mut t = Transformer::from_named(config, params, BTreeMap::new()).map_err(String::from)?;
    if let Some(names) = names.filter(|_| styles > 1) {
        let list: Vec<crate::model::StyleEntry> = names
            .into_iter()
            .map(|name| crate::model::StyleEntry {
                name,
                ..Default::default()
            })
            .collect();
        t.set_styles(&list)?;
    }
    Ok(t)
}

/// Output: Tanh → Mul(scale) → Add(shift) → Clip(0, 255).
fn output_fn(nodes: &[Node], inits: &HashMap<String, Tensor>) -> R<OutputFn> {
    let scalar = |name: &str| -> R<f32> {
        let t = inits
            .get(name)
            .ok_or_else(|| format!("missing initializer `{name}`"))?;
        if t.data.len() != 1 {
            return Err(format!("`{name}` is not a scalar"));
        }
        Ok(t.data[0])
    };
    let find = |op: &str| {
        nodes
            .iter()
            .find(|n| n.op == op)
            .ok_or_else(|| format!("no {op} node at the output"))
    };
    find("Tanh")?;
    let const_in = |n: &Node| {
        n.inputs
            .iter()
            .find(|i| inits.contains_key(*i))
            .cloned()
            .ok_or("no constant operand".to_string())
    };
    let mul = find("Mul")?;
    let scale = scalar(&const_in(mul)?)?;
    let add = nodes
        .iter()
        .rev()
        .find(|n| n.op == "Add" && n.inputs.iter().any(|i| inits.contains_key(i)))
        .ok_or("no output shift")?;
    let shift = scalar(&const_in(add)?)?;
    let clip = find("Clip")?;
    let (lo, hi) = (
        scalar(clip.inputs.get(1).ok_or("Clip without min")?)?,
        scalar(clip.inputs.get(2).ok_or("Clip without max")?)?,
    );
    if lo != 0.0 || hi != 255.0 {
        return Err(format!("output clip to [{lo}, {hi}], expected [0, 255]"));
    }
    Ok(OutputFn::ScaledTanh { scale, shift })
}

pub fn import(path: &Path) -> Result<Transformer> {
    let bytes = crate::io::read_regular(path, crate::model::format::MAX_FILE_BYTES, "model file")?;
    let mut t = import_bytes(&bytes).map_err(|m| Error::model(path, m))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    crate::model::provenance::Provenance {
        made_by: "impasto import".into(),
        source: Some(name),
        source_format: Some("onnx".into()),
        ..Default::default()
    }
    .to_metadata(&mut t.metadata);
    Ok(t)
}
