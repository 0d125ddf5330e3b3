//! The host agent's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::{latency_buckets, ReasonLabel, PREFIX};

/// A session counted as active on its path, until dropped.
pub struct Active(Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

/// The host agent's metrics: resumes of its sessions, and what resumable
/// sessions hold. The gauges are read at scrape time.
pub struct HostMetrics {
    registry: Registry,
    resumes: Family<ReasonLabel, Counter>,
    sessions: Family<PathLabel, Counter>,
    active: Family<PathLabel, Gauge>,
    introductions: Family<ReasonLabel, Counter>,
    time_to_direct: Histogram,
    direct_bytes: Gauge,
    resumable: Gauge,
    waiting: Gauge,
    buffered: Gauge,
}

impl Default for HostMetrics {
    fn default() -> Self {
        HostMetrics::new()
    }
}

impl HostMetrics {
    /// Every metric at zero, registered under [`PREFIX`]`_host`.
    pub fn new() -> HostMetrics {
        let mut registry = Registry::with_prefix(format!("{PREFIX}_host"));
        let resumes = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "resumes",
            "Resumes of sessions by outcome: resumed, or why not (ended, other_token, bad_proof, window_passed, too_many_waiting, token_ended)",
            resumes.clone(),
        );
        let resumable = Gauge::default();
        registry.register(
            "sessions_resumable",
            "Resumable sessions now, carried or waiting for a resume",
            resumable.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "sessions_waiting",
            "Resumable sessions whose path broke, waiting for a resume, each holding its connection to the target",
            waiting.clone(),
        );
        let buffered = Gauge::default();
        registry.register_with_unit(
            "resume_buffered",
            "Bytes sent and not yet acknowledged, kept for resumes",
            Unit::Bytes,
            buffered.clone(),
        );
        let sessions = Family::<PathLabel, Counter>::default();
        registry.register(
            "sessions",
            "Sessions started, by path: relay, or direct",
            sessions.clone(),
        );
        let active = Family::<PathLabel, Gauge>::default();
        registry.register(
            "sessions_active",
            "Sessions now, by path: relay, or direct",
            active.clone(),
        );
        let introductions = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "introductions",
            "Introductions to a client by a relay, by outcome: direct, or why the relay was kept (not_presented)",
            introductions.clone(),
        );
        let time_to_direct = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "time_to_direct",
            "From an introduction to its client's direct connection being admitted",
            Unit::Seconds,
            time_to_direct.clone(),
        );
        let direct_bytes = Gauge::default();
        registry.register_with_unit(
            "direct",
            "Bytes sent and received on direct connections (UDP payload), which no relay carried",
            Unit::Bytes,
            direct_bytes.clone(),
        );
        HostMetrics {
            registry,
            resumes,
            sessions,
            active,
            introductions,
            time_to_direct,
            direct_bytes,
            resumable,
            waiting,
            buffered,
        }
    }

    /// Counts a resume: `resumed`, or why it failed.
    pub fn resume(&self, outcome: &'static str) {
        self.resumes
            .get_or_create(&ReasonLabel { reason: outcome })
            .inc();
    }

    /// Counts a session started on `path`, and as active on it until the
    /// guard goes. A session that moves stays counted on the path it
    /// started on.
    pub fn session_on(&self, path: &'static str) -> Active {
        self.sessions.get_or_create(&PathLabel { path }).inc();
        let gauge = self.active.get_or_create_owned(&PathLabel { path });
        gauge.inc();
        Active(gauge)
    }

    /// Sessions active now on `path`.
    pub fn active(&self, path: &'static str) -> i64 {
        self.active.get(&PathLabel { path }).map_or(0, |g| g.get())
    }

    /// Counts an introduction: `direct`, or why not; `took` from the
    /// introduction to the direct connection.
    pub fn introduced(&self, outcome: &'static str, took: Option<std::time::Duration>) {
        let label = ReasonLabel { reason: outcome };
        self.introductions.get_or_create(&label).inc();
        if let Some(took) = took {
            self.time_to_direct.observe(took.as_secs_f64());
        }
    }

    /// Sets the bytes direct connections have carried so far.
    pub fn set_direct_bytes(&self, bytes: u64) {
        self.direct_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Resumes counted with `outcome`.
    pub fn resumes(&self, outcome: &'static str) -> u64 {
        let label = ReasonLabel { reason: outcome };
        self.resumes.get(&label).map_or(0, |c| c.get())
    }

    /// The metrics as OpenMetrics text, with `resumable` sessions holding
    /// `buffered` bytes, `waiting` of them waiting for a resume.
    pub fn encode(&self, resumable: usize, waiting: usize, buffered: usize) -> String {
        self.resumable
            .set(i64::try_from(resumable).unwrap_or(i64::MAX));
        self.waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        self.buffered
            .set(i64::try_from(buffered).unwrap_or(i64::MAX));
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
