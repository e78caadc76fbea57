//! Colour preservation (BT.601 YCbCr) and strength blending, pixel by pixel.
use super::*;

/// RGB → (Y, Cb, Cr), BT.601 full range, 0..255.
pub(super) fn to_ycc(p: [f32; 3]) -> [f32; 3] {
    let [r, g, b] = p;
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    [
        y,
        128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b,
        128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b,
    ]
}

pub(super) fn from_ycc(p: [f32; 3]) -> [f32; 3] {
    let [y, cb, cr] = p;
    [
        y + 1.402 * (cr - 128.0),
        y - 0.344_136 * (cb - 128.0) - 0.714_136 * (cr - 128.0),
        y + 1.772 * (cb - 128.0),
    ]
}

/// Colour preservation and strength blending for one pixel.
pub(super) fn finish(opts: &StylizeOptions, content: [f32; 3], styl: [f32; 3]) -> [u8; 3] {
    let mut s = styl;
    if opts.preserve_color {
        let (ys, yc) = (to_ycc(s), to_ycc(content));
        s = from_ycc([ys[0], yc[1], yc[2]]);
    }
    let k = opts.strength.clamp(0.0, 1.0);
    let mut out = [0u8; 3];
    for c in 0..3 {
        let v = content[c] + k * (s[c] - content[c]);
        out[c] = v.round().clamp(0.0, 255.0) as u8;
    }
    out
}
