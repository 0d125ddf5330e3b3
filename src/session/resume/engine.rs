//! One end of a resumable session: reads the local side (a TCP connection,
//! or stdin) into data records, writes the peer's data records to the local
//! side, acknowledges what it has written and lets go of what the peer
//! acknowledged. A stream that breaks leaves the session as it was; the
//! next stream picks it up where each end is.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::key::{End, SessionKey};
use super::outbox::Outbox;
use super::outcome::{Broke, Failure, Outcome, Side};
use super::record::{self, Event, Parser};
use crate::net::transport::{RecvStream, SendStream, Stream};
use crate::protocol::Resume;
use crate::session::splice::{drain, write_all_vectored, Source, BATCH};

/// Bytes received before an acknowledgement goes at once.
const ACK_EVERY: u64 = 128 * 1024;

/// Longest an acknowledgement of fewer bytes waits (for data to ride on).
const ACK_DELAY: Duration = Duration::from_millis(20);

/// How long a stream that can no longer be written to is still read, for
/// an end or abort the peer sent before it stopped reading.
const BREAK_GRACE: Duration = Duration::from_secs(1);

/// Longest a session that is done waits for the peer to finish its stream.
pub(super) const DONE_LINGER: Duration = Duration::from_secs(5);

/// Where one end is: bytes received from the other, and whether its end of
/// data came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Bytes received.
    pub received: u64,
    /// Whether the end of data was received.
    pub fin: bool,
}

/// One end of a resumable session.
pub struct Resumable {
    /// The id the client chose.
    pub id: String,
    key: SessionKey,
    out: Mutex<Outbox>,
    received: AtomicU64,
    fin_received: AtomicBool,
    /// Tells the sending half that there is something to acknowledge, or
    /// that the session may be done.
    wake: Notify,
    /// The client's last resume attempt (at the host: the last one taken).
    attempt: AtomicU64,
    /// A write of records to the current stream was cut short (its future
    /// dropped): the stream may end inside a record, so nothing more is
    /// written to it in band.
    cut: AtomicBool,
}

impl Resumable {
    /// A session under `id` and `key`, keeping up to `limit`
    /// unacknowledged bytes for resumes.
    pub fn new(id: String, key: SessionKey, limit: usize) -> Resumable {
        Resumable {
            id,
            key,
            out: Mutex::new(Outbox::new(limit)),
            received: AtomicU64::new(0),
            fin_received: AtomicBool::new(false),
            wake: Notify::new(),
            attempt: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        }
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this end has received.
    pub fn position(&self) -> Position {
        Position {
            received: self.received.load(Ordering::Acquire),
            fin: self.fin_received.load(Ordering::Acquire),
        }
    }

    /// Bytes sent and bytes received so far.
    pub fn moved(&self) -> (u64, u64) {
        (self.outbox().sent(), self.position().received)
    }

    /// Bytes kept for a resume now.
    pub fn buffered(&self) -> usize {
        self.outbox().buffered()
    }

    /// Client: the next request to take the session up again.
    pub fn again(&self) -> Resume {
        let attempt = self.attempt.fetch_add(1, Ordering::AcqRel) + 1;
        let at = self.position();
        Resume::Again {
            id: self.id.clone(),
            attempt,
            received: at.received,
            fin: at.fin,
            proof: self.key.prove(End::Client, attempt, at.received, at.fin),
        }
    }

    /// Client: where the host is, from its answer to the last
    /// [`Resumable::again`], if the answer is the host's and is to it.
    pub fn resumed(&self, answer: Option<&Resume>) -> Result<Position, Failure> {
        let Some(Resume::Resumed {
            attempt,
            received,
            fin,
            proof,
        }) = answer
        else {
            return Err(Failure::NotTakenUp);
        };
        let ours = self.attempt.load(Ordering::Acquire);
        if *attempt != ours || !self.key.check(End::Host, ours, *received, *fin, proof) {
            return Err(Failure::NotFromHost);
        }
        Ok(Position {
            received: *received,
            fin: *fin,
        })
    }

    /// Host: whether a client's request (`attempt`, its position and
    /// proof) is from this session's client and newer than any taken; if
    /// so it is taken, and no earlier or equal attempt will be.
    pub fn take_again(&self, attempt: u64, at: Position, proof: &str) -> bool {
        if !self
            .key
            .check(End::Client, attempt, at.received, at.fin, proof)
        {
            return false;
        }
        self.attempt.fetch_max(attempt, Ordering::AcqRel) < attempt
    }

    /// Host: the answer to the client's request `attempt`.
    pub fn answer(&self, attempt: u64) -> Resume {
        let at = self.position();
        Resume::Resumed {
            attempt,
            received: at.received,
            fin: at.fin,
            proof: self.key.prove(End::Host, attempt, at.received, at.fin),
        }
    }

    /// Carries the session over `stream` from where the peer is until the
    /// session ends or the stream breaks. Cancel-safe: dropped at any
    /// point, the session's state is exactly what the local side was given
    /// and what was read from it, and the next stream goes on from there.
    pub async fn attach<S: Source, W: AsyncWrite + Unpin>(
        &self,
        stream: &mut Stream,
        peer_at: Position,
        source: &mut S,
        writer: &mut W,
    ) -> Outcome {
        // A new stream: nothing is cut short on it yet.
        self.cut.store(false, Ordering::Release);
        let replay = self.outbox().replay(peer_at.received, peer_at.fin);
        let (again, fin_again) = match replay {
            Ok(replay) => replay,
            Err(gap) => return Outcome::Failed(Failure::Replay(gap)),
        };
        let Stream { send, recv } = stream;
        let up = std::pin::pin!(self.upstream(send, source, again, fin_again));
        let mut down = std::pin::pin!(self.downstream(recv, writer));
        let why = tokio::select! {
            outcome = up => match outcome {
                Outcome::Broken(why) => why,
                outcome => return outcome,
            },
            outcome = &mut down => return outcome,
        };
        // The peer stopped reading: it may have ended or aborted the
        // session, and what says so may be on its way. Whatever the stream
        // still brings within a moment decides.
        match tokio::time::timeout(BREAK_GRACE, down).await {
            Ok(Outcome::Broken(_)) | Err(_) => Outcome::Broken(why),
            Ok(outcome) => outcome,
        }
    }

    /// Ends the local side's data (it ended outside [`Resumable::attach`],
    /// as `connect`'s stdin does when ssh hangs up), sending the end on
    /// `stream`, which is then finished; or reset, where an earlier write
    /// was cut short and the stream might end inside a record.
    pub async fn end_data(&self, stream: &mut Stream) {
        let already = std::mem::replace(&mut self.outbox().fin, true);
        let whole = match already {
            true => !self.cut.load(Ordering::Acquire),
            false => self
                .write(&mut stream.send, &mut [record::fin()])
                .await
                .is_ok(),
        };
        if whole {
            let _ = stream.send.finish();
        } else {
            crate::net::transport::abort(stream, crate::protocol::Reason::Aborted);
        }
    }

    /// Sends an abort (best effort) and ends the stream. The stream is
    /// kept until the peer resets it (as it does on reading the abort),
    /// within a grace period: over HTTP/2, letting go of it at once would
    /// reset it before the abort went out.
    /// After a write cut short, the stream is reset instead: an abort
    /// inside a record would reach the peer as data.
    pub async fn abort(&self, stream: &mut Stream) {
        let grace = crate::ops::defaults::SHUTDOWN_GRACE;
        let mut abort = [record::abort()];
        let sent = tokio::time::timeout(grace, self.write(&mut stream.send, &mut abort)).await;
        if !matches!(sent, Ok(Ok(()))) {
            crate::net::transport::abort(stream, crate::protocol::Reason::Aborted);
            return;
        }
        let _ = stream.send.finish();
        drain(&mut stream.recv, grace).await;
    }

    /// Writes whole records to the stream in use, unless an earlier write
    /// to it was cut short (then nothing is written: an error).
    async fn write(
        &self,
        send: &mut SendStream,
        records: &mut [Bytes],
    ) -> Result<(), crate::net::transport::StreamError> {
        if self.cut.swap(true, Ordering::AcqRel) {
            return Err(crate::net::transport::StreamError::Finished);
        }
        send.write_all_chunks(records).await?;
        self.cut.store(false, Ordering::Release);
        Ok(())
    }

    fn finished(&self) -> bool {
        let out = self.outbox();
        out.fin && out.fin_acked && self.fin_received.load(Ordering::Acquire)
    }

    /// Local side → records, and acknowledgements of what came the other way.
    async fn upstream<S: Source>(
        &self,
        send: &mut SendStream,
        source: &mut S,
        again: Vec<Bytes>,
        fin_again: bool,
    ) -> Outcome {
        let broken = |err| Outcome::Broken(Broke::Stream(err));
        // The peer learnt where this end is from the resume.
        let mut acked = self.position();
        for chunk in again {
            let mut records = [record::data(len32(&chunk)), chunk];
            if let Err(err) = self.write(send, &mut records).await {
                return broken(err);
            }
        }
        if fin_again {
            if let Err(err) = self.write(send, &mut [record::fin()]).await {
                return broken(err);
            }
        }
        let mut ended = self.outbox().fin;
        let mut ack_at: Option<Instant> = None;
        let mut buf = BytesMut::new();
        loop {
            let now = self.position();
            if now != acked {
                let due = now.fin != acked.fin
                    || now.received - acked.received >= ACK_EVERY
                    || ack_at.is_some_and(|at| at <= Instant::now());
                if due {
                    let mut ack = [record::ack(now.received, now.fin)];
                    if let Err(err) = self.write(send, &mut ack).await {
                        return broken(err);
                    }
                    (acked, ack_at) = (now, None);
                } else if ack_at.is_none() {
                    ack_at = Some(Instant::now() + ACK_DELAY);
                }
            }
            if ended && acked.fin && self.finished() {
                return Outcome::Done;
            }
            let read = tokio::select! {
                biased;
                () = self.wake.notified() => continue,
                () = sleep_until(ack_at), if ack_at.is_some() => continue,
                read = source.read_into(&mut buf), if !ended => read,
            };
            // An acknowledgement waiting goes first, then what was read.
            let mut records: [Bytes; 3] = Default::default();
            let now = self.position();
            if now != acked {
                records[0] = record::ack(now.received, now.fin);
                (acked, ack_at) = (now, None);
            }
            match read {
                Ok(0) => {
                    self.outbox().fin = true;
                    ended = true;
                    records[1] = record::fin();
                }
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    self.outbox().push(chunk.clone());
                    records[1] = record::data(len32(&chunk));
                    records[2] = chunk;
                }
                Err(_) => return Outcome::Aborted(Side::Local),
            }
            if let Err(err) = self.write(send, &mut records).await {
                return broken(err);
            }
        }
    }

    /// Records → local side.
    async fn downstream<W: AsyncWrite + Unpin>(
        &self,
        recv: &mut RecvStream,
        writer: &mut W,
    ) -> Outcome {
        let mut parser = Parser::default();
        let mut chunks: [Bytes; BATCH] = Default::default();
        let mut events = Vec::new();
        let mut data: Vec<Bytes> = Vec::new();
        loop {
            let n = match recv.read_chunks(&mut chunks).await {
                Ok(Some(n)) => n,
                Ok(None) if self.finished() => return Outcome::Done,
                Ok(None) => return Outcome::Broken(Broke::EndedEarly),
                Err(err) => return Outcome::Broken(Broke::Stream(err)),
            };
            for chunk in &mut chunks[..n] {
                if let Err(err) = parser.feed(std::mem::take(chunk), &mut events) {
                    return Outcome::Failed(Failure::Record(err));
                }
            }
            for event in events.drain(..) {
                match event {
                    Event::Data(_) if self.fin_received.load(Ordering::Acquire) => {
                        return Outcome::Failed(Failure::DataAfterEnd);
                    }
                    Event::Data(bytes) => data.push(bytes),
                    Event::Ack { received, fin } => {
                        if let Err(gap) = self.outbox().ack(received, fin) {
                            return Outcome::Failed(Failure::Ack(gap));
                        }
                    }
                    Event::Fin => {
                        if self.deliver(writer, &mut data).await.is_err()
                            || writer.shutdown().await.is_err()
                        {
                            return Outcome::Aborted(Side::Local);
                        }
                        self.fin_received.store(true, Ordering::Release);
                    }
                    Event::Abort => return Outcome::Aborted(Side::Peer),
                }
            }
            if self.deliver(writer, &mut data).await.is_err() {
                return Outcome::Aborted(Side::Local);
            }
            self.wake.notify_one();
        }
    }

    /// Writes `data` to the local side, counting each byte as it goes.
    async fn deliver<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        data: &mut Vec<Bytes>,
    ) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        write_all_vectored(writer, data, |n| {
            self.received.fetch_add(n as u64, Ordering::AcqRel);
        })
        .await?;
        data.clear();
        writer.flush().await
    }
}

/// A chunk's length as a record length: chunks are reads of at most a few
/// hundred KiB.
fn len32(chunk: &Bytes) -> u32 {
    u32::try_from(chunk.len()).unwrap_or(u32::MAX)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
