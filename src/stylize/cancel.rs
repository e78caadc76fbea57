//! Stopping a stylization early: a [`Cancel`] is asked at every instance norm and between
//! tiles.
use super::*;

/// A way to stop a stylization early (a client that left, a time limit, Ctrl-C): checked
/// at every instance norm of the network (a few dozen times a pass) and between tiles, so
/// a stop lands within one layer. Cloning shares it.
#[derive(Clone, Default)]
pub struct Cancel(Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>);

impl Cancel {
    /// Stops once `flag` is set.
    pub fn flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Cancel::when(move || flag.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Stops once `stop()` answers true (it is asked from the computing thread).
    pub fn when(stop: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Cancel(Some(std::sync::Arc::new(stop)))
    }

    /// Stops when either does.
    pub fn or(self, other: Cancel) -> Self {
        match (self.0, other.0) {
            (None, o) | (o, None) => Cancel(o),
            (Some(a), Some(b)) => Cancel::when(move || a() || b()),
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f())
    }

    pub(super) fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Cancel(set)"
        } else {
            "Cancel(never)"
        })
    }
}

pub use crate::error::Cancelled;

/// Why a stylization ended without a picture: its caller cancelled it, or the device it ran
/// on failed (out of memory, lost), found when the picture was read back.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("stopped before it finished")]
    Cancelled,
    #[error(transparent)]
    Device(#[from] crate::backend::DeviceError),
}

impl From<Cancelled> for Stopped {
    fn from(_: Cancelled) -> Self {
        Stopped::Cancelled
    }
}

impl From<Stopped> for crate::Error {
    fn from(s: Stopped) -> Self {
        match s {
            Stopped::Cancelled => crate::Error::Cancelled,
            Stopped::Device(e) => e.into(),
        }
    }
}

/// Statistics from `inner`, unless the work was cancelled: then none, which ends the pass
/// at this norm.
pub(super) struct Checked<'a, S> {
    pub(super) inner: S,
    pub(super) cancel: &'a Cancel,
}

impl<S: StatsSource> StatsSource for Checked<'_, S> {
    fn stats(&mut self, index: usize, x: &Activation, eps: f64) -> Option<NormStats> {
        if self.cancel.is_cancelled() {
            return None;
        }
        self.inner.stats(index, x, eps)
    }

    /// Cancelled: none, so that the pass asks `stats`, which stops it.
    fn own_region(
        &self,
        index: usize,
        h: usize,
        w: usize,
    ) -> Option<((usize, usize), (usize, usize))> {
        if self.cancel.is_cancelled() {
            return None;
        }
        self.inner.own_region(index, h, w)
    }
}
