//! One ssh connection at the forwarder: its session opened (resumable
//! when the window is not zero and the host agrees), carried, and logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{Forwarder, OpenError};
use crate::net::transport;
use crate::ops::memory::Trim;
use crate::protocol::Reason;
use crate::session::offer::answered;
use crate::session::resume::{self as resumable, Outcome};
use crate::session::splice;

/// Log lines of sessions are the role's, whichever module logs them.
const LOG_TARGET: &str = "shellrelay::client";

/// Carries the ssh connection `tcp` from `from` through a new session.
pub(super) async fn forward(
    forwarder: Arc<Forwarder>,
    tcp: TcpStream,
    from: SocketAddr,
    trim: Trim,
) {
    let started = Instant::now();
    // Until the session ends, the relay's silence is watched for.
    let _under_way = forwarder.session_started();
    let _ = tcp.set_nodelay(true);
    let offer = forwarder.offer();
    let opened = match forwarder.open_with(offer.as_ref().map(|o| &o.ask)).await {
        Ok(opened) => opened,
        Err(OpenError::Connect(err)) if forwarder.is_final(&err) => {
            warn!(target: LOG_TARGET, peer = %from, "closing ssh connection: {err}");
            forwarder.give_up(err.to_string());
            return;
        }
        Err(err) => {
            warn!(target: LOG_TARGET, peer = %from, "closing ssh connection: {err}");
            return;
        }
    };
    let (session, host, conn) = (opened.session, opened.host, opened.conn);
    let path = if opened.direct { "direct" } else { "relay" };
    let mut stream = opened.stream;
    let span = tracing::Span::current();
    span.record("session", session);
    span.record("host", host.as_str());
    if let Some(who) = forwarder.who() {
        span.record("subject", who.subject);
        span.record("jti", who.jti.unwrap_or_default());
    }
    let resumable = match answered(offer, opened.resume.as_ref()) {
        Ok(resumable) => resumable,
        Err(why) => {
            warn!(target: LOG_TARGET, peer = %from, "closing ssh connection: {why}");
            transport::abort(&mut stream, Reason::Protocol);
            return;
        }
    };
    info!(target: LOG_TARGET, path, resumable = resumable.is_some(), "session started");
    let live = trim.session();
    let (sent, received, aborted) = match resumable {
        Some(session) => {
            let mut tcp = tcp;
            let (mut from_ssh, mut to_ssh) = tcp.split();
            let outcome = (forwarder)
                .carry(
                    &session,
                    (&mut stream, opened.direct),
                    &mut from_ssh,
                    &mut to_ssh,
                )
                .await;
            resumable::end(&session, &outcome, &mut stream).await;
            let done = matches!(outcome, Outcome::Done);
            if !done {
                // Linger 0: ssh sees a reset, not an orderly end.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
            }
            let (sent, received) = session.moved();
            (sent, received, !done)
        }
        None => {
            let t = splice::tcp(tcp, stream).await;
            (t.sent, t.received, t.aborted)
        }
    };
    drop(live);
    if let Some(refusal) = conn.refusal() {
        warn!(target: LOG_TARGET, "relay closed the connection: {}", refusal.message);
    }
    info!(
        target: LOG_TARGET,
        to_host = sent,
        to_client = received,
        aborted,
        duration = ?started.elapsed(),
        "session ended"
    );
}
