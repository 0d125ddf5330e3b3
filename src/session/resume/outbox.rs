//! What one end has sent and the other has not yet acknowledged: the
//! bytes a resume replays.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// Sent bytes kept until the peer acknowledges them, at most `limit` of
/// them: past that the oldest go, and a resume that needs them fails
/// (see [`crate::session::resume`] for why that does not happen with our relays).
#[derive(Debug)]
pub struct Outbox {
    chunks: VecDeque<Bytes>,
    /// Offset of the first byte in `chunks`.
    base: u64,
    /// Offset after the last byte sent.
    sent: u64,
    /// Bytes in `chunks`.
    buffered: usize,
    limit: usize,
    /// The local side's data has ended: the end of data sits at `sent`.
    pub fin: bool,
    /// The peer has the end of data.
    pub fin_acked: bool,
}

/// A resume that cannot be: the peer needs bytes no longer kept, or claims
/// more than was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gap {
    /// The bytes from `from` on were let go.
    #[error("bytes from offset {from} on are no longer kept (kept from {base})")]
    Lost {
        /// What the peer asked for.
        from: u64,
        /// The first byte kept.
        base: u64,
    },
    /// The peer acknowledged bytes never sent.
    #[error("the peer acknowledged {acked} bytes of {sent} sent")]
    Beyond {
        /// What the peer acknowledged.
        acked: u64,
        /// What was sent.
        sent: u64,
    },
}

impl Outbox {
    /// An empty outbox keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            chunks: VecDeque::new(),
            base: 0,
            sent: 0,
            buffered: 0,
            limit,
            fin: false,
            fin_acked: false,
        }
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes kept for a resume.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Keeps `chunk`, just sent.
    pub fn push(&mut self, chunk: Bytes) {
        self.sent += chunk.len() as u64;
        self.buffered += chunk.len();
        self.chunks.push_back(chunk);
        while self.buffered > self.limit {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.buffered -= old.len();
            self.base += old.len() as u64;
        }
    }

    /// Lets go of what the peer has: `received` bytes, and the end of data
    /// if `fin`.
    pub fn ack(&mut self, received: u64, fin: bool) -> Result<(), Gap> {
        if received > self.sent || (fin && !(self.fin && received == self.sent)) {
            return Err(Gap::Beyond {
                acked: received,
                sent: self.sent,
            });
        }
        while self.base < received {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let take = (received - self.base).min(front.len() as u64) as usize;
            front.advance(take);
            self.base += take as u64;
            self.buffered -= take;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.fin_acked |= fin;
        Ok(())
    }

    /// What to send again to a peer that has `received` bytes (and the end
    /// of data if `fin`): the chunks from there on, and whether the end of
    /// data follows them.
    pub fn replay(&mut self, received: u64, fin: bool) -> Result<(Vec<Bytes>, bool), Gap> {
        self.ack(received, fin)?;
        if received < self.base {
            return Err(Gap::Lost {
                from: received,
                base: self.base,
            });
        }
        Ok((self.chunks.iter().cloned().collect(), self.fin && !fin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, at: usize) -> Bytes {
        (at..at + n).map(|i| i as u8).collect::<Vec<u8>>().into()
    }

    #[test]
    fn acks_let_go_and_replays_start_where_the_peer_is() {
        let mut out = Outbox::new(1000);
        out.push(bytes(100, 0));
        out.push(bytes(100, 100));
        out.ack(50, false).unwrap();
        assert_eq!(out.buffered(), 150);
        let (again, fin) = out.replay(120, false).unwrap();
        let flat: Vec<u8> = again.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(flat, bytes(80, 120).to_vec());
        assert!(!fin);
        out.fin = true;
        assert_eq!(out.replay(200, false).unwrap(), (vec![], true));
        out.ack(200, true).unwrap();
        assert!(out.fin_acked);
        assert_eq!(out.buffered(), 0);
    }

    #[test]
    fn past_the_limit_the_oldest_go_and_a_resume_needing_them_fails() {
        let mut out = Outbox::new(150);
        out.push(bytes(100, 0));
        out.push(bytes(100, 100));
        assert_eq!(out.buffered(), 100);
        assert_eq!(
            out.replay(50, false),
            Err(Gap::Lost {
                from: 50,
                base: 100
            })
        );
        assert!(out.replay(100, false).is_ok());
        assert!(matches!(out.ack(201, false), Err(Gap::Beyond { .. })));
        assert!(matches!(out.ack(200, true), Err(Gap::Beyond { .. })));
    }
}
