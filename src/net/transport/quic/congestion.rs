//! Congestion control: the `--congestion` choice ([`Congestion`]), and BBR
//! as quinn implements it, with its window kept open on sub-millisecond
//! paths.
//!
//! BBR's window is about twice the bandwidth-delay product. On loopback
//! and fast LANs the round trip is a fraction of a millisecond of kernel
//! and scheduler time, so that window can be a few packets (8 KiB at
//! 1.2 Gbit/s was seen on loopback): every send waits for an
//! acknowledgement and the process spends its time waking up, not moving
//! bytes. The window here is never below what [`FLOOR_RTT`] of
//! round trip at BBR's pacing rate would need; on any path with a round
//! trip longer than that it changes nothing.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// The shortest round trip BBR's window is sized for.
pub const FLOOR_RTT: Duration = Duration::from_millis(2);

/// Congestion controller of every role (`--congestion`): BBR, since random
/// loss on Wi-Fi and mobile paths cuts a loss-based controller to a small
/// fraction of the path (README "Lossy and long paths", `cargo bench
/// --bench wan`).
pub const CONGESTION: Congestion = Congestion::Bbr;

/// Congestion controller of every connection a role makes or accepts
/// (`--congestion`; default [`CONGESTION`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// BBR: paces at the measured bottleneck rate; random loss does not
    /// cut its rate. quinn's, with its window kept open on sub-millisecond
    /// paths ([`crate::net::transport::quic::congestion`]).
    Bbr,
    /// CUBIC: loss-based, quinn's default; halves on every loss.
    Cubic,
    /// NewReno: loss-based, the classic.
    #[value(name = "newreno")]
    NewReno,
}

impl Congestion {
    pub(crate) fn factory(
        self,
    ) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync + 'static> {
        use quinn::congestion::{CubicConfig, NewRenoConfig};
        match self {
            Congestion::Bbr => Arc::new(BbrFactory::default()),
            Congestion::Cubic => Arc::new(CubicConfig::default()),
            Congestion::NewReno => Arc::new(NewRenoConfig::default()),
        }
    }
}

/// Builds [`Bbr`] controllers.
#[derive(Debug, Default)]
pub struct BbrFactory {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for BbrFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bbr {
            inner: self.bbr.clone().build(now, current_mtu),
        })
    }
}

/// quinn's BBR with a window for at least [`FLOOR_RTT`].
pub struct Bbr {
    inner: Box<dyn Controller>,
}

/// The window BBR would keep at `pacing_rate` (bit/s) on a round trip of
/// `rtt`: twice that much in flight.
fn floor(pacing_rate: u64, rtt: Duration) -> u64 {
    (pacing_rate as f64 / 8.0 * rtt.as_secs_f64() * 2.0) as u64
}

impl Controller for Bbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        let rate = self.inner.metrics().pacing_rate.unwrap_or(0);
        self.inner.window().max(floor(rate, FLOOR_RTT))
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.inner.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Bbr {
            inner: self.inner.clone_box(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_two_round_trips_of_floor_rtt_at_the_pacing_rate() {
        // Seen on loopback: quinn's BBR at 1.2 Gbit/s with an 8 KiB window.
        assert_eq!(floor(1_200_000_000, FLOOR_RTT), 600_000);
        // Before BBR has a rate, its own window stands.
        assert_eq!(floor(0, FLOOR_RTT), 0);
        // 100 Mbit/s across 20 ms: BBR's own window (about 500 KB) is far
        // above the floor, which changes nothing there.
        assert!(floor(100_000_000, FLOOR_RTT) < 100_000_000 / 8 * 20 / 1000);
    }

    #[test]
    fn a_fresh_controller_starts_from_bbrs_initial_window() {
        let bbr = Arc::new(BbrFactory::default()).build(Instant::now(), 1200);
        let plain = Arc::new(BbrConfig::default()).build(Instant::now(), 1200);
        assert_eq!(bbr.window(), plain.window());
        assert_eq!(bbr.initial_window(), plain.initial_window());
    }
}
