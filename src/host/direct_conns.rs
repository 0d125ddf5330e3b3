//! A direct connection at the host agent, from its handshake to its end:
//! the client's ticket ([`super::direct`]), then its sessions, each served
//! as one from a relay is ([`super::session`]).

use std::sync::Arc;

use tracing::{debug, info};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::direct::{DirectPaths, MAX_DIRECT_SESSIONS};
use super::session::{host_session, Origin, Sessions};
use crate::net::transport::direct::{DirectIncoming, DirectListener};
use crate::net::transport::{self, liveness};
use crate::ops::clock::unix_now;
use crate::ops::defaults::SESSION_BURST_PER_CLIENT;
use crate::ops::limits::{Gauge, GaugeGuard};
use crate::ops::memory::Trim;
use crate::protocol::{Reason, Refusal};

/// The next direct connection attempt on `listener`; never, without one.
pub(super) async fn accept(listener: Option<&DirectListener>) -> Option<DirectIncoming> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves one direct connection attempt, holding `pending` (its place
/// among those being set up) until it is admitted: handshake, ticket,
/// then its sessions until it closes, its client's token expires, or the
/// agent shuts down.
pub(super) async fn serve(
    paths: Arc<DirectPaths>,
    ctx: Arc<Sessions>,
    (incoming, pending): (DirectIncoming, OwnedSemaphorePermit),
    (trim, shutdown): (Trim, CancellationToken),
) {
    let from = incoming.remote();
    let conn = match incoming.handshake().await {
        Ok(conn) => conn,
        Err(err) => return debug!(%from, "direct handshake failed: {err:#}"),
    };
    let Some((admitted, expires_at, control, _listed)) = paths.admit(&conn, from).await else {
        return;
    };
    drop(pending);
    info!(client = %from, "direct connection from a client");
    paths.tasks.spawn(liveness::absorb_probes(control.recv));
    let owner = admitted.owner.clone().unwrap_or_default();
    let admitted = Arc::new(admitted);
    let expiry = std::time::Duration::from_secs(expires_at.saturating_sub(unix_now()));
    let expired = tokio::time::sleep(expiry);
    tokio::pin!(expired);
    let sessions = Gauge::default();
    loop {
        let stream = tokio::select! {
            () = &mut expired => {
                return conn.close(Reason::TokenExpired, "the client's token has expired");
            }
            _ = shutdown.cancelled() => {
                return conn.close(Reason::Done, "host agent shutting down");
            }
            stream = conn.accept() => stream,
        };
        let Ok(stream) = stream else {
            return info!(client = %from, "direct connection closed");
        };
        let slot = match session_slot(&paths, &sessions, &owner) {
            Ok(slot) => slot,
            Err(refusal) => {
                if let Some(drain) = transport::refuse_at_once(stream, &refusal) {
                    paths.tasks.spawn(drain);
                }
                continue;
            }
        };
        let _span = tracing::info_span!(
            "session",
            session = tracing::field::Empty,
            path = "direct",
            subject = tracing::field::Empty,
            jti = tracing::field::Empty
        )
        .entered();
        let origin = Origin::Direct(admitted.clone());
        let session = host_session(ctx.clone(), stream, trim.session(), origin);
        paths.tasks.spawn(async move {
            session.await;
            drop(slot);
        });
    }
}

/// A place for a new session on a direct connection that has `sessions`
/// of client token `owner`'s, or why not: past [`MAX_DIRECT_SESSIONS`] at
/// once, or faster than the relay lets a token start sessions. The
/// client then opens it through the relay, whose limits apply.
fn session_slot(paths: &DirectPaths, sessions: &Gauge, owner: &str) -> Result<GaugeGuard, Refusal> {
    let rate = (
        crate::ops::defaults::SESSION_RATE_PER_CLIENT,
        SESSION_BURST_PER_CLIENT,
    );
    let now = std::time::Instant::now();
    if paths
        .rates
        .take(&owner.to_owned(), now, rate.0, rate.1)
        .is_err()
    {
        let message = "sessions start faster than the host takes them directly; through the relay";
        return Err(Refusal::new(Reason::Limit, message));
    }
    let max = MAX_DIRECT_SESSIONS as usize;
    sessions.acquire(max).ok_or_else(|| {
        let message =
            format!("{max} sessions on this direct connection already; through the relay");
        Refusal::new(Reason::Limit, message)
    })
}
