//! A connection's whole life at the relay: the transport handshake, the
//! hello, registration as a host or admission as a client, and holding it
//! until it ends. Over QUIC the hello and its answer travel on the
//! connection's first stream; over TLS over TCP they are raw frames on the
//! TLS stream, and HTTP/2 starts only once the answer is a welcome, so
//! that an unauthenticated peer holds no more than a TLS session and one
//! frame.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::admit::{check_hello, client_host, owner, revoked, token_key};
use super::answer::{say_last, Answer};
use super::audit::{Line, Party};
use super::hold::{keep_until_ended, Ended};
use super::places::{full, handshake_allowed, penalised, pre_hello_slot, Slot};
use super::registry::Refused;
use super::session::accept_sessions;
use super::throttle;
use super::{State, LOG_TARGET};
use crate::clock::{fmt_unix, unix_now};
use crate::defaults::{HANDSHAKE_TIMEOUT, RETRY_ABOVE_HANDSHAKES};
use crate::protocol::{read_frame, Frame, FrameError, Reason, Refusal, Role};
use crate::token::Claims;
use crate::transport::tcp::{self, Side, TcpConn};
use crate::transport::{Closed, Conn, Stream};

/// Streams a client may open beyond its session limit, so that sessions
/// over the limit reach the relay and get a typed refusal instead of
/// waiting for stream credit.
const REFUSAL_STREAMS: u32 = 64;

/// Runs a QUIC connection attempt: the handshake, within its limits, then
/// [`serve`].
pub(super) async fn quic(state: Arc<State>, incoming: quinn::Incoming) {
    let accepted = Instant::now();
    let ip = incoming.remote_address().ip();
    // Under load, or from a network that sent bad tokens, an address must
    // prove it is real (a stateless retry, one round trip) before any TLS
    // work is done for it: a spoofed flood then costs the relay no state.
    let validated = incoming.remote_address_validated();
    let under_load = state.quic.all.get() >= RETRY_ABOVE_HANDSHAKES;
    let penalised = penalised(&state, ip, accepted);
    if !validated && (under_load || penalised) {
        return retry(incoming);
    }
    if penalised && !handshake_allowed(&state, ip, accepted) {
        // Unanswered: a client that sent bad tokens waits out its own
        // timeout rather than trying again at once.
        incoming.ignore();
        return;
    }
    // Proven and unproven addresses have slots of their own, so that
    // Initials with a forged source cannot use up a network's slots: past
    // its cap an unproven one is asked to prove itself, and only a proven
    // one over its cap is refused. Only a proven address can be a known
    // network's.
    let slot = match validated {
        true => pre_hello_slot(&state, &state.quic, &state.quic.per_network, ip, accepted),
        false => pre_hello_slot(&state, &state.quic, &state.unproven, ip, None),
    };
    let Some(slot) = slot else {
        if !validated {
            return retry(incoming);
        }
        full(&state, accepted);
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
                Conn::Quic(conn)
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
    serve(state, conn, ip, slot, accepted).await;
}

/// Asks `incoming` to prove its address with a stateless retry.
fn retry(incoming: quinn::Incoming) {
    if let Err(err) = incoming.retry() {
        // Only an address that is already validated cannot be retried.
        err.into_incoming().ignore();
    }
}

/// A connection from the moment its transport is up: reads the hello and
/// serves the host or client it admits. `handshake` is its [`Slot`],
/// held until the peer is admitted or refused.
async fn serve(state: Arc<State>, conn: Conn, ip: IpAddr, handshake: Slot, accepted: Instant) {
    let hello_timeout = state.config.hello_timeout;
    let hello = tokio::time::timeout(hello_timeout, async {
        let Stream { send, mut recv } = conn.accept().await?;
        let frame = read_frame(&mut recv).await;
        Ok::<_, Closed>((send, recv, frame))
    })
    .await;
    let (send, recv, frame) = match hello {
        Ok(Ok(parts)) => parts,
        Ok(Err(err)) => {
            debug!(target: LOG_TARGET, %err, "connection ended before its hello");
            return;
        }
        Err(_) => {
            let msg = format!("no hello within {hello_timeout:?}");
            if let Some(n) = state.hello_timeouts.allow(Instant::now()) {
                warn!(target: LOG_TARGET, "{msg}; closing{}", throttle::left_out(n));
            }
            conn.close(Reason::Protocol, &msg);
            return;
        }
    };
    let answer = Answer::Quic(send, recv);
    admit(state, conn, answer, frame, ip, handshake, accepted).await
}

/// Runs a TLS-over-TCP connection: within the same limits as QUIC's
/// handshakes (a TCP peer has proven its address already), TLS, then the
/// hello as a raw frame, then [`admit`].
pub(super) async fn tcp(
    state: Arc<State>,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let accepted = Instant::now();
    let ip = remote.ip();
    if penalised(&state, ip, accepted) && !handshake_allowed(&state, ip, accepted) {
        return;
    }
    let Some(handshake) = pre_hello_slot(&state, &state.tcp, &state.tcp.per_network, ip, accepted)
    else {
        full(&state, accepted);
        return;
    };
    let Some(_open) = state.connections.acquire(usize::MAX) else {
        return;
    };
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp::accept(tcp, &acceptor)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            debug!(target: LOG_TARGET, %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(target: LOG_TARGET, "TLS handshake timed out");
            return;
        }
    };
    state.accepted.fetch_add(1, Ordering::Relaxed);
    let hello_timeout = state.config.hello_timeout;
    let frame = match tokio::time::timeout(hello_timeout, read_frame(&mut tls)).await {
        Ok(Err(FrameError::Io(err))) => {
            debug!(target: LOG_TARGET, %err, "connection ended before its hello");
            return;
        }
        Ok(frame) => frame,
        Err(_) => {
            let msg = format!("no hello within {hello_timeout:?}");
            if let Some(n) = state.hello_timeouts.allow(Instant::now()) {
                warn!(target: LOG_TARGET, "{msg}; closing{}", throttle::left_out(n));
            }
            let refusal = Refusal::new(Reason::Protocol, msg);
            return say_last(&mut tls, &refusal).await;
        }
    };
    let conn = Conn::Tcp(TcpConn::pending(remote));
    // HTTP/2 starts with no more credit for the peer than a QUIC peer
    // has before its hello; its sessions raise it ([`budget::Shares`]).
    conn.set_receive_window(super::budget::UNCOUNTED);
    let answer = Answer::Tcp(Some(Box::new(tls)));
    admit(state, conn, answer, frame, ip, handshake, accepted).await
}

/// Decides on a hello and serves the host or client it admits.
async fn admit(
    state: Arc<State>,
    conn: Conn,
    mut answer: Answer,
    frame: Result<Frame, FrameError>,
    ip: IpAddr,
    handshake: Slot,
    accepted: Instant,
) {
    let hello = match check_hello(&state, ip, frame) {
        Ok(hello) => hello,
        Err(refused) => {
            let (refusal, who) = (refused.refusal, refused.who);
            let mut line = Line::new("refused", &who, conn.remote());
            line.reason = Some(&refusal.message);
            state.audit.write(&line);
            return answer.refuse(&state, &conn, refusal).await;
        }
    };
    answer.hello_taken();
    state.metrics.hello_accepted(accepted);
    let peer = Admitted {
        who: Party::of(&hello.claims),
        role: match hello.role {
            Role::Host => "host",
            Role::Client => "client",
        },
        state,
        conn,
        answer,
        handshake: Some(handshake),
    };
    match hello.role {
        Role::Host => peer.serve_host(hello.claims, hello.keep_other).await,
        Role::Client => peer.serve_client(hello.claims, hello.host).await,
    }
}

/// A connection whose hello was good, with where its answer goes.
struct Admitted {
    /// Whose token it is, and for which role.
    who: Party,
    role: &'static str,
    state: Arc<State>,
    conn: Conn,
    answer: Answer,
    /// Its place before the hello, given back once the peer is admitted.
    handshake: Option<Slot>,
}

impl Admitted {
    async fn refuse(mut self, refusal: Refusal, host: &str) {
        self.audit("refused", host, Some(&refusal.message));
        self.answer.refuse(&self.state, &self.conn, refusal).await
    }

    /// Notes that a peer from this connection's network got in (its token
    /// good, not revoked, its welcome delivered): the network gets places
    /// kept for it before the hello from now on.
    fn admitted(&self) {
        let ip = self.conn.remote().ip();
        self.state.known.admitted(ip, Instant::now());
    }

    /// Appends `event` about this peer and `host` to the audit log.
    fn audit(&self, event: &'static str, host: &str, reason: Option<&str>) {
        let mut line = Line::new(event, &self.who, self.conn.remote());
        line.role = Some(self.role);
        line.host = Some(host);
        line.reason = reason;
        self.state.audit.write(&line);
    }

    /// Sends the welcome, within the hello timeout. Over TCP, HTTP/2 then
    /// starts with the relay opening streams towards a host and accepting
    /// a client's, at most `streams` of them.
    async fn welcome(&mut self, claims: &Claims, host: &str, streams: u32) -> bool {
        let frame = Frame::Welcome {
            host: host.to_owned(),
            role: claims.role,
            expires_at: claims.exp,
            relay: Some(self.state.instance.clone()),
        };
        let config = &self.state.config;
        let side = match claims.role {
            Role::Host => Side::Opens,
            Role::Client => Side::Accepts,
        };
        let settings = tcp::Settings {
            window: config.transport.window(),
            max_streams: streams,
            keep_alive: config.transport.keep_alive,
            idle_timeout: config.transport.idle_timeout,
        };
        let timeout = config.hello_timeout;
        let welcomed = self
            .answer
            .welcome(&self.conn, &frame, timeout, side, settings)
            .await;
        if !welcomed {
            // Sessions already waiting for it (a host's) learn at once.
            let message = format!("the welcome could not be delivered within {timeout:?}");
            self.conn.close(Reason::Protocol, &message);
        }
        welcomed
    }

    async fn serve_host(mut self, claims: Claims, keep_other: bool) {
        let id = claims.sub.clone();
        if let Some(refusal) = revoked(&self.state, &claims, &id) {
            return self.refuse(refusal, &id).await;
        }
        let state = self.state.clone();
        let remote = self.conn.remote();
        // Unregisters on every way out of here, a panic included.
        let (_registration, replaced) =
            match state
                .hosts
                .register(&id, self.conn.clone(), unix_now(), keep_other)
            {
                Ok(registered) => registered,
                Err(Refused::Full(max)) => {
                    let message = format!("relay is at its limit of {max} hosts");
                    warn!(target: LOG_TARGET, host = %id, "refused host: {message}");
                    return self.refuse(Refusal::new(Reason::Limit, message), &id).await;
                }
                Err(Refused::Taken) => {
                    let message = format!(
                        "host {id} is registered by another connection; waiting for it to leave"
                    );
                    info!(target: LOG_TARGET, host = %id, %remote, "refused host: id taken");
                    return self
                        .refuse(Refusal::new(Reason::Replaced, message), &id)
                        .await;
                }
            };
        self.handshake = None;
        // The host opens no streams: its control stream is all it keeps.
        self.conn.admit(1);
        if let Some(old) = replaced {
            info!(
                target: LOG_TARGET,
                host = %id,
                old = %old.remote(),
                "replacing older connection of host"
            );
            self.state.metrics.host_replaced();
            old.close(
                Reason::Replaced,
                &format!("replaced by a newer connection for host {id} from {remote}"),
            );
        }
        if self.welcome(&claims, &id, 0).await {
            self.admitted();
            self.audit("admitted", &id, None);
            info!(
                target: LOG_TARGET,
                host = %id,
                %remote,
                transport = self.conn.transport(),
                expires = %fmt_unix(claims.exp),
                "host registered"
            );
            let ended = keep_until_ended(&state, &self.conn, &claims, &id).await;
            info!(target: LOG_TARGET, host = %id, %remote, reason = %ended, "host unregistered");
        }
    }

    async fn serve_client(mut self, claims: Claims, requested: Option<String>) {
        let asked = requested.clone().unwrap_or_default();
        let host = match client_host(&claims, requested) {
            Ok(host) => host,
            Err(refusal) => return self.refuse(refusal, &asked).await,
        };
        if let Some(refusal) = revoked(&self.state, &claims, &host) {
            return self.refuse(refusal, &host).await;
        }
        if self.state.hosts.get(&host).is_none() {
            info!(target: LOG_TARGET, host = %host, "refused client: host offline");
            let refusal =
                Refusal::new(Reason::HostOffline, format!("host {host} is not connected"));
            return self.refuse(refusal, &host).await;
        }
        let token = token_key(&claims);
        if let Some(left) = self.state.penalties.left(&token, Instant::now()) {
            let refusal = super::session::penalised(left, "connect");
            return self.refuse(refusal, &host).await;
        }
        let limit = self.state.config.limits.connections_per_client;
        let Some(_connection) = self.state.token_connections.acquire(token.clone(), limit) else {
            let message = format!("too many connections for this client token (limit {limit})");
            return self
                .refuse(Refusal::new(Reason::Limit, message), &host)
                .await;
        };
        // Authenticated: open the stream credit and window held back until now.
        let limit = self.state.config.limits.sessions_per_client;
        let streams = u32::try_from(limit)
            .unwrap_or(u32::MAX)
            .saturating_add(REFUSAL_STREAMS);
        self.conn.admit(streams);
        self.handshake = None;
        if !self.welcome(&claims, &host, streams).await {
            return;
        }
        self.admitted();
        self.audit("admitted", &host, None);
        let (state, conn, who) = (self.state, self.conn, self.who);
        let remote = conn.remote();
        let _listed = state.clients.add(&host, &claims.sub, &conn, unix_now());
        info!(
            target: LOG_TARGET,
            host = %host,
            %remote,
            subject = who.subject.as_deref().unwrap_or(""),
            jti = who.jti.as_deref().unwrap_or(""),
            transport = conn.transport(),
            expires = %fmt_unix(claims.exp),
            "client connected"
        );
        let ended = tokio::select! {
            ended = keep_until_ended(&state, &conn, &claims, &host) => ended,
            () = accept_sessions(&state, &conn, &host, (token, owner(&claims)), &who) => Ended::Shutdown,
        };
        info!(target: LOG_TARGET, host = %host, %remote, reason = %ended, "client disconnected");
    }
}
