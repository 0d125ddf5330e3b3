//! The relay's counters: Prometheus metrics (OpenMetrics text, through
//! `prometheus-client`) and per-host counters for `/status`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use crate::protocol::Reason;

mod host;
pub use host::{Active, HostMetrics};

/// Prefix of every metric name.
pub const PREFIX: &str = "shellrelay";

/// Content type of the metrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of both latency histograms' buckets: 1 ms doubling up to
/// about 16 s, which covers a loopback handshake as well as a host that
/// takes its whole setup time (15 s) to reach its target.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The relay's metrics. Counting bytes and sessions is a relaxed atomic
/// add; the histograms take a short lock once per handshake or session.
pub struct Metrics {
    registry: Registry,
    hosts: Gauge,
    sessions_active: Gauge,
    sessions: Counter,
    host_replacements: Counter,
    to_host: Counter,
    to_client: Counter,
    refusals: Family<ReasonLabel, Counter>,
    resumes: Family<ReasonLabel, Counter>,
    introductions: Family<ReasonLabel, Counter>,
    handshake: Histogram,
    session_setup: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under [`PREFIX`].
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let hosts = Gauge::default();
        registry.register(
            "hosts_connected",
            "Hosts registered with the relay now",
            hosts.clone(),
        );
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Sessions relaying bytes now",
            sessions_active.clone(),
        );
        let host_replacements = Counter::default();
        registry.register(
            "host_replacements",
            "Host connections closed because a newer connection registered the same host id",
            host_replacements.clone(),
        );
        let sessions = Counter::default();
        registry.register(
            "sessions",
            "Sessions started (ready sent to the client)",
            sessions.clone(),
        );
        let relayed = Family::<DirectionLabel, Counter>::default();
        let to_host = relayed.get_or_create_owned(&DirectionLabel {
            direction: "to_host",
        });
        let to_client = relayed.get_or_create_owned(&DirectionLabel {
            direction: "to_client",
        });
        registry.register_with_unit(
            "relayed",
            "Session bytes relayed, counted as they move",
            Unit::Bytes,
            relayed,
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "refusals",
            "Hellos and sessions refused, by the protocol's reason",
            refusals.clone(),
        );
        let resumes = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "resumes",
            "Resumes of sessions routed to hosts, by outcome: resumed, or the refusal's reason",
            resumes.clone(),
        );
        let introductions = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "introductions",
            "Clients that asked to reach their host directly, by outcome: made, or why not (no_path, limited)",
            introductions.clone(),
        );
        let handshake = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "handshake_duration",
            "From accepting a QUIC connection attempt to accepting its hello",
            Unit::Seconds,
            handshake.clone(),
        );
        let session_setup = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "session_setup_duration",
            "From accepting a client's session stream to sending it ready",
            Unit::Seconds,
            session_setup.clone(),
        );
        Metrics {
            registry,
            hosts,
            sessions_active,
            sessions,
            host_replacements,
            to_host,
            to_client,
            refusals,
            resumes,
            introductions,
            handshake,
            session_setup,
        }
    }

    /// Counts a host connection replaced by a newer one for the same id.
    pub fn host_replaced(&self) {
        self.host_replacements.inc();
    }

    /// Counts a refusal sent for `reason`.
    pub fn refused(&self, reason: Reason) {
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a resume routed to a host: taken up, or refused for `refused`.
    pub fn resume(&self, refused: Option<Reason>) {
        let reason = refused.map_or("resumed", Reason::as_str);
        self.resumes.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts an introduction asked for: `made`, or why not.
    pub fn introduced(&self, outcome: &'static str) {
        let label = ReasonLabel { reason: outcome };
        self.introductions.get_or_create(&label).inc();
    }

    /// Refusals counted so far, for every reason.
    pub fn refusals(&self) -> u64 {
        Reason::ALL
            .into_iter()
            .chain([Reason::Unknown])
            .map(|reason| {
                let label = ReasonLabel {
                    reason: reason.as_str(),
                };
                self.refusals.get(&label).map_or(0, |c| c.get())
            })
            .sum()
    }

    /// Records a hello accepted on a connection attempt accepted at `since`.
    pub fn hello_accepted(&self, since: Instant) {
        self.handshake.observe(since.elapsed().as_secs_f64());
    }

    /// Records a session whose stream was accepted at `since` and that has
    /// just been sent `ready`; it counts as active until the guard drops.
    pub fn session_started(&self, since: Instant) -> ActiveSession {
        self.session_setup.observe(since.elapsed().as_secs_f64());
        self.sessions.inc();
        self.sessions_active.inc();
        ActiveSession(self.sessions_active.clone())
    }

    /// Counts `n` bytes relayed from a client to `host`.
    pub fn to_host(&self, host: &HostStats, n: u64) {
        self.to_host.inc_by(n);
        host.to_host.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes relayed from `host` to a client.
    pub fn to_client(&self, host: &HostStats, n: u64) {
        self.to_client.inc_by(n);
        host.to_client.fetch_add(n, Ordering::Relaxed);
    }

    /// The metrics as OpenMetrics text, with `hosts` hosts connected.
    pub fn encode(&self, hosts: usize) -> String {
        // Read from the registry at scrape time, so it is never out of step.
        self.hosts.set(i64::try_from(hosts).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A session counted in `sessions_active` until dropped.
#[derive(Debug)]
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A registered host's counters, kept with its registry entry.
#[derive(Debug)]
pub struct HostStats {
    /// When the host registered, in Unix seconds.
    pub since: u64,
    to_host: AtomicU64,
    to_client: AtomicU64,
}

impl HostStats {
    /// Zeroed counters for a host that registered at `since` (Unix seconds).
    pub fn new(since: u64) -> HostStats {
        HostStats {
            since,
            to_host: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        }
    }

    /// Bytes relayed to this host so far.
    pub fn to_host(&self) -> u64 {
        self.to_host.load(Ordering::Relaxed)
    }

    /// Bytes relayed from this host to its clients so far.
    pub fn to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }
}

/// What `/status` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The hosts online now, sorted by id.
    pub hosts: Vec<HostStatus>,
    /// The client connections now, sorted by host and address.
    #[serde(default)]
    pub clients: Vec<ClientStatus>,
}

/// One client connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// The host it reaches.
    pub host: String,
    /// Its token's subject.
    #[serde(default)]
    pub subject: String,
    /// When it was admitted, in Unix seconds.
    pub since: u64,
    /// The client's address as the relay sees it now.
    pub remote: SocketAddr,
    /// `quic` or `tcp`.
    pub transport: String,
}

/// One host online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host id.
    pub id: String,
    /// When this connection of the host registered, in Unix seconds.
    pub since: u64,
    /// The host's address as the relay sees it now.
    pub remote: SocketAddr,
    /// `quic` or `tcp`.
    #[serde(default)]
    pub transport: String,
    /// Whether the host takes direct connections (its clients may then
    /// carry sessions that the relay does not see).
    #[serde(default)]
    pub direct: bool,
    /// Sessions to the host now, including those being set up.
    pub sessions: u64,
    /// Bytes relayed to the host since it registered.
    pub bytes_to_host: u64,
    /// Bytes relayed from the host to its clients since it registered.
    pub bytes_to_client: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_every_metric() {
        let m = Metrics::new();
        let host = HostStats::new(0);
        m.refused(Reason::BadToken);
        m.refused(Reason::Limit);
        assert_eq!(m.refusals(), 2);
        m.to_host(&host, 5);
        m.to_client(&host, 7);
        m.hello_accepted(Instant::now());
        drop(m.session_started(Instant::now()));
        let text = m.encode(3);
        for line in [
            "shellrelay_hosts_connected 3",
            "shellrelay_sessions_active 0",
            "shellrelay_sessions_total 1",
            "shellrelay_host_replacements_total 0",
            "shellrelay_relayed_bytes_total{direction=\"to_host\"} 5",
            "shellrelay_relayed_bytes_total{direction=\"to_client\"} 7",
            "shellrelay_refusals_total{reason=\"bad_token\"} 1",
            "shellrelay_handshake_duration_seconds_count 1",
            "shellrelay_session_setup_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert_eq!((host.to_host(), host.to_client()), (5, 7));
    }
}
