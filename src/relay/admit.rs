//! Admission: the QUIC handshake, the hello and its token, host
//! registration and client admission, and typed refusals for the rest.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use quinn::{Connection, RecvStream, SendStream};
use tracing::{debug, info, warn};

use super::hold::{hold, Ended};
use super::session::accept_sessions;
use super::{HostEntry, State, HANDSHAKE_TIMEOUT, LOG_TARGET, REFUSE_LINGER};
use crate::clock::{fmt_unix, unix_now};
use crate::limits::{Gauge, PerAddrGuard};
use crate::metrics::HostStats;
use crate::protocol::{
    read_frame, send_refusal, write_frame, Frame, FrameError, Reason, Refusal, Role, VERSION,
};
use crate::token::{Claims, TokenError};

/// Streams a client may open beyond its session limit, so that sessions
/// over the limit reach the relay and get a typed refusal instead of
/// waiting for stream credit.
const REFUSAL_STREAMS: u32 = 64;

pub(super) async fn handle_incoming(state: Arc<State>, incoming: quinn::Incoming) {
    let accepted = Instant::now();
    let ip = incoming.remote_address().ip();
    let Some(handshake) = state
        .handshakes
        .acquire(ip, state.config.limits.handshakes_per_addr)
    else {
        debug!(target: LOG_TARGET, "too many handshakes from this address; refusing");
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
                debug!(target: LOG_TARGET, %err, "handshake failed");
                return;
            }
            Err(_) => {
                debug!(target: LOG_TARGET, "handshake timed out");
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
        debug!(target: LOG_TARGET, %msg, "refusing without reading the hello");
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
            debug!(target: LOG_TARGET, %err, "connection ended before its hello");
            return;
        }
        Err(_) => {
            let msg = format!("no hello within {hello_timeout:?}");
            warn!(target: LOG_TARGET, "{msg}; closing");
            conn.close(Reason::Protocol.varint(), msg.as_bytes());
            return;
        }
    };
    let (role, claims, host) = match check_hello(&state, ip, frame) {
        Ok(hello) => hello,
        Err(refusal) => return refuse(&state, &conn, &mut send, refusal).await,
    };
    state.metrics.hello_accepted(accepted);
    match role {
        Role::Host => serve_host(state, conn, claims, handshake, send, recv).await,
        Role::Client => serve_client(state, conn, claims, host, handshake, send, recv).await,
    }
}

/// The role, claims and requested host of a hello, or why it is refused.
fn check_hello(
    state: &State,
    ip: IpAddr,
    frame: Result<Frame, FrameError>,
) -> Result<(Role, Claims, Option<String>), Refusal> {
    let (role, token, host) = match frame {
        Ok(Frame::Hello {
            version: VERSION,
            role,
            token,
            host,
        }) => (role, token, host),
        Ok(Frame::Hello { version, .. }) => {
            let msg = format!(
                "protocol version {version} is not supported (this relay speaks {VERSION})"
            );
            return Err(Refusal::new(Reason::Protocol, msg));
        }
        Ok(_) => return Err(Refusal::new(Reason::Protocol, "expected a hello frame")),
        Err(err) => return Err(Refusal::new(Reason::Protocol, format!("bad hello: {err}"))),
    };
    match state.config.verifier.verify(&token.0, role, unix_now()) {
        Ok(claims) => Ok((role, claims, host)),
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
            warn!(target: LOG_TARGET, %role, %err, "refused token");
            Err(Refusal::new(reason, err.to_string()))
        }
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
    warn!(target: LOG_TARGET, host = %host, role = %claims.role, "refused: {msg}");
    refuse(state, conn, send, Refusal::new(Reason::Revoked, msg)).await;
    true
}

/// Sends the welcome, within the hello timeout: a peer that withholds
/// flow-control credit must not stay admitted without expiry or revocation
/// being enforced.
async fn welcome(state: &State, send: &mut SendStream, claims: &Claims, host: &str) -> bool {
    let frame = Frame::Welcome {
        host: host.to_owned(),
        role: claims.role,
        expires_at: claims.exp,
    };
    let sent = tokio::time::timeout(state.config.hello_timeout, write_frame(send, &frame)).await;
    matches!(sent, Ok(Ok(())))
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
            warn!(target: LOG_TARGET, host = %id, "refused host: {}", refusal.message);
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
        info!(
            target: LOG_TARGET,
            host = %id,
            old = %old.conn.remote_address(),
            "replacing older connection of host"
        );
        let msg = format!("replaced by a newer connection for host {id}");
        old.conn.close(Reason::Replaced.varint(), msg.as_bytes());
    }
    state.changes.send_modify(|g| *g += 1);
    if welcome(&state, &mut send, &claims, &id).await {
        info!(
            target: LOG_TARGET,
            host = %id,
            %remote,
            expires = %fmt_unix(claims.exp),
            "host registered"
        );
        let ended = hold(&state, &conn, &claims, &id).await;
        info!(target: LOG_TARGET, host = %id, %remote, reason = %ended, "host unregistered");
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
    let host = match client_host(&claims, requested) {
        Ok(host) => host,
        Err(refusal) => return refuse(&state, &conn, &mut send, refusal).await,
    };
    if refuse_revoked(&state, &conn, &mut send, &claims, &host).await {
        return;
    }
    if state.host_conn(&host).is_none() {
        let msg = format!("host {host} is not connected");
        info!(target: LOG_TARGET, host = %host, "refused client: host offline");
        let refusal = Refusal::new(Reason::HostOffline, msg);
        return refuse(&state, &conn, &mut send, refusal).await;
    }
    // Authenticated: open the stream credit and window held back until now.
    let limit = state.config.limits.sessions_per_client;
    let streams = u32::try_from(limit)
        .unwrap_or(u32::MAX)
        .saturating_add(REFUSAL_STREAMS);
    conn.set_max_concurrent_bi_streams(streams.into());
    conn.set_receive_window(quinn::VarInt::MAX);
    drop(handshake);
    if !welcome(&state, &mut send, &claims, &host).await {
        return;
    }
    let remote = conn.remote_address();
    info!(
        target: LOG_TARGET,
        host = %host,
        %remote,
        expires = %fmt_unix(claims.exp),
        "client connected"
    );
    let ended = tokio::select! {
        ended = hold(&state, &conn, &claims, &host) => ended,
        () = accept_sessions(&state, &conn, &host) => Ended::Shutdown,
    };
    info!(target: LOG_TARGET, host = %host, %remote, reason = %ended, "client disconnected");
}

/// The host a client asks for (or its token's only host), if it is a valid
/// host id that the client's token covers.
fn client_host(claims: &Claims, requested: Option<String>) -> Result<String, Refusal> {
    let Some(host) = requested.or_else(|| claims.only_host().map(str::to_owned)) else {
        let msg = format!(
            "client token covers several hosts ({}); name one with --host",
            covered(claims)
        );
        return Err(Refusal::new(Reason::Protocol, msg));
    };
    if !crate::id::valid_host_id(&host) {
        return Err(Refusal::new(
            Reason::Protocol,
            "the host asked for is not a valid host id",
        ));
    }
    // Before the registry is consulted: a token learns nothing about hosts
    // it does not cover, not even whether they are online.
    if !claims.covers(&host) {
        let msg = format!(
            "client token for host {} cannot reach host {host}",
            covered(claims)
        );
        warn!(target: LOG_TARGET, %msg, "refused client");
        return Err(Refusal::new(Reason::BadToken, msg));
    }
    Ok(host)
}

/// The hosts a client token covers, for a refusal. The list is the peer's:
/// a few are named, so that the refusal always fits in a frame.
fn covered(claims: &Claims) -> String {
    const NAMED: usize = 8;
    match claims.hosts.as_slice() {
        [] => claims.sub.clone(),
        many if many.len() > NAMED => format!("{}, …", many[..NAMED].join(", ")),
        many => many.join(", "),
    }
}
