//! Records of a resumable session's stream, after `ready`, in each
//! direction: data, acknowledgements, the end of data and aborts. Data
//! records are never copied: a header goes before each chunk read, and the
//! parser hands back slices of the chunks received.
//!
//! ```text
//! data   01 len:u32          then len bytes
//! ack    02 received:u64 fin:u8
//! fin    03
//! abort  04
//! ```
//! Integers are big-endian. The parser holds at most one header (10
//! bytes), however the stream is cut.

use bytes::{Buf, Bytes};

const DATA: u8 = 1;
const ACK: u8 = 2;
const FIN: u8 = 3;
const ABORT: u8 = 4;

/// The longest header.
const MAX_HEAD: usize = 10;

/// The header of a data record of `len` bytes.
pub fn data(len: u32) -> Bytes {
    let mut head = Vec::with_capacity(5);
    head.push(DATA);
    head.extend_from_slice(&len.to_be_bytes());
    head.into()
}

/// An acknowledgement of `received` bytes, and of the end of data if `fin`.
pub fn ack(received: u64, fin: bool) -> Bytes {
    let mut rec = Vec::with_capacity(MAX_HEAD);
    rec.push(ACK);
    rec.extend_from_slice(&received.to_be_bytes());
    rec.push(u8::from(fin));
    rec.into()
}

/// The end of data: nothing follows it from this side.
pub fn fin() -> Bytes {
    Bytes::from_static(&[FIN])
}

/// The session was aborted at this end: the other end aborts too.
pub fn abort() -> Bytes {
    Bytes::from_static(&[ABORT])
}

/// One record received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Session bytes (part of a data record, in order).
    Data(Bytes),
    /// The peer has received this many bytes (and the end of data if `fin`).
    Ack {
        /// Bytes received.
        received: u64,
        /// Whether the end of data was received.
        fin: bool,
    },
    /// The peer's data has ended.
    Fin,
    /// The peer aborted the session.
    Abort,
}

/// A stream that does not carry records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed record: {0}")]
pub struct RecordError(&'static str);

/// Reads records out of a stream's chunks, however they are cut.
#[derive(Debug, Default)]
pub struct Parser {
    head: [u8; MAX_HEAD],
    have: usize,
    data_left: u32,
}

impl Parser {
    /// Parses `chunk`, appending what it completes to `out`.
    pub fn feed(&mut self, mut chunk: Bytes, out: &mut Vec<Event>) -> Result<(), RecordError> {
        while !chunk.is_empty() {
            if self.data_left > 0 {
                let n = chunk.len().min(self.data_left as usize);
                out.push(Event::Data(chunk.split_to(n)));
                // n <= data_left, a u32.
                self.data_left -= n as u32;
                continue;
            }
            if self.have == 0 {
                self.head[0] = chunk[0];
                self.have = 1;
                chunk.advance(1);
            }
            let need = match self.head[0] {
                DATA => 5,
                ACK => 10,
                FIN | ABORT => 1,
                _ => return Err(RecordError("unknown record type")),
            };
            let n = (need - self.have).min(chunk.len());
            self.head[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            chunk.advance(n);
            self.have += n;
            if self.have < need {
                continue;
            }
            self.have = 0;
            let mut h = &self.head[1..need];
            match self.head[0] {
                DATA => self.data_left = h.get_u32(),
                ACK => {
                    let received = h.get_u64();
                    let fin = match h.get_u8() {
                        0 => false,
                        1 => true,
                        _ => return Err(RecordError("bad end-of-data flag")),
                    };
                    out.push(Event::Ack { received, fin });
                }
                FIN => out.push(Event::Fin),
                _ => out.push(Event::Abort),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> (Vec<u8>, Vec<Event>) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for (i, len) in [3usize, 0, 70_000, 1].into_iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            bytes.extend_from_slice(&data(len as u32));
            bytes.extend_from_slice(&payload);
            if len > 0 {
                want.push(Event::Data(payload.into()));
            }
            bytes.extend_from_slice(&ack(1 << 40 | i as u64, i == 3));
            want.push(Event::Ack {
                received: 1 << 40 | i as u64,
                fin: i == 3,
            });
        }
        bytes.extend_from_slice(&fin());
        bytes.extend_from_slice(&abort());
        want.extend([Event::Fin, Event::Abort]);
        (bytes, want)
    }

    /// Joins adjacent data events, which the parser may split anywhere.
    fn joined(events: Vec<Event>) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for e in events {
            match (out.last_mut(), e) {
                (Some(Event::Data(a)), Event::Data(b)) => {
                    let mut v = a.to_vec();
                    v.extend_from_slice(&b);
                    *a = v.into();
                }
                (_, e) => out.push(e),
            }
        }
        out
    }

    #[test]
    fn records_parse_the_same_however_the_stream_is_cut() {
        let (bytes, want) = stream();
        for cut in [1, 2, 3, 5, 7, 10, 11, 4096, bytes.len()] {
            let mut parser = Parser::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(cut) {
                parser
                    .feed(Bytes::copy_from_slice(piece), &mut got)
                    .unwrap();
            }
            assert_eq!(joined(got), want, "cut every {cut} bytes");
        }
    }

    #[test]
    fn bad_records_are_errors() {
        for bad in [&[9u8][..], &[2, 0, 0, 0, 0, 0, 0, 0, 0, 2]] {
            let mut parser = Parser::default();
            assert!(parser
                .feed(Bytes::copy_from_slice(bad), &mut Vec::new())
                .is_err());
        }
    }
}
