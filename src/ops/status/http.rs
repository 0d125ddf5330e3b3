//! One HTTP/1 exchange on an accepted connection, parsed and answered by
//! hyper: the limits on the request head, the routes and the answers.
//! Generic over the connection and the pages, so that the limits are
//! tested in memory.

use std::convert::Infallible;
use std::future::{poll_fn, ready};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::ops::defaults::HEAD_TIMEOUT;

/// Largest request head served, in bytes: everything the client sends
/// before its body, from the connection's first byte to the blank line
/// that ends the header fields, that line included. A scraper's GET is a
/// few hundred bytes; a head that has not ended within this many bytes is
/// answered `431` and is never held whole.
pub const MAX_REQUEST: usize = 8 * 1024;

// hyper refuses (panics on) a max_buf_size below 8192.
const _: () = assert!(MAX_REQUEST >= 8192);

/// Most header fields in a request head; more are answered `431` too.
/// hyper's default, named here so that the documented number stays true.
pub const MAX_HEADERS: usize = 100;

/// Content types, checked when compiled (`from_static` in a constant).
const OPENMETRICS: HeaderValue = HeaderValue::from_static(crate::ops::metrics::CONTENT_TYPE);
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const CLOSE: HeaderValue = HeaderValue::from_static("close");
const GET_HEAD: HeaderValue = HeaderValue::from_static("GET, HEAD");

/// A page the endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/metrics`, in the OpenMetrics text format.
    Metrics,
    /// `/status`, JSON.
    Status,
}

impl Page {
    fn content_type(self) -> HeaderValue {
        match self {
            Page::Metrics => OPENMETRICS,
            Page::Status => JSON,
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Page(Page),
    NotFound,
    NotAllowed,
}

/// Serves one request on `io` and returns the connection for a linger,
/// or `None` when nothing was answered because the peer sent no whole
/// head in time ([`HEAD_TIMEOUT`]) or left first. `render` gives a page's
/// body, or why it could not (answered `500`).
pub async fn exchange<I, F>(io: I, render: F) -> Option<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Page) -> Result<Vec<u8>, String> + Unpin,
{
    let service = service_fn(move |request: Request<_>| {
        ready(Ok::<_, Infallible>(answer(&request, &render)))
    });
    let mut conn = builder().serve_connection(TokioIo::new(io), service);
    match poll_fn(|cx| conn.poll_without_shutdown(cx)).await {
        Ok(()) => {}
        Err(err) if err.is_timeout() || err.is_incomplete_message() => {
            debug!(%err, "metrics request unanswered");
            return None;
        }
        // hyper has answered a bad or oversized head (400, 431), or the
        // connection failed; either way the linger is harmless.
        Err(err) => debug!(%err, "metrics request refused"),
    }
    Some(conn.into_parts().io.into_inner())
}

/// hyper's HTTP/1 server with the endpoint's limits.
fn builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Runs from the first poll, just after the accept, and is not
        // reset by each read; on expiry the connection closes unanswered.
        .header_read_timeout(HEAD_TIMEOUT)
        // One request per connection, answered `Connection: close`.
        .keep_alive(false)
        // A client may half-close after its request and still read the
        // answer, as `nc -N` and some scripts do.
        .half_close(true)
        // The exact limit, however the bytes arrive: hyper answers 431 to a
        // head whose parsed length is over it, and to one not ended once
        // that many bytes are in.
        .max_header_size(MAX_REQUEST)
        // And its read buffer never grows past it, so an oversized head is
        // never held whole. (hyper 1.12 caps each read at what is left of
        // this too, which alone would make the limit exact.)
        .max_buf_size(MAX_REQUEST)
        .max_headers(MAX_HEADERS);
    builder
}

/// The answer to one parsed request.
fn answer<B>(
    request: &Request<B>,
    render: &impl Fn(Page) -> Result<Vec<u8>, String>,
) -> Response<Full<Bytes>> {
    match route(request.method(), request.uri().path()) {
        // hyper leaves the body out for HEAD and keeps its length.
        Route::Page(page) => match render(page) {
            Ok(body) => reply(StatusCode::OK, page.content_type(), body),
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, &err),
        },
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found; try /metrics or /status"),
        Route::NotAllowed => {
            let mut reply = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served",
            );
            reply.headers_mut().insert(ALLOW, GET_HEAD);
            reply
        }
    }
}

/// Routes by path first, then method; a query string is ignored.
fn route(method: &Method, path: &str) -> Route {
    let page = match path {
        "/metrics" => Page::Metrics,
        "/status" => Page::Status,
        _ => return Route::NotFound,
    };
    if method == Method::GET || method == Method::HEAD {
        Route::Page(page)
    } else {
        Route::NotAllowed
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, TEXT, format!("{message}\n").into_bytes())
}

fn reply(status: StatusCode, content_type: HeaderValue, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONNECTION, CLOSE);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// A connection that gives the server `input` in reads of at most
    /// `chunk` bytes, then its end, and keeps what the server writes.
    struct Scripted {
        input: Vec<u8>,
        pos: usize,
        chunk: usize,
        output: Vec<u8>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self
                .chunk
                .min(buf.remaining())
                .min(self.input.len() - self.pos);
            let from = self.pos;
            buf.put_slice(&self.input[from..from + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.output.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What the server writes for `input` given `chunk` bytes at a time.
    fn serve(input: &[u8], chunk: usize) -> String {
        let io = Scripted {
            input: input.to_vec(),
            pos: 0,
            chunk,
            output: Vec::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let render = |page| match page {
            Page::Metrics => Ok(b"# EOF\n".to_vec()),
            Page::Status => Err("no status here".to_owned()),
        };
        let io = runtime.block_on(exchange(io, render));
        io.map(|io| String::from_utf8_lossy(&io.output).into_owned())
            .unwrap_or_default()
    }

    /// The status code the server answers `input` with, if any.
    fn code(input: &[u8], chunk: usize) -> Option<u16> {
        let out = serve(input, chunk);
        let line = out.lines().next()?;
        assert!(line.starts_with("HTTP/1."), "{out:?}");
        line.split(' ').nth(1)?.parse().ok()
    }

    /// A GET of `/metrics` whose head is `len` bytes, blank line included.
    fn head_of(len: usize) -> Vec<u8> {
        let mut head = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
        head.resize(len - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        head
    }

    #[test]
    fn routes() {
        let cases = [
            (Method::GET, "/metrics", Route::Page(Page::Metrics)),
            (Method::HEAD, "/status", Route::Page(Page::Status)),
            (Method::GET, "/", Route::NotFound),
            (Method::GET, "/metrics/", Route::NotFound),
            (Method::POST, "/nothing", Route::NotFound),
            (Method::POST, "/metrics", Route::NotAllowed),
            (Method::DELETE, "/status", Route::NotAllowed),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn the_head_limit_holds_however_the_bytes_arrive() {
        for chunk in [1, 7, 1000, 4096, MAX_REQUEST, 64 * 1024] {
            assert_eq!(code(&head_of(MAX_REQUEST), chunk), Some(200), "{chunk}");
            assert_eq!(code(&head_of(MAX_REQUEST + 1), chunk), Some(431), "{chunk}");
        }
        // Bytes after the head (a body, a second request) do not count.
        let mut more = head_of(MAX_REQUEST);
        more.extend_from_slice(b"GET /status HTTP/1.1\r\n\r\n");
        let out = serve(&more, 64 * 1024);
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "one answer: {out}");
        // Empty lines before the request line are ignored, but counted.
        let mut led = b"\r\n\r\n".to_vec();
        led.extend_from_slice(&head_of(MAX_REQUEST - 4));
        assert_eq!(code(&led, 100), Some(200));
        led.insert(0, b'\n');
        assert_eq!(code(&led, 100), Some(431));
    }

    #[test]
    fn too_many_header_fields_are_refused() {
        let head_with = |fields: usize| {
            let mut head = "GET /metrics HTTP/1.1\r\n".to_owned();
            for i in 0..fields {
                head.push_str(&format!("X-{i}: a\r\n"));
            }
            head.push_str("\r\n");
            head.into_bytes()
        };
        assert_eq!(code(&head_with(MAX_HEADERS), 512), Some(200));
        assert_eq!(code(&head_with(MAX_HEADERS + 1), 512), Some(431));
    }

    #[test]
    fn answers_carry_their_type_length_and_close() {
        let out = serve(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 4096);
        let lower = out.to_ascii_lowercase();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            lower.contains("\r\ncontent-type: application/openmetrics-text"),
            "{out}"
        );
        assert!(lower.contains("\r\ncontent-length: 6\r\n"), "{out}");
        assert!(lower.contains("\r\nconnection: close\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n# EOF\n"), "{out}");
        // HEAD: the same head, no body.
        let head = serve(b"HEAD /metrics HTTP/1.1\r\n\r\n", 4096);
        assert!(head
            .to_ascii_lowercase()
            .contains("\r\ncontent-length: 6\r\n"));
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        // A page that cannot be rendered.
        let failed = serve(b"GET /status HTTP/1.1\r\n\r\n", 4096);
        assert!(failed.starts_with("HTTP/1.1 500 "), "{failed}");
        assert!(failed.ends_with("\r\n\r\nno status here\n"), "{failed}");
        // A peer that leaves before its head ends is not answered.
        assert_eq!(serve(b"GET /metrics HTTP/1.1\r\nHo", 4096), "");
        assert_eq!(serve(b"\r\n\r\n", 4096), "");
    }

    proptest! {
        #[test]
        fn the_head_limit_is_exact(
            len in MAX_REQUEST - 40..MAX_REQUEST + 40,
            chunk in 1usize..20_000,
        ) {
            let want = if len <= MAX_REQUEST { 200 } else { 431 };
            prop_assert_eq!(code(&head_of(len), chunk), Some(want));
        }

        #[test]
        fn any_bytes_are_answered_or_dropped_without_panicking(
            input in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..4096,
        ) {
            let out = serve(&input, chunk);
            prop_assert!(out.is_empty() || out.starts_with("HTTP/1."), "{}", out);
        }
    }
}
