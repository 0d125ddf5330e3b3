//! Sessions: each stream a client opens is checked, matched with a fresh
//! stream on the host's connection, and spliced to it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use quinn::{Connection, RecvStream, SendStream};
use tracing::{debug, info, warn, Instrument};

use super::{State, LOG_TARGET};
use crate::limits::{Gauge, GaugeGuard};
use crate::protocol::{
    read_frame, send_refusal, write_frame, Frame, FrameError, Reason, Refusal, HOST_SETUP_TIMEOUT,
    OPEN_TIMEOUT,
};
use crate::splice;

pub(super) async fn accept_sessions(state: &Arc<State>, conn: &Connection, host: &str) {
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
        let span = tracing::info_span!(target: LOG_TARGET, "session", session, host = %host);
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
            debug!(target: LOG_TARGET, ?other, "session stream did not start with open");
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
        info!(target: LOG_TARGET, %client, reason = %refusal.message, "session refused");
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
    info!(target: LOG_TARGET, %client, "session started");
    let metrics = &state.metrics;
    let t = splice::quic_quic_counted(
        (c_send, c_recv),
        (h_send, h_recv),
        |n| metrics.to_host(&stats, n),
        |n| metrics.to_client(&stats, n),
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
    state.trim_due.store(true, Ordering::Relaxed);
}

/// Counts a session refusal and sends it on the client's stream.
async fn refuse_session(state: &State, send: &mut SendStream, refusal: &Refusal) {
    state.metrics.refused(refusal.reason);
    send_refusal(send, refusal).await;
}
