//! What the transport's failures are: an application error code
//! ([`ErrorCode`]), why a connection closed ([`Closed`]), why a stream
//! failed ([`StreamError`]), read from quinn's errors here and from
//! HTTP/2's in [`super::http2`].

use std::sync::Arc;

use thiserror::Error;

use crate::protocol::{Reason, Refusal};

/// An application error code carried by a stream reset or stop, or a
/// connection close: a [`Reason`]'s code, or whatever a peer sent, passed
/// on unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u64);

impl From<Reason> for ErrorCode {
    fn from(reason: Reason) -> ErrorCode {
        ErrorCode(reason.code().into())
    }
}

impl ErrorCode {
    pub(crate) fn varint(self) -> quinn::VarInt {
        // Every code comes from a reason or from the wire, so it fits.
        quinn::VarInt::from_u64(self.0).unwrap_or(quinn::VarInt::MAX)
    }
}

/// Why a connection is closed.
#[derive(Debug, Clone, Error)]
pub enum Closed {
    /// The peer closed it and said why (a refusal, a revocation, a
    /// shutdown, or [`Reason::Done`]).
    #[error("closed by peer: {} (code {})", .0.message, .0.reason.code())]
    Peer(Refusal),
    /// This side closed it.
    #[error("closed")]
    Local,
    /// It broke: timed out, reset, or failed in the transport.
    #[error("{0}")]
    Lost(Arc<dyn std::error::Error + Send + Sync>),
}

impl Closed {
    /// The peer's reason, if the peer closed the connection.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Closed::Peer(refusal) => Some(refusal),
            _ => None,
        }
    }

    pub(crate) fn quic(err: quinn::ConnectionError) -> Closed {
        Closed::from(err)
    }
}

/// Reads an application close of a QUIC connection as a refusal, if it
/// was one.
pub fn refusal_of(err: &quinn::ConnectionError) -> Option<Refusal> {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = Reason::from_code(close.error_code.into_inner());
            let mut message = String::from_utf8_lossy(&close.reason).into_owned();
            if message.is_empty() {
                message = reason.to_string();
            }
            Some(Refusal { reason, message })
        }
        _ => None,
    }
}

impl From<quinn::ConnectionError> for Closed {
    fn from(err: quinn::ConnectionError) -> Closed {
        match refusal_of(&err) {
            // A peer's words, bound for logs and terminals.
            Some(refusal) => Closed::Peer(refusal.printable()),
            None if matches!(err, quinn::ConnectionError::LocallyClosed) => Closed::Local,
            None => Closed::Lost(Arc::new(err)),
        }
    }
}

/// Why a stream could not be read or written.
#[derive(Debug, Clone, Error)]
pub enum StreamError {
    /// The peer reset the stream (reading) or stopped it (writing).
    #[error("stream aborted by the peer (code {})", .0 .0)]
    Aborted(ErrorCode),
    /// The connection closed.
    #[error("connection closed: {0}")]
    Closed(Closed),
    /// This side already finished or reset the stream.
    #[error("stream already closed")]
    Finished,
}

impl StreamError {
    /// The code to pass on to the other side of a splice: the peer's own,
    /// or [`Reason::Aborted`].
    pub fn code(&self) -> ErrorCode {
        match self {
            StreamError::Aborted(code) => *code,
            _ => Reason::Aborted.into(),
        }
    }
}

impl From<quinn::ReadError> for StreamError {
    fn from(err: quinn::ReadError) -> Self {
        match err {
            quinn::ReadError::Reset(code) => StreamError::Aborted(ErrorCode(code.into_inner())),
            quinn::ReadError::ConnectionLost(err) => StreamError::Closed(Closed::quic(err)),
            _ => StreamError::Finished,
        }
    }
}

impl From<quinn::WriteError> for StreamError {
    fn from(err: quinn::WriteError) -> Self {
        match err {
            quinn::WriteError::Stopped(code) => StreamError::Aborted(ErrorCode(code.into_inner())),
            quinn::WriteError::ConnectionLost(err) => StreamError::Closed(Closed::quic(err)),
            _ => StreamError::Finished,
        }
    }
}
