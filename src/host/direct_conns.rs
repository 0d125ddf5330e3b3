//! A direct connection at the host agent, from its handshake to its end:
//! the client's ticket ([`super::direct`]), then its sessions, each served
//! as one from a relay is ([`super::session`]).

use std::sync::Arc;

use tracing::{debug, info};

use super::direct::{DirectPaths, Listed};
use super::session::{host_session, Origin, Sessions};
use crate::net::transport::direct::{DirectIncoming, DirectListener};
use crate::net::transport::liveness;
use crate::ops::clock::unix_now;
use crate::ops::memory::Trim;
use crate::protocol::Reason;

/// The next direct connection attempt on `listener`; never, without one.
pub(super) async fn accept(listener: Option<&DirectListener>) -> Option<DirectIncoming> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves one direct connection attempt: handshake, ticket, then its
/// sessions until it closes or its client's token expires.
pub(super) async fn serve(
    paths: Arc<DirectPaths>,
    ctx: Arc<Sessions>,
    incoming: DirectIncoming,
    trim: Trim,
) {
    let from = incoming.remote();
    let conn = match incoming.handshake().await {
        Ok(conn) => conn,
        Err(err) => return debug!(%from, "direct handshake failed: {err:#}"),
    };
    let Some((admitted, expires_at, control)) = paths.admit(&conn, from).await else {
        return;
    };
    let _listed = Listed::new(&paths, admitted.owner.clone(), &conn);
    let Some(_listed) = _listed else {
        let message = "the host has too many direct connections";
        return conn.close(Reason::Limit, message);
    };
    info!(client = %from, "direct connection from a client");
    paths.tasks.spawn(liveness::absorb_probes(control.recv));
    let admitted = Arc::new(admitted);
    let expiry = std::time::Duration::from_secs(expires_at.saturating_sub(unix_now()));
    let expired = tokio::time::sleep(expiry);
    tokio::pin!(expired);
    loop {
        let stream = tokio::select! {
            () = &mut expired => {
                conn.close(Reason::TokenExpired, "the client's token has expired");
                return;
            }
            stream = conn.accept() => stream,
        };
        let Ok(stream) = stream else {
            return info!(client = %from, "direct connection closed");
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
        paths.tasks.spawn(session);
    }
}
