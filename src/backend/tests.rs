//! The conformance harness: every op of a backend against [`Reference`] on random shapes
//! (odd sizes, batch 2, every convolution kind both architectures and VGG use). A new
//! backend gets one `#[test]` calling [`conformance`].

use super::*;
use crate::rng::Rng;

fn random(rng: &mut Rng, n: usize, c: usize, h: usize, w: usize) -> Tensor {
    Tensor::from_vec(
        n,
        c,
        h,
        w,
        (0..n * c * h * w).map(|_| rng.f32() * 2.0 - 1.0).collect(),
    )
}

fn vec(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect()
}

#[track_caller]
fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let e = crate::tensor::rel_error(got, want);
    assert!(e <= tol, "{what}: relative error {e:.2e} > {tol:.0e}");
}

#[track_caller]
fn same<B: Backend>(b: &B, what: &str, got: &B::Tensor, want: &Tensor, tol: f64) {
    let g = b.download(got);
    assert_eq!(g.shape(), want.shape(), "{what}: shape");
    close(what, &g.data, &want.data, tol);
}

/// Every convolution kind, with odd and even sizes.
fn conv_specs() -> Vec<(ConvSpec, usize, usize)> {
    let s = |c_in, c_out, k, stride, padding, resample, bias| ConvSpec {
        c_in,
        c_out,
        k,
        stride,
        padding,
        resample,
        bias,
    };
    use Padding::*;
    use Resample::{None as Plain, Transposed, Upsample};
    vec![
        (s(3, 5, 9, 1, Reflect, Plain, true), 13, 11),
        (s(4, 6, 3, 1, Reflect, Plain, true), 9, 7),
        (s(4, 6, 3, 2, Reflect, Plain, true), 10, 9),
        (s(5, 4, 3, 1, Reflect, Upsample, true), 5, 6),
        (s(5, 3, 9, 1, Reflect, Plain, true), 12, 10),
        (s(3, 4, 9, 1, SameUpper, Plain, false), 11, 12),
        (s(4, 6, 3, 2, SameUpper, Plain, false), 9, 10),
        (s(6, 6, 3, 1, SameUpper, Plain, false), 8, 7),
        (s(6, 4, 3, 1, Zero, Transposed, false), 5, 4),
        (s(6, 8, 3, 1, Zero, Plain, true), 8, 9),
        // Wide enough for the CPU backend's Winograd and direct kernels.
        (s(32, 32, 3, 1, Reflect, Plain, true), 16, 12),
        (s(32, 32, 3, 1, Zero, Plain, true), 12, 16),
    ]
}

/// Relative error of bf16 products summed in f32 (a few times 2⁻⁹).
const BF16: f64 = 1e-2;

/// The CPU backend's tolerances (f64 sums, exact kernels).
pub const CPU: Tolerances = Tolerances {
    conv: 1e-5,
    reduction: 1e-6,
    loss: 1e-9,
};

pub fn conformance<B: Backend>(b: &B, tol: &Tolerances) {
    let r = Reference;
    let mut rng = Rng::new(7);

    // Moving data.
    let x = random(&mut rng, 2, 3, 5, 7);
    assert_eq!(b.dims(&b.upload(&x)), [2, 3, 5, 7]);
    assert_eq!(b.download(&b.upload(&x)), x, "upload/download round trip");
    assert_eq!(
        b.download_owned(b.upload_owned(x.clone())),
        x,
        "owned round trip"
    );

    // Convolutions: forward (both precisions), backward, input gradient, update.
    for (spec, h, w) in conv_specs() {
        let what = format!("{spec:?} at {h}x{w}");
        let n_w: usize = spec.weight_shape().iter().product();
        let wt = vec(&mut rng, n_w);
        let bias = spec.bias.then(|| vec(&mut rng, spec.c_out));
        let (cb, cr) = (
            b.conv(&spec, &wt, bias.as_deref()),
            r.conv(&spec, &wt, bias.as_deref()),
        );
        let x = random(&mut rng, 2, spec.c_in, h, w);
        let want = r.conv_forward(&cr, &x, true);
        let (ho, wo) = spec.out_size(h, w);
        assert_eq!((want.h, want.w), (ho, wo), "{what}: reference output size");
        let xb = b.upload(&x);
        same(
            b,
            &format!("{what} forward"),
            &b.conv_forward(&cb, &xb, true),
            &want,
            tol.conv,
        );
        same(
            b,
            &format!("{what} fast forward"),
            &b.conv_forward(&cb, &xb, false),
            &want,
            1e-4,
        );
        // bf16 products (AMX, where the CPU has it; the f32 kernels elsewhere): within the
        // rounding of 8-bit mantissas.
        same(
            b,
            &format!("{what} bf16 forward"),
            &b.conv_forward_bf16(&cb, &xb),
            &want,
            BF16,
        );
        let dy = random(&mut rng, 2, spec.c_out, ho, wo);
        let gr = r.conv_backward(&cr, &x, &dy, true);
        let gb = b.conv_backward_bf16(&cb, &xb, &b.upload(&dy), true);
        same(b, &format!("{what} bf16 dw"), &gb.dw, &gr.dw, tol.conv);
        let dx = gb.dx.expect("dx wanted");
        same(
            b,
            &format!("{what} bf16 dx"),
            &dx,
            gr.dx.as_ref().unwrap(),
            BF16,
        );
        for want_dx in [true, false] {
            let gb = b.conv_backward(&cb, &xb, &b.upload(&dy), want_dx);
            same(b, &format!("{what} dw"), &gb.dw, &gr.dw, tol.conv);
            if spec.bias {
                same(b, &format!("{what} db"), &gb.db, &gr.db, tol.conv);
            }
            match (want_dx, &gb.dx) {
                (true, Some(dx)) => same(
                    b,
                    &format!("{what} dx"),
                    dx,
                    gr.dx.as_ref().unwrap(),
                    tol.conv,
                ),
                (false, None) => {}
                _ => panic!(
                    "{what}: dx returned {} when want_dx = {want_dx}",
                    gb.dx.is_some()
                ),
            }
        }
        if spec.resample == Resample::None {
            let d = b.conv_input_grad(&cb, &b.upload(&dy), h, w);
            same(
                b,
                &format!("{what} input grad"),
                &d,
                gr.dx.as_ref().unwrap(),
                1e-4,
            );
            let d = b.conv_input_grad_bf16(&cb, &b.upload(&dy), h, w);
            let want = gr.dx.as_ref().unwrap();
            same(b, &format!("{what} bf16 input grad"), &d, want, BF16);
        }
        let wt2 = vec(&mut rng, n_w);
        let mut cb = cb;
        b.conv_set(
            &mut cb,
            &b.upload(&vector(wt2.clone())),
            bias.as_ref().map(|v| b.upload(&vector(v.clone()))).as_ref(),
        );
        let want2 = r.conv_forward(&r.conv(&spec, &wt2, bias.as_deref()), &x, true);
        same(
            b,
            &format!("{what} after update"),
            &b.conv_forward(&cb, &xb, true),
            &want2,
            tol.conv,
        );
    }

    // Instance norm: moments of a region, apply (plain, ReLU, residual), backward.
    let x = random(&mut rng, 2, 5, 9, 11);
    let xb = b.upload(&x);
    for (s, rows, cols) in [(0, (0, 9), (0, 11)), (1, (2, 7), (3, 10))] {
        let (mb, mr) = (b.moments(&xb, s, rows, cols), r.moments(&x, s, rows, cols));
        assert_eq!(mb.count, mr.count, "moments count");
        for c in 0..5 {
            // Values in [-1, 1]: float32 partial sums may be off by ~1e-7 per term.
            let n = mr.count as f64;
            assert!(
                (mb.sum[c] - mr.sum[c]).abs() < tol.reduction * n,
                "moments sum"
            );
            assert!(
                (mb.sumsq[c] - mr.sumsq[c]).abs() < tol.reduction * n,
                "moments sumsq"
            );
        }
    }
    let st = r.moments(&x, 1, (0, 9), (0, 11)).stats(1e-5);
    let (g, be) = (vector(vec(&mut rng, 5)), vector(vec(&mut rng, 5)));
    let (gb, beb) = (b.upload(&g), b.upload(&be));
    let res = random(&mut rng, 2, 5, 9, 11);
    for (relu, residual) in [
        (false, None),
        (true, None),
        (false, Some(&res)),
        (true, Some(&res)),
    ] {
        let mut want = x.clone();
        r.norm_apply(&mut want, 1, &st, &g, &be, relu, residual);
        let mut got = b.upload(&x);
        let rb = residual.map(|t| b.upload(t));
        b.norm_apply(&mut got, 1, &st, &gb, &beb, relu, rb.as_ref());
        same(
            b,
            &format!("norm apply relu={relu} residual={}", residual.is_some()),
            &got,
            &want,
            1e-6,
        );
    }
    // Own statistics over a rectangle, computed where the tensor lives (values offset by 50
    // so that a variance from unshifted f32 sums would cancel).
    let shifted = Tensor::from_vec(2, 5, 9, 11, x.data.iter().map(|v| 50.0 + v).collect());
    for (region, relu, residual) in [
        (((0, 9), (0, 11)), false, None),
        (((2, 7), (3, 10)), true, Some(&res)),
    ] {
        let mut want = shifted.clone();
        r.norm_own(&mut want, 1, region, 1e-5, &g, &be, relu, residual);
        let mut got = b.upload(&shifted);
        let rb = residual.map(|t| b.upload(t));
        b.norm_own(&mut got, 1, region, 1e-5, &gb, &beb, relu, rb.as_ref());
        same(
            b,
            &format!("norm own {region:?}"),
            &got,
            &want,
            tol.reduction.max(1e-5),
        );
    }
    // Training's norm of the whole batch: x̂, 1/σ and the output, on values offset by 5
    // (the CPU's float32 partial sums of squares lose digits on larger offsets).
    let offset = Tensor::from_vec(2, 5, 9, 11, x.data.iter().map(|v| 5.0 + v).collect());
    for (relu, residual) in [(true, None), (false, Some(&res))] {
        let mut want = offset.clone();
        let (xr, ir) = r.norm_train(&mut want, 1e-5, &g, &be, relu, residual);
        let mut got = b.upload(&offset);
        let rb = residual.map(|t| b.upload(t));
        let (xg, ig) = b.norm_train(&mut got, 1e-5, &gb, &beb, relu, rb.as_ref());
        let what = format!("norm train relu={relu}");
        let tol = tol.reduction.max(1e-5);
        same(b, &format!("{what} output"), &got, &want, tol);
        same(b, &format!("{what} x̂"), &xg, &xr, tol);
        same(b, &format!("{what} 1/σ"), &ig, &ir, tol);
    }
    let inv = Tensor::from_vec(
        2,
        5,
        1,
        1,
        (0..2)
            .flat_map(|s| r.moments(&x, s, (0, 9), (0, 11)).stats(1e-3).inv_std)
            .collect(),
    );
    let dy = random(&mut rng, 2, 5, 9, 11);
    let (dxr, dgr, dbr) = r.norm_backward(&x, &dy, &inv, &g);
    let (dxb, dgb, dbb) = b.norm_backward(&xb, &b.upload(&dy), &b.upload(&inv), &gb);
    same(b, "norm backward dx", &dxb, &dxr, 1e-5);
    same(
        b,
        "norm backward dgamma",
        &dgb,
        &dgr,
        tol.reduction.max(1e-5),
    );
    same(
        b,
        "norm backward dbeta",
        &dbb,
        &dbr,
        tol.reduction.max(1e-5),
    );

    // Elementwise.
    let (mut a, mut ar) = (b.upload(&x), x.clone());
    b.relu(&mut a);
    r.relu(&mut ar);
    same(b, "relu", &a, &ar, 0.0);
    let (mut d, mut dr) = (b.upload(&dy), dy.clone());
    b.relu_mask(&mut d, &xb);
    r.relu_mask(&mut dr, &x);
    same(b, "relu mask", &d, &dr, 0.0);
    let (mut s, mut sr) = (b.upload(&x), x.clone());
    b.add(&mut s, &b.upload(&dy));
    r.add(&mut sr, &dy);
    same(b, "add", &s, &sr, 0.0);
    let big = random(&mut rng, 2, 3, 7, 5);
    let big = Tensor::from_vec(
        2,
        3,
        7,
        5,
        big.data.iter().map(|v| 300.0 + 100.0 * v).collect(),
    );
    same(
        b,
        "centre",
        &b.centre(&b.upload(&big)),
        &r.centre(&big),
        tol.reduction,
    );
    let (src, sc, sh) = ([2, 1, 0], [1.5, -0.5, 2.0], [-100.0, 3.0, 0.25]);
    same(
        b,
        "channel affine",
        &b.channel_affine(&b.upload(&big), src, sc, sh),
        &r.channel_affine(&big, src, sc, sh),
        1e-6,
    );
    let d3 = random(&mut rng, 2, 3, 7, 5);
    same(
        b,
        "channel affine backward",
        &b.channel_affine_backward(&b.upload(&d3), src, sc),
        &r.channel_affine_backward(&d3, src, sc),
        1e-6,
    );
    let tanh = OutputFn::ScaledTanh {
        scale: 150.0,
        shift: 127.5,
    };
    let pre = Tensor::from_vec(
        2,
        3,
        7,
        5,
        big.data.iter().map(|v| (v - 300.0) / 40.0).collect(),
    );
    for f in [OutputFn::Linear, tanh] {
        let (mut o, mut or) = (b.upload(&pre), pre.clone());
        b.output(&mut o, f);
        r.output(&mut or, f);
        same(b, &format!("output {f:?}"), &o, &or, 1e-6);
        let (mut g, mut gr) = (b.upload(&d3), d3.clone());
        b.output_backward(&mut g, &b.upload(&pre), f);
        r.output_backward(&mut gr, &pre, f);
        same(b, &format!("output backward {f:?}"), &g, &gr, 1e-5);
    }

    // Pooling, odd sizes included (the last row/column is dropped).
    for (h, w) in [(8, 6), (9, 7)] {
        let x = random(&mut rng, 2, 3, h, w);
        let y = r.max_pool2(&x);
        same(b, "max pool", &b.max_pool2(&b.upload(&x)), &y, 0.0);
        let dy = random(&mut rng, 2, 3, y.h, y.w);
        same(
            b,
            "max pool backward",
            &b.max_pool2_backward(&b.upload(&x), &b.upload(&dy)),
            &r.max_pool2_backward(&x, &dy),
            0.0,
        );
    }

    // Losses.
    let f = random(&mut rng, 2, 6, 7, 9);
    let fb = b.upload(&f);
    let (gb, gr) = (b.gram(&fb), r.gram(&f));
    for s in 0..2 {
        close("gram", &gb[s], &gr[s], tol.conv);
    }
    let dg: Vec<Vec<f32>> = (0..2).map(|_| vec(&mut rng, 36)).collect();
    same(
        b,
        "gram backward",
        &b.gram_backward(&fb, &dg),
        &r.gram_backward(&f, &dg),
        tol.conv,
    );
    let target = Tensor::from_vec(1, 1, 6, 6, r.gram(&random(&mut rng, 1, 6, 5, 5)).remove(0));
    let (ls, gs) = b.style_loss(&fb, &b.upload(&target), 7.0);
    let (lsr, gsr) = r.style_loss(&f, &target, 7.0);
    same(b, "style loss gradient", &gs, &gsr, tol.conv);
    let t = random(&mut rng, 2, 6, 7, 9);
    let ((lm, gm), (lmr, gmr)) = (b.mse(&fb, &b.upload(&t), 3.0), r.mse(&f, &t, 3.0));
    same(b, "mse gradient", &gm, &gmr, 1e-6);
    let ((lt, gt), (ltr, gtr)) = (b.tv(&fb, 0.5), r.tv(&f, 0.5));
    same(b, "tv gradient", &gt, &gtr, 1e-6);
    let sq = b.sum_squares(&fb);
    let known = b.scalar(0.25);
    // Every scalar in one read.
    let got = b.read_scalars(&[&ls, &lm, &lt, &sq, &known]).expect("read");
    let want = [lsr, lmr, ltr, r.sum_squares(&f), 0.25];
    // The style loss is made of Gram matrices: the convolutions' tolerance.
    let tols = [tol.conv, tol.loss, tol.loss, tol.loss, 0.0];
    for (what, ((g, w), t)) in ["style", "mse", "tv", "sum of squares", "known"]
        .iter()
        .zip(got.iter().zip(want).zip(tols))
    {
        assert!((g - w).abs() <= t * w.abs(), "{what}: {g} vs {w}");
    }

    // Adam: three steps of one tensor (the second and third with nonzero moments).
    let (mut p, mut pr) = (b.upload(&f), f.clone());
    let zeros = Tensor::zeros(2, 6, 7, 9);
    let (mut m, mut v) = (b.upload(&zeros), b.upload(&zeros));
    let (mut mr, mut vr) = (zeros.clone(), zeros.clone());
    for t in 1..=3 {
        let k = AdamStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            bc1: 1.0 - 0.9f64.powi(t),
            bc2: 1.0 - 0.999f64.powi(t),
        };
        let g = random(&mut rng, 2, 6, 7, 9);
        b.adam(&mut p, &b.upload(&g), &mut m, &mut v, &k);
        r.adam(&mut pr, &g, &mut mr, &mut vr, &k);
    }
    same(b, "adam parameters", &p, &pr, 1e-6);
    same(b, "adam first moments", &m, &mr, 1e-6);
    same(b, "adam second moments", &v, &vr, 1e-5);
}

#[test]
fn cpu_backend_matches_the_reference_on_every_op() {
    conformance(&Cpu, &CPU);
}

/// The wgpu backend on whatever adapter there is (lavapipe on a machine without a GPU).
/// Strict runs fail when there is none: a skip would prove nothing.
#[cfg(feature = "gpu")]
#[test]
fn wgpu_backend_matches_the_reference_on_every_op() {
    let Some(b) = crate::testutil::gpu() else {
        return;
    };
    conformance(&b, &super::wgpu::TOLERANCES);
}

/// The reference's ops against their own definitions where a second derivation is cheap:
/// a transposed convolution is the adjoint of the strided convolution it reverses, and
/// every backward pass is the adjoint of its forward pass (⟨A·x, y⟩ = ⟨x, Aᵀ·y⟩).
#[test]
fn reference_convolution_gradients_are_adjoint_to_their_forward_passes() {
    let r = Reference;
    let mut rng = Rng::new(5);
    for (mut spec, h, w) in conv_specs() {
        spec.bias = false;
        let n_w: usize = spec.weight_shape().iter().product();
        let c = r.conv(&spec, &vec(&mut rng, n_w), None);
        let x = random(&mut rng, 1, spec.c_in, h, w);
        let y = r.conv_forward(&c, &x, true);
        let dy = random(&mut rng, 1, spec.c_out, y.h, y.w);
        let dx = r.conv_backward(&c, &x, &dy, true).dx.unwrap();
        let dot = |a: &Tensor, b: &Tensor| -> f64 {
            a.data
                .iter()
                .zip(&b.data)
                .map(|(p, q)| *p as f64 * *q as f64)
                .sum()
        };
        let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
        assert!(
            (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
            "{spec:?}: {lhs} vs {rhs}"
        );
    }
}
