//! The transport settings every role shares: which transport to dial
//! with, keep-alive and idle timeout, stream windows and congestion
//! control.

use std::time::Duration;

use super::quic::congestion::{Congestion, CONGESTION};
use crate::ops::defaults::{IDLE_TIMEOUT, KEEP_ALIVE};

/// Most concurrent sessions (bidirectional streams) per connection: far
/// above quinn's default of 100 so that many ssh sessions share one
/// connection without waiting.
pub const MAX_STREAMS: u32 = 16_384;

/// Default per-stream receive window (`--stream-window`). One session
/// moves at most a window per round trip of each hop: 512 KiB carries
/// 100 Mbit/s over hops of 20 ms round trip (85 Mbit/s at 40 ms; 1 MiB
/// reaches 96). It also bounds what a stalled session (an ssh client that
/// stops reading) holds at each hop: quinn keeps received packets whole
/// and compacts a stream's buffer only past 1.5 times its data, so up to
/// 2.5 windows of memory. README "Limits" has the measured trade-off.
pub const STREAM_WINDOW: u32 = 512 * 1024;

/// Smallest stream window accepted: a protocol frame and its length must
/// fit in one.
pub const MIN_STREAM_WINDOW: u32 = 64 * 1024;

/// Largest stream window accepted: 1 Gbit/s over a 500 ms round trip.
pub const MAX_STREAM_WINDOW: u32 = 64 * 1024 * 1024;

/// Connection receive window of a peer that has not yet been authenticated:
/// room for a hello, not for megabytes of unsolicited data.
pub const PRE_AUTH_WINDOW: u32 = 64 * 1024;

/// Which transport a peer dials the relay with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC, and TLS over TCP too if QUIC has not answered within
    /// [`crate::ops::defaults::TCP_AFTER`]: whichever answers first.
    #[default]
    Auto,
    /// QUIC over UDP only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

/// Transport settings shared by every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportOptions {
    /// Interval of keep-alive packets.
    pub keep_alive: Duration,
    /// Silence after which a connection is considered dead.
    pub idle_timeout: Duration,
    /// Per-stream receive window, bytes ([`STREAM_WINDOW`]).
    pub stream_window: u32,
    /// Congestion controller.
    pub congestion: Congestion,
    /// Which transport a peer dials the relay with.
    pub via: Transport,
    /// With [`Transport::Auto`], how often a peer on TCP
    /// tries QUIC again.
    pub quic_retry: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            keep_alive: KEEP_ALIVE,
            idle_timeout: IDLE_TIMEOUT,
            stream_window: STREAM_WINDOW,
            congestion: CONGESTION,
            via: Transport::Auto,
            quic_retry: crate::ops::defaults::QUIC_RETRY,
        }
    }
}

impl TransportOptions {
    /// The stream window in force: [`TransportOptions::stream_window`]
    /// within [`MIN_STREAM_WINDOW`]..=[`MAX_STREAM_WINDOW`].
    pub fn window(&self) -> u32 {
        self.stream_window
            .clamp(MIN_STREAM_WINDOW, MAX_STREAM_WINDOW)
    }
}
