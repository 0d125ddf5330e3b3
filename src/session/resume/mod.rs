//! Resumable sessions: an ssh session outlives the path it runs on (a
//! relay restarting or dying, the client's network changing, a laptop
//! asleep) for up to a window, and goes on byte-exact.
//!
//! # Design
//! Resumption is end to end, between the client side (forwarder or
//! `connect`) and the host agent; the relay only routes.
//!
//! - **Opening.** The client's `open` carries [`Resume::Offer`]: a random
//!   128-bit id and an ephemeral X25519 public key. The host answers
//!   `ready` with [`Resume::Accept`] and its own public key. Both derive
//!   the session key (HKDF-SHA256 over the shared secret, salted with the
//!   id); the relay passes both public keys on and cannot derive it. The
//!   relay adds to the host's `open` a digest of the client's token
//!   (`owner`).
//! - **Carrying.** After `ready` each direction is a sequence of
//!   [`record`]s: data, acknowledgements (bytes written to the local side,
//!   every 128 KiB or within 20 ms), end of data, abort. Each end keeps
//!   what it sent until the other acknowledges it ([`outbox::Outbox`]).
//! - **Breaking.** A stream that fails without an abort or an end of data
//!   having come through (a reset by the relay, a lost connection, a relay
//!   restarted) leaves both ends waiting, with their TCP connections to
//!   ssh and sshd open, for up to the resume window.
//! - **Resuming.** The client opens a new stream through any relay the
//!   host is registered with, carrying [`Resume::Again`]: the id, an
//!   attempt number, the bytes it has received and an HMAC of these under
//!   the session key. The relay routes it like any `open`, adding the
//!   token digest. The host takes it only if the token is the one that
//!   opened the session, the proof is good and the attempt is newer than
//!   any it took; it answers [`Resume::Resumed`] with the bytes it has
//!   received, proved the same way. Each end then sends again what the
//!   other lacks, and goes on.
//!
//! # What it costs
//! - Idle: nothing beyond the session's bookkeeping (a few hundred bytes);
//!   acknowledgements empty the outbox within 20 ms.
//! - Busy: the outbox holds what is in flight between the two ends, up to
//!   [`replay_limit`] per direction per end (4 MiB with the default
//!   512 KiB windows, eight windows with larger ones). Those are mostly the same
//!   allocations the transport's send buffer holds anyway.
//! - A session that waits for a resume holds its TCP connection and its
//!   outbox, for at most the window.
//!
//! # Limits
//! What is in flight between the ends is bounded by the flow-control
//! windows of the two streams and the relay's send buffer (four 512 KiB
//! windows with the defaults). [`replay_limit`] is twice that, so a resume
//! finds what it needs. A relay with much larger windows could hold more;
//! a resume that needs bytes no longer kept fails, and says so, rather
//! than corrupting anything.

pub mod close;
pub mod engine;
pub mod key;
pub mod outbox;
pub mod outcome;
pub mod parked;
pub mod record;
#[cfg(test)]
pub(crate) mod tests;

use std::time::Duration;

pub use crate::protocol::Resume;
pub use close::end;
pub use engine::{Position, Resumable};
pub use outcome::{Broke, Failure, Outcome, Side};

/// How long a session waits for its path to come back, unless told
/// otherwise.
pub const RESUME_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Most unacknowledged bytes one end keeps per direction of a session,
/// with the default stream window.
pub const REPLAY_LIMIT: usize = 4 * 1024 * 1024;

/// Most unacknowledged bytes kept per direction with stream windows of
/// `window` bytes: [`REPLAY_LIMIT`], or eight windows where that is more
/// (what is in flight is bounded by about four windows).
pub fn replay_limit(window: u32) -> usize {
    REPLAY_LIMIT.max(8 * window as usize)
}
