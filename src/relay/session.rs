//! Sessions: each stream a client opens is checked, matched with a fresh
//! stream on the host's connection, and spliced to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::audit::{Line, Party};
use super::budget::{Share, Shares};
use super::introduce::{self, introduce};
use super::registry::Host;
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
    (token, owner, expires_at): (String, String, u64),
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
            expires_at,
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
    /// When the client's token expires (Unix seconds).
    expires_at: u64,
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

/// One session, from the client's `open` to its end: the host's stream
/// opened and asked, `ready` passed back, and the two spliced.
async fn relay_session(state: Arc<State>, meta: Meta, mut client_stream: Stream, _slots: Slots) {
    let started = Instant::now();
    // A resume request goes to the host as it came: only the ends can
    // check it.
    let (resume, ask) =
        match tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut client_stream.recv)).await {
            // Only the relay says a token has ended.
            Ok(Ok(Frame::Open { resume, direct, .. }))
                if !matches!(resume, Some(Resume::Ended { .. })) =>
            {
                (resume, direct)
            }
            other => {
                debug!(target: LOG_TARGET, ?other, "session stream did not start with open");
                transport::abort(&mut client_stream, Reason::Protocol);
                abandoned(&state, &meta);
                return;
            }
        };
    let resuming = matches!(resume, Some(Resume::Again { .. }));
    let (target, _host_slot, mut host_stream, deadline) = match host_stream(&state, &meta).await {
        Ok(opened) => opened,
        Err(refusal) => return refuse_session(&state, &meta, client_stream, &refusal).await,
    };
    let (conn, token, expires_at) = (&meta.conn, &meta.token, meta.expires_at);
    let asking = introduce::Asking {
        conn,
        token,
        expires_at,
    };
    let intro = ask.and_then(|ask| introduce(&state, &asking, ask, target.direct.as_deref()).ok());
    let (expect, meet) = intro.map(|i| (i.expect, i.meet)).unzip();
    let open = Frame::Open {
        session: meta.session,
        client: Some(meta.client.to_string()),
        resume,
        owner: Some(meta.owner.clone()),
        who: (meta.who.subject.clone()).map(|subject| crate::protocol::Who {
            subject,
            jti: meta.who.jti.clone(),
        }),
        direct: expect,
    };
    let asked = ask_host(&meta.host, &target.conn, &mut host_stream, &open, deadline).await;
    if resuming {
        state.metrics.resume(asked.as_ref().err().map(|r| r.reason));
    }
    let answer = match asked {
        Ok(answer) => answer,
        Err(refusal) => {
            let client = meta.client;
            info!(target: LOG_TARGET, %client, reason = %refusal.message, "session refused");
            transport::abort(&mut host_stream, refusal.reason);
            return refuse_session(&state, &meta, client_stream, &refusal).await;
        }
    };
    // Within the setup's deadline: a client that grants no credit must
    // not hold the host's stream (and its target connection) for ever.
    let ready = Frame::Ready {
        session: meta.session,
        resume: answer,
        direct: meet,
    };
    let sent =
        tokio::time::timeout_at(deadline, write_frame(&mut client_stream.send, &ready)).await;
    if !matches!(sent, Ok(Ok(()))) {
        transport::abort(&mut host_stream, Reason::Aborted);
        transport::abort(&mut client_stream, Reason::Aborted);
        abandoned(&state, &meta);
        return;
    }
    let streams = (client_stream, host_stream);
    spliced(&state, &meta, &target, streams, (started, resuming)).await;
}

/// The host's side of a new session: the host registered, within its
/// rate and its limit of sessions, and a stream opened on its connection;
/// with the host, its session slot, and the deadline of the session's
/// setup ([`HOST_SETUP_TIMEOUT`] from then on).
async fn host_stream(
    state: &State,
    meta: &Meta,
) -> Result<(Host, Share, Stream, tokio::time::Instant), Refusal> {
    let host = &meta.host;
    let Some(target) = state.hosts.get(host) else {
        let message = format!("host {host} is not connected");
        return Err(Refusal::new(Reason::HostOffline, message));
    };
    host_rate(state, host).await?;
    let limit = state.config.limits.sessions_per_host;
    let Some(slot) = target.sessions.acquire(limit) else {
        let message = format!("host {host} has too many sessions (limit {limit})");
        return Err(Refusal::new(Reason::Limit, message));
    };
    let deadline = tokio::time::Instant::now() + HOST_SETUP_TIMEOUT;
    match tokio::time::timeout_at(deadline, target.conn.open()).await {
        Ok(Ok(stream)) => Ok((target, slot, stream, deadline)),
        Ok(Err(err)) => {
            let message = format!("host {host} went away: {err}");
            Err(Refusal::new(Reason::HostOffline, message))
        }
        Err(_) => {
            let message = format!("host {host} has no room for another session");
            Err(Refusal::new(Reason::Limit, message))
        }
    }
}

/// Sends `open` on the host's stream and reads its answer by `deadline`:
/// the host's resume answer once it is `ready`, or the refusal the client
/// is to get.
async fn ask_host(
    host: &str,
    host_conn: &Conn,
    stream: &mut Stream,
    open: &Frame,
    deadline: tokio::time::Instant,
) -> Result<Option<Resume>, Refusal> {
    let reply = tokio::time::timeout_at(deadline, async {
        write_frame(&mut stream.send, open).await?;
        read_frame(&mut stream.recv).await
    })
    .await;
    let broke = || Refusal::new(Reason::Protocol, format!("host {host} broke the protocol"));
    match reply {
        Ok(Ok(Frame::Ready { resume, .. })) => Ok(resume),
        // The host's words end up on the ssh user's terminal.
        Ok(Ok(Frame::Refused { reason, message })) => Err(Refusal { reason, message }.printable()),
        Ok(Ok(other)) => {
            warn!(target: LOG_TARGET, ?other, "host answered open with an unexpected frame");
            Err(broke())
        }
        Ok(Err(err @ (FrameError::TooLong(_) | FrameError::Malformed(_)))) => {
            warn!(target: LOG_TARGET, %err, "host answered open with a bad frame");
            Err(broke())
        }
        Ok(Err(_)) if host_conn.close_reason().is_some() => Err(Refusal::new(
            Reason::HostOffline,
            format!("host {host} went away"),
        )),
        Ok(Err(_)) => Err(Refusal::new(
            Reason::Aborted,
            format!("host {host} dropped the session"),
        )),
        Err(_) => {
            let secs = HOST_SETUP_TIMEOUT.as_secs();
            let message = format!("host {host} did not open the session within {secs}s");
            Err(Refusal::new(Reason::TargetUnreachable, message))
        }
    }
}

/// A session whose host is `ready`: its two streams, spliced until both
/// ends are done, with its start and end logged and audited.
async fn spliced(
    state: &State,
    meta: &Meta,
    target: &Host,
    (client_stream, host_stream): (Stream, Stream),
    (started, resuming): (Instant, bool),
) {
    let client = meta.client;
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
