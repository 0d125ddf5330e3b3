//! Sessions: each stream a client opens is checked, matched with a fresh
//! stream on the host's connection, and spliced to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::audit::{Line, Party};
use super::budget::{Share, Shares};
use super::{State, LOG_TARGET};
use crate::net::transport::{self, Conn, Stream};
use crate::ops::defaults::{
    ABANDONED_PER_CLIENT, ABANDON_PENALTY, FAIR_SHARE_FLOOR, HOST_RATE_WAIT, HOST_SETUP_TIMEOUT,
    OPEN_TIMEOUT, SESSION_BURST_PER_CLIENT, SESSION_BURST_PER_HOST,
};
use crate::ops::limits::{CountGuard, GaugeGuard};
use crate::protocol::{read_frame, write_frame, Frame, FrameError, Reason, Refusal, Resume};
use crate::session::splice;

/// Accepts the session streams a client opens, each in a task of its own,
/// until the connection closes.
/// `token` names the client's token: its sessions are counted over all of
/// its connections; `owner` is the digest that binds resumes to it.
pub(super) async fn accept_sessions(
    state: &Arc<State>,
    conn: &Conn,
    host: &str,
    (token, owner): (String, String),
    who: &Party,
) {
    let remote = conn.remote();
    let shares = Shares::new(conn.clone(), state.config.transport.window());
    while let Ok(stream) = conn.accept().await {
        // A token that starts sessions faster than its rate waits here:
        // its further streams are not taken up meanwhile, so it cannot
        // open more than its stream limit, and what it costs the relay
        // is bounded by the rate whatever it sends.
        slow_down(state, &token).await;
        let slots = match session_slots(state, &shares, &token) {
            Ok(slots) => slots,
            Err(refusal) => {
                let mut line = Line::new("refused", who, remote);
                (line.role, line.host) = (Some("client"), Some(host));
                line.reason = Some(&refusal.message);
                state.audit.write(&line);
                state.metrics.refused(refusal.reason);
                // Said at once or reset: a refused stream holds nothing
                // the client sent, whatever credit the client grants.
                if let Some(drain) = transport::refuse_at_once(stream, &refusal) {
                    state.tasks.spawn(drain);
                }
                continue;
            }
        };
        let session = state.next_session_id();
        let _span = tracing::info_span!(
            target: LOG_TARGET,
            "session",
            session,
            host = %host,
            subject = who.subject.as_deref().unwrap_or(""),
            jti = who.jti.as_deref().unwrap_or("")
        )
        .entered();
        let meta = Meta {
            session,
            host: host.to_owned(),
            client: remote,
            who: who.clone(),
            owner: owner.clone(),
            token: token.clone(),
            conn: conn.clone(),
        };
        let task = relay_session(state.clone(), meta, stream, slots);
        state.tasks.spawn(task);
    }
    // The connection is closed; `keep_until_ended` reports why.
    std::future::pending::<()>().await;
}

/// Which session, for whom: what its log and audit lines name.
struct Meta {
    session: u64,
    host: String,
    client: SocketAddr,
    who: Party,
    /// The client's token, as the host knows it (a digest).
    owner: String,
    /// The client's token, as the relay's limits count it.
    token: String,
    /// The client's connection.
    conn: Conn,
}

/// Waits until `token` may start another session
/// ([`crate::ops::limits::Limits::session_rate_per_client`]).
async fn slow_down(state: &State, token: &str) {
    let rate = state.config.limits.session_rate_per_client;
    let rates = &state.session_rates;
    rates
        .wait(&token.to_owned(), rate, SESSION_BURST_PER_CLIENT, None)
        .await;
}

/// Waits until `host` may be asked for another session
/// ([`crate::ops::limits::Limits::session_rate_per_host`]), for at most
/// [`HOST_RATE_WAIT`]; past that, refuses.
async fn host_rate(state: &State, host: &str) -> Result<(), Refusal> {
    let rate = state.config.limits.session_rate_per_host;
    let (key, burst) = (host.to_owned(), SESSION_BURST_PER_HOST);
    if state
        .host_rates
        .wait(&key, rate, burst, Some(HOST_RATE_WAIT))
        .await
    {
        return Ok(());
    }
    Err(Refusal::new(
        Reason::Limit,
        format!(
            "host {host} is asked for new sessions faster than {rate} a second; try again shortly"
        ),
    ))
}

/// The refusal for a token that abandoned streams too fast, which may
/// `what` again after `left`.
pub(super) fn penalised(left: std::time::Duration, what: &str) -> Refusal {
    Refusal::new(
        Reason::Limit,
        format!(
            "this client token opened and abandoned session streams too fast; \
             it may {what} again in {}s",
            left.as_secs() + 1
        ),
    )
}

/// Notes that a stream of `meta`'s token ended before its session
/// started. A token that does so faster than [`ABANDONED_PER_CLIENT`]
/// allows (a flood of opened and reset streams) has this connection
/// closed, and is refused for [`ABANDON_PENALTY`].
fn abandoned(state: &State, meta: &Meta) {
    let now = Instant::now();
    let (rate, burst) = ABANDONED_PER_CLIENT;
    if state.abandoned.take(&meta.token, now, rate, burst).is_ok() {
        return;
    }
    let secs = ABANDON_PENALTY.as_secs();
    state
        .penalties
        .impose(meta.token.clone(), now + ABANDON_PENALTY, now);
    let message = format!(
        "this client token opened and abandoned more than {burst} session streams at once \
         (or {rate} a second); closing its connection, and refusing it for {secs}s"
    );
    warn!(target: LOG_TARGET, client = %meta.client, "{message}");
    state.metrics.refused(Reason::Limit);
    meta.conn.close(Reason::Limit, &message);
}

impl Meta {
    /// An audit line for `event` about this session.
    fn audit<'a>(&'a self, event: &'static str, reason: Option<&'a str>) -> Line<'a> {
        let mut line = Line::new(event, &self.who, self.client);
        line.role = Some("client");
        line.host = Some(self.host.as_str());
        line.session = Some(self.session);
        line.reason = reason;
        line
    }
}

async fn relay_session(state: Arc<State>, meta: Meta, mut client_stream: Stream, _slots: Slots) {
    let (session, host, client) = (meta.session, meta.host.clone(), meta.client);
    let started = Instant::now();
    // A resume request goes to the host as it came: only the ends can
    // check it.
    let resume = match tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut client_stream.recv)).await
    {
        Ok(Ok(Frame::Open { resume, .. })) => resume,
        other => {
            debug!(target: LOG_TARGET, ?other, "session stream did not start with open");
            transport::abort(&mut client_stream, Reason::Protocol);
            abandoned(&state, &meta);
            return;
        }
    };
    let Some(target) = state.hosts.get(&host) else {
        let refusal = Refusal::new(Reason::HostOffline, format!("host {host} is not connected"));
        return refuse_session(&state, &meta, client_stream, &refusal).await;
    };
    let limits = &state.config.limits;
    if let Err(refusal) = host_rate(&state, &host).await {
        return refuse_session(&state, &meta, client_stream, &refusal).await;
    }
    let limit = limits.sessions_per_host;
    let Some(_host_slot) = target.sessions.acquire(limit) else {
        let refusal = Refusal::new(
            Reason::Limit,
            format!("host {host} has too many sessions (limit {limit})"),
        );
        return refuse_session(&state, &meta, client_stream, &refusal).await;
    };
    let deadline = tokio::time::Instant::now() + HOST_SETUP_TIMEOUT;
    let mut host_stream = match tokio::time::timeout_at(deadline, target.conn.open()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            let refusal =
                Refusal::new(Reason::HostOffline, format!("host {host} went away: {err}"));
            return refuse_session(&state, &meta, client_stream, &refusal).await;
        }
        Err(_) => {
            let refusal = Refusal::new(
                Reason::Limit,
                format!("host {host} has no room for another session"),
            );
            return refuse_session(&state, &meta, client_stream, &refusal).await;
        }
    };
    let resuming = matches!(resume, Some(Resume::Again { .. }));
    let open = Frame::Open {
        session,
        client: Some(client.to_string()),
        resume,
        owner: Some(meta.owner.clone()),
        who: meta
            .who
            .subject
            .clone()
            .map(|subject| crate::protocol::Who {
                subject,
                jti: meta.who.jti.clone(),
            }),
    };
    let reply = tokio::time::timeout_at(deadline, async {
        write_frame(&mut host_stream.send, &open).await?;
        read_frame(&mut host_stream.recv).await
    })
    .await;
    let mut answer = None;
    let failure = match reply {
        Ok(Ok(Frame::Ready { resume, .. })) => {
            answer = resume;
            None
        }
        // The host's words end up on the ssh user's terminal.
        Ok(Ok(Frame::Refused { reason, message })) => Some(Refusal { reason, message }.printable()),
        Ok(Ok(other)) => {
            warn!(target: LOG_TARGET, ?other, "host answered open with an unexpected frame");
            Some(Refusal::new(
                Reason::Protocol,
                format!("host {host} broke the protocol"),
            ))
        }
        Ok(Err(err @ (FrameError::TooLong(_) | FrameError::Malformed(_)))) => {
            warn!(target: LOG_TARGET, %err, "host answered open with a bad frame");
            Some(Refusal::new(
                Reason::Protocol,
                format!("host {host} broke the protocol"),
            ))
        }
        Ok(Err(_)) if target.conn.close_reason().is_some() => Some(Refusal::new(
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
    if resuming {
        state.metrics.resume(failure.as_ref().map(|r| r.reason));
    }
    if let Some(refusal) = failure {
        info!(target: LOG_TARGET, %client, reason = %refusal.message, "session refused");
        transport::abort(&mut host_stream, refusal.reason);
        return refuse_session(&state, &meta, client_stream, &refusal).await;
    }
    // Within the setup's deadline: a client that grants no credit must
    // not hold the host's stream (and its target connection) for ever.
    let ready = Frame::Ready {
        session,
        resume: answer,
    };
    let sent =
        tokio::time::timeout_at(deadline, write_frame(&mut client_stream.send, &ready)).await;
    if !matches!(sent, Ok(Ok(()))) {
        transport::abort(&mut host_stream, Reason::Aborted);
        transport::abort(&mut client_stream, Reason::Aborted);
        abandoned(&state, &meta);
        return;
    }
    let _active = state.metrics.session_started(started);
    let _live = state.trim.session();
    if resuming {
        info!(target: LOG_TARGET, %client, "session resumed");
    } else {
        info!(target: LOG_TARGET, %client, "session started");
    }
    state.audit.write(&meta.audit("session_start", None));
    let metrics = &state.metrics;
    let stats = &target.stats;
    let t = splice::relay(
        client_stream,
        host_stream,
        |n| metrics.to_host(stats, n),
        |n| metrics.to_client(stats, n),
    )
    .await;
    info!(
        target: LOG_TARGET,
        %client,
        to_host = t.sent,
        to_client = t.received,
        aborted = t.aborted,
        duration = ?started.elapsed(),
        "session ended"
    );
    let how = if t.aborted { "aborted" } else { "done" };
    let mut line = meta.audit("session_end", Some(how));
    line.bytes_to_host = Some(t.sent);
    line.bytes_to_client = Some(t.received);
    line.duration_ms = u64::try_from(started.elapsed().as_millis()).ok();
    state.audit.write(&line);
}

/// What a session holds while it lasts: its place in the relay's budget,
/// in its token's limit, and its share of the client connection's send
/// buffer.
type Slots = (GaugeGuard, CountGuard<String>, Share);

/// Takes a new session's slots, or says why it is refused: the relay's
/// budget first, then the token's limit.
fn session_slots(state: &State, shares: &Arc<Shares>, token: &str) -> Result<Slots, Refusal> {
    if let Some(left) = state.penalties.left(&token.to_owned(), Instant::now()) {
        return Err(penalised(left, "start sessions"));
    }
    let max = state.max_sessions;
    let Some(relay) = state.sessions.acquire(max) else {
        return Err(Refusal::new(
            Reason::Limit,
            format!("relay is at its limit of {max} sessions"),
        ));
    };
    let limit = state.config.limits.sessions_per_client;
    let shared =
        (state.token_sessions).acquire_share(token.to_owned(), max, FAIR_SHARE_FLOOR, limit);
    let token = match shared {
        Ok(token) => token,
        Err(share) if share < limit => {
            let others = state.token_sessions.keys().saturating_sub(1);
            return Err(Refusal::new(
                Reason::Limit,
                format!(
                    "this client token holds its share of the relay's sessions ({share} of \
                     {max}, with {others} other tokens holding sessions); end some of its \
                     sessions, or have the relay's operator raise --max-buffered"
                ),
            ));
        }
        Err(_) => {
            return Err(Refusal::new(
                Reason::Limit,
                format!("too many sessions for this client token (limit {limit})"),
            ))
        }
    };
    // The token's limit bounds this connection's sessions too.
    Ok((relay, token, shares.take()))
}

/// Counts a session refusal, notes it in the audit log and sends it on the
/// client's stream, without waiting on the client's credit
/// ([`transport::refuse_at_once`]).
async fn refuse_session(state: &State, meta: &Meta, stream: Stream, refusal: &Refusal) {
    state
        .audit
        .write(&meta.audit("refused", Some(&refusal.message)));
    state.metrics.refused(refusal.reason);
    if let Some(drain) = transport::refuse_at_once(stream, refusal) {
        // The session's places go now; the drain holds nothing.
        state.tasks.spawn(drain);
    }
}
