//! How a stream's part in a resumable session ended, and why: the causes
//! are typed, and each says in words what the logs and messages say.

use std::sync::Arc;
use std::time::Duration;

use super::outbox::Gap;
use super::record::RecordError;
use crate::net::transport::StreamError;

/// Which end did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This end (its TCP connection or stdin failed, or it was told to stop).
    Local,
    /// The other end.
    Peer,
}

/// How a stream's part in a session ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Both directions ended and both ends have everything.
    Done,
    /// The session was aborted.
    Aborted(Side),
    /// The stream broke, and why: the session waits for another.
    Broken(Broke),
    /// The session cannot go on (the peer broke the protocol, or needs
    /// bytes no longer kept, or no new stream came in time).
    Failed(Failure),
}

/// Why a stream broke; the session may go on over another.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Broke {
    /// The stream could not be read or written.
    #[error("{0}")]
    Stream(StreamError),
    /// The stream ended before the session did.
    #[error("the stream ended early")]
    EndedEarly,
    /// A resume came while the stream was in use, and its own stream
    /// failed before the answer went out.
    #[error("a resume's stream failed before its answer")]
    TakeoverFailed,
}

/// Why a session cannot go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The peer asks to be sent again bytes this end no longer keeps.
    #[error("cannot resume: {0}")]
    Replay(Gap),
    /// The peer acknowledged what was never sent.
    #[error("{0}")]
    Ack(Gap),
    /// The stream carried something that is not a record.
    #[error("{0}")]
    Record(RecordError),
    /// Data came after the peer's end of data.
    #[error("data after the end of data")]
    DataAfterEnd,
    /// No resume took the session up within the window; with the last
    /// attempt's error, if one was made.
    #[error("not resumed within {}{}", humantime::format_duration(*.window), Last(.last))]
    NotResumed {
        /// The resume window.
        window: Duration,
        /// Why the last attempt failed.
        last: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// The path broke while as many sessions as allowed waited for a
    /// resume already.
    #[error(
        "path broke ({broke}), and too many sessions wait for a resume already \
         ({per_client} per client token, host --max-waiting-per-client; {all} in all, \
         host --max-waiting)"
    )]
    TooManyWaiting {
        /// Why the path broke.
        broke: Broke,
        /// Most sessions of one client token that may wait.
        per_client: usize,
        /// Most sessions that may wait in all.
        all: usize,
    },
    /// The peer refused to take the session up again, in its words.
    #[error("{0}")]
    Refused(String),
    /// The relay said the session's client token has ended (revoked or
    /// expired): no resume can come.
    #[error("not resumable: {0}")]
    TokenEnded(String),
    /// A relay refused this end in a way trying again cannot change (a
    /// bad or revoked token, say).
    #[error("{0}")]
    RelayRefused(Arc<dyn std::error::Error + Send + Sync>),
    /// The answer to a resume was not the host taking the session up.
    #[error("the host did not take the session up again")]
    NotTakenUp,
    /// The answer to a resume was not proved with the session's key.
    #[error("the answer to the resume is not from the host")]
    NotFromHost,
}

/// The last attempt's error after a [`Failure::NotResumed`]'s words, if
/// there is one.
struct Last<'a>(&'a Option<Arc<dyn std::error::Error + Send + Sync>>);

impl std::fmt::Display for Last<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(err) => write!(f, ": {err}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_say_what_the_logs_say() {
        let window = Duration::from_secs(2);
        let not_resumed = Failure::NotResumed { window, last: None };
        assert_eq!(not_resumed.to_string(), "not resumed within 2s");
        let last: Box<dyn std::error::Error + Send + Sync> = "no relay answers".into();
        let not_resumed = Failure::NotResumed {
            window,
            last: Some(Arc::from(last)),
        };
        assert_eq!(
            not_resumed.to_string(),
            "not resumed within 2s: no relay answers"
        );
        let too_many = Failure::TooManyWaiting {
            broke: Broke::EndedEarly,
            per_client: 8,
            all: 1024,
        };
        assert_eq!(
            too_many.to_string(),
            "path broke (the stream ended early), and too many sessions wait for a resume \
             already (8 per client token, host --max-waiting-per-client; 1024 in all, \
             host --max-waiting)"
        );
        let gap = Gap::Lost { from: 5, base: 9 };
        assert_eq!(
            Failure::Replay(gap.clone()).to_string(),
            format!("cannot resume: {gap}")
        );
        assert_eq!(Failure::Ack(gap.clone()).to_string(), gap.to_string());
    }
}
