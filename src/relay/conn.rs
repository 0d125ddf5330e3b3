//! A connection's whole life at the relay: its places before the hello,
//! the transport's handshake and the hello ([`crate::net::transport::listen`]),
//! registration as a host or admission as a client, and holding it until
//! it ends. Nothing here depends on the transport.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::admit::{check_hello, client_host, owner, revoked, token_key};
use super::audit::{Line, Party};
use super::keep::{keep_until_ended, Ended};
use super::places::{full, handshake_allowed, penalised, pre_hello_slot, Slot};
use super::registry::{Host, Refused};
use super::session::accept_sessions;
use super::throttle;
use super::{State, LOG_TARGET};
use crate::access::token::Claims;
use crate::net::transport::listen::{Incoming, NoHello, Pending};
use crate::net::transport::Conn;
use crate::ops::clock::{fmt_unix, unix_now};
use crate::ops::defaults::{HANDSHAKE_TIMEOUT, HOLDER_ANSWERS_WITHIN, RETRY_ABOVE_HANDSHAKES};
use crate::protocol::{Frame, Reason, Refusal, Role};

/// Streams a client may open beyond its session limit, so that sessions
/// over the limit reach the relay and get a typed refusal instead of
/// waiting for stream credit.
const REFUSAL_STREAMS: u32 = 64;

/// Runs a connection attempt: within its limits, the handshake and the
/// hello, then [`admit`].
pub(super) async fn serve(state: Arc<State>, incoming: Incoming) {
    let accepted = Instant::now();
    let ip = incoming.remote().ip();
    let pool = state.pre_hello(incoming.via());
    // Under load, or from a network that sent bad tokens, an address must
    // prove it is real (a stateless retry, one round trip) before any TLS
    // work is done for it: a spoofed flood then costs the relay no state.
    // (A TCP peer has proven its address already.)
    let validated = incoming.validated();
    let under_load = pool.all.get() >= RETRY_ABOVE_HANDSHAKES;
    let penalised = penalised(&state, ip, accepted);
    if !validated && (under_load || penalised) {
        return incoming.retry();
    }
    if penalised && !handshake_allowed(&state, ip, accepted) {
        // Unanswered: a client that sent bad tokens waits out its own
        // timeout rather than trying again at once.
        return incoming.ignore();
    }
    // Proven and unproven addresses have slots of their own, so that
    // Initials with a forged source cannot use up a network's slots: past
    // its cap an unproven one is asked to prove itself, and only a proven
    // one over its cap is refused. Only a proven address can be a known
    // network's.
    let slot = match validated {
        true => pre_hello_slot(&state, pool, &pool.per_network, ip, accepted),
        false => pre_hello_slot(&state, pool, &state.unproven, ip, None),
    };
    let Some(slot) = slot else {
        if !validated {
            return incoming.retry();
        }
        full(&state, accepted);
        return incoming.refuse();
    };
    let Some(_open) = state.connections.acquire(usize::MAX) else {
        return;
    };
    let handshaken = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming.handshake()).await {
        Ok(Ok(handshaken)) => handshaken,
        Ok(Err(err)) => {
            debug!(target: LOG_TARGET, "{err}");
            return;
        }
        Err(_) => {
            debug!(target: LOG_TARGET, "TLS handshake timed out");
            return;
        }
    };
    state.accepted.fetch_add(1, Ordering::Relaxed);
    let pending = match handshaken.hello(state.config.hello_timeout).await {
        Ok(pending) => pending,
        Err(NoHello::Ended(err)) => {
            debug!(target: LOG_TARGET, "{err}");
            return;
        }
        Err(NoHello::TimedOut(msg)) => {
            if let Some(n) = state.hello_timeouts.allow(Instant::now()) {
                warn!(target: LOG_TARGET, "{msg}; closing{}", throttle::left_out(n));
            }
            return;
        }
    };
    // No more credit for the peer than room for its hello; its sessions
    // raise it ([`budget::Shares`]).
    pending.conn().set_receive_window(super::budget::UNCOUNTED);
    admit(state, pending, ip, slot, accepted).await
}

/// Closes a host's old connection once the sessions it carries have ended
/// (it takes no new ones: the registry names its successor), or when it
/// closes by itself.
async fn drain(old: Host, id: String) {
    let mut tick = tokio::time::interval(DRAIN_POLL);
    while old.sessions.get() > 0 && old.conn.close_reason().is_none() {
        tick.tick().await;
    }
    let message = format!("host {id} moved to a newer connection");
    old.conn.close(Reason::Done, &message);
}

/// How often a draining connection is looked at.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Decides on a hello and serves the host or client it admits.
async fn admit(
    state: Arc<State>,
    mut answer: Pending,
    ip: IpAddr,
    handshake: Slot,
    accepted: Instant,
) {
    let conn = answer.conn().clone();
    let Some(frame) = answer.take_hello() else {
        return;
    };
    let hello = match check_hello(&state, ip, frame) {
        Ok(hello) => hello,
        Err(refused) => {
            let (refusal, who) = (refused.refusal, refused.who);
            let mut line = Line::new("refused", &who, conn.remote());
            line.reason = Some(&refusal.message);
            state.audit.write(&line);
            state.metrics.refused(refusal.reason);
            return answer.refuse(refusal).await;
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
        Role::Host => {
            let offered = super::introduce::offered(&peer.conn, hello.direct);
            let asks = (hello.keep_other, hello.moving, offered);
            peer.serve_host(hello.claims, asks).await
        }
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
    answer: Pending,
    /// Its place before the hello, given back once the peer is admitted.
    handshake: Option<Slot>,
}

impl Admitted {
    async fn refuse(mut self, refusal: Refusal, host: &str) {
        self.audit("refused", host, Some(&refusal.message));
        self.state.metrics.refused(refusal.reason);
        self.answer.refuse(refusal).await
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
        let timeout = config.hello_timeout;
        let welcomed = self
            .answer
            .welcome(&frame, timeout, &config.transport, streams)
            .await;
        if !welcomed {
            // Sessions already waiting for it (a host's) learn at once.
            let message = format!("the welcome could not be delivered within {timeout:?}");
            self.conn.close(Reason::Protocol, &message);
        }
        welcomed
    }

    /// Whether the connection that holds host `id`, if any, answers a
    /// probe within [`HOLDER_ANSWERS_WITHIN`]; one that does not is closed.
    async fn holder_answers(&self, id: &str) -> bool {
        let Some(holder) = self.state.hosts.get(id) else {
            return true;
        };
        if holder.prober.answers(HOLDER_ANSWERS_WITHIN).await {
            return true;
        }
        let (remote, from) = (holder.conn.remote(), self.conn.remote());
        warn!(
            target: LOG_TARGET,
            host = %id,
            %remote,
            "the connection holding this host id did not answer within {HOLDER_ANSWERS_WITHIN:?}; \
             giving the id to the connection from {from} that asked for it"
        );
        let message = format!("did not answer; host {id} taken over by a connection from {from}");
        holder.conn.close(Reason::Replaced, &message);
        false
    }

    async fn serve_host(
        mut self,
        claims: Claims,
        (keep_other, moving, offered): (bool, bool, Option<super::introduce::Offered>),
    ) {
        let id = claims.sub.clone();
        if let Some(refusal) = revoked(&self.state, &claims, &id) {
            return self.refuse(refusal, &id).await;
        }
        let state = self.state.clone();
        let remote = self.conn.remote();
        let prober = self.answer.prober();
        // A connection that holds the id but has gone silent (its agent
        // killed, its network gone) gives it up to a newcomer that would
        // wait for it: it is asked, and closed if it does not answer.
        let keep_other = keep_other && self.holder_answers(&id).await;
        // Unregisters on every way out of here, a panic included.
        let (_registration, replaced) = match state.hosts.register(
            &id,
            self.conn.clone(),
            (prober, offered),
            unix_now(),
            keep_other,
        ) {
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
        match replaced {
            // The same agent, moving (back to QUIC): its old connection
            // takes no new session, and carries those it has to their end.
            Some(old) if moving => {
                info!(target: LOG_TARGET, host = %id, old = %old.conn.remote(), "host moved to a new connection; the old one drains its sessions");
                state.tasks.spawn(drain(old, id.clone()));
            }
            Some(old) => {
                let old = old.conn;
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
            None => {}
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
        // Its host is told when this token is revoked or expires.
        let (jti, exp) = (claims.jti.clone(), claims.exp);
        (self.state.owners).admitted(owner(&claims), host.clone(), jti, exp);
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
            () = accept_sessions(&state, &conn, &host, (token, owner(&claims), claims.exp), &who) => Ended::Shutdown,
        };
        info!(target: LOG_TARGET, host = %host, %remote, reason = %ended, "client disconnected");
    }
}
