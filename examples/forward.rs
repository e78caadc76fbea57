//! The raw network output for an input tensor, for cross-checks with other engines:
//!
//!     cargo run --release --example forward -- MODEL IN.safetensors OUT.safetensors
//!
//! IN holds `input` [1,3,H,W] (RGB 0..255); OUT gets `output`.
use impasto::model::format::TensorFile;
use impasto::model::Transformer;
use impasto::tensor::Tensor;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        eprintln!("usage: forward MODEL IN.safetensors OUT.safetensors");
        std::process::exit(2);
    }
    let model = Transformer::load(a[1].as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let f = TensorFile::read(a[2].as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let (s, v) = &f.tensors["input"];
    let y = model.forward(&Tensor::from_vec(s[0], s[1], s[2], s[3], v.clone()));
    let mut out = TensorFile::default();
    out.tensors
        .insert("output".into(), (y.shape().to_vec(), y.data.clone()));
    out.write(a[3].as_ref(), false)
        .unwrap_or_else(|e| panic!("{e}"));
}
