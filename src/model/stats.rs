//! Instance-norm statistics as the forward pass asks for them: an activation, and the
//! source that answers with each norm's mean and inverse deviation (its own, a picture's
//! inside a padded input, global ones over tiles, blended over frames).
use crate::kernels::norm::{Moments, NormStats};

/// One sample's activation as a statistics source sees it: its size, and its moments over
/// any rectangle (computed by the backend, returned to the host).
pub struct Activation<'a> {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub(crate) region: &'a dyn Fn((usize, usize), (usize, usize)) -> Moments,
}

impl Activation<'_> {
    /// Per-channel moments of rows `rows` × columns `cols`.
    pub fn moments_region(&self, rows: (usize, usize), cols: (usize, usize)) -> Moments {
        (self.region)(rows, cols)
    }

    /// Per-channel moments of the whole plane.
    pub fn moments(&self) -> Moments {
        self.moments_region((0, self.h), (0, self.w))
    }
}

/// Source of instance-norm statistics: given the norm's index and its (single-sample)
/// pre-activation, return the statistics to normalise with, or `None` to stop the pass.
pub trait StatsSource {
    fn stats(&mut self, index: usize, x: &Activation, eps: f64) -> Option<NormStats>;

    /// When norm `index`'s statistics are simply the activation's own moments over one
    /// rectangle of its `h × w` plane (rows, columns), that rectangle: the backend then
    /// computes and applies them where the activation lives, without a trip to the host
    /// (a GPU's inference reads back only the picture). `None` (the default) asks
    /// [`StatsSource::stats`].
    fn own_region(
        &self,
        _index: usize,
        _h: usize,
        _w: usize,
    ) -> Option<((usize, usize), (usize, usize))> {
        None
    }
}

impl<S: StatsSource + ?Sized> StatsSource for &mut S {
    fn stats(&mut self, index: usize, x: &Activation, eps: f64) -> Option<NormStats> {
        (**self).stats(index, x, eps)
    }

    fn own_region(
        &self,
        index: usize,
        h: usize,
        w: usize,
    ) -> Option<((usize, usize), (usize, usize))> {
        (**self).own_region(index, h, w)
    }
}

/// Statistics of the tensor itself: ordinary instance norm.
pub struct OwnStats;

impl StatsSource for OwnStats {
    fn stats(&mut self, _index: usize, x: &Activation, eps: f64) -> Option<NormStats> {
        Some(x.moments().stats(eps))
    }

    fn own_region(
        &self,
        _index: usize,
        h: usize,
        w: usize,
    ) -> Option<((usize, usize), (usize, usize))> {
        Some(((0, h), (0, w)))
    }
}
