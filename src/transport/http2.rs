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

use bytes::Bytes;
use std::future::poll_fn;

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

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use tokio::net::{TcpListener, TcpStream};

    const WINDOW: u32 = 64 * 1024;

    /// An HTTP/2 client and server over loopback TCP, with the given
    /// stream window and [`CONNECTION_WINDOW`].
    async fn pair() -> (
        h2::client::SendRequest<Bytes>,
        h2::server::Connection<TcpStream, Bytes>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let server = async {
            h2::server::Builder::new()
                .initial_window_size(WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_concurrent_streams(max_streams(WINDOW))
                .handshake(server.unwrap().0)
                .await
                .unwrap()
        };
        let client = async {
            h2::client::Builder::new()
                .initial_window_size(WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake::<_, Bytes>(client.unwrap())
                .await
                .unwrap()
        };
        let (server, (send, conn)) = tokio::join!(server, client);
        tokio::spawn(conn);
        (send, server)
    }

    /// Opens a session stream from the client; the server's half comes
    /// out of `accepted`.
    async fn open(
        send: &mut h2::client::SendRequest<Bytes>,
    ) -> (SendStream, impl std::future::Future<Output = RecvStream>) {
        let request = Request::post("https://relay/session").body(()).unwrap();
        let (response, body) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        let recv = async move { RecvStream::new(response.await.unwrap().into_body()) };
        (SendStream::new(body), recv)
    }

    /// Serves the server side: every stream gets a response whose body is
    /// handed to `streams`.
    fn serve(
        mut server: h2::server::Connection<TcpStream, Bytes>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<(SendStream, RecvStream)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok((request, mut respond))) = server.accept().await {
                let send = respond.send_response(Response::new(()), false).unwrap();
                let _ = tx.send((SendStream::new(send), RecvStream::new(request.into_body())));
            }
        });
        rx
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
        let (mut send, server) = pair().await;
        let mut streams = serve(server);
        let (mut up, down) = open(&mut send).await;
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
        let (mut back, mut recv) = streams.recv().await.unwrap();
        let got = read_all(&mut recv).await.unwrap();
        assert_eq!(got, data, "client to server");
        // The other direction still works after the first has ended.
        back.write_chunk(Bytes::from_static(b"reply"))
            .await
            .unwrap();
        back.finish().unwrap();
        let mut down = down.await;
        assert_eq!(read_all(&mut down).await.unwrap(), b"reply");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_reset_reaches_the_peer_with_its_code() {
        let (mut send, server) = pair().await;
        let mut streams = serve(server);
        let (mut up, _down) = open(&mut send).await;
        up.write_chunk(Bytes::from_static(b"x")).await.unwrap();
        let (_back, mut recv) = streams.recv().await.unwrap();
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
        let (mut send, server) = pair().await;
        let mut streams = serve(server);
        let stalled = 1100; // × 64 KiB > 64 MiB
        let mut held = Vec::new();
        for _ in 0..stalled {
            let (mut up, _down) = open(&mut send).await;
            let writer = tokio::spawn(async move {
                let _ = up
                    .write_chunk(Bytes::from(vec![0u8; WINDOW as usize * 2]))
                    .await;
                up
            });
            held.push((writer, streams.recv().await.unwrap()));
        }
        let (mut up, _down) = open(&mut send).await;
        let (_back, mut recv) = streams.recv().await.unwrap();
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
