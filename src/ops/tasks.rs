//! Owned tasks: every task a role spawns belongs to a [`Tasks`], which
//! counts it, logs its panic instead of losing it, and at shutdown gives
//! the running ones a grace period, then aborts what is left.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::{AbortHandle, Id};
use tokio_util::task::TaskTracker;
use tracing::{error, Instrument};

/// A set of spawned tasks; clones share the set.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    /// How to abort each running task. Touched once when a task starts and
    /// once when it ends, never while it runs.
    running: Arc<Mutex<HashMap<Id, AbortHandle>>>,
}

impl Tasks {
    /// An empty set.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns `task` into the set, in the current span. A panic is logged
    /// with the task's span; [`Tasks::shutdown`] aborts the task if it
    /// outlives the grace period.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let running = self.running.clone();
        // A combinator, not an `async` block: a block that moves `task` in
        // and awaits it keeps room for it twice.
        let task = AssertUnwindSafe(task).catch_unwind().map(move |ended| {
            if let Err(panic) = ended {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!("task panicked: {what}");
            }
            lock(&running).remove(&tokio::task::id());
        });
        // Held across the spawn, so the task's own removal (which may run
        // at once on another thread) comes after this insertion.
        let mut running = lock(&self.running);
        let handle = self
            .tracker
            .spawn(task.instrument(tracing::Span::current()));
        running.insert(handle.id(), handle.abort_handle());
    }

    /// Tasks running now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Takes no more tasks, waits up to `grace` for the running ones to
    /// end, then aborts the rest and waits for them to go.
    pub async fn shutdown(&self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            for handle in lock(&self.running).drain().map(|(_, h)| h) {
                handle.abort();
            }
            self.tracker.wait().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is one map operation, so a poisoned lock
    // still holds a consistent map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stragglers_are_aborted_after_the_grace_period_and_panics_are_contained() {
        let tasks = Tasks::new();
        tasks.spawn(async { panic!("boom") });
        tasks.spawn(std::future::pending());
        let quick = tasks.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            quick.spawn(async {});
        });
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(tasks.len(), 2, "the panicked task is gone");
        assert_eq!(lock(&tasks.running).len(), 2);
        let started = tokio::time::Instant::now();
        tasks.shutdown(Duration::from_secs(1)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(tasks.is_empty());
    }
}
