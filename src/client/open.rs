//! Opening one session on a connection to the relay: `open` out,
//! `ready` (or a refusal) back, and why it failed when it did.

use crate::net::transport::dial::ConnectError;
use crate::net::transport::{Closed, Conn, Stream};
use crate::ops::defaults::CLIENT_SETUP_TIMEOUT;
use crate::protocol::{read_frame, write_frame, Direct, Frame, FrameError, Refusal, Resume};

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No registered connection to the relay.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The relay or host refused the session.
    #[error("session refused: {0}")]
    Refused(Refusal),
    /// The session could not be set up.
    #[error("session setup failed: {0}")]
    Setup(#[from] SetupError),
}

/// Why setting up a session failed, short of a refusal.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The connection closed.
    #[error("{0}")]
    Closed(#[from] Closed),
    /// The stream failed, or did not carry a frame.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The relay answered `open` with a frame that is not an answer.
    #[error("unexpected answer to open: {0:?}")]
    Unexpected(Box<Frame>),
    /// No answer in time.
    #[error("no answer within {}s", CLIENT_SETUP_TIMEOUT.as_secs())]
    Timeout,
}

/// A session stream the host side reported `ready` on.
pub(super) struct Ready {
    pub session: u64,
    pub stream: Stream,
    /// The host's answer to the resume step asked for.
    pub resume: Option<Resume>,
    /// The relay's introduction, if asked for and made.
    pub direct: Option<Direct>,
}

/// A session stream on `conn`, once the host side is ready: its id, the
/// host's answer to `ask`, and the relay's answer to `direct`.
pub(super) async fn open_on(
    conn: &Conn,
    ask: Option<&Resume>,
    direct: Option<Direct>,
) -> Result<Ready, OpenError> {
    let setup = async {
        let Stream { mut send, mut recv } = conn.open().await.map_err(SetupError::from)?;
        let open = Frame::Open {
            session: 0,
            client: None,
            resume: ask.cloned(),
            owner: None,
            who: None,
            direct,
        };
        // A refusal may have been sent, and the stream reset, before
        // `open` went out: the answer is read either way.
        let wrote = write_frame(&mut send, &open).await;
        let read = read_frame(&mut recv).await;
        // A refusal the relay could not write at once comes as a reset
        // with the reason's code.
        if let Err(FrameError::Io(err)) = &read {
            if let Some(reason) = crate::net::transport::reset_reason(err) {
                let message = format!(
                    "refused ({}); the relay reset the stream rather than wait for room to say why",
                    reason.as_str()
                );
                return Err(OpenError::Refused(Refusal::new(reason, message)));
            }
        }
        let answer = match (read, wrote) {
            (Ok(answer), _) => answer,
            (Err(_), Err(err)) | (Err(err), Ok(())) => return Err(SetupError::from(err).into()),
        };
        match answer {
            Frame::Ready {
                session,
                resume,
                direct,
            } => Ok(Ready {
                session,
                stream: Stream { send, recv },
                resume,
                direct,
            }),
            Frame::Refused { reason, message } => {
                Err(OpenError::Refused(Refusal { reason, message }))
            }
            other => Err(SetupError::Unexpected(Box::new(other)).into()),
        }
    };
    match tokio::time::timeout(CLIENT_SETUP_TIMEOUT, setup).await {
        Ok(result) => result,
        Err(_) => Err(SetupError::Timeout.into()),
    }
}
