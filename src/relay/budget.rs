//! The relay's memory budget: how much session payload it may hold, and
//! the send buffers that grow and shrink with each connection's sessions.
//!
//! A session buffers at most four stream windows at the relay: what the
//! client sent and the relay has not yet passed on (its receive window),
//! the same from the host, and what the relay wrote towards each of them
//! that they have not yet acknowledged (bounded by each connection's send
//! window, one stream window per session it carries, whatever credit the
//! peer offers). So the relay caps its sessions at the budget divided by
//! four windows, after a fixed reserve for connections that have not yet
//! sent their hello. SECURITY.md writes the formula out.

use std::sync::{Arc, Mutex};

use crate::net::transport::options::PRE_AUTH_WINDOW;
use crate::net::transport::Conn;
use crate::ops::defaults::{INCOMING_BUFFER_TOTAL, KNOWN_RESERVE, MAX_HANDSHAKES};

/// Stream windows a session can hold at the relay: two receive windows and
/// two shares of send buffer.
pub const WINDOWS_PER_SESSION: u64 = 4;

/// What connections that have not sent their hello can hold at once: each
/// of the places before the hello (a pool per transport, and the reserve
/// for known networks) at most its pre-authentication window (over TCP:
/// a TLS record and a hello frame, less than that), plus quinn's buffer
/// for datagrams of connection attempts not yet accepted.
pub const PRE_HELLO_RESERVE: u64 =
    PRE_HELLO_PLACES as u64 * PRE_AUTH_WINDOW as u64 + INCOMING_BUFFER_TOTAL;

/// Connections that may be before their hello at once: a pool of
/// [`MAX_HANDSHAKES`] for each of QUIC and TCP, and [`KNOWN_RESERVE`].
pub const PRE_HELLO_PLACES: usize = 2 * MAX_HANDSHAKES + KNOWN_RESERVE;

/// What an admitted connection may have sent beyond its sessions' windows
/// and not yet had read: one pre-authentication window, room for an
/// `open` frame and its first bytes. Streams the peer opened that the
/// relay has not counted as sessions yet, or has refused, share it.
pub const UNCOUNTED: u64 = PRE_AUTH_WINDOW as u64;

/// What a connection's receive window gives each of its sessions: a
/// stream window and a seventh more. A QUIC receiver announces credit
/// once it is owed an eighth of its connection window, so with stalled
/// sessions holding their windows, the live ones must be able to free
/// that much: without the seventh, nine stalled sessions on a connection
/// would leave every other session on it waiting for credit for ever.
pub fn receive_per_session(window: u32) -> u64 {
    let window = u64::from(window);
    window + window.div_ceil(7)
}

/// What one session may make the relay buffer: its share of two
/// receive windows ([`receive_per_session`], the client's connection and
/// the host's) and two stream windows of send buffer.
pub fn session_bytes(window: u32) -> u64 {
    2 * receive_per_session(window) + (WINDOWS_PER_SESSION - 2) * u64::from(window)
}

/// Most sessions at once that keep the relay's buffered payload within
/// `budget` bytes with stream windows of `window` bytes; at least one.
pub fn max_sessions(budget: u64, window: u32) -> usize {
    let per_session = session_bytes(window.max(1));
    let sessions = budget.saturating_sub(PRE_HELLO_RESERVE) / per_session;
    usize::try_from(sessions).unwrap_or(usize::MAX).max(1)
}

/// One connection's sessions, each of which grows the connection's send
/// buffer by one stream window (one more for the control stream); a peer
/// that offers more credit than that, or does not acknowledge, gets no
/// more of the relay's memory.
pub(super) struct Shares {
    conn: Conn,
    window: u64,
    /// [`receive_per_session`].
    receive: u64,
    sessions: Mutex<usize>,
}

/// One session's share of a connection's send buffer, given back on drop.
pub(super) struct Share(Arc<Shares>);

impl Shares {
    /// Shares of `conn`'s send buffer, `window` bytes each.
    pub fn new(conn: Conn, window: u32) -> Arc<Shares> {
        let shares = Arc::new(Shares {
            conn,
            window: window.into(),
            receive: receive_per_session(window),
            sessions: Mutex::new(0),
        });
        shares.resize(0);
        shares
    }

    /// A share for one more session, unless `cap` sessions hold one.
    pub fn acquire(self: &Arc<Self>, cap: usize) -> Option<Share> {
        let mut sessions = self.lock();
        if *sessions >= cap {
            return None;
        }
        *sessions += 1;
        self.resize(*sessions);
        Some(Share(self.clone()))
    }

    /// A share for one more session; the caller's limits bound how many.
    pub fn take(self: &Arc<Self>) -> Share {
        let mut sessions = self.lock();
        *sessions = sessions.saturating_add(1);
        self.resize(*sessions);
        Share(self.clone())
    }

    /// Sessions holding a share now.
    pub fn get(&self) -> usize {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // A count and a window: a panic cannot leave them inconsistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the send window for `sessions` sessions and the control
    /// stream, and the receive window for `sessions` sessions and
    /// [`UNCOUNTED`]: room for the first words of streams not yet counted
    /// (a new session's `open`, what arrives on a refused stream before it
    /// is stopped), which together hold no more than that.
    fn resize(&self, sessions: usize) {
        let sessions = u64::try_from(sessions).unwrap_or(u64::MAX);
        let windows = sessions.saturating_add(1);
        self.conn
            .set_send_window(windows.saturating_mul(self.window));
        let receive = sessions
            .saturating_mul(self.receive)
            .saturating_add(UNCOUNTED);
        self.conn.set_receive_window(receive);
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut sessions = self.0.lock();
        *sessions = sessions.saturating_sub(1);
        self.0.resize(*sessions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_fits_its_sessions() {
        let budget = crate::ops::defaults::MAX_BUFFERED;
        let window = crate::net::transport::options::STREAM_WINDOW;
        let n = max_sessions(budget, window) as u64;
        assert!(n >= 64, "{n} sessions is too few for a default relay");
        assert!(PRE_HELLO_RESERVE + n * session_bytes(window) <= budget);
        assert!(
            PRE_HELLO_RESERVE + (n + 1) * session_bytes(window) > budget,
            "one more session would still fit"
        );
    }

    #[test]
    fn a_tiny_budget_still_allows_one_session() {
        assert_eq!(max_sessions(0, 1 << 20), 1);
        assert!(
            max_sessions(u64::MAX, 1) > 1 << 40,
            "no overflow at the top"
        );
    }
}
