//! Session streams over HTTP/2 (the `h2` crate), for the TLS-over-TCP
//! transport: one request per session, its body one way and the
//! response's body the other, each a byte pipe with the semantics the
//! QUIC streams have: a FIN ends one direction, a reset carries a code,
//! and a receiver that stops reading holds at most one stream window.
//!
//! The dialling side takes the HTTP/2 role that lets the relay open
//! streams where it must: a host agent is the server on its connection
//! (the relay opens a request per session towards it), a client the
//! client (it opens a request per session).
//!
//! Flow control: every stream has its own window, and the connection's
//! window is the protocol's largest ([`CONNECTION_WINDOW`]), so that
//! streams whose readers stall cannot use it up and freeze the others;
//! [`max_streams`] keeps streams × window within it.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};

use super::{ErrorCode, StreamError};

/// The connection-level receive window: HTTP/2's largest.
pub const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// Most concurrent streams whose full windows fit in
/// [`CONNECTION_WINDOW`]: with more, stalled streams could hold the whole
/// connection window and stop every other stream.
pub fn max_streams(stream_window: u32) -> u32 {
    CONNECTION_WINDOW / stream_window.max(1)
}

/// The code carried by an h2 error, as the QUIC streams report it.
fn stream_error(err: h2::Error) -> StreamError {
    match err.reason() {
        Some(reason) if err.is_reset() => StreamError::Aborted(code_of(reason)),
        _ => StreamError::Closed(super::Closed::Lost(std::sync::Arc::new(err))),
    }
}

/// A stream's h2 sending half, shared by both of our halves: HTTP/2
/// resets a stream only from its sending side, and the receiving half must
/// be able to stop it too.
type Shared = Arc<Mutex<h2::SendStream<Bytes>>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, h2::SendStream<Bytes>> {
    // Nothing panics while holding it; a poisoned one is still usable.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Both halves of a session stream from h2's two.
pub fn stream(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> (SendStream, RecvStream) {
    let shared = Arc::new(Mutex::new(send));
    (
        SendStream {
            inner: shared.clone(),
            finished: false,
        },
        RecvStream {
            inner: recv,
            reset: shared,
            leftover: Bytes::new(),
        },
    )
}

/// The sending half of a session stream over HTTP/2.
#[derive(Debug)]
pub struct SendStream {
    inner: Shared,
    finished: bool,
}

impl SendStream {
    /// Waits until the peer's window lets `want` bytes go, and says how
    /// many may.
    fn poll_capacity(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<Result<usize, StreamError>> {
        if self.finished {
            return Poll::Ready(Err(StreamError::Finished));
        }
        let mut send = lock(&self.inner);
        loop {
            send.reserve_capacity(want);
            return match send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(0))) => continue,
                Poll::Ready(Some(Ok(n))) => Poll::Ready(Ok(n)),
                Poll::Ready(Some(Err(err))) => Poll::Ready(Err(stream_error(err))),
                // The stream can send no more: reset by the peer, or the
                // connection is gone.
                Poll::Ready(None) => match send.poll_reset(cx) {
                    Poll::Ready(Ok(r)) => Poll::Ready(Err(StreamError::Aborted(code_of(r)))),
                    Poll::Ready(Err(err)) => Poll::Ready(Err(stream_error(err))),
                    Poll::Pending => Poll::Ready(Err(StreamError::Finished)),
                },
                Poll::Pending => Poll::Pending,
            };
        }
    }

    /// Sends `chunk`, waiting for the peer's window: h2 would otherwise
    /// buffer whatever it is given, without a bound.
    pub async fn write_chunk(&mut self, mut chunk: Bytes) -> Result<(), StreamError> {
        while !chunk.is_empty() {
            let granted = poll_fn(|cx| self.poll_capacity(cx, chunk.len())).await?;
            let part = chunk.split_to(granted.min(chunk.len()));
            lock(&self.inner)
                .send_data(part, false)
                .map_err(stream_error)?;
        }
        Ok(())
    }

    /// Ends this direction after what is sent (an empty DATA frame with
    /// END_STREAM).
    pub fn finish(&mut self) -> Result<(), StreamError> {
        if std::mem::replace(&mut self.finished, true) {
            return Err(StreamError::Finished);
        }
        lock(&self.inner)
            .send_data(Bytes::new(), true)
            .map_err(stream_error)
    }

    /// Abandons the stream (both ways: HTTP/2 has no half reset), telling
    /// the peer `code`.
    pub fn reset(&mut self, code: ErrorCode) {
        self.finished = true;
        lock(&self.inner).send_reset(reason(code));
    }

    /// Resolves when the peer resets the stream, with its code;
    /// independent of `self` once made. Made after [`SendStream::finish`],
    /// it resolves with `None` unless the stream is reset already: HTTP/2
    /// tells no sender when its data has arrived, so whoever must know
    /// waits for the peer to close the connection, which it does only once
    /// its sessions have ended.
    pub fn stopped(&self) -> impl Future<Output = Option<ErrorCode>> + Send + 'static {
        let shared = self.inner.clone();
        let finished = self.finished;
        async move {
            poll_fn(|cx| match lock(&shared).poll_reset(cx) {
                Poll::Ready(Ok(r)) => Poll::Ready(Some(code_of(r))),
                Poll::Ready(Err(_)) => Poll::Ready(Some(ErrorCode(
                    crate::protocol::Reason::Aborted.code().into(),
                ))),
                Poll::Pending if finished => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            })
            .await
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_capacity(cx, buf.len())).map_err(io::Error::other)?;
        let n = n.min(buf.len());
        lock(&this.inner)
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What is written goes out as the window allows; nothing waits here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(this.finish().map_err(io::Error::other))
    }
}

/// Our codes travel in RST_STREAM above HTTP/2's own (0 to 0xd), so that
/// a reset h2 makes by itself (a CANCEL, a flow-control error) is not
/// taken for one of ours: it becomes "aborted".
const CODE_BASE: u32 = 0x100;

fn code_of(reason: h2::Reason) -> ErrorCode {
    let aborted = crate::protocol::Reason::Aborted.code().into();
    ErrorCode(match u32::from(reason).checked_sub(CODE_BASE) {
        Some(ours) => ours.into(),
        None => aborted,
    })
}

/// The h2 reason that carries `code`; codes that do not fit (only a QUIC
/// peer could send one) become "aborted".
fn reason(code: ErrorCode) -> h2::Reason {
    let aborted = crate::protocol::Reason::Aborted.code();
    let ours = u32::try_from(code.0)
        .ok()
        .filter(|c| c.checked_add(CODE_BASE).is_some())
        .unwrap_or(aborted);
    h2::Reason::from(ours + CODE_BASE)
}

/// The receiving half of a session stream over HTTP/2.
#[derive(Debug)]
pub struct RecvStream {
    inner: h2::RecvStream,
    reset: Shared,
    /// What a byte read took from a chunk and left.
    leftover: Bytes,
}

impl RecvStream {
    /// The next chunk, its window given back; `None` at the end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamError>>> {
        if !self.leftover.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut self.leftover))));
        }
        loop {
            return match ready!(self.inner.poll_data(cx)) {
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    let _ = self.inner.flow_control().release_capacity(data.len());
                    Poll::Ready(Some(Ok(data)))
                }
                Some(Err(err)) => Poll::Ready(Some(Err(stream_error(err)))),
                None => Poll::Ready(None),
            };
        }
    }

    /// Reads what has arrived into `chunks`: `Some(n)` chunks, or `None`
    /// at the end of the stream. The window is given back as chunks are
    /// taken, so a reader that stops taking them holds one window at most.
    pub async fn read_chunks(
        &mut self,
        chunks: &mut [Bytes],
    ) -> Result<Option<usize>, StreamError> {
        if chunks.is_empty() {
            return Ok(Some(0));
        }
        let first = match poll_fn(|cx| self.poll_chunk(cx)).await {
            Some(chunk) => chunk?,
            None => return Ok(None),
        };
        chunks[0] = first;
        let mut n = 1;
        // Take what is already here, without waiting for more; an error or
        // the end shows on the next read.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while n < chunks.len() {
            match self.inner.poll_data(&mut cx) {
                Poll::Ready(Some(Ok(data))) if !data.is_empty() => {
                    let _ = self.inner.flow_control().release_capacity(data.len());
                    chunks[n] = data;
                    n += 1;
                }
                Poll::Ready(Some(Ok(_))) => {}
                _ => break,
            }
        }
        Ok(Some(n))
    }

    /// Tells the peer to stop sending, with `code` (a reset of the whole
    /// stream: HTTP/2 has no half stop).
    pub fn stop(&mut self, code: ErrorCode) {
        lock(&self.reset).send_reset(reason(code));
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(this.poll_chunk(cx)) {
            Some(Ok(mut chunk)) => {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk.split_to(n));
                this.leftover = chunk;
                Poll::Ready(Ok(()))
            }
            Some(Err(err)) => Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, err))),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Largest HTTP/2 frame payload either side accepts: fewer frames per
/// byte than the protocol's 16 KiB default.
const MAX_FRAME: u32 = 64 * 1024;

/// Largest header list either side takes: ours are a few bytes (h2 would
/// take 16 MiB).
const MAX_HEADERS: u32 = 4096;

/// Opens session streams: the HTTP/2 client side of a connection.
#[derive(Debug, Clone)]
pub struct Opener(h2::client::SendRequest<Bytes>);

impl Opener {
    /// Opens a session stream and waits until the peer has taken it.
    pub async fn open(&self) -> Result<(SendStream, RecvStream), StreamError> {
        let request = http::Request::post("https://shellrelay/session")
            .body(())
            .unwrap_or_default();
        let mut ready = self.0.clone().ready().await.map_err(stream_error)?;
        let (response, body) = ready.send_request(request, false).map_err(stream_error)?;
        let response = response.await.map_err(stream_error)?;
        Ok(stream(body, response.into_body()))
    }
}

/// Takes the session streams a peer opens: the HTTP/2 server side of a
/// connection.
#[derive(Debug)]
pub struct Accepter(tokio::sync::Mutex<mpsc::Receiver<(SendStream, RecvStream)>>);

impl Accepter {
    /// The next stream the peer opened, or `None` once the connection has
    /// ended.
    pub async fn accept(&self) -> Option<(SendStream, RecvStream)> {
        self.0.lock().await.recv().await
    }
}

/// A started HTTP/2 connection: the future that drives it (and ends with
/// it), and its PING handle for keep-alives.
pub struct Driver<F> {
    /// Drives the connection; ends when it does.
    pub run: F,
    /// Sends PINGs, for keep-alive and to notice a dead peer.
    pub ping: Option<h2::PingPong>,
}

/// Starts HTTP/2 over `io` as the client, with `window` per stream; the
/// connection's receive window follows `target` if given (else it stays
/// [`CONNECTION_WINDOW`]).
pub async fn client<T>(
    io: T,
    window: u32,
    target: Option<watch::Receiver<u32>>,
) -> Result<(Opener, Driver<impl Future<Output = ()> + Send>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(first_window(&target))
        // What a stream may have waiting to go out, whatever credit the
        // peer grants: a peer that stops reading holds one window here.
        .max_send_buffer_size(window as usize)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADERS)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let ping = conn.ping_pong();
    let run = run_with_window(conn, target);
    Ok((Opener(send), Driver { run, ping }))
}

/// Starts HTTP/2 over `io` as the server, with `window` per stream. The
/// driver runs the connection (every stream on it, not only new ones);
/// the peer may open at most `max_streams` streams at once (and never
/// more than [`max_streams`]`(window)`), so the queue of streams not yet
/// accepted is bounded by that.
pub async fn server<T>(
    io: T,
    window: u32,
    max_streams: u32,
    target: Option<watch::Receiver<u32>>,
) -> Result<(Accepter, Driver<impl Future<Output = ()> + Send>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(first_window(&target))
        .max_send_buffer_size(window as usize)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADERS)
        .max_concurrent_streams(max_streams.min(self::max_streams(window)))
        .handshake::<_, Bytes>(io)
        .await?;
    let ping = conn.ping_pong();
    // Streams the peer opened and reset again leave h2's count of open
    // streams, but not this queue: it holds as many as may be open at
    // once, and a stream past that is reset at once (refused), so that a
    // peer opening and resetting streams faster than they are taken up
    // cannot grow it.
    let queue = max_streams.min(self::max_streams(window)).max(1) as usize;
    let (tx, rx) = mpsc::channel(queue);
    let run = async move {
        let mut target = target;
        loop {
            let accepted = tokio::select! {
                accepted = conn.accept() => accepted,
                changed = async { target.as_mut()?.changed().await.ok() } , if target.is_some() => {
                    match (changed, &mut target) {
                        (Some(()), Some(t)) => {
                            let size = *t.borrow_and_update();
                            conn.set_target_window_size(size);
                        }
                        _ => target = None,
                    }
                    continue;
                }
            };
            let Some(Ok((request, mut respond))) = accepted else {
                break;
            };
            // A stream nobody will take is dropped, which resets it.
            if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                let _ = tx.try_send(stream(send, request.into_body()));
            }
        }
    };
    Ok((Accepter(tokio::sync::Mutex::new(rx)), Driver { run, ping }))
}

mod window;

use window::{first_window, run_with_window};

#[cfg(test)]
mod tests;
