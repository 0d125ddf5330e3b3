//! The relay's HTTP endpoint (`GET /metrics`, `GET /status`), a small
//! HTTP/1.1 server with one request per connection; `report` is the
//! client that `shellrelay status` reads it with.

mod report;

pub use report::{fetch, table};

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::defaults::{ACCEPT_BACKOFF, REQUEST_LINGER, REQUEST_TIMEOUT};
use crate::limits::{Gauge, PerAddr};
use crate::metrics::CONTENT_TYPE;
use crate::relay::RelayHandle;
use crate::tasks::Tasks;

/// Largest request head read: a scraper's GET is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;

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

/// Answers requests on `listener` (from [`bind`]) until `shutdown` is
/// cancelled.
pub async fn serve(listener: TcpListener, relay: RelayHandle, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics listening");
    }
    let tasks = Tasks::new();
    serve_on(&listener, &relay, &shutdown, &tasks).await;
    tasks.shutdown(REQUEST_TIMEOUT).await;
}

async fn serve_on(
    listener: &TcpListener,
    relay: &RelayHandle,
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
        // Per address first, so that one slow or hostile client cannot
        // take every slot and starve the scrapes.
        let Some(addr_slot) = per_addr.acquire(remote.ip(), MAX_CONNECTIONS_PER_ADDR) else {
            debug!(%remote, "too many metrics connections from this address; closing");
            continue;
        };
        let Some(slot) = open.acquire(MAX_CONNECTIONS) else {
            debug!(%remote, "too many metrics connections; closing");
            continue;
        };
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        let _span = tracing::debug_span!("metrics", %remote).entered();
        tasks.spawn(async move {
            let _slots = (slot, addr_slot);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                done = tokio::time::timeout(REQUEST_TIMEOUT, answer(tcp, &relay)) => {
                    if done.is_err() {
                        debug!("metrics request timed out");
                    }
                }
            }
        });
    }
}

/// Reads one request and writes its answer, then closes.
async fn answer(mut tcp: TcpStream, relay: &RelayHandle) {
    let reply = match read_head(&mut tcp).await {
        Ok(head) => match route(&head) {
            Route::Metrics => ok(CONTENT_TYPE, relay.metrics().into_bytes()),
            Route::Status => match serde_json::to_vec_pretty(&relay.status()) {
                Ok(mut json) => {
                    json.push(b'\n');
                    ok("application/json", json)
                }
                Err(err) => error(HttpError::Internal, &err.to_string()),
            },
            Route::NotFound => error(HttpError::NotFound, "not found; try /metrics or /status"),
            Route::NotAllowed => error(HttpError::NotAllowed, "only GET is served"),
            Route::Bad => error(HttpError::Bad, "not an HTTP/1 request"),
        },
        Err(Head::TooLarge) => error(
            HttpError::TooLarge,
            &format!("request longer than {MAX_REQUEST} bytes"),
        ),
        Err(Head::Closed) => return,
    };
    if tcp.write_all(&reply).await.is_ok() && tcp.shutdown().await.is_ok() {
        linger(&mut tcp).await;
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

/// Why no request head was read.
enum Head {
    TooLarge,
    Closed,
}

/// Reads up to the blank line that ends a request head, at most
/// [`MAX_REQUEST`] bytes. A body, if any, is left unread.
async fn read_head(tcp: &mut TcpStream) -> Result<Vec<u8>, Head> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        // Never past the limit: a head ends within its first MAX_REQUEST
        // bytes, blank line included, or it is too large.
        let room = (MAX_REQUEST - head.len()).min(buf.len());
        if room == 0 {
            return Err(Head::TooLarge);
        }
        let n = tcp.read(&mut buf[..room]).await.map_err(|_| Head::Closed)?;
        if n == 0 {
            return Err(Head::Closed);
        }
        // The end may straddle two reads: look back three bytes.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head[from..]) {
            head.truncate(from + end);
            return Ok(head);
        }
    }
}

/// Where the blank line ending a head starts in `bytes`, if it is there.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Status,
    NotFound,
    NotAllowed,
    Bad,
}

/// Routes a request head; anything unexpected is [`Route::Bad`].
fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::Bad;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if method.is_empty() || !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    let route = match path {
        "/metrics" => Route::Metrics,
        "/status" => Route::Status,
        _ => return Route::NotFound,
    };
    if method == "GET" {
        route
    } else {
        Route::NotAllowed
    }
}

fn ok(content_type: &str, body: Vec<u8>) -> Vec<u8> {
    reply("200 OK", content_type, "", body)
}

/// The errors the endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpError {
    Bad,
    NotFound,
    NotAllowed,
    TooLarge,
    Internal,
}

impl HttpError {
    fn status(self) -> &'static str {
        match self {
            HttpError::Bad => "400 Bad Request",
            HttpError::NotFound => "404 Not Found",
            HttpError::NotAllowed => "405 Method Not Allowed",
            HttpError::TooLarge => "431 Request Header Fields Too Large",
            HttpError::Internal => "500 Internal Server Error",
        }
    }
}

fn error(kind: HttpError, message: &str) -> Vec<u8> {
    let allow = match kind {
        HttpError::NotAllowed => "Allow: GET\r\n",
        _ => "",
    };
    let body = format!("{message}\n").into_bytes();
    reply(kind.status(), "text/plain; charset=utf-8", allow, body)
}

fn reply(status: &str, content_type: &str, extra: &str, body: Vec<u8>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes() {
        let cases: &[(&[u8], Route)] = &[
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", Route::Metrics),
            (b"GET /status?x=1 HTTP/1.0", Route::Status),
            (b"GET / HTTP/1.1", Route::NotFound),
            (b"GET /metrics/ HTTP/1.1", Route::NotFound),
            (b"POST /metrics HTTP/1.1", Route::NotAllowed),
            (b"HEAD /status HTTP/1.1", Route::NotAllowed),
            (b"GET /metrics", Route::Bad),
            (b"GET /metrics HTTP/2 extra", Route::Bad),
            (b"GET /metrics SSH-2.0", Route::Bad),
            (b"\xff\xfe /metrics HTTP/1.1", Route::Bad),
            (b"", Route::Bad),
        ];
        for (head, want) in cases {
            assert_eq!(&route(head), want, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    proptest! {
        #[test]
        fn any_request_routes_without_panicking(head in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = route(&head);
            let _ = head_end(&head);
        }
    }
}
