//! Whether the relay is still there while sessions need it. A relay that
//! dies without a word (power cut, partition, a hung process) is
//! otherwise noticed only by the idle timeout, 30 s later, and its
//! sessions freeze that long.
//!
//! While sessions are live, a peer looks every [`PROBE_EVERY`] for a sign
//! of life: anything that arrived on the connection (a QUIC datagram, a
//! byte over TCP). When nothing has since the last look, it asks for one:
//! over QUIC a [`Frame::Ping`] on the control stream, which the relay's
//! QUIC stack acknowledges within its ack delay; over TCP an HTTP/2 PING.
//! After [`SILENT_AFTER`] of silence (or four round trips, on a longer
//! path) the relay counts as gone. When no session is live nothing extra
//! is sent: keep-alives stay what they were.
//!
//! Over QUIC this needs a relay that reads its peers' control streams;
//! one that stops them (an older relay) gets no probes, and its silence
//! is left to the idle timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Conn, SendStream, Stream, WeakConn};
use crate::ops::defaults::{PROBE_EVERY, SILENT_AFTER};
use crate::protocol::{read_frame, write_frame, Frame};

/// Watches one connection to the relay for silence.
#[derive(Debug)]
pub struct Liveness {
    /// Does not keep a TCP connection open: that closes with its last
    /// session.
    conn: WeakConn,
    /// Over QUIC: the control stream's sending half, on which probes go;
    /// `None` once the relay has refused them.
    probes: Option<SendStream>,
    /// Over QUIC: the control stream's receiving half, on which the relay
    /// may ask whether this side is still there; read and dropped.
    control: Option<super::RecvStream>,
}

impl Liveness {
    /// A watch on `conn`, whose control stream (over QUIC) is `control`.
    pub fn new(conn: Conn, control: Option<Stream>) -> Liveness {
        let (probes, control) = match control {
            Some(Stream { send, recv }) => (Some(send), Some(recv)),
            None => (None, None),
        };
        Liveness {
            conn: conn.downgrade(),
            probes,
            control,
        }
    }

    /// Silence after which the relay counts as gone: [`SILENT_AFTER`], or
    /// four round trips on a path that long.
    fn limit(conn: &Conn) -> Duration {
        SILENT_AFTER.max(conn.rtt().saturating_mul(4))
    }

    /// Resolves once the relay has been silent for the limit (`SILENT_AFTER`, or four round trips)
    /// while `busy` said sessions were live, with how long it was silent.
    /// Never resolves over a QUIC connection whose relay takes no probes.
    pub async fn silent(mut self, busy: impl Fn() -> bool) -> Duration {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut heard, mut heard_at) = (None, Instant::now());
        let mut control = self.control.take();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = drop_frame(&mut control) => continue,
            }
            let Some(conn) = self.conn.upgrade() else {
                return std::future::pending().await;
            };
            let now = Instant::now();
            let count = Some(conn.heard());
            if count != heard || !busy() {
                (heard, heard_at) = (count, now);
                continue;
            }
            let quiet = now - heard_at;
            if quiet >= Self::limit(&conn) {
                return quiet;
            }
            if !self.probe(&conn) {
                return std::future::pending().await;
            }
        }
    }

    /// Asks the relay for a sign of life, without waiting; false if it
    /// cannot be asked (a QUIC relay that stopped the control stream).
    fn probe(&mut self, conn: &Conn) -> bool {
        match (conn, &mut self.probes) {
            (Conn::Tcp(tcp), _) => {
                tcp.poke();
                true
            }
            (Conn::Quic(_), Some(send)) => {
                // A full send buffer holds earlier probes still: no need
                // for another.
                match write_frame(send, &Frame::Ping).now_or_never() {
                    Some(Err(_)) => {
                        self.probes = None;
                        false
                    }
                    Some(Ok(())) | None => true,
                }
            }
            (Conn::Quic(_), None) => false,
        }
    }
}

/// Reads what arrived on `control` and drops it (the relay's probes), as
/// bytes, so that being cut short by the next tick loses nothing that
/// matters; once the stream has ended or failed, never resolves.
async fn drop_frame(control: &mut Option<super::RecvStream>) {
    match control {
        Some(recv) => {
            let mut chunks: [bytes::Bytes; 4] = Default::default();
            if !matches!(recv.read_chunks(&mut chunks).await, Ok(Some(_))) {
                *control = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// The relay's side, over QUIC: reads a peer's control stream after its
/// welcome and drops the probes on it, at most one every
/// [`ABSORB_SPACING`]. What a peer sends faster waits in the stream's
/// window, which its connection's receive window counts. Anything but a
/// probe stops the stream.
pub async fn absorb_probes(mut control: super::RecvStream) {
    loop {
        match read_frame(&mut control).await {
            Ok(Frame::Ping) => tokio::time::sleep(ABSORB_SPACING).await,
            Ok(_) => {
                control.stop(crate::protocol::Reason::Protocol);
                return;
            }
            Err(_) => return,
        }
    }
}

/// Least time between two probes the relay reads from one peer: a peer
/// probes at most every [`PROBE_EVERY`].
pub const ABSORB_SPACING: Duration = Duration::from_millis(50);

/// The relay's question to a peer: are you still there? Over QUIC a
/// [`Frame::Ping`] on the peer's control stream, which its QUIC stack
/// acknowledges whether or not anyone reads it; over TCP an HTTP/2 PING.
#[derive(Debug, Clone)]
pub struct Prober {
    conn: WeakConn,
    /// Over QUIC: the control stream's sending half.
    control: Option<Arc<tokio::sync::Mutex<SendStream>>>,
}

impl Prober {
    /// Asks the peer of `conn`, over `control` (QUIC).
    pub fn new(conn: &Conn, control: Option<Arc<tokio::sync::Mutex<SendStream>>>) -> Prober {
        Prober {
            conn: conn.downgrade(),
            control,
        }
    }

    /// Whether the peer answers within `within`: anything heard from it
    /// after the question counts. A connection that closed does not
    /// answer; one that cannot be asked (no control stream) counts as
    /// answering.
    pub async fn answers(&self, within: Duration) -> bool {
        let Some(conn) = self.conn.upgrade() else {
            return false;
        };
        let deadline = Instant::now() + within;
        let before = conn.heard();
        let mut ask_at = Instant::now();
        loop {
            if conn.close_reason().is_some() {
                return false;
            }
            if conn.heard() != before {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if now >= ask_at {
                ask_at = now + PROBE_EVERY;
                match (&conn, &self.control) {
                    (Conn::Tcp(tcp), _) => tcp.poke(),
                    (Conn::Quic(_), Some(control)) => {
                        if let Ok(mut send) = control.try_lock() {
                            let _ = write_frame(&mut *send, &Frame::Ping).now_or_never();
                        }
                    }
                    (Conn::Quic(_), None) => return true,
                }
            }
            tokio::time::sleep(ANSWER_POLL.min(deadline - now)).await;
        }
    }
}

/// How often [`Prober::answers`] looks for an answer.
const ANSWER_POLL: Duration = Duration::from_millis(10);
