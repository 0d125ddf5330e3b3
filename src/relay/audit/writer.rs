//! The thread that owns the audit log's file: takes whole lines from a
//! bounded queue, holds back refusals past their rate ([`Refusals`]),
//! writes in batches, opens the file again when asked (SIGHUP), and at
//! the end writes what is queued and the counts of what was left out.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::refusals::{Refusals, Summary, WINDOW};
use super::{Flags, QUEUE};
use crate::relay::throttle::{self, Throttle};
use crate::relay::LOG_TARGET;

/// Bytes gathered before they are written, at most (a batch also ends
/// when the queue is empty).
const BATCH: usize = 64 * 1024;

/// What the relay sends the writer.
pub(super) enum Msg {
    /// One whole JSON line; for a refusal, the peer's address.
    Line {
        text: Vec<u8>,
        refused: Option<IpAddr>,
    },
    /// Open the file again by its path, after the lines before.
    Reopen,
    /// Look at the [`Flags`].
    Wake,
}

/// The writer thread's state.
pub(super) struct Writer {
    path: PathBuf,
    file: File,
    queue: Receiver<Msg>,
    flags: Arc<Flags>,
    refusals: Refusals,
    batch: Vec<u8>,
    /// Lines dropped from a full queue and not yet noted, and when they
    /// were last noted.
    dropped: u64,
    dropped_noted: Option<Instant>,
    /// Failed writes, summarised.
    failures: Throttle,
}

/// A line the writer makes itself: counts of lines left out.
#[derive(Serialize)]
struct Note<'a> {
    time: String,
    /// `refused_summary` (refusals over their rate) or `dropped` (the
    /// queue was full).
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<&'a str>,
    left_out: u64,
}

impl Writer {
    /// Opens `path` and starts the thread that writes the lines sent on
    /// `queue` to it. The receiver resolves once the thread has stopped.
    pub fn start(
        path: &Path,
        queue: Receiver<Msg>,
        flags: Arc<Flags>,
    ) -> anyhow::Result<oneshot::Receiver<()>> {
        let file = open(path)?;
        let writer = Writer {
            path: path.to_owned(),
            file,
            queue,
            flags,
            refusals: Refusals::default(),
            batch: Vec::with_capacity(BATCH),
            dropped: 0,
            dropped_noted: None,
            failures: Throttle::default(),
        };
        let (stopped, wait) = oneshot::channel();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                writer.run();
                let _ = stopped.send(());
            })
            .context("could not start the audit log's writer")?;
        Ok(wait)
    }

    fn run(mut self) {
        loop {
            // Asleep until a line comes, or until a count is due.
            let first = match self.due() {
                None => self
                    .queue
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
                Some(due) => self
                    .queue
                    .recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            match first {
                Ok(msg) => {
                    self.take(msg);
                    self.take_queued();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            let summaries = self.refusals.end(now);
            self.note(&summaries);
            self.note_dropped(now, false);
            self.flush();
            if self.flags.reopen.swap(false, Ordering::Relaxed) {
                self.reopen();
            }
            if self.flags.stop.load(Ordering::Relaxed) {
                self.take_queued();
                break;
            }
        }
        let summaries = self.refusals.finish();
        self.note(&summaries);
        self.note_dropped(Instant::now(), true);
        self.flush();
    }

    /// When a count of lines left out is due: at the end of the window
    /// of refusals, or of the window since dropped lines were last noted.
    fn due(&self) -> Option<Instant> {
        let dropped = (self.dropped > 0)
            .then_some(self.dropped_noted)
            .flatten()
            .map(|at| at + WINDOW);
        match (self.refusals.deadline(), dropped) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes what is queued now, at most a queue's worth, so that the
    /// flags are looked at even under a flood.
    fn take_queued(&mut self) {
        for _ in 0..QUEUE {
            match self.queue.try_recv() {
                Ok(msg) => self.take(msg),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn take(&mut self, msg: Msg) {
        let (text, refused) = match msg {
            Msg::Line { text, refused } => (text, refused),
            Msg::Reopen => {
                self.flush();
                return self.reopen();
            }
            Msg::Wake => return,
        };
        if let Some(ip) = refused {
            let now = Instant::now();
            let summaries = self.refusals.end(now);
            self.note(&summaries);
            if !self.refusals.allow(ip, now) {
                return;
            }
        }
        self.batch.extend_from_slice(&text);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    /// Adds the summaries of refusals left out to the batch.
    fn note(&mut self, summaries: &[Summary]) {
        for s in summaries {
            self.push(Note {
                time: unix_millis(),
                event: "refused_summary",
                network: Some(&s.network),
                left_out: s.left_out,
            });
        }
    }

    /// Adds the count of lines dropped from a full queue to the batch: at
    /// most once per [`WINDOW`] (a full queue lasts), and at the `end`.
    fn note_dropped(&mut self, now: Instant, end: bool) {
        self.dropped += self.flags.dropped.swap(0, Ordering::Relaxed);
        let due = self.dropped_noted.is_none_or(|at| now >= at + WINDOW);
        if self.dropped == 0 || !(due || end) {
            return;
        }
        let left_out = std::mem::take(&mut self.dropped);
        self.push(Note {
            time: unix_millis(),
            event: "dropped",
            network: None,
            left_out,
        });
        self.dropped_noted = Some(now);
    }

    fn push(&mut self, note: Note<'_>) {
        if let Ok(text) = serde_json::to_vec(&note) {
            self.batch.extend_from_slice(&text);
            self.batch.push(b'\n');
        }
    }

    /// Writes the batch: whole lines, to a file opened for appending. A
    /// failed write is logged (at most once per window), not fatal.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Err(err) = self.file.write_all(&self.batch) {
            if let Some(n) = self.failures.allow(Instant::now()) {
                warn!(target: LOG_TARGET, %err, "could not write to the audit log{}", throttle::left_out(n));
            }
        }
        self.batch.clear();
    }

    /// Opens the file again by its path: after a rename, a new file there.
    fn reopen(&mut self) {
        match open(&self.path) {
            Ok(file) => {
                self.file = file;
                info!(target: LOG_TARGET, path = %self.path.display(), "audit log reopened");
            }
            Err(err) => {
                warn!(target: LOG_TARGET, "{err:#}; writing on to the file open before");
            }
        }
    }
}

/// Opens `path` for appending, made mode 0600 if it does not exist.
fn open(path: &Path) -> anyhow::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .with_context(|| format!("could not open audit log {}", path.display()))
}

/// Now, as the audit log writes times.
pub(super) fn unix_millis() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    crate::ops::clock::fmt_unix_millis(now)
}
