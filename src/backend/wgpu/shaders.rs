//! The WGSL kernels, as source text.
//!
//! Every matrix product (the convolutions, their two gradients, the Gram matrix and its
//! gradient) is one tiled GEMM skeleton, [`gemm`], with three small functions spliced in:
//! `load_a(b, m, k)`, `load_b(b, k, n)` (an implicit-GEMM gather: the convolution's
//! im2col matrix is never written out) and `store(b, split, m, n, v)`. A workgroup of
//! 16×16 threads computes a 64×64 tile of the product, each thread 4×4 of it, stepping
//! through K in slices of 16 that the workgroup first stages in shared memory. Sums are
//! f32 (WGSL has no f64); long reductions are split over workgroups (`split`) and summed
//! afterwards by `sum_splits`.
//!
//! Parameters travel in a read-only storage buffer of u32 words (`P`), which WGSL treats
//! as uniform, so the loops that contain barriers stay in uniform control flow.

/// The GEMM skeleton's parameter words: 0 M, 1 N, 2 K, 3 splits, 4 K per split; the kernel's
/// own words follow from 8 on.
const GEMM: &str = r#"
@group(0) @binding(0) var<storage, read> P: array<u32>;
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
var<workgroup> As: array<f32, 1024>;
var<workgroup> Bs: array<f32, 1024>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let M = P[0]; let N = P[1]; let K = P[2]; let splits = P[3]; let kchunk = P[4];
    let tiles_n = (N + BN - 1u) / BN;
    let tiles_m = (M + BM - 1u) / BM;
    let lin = wid.y * nwg.x + wid.x;
    if (lin >= tiles_m * tiles_n) { return; }
    let tm = lin / tiles_n;
    let tn = lin % tiles_n;
    let b = wid.z / splits;
    let split = wid.z % splits;
    let k0 = split * kchunk;
    let k1 = min(K, k0 + kchunk);
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
    for (var kt = k0; kt < k1; kt += BK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            var kk: u32; var mm: u32;
            if (A_K_FAST) { kk = e % BK; mm = e / BK; } else { kk = e / BM; mm = e % BM; }
            let gm = tm * BM + mm; let gk = kt + kk;
            var v = 0.0;
            if (gm < M && gk < k1) { v = load_a(b, gm, gk); }
            As[kk * BM + mm] = v;
        }
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            var kk: u32; var nn: u32;
            if (B_K_FAST) { kk = e % BK; nn = e / BK; } else { kk = e / BN; nn = e % BN; }
            let gn = tn * BN + nn; let gk = kt + kk;
            var v = 0.0;
            if (gn < N && gk < k1) { v = load_b(b, gk, gn); }
            Bs[kk * BN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>; var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = As[kk * BM + lid.y + 16u * i];
                bv[i] = Bs[kk * BN + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], bv[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let gm = tm * BM + lid.y + 16u * i;
            let gn = tn * BN + lid.x + 16u * j;
            if (gm < M && gn < N) { store(b, split, gm, gn, acc[i * 4u + j]); }
        }
    }
}
"#;

/// A GEMM kernel: the skeleton with the kernel's bindings and loaders.
pub fn gemm(body: &str, a_k_fast: bool, b_k_fast: bool) -> String {
    format!(
        "const A_K_FAST: bool = {a_k_fast};\nconst B_K_FAST: bool = {b_k_fast};\n{GEMM}\n{body}"
    )
}

/// A convolution's geometry words (from 8): 8 batch, 9 c_in, 10 h, 11 w, 12 c_out, 13 ho,
/// 14 wo, 15 k, 16 stride, 17 pad top, 18 pad left, 19 mode (1 reflect), 20 upsample,
/// 21 dilate, 22 logical h, 23 logical w, 24 has bias.
const GEOMETRY: &str = r#"
fn reflect_into(l: i32, n: i32) -> i32 {
    if (n == 1) { return 0; }
    var x = l;
    for (var i = 0; i < 8; i++) {
        if (x < 0) { x = -x; } else if (x >= n) { x = 2 * (n - 1) - x; } else { break; }
    }
    return x;
}

// The input row (or column) that logical position `l` reads, or -1 for a zero.
fn source(l: i32, len: i32) -> i32 {
    let mode = P[19]; let up = i32(P[20]); let dil = i32(P[21]);
    var q = l;
    if (mode == 1u) { q = reflect_into(l, len); } else if (l < 0 || l >= len) { return -1; }
    if (dil > 1) {
        if (q % dil != 0) { return -1; }
        return q / dil;
    }
    return q / up;
}
"#;

/// Element `(kidx, p)` of a sample's im2col matrix, read from `X`.
const GATHER_X: &str = r#"
// Element (ci·k² + ky·k + kx, oy·wo + ox) of sample `n`'s im2col matrix.
fn gather_x(n: u32, kidx: u32, p: u32) -> f32 {
    let k = P[15]; let wo = P[14];
    let ci = kidx / (k * k); let r = kidx % (k * k);
    let ky = r / k; let kx = r % k;
    let oy = p / wo; let ox = p % wo;
    let ly = i32(oy * P[16] + ky) - i32(P[17]);
    let lx = i32(ox * P[16] + kx) - i32(P[18]);
    let iy = source(ly, i32(P[22]));
    let ix = source(lx, i32(P[23]));
    if (iy < 0 || ix < 0) { return 0.0; }
    return X[((n * P[9] + ci) * P[10] + u32(iy)) * P[11] + u32(ix)];
}
"#;

/// `y = W · im2col(x) + b`, one sample per `z`.
pub fn conv_forward() -> String {
    let body = format!(
        r#"
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read> Bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
{GEOMETRY}
{GATHER_X}
fn load_a(b: u32, m: u32, k: u32) -> f32 {{ return W[m * P[2] + k]; }}
fn load_b(b: u32, k: u32, n: u32) -> f32 {{ return gather_x(b, k, n); }}
fn store(b: u32, s: u32, m: u32, n: u32, v: f32) {{
    var bias = 0.0;
    if (P[24] == 1u) {{ bias = Bias[m]; }}
    Y[(b * P[0] + m) * P[1] + n] = v + bias;
}}
"#
    );
    gemm(&body, true, false)
}

/// `dW = dy · im2col(x)ᵀ` over every sample and pixel (the GEMM's K), in `splits` partial
/// sums.
pub fn conv_weight_grad() -> String {
    let body = format!(
        r#"
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> DY: array<f32>;
@group(0) @binding(3) var<storage, read_write> Part: array<f32>;
{GEOMETRY}
{GATHER_X}
fn load_a(b: u32, m: u32, r: u32) -> f32 {{
    let hw = P[13] * P[14];
    return DY[((r / hw) * P[12] + m) * hw + r % hw];
}}
fn load_b(b: u32, r: u32, kidx: u32) -> f32 {{
    let hw = P[13] * P[14];
    return gather_x(r / hw, kidx, r % hw);
}}
fn store(b: u32, s: u32, m: u32, n: u32, v: f32) {{ Part[(s * P[0] + m) * P[1] + n] = v; }}
"#
    );
    gemm(&body, true, true)
}

/// `dx = Wᵀ · dy`, gathered: input pixel (iy, ix) collects every output pixel and tap that
/// read it (through padding reflections, upsampling and strides). One sample per `z`.
pub fn conv_input_grad() -> String {
    let body = format!(
        r#"
@group(0) @binding(1) var<storage, read> DY: array<f32>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read_write> DX: array<f32>;
{GEOMETRY}
// The logical positions that read input row `i`: `cand` of them in `out`.
fn candidates(i: i32, len: i32, pad_before: i32, out: ptr<function, array<i32, 12>>) -> u32 {{
    let mode = P[19]; let up = i32(P[20]); let dil = i32(P[21]);
    var c = 0u;
    var bases: array<i32, 2>;
    var nb = 0;
    if (dil > 1) {{ bases[0] = i * dil; nb = 1; }} else {{
        for (var u = 0; u < up; u++) {{ bases[nb] = i * up + u; nb++; }}
    }}
    let lo = -pad_before;
    let hi = len + i32(P[15]);
    for (var j = 0; j < nb; j++) {{
        let base = bases[j];
        if (mode != 1u) {{ (*out)[c] = base; c++; continue; }}
        if (len == 1) {{
            for (var l = lo; l < hi && c < 12u; l++) {{ (*out)[c] = l; c++; }}
            continue;
        }}
        let period = 2 * (len - 1);
        for (var m = -2; m <= 2; m++) {{
            let a = base + m * period;
            if (a >= lo && a < hi && c < 12u) {{ (*out)[c] = a; c++; }}
            let r = -base + m * period;
            if (base != 0 && base != len - 1 && r >= lo && r < hi && c < 12u) {{ (*out)[c] = r; c++; }}
        }}
    }}
    return c;
}}
fn load_a(b: u32, m: u32, k: u32) -> f32 {{
    // m = input channel, k = (o, ky, kx)
    let kk = P[15] * P[15];
    let o = k / kk;
    return W[(o * P[9] + m) * kk + k % kk];
}}
fn load_b(b: u32, k: u32, n: u32) -> f32 {{
    let kk = P[15] * P[15];
    let o = k / kk; let r = k % kk;
    let ky = i32(r / P[15]); let kx = i32(r % P[15]);
    let iy = i32(n / P[11]); let ix = i32(n % P[11]);
    let s = i32(P[16]);
    let ho = i32(P[13]); let wo = i32(P[14]);
    var cy: array<i32, 12>; var cx: array<i32, 12>;
    let ny = candidates(iy, i32(P[22]), i32(P[17]), &cy);
    let nx = candidates(ix, i32(P[23]), i32(P[18]), &cx);
    var acc = 0.0;
    let plane = (b * P[12] + o) * P[13] * P[14];
    for (var a = 0u; a < ny; a++) {{
        let t = cy[a] + i32(P[17]) - ky;
        if (t < 0 || t % s != 0 || t / s >= ho) {{ continue; }}
        let oy = t / s;
        for (var c = 0u; c < nx; c++) {{
            let q = cx[c] + i32(P[18]) - kx;
            if (q < 0 || q % s != 0 || q / s >= wo) {{ continue; }}
            acc += DY[plane + u32(oy) * P[14] + u32(q / s)];
        }}
    }}
    return acc;
}}
fn store(b: u32, s: u32, m: u32, n: u32, v: f32) {{ DX[(b * P[0] + m) * P[1] + n] = v; }}
"#
    );
    gemm(&body, false, false)
}

/// Each sample's `F·Fᵀ` (C×C) in `splits` partial sums over the pixels.
pub fn gram() -> String {
    gemm(
        r#"
@group(0) @binding(1) var<storage, read> F: array<f32>;
@group(0) @binding(2) var<storage, read_write> Part: array<f32>;
fn load_a(b: u32, m: u32, k: u32) -> f32 { return F[(b * P[0] + m) * P[2] + k]; }
fn load_b(b: u32, k: u32, n: u32) -> f32 { return F[(b * P[0] + n) * P[2] + k]; }
fn store(b: u32, s: u32, m: u32, n: u32, v: f32) {
    Part[((b * P[3] + s) * P[0] + m) * P[1] + n] = v;
}
"#,
        true,
        true,
    )
}

/// `dF = dG · F` per sample.
pub fn gram_backward() -> String {
    gemm(
        r#"
@group(0) @binding(1) var<storage, read> DG: array<f32>;
@group(0) @binding(2) var<storage, read> F: array<f32>;
@group(0) @binding(3) var<storage, read_write> D: array<f32>;
fn load_a(b: u32, m: u32, k: u32) -> f32 { return DG[(b * P[0] + m) * P[2] + k]; }
fn load_b(b: u32, k: u32, n: u32) -> f32 { return F[(b * P[2] + k) * P[1] + n]; }
fn store(b: u32, s: u32, m: u32, n: u32, v: f32) { D[(b * P[0] + m) * P[1] + n] = v; }
"#,
        true,
        false,
    )
}

/// `out[b][i] = scale · Σ_s part[b][s][i]`: words 0 len (per batch), 1 splits, 2 scale (f32
/// bits).
pub const SUM_SPLITS: &str = r#"
@group(0) @binding(0) var<storage, read> P: array<u32>;
@group(0) @binding(1) var<storage, read> Part: array<f32>;
@group(0) @binding(2) var<storage, read_write> Out: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = g.x + g.y * nwg.x * 256u;
    let len = P[0]; let splits = P[1];
    let b = g.z;
    if (i >= len) { return; }
    var s = 0.0;
    for (var k = 0u; k < splits; k++) { s += Part[(b * splits + k) * len + i]; }
    Out[b * len + i] = s * bitcast<f32>(P[2]);
}
"#;

/// Per-plane sums over a rectangle, one workgroup per (channel, sample), with Kahan
/// compensation in each thread and a tree across threads. Mode 0: Σ(a − s), Σ(a − s)² and
/// the shift s = the rectangle's first value (so that the variance does not cancel); mode 1:
/// Σ b and Σ a·b. Words: 0 C, 1 H, 2 W, 3 row0, 4 row1, 5 col0, 6 col1, 7 first sample,
/// 8 mode. Output: three floats per plane.
pub const PLANE_SUMS: &str = r#"
@group(0) @binding(0) var<storage, read> P: array<u32>;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> Out: array<f32>;
var<workgroup> s1: array<f32, 256>;
var<workgroup> s2: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let C = P[0]; let H = P[1]; let Wd = P[2];
    let r0 = P[3]; let r1 = P[4]; let c0 = P[5]; let c1 = P[6];
    let c = wid.x; let n = P[7] + wid.y;
    let base = (n * C + c) * H * Wd;
    let cols = c1 - c0;
    let count = (r1 - r0) * cols;
    let shift = A[base + r0 * Wd + c0];
    var a1 = 0.0; var k1 = 0.0; var a2 = 0.0; var k2 = 0.0;
    for (var e = t; e < count; e += 256u) {
        let i = base + (r0 + e / cols) * Wd + c0 + e % cols;
        var v1: f32; var v2: f32;
        if (P[8] == 0u) { let d = A[i] - shift; v1 = d; v2 = d * d; } else { let g = B[i]; v1 = g; v2 = A[i] * g; }
        let y1 = v1 - k1; let t1 = a1 + y1; k1 = (t1 - a1) - y1; a1 = t1;
        let y2 = v2 - k2; let t2 = a2 + y2; k2 = (t2 - a2) - y2; a2 = t2;
    }
    s1[t] = a1; s2[t] = a2;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (t < h) { s1[t] += s1[t + h]; s2[t] += s2[t + h]; }
        workgroupBarrier();
    }
    if (t == 0u) {
        let o = (wid.y * C + c) * 3u;
        Out[o] = s1[0]; Out[o + 1u] = s2[0]; Out[o + 2u] = shift;
    }
}
"#;

/// Partial sums of a whole tensor's loss terms, one per workgroup of 256 threads × 64
/// elements. Mode 0: (a − b)², `b` repeating with period word 2 (a Gram target broadcast
/// over the batch); mode 1: total variation (squared differences to the neighbour below and
/// to the right; words 2 H, 3 W); mode 2: a². Words: 0 len, 1 mode.
pub const LOSS_SUMS: &str = r#"
@group(0) @binding(0) var<storage, read> P: array<u32>;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> Out: array<f32>;
var<workgroup> s: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let len = P[0]; let H = P[2]; let Wd = P[3];
    let group = wid.x + wid.y * nwg.x;
    let start = group * 16384u;
    var acc = 0.0; var comp = 0.0;
    for (var e = t; e < 16384u; e += 256u) {
        let i = start + e;
        if (i >= len) { break; }
        var v = 0.0;
        if (P[1] == 0u) {
            let d = A[i] - B[i % P[2]]; v = d * d;
        } else if (P[1] == 2u) {
            v = A[i] * A[i];
        } else {
            let x = i % Wd; let y = (i / Wd) % H;
            if (y + 1u < H) { let d = A[i + Wd] - A[i]; v += d * d; }
            if (x + 1u < Wd) { let d = A[i + 1u] - A[i]; v += d * d; }
        }
        let yv = v - comp; let tv = acc + yv; comp = (tv - acc) - yv; acc = tv;
    }
    s[t] = acc;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (t < h) { s[t] += s[t + h]; }
        workgroupBarrier();
    }
    if (t == 0u) { Out[group] = s[0]; }
}
"#;

/// Elementwise kernels share this header: one thread per element, 2-D grid.
const ELEMENTWISE: &str = r#"
@group(0) @binding(0) var<storage, read> P: array<u32>;
fn index(g: vec3<u32>, nwg: vec3<u32>) -> u32 { return g.x + g.y * nwg.x * 256u; }
"#;

fn elementwise(bindings: &str, body: &str) -> String {
    format!(
        "{ELEMENTWISE}\n{bindings}\n@compute @workgroup_size(256)\nfn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n    let i = index(g, nwg);\n    if (i >= P[0]) {{ return; }}\n{body}\n}}\n"
    )
}

/// Words: 0 len, 1 op. Ops: 0 relu(x), 1 x ← 0 where y ≤ 0, 2 x ← x + y.
pub fn pointwise() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read_write> X: array<f32>;\n@group(0) @binding(2) var<storage, read> Y: array<f32>;",
        r#"
    let op = P[1];
    if (op == 0u) { X[i] = max(X[i], 0.0); }
    else if (op == 1u) { if (Y[i] <= 0.0) { X[i] = 0.0; } }
    else { X[i] = X[i] + Y[i]; }
"#,
    )
}

/// Instance norm on one sample: words 0 len (C·HW), 1 HW, 2 sample offset (elements), 3 relu,
/// 4 residual; per channel (mean, inv_std) in `S`, γ in `G`, β in `Bt`.
pub fn norm_apply() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read_write> X: array<f32>;\n@group(0) @binding(2) var<storage, read> S: array<f32>;\n@group(0) @binding(3) var<storage, read> G: array<f32>;\n@group(0) @binding(4) var<storage, read> Bt: array<f32>;\n@group(0) @binding(5) var<storage, read> R: array<f32>;",
        r#"
    let c = i / P[1];
    let j = P[2] + i;
    var v = G[c] * ((X[j] - S[2u * c]) * S[2u * c + 1u]) + Bt[c];
    if (P[3] == 1u) { v = max(v, 0.0); }
    if (P[4] == 1u) { v += R[j]; }
    X[j] = v;
"#,
    )
}

/// Instance norm of one sample with its own statistics, from `PLANE_SUMS` mode 0 over the
/// chosen rectangle (no readback): words 0 len (C·HW), 1 HW, 2 sample offset, 3 relu,
/// 4 residual, 5 the rectangle's pixel count, 6 eps bits; γ in `G`, β in `Bt`.
pub fn norm_own() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read_write> X: array<f32>;\n@group(0) @binding(2) var<storage, read> Sums: array<f32>;\n@group(0) @binding(3) var<storage, read> G: array<f32>;\n@group(0) @binding(4) var<storage, read> Bt: array<f32>;\n@group(0) @binding(5) var<storage, read> R: array<f32>;",
        r#"
    let c = i / P[1];
    let j = P[2] + i;
    let n = f32(P[5]);
    let m1 = Sums[3u * c] / n;
    let mean = Sums[3u * c + 2u] + m1;
    let variance = max(Sums[3u * c + 1u] / n - m1 * m1, 0.0);
    let inv = 1.0 / sqrt(variance + bitcast<f32>(P[6]));
    var v = G[c] * ((X[j] - mean) * inv) + Bt[c];
    if (P[3] == 1u) { v = max(v, 0.0); }
    if (P[4] == 1u) { v += R[j]; }
    X[j] = v;
"#,
    )
}

/// Instance norm of a whole batch for training, each plane with its own statistics from
/// `PLANE_SUMS` mode 0: writes x̂ to `XH`, `γ·x̂ + β` (ReLU, + residual) over `X`, and 1/σ
/// per plane to `Inv`. Words: 0 len (N·C·HW), 1 HW, 2 C, 3 relu, 4 residual, 5 eps bits.
pub fn norm_train() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read_write> X: array<f32>;\n@group(0) @binding(2) var<storage, read> Sums: array<f32>;\n@group(0) @binding(3) var<storage, read> G: array<f32>;\n@group(0) @binding(4) var<storage, read> Bt: array<f32>;\n@group(0) @binding(5) var<storage, read> R: array<f32>;\n@group(0) @binding(6) var<storage, read_write> XH: array<f32>;\n@group(0) @binding(7) var<storage, read_write> Inv: array<f32>;",
        r#"
    let p = i / P[1];
    let c = p % P[2];
    let n = f32(P[1]);
    let m1 = Sums[3u * p] / n;
    let mean = Sums[3u * p + 2u] + m1;
    let variance = max(Sums[3u * p + 1u] / n - m1 * m1, 0.0);
    let inv = 1.0 / sqrt(variance + bitcast<f32>(P[5]));
    let xh = (X[i] - mean) * inv;
    XH[i] = xh;
    var v = G[c] * xh + Bt[c];
    if (P[3] == 1u) { v = max(v, 0.0); }
    if (P[4] == 1u) { v += R[i]; }
    X[i] = v;
    if (i % P[1] == 0u) { Inv[p] = inv; }
"#,
    )
}

/// `dx = k·(dy − Σdy/HW − x̂·Σ(x̂·dy)/HW)` with the sums from `PLANE_SUMS` mode 1 and
/// `k = γ·inv_std` per plane (γ per channel in `G`, 1/σ per plane in `Inv`). Words: 0 len,
/// 1 HW, 2 C.
pub fn norm_backward() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> XH: array<f32>;\n@group(0) @binding(2) var<storage, read> DY: array<f32>;\n@group(0) @binding(3) var<storage, read> Sums: array<f32>;\n@group(0) @binding(4) var<storage, read> G: array<f32>;\n@group(0) @binding(5) var<storage, read> Inv: array<f32>;\n@group(0) @binding(6) var<storage, read_write> DX: array<f32>;",
        r#"
    let p = i / P[1];
    let hw = f32(P[1]);
    let m1 = Sums[3u * p] / hw;
    let m2 = Sums[3u * p + 1u] / hw;
    DX[i] = G[p % P[2]] * Inv[p] * (DY[i] - m1 - XH[i] * m2);
"#,
    )
}

/// One of the three `PLANE_SUMS` values summed over the samples, per channel (bias and
/// instance-norm γ/β gradients). Words: 0 C, 1 N, 2 which value (0..3).
pub fn plane_totals() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> Sums: array<f32>;\n@group(0) @binding(2) var<storage, read_write> Out: array<f32>;",
        r#"
    var s = 0.0;
    for (var b = 0u; b < P[1]; b++) { s += Sums[3u * (b * P[0] + i) + P[2]]; }
    Out[i] = s;
"#,
    )
}

/// One Adam step, in place (PyTorch's arithmetic in f32). Words (f32 bits): 0 len, 1 lr,
/// 2 β1, 3 1 − β1, 4 β2, 5 1 − β2 (computed in f64: 1 − 0.999 in f32 is off by 1e-5),
/// 6 ε, 7 1 − β1ᵗ, 8 √(1 − β2ᵗ).
pub fn adam() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read_write> Pm: array<f32>;\n@group(0) @binding(2) var<storage, read> Gr: array<f32>;\n@group(0) @binding(3) var<storage, read_write> M: array<f32>;\n@group(0) @binding(4) var<storage, read_write> V: array<f32>;",
        r#"
    let gi = Gr[i];
    let m = bitcast<f32>(P[2]) * M[i] + bitcast<f32>(P[3]) * gi;
    let v = bitcast<f32>(P[4]) * V[i] + bitcast<f32>(P[5]) * gi * gi;
    M[i] = m; V[i] = v;
    let denom = sqrt(v) / bitcast<f32>(P[8]) + bitcast<f32>(P[6]);
    Pm[i] = Pm[i] - bitcast<f32>(P[1]) * (m / bitcast<f32>(P[7])) / denom;
"#,
    )
}

/// A ConvTranspose kernel `[a][b][k][k]` as the plain `[b][a][k][k]` kernel flipped in both
/// axes (its own inverse with `a` and `b` exchanged). Words: 0 len, 1 a, 2 b, 3 k.
pub fn permute() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> In: array<f32>;\n@group(0) @binding(2) var<storage, read_write> Out: array<f32>;",
        r#"
    let a = P[1]; let b = P[2]; let k = P[3];
    let kx = i % k; let ky = (i / k) % k; let ia = (i / (k * k)) % a; let o = i / (k * k * a);
    Out[i] = In[((ia * b + o) * k + (k - 1u - ky)) * k + (k - 1u - kx)];
"#,
    )
}

/// Each plane minus its mean (from `PLANE_SUMS` mode 0). Words: 0 len, 1 HW.
pub fn centre() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> X: array<f32>;\n@group(0) @binding(2) var<storage, read> Sums: array<f32>;\n@group(0) @binding(3) var<storage, read_write> Y: array<f32>;",
        r#"
    let p = i / P[1];
    let mean = Sums[3u * p + 2u] + Sums[3u * p] / f32(P[1]);
    Y[i] = X[i] - mean;
"#,
    )
}

/// VGG's channel affine and its backward. Words: 0 len (N·3·HW), 1 HW, 2 backward,
/// 3..6 src, 6..9 scale bits, 9..12 shift bits.
pub fn channel_affine() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> X: array<f32>;\n@group(0) @binding(2) var<storage, read_write> Y: array<f32>;",
        r#"
    let hw = P[1];
    let n = i / (3u * hw); let c = (i / hw) % 3u; let p = i % hw;
    if (P[2] == 0u) {
        Y[i] = X[(n * 3u + P[3u + c]) * hw + p] * bitcast<f32>(P[6u + c]) + bitcast<f32>(P[9u + c]);
    } else {
        // Output channel c of dx collects every channel whose source is c.
        var v = 0.0;
        for (var j = 0u; j < 3u; j++) {
            if (P[3u + j] == c) { v += bitcast<f32>(P[6u + j]) * X[(n * 3u + j) * hw + p]; }
        }
        Y[i] = v;
    }
"#,
    )
}

/// The output function (scaled tanh) and its backward. Words: 0 len, 1 backward,
/// 2 scale bits, 3 shift bits.
pub fn output() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read_write> X: array<f32>;\n@group(0) @binding(2) var<storage, read> Pre: array<f32>;\nfn tanh_(x: f32) -> f32 { let t = exp(-2.0 * abs(x)); return sign(x) * (1.0 - t) / (1.0 + t); }",
        r#"
    let scale = bitcast<f32>(P[2]); let shift = bitcast<f32>(P[3]);
    if (P[1] == 0u) {
        X[i] = clamp(scale * tanh_(X[i]) + shift, 0.0, 255.0);
    } else {
        let t = tanh_(Pre[i]);
        let y = scale * t + shift;
        if (y > 0.0 && y < 255.0) { X[i] = X[i] * scale * (1.0 - t * t); } else { X[i] = 0.0; }
    }
"#,
    )
}

/// 2×2 max pooling (one thread per output) and its backward (one thread per input: the
/// gradient goes to the window's first maximum). Words: 0 len, 1 backward, 2 H, 3 W.
pub fn max_pool() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> X: array<f32>;\n@group(0) @binding(2) var<storage, read> DY: array<f32>;\n@group(0) @binding(3) var<storage, read_write> Y: array<f32>;",
        r#"
    let H = P[2]; let Wd = P[3]; let ho = H / 2u; let wo = Wd / 2u;
    if (P[1] == 0u) {
        let plane = i / (ho * wo); let r = i % (ho * wo);
        let y = 2u * (r / wo); let x = 2u * (r % wo);
        let b = plane * H * Wd;
        Y[i] = max(max(X[b + y * Wd + x], X[b + y * Wd + x + 1u]),
                   max(X[b + (y + 1u) * Wd + x], X[b + (y + 1u) * Wd + x + 1u]));
    } else {
        let plane = i / (H * Wd); let r = i % (H * Wd);
        let y = r / Wd; let x = r % Wd;
        let oy = y / 2u; let ox = x / 2u;
        if (oy >= ho || ox >= wo) { Y[i] = 0.0; return; }
        let b = plane * H * Wd;
        var by = 2u * oy; var bx = 2u * ox;
        for (var a = 0u; a < 2u; a++) {
            for (var c = 0u; c < 2u; c++) {
                let yy = 2u * oy + a; let xx = 2u * ox + c;
                if (X[b + yy * Wd + xx] > X[b + by * Wd + bx]) { by = yy; bx = xx; }
            }
        }
        if (by == y && bx == x) { Y[i] = DY[(plane * ho + oy) * wo + ox]; } else { Y[i] = 0.0; }
    }
"#,
    )
}

/// The gradients of the losses. Words: 0 len, 1 mode, 2 scale bits, 3 H (mode 0: the period
/// of `b`), 4 W. Mode 0 (MSE): `scale·(a − b)`; mode 1 (TV): `scale·Σ` of the differences to
/// the four neighbours.
pub fn loss_grad() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> A: array<f32>;\n@group(0) @binding(2) var<storage, read> B: array<f32>;\n@group(0) @binding(3) var<storage, read_write> G: array<f32>;",
        r#"
    let s = bitcast<f32>(P[2]);
    if (P[1] == 0u) { G[i] = s * (A[i] - B[i % P[3]]); return; }
    let H = P[3]; let Wd = P[4];
    let x = i % Wd; let y = (i / Wd) % H;
    let v = A[i];
    var acc = 0.0;
    if (y + 1u < H) { acc -= A[i + Wd] - v; }
    if (x + 1u < Wd) { acc -= A[i + 1u] - v; }
    if (y > 0u) { acc += v - A[i - Wd]; }
    if (x > 0u) { acc += v - A[i - 1u]; }
    G[i] = s * acc;
"#,
    )
}
