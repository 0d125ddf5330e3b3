//! Moving session bytes: TCP ⇄ stream at the host and client, a reader
//! and writer (stdin and stdout) ⇄ stream for `connect`, stream ⇄ stream at
//! the relay. Half-close (FIN) and aborts (TCP reset, stream reset,
//! stop-sending) are carried across, never swallowed.

use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::transport::{RecvStream, SendStream, Stream};
use crate::protocol::Reason;

/// Size of the buffer TCP reads go into: large enough for bulk transfers.
const TCP_READ_CHUNK: usize = 64 * 1024;

/// Below this much free space a fresh read buffer is taken, so that a read
/// is never starved into tiny chunks.
const MIN_READ: usize = 8 * 1024;

/// Most received chunks (about one packet's payload each) taken from a
/// stream at once: one lock of the connection and one write for many
/// packets instead of one each.
pub(crate) const BATCH: usize = 32;

/// Writes every byte of `chunks` with as few vectored writes as it takes,
/// telling `written` of each write as soon as it returns: cancelled at any
/// point, the total told is exactly what was written.
pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunks: &mut [Bytes],
    mut written_now: impl FnMut(usize),
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let rest = &chunks[first..];
        let slices: [IoSlice<'_>; BATCH] =
            std::array::from_fn(|i| IoSlice::new(rest.get(i).map_or(&[][..], |c| &c[..])));
        let mut written = w.write_vectored(&slices[..rest.len().min(BATCH)]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written_now(written);
        while written > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if written >= len {
                written -= len;
                first += 1;
            } else {
                chunks[first].advance(written);
                written = 0;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}

/// Bytes moved by a session, each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes from the local side (or the client, at the relay) outward.
    pub sent: u64,
    /// Bytes towards the local side (or the client, at the relay).
    pub received: u64,
    /// Whether either direction ended in an abort rather than a FIN.
    pub aborted: bool,
}

/// An abort seen in one direction, with the count moved before it.
struct Aborted(u64);

/// Where a session's outgoing bytes come from: a TCP connection or any
/// reader ([`Reader`]).
pub trait Source {
    /// Reads what is available into `buf`, growing it as needed; 0 at the
    /// end. Cancel-safe: nothing read is lost when the future is dropped.
    fn read_into(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>>;
}

impl Source for tokio::net::tcp::ReadHalf<'_> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            // Readiness is cached: during a bulk transfer this returns at
            // once; an idle session waits here holding no buffer.
            self.readable().await?;
            if buf.capacity() < MIN_READ {
                buf.reserve(TCP_READ_CHUNK);
            }
            match self.try_read_buf(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // Drained: give the rest of the buffer back before going
                    // idle (chunks still queued in the stream keep theirs).
                    *buf = BytesMut::new();
                }
                read => return read,
            }
        }
    }
}

/// Any reader (stdin of `connect`) as a [`Source`].
pub struct Reader<R>(pub R);

impl<R: AsyncRead + Unpin> Source for Reader<R> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if buf.capacity() < MIN_READ {
            buf.reserve(TCP_READ_CHUNK);
        }
        self.0.read_buf(buf).await
    }
}

/// Pipes a TCP connection and a stream until both directions end. An
/// abort on either side (TCP reset, stream reset or stop) aborts both: the
/// stream is reset and stopped and the TCP connection is reset.
pub async fn tcp(mut tcp: TcpStream, mut stream: Stream) -> Transfer {
    let (read, write) = tcp.split();
    let t = io(read, write, &mut stream).await;
    if t.aborted {
        // Linger 0 makes the close a TCP reset, so the local peer learns of
        // the abort instead of seeing an orderly end of stream.
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
    }
    t
}

/// Pipes `source` and `writer` (a TCP connection's halves, or stdin and
/// stdout of `connect`) and a stream until both directions end. The end of
/// `source` finishes the stream; the end of the stream shuts `writer` down,
/// and the source goes on until its own end. An abort on either side (a
/// read or write error, a stream reset or stop) resets and stops the
/// stream. Each batch of chunks is flushed to `writer` before the next is
/// read.
pub async fn io<S, W>(mut source: S, mut writer: W, stream: &mut Stream) -> Transfer
where
    S: Source,
    W: AsyncWrite + Unpin,
{
    let Stream { send, recv } = stream;
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let upstream = async {
        let stopped = send.stopped();
        tokio::pin!(stopped);
        let mut buf = BytesMut::new();
        loop {
            let read = tokio::select! {
                read = source.read_into(&mut buf) => read,
                _ = &mut stopped => return Err(Aborted(0)),
            };
            match read {
                Ok(0) => {
                    // Half-close: the far side sees a FIN and keeps sending.
                    let _ = send.finish();
                    return Ok(());
                }
                Ok(n) => {
                    // Successive reads share one allocation, freed once the
                    // last chunk in it is acknowledged.
                    if send.write_chunk(buf.split().freeze()).await.is_err() {
                        return Err(Aborted(0));
                    }
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => return Err(Aborted(0)),
            }
        }
    };
    let downstream = to_writer(recv, &mut writer, &received);
    let aborted = tokio::try_join!(upstream, downstream).is_err();
    if aborted {
        send.reset(Reason::Aborted);
        recv.stop(Reason::Aborted);
    }
    Transfer {
        sent: sent.into_inner(),
        received: received.into_inner(),
        aborted,
    }
}

/// Writes what arrives on `recv` to `writer`, a batch of up to [`BATCH`]
/// chunks at a time, each flushed before the next is read, and shuts
/// `writer` down at the end of the stream. Bytes written are added to
/// `received`. A failed read or write is an abort.
async fn to_writer<W: AsyncWrite + Unpin>(
    recv: &mut RecvStream,
    writer: &mut W,
    received: &AtomicU64,
) -> Result<(), Aborted> {
    let mut chunks: [Bytes; BATCH] = Default::default();
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                let len = chunks[..n].iter().map(|c| c.len() as u64).sum::<u64>();
                let written = async {
                    write_all_vectored(writer, &mut chunks[..n], |_| {}).await?;
                    writer.flush().await
                };
                if written.await.is_err() {
                    return Err(Aborted(0));
                }
                received.fetch_add(len, Ordering::Relaxed);
            }
            Ok(None) => return writer.shutdown().await.map_err(|_| Aborted(0)),
            Err(_) => return Err(Aborted(0)),
        }
    }
}

/// Reads `recv` to its end (or reset), for at most `limit`, throwing away
/// what comes: for a stream whose peer has more to say before it lets go.
pub async fn drain(recv: &mut RecvStream, limit: std::time::Duration) {
    let drained = async {
        let mut chunks: [Bytes; BATCH] = Default::default();
        while let Ok(Some(_)) = recv.read_chunks(&mut chunks).await {}
    };
    let _ = tokio::time::timeout(limit, drained).await;
}

/// Splices two streams at the relay (client side `a`, host side `b`)
/// without copying payload: chunks read from one are written to the other
/// as they are. Reports bytes as they move: `up(n)` for each batch passed
/// on from `a` to `b`, `down(n)` for each batch from `b` to `a`; called once
/// per batch (up to 32 received chunks), so a relaxed atomic add there
/// costs nothing measurable.
pub async fn relay(a: Stream, b: Stream, up: impl Fn(u64), down: impl Fn(u64)) -> Transfer {
    let Stream {
        send: mut a_send,
        recv: mut a_recv,
    } = a;
    let Stream {
        send: mut b_send,
        recv: mut b_recv,
    } = b;
    let (up, down) = tokio::join!(
        forward(&mut a_recv, &mut b_send, up),
        forward(&mut b_recv, &mut a_send, down)
    );
    let (sent, up_aborted) = match up {
        Ok(n) => (n, false),
        Err(Aborted(n)) => (n, true),
    };
    let (received, down_aborted) = match down {
        Ok(n) => (n, false),
        Err(Aborted(n)) => (n, true),
    };
    Transfer {
        sent,
        received,
        aborted: up_aborted || down_aborted,
    }
}

/// Forwards one direction, carrying FIN, reset and stop-sending across
/// with the peer's own code. `count` hears of every batch as it is passed
/// on: before the write, so that whoever has received bytes finds them
/// counted already.
async fn forward(
    from: &mut RecvStream,
    to: &mut SendStream,
    count: impl Fn(u64),
) -> Result<u64, Aborted> {
    let mut total = 0u64;
    let mut chunks: [Bytes; BATCH] = Default::default();
    let stopped = to.stopped();
    tokio::pin!(stopped);
    loop {
        let read = tokio::select! {
            read = from.read_chunks(&mut chunks) => read,
            stopped = &mut stopped => {
                from.stop(stopped.unwrap_or(Reason::Aborted.into()));
                return Err(Aborted(total));
            }
        };
        match read {
            Ok(Some(n)) => {
                let len = chunks[..n].iter().map(|c| c.len() as u64).sum::<u64>();
                count(len);
                if let Err(err) = to.write_all_chunks(&mut chunks[..n]).await {
                    from.stop(err.code());
                    return Err(Aborted(total));
                }
                total += len;
            }
            Ok(None) => {
                let _ = to.finish();
                return Ok(total);
            }
            Err(err) => {
                to.reset(err.code());
                return Err(Aborted(total));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn vectored_writes_survive_partial_writes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut at = 0;
        for len in [0, 1, 700, 3, 0, 1200, 4096, 5, 1] {
            chunks.push(Bytes::copy_from_slice(&data[at..at + len]));
            at += len;
        }
        let want = data[..at].to_vec();
        // A 7-byte pipe: every write is partial, often mid-chunk.
        let (mut w, mut r) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all_vectored(&mut w, &mut chunks, |_| {})
            .await
            .unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), want);
    }
}
