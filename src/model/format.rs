//! The model file: safetensors with impasto's metadata.
//!
//! Weights are stored under PyTorch-compatible names (f32, f16 or bf16 on disk; always f32 in
//! memory). The metadata key `impasto.config` holds the network's [`TransformerConfig`](crate::model::TransformerConfig) as
//! JSON and `impasto.provenance` how the file was made, so a model file is self-describing.
//! Every read is validated: header, dtypes, shapes and the presence of every tensor the
//! architecture needs, each failure reported with the file's path.

use crate::error::{Error, ModelError, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// How weights are stored on disk (always f32 in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    /// Tensors of two or more dimensions (conv weights) as int8 with one f32 scale per
    /// output row (`NAME` I8 and `NAME.q8_scale`, symmetric: `w ≈ q · scale`), the rest as
    /// f16. A quarter of f32's size; the quality cost is measured in the README.
    Int8,
}

impl Precision {
    /// How a model file stores its weights: int8 if any tensor is, else f16 if any tensor is
    /// a 16-bit float, else f32 (so that a rewrite can keep it).
    pub fn of_file(path: &Path) -> Result<Precision> {
        let bytes = crate::io::read_regular(path, MAX_FILE_BYTES, "model file")?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::model(path, format!("bad safetensors data: {e}")))?;
        let dtypes: Vec<Dtype> = st.tensors().iter().map(|(_, v)| v.dtype()).collect();
        Ok(if dtypes.contains(&Dtype::I8) {
            Precision::Int8
        } else if dtypes.iter().any(|d| matches!(d, Dtype::F16 | Dtype::BF16)) {
            Precision::F16
        } else {
            Precision::F32
        })
    }
}

/// Suffix of an int8 tensor's per-row scales.
pub const Q8_SCALE: &str = ".q8_scale";

/// Tensors by name plus the file's string metadata.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub metadata: BTreeMap<String, String>,
}

/// Largest model file we are willing to read (the VGG16 loss network is 59 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::io::read_regular(path, MAX_FILE_BYTES, "model file")?;
        Self::from_bytes(&bytes).map_err(|msg| Error::model(path, msg))
    }

    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, ModelError> {
        if bytes.len() < 8 {
            return Err(format!("too short to be safetensors ({} bytes)", bytes.len()).into());
        }
        let (_, md) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("bad safetensors header: {e}"))?;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| format!("bad safetensors data: {e}"))?;
        let mut tensors = HashMap::new();
        let mut int8 = Vec::new();
        for (name, view) in st.tensors() {
            if view.dtype() == Dtype::I8 {
                let q: Vec<f32> = view.data().iter().map(|&b| b as i8 as f32).collect();
                int8.push((name, view.shape().to_vec(), q));
                continue;
            }
            let shape = view.shape().to_vec();
            let data = view.data();
            let vals: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                    .collect(),
                other => {
                    return Err(format!("tensor `{name}` has unsupported dtype {other:?}").into())
                }
            };
            if let Some(&value) = vals.iter().find(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite { name, value });
            }
            tensors.insert(name, (shape, vals));
        }
        // int8 tensors: each row times its scale.
        for (name, shape, mut q) in int8 {
            let key = format!("{name}{Q8_SCALE}");
            let rows = shape.first().copied().unwrap_or(1).max(1);
            let scale = match tensors.remove(&key) {
                Some((s, v)) if s == [rows] => v,
                Some((s, _)) => {
                    return Err(ModelError::Shape {
                        name: key,
                        got: s,
                        want: vec![rows],
                    })
                }
                None => return Err(ModelError::MissingTensor(key)),
            };
            let per = q.len() / rows;
            for (row, s) in q.chunks_mut(per.max(1)).zip(&scale) {
                row.iter_mut().for_each(|v| *v *= s);
            }
            tensors.insert(name, (shape, q));
        }
        let metadata = md
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        Ok(TensorFile { tensors, metadata })
    }

    /// Take a tensor that must exist with exactly this shape.
    pub fn take(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> std::result::Result<Vec<f32>, ModelError> {
        match self.tensors.remove(name) {
            None => Err(ModelError::MissingTensor(name.into())),
            Some((got, _)) if got != shape => Err(ModelError::Shape {
                name: name.into(),
                got,
                want: shape.to_vec(),
            }),
            Some((_, v)) => Ok(v),
        }
    }

    /// Serialise as f32 or f16 safetensors, written atomically.
    pub fn write(&self, path: &Path, half: bool) -> Result<()> {
        self.write_as(path, if half { Precision::F16 } else { Precision::F32 })
    }

    /// Serialise in `precision`, written atomically.
    pub fn write_as(&self, path: &Path, precision: Precision) -> Result<()> {
        let bytes = self
            .to_bytes(precision)
            .map_err(|e| Error::output(path, e))?;
        crate::io::write_atomic(path, &bytes)
    }

    /// The safetensors bytes in `precision`.
    pub fn to_bytes(&self, precision: Precision) -> std::result::Result<Vec<u8>, String> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let mut bufs = Vec::new();
        let f16 = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|x| f32_to_f16(*x).to_le_bytes())
                .collect()
        };
        for n in &names {
            let (shape, v) = &self.tensors[*n];
            match precision {
                Precision::F32 => bufs.push((
                    n.to_string(),
                    Dtype::F32,
                    shape.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )),
                // Convolution weights only: a norm's per-style rows stay float16.
                Precision::Int8 if shape.len() == 4 && shape[0] > 0 => {
                    let per = v.len() / shape[0];
                    let mut q = Vec::with_capacity(v.len());
                    let mut scales = Vec::with_capacity(shape[0]);
                    for row in v.chunks(per.max(1)) {
                        let m = row.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                        let s = if m > 0.0 { m / 127.0 } else { 1.0 };
                        scales.push(s);
                        q.extend(
                            row.iter()
                                .map(|x| (x / s).round().clamp(-127.0, 127.0) as i8 as u8),
                        );
                    }
                    bufs.push((n.to_string(), Dtype::I8, shape.clone(), q));
                    bufs.push((
                        format!("{n}{Q8_SCALE}"),
                        Dtype::F32,
                        vec![shape[0]],
                        scales.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ));
                }
                _ => bufs.push((n.to_string(), Dtype::F16, shape.clone(), f16(v))),
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b)
                        .expect("consistent view"),
                )
            })
            .collect();
        let md: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        safetensors::serialize(views, &Some(md)).map_err(|e| e.to_string())
    }
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // subnormal
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

pub fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let man = x & 0x7f_ffff;
    if exp == 255 {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let mut r = m >> shift;
        let rem = m & ((1 << shift) - 1);
        if rem > half || (rem == half && (r & 1) == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && (r & 1) == 1) {
        r += 1;
    }
    sign | r as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// int8 storage: per-row scales, a quarter of f32's size, within half a step of each
    /// row's scale; 1-D tensors go to f16; a missing scale is named.
    #[test]
    fn int8_round_trips_within_half_a_step_per_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = TensorFile::default();
        let w: Vec<f32> = (0..4 * 9)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) * (1 + i / 9) as f32 * 0.01)
            .collect();
        f.tensors.insert("w".into(), (vec![4, 1, 3, 3], w.clone()));
        f.tensors
            .insert("b".into(), (vec![4], vec![0.5, -0.25, 1.0, 2.0]));
        let p = dir.path().join("q.safetensors");
        f.write_as(&p, Precision::Int8).unwrap();
        let back = TensorFile::read(&p).unwrap();
        assert_eq!(back.tensors.len(), 2, "the scales are folded back in");
        let (s, got) = &back.tensors["w"];
        assert_eq!(s, &vec![4, 1, 3, 3]);
        for (row, (g, want)) in got.chunks(9).zip(w.chunks(9)).enumerate() {
            let step = want.iter().fold(0.0f32, |a, x| a.max(x.abs())) / 127.0;
            for (a, b) in g.iter().zip(want) {
                assert!((a - b).abs() <= 0.5 * step + 1e-7, "row {row}: {a} vs {b}");
            }
        }
        assert_eq!(back.tensors["b"].1, vec![0.5, -0.25, 1.0, 2.0]);
        // An int8 tensor without its scales is refused by name.
        let bytes = std::fs::read(&p).unwrap();
        let needle = Q8_SCALE.as_bytes();
        let at = bytes
            .windows(needle.len())
            .position(|x| x == needle)
            .unwrap();
        let mut broken = bytes.clone();
        broken[at + 1] = b'x';
        let e = TensorFile::from_bytes(&broken).unwrap_err();
        assert!(e.to_string().contains("missing tensor `w.q8_scale`"), "{e}");
    }

    #[test]
    fn f16_round_trip() {
        for &v in &[0.0f32, 1.0, -2.5, 65504.0, 1e-5, 0.333_333_3, -1e-7] {
            let back = f16_to_f32(f32_to_f16(v));
            assert!((back - v).abs() <= v.abs() * 1e-3 + 1e-7, "{v} -> {back}");
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(TensorFile::from_bytes(b"")
            .unwrap_err()
            .to_string()
            .contains("too short"));
        assert!(
            TensorFile::from_bytes(b"\xff\xff\xff\xff\xff\xff\xff\x7fxxxx")
                .unwrap_err()
                .to_string()
                .contains("header")
        );
        assert!(
            TensorFile::from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        ").is_err()
        );
    }
}
