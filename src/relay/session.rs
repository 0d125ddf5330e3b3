//! Sessions: each stream a client opens is checked, matched with a fresh
//! stream on the host's connection, and spliced to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::audit::{Line, Who};
use super::budget::{Share, Shares};
use super::{State, LOG_TARGET};
use crate::defaults::{HOST_SETUP_TIMEOUT, OPEN_TIMEOUT};
use crate::limits::{CountGuard, GaugeGuard};
use crate::protocol::{read_frame, write_frame, Frame, FrameError, Reason, Refusal, Resume};
use crate::splice;
use crate::transport::{self, Conn, SendStream, Stream};

/// Accepts the session streams a client opens, each in a task of its own,
/// until the connection closes.
/// `token` names the client's token: its sessions are counted over all of
/// its connections; `owner` is the digest that binds resumes to it.
pub(super) async fn accept_sessions(
    state: &Arc<State>,
    conn: &Conn,
    host: &str,
    (token, owner): (String, String),
    who: &Who,
) {
    let remote = conn.remote();
    let shares = Shares::new(conn.clone(), state.config.transport.window());
    while let Ok((mut send, recv)) = conn.accept().await {
        let slots = match session_slots(state, &shares, &token) {
            Ok(slots) => slots,
            Err(refusal) => {
                let mut line = Line::new("refused", who, remote);
                (line.role, line.host) = (Some("client"), Some(host));
                line.reason = Some(&refusal.message);
                state.audit.write(&line);
                state.metrics.refused(refusal.reason);
                // The receiving half goes once the refusal is out: over
                // HTTP/2, letting go of it first could reset the stream
                // before the client has read why.
                state.tasks.spawn(async move {
                    send.refuse(&refusal).await;
                    drop(recv);
                });
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
        };
        let task = relay_session(state.clone(), meta, (send, recv), slots);
        state.tasks.spawn(task);
    }
    // The connection is closed; `hold` reports why.
    std::future::pending::<()>().await;
}

/// Which session, for whom: what its log and audit lines name.
struct Meta {
    session: u64,
    host: String,
    client: SocketAddr,
    who: Who,
    /// The client's token, as the host knows it (a digest).
    owner: String,
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
    let resume = match tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut client_stream.1)).await {
        Ok(Ok(Frame::Open { resume, .. })) => resume,
        other => {
            debug!(target: LOG_TARGET, ?other, "session stream did not start with open");
            transport::abort(&mut client_stream, Reason::Protocol);
            return;
        }
    };
    let c_send = &mut client_stream.0;
    let Some(target) = state.hosts.get(&host) else {
        let refusal = Refusal::new(Reason::HostOffline, format!("host {host} is not connected"));
        return refuse_session(&state, &meta, c_send, &refusal).await;
    };
    let limit = state.config.limits.sessions_per_host;
    let Some(_host_slot) = target.sessions.acquire(limit) else {
        let refusal = Refusal::new(
            Reason::Limit,
            format!("host {host} has too many sessions (limit {limit})"),
        );
        return refuse_session(&state, &meta, c_send, &refusal).await;
    };
    let deadline = tokio::time::Instant::now() + HOST_SETUP_TIMEOUT;
    let mut host_stream = match tokio::time::timeout_at(deadline, target.conn.open()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            let refusal =
                Refusal::new(Reason::HostOffline, format!("host {host} went away: {err}"));
            return refuse_session(&state, &meta, c_send, &refusal).await;
        }
        Err(_) => {
            let refusal = Refusal::new(
                Reason::Limit,
                format!("host {host} has no room for another session"),
            );
            return refuse_session(&state, &meta, c_send, &refusal).await;
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
        write_frame(&mut host_stream.0, &open).await?;
        read_frame(&mut host_stream.1).await
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
        return refuse_session(&state, &meta, c_send, &refusal).await;
    }
    // Within the setup's deadline: a client that grants no credit must
    // not hold the host's stream (and its target connection) for ever.
    let ready = Frame::Ready {
        session,
        resume: answer,
    };
    let sent = tokio::time::timeout_at(deadline, write_frame(c_send, &ready)).await;
    if !matches!(sent, Ok(Ok(()))) {
        transport::abort(&mut host_stream, Reason::Aborted);
        transport::abort(&mut client_stream, Reason::Aborted);
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
    let max = state.max_sessions;
    let Some(relay) = state.sessions.acquire(max) else {
        return Err(Refusal::new(
            Reason::Limit,
            format!("relay is at its limit of {max} sessions"),
        ));
    };
    let limit = state.config.limits.sessions_per_client;
    let Some(token) = state.token_sessions.acquire(token.to_owned(), limit) else {
        return Err(Refusal::new(
            Reason::Limit,
            format!("too many sessions for this client token (limit {limit})"),
        ));
    };
    // The token's limit bounds this connection's sessions too.
    Ok((relay, token, shares.take()))
}

/// Counts a session refusal, notes it in the audit log and sends it on the
/// client's stream.
async fn refuse_session(state: &State, meta: &Meta, send: &mut SendStream, refusal: &Refusal) {
    state
        .audit
        .write(&meta.audit("refused", Some(&refusal.message)));
    state.metrics.refused(refusal.reason);
    send.refuse(refusal).await;
}
