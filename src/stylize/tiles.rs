//! The network over a picture, whole or in tiles with exact global statistics (see the
//! module's documentation), with the mirror margin and the picture-only statistics.
use super::*;

/// Source pixels, RGB on the 0..255 scale: full precision for images processed whole, 8-bit
/// for huge tiled ones to bound memory.
pub(super) enum Content {
    F32(Rgb32FImage),
    U8(RgbImage),
}

impl Content {
    pub(super) fn dims(&self) -> (usize, usize) {
        match self {
            Content::F32(i) => (i.height() as usize, i.width() as usize),
            Content::U8(i) => (i.height() as usize, i.width() as usize),
        }
    }

    #[inline]
    pub(super) fn get(&self, x: usize, y: usize) -> [f32; 3] {
        match self {
            Content::F32(i) => {
                let p = i.get_pixel(x as u32, y as u32).0;
                [p[0] * 255.0, p[1] * 255.0, p[2] * 255.0]
            }
            Content::U8(i) => {
                let p = i.get_pixel(x as u32, y as u32).0;
                [p[0] as f32, p[1] as f32, p[2] as f32]
            }
        }
    }

    /// The rectangle as a 1×3×h×w tensor, in the coordinates of the image extended by
    /// `m` pixels of mirror padding on every side (and mirrored further up to a multiple of 4).
    pub(super) fn tensor(&self, y0: usize, x0: usize, h: usize, w: usize, m: usize) -> Tensor {
        use rayon::prelude::*;
        let (ih, iw) = self.dims();
        let mut t = Tensor::zeros(1, 3, h, w);
        let hw = h * w;
        let xs: Vec<usize> = (0..w)
            .map(|x| mirror((x0 + x) as i64 - m as i64, iw))
            .collect();
        // Rows in parallel (a live frame's conversion is otherwise serial beside the
        // network's parallel layers); each task writes its row of the three planes.
        let (r, rest) = t.data.split_at_mut(hw);
        let (g, b) = rest.split_at_mut(hw);
        r.par_chunks_mut(w)
            .zip(g.par_chunks_mut(w))
            .zip(b.par_chunks_mut(w))
            .enumerate()
            .for_each(|(y, ((r, g), b))| {
                let sy = mirror((y0 + y) as i64 - m as i64, ih);
                for (x, &sx) in xs.iter().enumerate() {
                    let p = self.get(sx, sy);
                    (r[x], g[x], b[x]) = (p[0], p[1], p[2]);
                }
            });
        t
    }
}

/// Index `i` reflected into `0..n` (edge not repeated), for any `i`.
pub(super) fn mirror(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let p = 2 * (n as i64 - 1);
    let r = i.rem_euclid(p);
    (if r < n as i64 { r } else { p - r }) as usize
}

/// One tile: the region run through the network (with halo) and its core, in padded-image
/// coordinates.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tile {
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
    cy0: usize,
    cy1: usize,
    cx0: usize,
    cx1: usize,
}

pub(super) fn plan(h4: usize, w4: usize, core: usize, halo: usize) -> Vec<Tile> {
    let mut tiles = Vec::new();
    for cy0 in (0..h4).step_by(core) {
        for cx0 in (0..w4).step_by(core) {
            let (cy1, cx1) = ((cy0 + core).min(h4), (cx0 + core).min(w4));
            tiles.push(Tile {
                y0: cy0.saturating_sub(halo),
                y1: (cy1 + halo).min(h4),
                x0: cx0.saturating_sub(halo),
                x1: (cx1 + halo).min(w4),
                cy0,
                cy1,
                cx0,
                cx1,
            });
        }
    }
    tiles
}

/// Where the picture lies in the network's (mirror-padded, aligned) input: rows
/// `[y0, y1)`, columns `[x0, x1)`. Instance-norm statistics are taken over it alone, so the
/// margin and the alignment padding change only what the network sees at the picture's
/// edges, never the statistics that set its colours and contrast everywhere else: with
/// `margin` 0 the output is the bare network's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picture {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
}

/// Padded rows `[a, b)` seen in an activation whose row 0 is padded row `origin`, at
/// `s` padded rows per row, `n` rows: clipped to it, rounded outward.
pub(super) fn span(a: usize, b: usize, origin: usize, s: usize, n: usize) -> (usize, usize) {
    let hi = b.saturating_sub(origin).div_ceil(s).min(n);
    let lo = (a.saturating_sub(origin) / s).min(hi);
    (lo, hi)
}

impl Picture {
    /// The picture's moments in activation `x`, which covers padded rows
    /// `[oy, oy + sh·x.h)` and columns `[ox, ox + sw·x.w)`, intersected with
    /// `[ry0, ry1) × [rx0, rx1)` (a tile's core; the whole image when untiled).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moments(
        &self,
        x: &Activation,
        oy: usize,
        ox: usize,
        sh: usize,
        sw: usize,
        core: (usize, usize, usize, usize),
    ) -> Moments {
        let (ry0, ry1, rx0, rx1) = core;
        let rows = span(self.y0.max(ry0), self.y1.min(ry1), oy, sh, x.h);
        let cols = span(self.x0.max(rx0), self.x1.min(rx1), ox, sw, x.w);
        if rows.0 == rows.1 || cols.0 == cols.1 {
            return Moments::zeros(x.c);
        }
        x.moments_region(rows, cols)
    }
}

/// Statistics for pass `k`: the known global ones before `k`, accumulate at `k`, then stop.
pub(super) struct PassStats<'a> {
    known: &'a [NormStats],
    acc: Option<Moments>,
    tile: Tile,
    picture: Picture,
}

impl StatsSource for PassStats<'_> {
    fn stats(&mut self, index: usize, x: &Activation, _eps: f64) -> Option<NormStats> {
        if index < self.known.len() {
            return Some(self.known[index].clone());
        }
        // The level of this activation: the tile is 2^level times its size.
        let t = &self.tile;
        let (sh, sw) = ((t.y1 - t.y0) / x.h, (t.x1 - t.x0) / x.w);
        self.acc = Some(
            self.picture
                .moments(x, t.y0, t.x0, sh, sw, (t.cy0, t.cy1, t.cx0, t.cx1)),
        );
        None
    }
}

/// Statistics of the picture inside one whole (untiled) padded input.
pub struct PictureStats {
    pub picture: Picture,
    /// The padded input's size.
    pub h: usize,
    pub w: usize,
}

impl PictureStats {
    pub(super) fn moments(&self, x: &Activation) -> Moments {
        let (sh, sw) = (self.h / x.h, self.w / x.w);
        self.picture
            .moments(x, 0, 0, sh, sw, (0, self.h, 0, self.w))
    }
}

impl StatsSource for PictureStats {
    fn stats(&mut self, _index: usize, x: &Activation, eps: f64) -> Option<NormStats> {
        Some(self.moments(x).stats(eps))
    }

    /// The picture's rectangle in the activation (the rectangle `Picture::moments` takes).
    fn own_region(
        &self,
        _index: usize,
        h: usize,
        w: usize,
    ) -> Option<((usize, usize), (usize, usize))> {
        let (sh, sw) = (self.h / h, self.w / w);
        let p = &self.picture;
        let rows = span(p.y0, p.y1.min(self.h), 0, sh, h);
        let cols = span(p.x0, p.x1.min(self.w), 0, sw, w);
        (rows.0 < rows.1 && cols.0 < cols.1).then_some((rows, cols))
    }
}

/// Progress reporting for long (tiled) runs: `(done, total)` work units.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Run the network over the content at its padded size; returns the stylized tensor's
/// pixels via `emit(y, x, rgb)` for every pixel of the unpadded image.
pub(super) fn run_network<B: crate::backend::Backend>(
    model: &Transformer<B>,
    content: &Content,
    opts: &StylizeOptions,
    progress: Option<Progress>,
    mut emit: impl FnMut(usize, usize, [f32; 3]),
) -> Result<(), Stopped> {
    let cancel = &opts.cancel;
    let (h, w) = content.dims();
    let a = Transformer::ALIGN;
    let m = opts.margin_for(model);
    let (h4, w4) = ((h + 2 * m).div_ceil(a) * a, (w + 2 * m).div_ceil(a) * a);
    let mut core = (opts.tile.max(a) / a) * a;
    let halo = opts.halo.div_ceil(a) * a;
    let mut tiled = (h4 * w4) as u64 > opts.tile_threshold && (h4 > core || w4 > core);
    // A device with a buffer limit (a GPU adapter) gets tiles whose widest activation fits.
    if let Some(limit) = model.backend().max_tensor_bytes() {
        let fits =
            |side_h: usize, side_w: usize| model.plan().activation_bytes(side_h, side_w) <= limit;
        if !tiled && !fits(h4, w4) {
            tiled = true;
        }
        if tiled {
            while core > a && !fits(core + 2 * halo, core + 2 * halo) {
                core = (core / 2).div_ceil(a) * a;
            }
        }
    }
    let tiles = if tiled {
        plan(h4, w4, core, halo)
    } else {
        plan(h4, w4, h4.max(w4), 0)
    };
    let picture = Picture {
        y0: m,
        y1: m + h,
        x0: m,
        x1: m + w,
    };
    let n_norms = model.config.norm_count();
    let total = if tiled {
        (n_norms as u64 + 1) * tiles.len() as u64
    } else {
        1
    };
    let mut done = 0u64;
    let mut known: Vec<NormStats> = Vec::new();
    if tiled {
        for _ in 0..n_norms {
            let mut acc: Option<Moments> = None;
            for t in &tiles {
                cancel.check()?;
                let x = content.tensor(t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0, m);
                let mut src = Checked {
                    inner: PassStats {
                        known: &known,
                        acc: None,
                        tile: *t,
                        picture,
                    },
                    cancel,
                };
                // This pass stops at the norm it measures (no picture to read back).
                let _ = model.forward_with(x, &mut src)?;
                cancel.check()?;
                let m = src.inner.acc.expect("pass reaches its norm");
                match &mut acc {
                    None => acc = Some(m),
                    Some(a) => a.add(&m),
                }
                done += 1;
                if let Some(p) = progress {
                    p(done, total);
                }
            }
            known.push(acc.expect("at least one tile").stats(model.config.norm_eps));
        }
    }
    for t in &tiles {
        cancel.check()?;
        let x = content.tensor(t.y0, t.x0, t.y1 - t.y0, t.x1 - t.x0, m);
        // With every statistic known, a pass stops early only when cancelled.
        let y = if tiled {
            let inner = PassStats {
                known: &known,
                acc: None,
                tile: *t,
                picture,
            };
            model.forward_with(x, &mut Checked { inner, cancel })
        } else {
            let inner = PictureStats {
                picture,
                h: h4,
                w: w4,
            };
            model.forward_with(x, &mut Checked { inner, cancel })
        }?
        .ok_or(Cancelled)?;
        let (th, tw) = (y.h, y.w);
        let hw = th * tw;
        for py in t.cy0.max(m)..t.cy1.min(h + m) {
            for px in t.cx0.max(m)..t.cx1.min(w + m) {
                let i = (py - t.y0) * tw + (px - t.x0);
                emit(
                    py - m,
                    px - m,
                    [y.data[i], y.data[hw + i], y.data[2 * hw + i]],
                );
            }
        }
        done += 1;
        if let Some(p) = progress {
            p(done, total);
        }
    }
    Ok(())
}
