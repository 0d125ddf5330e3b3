//! The relay: accepts QUIC connections from hosts and clients, checks their
//! tokens, keeps the registry `host id → connection`, and splices each
//! client session stream to a fresh stream on the host's connection.
//!
//! This module owns the relay's state, its accept loop and shutdown;
//! `admit` reads hellos and admits hosts and clients, `hold` keeps an
//! admitted connection until it expires, is revoked or closes, and
//! `session` sets up and splices each session.

mod admit;
mod hold;
mod session;

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use quinn::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::limits::{Failures, Gauge, Limits, PerAddr};
use crate::metrics::{HostStats, HostStatus, Metrics, Status};
use crate::protocol::{Reason, DEFAULT_PORT, SHUTDOWN_GRACE};
use crate::revoke::RevocationList;
use crate::token::Verifier;

/// Target of every relay log line, the submodules' included: the target is
/// part of the documented log format.
const LOG_TARGET: &str = module_path!();

/// Default UDP address the relay listens on: every interface, IPv6 and
/// IPv4, on [`DEFAULT_PORT`].
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, DEFAULT_PORT, 0, 0));

/// Longest a QUIC handshake may take before the attempt is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`RelayConfig::hello_timeout`]: longest a connected peer may
/// take to open its control stream and send its hello; a peer that says
/// nothing is dropped rather than held.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused peer gets to read its refusal frame before the
/// connection is closed (the close carries the same words).
pub const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// What the relay accepts and how much.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Checks tokens.
    pub verifier: Verifier,
    /// Caps on sessions, hosts and attempts.
    pub limits: Limits,
    /// Longest wait for a hello (default [`DEFAULT_HELLO_TIMEOUT`]).
    pub hello_timeout: Duration,
    /// Revoked token and host ids ([`crate::revoke`]); none by default.
    pub revocation_file: Option<std::path::PathBuf>,
    /// TCP address of the HTTP endpoint for `/metrics` and `/status`
    /// (default none: no endpoint).
    pub metrics: Option<SocketAddr>,
}

impl RelayConfig {
    /// Default limits and timeouts with `verifier`.
    pub fn new(verifier: Verifier) -> RelayConfig {
        RelayConfig {
            verifier,
            limits: Limits::default(),
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            revocation_file: None,
            metrics: None,
        }
    }
}

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    endpoint: quinn::Endpoint,
    metrics_listener: Option<std::net::TcpListener>,
    state: Arc<State>,
}

/// A view of a running relay's registry, for status and tests.
#[derive(Clone)]
pub struct RelayHandle {
    state: Arc<State>,
}

struct State {
    config: RelayConfig,
    handshakes: PerAddr,
    failures: Failures,
    connections: Gauge,
    /// Connections that completed the QUIC handshake, ever.
    accepted: AtomicU64,
    /// Hellos refused, ever.
    refused: AtomicU64,
    /// Set when a session ends: memory may have been freed that the
    /// allocator could hand back to the system.
    trim_due: std::sync::atomic::AtomicBool,
    hosts: Mutex<HashMap<String, HostEntry>>,
    revoked: RevocationList,
    metrics: Metrics,
    metrics_addr: Option<SocketAddr>,
    /// Bumped on every registry change, so waiters need not poll.
    changes: watch::Sender<u64>,
    next_id: AtomicU64,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

struct HostEntry {
    conn: Connection,
    generation: u64,
    sessions: Gauge,
    stats: Arc<HostStats>,
}

impl Relay {
    /// Binds the relay's UDP socket on `addr` (port 0 picks a free port).
    pub fn bind(
        addr: SocketAddr,
        server: quinn::ServerConfig,
        config: RelayConfig,
    ) -> anyhow::Result<Relay> {
        let revoked = RevocationList::open(config.revocation_file.clone())?;
        let endpoint = crate::tls::bind_endpoint(addr, Some(server))?;
        let (metrics_listener, metrics_addr) =
            config.metrics.map(crate::status::bind).transpose()?.unzip();
        let (changes, _) = watch::channel(0);
        Ok(Relay {
            endpoint,
            metrics_listener,
            state: Arc::new(State {
                config,
                handshakes: PerAddr::default(),
                failures: Failures::default(),
                connections: Gauge::default(),
                accepted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                trim_due: std::sync::atomic::AtomicBool::new(false),
                hosts: Mutex::new(HashMap::new()),
                revoked,
                metrics: Metrics::new(),
                metrics_addr,
                changes,
                next_id: AtomicU64::new(1),
                tasks: TaskTracker::new(),
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
        let Relay {
            endpoint,
            metrics_listener,
            state,
        } = self;
        info!(addr = %endpoint.local_addr()?, "relay listening");
        if let Some(listener) = metrics_listener {
            // Not in `tasks` either; it ends with the cancel token.
            let handle = RelayHandle {
                state: state.clone(),
            };
            crate::status::start(listener, handle, state.cancel.clone())?;
        }
        // Not in `tasks`, which counts connections and sessions; it ends
        // with the cancel token.
        tokio::spawn(give_back_memory(state.clone()));
        if state.revoked.has_file() {
            tokio::spawn(watch_revocations(state.clone()));
        }
        loop {
            let incoming = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let remote = incoming.remote_address();
            let span = tracing::info_span!("conn", %remote);
            state
                .tasks
                .spawn(admit::handle_incoming(state.clone(), incoming).instrument(span));
        }
        info!("relay shutting down");
        state.cancel.cancel();
        endpoint.close(Reason::ShuttingDown.varint(), b"relay shutting down");
        state.tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            state.tasks.wait().await;
            endpoint.wait_idle().await;
        })
        .await;
        // Let go of every connection so the socket closes with the endpoint.
        state.lock_hosts().clear();
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

    /// Ids of the hosts connected now.
    pub fn hosts(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state.lock_hosts().keys().cloned().collect();
        ids.sort();
        ids
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

    /// Hellos refused since the relay started.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// Tasks running now: one per connection and one per session.
    pub fn tasks(&self) -> usize {
        self.state.tasks.len()
    }

    /// The address of the HTTP endpoint for `/metrics` and `/status`, if on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.state.metrics_addr
    }

    /// The metrics as OpenMetrics text.
    pub fn metrics(&self) -> String {
        let hosts = self.state.lock_hosts().len();
        self.state.metrics.encode(hosts)
    }

    /// The hosts online now, with their counters.
    pub fn status(&self) -> Status {
        let mut hosts: Vec<HostStatus> = self
            .state
            .lock_hosts()
            .iter()
            .map(|(id, e)| HostStatus {
                id: id.clone(),
                since: e.stats.since,
                remote: e.conn.remote_address(),
                sessions: e.sessions.get() as u64,
                bytes_to_host: e.stats.to_host(),
                bytes_to_client: e.stats.to_client(),
            })
            .collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        Status { hosts }
    }

    /// Waits until host `id` is connected (`online`) or not (`!online`).
    pub async fn wait_host(&self, id: &str, online: bool) {
        let mut changes = self.state.changes.subscribe();
        loop {
            if self.state.lock_hosts().contains_key(id) == online {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

impl State {
    fn lock_hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostEntry>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every update is a single insert or remove), so poisoning is ignored.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn host_conn(&self, id: &str) -> Option<(Connection, Gauge, Arc<HostStats>)> {
        self.lock_hosts()
            .get(id)
            .map(|e| (e.conn.clone(), e.sessions.clone(), e.stats.clone()))
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Re-reads the revocation file when it changes.
async fn watch_revocations(state: Arc<State>) {
    let mut tick = tokio::time::interval(crate::revoke::POLL_INTERVAL);
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

/// How often the relay hands memory freed by ended sessions back to the
/// system. Bulk sessions buffer megabytes each; glibc's allocator keeps
/// freed memory for reuse, so without this the relay would stay at its
/// high-water mark long after the sessions are gone.
pub const MEMORY_TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Trims the allocator's free memory after sessions end, until shutdown.
async fn give_back_memory(state: Arc<State>) {
    let mut tick = tokio::time::interval(MEMORY_TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = state.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if state.trim_due.swap(false, Ordering::Relaxed) {
            // malloc_trim walks the heap: keep it off the async workers.
            let _ = tokio::task::spawn_blocking(trim_allocator).await;
        }
    }
}

fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at
    // any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
