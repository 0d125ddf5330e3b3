//! Giving memory back: sessions buffer megabytes each, and glibc's
//! allocator keeps freed memory for reuse, so without this every role
//! would stay at its high-water mark long after its sessions are gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::defaults::MEMORY_TRIM_INTERVAL;

/// Hands freed memory back to the system after sessions end. Clones share
/// one flag.
#[derive(Debug, Clone, Default)]
pub struct Trim(Arc<AtomicBool>);

impl Trim {
    /// Notes that a session ended: memory may have been freed.
    pub fn session_ended(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Trims the allocator, at most every [`MEMORY_TRIM_INTERVAL`] and
    /// only after a session ended, until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(MEMORY_TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.0.swap(false, Ordering::Relaxed) {
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
