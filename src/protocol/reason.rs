//! Why a connection or stream ended: the reasons with their codes and
//! names, and a refusal as a peer sees it.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Frame, Printable};

/// Why a connection or stream ended. The numeric value is the QUIC
/// application error code used when closing a connection or resetting a
/// stream; [`Reason::as_str`] is its name in frames and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Orderly end, nothing went wrong.
    Done,
    /// The peer broke the protocol (malformed, oversize or unexpected frame).
    Protocol,
    /// The token was refused (signature, audience, role, validity, host).
    BadToken,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The host named by a client is not connected to the relay.
    HostOffline,
    /// The host agent could not connect to its target.
    TargetUnreachable,
    /// A newer connection registered the same host id.
    Replaced,
    /// The relay is shutting down.
    ShuttingDown,
    /// The peer's side of a session was aborted (TCP reset, stream reset).
    Aborted,
    /// A limit was reached (sessions, connections).
    Limit,
    /// The token or the host id is on the relay's revocation list.
    Revoked,
    /// A session could not be taken up again: it has ended, its window
    /// has passed, or the request was not from its client.
    NotResumable,
    /// Any code or name this version does not know.
    Unknown,
}

impl Reason {
    /// Every reason this version knows, [`Reason::Unknown`] aside.
    pub const ALL: [Reason; 12] = [
        Reason::Done,
        Reason::Protocol,
        Reason::BadToken,
        Reason::TokenExpired,
        Reason::HostOffline,
        Reason::TargetUnreachable,
        Reason::Replaced,
        Reason::ShuttingDown,
        Reason::Aborted,
        Reason::Limit,
        Reason::Revoked,
        Reason::NotResumable,
    ];

    /// The QUIC application error code for this reason.
    pub fn code(self) -> u32 {
        match self {
            Reason::Done => 0,
            Reason::Protocol => 1,
            Reason::BadToken => 2,
            Reason::TokenExpired => 3,
            Reason::HostOffline => 4,
            Reason::TargetUnreachable => 5,
            Reason::Replaced => 6,
            Reason::ShuttingDown => 7,
            Reason::Aborted => 8,
            Reason::Limit => 9,
            Reason::Revoked => 10,
            Reason::NotResumable => 11,
            Reason::Unknown => 0xff,
        }
    }

    /// The reason's name in frames and metrics (`bad_token`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Done => "done",
            Reason::Protocol => "protocol",
            Reason::BadToken => "bad_token",
            Reason::TokenExpired => "token_expired",
            Reason::HostOffline => "host_offline",
            Reason::TargetUnreachable => "target_unreachable",
            Reason::Replaced => "replaced",
            Reason::ShuttingDown => "shutting_down",
            Reason::Aborted => "aborted",
            Reason::Limit => "limit",
            Reason::Revoked => "revoked",
            Reason::NotResumable => "not_resumable",
            Reason::Unknown => "unknown",
        }
    }

    /// The reason for a QUIC application error code.
    pub fn from_code(code: u64) -> Reason {
        Reason::ALL
            .into_iter()
            .find(|r| u64::from(r.code()) == code)
            .unwrap_or(Reason::Unknown)
    }

    /// The reason named `name` ([`Reason::as_str`]).
    pub fn from_name(name: &str) -> Reason {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .unwrap_or(Reason::Unknown)
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Reason::from_name(&name))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Reason::Done => "done",
            Reason::Protocol => "protocol error",
            Reason::BadToken => "bad token",
            Reason::TokenExpired => "token expired",
            Reason::HostOffline => "host offline",
            Reason::TargetUnreachable => "target unreachable",
            Reason::Replaced => "replaced by a newer host connection",
            Reason::ShuttingDown => "relay shutting down",
            Reason::Aborted => "aborted",
            Reason::Limit => "limit reached",
            Reason::Revoked => "revoked",
            Reason::NotResumable => "not resumable",
            Reason::Unknown => "unknown reason",
        };
        f.write_str(s)
    }
}

/// A refusal or close as the peer sees it: a reason and its plain words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct Refusal {
    /// Machine-readable reason.
    pub reason: Reason,
    /// Plain-words explanation.
    pub message: String,
}

impl Refusal {
    /// A refusal with the given reason and message.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    /// This refusal with its words made [`Printable`] and cut to
    /// [`MAX_MESSAGE_CHARS`](super::MAX_MESSAGE_CHARS), for passing on words
    /// a peer chose towards a user's terminal or a log.
    pub fn printable(self) -> Refusal {
        Refusal {
            reason: self.reason,
            message: Printable::message(&self.message).to_string(),
        }
    }

    /// The frame that carries this refusal.
    pub fn frame(&self) -> Frame {
        Frame::Refused {
            reason: self.reason,
            message: self.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_words_from_a_peer_are_made_printable() {
        let r = Refusal::new(Reason::TargetUnreachable, "no\u{1b}[2J\nway\u{202e}").printable();
        assert_eq!(r, Refusal::new(Reason::TargetUnreachable, "no?[2J?way?"));
        let long = Refusal::new(Reason::Protocol, "x".repeat(10_000)).printable();
        assert_eq!(
            long.message.chars().count(),
            crate::protocol::MAX_MESSAGE_CHARS
        );
    }

    #[test]
    fn reason_codes_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code().into()), r);
            assert_eq!(Reason::from_name(r.as_str()), r);
        }
        assert_eq!(Reason::from_code(12345), Reason::Unknown);
    }
}
