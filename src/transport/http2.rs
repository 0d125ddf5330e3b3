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

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

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
        Some(reason) if err.is_reset() => StreamError::Aborted(ErrorCode(u32::from(reason).into())),
        _ => StreamError::Closed(super::Closed::Lost(std::sync::Arc::new(err))),
    }
}

/// The sending half of a session stream over HTTP/2.
#[derive(Debug)]
pub struct SendStream {
    inner: h2::SendStream<Bytes>,
    finished: bool,
}

impl SendStream {
    /// Wraps an h2 sending stream.
    pub fn new(inner: h2::SendStream<Bytes>) -> SendStream {
        SendStream {
            inner,
            finished: false,
        }
    }

    /// Sends `chunk`, waiting for the peer's window: h2 would otherwise
    /// buffer whatever it is given, without a bound.
    pub async fn write_chunk(&mut self, mut chunk: Bytes) -> Result<(), StreamError> {
        if self.finished {
            return Err(StreamError::Finished);
        }
        while !chunk.is_empty() {
            self.inner.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| self.inner.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(err)) => return Err(stream_error(err)),
                // The stream can send no more: reset by the peer, or the
                // connection is gone.
                None => return Err(self.stopped_now().await),
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            self.inner.send_data(part, false).map_err(stream_error)?;
        }
        Ok(())
    }

    /// Why the stream can no longer send.
    async fn stopped_now(&mut self) -> StreamError {
        match poll_fn(|cx| self.inner.poll_reset(cx)).await {
            Ok(reason) => StreamError::Aborted(ErrorCode(u32::from(reason).into())),
            Err(err) => stream_error(err),
        }
    }

    /// Ends this direction after what is sent (an empty DATA frame with
    /// END_STREAM).
    pub fn finish(&mut self) -> Result<(), StreamError> {
        if std::mem::replace(&mut self.finished, true) {
            return Err(StreamError::Finished);
        }
        self.inner
            .send_data(Bytes::new(), true)
            .map_err(stream_error)
    }

    /// Abandons the stream (both ways: HTTP/2 has no half reset), telling
    /// the peer `code`.
    pub fn reset(&mut self, code: ErrorCode) {
        self.finished = true;
        self.inner.send_reset(reason(code));
    }

    /// Resolves when the peer resets the stream, with its code.
    pub async fn stopped(&mut self) -> ErrorCode {
        match poll_fn(|cx| self.inner.poll_reset(cx)).await {
            Ok(r) => ErrorCode(u32::from(r).into()),
            Err(_) => ErrorCode(crate::protocol::Reason::Aborted.code().into()),
        }
    }
}

/// An h2 reason for `code`; codes beyond 32 bits (only a QUIC peer could
/// send one) become "aborted".
fn reason(code: ErrorCode) -> h2::Reason {
    let aborted = crate::protocol::Reason::Aborted.code();
    h2::Reason::from(u32::try_from(code.0).unwrap_or(aborted))
}

/// The receiving half of a session stream over HTTP/2.
#[derive(Debug)]
pub struct RecvStream {
    inner: h2::RecvStream,
}

impl RecvStream {
    /// Wraps an h2 receiving stream.
    pub fn new(inner: h2::RecvStream) -> RecvStream {
        RecvStream { inner }
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
        let mut n = 0;
        loop {
            let next = if n == 0 {
                self.inner.data().await
            } else {
                // Take what is already here, without waiting for more.
                match futures_util::FutureExt::now_or_never(self.inner.data()) {
                    Some(next) => next,
                    None => return Ok(Some(n)),
                }
            };
            match next {
                Some(Ok(data)) => {
                    let len = data.len();
                    let _ = self.inner.flow_control().release_capacity(len);
                    if len == 0 {
                        continue;
                    }
                    chunks[n] = data;
                    n += 1;
                    if n == chunks.len() {
                        return Ok(Some(n));
                    }
                }
                Some(Err(err)) if n == 0 => return Err(stream_error(err)),
                // The error shows on the next read.
                Some(Err(_)) | None if n > 0 => return Ok(Some(n)),
                _ => return Ok(None),
            }
        }
    }
}

/// Largest HTTP/2 frame payload either side accepts: fewer frames per
/// byte than the protocol's 16 KiB default.
const MAX_FRAME: u32 = 64 * 1024;

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
        Ok((SendStream::new(body), RecvStream::new(response.into_body())))
    }
}

/// Takes the session streams a peer opens: the HTTP/2 server side of a
/// connection.
#[derive(Debug)]
pub struct Accepter(tokio::sync::Mutex<mpsc::UnboundedReceiver<(SendStream, RecvStream)>>);

impl Accepter {
    /// The next stream the peer opened, or `None` once the connection has
    /// ended.
    pub async fn accept(&self) -> Option<(SendStream, RecvStream)> {
        self.0.lock().await.recv().await
    }
}

/// Starts HTTP/2 over `io` as the client, with `window` per stream. The
/// returned future drives the connection and ends with it.
pub async fn client<T>(
    io: T,
    window: u32,
) -> Result<(Opener, impl Future<Output = ()> + Send), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    Ok((Opener(send), async move {
        let _ = conn.await;
    }))
}

/// Starts HTTP/2 over `io` as the server, with `window` per stream. The
/// returned future drives the connection (every stream on it, not only
/// new ones) and ends with it; the peer may open at most
/// [`max_streams`]`(window)` streams at once, so the queue of streams not
/// yet accepted is bounded by that.
pub async fn server<T>(
    io: T,
    window: u32,
) -> Result<(Accepter, impl Future<Output = ()> + Send), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(max_streams(window))
        .handshake::<_, Bytes>(io)
        .await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let driver = async move {
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            // A stream nobody will take is dropped, which resets it.
            if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                let _ = tx.send((SendStream::new(send), RecvStream::new(request.into_body())));
            }
        }
    };
    Ok((Accepter(tokio::sync::Mutex::new(rx)), driver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    const WINDOW: u32 = 64 * 1024;

    /// An HTTP/2 client and server over loopback TCP with a stream window
    /// of [`WINDOW`], each connection driven by a task of its own.
    async fn pair() -> (Opener, Accepter) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (opener, accepter) = tokio::join!(
            client(dialled.unwrap(), WINDOW),
            server(accepted.unwrap().0, WINDOW)
        );
        let (opener, driver) = opener.unwrap();
        tokio::spawn(driver);
        let (accepter, driver) = accepter.unwrap();
        tokio::spawn(driver);
        (opener, accepter)
    }

    async fn read_all(recv: &mut RecvStream) -> Result<Vec<u8>, StreamError> {
        let mut chunks: [Bytes; 8] = Default::default();
        let mut all = Vec::new();
        while let Some(n) = recv.read_chunks(&mut chunks).await? {
            for c in &chunks[..n] {
                all.extend_from_slice(c);
            }
        }
        Ok(all)
    }

    #[tokio::test]
    async fn bytes_and_each_directions_end_cross_intact() {
        let (opener, accepter) = pair().await;
        let (mut up, mut down) = opener.open().await.unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                for part in data.chunks(100_000) {
                    up.write_chunk(Bytes::copy_from_slice(part)).await.unwrap();
                }
                up.finish().unwrap();
                up
            })
        };
        let (mut back, mut recv) = accepter.accept().await.unwrap();
        let got = read_all(&mut recv).await.unwrap();
        assert_eq!(got, data, "client to server");
        // The other direction still works after the first has ended.
        back.write_chunk(Bytes::from_static(b"reply"))
            .await
            .unwrap();
        back.finish().unwrap();
        assert_eq!(read_all(&mut down).await.unwrap(), b"reply");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_reset_reaches_the_peer_with_its_code() {
        let (opener, accepter) = pair().await;
        let (mut up, _down) = opener.open().await.unwrap();
        up.write_chunk(Bytes::from_static(b"x")).await.unwrap();
        let (_back, mut recv) = accepter.accept().await.unwrap();
        up.reset(ErrorCode(0x1234));
        match read_all(&mut recv).await {
            Err(StreamError::Aborted(code)) => assert_eq!(code, ErrorCode(0x1234)),
            other => panic!("expected an abort with the code, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stalled_readers_do_not_stop_the_other_streams() {
        // More stalled streams than a 64 MiB connection window would
        // hold, each filled to its window by a writer nobody reads.
        let (opener, accepter) = pair().await;
        let stalled = 1100; // × 64 KiB > 64 MiB
        let mut held = Vec::new();
        let open = || async {
            tokio::time::timeout(std::time::Duration::from_secs(20), opener.open())
                .await
                .expect("a stream opens")
                .unwrap()
        };
        for _ in 0..stalled {
            let (mut up, _down) = open().await;
            let writer = tokio::spawn(async move {
                let _ = up
                    .write_chunk(Bytes::from(vec![0u8; WINDOW as usize * 2]))
                    .await;
                up
            });
            held.push((writer, accepter.accept().await.unwrap()));
        }
        let (mut up, _down) = open().await;
        let (_back, mut recv) = accepter.accept().await.unwrap();
        let live = tokio::spawn(async move {
            up.write_chunk(Bytes::from(vec![1u8; 4 << 20]))
                .await
                .unwrap();
            up.finish().unwrap();
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(20), read_all(&mut recv))
            .await
            .expect("the live stream moved")
            .unwrap();
        assert_eq!(got.len(), 4 << 20);
        live.await.unwrap();
        drop(held);
    }
}
