//! The JPEG structure check that runs before any pixel is decoded: a truncated or corrupt
//! file is an error instead of a picture that turns grey (or wrong) where the data went bad.
//!
//! The marker structure is walked and every scan's entropy-coded data is decoded symbol by
//! symbol (no pixels, ITU T.81 Annex F and G): every Huffman code must be valid, no block
//! may run past 64 coefficients, and each restart interval and scan must end exactly where
//! its data does. Corrupt data makes the walk lose step and fail one of these, where a
//! lenient decoder resynchronises and paints wrong pixels; data cut short (even with an
//! end-of-image marker appended) runs out inside a block. Progressive files must also
//! bring every coefficient of every component to full precision by their last scan. A
//! complete picture whose file lacks only its final end-of-image marker (some cameras and
//! uploaders drop it; every decoder shows it) is accepted with a note. Linear in the file
//! size; the only allocation is a bit per coefficient for progressive refinement scans.

/// `Ok(None)`: a sound JPEG; `Ok(Some(note))`: readable, with something to say; `Err`: why
/// it is not. Pictures over `max_pixels` are not walked (their size is refused later,
/// before anything is allocated).
pub fn check_jpeg_structure(b: &[u8], max_pixels: u64) -> Result<Option<String>, String> {
    let early = |what: &str| format!("JPEG data ends early ({what}): the file is truncated");
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("not a JPEG: no start-of-image marker".into());
    }
    let mut i = 2;
    let mut scans = 0usize;
    let mut frame: Option<Frame> = None;
    let mut state: Option<State> = None;
    let mut tables = Tables::default();
    let mut restart = 0usize;
    loop {
        // Markers may be preceded by fill bytes (0xFF); tolerate a few stray bytes too, as
        // decoders do.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        if i >= b.len() {
            if scans > 0 && state.as_ref().is_some_and(|s| s.complete()) {
                return Ok(Some(
                    "the file has no end-of-image marker, but the picture is complete".into(),
                ));
            }
            return Err(early(if scans == 0 {
                "before the image data"
            } else {
                "no end-of-image marker"
            }));
        }
        let m = b[i];
        i += 1;
        match m {
            0xD9 => {
                if scans == 0 {
                    return Err("JPEG has no image data (end-of-image before any scan)".into());
                }
                return match &state {
                    Some(s) if !s.complete() => Err(if s.progressive {
                        "progressive JPEG ends before its last scans bring every coefficient to full precision: the file is truncated".into()
                    } else {
                        "JPEG ends before every colour component was scanned: the file is truncated"
                            .into()
                    }),
                    _ => Ok(None),
                };
            }
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        if i + 2 > b.len() {
            return Err(early("inside a header"));
        }
        let len = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
        if len < 2 {
            return Err(format!(
                "corrupt JPEG: segment 0xFF{m:02X} has length {len}"
            ));
        }
        if i + len > b.len() {
            return Err(early("inside a header"));
        }
        let seg = &b[i + 2..i + len];
        i += len;
        match m {
            0xC0..=0xC2 => {
                let f = Frame::parse(seg)?;
                state = (f.width as u64 * f.height as u64 <= max_pixels)
                    .then(|| State::new(&f, m == 0xC2));
                frame = Some(f);
            }
            // Lossless and arithmetic-coded frames: the decoder refuses or checks them.
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                frame = None;
                state = None;
            }
            0xC4 => tables.define(seg)?,
            0xDD if seg.len() >= 2 => restart = u16::from_be_bytes([seg[0], seg[1]]) as usize,
            0xDA => {
                scans += 1;
                match (&frame, &mut state) {
                    (Some(f), Some(st)) => {
                        i = walk_scan(b, i, seg, f, &tables, restart, st)?;
                    }
                    _ => i = skip_scan(b, i).ok_or_else(|| early("inside the image data"))?,
                }
            }
            _ => {}
        }
    }
}

/// Entropy-coded data not walked: runs until a marker other than a stuffed 0xFF00 or a
/// restart marker.
fn skip_scan(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match b.get(i..i + 2)? {
            [0xFF, n] if *n == 0x00 || (0xD0..=0xD7).contains(n) => i += 2,
            [0xFF, 0xFF] => i += 1,
            [0xFF, _] => return Some(i),
            _ => i += 1,
        }
    }
}

struct Frame {
    width: usize,
    height: usize,
    /// (component id, horizontal, vertical sampling)
    comps: Vec<(u8, usize, usize)>,
}

impl Frame {
    fn parse(seg: &[u8]) -> Result<Frame, String> {
        let bad = || "corrupt JPEG: bad frame header".to_string();
        if seg.len() < 6 {
            return Err(bad());
        }
        let height = u16::from_be_bytes([seg[1], seg[2]]) as usize;
        let width = u16::from_be_bytes([seg[3], seg[4]]) as usize;
        let n = seg[5] as usize;
        if seg.len() < 6 + 3 * n || n == 0 {
            return Err(bad());
        }
        let comps: Vec<_> = (0..n)
            .map(|k| {
                let c = &seg[6 + 3 * k..9 + 3 * k];
                (c[0], (c[1] >> 4) as usize, (c[1] & 15) as usize)
            })
            .collect();
        if comps
            .iter()
            .any(|&(_, h, v)| !(1..=4).contains(&h) || !(1..=4).contains(&v))
        {
            return Err(bad());
        }
        Ok(Frame {
            width,
            height,
            comps,
        })
    }

    fn max_sampling(&self) -> (usize, usize) {
        self.comps
            .iter()
            .fold((1, 1), |(h, v), c| (h.max(c.1), v.max(c.2)))
    }

    /// MCUs across and down in an interleaved scan.
    fn mcus(&self) -> (usize, usize) {
        let (hmax, vmax) = self.max_sampling();
        (
            self.width.div_ceil(8 * hmax),
            self.height.div_ceil(8 * vmax),
        )
    }
}

/// What the scans so far have covered, and (progressive) which coefficients are nonzero.
struct State {
    progressive: bool,
    /// Per frame component: the point transform each coefficient was last brought to
    /// (`u8::MAX`: never scanned). Complete when all are 0.
    precision: Vec<[u8; 64]>,
    /// Per frame component, per block of its padded grid: a bit per coefficient (zigzag
    /// order) that an earlier scan made nonzero; allocated at the first AC scan.
    nonzero: Vec<Vec<u64>>,
}

impl State {
    fn new(f: &Frame, progressive: bool) -> State {
        State {
            progressive,
            precision: vec![[u8::MAX; 64]; f.comps.len()],
            nonzero: vec![Vec::new(); f.comps.len()],
        }
    }

    fn complete(&self) -> bool {
        self.precision.iter().all(|p| p.iter().all(|&a| a == 0))
    }
}

/// A Huffman table in the decoding form of T.81 F.2.2.3.
#[derive(Clone)]
struct Huff {
    maxcode: [i32; 17],
    mincode: [i32; 17],
    valptr: [i32; 17],
    vals: Vec<u8>,
}

#[derive(Default)]
struct Tables {
    dc: [Option<Huff>; 4],
    ac: [Option<Huff>; 4],
}

impl Tables {
    fn define(&mut self, mut seg: &[u8]) -> Result<(), String> {
        let bad = || "corrupt JPEG: bad Huffman table".to_string();
        while !seg.is_empty() {
            if seg.len() < 17 {
                return Err(bad());
            }
            let (class, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
            let counts = &seg[1..17];
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            if id > 3 || class > 1 || seg.len() < 17 + total {
                return Err(bad());
            }
            let mut h = Huff {
                maxcode: [-1; 17],
                mincode: [0; 17],
                valptr: [0; 17],
                vals: seg[17..17 + total].to_vec(),
            };
            let (mut code, mut k) = (0i32, 0i32);
            for l in 1..=16 {
                let c = counts[l - 1] as i32;
                h.valptr[l] = k;
                h.mincode[l] = code;
                code += c;
                k += c;
                if c > 0 {
                    h.maxcode[l] = code - 1;
                }
                if code > 1 << l {
                    return Err(bad());
                }
                code <<= 1;
            }
            if class == 0 {
                self.dc[id] = Some(h);
            } else {
                self.ac[id] = Some(h);
            }
            seg = &seg[17 + total..];
        }
        Ok(())
    }
}

/// Bits of one restart interval's entropy-coded data (0xFF00 unstuffed); `None` at a
/// marker or the end of the file.
struct Bits<'a> {
    b: &'a [u8],
    i: usize,
    cur: u32,
    n: u32,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        if self.n == 0 {
            let byte = *self.b.get(self.i)?;
            if byte == 0xFF {
                if *self.b.get(self.i + 1)? != 0 {
                    return None;
                }
                self.i += 2;
            } else {
                self.i += 1;
            }
            self.cur = byte as u32;
            self.n = 8;
        }
        self.n -= 1;
        Some((self.cur >> self.n) & 1)
    }

    fn value(&mut self, k: u32) -> Option<u32> {
        let mut v = 0;
        for _ in 0..k {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    fn decode(&mut self, h: &Huff) -> Result<u8, &'static str> {
        let mut code = self.bit().ok_or("data ends inside a block")? as i32;
        for l in 1..=16 {
            if code <= h.maxcode[l] {
                let j = (h.valptr[l] + code - h.mincode[l]) as usize;
                return h.vals.get(j).copied().ok_or("bad Huffman code");
            }
            code = (code << 1) | self.bit().ok_or("data ends inside a block")? as i32;
        }
        Err("bad Huffman code")
    }
}

/// What a scan codes (T.81 G.1.1: spectral selection `ss..=se`, successive approximation
/// `ah`, `al`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Baseline,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

struct ScanComp<'t> {
    /// Index into the frame's components.
    c: usize,
    /// Blocks per MCU across and down (1×1 in a single-component scan).
    h: usize,
    v: usize,
    /// Blocks across the component's padded grid.
    stride: usize,
    dc: Option<&'t Huff>,
    ac: Option<&'t Huff>,
}

/// Walk one scan starting at `start` (just after its header `sos`); returns where its data
/// ends (the next marker).
fn walk_scan(
    b: &[u8],
    start: usize,
    sos: &[u8],
    f: &Frame,
    t: &Tables,
    restart: usize,
    st: &mut State,
) -> Result<usize, String> {
    let corrupt = |what: &str| format!("corrupt JPEG data: {what}");
    let ns = *sos.first().ok_or_else(|| corrupt("bad scan header"))? as usize;
    if sos.len() < 4 + 2 * ns || ns == 0 {
        return Err(corrupt("bad scan header"));
    }
    let (ss, se) = (sos[1 + 2 * ns] as usize, sos[2 + 2 * ns] as usize);
    let (ah, al) = (sos[3 + 2 * ns] >> 4, sos[3 + 2 * ns] & 15);
    let kind = match (st.progressive, ss, ah) {
        (false, ..) => Kind::Baseline,
        (true, 0, 0) => Kind::DcFirst,
        (true, 0, _) => Kind::DcRefine,
        (true, _, 0) => Kind::AcFirst,
        (true, ..) => Kind::AcRefine,
    };
    if st.progressive && (se > 63 || ss > se || (ss == 0 && se != 0) || (ss > 0 && ns != 1)) {
        return Err(corrupt("bad progressive scan parameters"));
    }
    let (se, al) = if st.progressive { (se, al) } else { (63, 0) };
    let (mcux, mcuy) = f.mcus();
    let (hmax, vmax) = f.max_sampling();
    let undefined = || corrupt("scan uses an undefined Huffman table");
    let mut comps = Vec::new();
    for k in 0..ns {
        let (id, sel) = (sos[1 + 2 * k], sos[2 + 2 * k]);
        let c = f
            .comps
            .iter()
            .position(|c| c.0 == id)
            .ok_or_else(|| corrupt("scan names an unknown component"))?;
        let (h, v) = (f.comps[c].1, f.comps[c].2);
        let dc = t.dc[(sel >> 4) as usize & 3].as_ref();
        let ac = t.ac[(sel & 15) as usize & 3].as_ref();
        let needs_dc = matches!(kind, Kind::Baseline | Kind::DcFirst);
        let needs_ac = matches!(kind, Kind::Baseline | Kind::AcFirst | Kind::AcRefine);
        if (needs_dc && dc.is_none()) || (needs_ac && ac.is_none()) {
            return Err(undefined());
        }
        if matches!(kind, Kind::AcFirst | Kind::AcRefine) && st.nonzero[c].is_empty() {
            st.nonzero[c] = vec![0u64; mcux * h * mcuy * v];
        }
        comps.push(ScanComp {
            c,
            h,
            v,
            stride: mcux * h,
            dc,
            ac,
        });
    }
    // A single-component scan walks the component's own blocks, one per "MCU".
    let (across, down) = if ns == 1 {
        let (h, v) = (comps[0].h, comps[0].v);
        comps[0].h = 1;
        comps[0].v = 1;
        (
            (f.width * h).div_ceil(hmax).div_ceil(8),
            (f.height * v).div_ceil(vmax).div_ceil(8),
        )
    } else {
        (mcux, mcuy)
    };
    let mcus = across * down;
    let interval = if restart == 0 { mcus } else { restart };
    let early =
        || "JPEG data ends early (inside the image data): the file is truncated".to_string();
    // A Huffman symbol; running out of data is truncation, a bad code corruption.
    let symbol = |bits: &mut Bits, h: &Huff| {
        bits.decode(h).map_err(|e| {
            if bits.i >= b.len() {
                early()
            } else {
                corrupt(e)
            }
        })
    };
    let short = |bits: &Bits| {
        if bits.i >= b.len() {
            early()
        } else {
            corrupt("data ends inside a block")
        }
    };
    let mut i = start;
    let mut done = 0usize;
    while done < mcus {
        let mut bits = Bits { b, i, cur: 0, n: 0 };
        let mut eobrun = 0u32;
        let n = interval.min(mcus - done);
        for m in done..done + n {
            let (mx, my) = (m % across, m / across);
            for sc in &comps {
                for by in 0..sc.v {
                    for bx in 0..sc.h {
                        let block = (my * sc.v + by) * sc.stride + mx * sc.h + bx;
                        let mut blk = Block {
                            bits: &mut bits,
                            symbol: &symbol,
                            short: &short,
                            corrupt: &corrupt,
                        };
                        match kind {
                            Kind::Baseline => blk.baseline(sc)?,
                            Kind::DcFirst => blk.dc_first(sc)?,
                            Kind::DcRefine => {
                                blk.take(1)?;
                            }
                            Kind::AcFirst => {
                                let nz = &mut st.nonzero[sc.c][block];
                                blk.ac_first(sc, ss, se, &mut eobrun, nz)?
                            }
                            Kind::AcRefine => {
                                let nz = &mut st.nonzero[sc.c][block];
                                blk.ac_refine(sc, ss, se, &mut eobrun, nz)?
                            }
                        }
                    }
                }
            }
        }
        done += n;
        // The interval must end where its data does: what is left of the last byte is
        // padding, and the next byte must start a marker.
        i = bits.i;
        let extra = b[i.min(b.len())..]
            .iter()
            .take_while(|&&x| x != 0xFF)
            .count();
        if i + extra >= b.len() {
            // The file ends right after the scan's last block: whole, but unmarked (the
            // caller decides whether the picture is complete).
            if done == mcus && extra == 0 {
                break;
            }
            return Err(early());
        }
        if extra > 0 {
            return Err(corrupt(&format!(
                "{extra} bytes left over after the image data (the data is damaged)"
            )));
        }
        if done < mcus {
            // Expect a restart marker (after any fill bytes).
            while b.get(i) == Some(&0xFF) && b.get(i + 1) == Some(&0xFF) {
                i += 1;
            }
            match b.get(i + 1) {
                Some(0xD0..=0xD7) => i += 2,
                Some(_) => return Err(corrupt("a restart marker is missing")),
                None => return Err(early()),
            }
        }
    }
    // The scan is whole: its coefficients now stand at point transform `al`.
    for sc in &comps {
        let p = &mut st.precision[sc.c];
        let band = if kind == Kind::Baseline {
            0..=63
        } else {
            ss..=se
        };
        for k in band {
            p[k] = p[k].min(al);
        }
    }
    Ok(i)
}

/// One block's entropy-coded data.
struct Block<'a, 'b, S, E, C> {
    bits: &'a mut Bits<'b>,
    symbol: &'a S,
    short: &'a E,
    corrupt: &'a C,
}

impl<'b, S, E, C> Block<'_, 'b, S, E, C>
where
    S: Fn(&mut Bits<'b>, &Huff) -> Result<u8, String>,
    E: Fn(&Bits<'b>) -> String,
    C: Fn(&str) -> String,
{
    fn take(&mut self, k: u32) -> Result<u32, String> {
        let v = self.bits.value(k);
        v.ok_or_else(|| (self.short)(self.bits))
    }

    fn sym(&mut self, h: &Huff) -> Result<u8, String> {
        (self.symbol)(self.bits, h)
    }

    fn dc_first(&mut self, sc: &ScanComp) -> Result<(), String> {
        let s = self.sym(sc.dc.expect("checked"))?;
        if s > 11 {
            return Err((self.corrupt)("DC difference out of range"));
        }
        self.take(s as u32)?;
        Ok(())
    }

    fn baseline(&mut self, sc: &ScanComp) -> Result<(), String> {
        self.dc_first(sc)?;
        let ac = sc.ac.expect("checked");
        let mut k = 1;
        while k < 64 {
            let rs = self.sym(ac)?;
            let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
            if s == 0 {
                if r != 15 {
                    break;
                }
                k += 16;
            } else {
                k += r + 1;
                self.take(s)?;
            }
            if k > 64 {
                return Err((self.corrupt)("a block has more than 64 coefficients"));
            }
        }
        Ok(())
    }

    /// T.81 G.1.2.2: the first pass over a band, with end-of-band runs.
    fn ac_first(
        &mut self,
        sc: &ScanComp,
        ss: usize,
        se: usize,
        eobrun: &mut u32,
        nz: &mut u64,
    ) -> Result<(), String> {
        if *eobrun > 0 {
            *eobrun -= 1;
            return Ok(());
        }
        let ac = sc.ac.expect("checked");
        let mut k = ss;
        while k <= se {
            let rs = self.sym(ac)?;
            let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
            if s != 0 {
                k += r;
                if k > se {
                    return Err((self.corrupt)("a coefficient beyond its band"));
                }
                self.take(s)?;
                *nz |= 1 << k;
                k += 1;
            } else if r == 15 {
                k += 16;
            } else {
                *eobrun = (1 << r) - 1 + self.take(r as u32)?;
                break;
            }
        }
        Ok(())
    }

    /// T.81 G.1.2.3: a refinement pass: a correction bit for every coefficient already
    /// nonzero, new ones (±1) placed among the zero ones.
    fn ac_refine(
        &mut self,
        sc: &ScanComp,
        ss: usize,
        se: usize,
        eobrun: &mut u32,
        nz: &mut u64,
    ) -> Result<(), String> {
        let ac = sc.ac.expect("checked");
        let mut k = ss;
        if *eobrun == 0 {
            while k <= se {
                let rs = self.sym(ac)?;
                let (mut r, s) = ((rs >> 4) as i32, rs & 15);
                if s != 0 {
                    if s != 1 {
                        return Err((self.corrupt)("a refinement value other than ±1"));
                    }
                    self.take(1)?;
                } else if r != 15 {
                    *eobrun = (1 << r) + self.take(r as u32)?;
                    break;
                }
                // Past nonzero coefficients (a correction bit each) and r zero ones.
                while k <= se {
                    if *nz & (1 << k) != 0 {
                        self.take(1)?;
                    } else {
                        if r == 0 {
                            break;
                        }
                        r -= 1;
                    }
                    k += 1;
                }
                if s != 0 {
                    if k > se {
                        return Err((self.corrupt)("a coefficient beyond its band"));
                    }
                    *nz |= 1 << k;
                }
                k += 1;
            }
        }
        if *eobrun > 0 {
            while k <= se {
                if *nz & (1 << k) != 0 {
                    self.take(1)?;
                }
                k += 1;
            }
            *eobrun -= 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured picture as JPEG: baseline or progressive, with or without restart
    /// intervals, 4:2:0 or 4:4:4.
    fn jpeg(progressive: bool, restart: u16, subsample: bool) -> Vec<u8> {
        let (w, h) = (203u16, 149u16);
        let img = crate::testutil::photo(w as u32, h as u32).to_rgb8();
        let mut out = Vec::new();
        let mut e = jpeg_encoder::Encoder::new(&mut out, 88);
        e.set_progressive(progressive);
        e.set_restart_interval(restart);
        e.set_sampling_factor(if subsample {
            jpeg_encoder::SamplingFactor::R_4_2_0
        } else {
            jpeg_encoder::SamplingFactor::R_4_4_4
        });
        e.encode(img.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    /// Start-of-scan markers' offsets.
    fn scans(b: &[u8]) -> Vec<usize> {
        (0..b.len() - 1)
            .filter(|&i| b[i] == 0xFF && b[i + 1] == 0xDA)
            .collect()
    }

    #[test]
    fn whole_files_of_every_kind_pass() {
        for progressive in [false, true] {
            for restart in [0, 3] {
                for subsample in [false, true] {
                    let b = jpeg(progressive, restart, subsample);
                    let what =
                        format!("progressive {progressive}, restart {restart}, 4:2:0 {subsample}");
                    assert_eq!(check_jpeg_structure(&b, u64::MAX), Ok(None), "{what}");
                    if progressive {
                        assert!(scans(&b).len() > 2, "{what}: not progressive");
                    }
                }
            }
        }
    }

    /// A progressive file cut inside a scan, with an end-of-image marker appended (what a
    /// broken upload can look like), is refused; so is one cut between scans. Every
    /// decoder would show the first as a picture with a damaged lower part.
    #[test]
    fn progressive_files_cut_short_are_refused_even_with_an_end_marker() {
        for restart in [0, 4] {
            let b = jpeg(true, restart, true);
            let starts = scans(&b);
            for (k, &s) in starts.iter().enumerate() {
                let end = starts.get(k + 1).copied().unwrap_or(b.len() - 2);
                // Mid-scan: half way through its data.
                let mut cut = b[..(s + end) / 2].to_vec();
                cut.extend_from_slice(&[0xFF, 0xD9]);
                let e = check_jpeg_structure(&cut, u64::MAX).unwrap_err();
                assert!(
                    e.contains("truncated") || e.contains("corrupt"),
                    "scan {k}: {e}"
                );
                // Between scans (the scans before it intact).
                if k > 0 {
                    let mut cut = b[..s].to_vec();
                    cut.extend_from_slice(&[0xFF, 0xD9]);
                    let e = check_jpeg_structure(&cut, u64::MAX).unwrap_err();
                    assert!(e.contains("truncated"), "before scan {k}: {e}");
                }
            }
        }
    }

    /// A complete picture whose file lacks only its final end-of-image marker is read, with
    /// a note; one cut anywhere earlier is still refused.
    #[test]
    fn a_complete_picture_without_its_end_marker_is_read_with_a_note() {
        for progressive in [false, true] {
            let b = jpeg(progressive, 0, true);
            assert_eq!(&b[b.len() - 2..], &[0xFF, 0xD9]);
            let note = check_jpeg_structure(&b[..b.len() - 2], u64::MAX).unwrap();
            assert!(note.unwrap().contains("no end-of-image marker"));
            let e = check_jpeg_structure(&b[..b.len() - 40], u64::MAX).unwrap_err();
            assert!(e.contains("truncated"), "{e}");
        }
    }

    /// No false refusals: every JPEG of the shared photo collections (cameras and
    /// encoders of many kinds) passes.
    #[test]
    fn every_shared_photo_passes() {
        let Some(dir) = crate::testutil::shared("data/photos", "every_shared_photo_passes") else {
            return;
        };
        let w = crate::walk::images(&dir, &["jpg", "jpeg"]);
        assert!(w.files.len() > 100, "{} photos", w.files.len());
        let mut progressive = 0;
        for f in &w.files {
            let b = std::fs::read(&f.path).unwrap();
            progressive += b.windows(2).any(|p| p == [0xFF, 0xC2]) as usize;
            let r = check_jpeg_structure(&b, u64::MAX);
            assert!(r.is_ok(), "{}: {r:?}", f.path.display());
        }
        eprintln!(
            "{} photos checked, {progressive} of them progressive",
            w.files.len()
        );
    }
}
