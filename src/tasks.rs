//! Owned tasks: every task a role spawns belongs to a [`Tasks`], which
//! counts it, logs its panic instead of losing it, and at shutdown gives
//! the running ones a grace period, then aborts what is left.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, Instrument};

/// A set of spawned tasks; clones share the set.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    abort: CancellationToken,
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
        let abort = self.abort.clone();
        let span = tracing::Span::current();
        let task = async move {
            tokio::select! {
                biased;
                _ = abort.cancelled() => {}
                ended = AssertUnwindSafe(task).catch_unwind() => {
                    if let Err(panic) = ended {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        error!("task panicked: {what}");
                    }
                }
            }
        };
        self.tracker.spawn(task.instrument(span));
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
            self.abort.cancel();
            self.tracker.wait().await;
        }
    }
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
        tokio::task::yield_now().await;
        assert_eq!(tasks.len(), 2, "the panicked task is gone");
        let started = tokio::time::Instant::now();
        tasks.shutdown(Duration::from_secs(1)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(tasks.is_empty());
    }
}
