//! The transport: a connection's whole life, from its socket to its
//! close. QUIC (quinn, [`quic`]) is the first transport, TLS over TCP
//! with HTTP/2 streams ([`tcp`], [`http2`]) the one for networks that
//! block UDP; nothing outside this module names quinn or h2.
//!
//! - [`dial`] reaches a relay and says hello: over QUIC, over TCP, or
//!   both raced, and later back to QUIC ([`dial::back_to_quic`]).
//! - [`listen`] binds the relay's sockets and hands each connection
//!   attempt to admission as an [`listen::Incoming`], then a
//!   [`listen::Pending`] with its hello, whatever the transport.
//! - [`Conn`] opens and accepts bidirectional [`Stream`]s, closes with a
//!   typed reason and knows its peer's address. Each type is an enum over
//!   the transports, so a call costs one match and the QUIC path keeps
//!   quinn's zero-copy chunk API.
//! - [`direct`] accepts and dials direct connections between a client
//!   and a host agent, on the endpoints of their relay links.
//! - [`options`] holds the settings every role shares.

pub mod dial;
pub mod direct;
pub mod http2;
pub mod listen;
pub mod liveness;
pub mod options;
pub mod quic;
mod refuse;
pub mod tcp;

mod error;

pub use error::{refusal_of, Closed, ErrorCode, StreamError};
pub use options::{Transport, TransportOptions};
pub use quic::congestion::Congestion;
pub use refuse::{refuse_at_once, reset_reason};

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::{write_frame, Reason, Refusal};

/// A connection to one peer.
#[derive(Debug, Clone)]
pub enum Conn {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// A TLS-over-TCP connection with HTTP/2 streams.
    Tcp(tcp::TcpConn),
}

impl Conn {
    /// Opens a bidirectional stream.
    pub async fn open(&self) -> Result<Stream, Closed> {
        match self {
            Conn::Quic(c) => match c.open_bi().await {
                Ok((send, recv)) => Ok(Stream {
                    send: SendStream::Quic(send),
                    recv: RecvStream::Quic(recv),
                }),
                Err(err) => Err(Closed::quic(err)),
            },
            Conn::Tcp(c) => c.open().await,
        }
    }

    /// Accepts the next bidirectional stream the peer opens.
    pub async fn accept(&self) -> Result<Stream, Closed> {
        match self {
            Conn::Quic(c) => match c.accept_bi().await {
                Ok((send, recv)) => Ok(Stream {
                    send: SendStream::Quic(send),
                    recv: RecvStream::Quic(recv),
                }),
                Err(err) => Err(Closed::quic(err)),
            },
            Conn::Tcp(c) => c.accept().await,
        }
    }

    /// Closes the connection, telling the peer why.
    pub fn close(&self, reason: Reason, message: &str) {
        match self {
            Conn::Quic(c) => c.close(ErrorCode::from(reason).varint(), message.as_bytes()),
            Conn::Tcp(c) => c.close(reason, message),
        }
    }

    /// After [`Conn::close`]: resolves once the peer has had the reason,
    /// within [`crate::ops::defaults::REFUSE_LINGER`]. A QUIC endpoint lingers
    /// for its closed connections by itself; a TCP connection is let go
    /// when the peer closes its end.
    pub async fn closing(&self) {
        if let Conn::Tcp(c) = self {
            let _ = tokio::time::timeout(crate::ops::defaults::REFUSE_LINGER, c.gone()).await;
        }
    }

    /// Resolves when the connection is closed, with why.
    pub async fn closed(&self) -> Closed {
        match self {
            Conn::Quic(c) => Closed::quic(c.closed().await),
            Conn::Tcp(c) => c.closed().await,
        }
    }

    /// [`Conn::closed`] as a future of its own. Over TCP it does not hold
    /// the connection, which still closes when its last handle goes; a
    /// QUIC connection is held until it closes.
    pub fn watch_closed(&self) -> impl std::future::Future<Output = Closed> + Send + 'static {
        let closed = match self {
            Conn::Tcp(c) => futures_util::future::Either::Left(c.watch_closed()),
            Conn::Quic(c) => {
                let c = c.clone();
                futures_util::future::Either::Right(async move { Closed::quic(c.closed().await) })
            }
        };
        closed
    }

    /// Why the connection is closed, if it is.
    pub fn close_reason(&self) -> Option<Closed> {
        match self {
            Conn::Quic(c) => c.close_reason().map(Closed::quic),
            Conn::Tcp(c) => c.close_reason(),
        }
    }

    /// The peer's reason, if the peer has closed the connection with one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self.close_reason()? {
            Closed::Peer(refusal) => Some(refusal),
            _ => None,
        }
    }

    /// The peer's address as seen now (a QUIC peer may migrate).
    pub fn remote(&self) -> SocketAddr {
        match self {
            Conn::Quic(c) => c.remote_address(),
            Conn::Tcp(c) => c.remote(),
        }
    }

    /// A count that grows whenever something arrives from the peer (QUIC
    /// datagrams, bytes over TCP): when it has not grown, nothing came.
    pub fn heard(&self) -> u64 {
        match self {
            Conn::Quic(c) => c.stats().udp_rx.datagrams,
            Conn::Tcp(c) => c.heard(),
        }
    }

    /// The path's smoothed round trip, where the transport measures one
    /// (QUIC); zero otherwise.
    pub fn rtt(&self) -> std::time::Duration {
        match self {
            Conn::Quic(c) => c.rtt(),
            Conn::Tcp(_) => std::time::Duration::ZERO,
        }
    }

    /// A handle that does not keep the connection open (over TCP; a QUIC
    /// connection is held until it closes, as [`Conn::watch_closed`]
    /// holds it).
    pub fn downgrade(&self) -> WeakConn {
        match self {
            Conn::Quic(c) => WeakConn::Quic(c.clone()),
            Conn::Tcp(c) => WeakConn::Tcp(c.downgrade()),
        }
    }

    /// The transport's name, for logs and status: `quic` or `tcp`.
    pub fn transport(&self) -> &'static str {
        match self {
            Conn::Quic(_) => "quic",
            Conn::Tcp(_) => "tcp",
        }
    }

    /// UDP payload bytes sent and received so far (QUIC only; zero over
    /// TCP).
    pub fn traffic(&self) -> (u64, u64) {
        match self {
            Conn::Quic(c) => {
                let stats = c.stats();
                (stats.udp_tx.bytes, stats.udp_rx.bytes)
            }
            Conn::Tcp(_) => (0, 0),
        }
    }

    /// Whether `other` is this very connection (a clone of it).
    pub fn same(&self, other: &Conn) -> bool {
        match (self, other) {
            (Conn::Quic(a), Conn::Quic(b)) => a.stable_id() == b.stable_id(),
            (Conn::Tcp(a), Conn::Tcp(b)) => a.same(b),
            _ => false,
        }
    }

    /// Lifts the limit on streams an unauthenticated peer is held to: lets
    /// it have `streams` bidirectional streams open at once (its control
    /// stream included). What it may send stays the connection's receive
    /// window ([`Conn::set_receive_window`]), which starts at the
    /// pre-authentication window.
    pub fn admit(&self, streams: u32) {
        match self {
            Conn::Quic(c) => {
                c.set_max_concurrent_bi_streams(streams.into());
            }
            // HTTP/2 starts only once the peer is admitted, with the
            // admitted peer's limits.
            Conn::Tcp(_) => {}
        }
    }

    /// Caps what the peer may have sent that is not yet read, over all
    /// the connection's streams: no credit is given beyond that (QUIC's
    /// connection window, HTTP/2's).
    pub fn set_receive_window(&self, bytes: u64) {
        match self {
            Conn::Quic(c) => {
                c.set_receive_window(quinn::VarInt::from_u64(bytes).unwrap_or(quinn::VarInt::MAX))
            }
            Conn::Tcp(c) => c.set_receive_window(bytes),
        }
    }

    /// Caps what may wait in this connection's send buffer, written but not
    /// yet acknowledged, over all its streams: writes wait beyond it.
    pub fn set_send_window(&self, bytes: u64) {
        match self {
            Conn::Quic(c) => c.set_send_window(bytes),
            // Each stream sends no more than its peer's window allows
            // ([`http2::SendStream::write_chunk`]): nothing else waits.
            Conn::Tcp(_) => {}
        }
    }
}

/// A [`Conn`] that does not keep a TCP connection open.
#[derive(Debug, Clone)]
pub enum WeakConn {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// A TLS-over-TCP connection.
    Tcp(tcp::WeakTcpConn),
}

impl WeakConn {
    /// The connection, if it is still open somewhere.
    pub fn upgrade(&self) -> Option<Conn> {
        match self {
            WeakConn::Quic(c) => Some(Conn::Quic(c.clone())),
            WeakConn::Tcp(c) => c.upgrade().map(Conn::Tcp),
        }
    }
}

/// The sending half of a bidirectional stream.
#[derive(Debug)]
pub enum SendStream {
    /// A QUIC stream.
    Quic(quinn::SendStream),
    /// An HTTP/2 stream.
    Http2(http2::SendStream),
}

impl SendStream {
    /// Queues one chunk without copying it.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), StreamError> {
        match self {
            SendStream::Quic(s) => Ok(s.write_chunk(chunk).await?),
            SendStream::Http2(s) => s.write_chunk(chunk).await,
        }
    }

    /// Queues every chunk without copying them.
    pub async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), StreamError> {
        match self {
            SendStream::Quic(s) => Ok(s.write_all_chunks(chunks).await?),
            SendStream::Http2(s) => {
                for chunk in chunks {
                    s.write_chunk(std::mem::take(chunk)).await?;
                }
                Ok(())
            }
        }
    }

    /// Writes `refusal` as a frame and finishes the stream if the
    /// stream's window takes the frame at once; otherwise resets the
    /// stream with the reason's code. Never waits on the peer's credit.
    /// True if the words went out.
    pub fn refuse(&mut self, refusal: &Refusal) -> bool {
        use futures_util::FutureExt;
        let frame = refusal.frame();
        let said = matches!(write_frame(self, &frame).now_or_never(), Some(Ok(())));
        if said {
            let _ = self.finish();
        } else {
            self.reset(refusal.reason);
        }
        said
    }

    /// Ends the stream after what is queued (a FIN). An error only means
    /// it was ended already.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        match self {
            SendStream::Quic(s) => s.finish().map_err(|_| StreamError::Finished),
            SendStream::Http2(s) => s.finish(),
        }
    }

    /// Abandons the stream, telling the peer `code`.
    pub fn reset(&mut self, code: impl Into<ErrorCode>) {
        match self {
            SendStream::Quic(s) => {
                let _ = s.reset(code.into().varint());
            }
            SendStream::Http2(s) => s.reset(code.into()),
        }
    }

    /// Resolves when the peer stops reading (with its code) or has
    /// everything (`None`); independent of `self` once made, so it can be
    /// awaited alongside writes.
    pub fn stopped(&self) -> impl std::future::Future<Output = Option<ErrorCode>> + Send + 'static {
        let stopped = match self {
            SendStream::Quic(s) => futures_util::future::Either::Left(s.stopped()),
            SendStream::Http2(s) => futures_util::future::Either::Right(s.stopped()),
        };
        async move {
            match stopped {
                futures_util::future::Either::Left(stopped) => match stopped.await {
                    Ok(Some(code)) => Some(ErrorCode(code.into_inner())),
                    Ok(None) => None,
                    Err(_) => Some(Reason::Aborted.into()),
                },
                futures_util::future::Either::Right(stopped) => stopped.await,
            }
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            SendStream::Http2(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            SendStream::Http2(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            SendStream::Http2(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
        }
    }
}

/// The receiving half of a bidirectional stream.
#[derive(Debug)]
pub enum RecvStream {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// An HTTP/2 stream.
    Http2(http2::RecvStream),
}

impl RecvStream {
    /// Takes up to `chunks.len()` received chunks without copying them;
    /// `None` at the end of the stream.
    pub async fn read_chunks(
        &mut self,
        chunks: &mut [Bytes],
    ) -> Result<Option<usize>, StreamError> {
        match self {
            RecvStream::Quic(s) => Ok(s.read_chunks(chunks).await?),
            RecvStream::Http2(s) => s.read_chunks(chunks).await,
        }
    }

    /// Tells the peer to stop sending, with `code`.
    pub fn stop(&mut self, code: impl Into<ErrorCode>) {
        match self {
            RecvStream::Quic(s) => {
                let _ = s.stop(code.into().varint());
            }
            RecvStream::Http2(s) => s.stop(code.into()),
        }
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RecvStream::Quic(s) => AsyncRead::poll_read(Pin::new(s), cx, buf),
            RecvStream::Http2(s) => AsyncRead::poll_read(Pin::new(s), cx, buf),
        }
    }
}

/// Both halves of a bidirectional stream.
#[derive(Debug)]
pub struct Stream {
    /// Towards the peer.
    pub send: SendStream,
    /// From the peer.
    pub recv: RecvStream,
}

/// Abandons both halves of `stream`: resets the sending half and stops the
/// receiving half with `code`.
pub fn abort(stream: &mut Stream, code: impl Into<ErrorCode>) {
    let code = code.into();
    stream.send.reset(code);
    stream.recv.stop(code);
}
