//! Every style of a run of several with the same say in the shared weights.
//!
//! The batches of such a run take the paintings in turn, and Adam's moments of the shared
//! convolutions average all of their gradients. A painting trained at a low style weight
//! (udnie at 1.5 beside great_wave at 5) gives smaller gradients, so its batches move the
//! shared weights less than a run of its own would. Balanced, each batch's loss is scaled
//! by the styles' mean recent gradient norm over its own style's, so every style's batches
//! reach the shared weights at the same size. The losses reported stay unscaled, and a
//! style's own norm rows (their own Adam moments) see an almost constant factor, to which
//! Adam is blind.

/// The recent gradient norm of the shared weights per painting of the run (in batch
/// order), unscaled; `None` until the painting's first batch. A checkpoint keeps it, so a
/// resumed run scales exactly as the uninterrupted one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Balance {
    pub norms: Vec<Option<f64>>,
}

/// How fast a painting's recent norm follows its batches (a time constant of ten of them).
const KEEP: f64 = 0.9;
/// The most a batch's loss is scaled up or down.
const LIMIT: f64 = 4.0;

impl Balance {
    pub fn new(paintings: usize) -> Self {
        Balance {
            norms: vec![None; paintings],
        }
    }

    /// The factor of painting `i`'s next batch: 1 until every painting has had a batch
    /// (and for a run of one).
    pub fn scale(&self, i: usize) -> f64 {
        let Some(norms) = self.norms.iter().copied().collect::<Option<Vec<f64>>>() else {
            return 1.0;
        };
        if norms.len() < 2 || !norms.iter().all(|v| v.is_finite() && *v > 0.0) {
            return 1.0;
        }
        let mean = norms.iter().sum::<f64>() / norms.len() as f64;
        (mean / norms[i]).clamp(1.0 / LIMIT, LIMIT)
    }

    /// Painting `i`'s batch gave the shared weights a gradient of norm `norm` with its loss
    /// scaled by `k`.
    pub fn observe(&mut self, i: usize, norm: f64, k: f64) {
        let v = norm / k;
        if !v.is_finite() {
            return;
        }
        self.norms[i] = Some(match self.norms[i] {
            None => v,
            Some(p) => KEEP * p + (1.0 - KEEP) * v,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_style_with_small_gradients_is_scaled_up_and_one_with_large_down() {
        let mut b = Balance::new(3);
        assert_eq!(
            b.scale(0),
            1.0,
            "no scale before every painting had a batch"
        );
        b.observe(0, 1.0, 1.0);
        b.observe(1, 2.0, 1.0);
        assert_eq!(b.scale(1), 1.0);
        b.observe(2, 3.0, 1.0);
        assert_eq!(b.scale(0), 2.0);
        assert_eq!(b.scale(1), 1.0);
        assert_eq!(b.scale(2), 2.0 / 3.0);
        // A scaled batch counts unscaled: the norm it reports is divided by its factor.
        b.observe(0, 2.0, 2.0);
        assert_eq!(b.norms[0], Some(1.0));
        // The recent norm follows new batches a tenth at a time.
        b.observe(0, 11.0, 1.0);
        assert!(
            (b.norms[0].unwrap() - 2.0).abs() < 1e-12,
            "{:?}",
            b.norms[0]
        );
    }

    #[test]
    fn the_scale_is_bounded_and_one_style_is_never_scaled() {
        let mut b = Balance::new(5);
        for i in 0..4 {
            b.observe(i, 1e-6, 1.0);
        }
        b.observe(4, 100.0, 1.0);
        assert_eq!(b.scale(0), LIMIT);
        assert_eq!(b.scale(4), 1.0 / LIMIT);
        let mut one = Balance::new(1);
        one.observe(0, 5.0, 1.0);
        assert_eq!(one.scale(0), 1.0);
        b.observe(4, f64::NAN, 1.0);
        assert_eq!(b.norms[4], Some(100.0), "a non-finite norm is not recorded");
    }
}
