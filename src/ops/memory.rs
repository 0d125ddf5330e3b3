//! Giving memory back: sessions buffer megabytes each, and glibc's
//! allocator keeps freed memory for reuse, so without this every role
//! would stay at its high-water mark long after its sessions are gone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::ops::defaults::MEMORY_TRIM_INTERVAL;

/// Hands freed memory back to the system while sessions run and after
/// they end. Clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Trim(Arc<State>);

#[derive(Debug, Default)]
struct State {
    /// Sessions running now.
    live: AtomicUsize,
    /// A session ended since the last trim.
    ended: AtomicBool,
}

/// A running session, for [`Trim`]; ending it is noted on drop.
#[derive(Debug)]
pub struct Live(Arc<State>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
        self.0.ended.store(true, Ordering::Relaxed);
    }
}

impl Trim {
    /// Notes a session that runs until the guard is dropped. Bulk data
    /// passing through leaves freed buffers behind, and a stalled session
    /// would otherwise keep its process at the high-water mark of the
    /// transfer that filled it.
    pub fn session(&self) -> Live {
        self.0.live.fetch_add(1, Ordering::Relaxed);
        Live(self.0.clone())
    }

    /// Sessions running now.
    pub fn live(&self) -> usize {
        self.0.live.load(Ordering::Relaxed)
    }

    /// Trims the allocator every [`MEMORY_TRIM_INTERVAL`] while sessions
    /// run, and once after the last one ended, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(MEMORY_TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ended = self.0.ended.swap(false, Ordering::Relaxed);
            if ended || self.0.live.load(Ordering::Relaxed) > 0 {
                // malloc_trim walks the heap: keep it off the async workers.
                let _ = tokio::task::spawn_blocking(trim_allocator).await;
            }
        }
    }
}

fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at
    // any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
