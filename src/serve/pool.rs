//! The bounded inference pool: `workers` jobs run at a time on blocking threads, up to
//! `queue` more wait for one, and anything beyond that is refused at once (503) instead of
//! piling up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct Pool {
    permits: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

/// A worker held (see [`Pool::worker`]); given back when dropped.
pub struct Worker {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _ticket: Ticket,
}

/// A place in the pool (running or waiting); given back when dropped.
pub struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    pub fn new(workers: usize, queue: usize) -> Self {
        Pool {
            permits: Arc::new(Semaphore::new(workers.max(1))),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: workers.max(1) + queue,
        }
    }

    /// A place in the pool, or `None` when `workers + queue` jobs are already in it.
    pub fn admit(&self) -> Option<Ticket> {
        let prev = self.admitted.fetch_add(1, Ordering::AcqRel);
        let t = Ticket(self.admitted.clone());
        (prev < self.capacity).then_some(t)
    }

    /// Wait for a worker, in turn: the semaphore hands out workers first come, first
    /// served, so live connections and requests waiting at the same time are served round
    /// robin instead of whoever polls first winning every time. Counts as in flight from
    /// the moment it has the worker.
    pub async fn worker(&self) -> Result<Worker, String> {
        let permit = self.permits.clone().acquire_owned().await;
        let permit = permit.map_err(|e| e.to_string())?;
        self.admitted.fetch_add(1, Ordering::AcqRel);
        Ok(Worker {
            _permit: permit,
            _ticket: Ticket(self.admitted.clone()),
        })
    }

    /// Run `f` on a blocking thread with a worker from [`Pool::worker`], released when `f`
    /// returns.
    pub async fn run_on<T: Send + 'static>(
        &self,
        worker: Worker,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        tokio::task::spawn_blocking(move || {
            let r = f();
            drop(worker);
            r
        })
        .await
        .map_err(|e| format!("inference failed: {e}"))
    }

    /// Jobs running or waiting.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Run `f` on a blocking thread once a worker is free. The ticket and the worker are
    /// released when `f` returns, even if the caller stopped waiting (timeout), so the pool
    /// stays bounded. `Err` only if `f` panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        ticket: Ticket,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let worker = Worker {
            _permit: permit,
            _ticket: ticket,
        };
        self.run_on(worker, f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_workers_plus_queue_and_gives_places_back() {
        let p = Pool::new(2, 1);
        let a = p.admit().unwrap();
        let b = p.admit().unwrap();
        let c = p.admit().unwrap();
        assert!(p.admit().is_none(), "queue full");
        assert_eq!(p.in_flight(), 3);
        drop(b);
        assert!(p.admit().is_some());
        drop((a, c));
        assert_eq!(p.in_flight(), 0);
    }
}
