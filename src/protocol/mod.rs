//! Wire protocol version 1: ALPN, length-prefixed JSON frames and the
//! application error codes that say why a connection or stream ended.
//!
//! Every peer opens one control stream and sends [`Frame::Hello`]; the relay
//! answers [`Frame::Welcome`] or [`Frame::Refused`]. Each session is a fresh
//! bidirectional stream that starts with [`Frame::Open`] and is answered with
//! [`Frame::Ready`] or [`Frame::Refused`]; after `Ready` the stream carries raw
//! ssh bytes, untouched.

pub mod direct;
pub mod id;
mod printable;
mod reason;
mod resume;

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use direct::Direct;
pub use printable::{printable, shown, Printable, MAX_MESSAGE_CHARS, MAX_NAME_CHARS};
pub use reason::{Reason, Refusal};
pub use resume::Resume;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// ALPN protocol name; a peer that offers anything else fails the handshake.
pub const ALPN: &[u8] = b"shellrelay/1";

/// ALPN protocol name of the TLS-over-TCP transport (HTTP/2 after the
/// hello), so that a QUIC peer and a TCP peer can never be confused.
pub const ALPN_TCP: &[u8] = b"shellrelay-tcp/1";

/// ALPN protocol name of a direct connection from a client to a host
/// agent, which only a host offers (see [`Direct`]).
pub const ALPN_DIRECT: &[u8] = b"shellrelay-direct/1";

/// The relay's UDP port unless it is told otherwise, and the port that
/// examples and error messages suggest.
pub const DEFAULT_PORT: u16 = 4433;

/// Protocol version carried in every hello.
pub const VERSION: u32 = 1;

/// Largest frame body accepted from a peer. A hello is a JWT plus a little
/// JSON (well under 4 KiB); the cap keeps a hostile peer from making anyone
/// buffer more than this before it is authenticated.
pub const MAX_FRAME_LEN: usize = 16 * 1024;

/// What a peer asks to be in its hello, and what its token lets it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Register as host `sub` and receive its sessions.
    Host,
    /// Open sessions to host `sub`.
    Client,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Host => "host",
            Role::Client => "client",
        })
    }
}

/// Who a token names: its `sub` and `jti`. Both come from a token the
/// relay checked, within a frame's 16 KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// The token's `sub`.
    pub subject: String,
    /// The token's `jti`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A control or session-header frame. On the wire: a big-endian `u16` body
/// length followed by that many bytes of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored so that a later minor revision can add
// optional fields without breaking version-1 peers.
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// First frame on a peer's control stream.
    Hello {
        /// Protocol version the peer speaks ([`VERSION`]).
        version: u32,
        /// The role the peer asks for.
        role: Role,
        /// The peer's JWT.
        token: Jwt,
        /// For clients: the host to reach (defaults to the token's `sub`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// For hosts: leave another connection registered for this host id
        /// in place and be refused ([`Reason::Replaced`]) instead of taking
        /// its place. A host agent whose place was taken says so, and waits
        /// for the other to leave rather than taking the place back.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_other: bool,
        /// For hosts: this agent is moving its registration to this
        /// connection (back to QUIC): the older connection for this host
        /// id carries its sessions to their end and only then closes,
        /// rather than at once.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        moving: bool,
        /// For hosts: it accepts direct connections ([`Direct::Offer`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direct: Option<Direct>,
    },
    /// The relay accepted a hello.
    Welcome {
        /// Host id the connection is bound to.
        host: String,
        /// The role granted.
        role: Role,
        /// Unix time (seconds) at which the relay closes this connection.
        expires_at: u64,
        /// This relay process (random, new at every start): the same relay
        /// reached under two names gives the same id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<String>,
    },
    /// Opens a session; first frame on every session stream.
    Open {
        /// Session id assigned by the relay (0 from a client, which has none yet).
        #[serde(default)]
        session: u64,
        /// Address of the client forwarder, as seen by the relay (to hosts only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// From a client: make the session resumable, or take one up
        /// again; the relay passes it on as it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
        /// To hosts only: which client token opened the session (a digest
        /// the relay computes), so that only that token can resume it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// To hosts only: who opened the session, as the client token
        /// says, for the host's log lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        who: Option<Who>,
        /// From a client: introduce it to the host ([`Direct::Ask`]); to a
        /// host: expect it ([`Direct::Expect`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direct: Option<Direct>,
    },
    /// The host's stream is open and its target connected: raw bytes follow.
    Ready {
        /// Session id assigned by the relay.
        session: u64,
        /// From the host: its answer to the client's `resume`, passed on
        /// by the relay as it is. Without it the session is not resumable
        /// and carries raw bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
        /// From the relay to a client that asked: how to reach the host
        /// directly ([`Direct::Meet`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direct: Option<Direct>,
    },
    /// First frame on a direct connection's control stream, from the
    /// client: the ticket the relay gave it ([`Direct::Meet`]). The host
    /// answers [`Frame::Welcome`] or [`Frame::Refused`].
    Ticket {
        /// The ticket, once.
        ticket: String,
    },
    /// On a QUIC control stream after the welcome: asks nothing, and is
    /// read and dropped. Writing it makes the peer's QUIC stack
    /// acknowledge a packet, which proves the path alive
    /// ([`crate::net::transport::liveness`] at the peers).
    Ping,
    /// A hello or session was refused.
    Refused {
        /// Why, as a machine-readable reason.
        reason: Reason,
        /// Why, in plain words.
        message: String,
    },
}

/// A JWT as carried in a hello. Its `Debug` never shows the token, so a
/// frame can be logged safely.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Jwt(pub String);

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jwt(<{} bytes>)", self.0.len())
    }
}

impl From<&str> for Jwt {
    fn from(s: &str) -> Jwt {
        Jwt(s.to_owned())
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The stream ended before a whole frame arrived.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLong(usize),
    /// The body is not a frame of this protocol version. Its words may
    /// quote the peer (serde's "unknown variant `…`"), so they are shown
    /// [`Printable`] and cut to [`MAX_NAME_CHARS`]: enough for what
    /// serde says of a frame of sane size.
    #[error("malformed frame: {}", Printable::name(&.0.to_string()))]
    Malformed(#[from] serde_json::Error),
    /// The underlying stream failed.
    #[error(transparent)]
    Io(std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(err)
        }
    }
}

impl Frame {
    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let body = serde_json::to_vec(self)?;
        if body.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(body.len()));
        }
        let mut out = Vec::with_capacity(2 + body.len());
        // Cannot truncate: MAX_FRAME_LEN < u16::MAX.
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        if body.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(body.len()));
        }
        Ok(serde_json::from_slice(body)?)
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    w.write_all(&frame.encode()?).await?;
    Ok(())
}

/// Reads exactly one frame, never a byte past it: what follows on the
/// stream (raw ssh bytes) stays unread.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Frame::decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_leave_following_bytes_unread() {
        let frames = [
            Frame::Hello {
                version: VERSION,
                role: Role::Client,
                token: "a.b.c".into(),
                host: Some("lab1".into()),
                keep_other: false,
                moving: false,
                direct: None,
            },
            Frame::Hello {
                version: VERSION,
                role: Role::Host,
                token: "a.b.c".into(),
                host: None,
                keep_other: true,
                moving: false,
                direct: None,
            },
            Frame::Welcome {
                host: "lab1".into(),
                role: Role::Host,
                expires_at: 42,
                relay: Some("3f0c".into()),
            },
            Frame::Open {
                session: 7,
                client: Some("127.0.0.1:5".into()),
                resume: None,
                owner: None,
                who: Some(Who {
                    subject: "alice".into(),
                    jti: Some("j1".into()),
                }),
                direct: None,
            },
            Frame::Ready {
                session: 7,
                resume: None,
                direct: None,
            },
            Refusal::new(Reason::HostOffline, "host lab1 is not connected").frame(),
        ];
        for frame in frames {
            let (mut a, mut b) = tokio::io::duplex(1024);
            write_frame(&mut a, &frame).await.unwrap();
            a.write_all(b"SSH-2.0-x\r\n").await.unwrap();
            drop(a);
            assert_eq!(read_frame(&mut b).await.unwrap(), frame);
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"SSH-2.0-x\r\n");
        }
    }

    #[tokio::test]
    async fn bad_frames_are_errors_not_panics() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "truncated"),
            (vec![0], "truncated"),
            (vec![0, 5, b'{'], "truncated"),
            (vec![0xff, 0xff], "too long"),
            (b"\x00\x02{}".to_vec(), "malformed"),
            (b"\x00\x04\xff\xfe\xfd\xfc".to_vec(), "malformed"),
            (b"\x00\x0f{\"type\":\"nope\"}".to_vec(), "malformed"),
        ];
        for (bytes, want) in cases {
            let mut r = &bytes[..];
            let err = read_frame(&mut r).await.unwrap_err();
            let got = match err {
                FrameError::Truncated => "truncated",
                FrameError::TooLong(_) => "too long",
                FrameError::Malformed(_) => "malformed",
                FrameError::Io(_) => "io",
            };
            assert_eq!(got, want, "{bytes:?}");
        }
    }

    #[test]
    fn a_malformed_frame_quotes_the_peer_cut_and_printable() {
        // serde echoes an unknown variant whole: 16 KB of it, and a C1
        // control and a bidi override.
        let role = format!("\u{9b}\u{202e}{}", "x".repeat(16_000));
        let body = format!(r#"{{"type":"hello","version":1,"role":"{role}","token":"t"}}"#);
        let err = Frame::decode(body.as_bytes()).unwrap_err().to_string();
        assert!(
            err.starts_with("malformed frame: unknown variant `??xxx"),
            "{err}"
        );
        assert!(err.ends_with('…'), "{err}");
        assert!(err.chars().count() <= "malformed frame: ".len() + MAX_NAME_CHARS);
    }

    #[test]
    fn tokens_do_not_show_in_frame_debug() {
        let hello = Frame::Hello {
            version: VERSION,
            role: Role::Host,
            token: "eyJhbGciOiJIUzI1NiJ9.secret.sig".into(),
            host: None,
            keep_other: false,
            moving: false,
            direct: None,
        };
        assert!(!format!("{hello:?}").contains("eyJ"), "{hello:?}");
    }
}
