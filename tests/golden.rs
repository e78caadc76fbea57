//! The numerical contract: reproduce the reference tensors in ../shared/golden.
use impasto::model::format::TensorFile;
use impasto::model::{Transformer, Vgg16};
use impasto::tensor::Tensor;
use impasto::testutil::shared;

fn tensor(f: &TensorFile, name: &str) -> Tensor {
    let (s, v) = &f.tensors[name];
    assert_eq!(s.len(), 4, "{name} is not 4-D");
    Tensor::from_vec(s[0], s[1], s[2], s[3], v.clone())
}

#[test]
fn transformer_reproduces_pytorch() {
    let (Some(w), Some(io)) = (
        shared(
            "golden/transformer_weights.safetensors",
            "transformer_reproduces_pytorch",
        ),
        shared(
            "golden/transformer_io.safetensors",
            "transformer_reproduces_pytorch",
        ),
    ) else {
        return;
    };
    let model = Transformer::load(&w).unwrap();
    let io = TensorFile::read(&io).unwrap();
    let y = model.forward(&tensor(&io, "input"));
    let err = y.rel_error(&tensor(&io, "output"));
    eprintln!("transformer relative error {err:.3e}");
    assert!(err < 1e-4, "relative error {err}");
}

fn check_vgg(weights: &str, golden: &str, test: &str) {
    let (Some(w), Some(g)) = (shared(weights, test), shared(golden, test)) else {
        return;
    };
    let vgg = Vgg16::load(&w).unwrap();
    let g = TensorFile::read(&g).unwrap();
    let taps = vgg.forward(&tensor(&g, "input"));
    for (t, name) in taps.iter().zip(impasto::model::vgg::TAP_NAMES) {
        let err = t.rel_error(&tensor(&g, name));
        eprintln!("{test} {name}: relative error {err:.3e}");
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

#[test]
fn vgg_caffe_reproduces_pytorch() {
    check_vgg(
        "weights/vgg16_caffe_relu4_3.safetensors",
        "golden/vgg_io.safetensors",
        "vgg_caffe_reproduces_pytorch",
    );
}

#[test]
fn vgg_torchvision_reproduces_pytorch() {
    check_vgg(
        "weights/vgg16_torchvision_relu4_3.safetensors",
        "golden/vgg_torchvision_io.safetensors",
        "vgg_torchvision_reproduces_pytorch",
    );
}

#[test]
fn imported_ml5_udnie_reproduces_onnxruntime() {
    let (Some(m), Some(g)) = (
        shared(
            "models/ml5-fast-style-transfer/onnx/udnie.onnx",
            "imported_ml5_udnie_reproduces_onnxruntime",
        ),
        shared(
            "golden/ml5_udnie_io.safetensors",
            "imported_ml5_udnie_reproduces_onnxruntime",
        ),
    ) else {
        return;
    };
    let model = impasto::onnx::import(&m).unwrap();
    // Through the model file format and back, as `impasto import` does.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("udnie.safetensors");
    model.save(&p, false).unwrap();
    let model = Transformer::load(&p).unwrap();
    let g = TensorFile::read(&g).unwrap();
    let y = model.forward(&tensor(&g, "input"));
    let err = y.max_abs_diff(&tensor(&g, "output"));
    eprintln!("ml5 udnie max abs error {err:.3e}");
    assert!(err < 0.5, "max abs error {err}");
}
