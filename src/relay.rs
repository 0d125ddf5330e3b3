//! The relay: accepts QUIC connections from hosts and clients, checks their
//! tokens, keeps the registry `host id → connection`, and splices each
//! client session stream to a fresh stream on the host's connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::limits::{Failures, Gauge, GaugeGuard, Limits, PerAddr, PerAddrGuard};
use crate::metrics::{HostStats, HostStatus, Metrics, Status};
use crate::protocol::{
    read_frame, send_refusal, write_frame, Frame, FrameError, Reason, Refusal, HOST_SETUP_TIMEOUT,
    OPEN_TIMEOUT, SHUTDOWN_GRACE,
};
use crate::revoke::RevocationList;
use crate::splice;
use crate::token::{fmt_unix, unix_now, Claims, Role, TokenError, Verifier};

/// Longest a QUIC handshake may take before the attempt is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`RelayConfig::hello_timeout`]: longest a connected peer may
/// take to open its control stream and send its hello; a peer that says
/// nothing is dropped rather than held.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams a client may open beyond its session limit, so that sessions
/// over the limit reach the relay and get a typed refusal instead of
/// waiting for stream credit.
const REFUSAL_STREAMS: u32 = 64;

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
                .spawn(handle_incoming(state.clone(), incoming).instrument(span));
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

async fn handle_incoming(state: Arc<State>, incoming: quinn::Incoming) {
    let accepted = Instant::now();
    let ip = incoming.remote_address().ip();
    let Some(handshake) = state
        .handshakes
        .acquire(ip, state.config.limits.handshakes_per_addr)
    else {
        debug!("too many handshakes from this address; refusing");
        incoming.refuse();
        return;
    };
    let Some(_open) = state.connections.acquire(usize::MAX) else {
        return;
    };
    let conn =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, async { incoming.accept()?.await }).await {
            Ok(Ok(conn)) => {
                state.accepted.fetch_add(1, Ordering::Relaxed);
                conn
            }
            Ok(Err(err)) => {
                debug!(%err, "handshake failed");
                return;
            }
            Err(_) => {
                debug!("handshake timed out");
                return;
            }
        };
    if let Some(wait) =
        state
            .failures
            .blocked(ip, state.config.limits.failures_per_addr, Instant::now())
    {
        let msg = format!(
            "too many refused tokens from {ip}; try again in {}s",
            wait.as_secs() + 1
        );
        debug!(%msg, "refusing without reading the hello");
        state.metrics.refused(Reason::Limit);
        conn.close(Reason::Limit.varint(), msg.as_bytes());
        return;
    }
    let hello_timeout = state.config.hello_timeout;
    let hello = tokio::time::timeout(hello_timeout, async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let frame = read_frame(&mut recv).await;
        Ok::<_, String>((send, recv, frame))
    })
    .await;
    let (mut send, recv, frame) = match hello {
        Ok(Ok(parts)) => parts,
        Ok(Err(err)) => {
            debug!(%err, "connection ended before its hello");
            return;
        }
        Err(_) => {
            let msg = format!("no hello within {hello_timeout:?}");
            warn!("{msg}; closing");
            conn.close(Reason::Protocol.varint(), msg.as_bytes());
            return;
        }
    };
    let (role, token, host) = match frame {
        Ok(Frame::Hello {
            version: crate::protocol::VERSION,
            role,
            token,
            host,
        }) => (role, token, host),
        Ok(Frame::Hello { version, .. }) => {
            let msg = format!(
                "protocol version {version} is not supported (this relay speaks {})",
                crate::protocol::VERSION
            );
            return refuse(
                &state,
                &conn,
                &mut send,
                Refusal::new(Reason::Protocol, msg),
            )
            .await;
        }
        Ok(_) => {
            return refuse(
                &state,
                &conn,
                &mut send,
                Refusal::new(Reason::Protocol, "expected a hello frame"),
            )
            .await
        }
        Err(err) => {
            return refuse(
                &state,
                &conn,
                &mut send,
                Refusal::new(Reason::Protocol, format!("bad hello: {err}")),
            )
            .await;
        }
    };
    let claims = match state.config.verifier.verify(&token.0, role, unix_now()) {
        Ok(claims) => claims,
        Err(err) => {
            // Only tokens that could be guesses count towards the limit: a
            // well-signed token that expired (an agent retrying with a stale
            // token) must not lock out everyone behind the same address.
            if matches!(err, TokenError::BadSignature | TokenError::Malformed) {
                state.failures.record(ip, Instant::now());
            }
            let reason = match err {
                TokenError::Expired(_) => Reason::TokenExpired,
                _ => Reason::BadToken,
            };
            warn!(%role, %err, "refused token");
            return refuse(
                &state,
                &conn,
                &mut send,
                Refusal::new(reason, err.to_string()),
            )
            .await;
        }
    };
    state.metrics.hello_accepted(accepted);
    match role {
        Role::Host => serve_host(state, conn, claims, handshake, send, recv).await,
        Role::Client => serve_client(state, conn, claims, host, handshake, send, recv).await,
    }
}

/// Sends a refusal on the control stream, lets the peer read it, and
/// closes the connection with the refusal's code and words.
async fn refuse(state: &State, conn: &Connection, send: &mut SendStream, refusal: Refusal) {
    state.refused.fetch_add(1, Ordering::Relaxed);
    state.metrics.refused(refusal.reason);
    send_refusal(send, &refusal).await;
    let _ = tokio::time::timeout(REFUSE_LINGER, conn.closed()).await;
    conn.close(refusal.reason.varint(), refusal.message.as_bytes());
}

/// Nothing follows a hello on a peer's control stream in this version;
/// stopping it keeps a peer from parking data there.
fn stop_control(mut recv: RecvStream) {
    let _ = recv.stop(Reason::Done.varint());
}

/// Resolves when a token with expiry `exp` (Unix seconds) runs out.
async fn expiry(exp: u64) {
    // The verifier refuses an `exp` past MAX_EXP, so this cannot overflow;
    // should it, the connection simply never expires by timer.
    let Some(at) = UNIX_EPOCH.checked_add(Duration::from_secs(exp)) else {
        return std::future::pending().await;
    };
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left).await;
}

/// Why a live connection ended, for the log.
enum Ended {
    Shutdown,
    Expired(u64),
    Revoked(String),
    Closed(quinn::ConnectionError),
}

/// Waits until the connection closes, its token expires or is revoked, or
/// the relay shuts down, closing it with the matching reason in all but the
/// first case. `host` is the host the connection is bound to.
async fn hold(state: &State, conn: &Connection, claims: &Claims, host: &str) -> Ended {
    let mut revoked = state.revoked.subscribe();
    let jti = claims.jti.as_deref();
    loop {
        tokio::select! {
            biased;
            _ = state.cancel.cancelled() => {
                conn.close(Reason::ShuttingDown.varint(), b"relay shutting down");
                return Ended::Shutdown;
            }
            _ = expiry(claims.exp) => {
                let msg = format!("token expired at {}", fmt_unix(claims.exp));
                conn.close(Reason::TokenExpired.varint(), msg.as_bytes());
                return Ended::Expired(claims.exp);
            }
            changed = revoked.changed() => {
                if changed.is_err() {
                    // The list outlives every connection; should it not,
                    // nothing more can be revoked.
                    return Ended::Closed(conn.closed().await);
                }
                let why = revoked.borrow_and_update().check(jti, host);
                if let Some(msg) = why {
                    conn.close(Reason::Revoked.varint(), msg.as_bytes());
                    return Ended::Revoked(msg);
                }
            }
            err = conn.closed() => return Ended::Closed(err),
        }
    }
}

/// Refuses a peer whose token or host is revoked; true if it was.
async fn refuse_revoked(
    state: &State,
    conn: &Connection,
    send: &mut SendStream,
    claims: &Claims,
    host: &str,
) -> bool {
    let Some(msg) = state.revoked.current().check(claims.jti.as_deref(), host) else {
        return false;
    };
    warn!(host = %host, role = %claims.role, "refused: {msg}");
    refuse(state, conn, send, Refusal::new(Reason::Revoked, msg)).await;
    true
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

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Shutdown => f.write_str("relay shutting down"),
            Ended::Expired(exp) => write!(f, "token expired at {}", fmt_unix(*exp)),
            Ended::Revoked(msg) => f.write_str(msg),
            Ended::Closed(err) => match Refusal::from_connection_error(err) {
                Some(r) => write!(f, "{}", r.message),
                None => write!(f, "{err}"),
            },
        }
    }
}

async fn welcome(send: &mut SendStream, claims: &Claims, host: &str) -> bool {
    let frame = Frame::Welcome {
        host: host.to_owned(),
        role: claims.role,
        expires_at: claims.exp,
    };
    write_frame(send, &frame).await.is_ok()
}

async fn serve_host(
    state: Arc<State>,
    conn: Connection,
    claims: Claims,
    handshake: PerAddrGuard,
    mut send: SendStream,
    recv: RecvStream,
) {
    stop_control(recv);
    let id = claims.sub.clone();
    if refuse_revoked(&state, &conn, &mut send, &claims, &id).await {
        return;
    }
    let remote = conn.remote_address();
    let generation = state.next_id();
    let max = state.config.limits.max_hosts;
    let registered = {
        let mut hosts = state.lock_hosts();
        if hosts.len() >= max && !hosts.contains_key(&id) {
            Err(Refusal::new(
                Reason::Limit,
                format!("relay is at its limit of {max} hosts"),
            ))
        } else {
            let entry = HostEntry {
                conn: conn.clone(),
                generation,
                sessions: Gauge::default(),
                stats: Arc::new(HostStats::new(unix_now())),
            };
            Ok(hosts.insert(id.clone(), entry))
        }
    };
    let replaced = match registered {
        Ok(replaced) => replaced,
        Err(refusal) => {
            warn!(host = %id, "refused host: {}", refusal.message);
            return refuse(&state, &conn, &mut send, refusal).await;
        }
    };
    // Unregisters on every way out of here, a panic included.
    let _registration = Registration {
        state: state.clone(),
        id: id.clone(),
        generation,
    };
    drop(handshake);
    conn.set_receive_window(quinn::VarInt::MAX);
    if let Some(old) = replaced {
        info!(host = %id, old = %old.conn.remote_address(), "replacing older connection of host");
        let msg = format!("replaced by a newer connection for host {id}");
        old.conn.close(Reason::Replaced.varint(), msg.as_bytes());
    }
    state.changes.send_modify(|g| *g += 1);
    if welcome(&mut send, &claims, &id).await {
        info!(host = %id, %remote, expires = %fmt_unix(claims.exp), "host registered");
        let ended = hold(&state, &conn, &claims, &id).await;
        info!(host = %id, %remote, reason = %ended, "host unregistered");
    }
}

/// A host's place in the registry, given up when dropped, unless a newer
/// connection has taken it over.
struct Registration {
    state: Arc<State>,
    id: String,
    generation: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut hosts = self.state.lock_hosts();
            if hosts.get(&self.id).map(|e| e.generation) == Some(self.generation) {
                hosts.remove(&self.id);
            }
        }
        self.state.changes.send_modify(|g| *g += 1);
    }
}

async fn serve_client(
    state: Arc<State>,
    conn: Connection,
    claims: Claims,
    requested: Option<String>,
    handshake: PerAddrGuard,
    mut send: SendStream,
    recv: RecvStream,
) {
    stop_control(recv);
    let Some(host) = requested.or_else(|| claims.only_host().map(str::to_owned)) else {
        let msg = format!(
            "client token covers several hosts ({}); name one with --host",
            claims.hosts.join(", ")
        );
        return refuse(
            &state,
            &conn,
            &mut send,
            Refusal::new(Reason::Protocol, msg),
        )
        .await;
    };
    if !crate::token::valid_host_id(&host) {
        let refusal = Refusal::new(
            Reason::Protocol,
            "the host asked for is not a valid host id",
        );
        return refuse(&state, &conn, &mut send, refusal).await;
    }
    // Before the registry is consulted: a token learns nothing about hosts
    // it does not cover, not even whether they are online.
    if !claims.covers(&host) {
        let covered = match claims.hosts.as_slice() {
            [] => claims.sub.clone(),
            many => many.join(", "),
        };
        let msg = format!("client token for host {covered} cannot reach host {host}");
        warn!(%msg, "refused client");
        return refuse(
            &state,
            &conn,
            &mut send,
            Refusal::new(Reason::BadToken, msg),
        )
        .await;
    }
    if refuse_revoked(&state, &conn, &mut send, &claims, &host).await {
        return;
    }
    if state.host_conn(&host).is_none() {
        let msg = format!("host {host} is not connected");
        info!(host = %host, "refused client: host offline");
        return refuse(
            &state,
            &conn,
            &mut send,
            Refusal::new(Reason::HostOffline, msg),
        )
        .await;
    }
    // Authenticated: open the stream credit and window held back until now.
    let limit = state.config.limits.sessions_per_client;
    let streams = u32::try_from(limit)
        .unwrap_or(u32::MAX)
        .saturating_add(REFUSAL_STREAMS);
    conn.set_max_concurrent_bi_streams(streams.into());
    conn.set_receive_window(quinn::VarInt::MAX);
    drop(handshake);
    if !welcome(&mut send, &claims, &host).await {
        return;
    }
    let remote = conn.remote_address();
    info!(host = %host, %remote, expires = %fmt_unix(claims.exp), "client connected");
    let ended = tokio::select! {
        ended = hold(&state, &conn, &claims, &host) => ended,
        () = accept_sessions(&state, &conn, &host) => Ended::Shutdown,
    };
    info!(host = %host, %remote, reason = %ended, "client disconnected");
}

async fn accept_sessions(state: &Arc<State>, conn: &Connection, host: &str) {
    let remote = conn.remote_address();
    let sessions = Gauge::default();
    let limit = state.config.limits.sessions_per_client;
    while let Ok((send, recv)) = conn.accept_bi().await {
        let Some(slot) = sessions.acquire(limit) else {
            let refusal = Refusal::new(
                Reason::Limit,
                format!("too many sessions on this connection (limit {limit})"),
            );
            drop(recv);
            let mut send = send;
            state.metrics.refused(refusal.reason);
            state
                .tasks
                .spawn(async move { send_refusal(&mut send, &refusal).await });
            continue;
        };
        let session = state.next_id();
        let span = tracing::info_span!("session", session, host = %host);
        let task = relay_session(
            state.clone(),
            session,
            host.to_owned(),
            remote,
            (send, recv),
            slot,
        );
        state.tasks.spawn(task.instrument(span));
    }
    // The connection is closed; `hold` reports why.
    std::future::pending::<()>().await;
}

async fn relay_session(
    state: Arc<State>,
    session: u64,
    host: String,
    client: SocketAddr,
    (mut c_send, mut c_recv): (SendStream, RecvStream),
    _slot: GaugeGuard,
) {
    let started = Instant::now();
    match tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut c_recv)).await {
        Ok(Ok(Frame::Open { .. })) => {}
        other => {
            debug!(?other, "session stream did not start with open");
            let _ = c_send.reset(Reason::Protocol.varint());
            let _ = c_recv.stop(Reason::Protocol.varint());
            return;
        }
    }
    let Some((host_conn, host_sessions, stats)) = state.host_conn(&host) else {
        let refusal = Refusal::new(Reason::HostOffline, format!("host {host} is not connected"));
        return refuse_session(&state, &mut c_send, &refusal).await;
    };
    let limit = state.config.limits.sessions_per_host;
    let Some(_host_slot) = host_sessions.acquire(limit) else {
        let refusal = Refusal::new(
            Reason::Limit,
            format!("host {host} has too many sessions (limit {limit})"),
        );
        return refuse_session(&state, &mut c_send, &refusal).await;
    };
    let deadline = tokio::time::Instant::now() + HOST_SETUP_TIMEOUT;
    let (mut h_send, mut h_recv) =
        match tokio::time::timeout_at(deadline, host_conn.open_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(err)) => {
                let refusal =
                    Refusal::new(Reason::HostOffline, format!("host {host} went away: {err}"));
                return refuse_session(&state, &mut c_send, &refusal).await;
            }
            Err(_) => {
                let refusal = Refusal::new(
                    Reason::Limit,
                    format!("host {host} has no room for another session"),
                );
                return refuse_session(&state, &mut c_send, &refusal).await;
            }
        };
    let open = Frame::Open {
        session,
        client: Some(client.to_string()),
    };
    let reply = tokio::time::timeout_at(deadline, async {
        write_frame(&mut h_send, &open).await?;
        read_frame(&mut h_recv).await
    })
    .await;
    let failure = match reply {
        Ok(Ok(Frame::Ready { .. })) => None,
        Ok(Ok(Frame::Refused { reason, message })) => Some(Refusal { reason, message }),
        Ok(Ok(other)) => {
            warn!(?other, "host answered open with an unexpected frame");
            Some(Refusal::new(
                Reason::Protocol,
                format!("host {host} broke the protocol"),
            ))
        }
        Ok(Err(err @ (FrameError::TooLong(_) | FrameError::Malformed(_)))) => {
            warn!(%err, "host answered open with a bad frame");
            Some(Refusal::new(
                Reason::Protocol,
                format!("host {host} broke the protocol"),
            ))
        }
        Ok(Err(_)) if host_conn.close_reason().is_some() => Some(Refusal::new(
            Reason::HostOffline,
            format!("host {host} went away"),
        )),
        Ok(Err(_)) => Some(Refusal::new(
            Reason::Aborted,
            format!("host {host} dropped the session"),
        )),
        Err(_) => {
            let secs = HOST_SETUP_TIMEOUT.as_secs();
            let message = format!("host {host} did not open the session within {secs}s");
            Some(Refusal::new(Reason::TargetUnreachable, message))
        }
    };
    if let Some(refusal) = failure {
        info!(%client, reason = %refusal.message, "session refused");
        let _ = h_send.reset(refusal.reason.varint());
        let _ = h_recv.stop(refusal.reason.varint());
        return refuse_session(&state, &mut c_send, &refusal).await;
    }
    if write_frame(&mut c_send, &Frame::Ready { session })
        .await
        .is_err()
    {
        let _ = h_send.reset(Reason::Aborted.varint());
        let _ = h_recv.stop(Reason::Aborted.varint());
        return;
    }
    let _active = state.metrics.session_started(started);
    info!(%client, "session started");
    let metrics = &state.metrics;
    let t = splice::quic_quic_counted(
        (c_send, c_recv),
        (h_send, h_recv),
        |n| metrics.to_host(&stats, n),
        |n| metrics.to_client(&stats, n),
    )
    .await;
    info!(
        %client,
        to_host = t.sent,
        to_client = t.received,
        aborted = t.aborted,
                duration = ?started.elapsed(),
        "session ended"
    );
    state.trim_due.store(true, Ordering::Relaxed);
}

/// Counts a session refusal and sends it on the client's stream.
async fn refuse_session(state: &State, send: &mut SendStream, refusal: &Refusal) {
    state.metrics.refused(refusal.reason);
    send_refusal(send, refusal).await;
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
