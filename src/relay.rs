//! The relay: accepts QUIC connections from hosts and clients, checks their
//! tokens, keeps the registry `host id → connection`, and splices each
//! client session stream to a fresh stream on the host's connection.
//!
//! This module owns the relay's state, its accept loop and shutdown;
//! `conn` runs each connection's life from handshake to close, `admit`
//! decides on hellos, `registry` owns the host registry, `hold` keeps an
//! admitted connection until it expires, is revoked or closes, and
//! `session` sets up and splices each session.

mod admit;
pub mod budget;
mod conn;
mod hold;
mod registry;
mod session;
mod throttle;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::defaults::{HELLO_TIMEOUT, SHUTDOWN_GRACE};
use crate::limits::{Counts, Failures, Gauge, Limits, PerAddr};
use crate::memory::Trim;
use crate::metrics::{Metrics, Status};
use crate::protocol::Reason;
use crate::revoke::RevocationList;
use crate::tasks::Tasks;
use crate::tls::{Identity, TransportOptions};
use crate::token::Verifier;
use registry::Registry;

/// Target of every relay log line, the submodules' included: the target is
/// part of the documented log format.
const LOG_TARGET: &str = module_path!();

/// What the relay accepts and how much.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Checks tokens.
    pub verifier: Verifier,
    /// Caps on sessions, hosts, attempts and buffered payload.
    pub limits: Limits,
    /// Keep-alive, idle timeout and stream window of its connections.
    pub transport: TransportOptions,
    /// Longest wait for a hello (default [`HELLO_TIMEOUT`]).
    pub hello_timeout: Duration,
    /// Revoked token and host ids ([`crate::revoke`]); none by default.
    pub revocation_file: Option<std::path::PathBuf>,
    /// The endpoint's configuration; by default a random stateless-reset
    /// key, which [`crate::transport::quic::endpoint_config`] replaces with one that
    /// survives restarts.
    pub endpoint: quinn::EndpointConfig,
}

impl RelayConfig {
    /// Default limits and timeouts with `verifier`.
    pub fn new(verifier: Verifier) -> RelayConfig {
        RelayConfig {
            verifier,
            limits: Limits::default(),
            transport: TransportOptions::default(),
            hello_timeout: HELLO_TIMEOUT,
            revocation_file: None,
            endpoint: quinn::EndpointConfig::default(),
        }
    }
}

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    endpoint: quinn::Endpoint,
    state: Arc<State>,
}

/// A view of a running relay's registry and counters, for status and tests.
#[derive(Clone)]
pub struct RelayHandle {
    state: Arc<State>,
}

/// What every connection and session of the relay shares.
struct State {
    config: RelayConfig,
    /// Connections per address still in their handshake or hello, from
    /// addresses that proved themselves (a retry) and from those that did
    /// not.
    handshakes: PerAddr,
    unproven: PerAddr,
    /// Connections in their handshake or before their hello, in all.
    pre_hello: Gauge,
    /// Refused tokens per address.
    failures: Failures,
    /// Connections open now, authenticated or not.
    connections: Gauge,
    /// Sessions now, set up or running, over every connection, and the
    /// most there may be ([`budget::max_sessions`]).
    sessions: Gauge,
    max_sessions: usize,
    /// Connections that completed the QUIC handshake, ever.
    accepted: AtomicU64,
    /// Hands memory back after sessions end.
    trim: Trim,
    hosts: Arc<Registry>,
    revoked: RevocationList,
    metrics: Metrics,
    /// The next session id.
    session_ids: AtomicU64,
    /// Sessions per client token, over all its connections.
    token_sessions: Counts<String>,
    /// Connections per client token.
    token_connections: Counts<String>,
    /// One task per connection and per session.
    tasks: Tasks,
    /// Warnings a peer can cause at will, summarised.
    hello_timeouts: throttle::Throttle,
    bad_tokens: throttle::Throttle,
    handshakes_full: throttle::Throttle,
    cancel: CancellationToken,
}

impl Relay {
    /// Binds the relay's UDP socket on `addr` (port 0 picks a free port),
    /// serving with `identity`.
    pub fn bind(
        addr: SocketAddr,
        identity: Identity,
        config: RelayConfig,
    ) -> anyhow::Result<Relay> {
        let revoked = RevocationList::open(config.revocation_file.clone())?;
        let server = crate::tls::server_config(identity, config.transport)?;
        let endpoint = crate::tls::bind_endpoint_with(addr, config.endpoint.clone(), Some(server))?;
        let window = config.transport.window();
        let hosts = Arc::new(Registry::new(config.limits.max_hosts, window));
        let max_sessions = budget::max_sessions(config.limits.max_buffered, window);
        Ok(Relay {
            endpoint,
            state: Arc::new(State {
                config,
                handshakes: PerAddr::default(),
                unproven: PerAddr::default(),
                pre_hello: Gauge::default(),
                failures: Failures::default(),
                connections: Gauge::default(),
                sessions: Gauge::default(),
                max_sessions,
                accepted: AtomicU64::new(0),
                trim: Trim::default(),
                hosts,
                revoked,
                metrics: Metrics::new(),
                session_ids: AtomicU64::new(1),
                token_sessions: Counts::default(),
                token_connections: Counts::default(),
                tasks: Tasks::new(),
                hello_timeouts: Default::default(),
                bad_tokens: Default::default(),
                handshakes_full: Default::default(),
                cancel: CancellationToken::new(),
            }),
        })
    }

    /// The address the relay listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .context("relay socket has no address")
    }

    /// A handle to the registry.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then closes every connection
    /// with [`Reason::ShuttingDown`].
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Relay { endpoint, state } = self;
        info!(
            addr = %endpoint.local_addr()?,
            max_sessions = state.max_sessions,
            "relay listening"
        );
        // Housekeeping lives apart from `tasks`, which counts connections
        // and sessions.
        let housekeeping = Tasks::new();
        housekeeping.spawn(state.trim.clone().run(state.cancel.clone()));
        if state.revoked.has_file() {
            housekeeping.spawn(watch_revocations(state.clone()));
        }
        loop {
            let incoming = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let remote = incoming.remote_address();
            let _span = tracing::info_span!("conn", %remote).entered();
            state.tasks.spawn(conn::quic(state.clone(), incoming));
        }
        info!("relay shutting down");
        state.cancel.cancel();
        endpoint.close(Reason::ShuttingDown.varint(), b"relay shutting down");
        // One grace period for the sessions and the peers' acknowledgements.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let idle = async {
            state.tasks.shutdown(SHUTDOWN_GRACE).await;
            let _ = tokio::time::timeout_at(deadline, endpoint.wait_idle()).await;
        };
        tokio::join!(idle, housekeeping.shutdown(SHUTDOWN_GRACE));
        // Let go of every connection so the socket closes with the endpoint.
        state.hosts.clear();
        Ok(())
    }
}

impl RelayHandle {
    /// Re-reads the revocation file (as SIGHUP does) and closes the live
    /// connections it revokes. Returns the entries now in force; on an
    /// error the previous list stays.
    pub fn reload_revocations(&self) -> anyhow::Result<usize> {
        self.state.revoked.reload()
    }

    /// Ids of the hosts connected now, sorted.
    pub fn hosts(&self) -> Vec<String> {
        self.state
            .hosts
            .snapshot()
            .into_iter()
            .map(|h| h.id)
            .collect()
    }

    /// Sessions now, set up or running, and the most the relay's memory
    /// budget allows.
    pub fn sessions(&self) -> (usize, usize) {
        (self.state.sessions.get(), self.state.max_sessions)
    }

    /// Connections open now, authenticated or not.
    pub fn connections(&self) -> usize {
        self.state.connections.get()
    }

    /// Connections that completed the QUIC handshake since the relay started;
    /// a peer that migrates to a new address keeps its connection.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Hellos and sessions refused since the relay started, as
    /// `shellrelay_refusals_total` counts them.
    pub fn refused(&self) -> u64 {
        self.state.metrics.refusals()
    }

    /// Tasks running now: one per connection and one per session.
    pub fn tasks(&self) -> usize {
        self.state.tasks.len()
    }

    /// The metrics as OpenMetrics text.
    pub fn metrics(&self) -> String {
        self.state.metrics.encode(self.state.hosts.len())
    }

    /// The hosts online now, with their counters.
    pub fn status(&self) -> Status {
        Status {
            hosts: self.state.hosts.snapshot(),
        }
    }

    /// Waits until host `id` is connected (`online`) or not (`!online`).
    pub async fn wait_host(&self, id: &str, online: bool) {
        self.state.hosts.wait(id, online).await
    }
}

impl State {
    fn next_session_id(&self) -> u64 {
        self.session_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Re-reads the revocation file when it changes.
async fn watch_revocations(state: Arc<State>) {
    let mut tick = tokio::time::interval(crate::defaults::REVOCATION_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.revoked.reload_if_changed() {
            Some(Ok(n)) => info!(entries = n, "revocation file re-read"),
            Some(Err(err)) => warn!("{err:#}; the previous list stays in force"),
            None => {}
        }
    }
}
