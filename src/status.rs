//! The relay's HTTP endpoint (`GET /metrics`, `GET /status`), a small
//! HTTP/1.1 server with one request per connection, and the client that
//! `shellrelay status` reads it with.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

use crate::clock::fmt_unix;
use crate::limits::Gauge;
use crate::metrics::{Status, CONTENT_TYPE};
use crate::relay::RelayHandle;

/// Default address of the endpoint for `shellrelay status`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9100";

/// Largest request head read: a scraper's GET is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;

/// Longest a connection may take to send its request and read the answer;
/// a slow or silent peer is dropped rather than held.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a connection is read from after its answer (see `linger`).
const LINGER: Duration = Duration::from_secs(1);

/// Most bytes read from a connection after its answer; a peer that keeps
/// sending is cut off.
const LINGER_BYTES: usize = 64 * 1024;

/// Most connections served at once; more are closed unanswered, so a flood
/// of connections cannot hold the relay's memory or file descriptors.
pub const MAX_CONNECTIONS: usize = 32;

/// Pause after a failed accept (out of file descriptors, say), so that the
/// accept loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Longest `shellrelay status` waits to connect and read the answer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer `shellrelay status` reads: a host takes about 150 bytes,
/// so this holds the default limit of 10,000 hosts many times over.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Binds the endpoint's TCP socket on `addr` (port 0 picks a free port);
/// returns it with the address it got.
pub fn bind(addr: SocketAddr) -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("could not listen for metrics on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("could not make the metrics socket non-blocking")?;
    let bound = listener
        .local_addr()
        .context("metrics socket has no address")?;
    Ok((listener, bound))
}

/// Serves on `listener` (from [`bind`]) in a task of its own until
/// `shutdown` is cancelled. Must be called inside the runtime.
pub fn start(
    listener: std::net::TcpListener,
    relay: RelayHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener).context("could not serve the metrics socket")?;
    info!(addr = %listener.local_addr()?, "metrics listening");
    tokio::spawn(serve(listener, relay, shutdown));
    Ok(())
}

/// Answers requests on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, relay: RelayHandle, shutdown: CancellationToken) {
    let open = Gauge::default();
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
        let Some(slot) = open.acquire(MAX_CONNECTIONS) else {
            debug!(%remote, "too many metrics connections; closing");
            continue;
        };
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        let span = tracing::debug_span!("metrics", %remote);
        tokio::spawn(
            async move {
                let _slot = slot;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {}
                    done = tokio::time::timeout(REQUEST_TIMEOUT, answer(tcp, &relay)) => {
                        if done.is_err() {
                            debug!("metrics request timed out");
                        }
                    }
                }
            }
            .instrument(span),
        );
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
                Err(err) => error("500 Internal Server Error", &err.to_string()),
            },
            Route::NotFound => error("404 Not Found", "not found; try /metrics or /status"),
            Route::NotAllowed => error("405 Method Not Allowed", "only GET is served"),
            Route::Bad => error("400 Bad Request", "not an HTTP/1 request"),
        },
        Err(Head::TooLarge) => error(
            "431 Request Header Fields Too Large",
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
    let _ = tokio::time::timeout(LINGER, async {
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
        let n = tcp.read(&mut buf).await.map_err(|_| Head::Closed)?;
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
        if head.len() > MAX_REQUEST {
            return Err(Head::TooLarge);
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

fn error(status: &str, message: &str) -> Vec<u8> {
    let allow = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let body = format!("{message}\n").into_bytes();
    reply(status, "text/plain; charset=utf-8", allow, body)
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

/// Fetches `/status` from the endpoint at `addr` (`HOST:PORT`).
pub async fn fetch(addr: &str) -> anyhow::Result<Status> {
    let body = tokio::time::timeout(FETCH_TIMEOUT, get(addr, "/status"))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {FETCH_TIMEOUT:?}"))??;
    serde_json::from_slice(&body)
        .with_context(|| format!("http://{addr}/status did not answer with a relay status"))
}

/// One GET on a fresh connection; returns the body of a 200 answer. Reads
/// to the end of the stream, as the relay's endpoint closes after answering.
async fn get(addr: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await.with_context(|| {
        format!("could not reach the relay's metrics endpoint at {addr} (is the relay running with --metrics {addr}?)")
    })?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .with_context(|| format!("could not send a request to {addr}"))?;
    let mut raw = Vec::new();
    (&mut tcp)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .with_context(|| format!("could not read the answer from {addr}"))?;
    if raw.len() > MAX_RESPONSE {
        bail!("the answer from {addr} is longer than {MAX_RESPONSE} bytes");
    }
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("{addr} did not answer with HTTP");
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        bail!("http://{addr}{path} answered {status:?}");
    }
    Ok(raw.split_off(end + 4))
}

/// `status` as a table, one line per host, or a line saying there are none.
pub fn table(status: &Status) -> String {
    if status.hosts.is_empty() {
        return "no hosts online\n".to_owned();
    }
    let header = [
        "HOST",
        "SINCE",
        "REMOTE",
        "SESSIONS",
        "BYTES TO HOST",
        "BYTES TO CLIENT",
    ];
    let rows: Vec<[String; 6]> = status
        .hosts
        .iter()
        .map(|h| {
            [
                h.id.clone(),
                fmt_unix(h.since),
                h.remote.to_string(),
                h.sessions.to_string(),
                h.bytes_to_host.to_string(),
                h.bytes_to_client.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Text left-aligned, counts right-aligned.
            let cell = if i < 3 {
                format!("{cell:<w$}")
            } else {
                format!("{cell:>w$}")
            };
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(&cell);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::HostStatus;
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

    #[test]
    fn table_aligns_columns() {
        let host = |id: &str, sessions, bytes| HostStatus {
            id: id.into(),
            since: 1_700_000_000,
            remote: "192.0.2.7:50000".parse().unwrap(),
            sessions,
            bytes_to_host: bytes,
            bytes_to_client: bytes * 10,
        };
        let status = Status {
            hosts: vec![host("a", 2, 5), host("longer-id", 10, 123_456)],
        };
        let want = "\
HOST       SINCE                 REMOTE           SESSIONS  BYTES TO HOST  BYTES TO CLIENT
a          2023-11-14T22:13:20Z  192.0.2.7:50000         2              5               50
longer-id  2023-11-14T22:13:20Z  192.0.2.7:50000        10         123456          1234560
";
        assert_eq!(table(&status), want);
        assert_eq!(table(&Status { hosts: vec![] }), "no hosts online\n");
    }

    proptest! {
        #[test]
        fn any_request_routes_without_panicking(head in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = route(&head);
            let _ = head_end(&head);
        }
    }
}
