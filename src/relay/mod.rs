//! The relay: accepts connections from hosts and clients over QUIC (and
//! TLS over TCP from those whose network blocks UDP), checks their
//! tokens, keeps the registry `host id → connection`, and splices each
//! client session stream to a fresh stream on the host's connection.
//!
//! This module owns the relay's state, its accept loop and shutdown;
//! `conn` runs each connection's life from its places before the hello to
//! its close (the transport's [`crate::net::transport::listen`] does the
//! handshake and the hello), `places` and `budget` keep every peer to its
//! share, `admit` decides on hellos, `registry` owns the host registry,
//! `keep` holds an admitted connection until it expires, is revoked or
//! closes, `session` sets up and splices each session, and `audit` writes
//! the audit log.

mod admit;
mod audit;
pub mod budget;
mod conn;
mod handle;
mod introduce;
mod keep;
mod owners;
mod places;
mod registry;
mod session;
mod throttle;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access::revoke::RevocationList;
use crate::access::token::Verifier;
use crate::net::tls::Identity;
pub use crate::net::transport::listen::ListenTcp;
use crate::net::transport::listen::{EndpointKeys, Listener, Via};
use crate::net::transport::TransportOptions;
use crate::ops::defaults::{HELLO_TIMEOUT, SHUTDOWN_GRACE};
use crate::ops::limits::{Counts, Failures, Gauge, Known, Limits, Penalties, PerAddr, Rates};
use crate::ops::memory::Trim;
use crate::ops::metrics::Metrics;
use crate::ops::tasks::Tasks;
use crate::protocol::Reason;
use places::PreHello;
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
    /// Revoked token and host ids ([`crate::access::revoke`]); none by default.
    pub revocation_file: Option<std::path::PathBuf>,
    /// Where to append the audit log (README, "Audit log"); none by default.
    pub audit_log: Option<std::path::PathBuf>,
    /// The QUIC endpoint's stateless-reset and connection-id keys: by
    /// default random; `relay` derives them from its private key, so that
    /// they survive restarts.
    pub endpoint_keys: EndpointKeys,
    /// Where to listen for TLS over TCP.
    pub listen_tcp: ListenTcp,
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
            audit_log: None,
            endpoint_keys: EndpointKeys::Random,
            listen_tcp: ListenTcp::Same,
        }
    }
}

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    listener: Listener,
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
    /// Connections still in their handshake or hello, per network and
    /// in all, for each transport; see [`PreHello`].
    quic: PreHello,
    tcp: PreHello,
    /// QUIC connections per network in their handshake from addresses
    /// that did not prove themselves (no retry yet).
    unproven: PerAddr,
    /// Places before the hello kept for known networks, both transports.
    known_reserve: Gauge,
    /// Networks a peer was admitted from lately.
    known: Known,
    /// Refused tokens per address.
    failures: Failures,
    /// Handshakes from networks penalised for bad tokens.
    penalised_handshakes: Rates<std::net::IpAddr>,
    /// New sessions per client token and per host, streams abandoned per
    /// client token, and the tokens refused for abandoning too many.
    session_rates: Rates<String>,
    host_rates: Rates<String>,
    abandoned: Rates<String>,
    /// Introductions per client token ([`introduce`]).
    introductions: Rates<String>,
    penalties: Penalties<String>,
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
    /// Client connections admitted now.
    clients: Arc<registry::Clients>,
    /// Client tokens admitted lately, whose hosts are told when they end.
    owners: owners::Owners,
    /// Admissions, refusals and sessions, for the audit log.
    audit: audit::Audit,
    /// This relay process, in welcomes: a host agent that reaches it under
    /// two names (or two addresses) keeps one registration.
    instance: String,
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
    /// Binds the relay's UDP socket on `addr` (port 0 picks a free port)
    /// and its TCP listener as [`RelayConfig::listen_tcp`] says (by default
    /// the same address and port), serving with `identity`.
    pub fn bind(
        addr: SocketAddr,
        identity: Identity,
        config: RelayConfig,
    ) -> anyhow::Result<Relay> {
        let revoked = RevocationList::open(config.revocation_file.clone())?;
        let audit = audit::Audit::open(config.audit_log.as_deref())?;
        let listener = Listener::bind(
            addr,
            identity,
            config.transport,
            config.listen_tcp,
            config.endpoint_keys,
        )?;
        let window = config.transport.window();
        let hosts = Arc::new(Registry::new(config.limits.max_hosts, window));
        let max_sessions = budget::max_sessions(config.limits.max_buffered, window);
        Ok(Relay {
            listener,
            state: Arc::new(State {
                config,
                quic: PreHello::default(),
                tcp: PreHello::default(),
                unproven: PerAddr::default(),
                known_reserve: Gauge::default(),
                known: Known::default(),
                failures: Failures::default(),
                penalised_handshakes: Rates::default(),
                session_rates: Rates::default(),
                host_rates: Rates::default(),
                abandoned: Rates::default(),
                introductions: Rates::default(),
                penalties: Penalties::default(),
                connections: Gauge::default(),
                sessions: Gauge::default(),
                max_sessions,
                accepted: AtomicU64::new(0),
                trim: Trim::default(),
                hosts,
                clients: Arc::default(),
                owners: owners::Owners::default(),
                audit,
                instance: crate::access::token::random_id(),
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
        self.listener.local_addr()
    }

    /// The address the relay listens on for TLS over TCP, if it does.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listener.tcp_addr()
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
        let Relay {
            mut listener,
            state,
        } = self;
        let tcp_addr = listener.tcp_addr();
        info!(
            addr = %listener.local_addr()?,
            tcp = %tcp_addr.map_or("off".to_owned(), |a| a.to_string()),
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
        housekeeping.spawn(owners::watch(state.clone()));
        loop {
            let incoming = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                incoming = listener.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let remote = incoming.remote();
            let _span = tracing::info_span!("conn", %remote).entered();
            state.tasks.spawn(conn::serve(state.clone(), incoming));
        }
        info!("relay shutting down");
        state.cancel.cancel();
        // No new connections during the shutdown.
        listener.close(Reason::ShuttingDown, "relay shutting down");
        // One grace period for the sessions and the peers' acknowledgements.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let idle = async {
            state.tasks.shutdown(SHUTDOWN_GRACE).await;
            let _ = tokio::time::timeout_at(deadline, listener.wait_idle()).await;
        };
        tokio::join!(idle, housekeeping.shutdown(SHUTDOWN_GRACE));
        // Let go of every connection so the socket closes with the endpoint.
        state.hosts.clear();
        state.audit.close().await;
        Ok(())
    }
}

impl State {
    fn next_session_id(&self) -> u64 {
        self.session_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The places before the hello of connections over `via`.
    fn pre_hello(&self, via: Via) -> &PreHello {
        match via {
            Via::Quic => &self.quic,
            Via::Tcp => &self.tcp,
        }
    }
}

/// Re-reads the revocation file when it changes.
async fn watch_revocations(state: Arc<State>) {
    let mut tick = tokio::time::interval(crate::ops::defaults::REVOCATION_POLL);
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
