//! The HTTP endpoint of the relay and the host agent (`GET /metrics`,
//! `GET /status`), serving the pages of whichever role hands it a
//! [`Render`]: connection caps at accept, one request per connection
//! served by hyper (`http`), and a linger after the answer; `report` is
//! the client that `shellrelay status` reads it with.

mod http;
mod report;

pub use http::{Page, MAX_HEADERS, MAX_REQUEST};
pub use report::{fetch, table, MAX_RESPONSE};

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::ops::defaults::{ACCEPT_BACKOFF, REQUEST_LINGER, REQUEST_TIMEOUT};
use crate::ops::limits::{Gauge, PerAddr};
use crate::ops::tasks::Tasks;

/// Most bytes read from a connection after its answer; a peer that keeps
/// sending is cut off.
const LINGER_BYTES: usize = 64 * 1024;

/// Most connections served at once; more are closed unanswered, so a flood
/// of connections cannot hold the relay's memory or file descriptors.
pub const MAX_CONNECTIONS: usize = 32;

/// Most connections served at once from one address (an IPv4 address or
/// an IPv6 /64): a client that opens many and says nothing holds only
/// these, and scrapes from elsewhere are still answered.
pub const MAX_CONNECTIONS_PER_ADDR: usize = 4;

/// Binds the endpoint's TCP socket on `addr` (port 0 picks a free port);
/// returns it with the address it got. Must be called inside the runtime.
pub fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("could not listen for metrics on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("could not make the metrics socket non-blocking")?;
    let listener = TcpListener::from_std(listener).context("could not serve the metrics socket")?;
    let bound = listener
        .local_addr()
        .context("metrics socket has no address")?;
    Ok((listener, bound))
}

/// What renders the pages: a page's body, or why it could not be made.
pub type Render = Arc<dyn Fn(Page) -> Result<Vec<u8>, String> + Send + Sync>;

/// Answers requests on `listener` (from [`bind`]) with the pages `render`
/// makes, until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics listening");
    }
    let tasks = Tasks::new();
    serve_on(&listener, &render, &shutdown, &tasks).await;
    tasks.shutdown(REQUEST_TIMEOUT).await;
}

async fn serve_on(
    listener: &TcpListener,
    render: &Render,
    shutdown: &CancellationToken,
    tasks: &Tasks,
) {
    let open = Gauge::default();
    let per_addr = PerAddr::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                debug!(%err, "metrics accept failed");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        // Both caps apply here, before a byte is read. Per address first,
        // so that one slow or hostile client cannot take every slot and
        // starve the scrapes.
        let Some(addr_slot) = per_addr.acquire(remote.ip(), MAX_CONNECTIONS_PER_ADDR) else {
            debug!(%remote, "too many metrics connections from this address; closing");
            continue;
        };
        let Some(slot) = open.acquire(MAX_CONNECTIONS) else {
            debug!(%remote, "too many metrics connections; closing");
            continue;
        };
        let (render, shutdown) = (render.clone(), shutdown.clone());
        let _span = tracing::debug_span!("metrics", %remote).entered();
        tasks.spawn(async move {
            let _slots = (slot, addr_slot);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                done = tokio::time::timeout(REQUEST_TIMEOUT, answer(tcp, render)) => {
                    if done.is_err() {
                        debug!("metrics request timed out");
                    }
                }
            }
        });
    }
}

/// Serves one request, then closes.
async fn answer(tcp: TcpStream, render: Render) {
    let render = move |page| render(page);
    if let Some(mut tcp) = http::exchange(tcp, render).await {
        if tcp.shutdown().await.is_ok() {
            linger(&mut tcp).await;
        }
    }
}

/// After answering, reads and drops what the peer still sends (the rest of
/// an oversized request, a body) until it closes: closing with unread bytes
/// would reset the connection, and the peer could lose the answer.
async fn linger(tcp: &mut TcpStream) {
    let _ = tokio::time::timeout(REQUEST_LINGER, async {
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
