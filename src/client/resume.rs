//! The client side of a resumable session (forwarder and `connect`): the
//! offer in `open`, and when the stream breaks, resumes through whichever
//! relay answers until one is taken or the window has passed.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{Forwarder, OpenError, Opened};
use crate::host::Backoff;
use crate::protocol::{Reason, Resume};
use crate::resume::key::{self, Half};
use crate::resume::{replay_limit, Outcome, Position, Resumable};
use crate::splice::Source;
use crate::transport::{self, Stream};

/// Log lines of sessions are the role's, whichever module logs them.
const LOG_TARGET: &str = "shellrelay::client";

/// Longest pause between two resume attempts.
const RESUME_BACKOFF: Duration = Duration::from_secs(2);

/// A session offer not yet answered: what `open` carries, and the key half
/// kept for the answer.
pub struct Offer {
    /// What `open` carries.
    pub ask: Resume,
    id: String,
    half: Half,
    /// Most unacknowledged bytes the session will keep per direction.
    limit: usize,
}

impl Forwarder {
    /// An offer to make the next session resumable, if this forwarder's
    /// window is not zero (and the system has random numbers).
    pub fn offer(&self) -> Option<Offer> {
        if self.config.resume_window.is_zero() {
            return None;
        }
        let (id, half) = match (key::new_id(), Half::new()) {
            (Ok(id), Ok(half)) => (id, half),
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(target: LOG_TARGET, "sessions are not resumable: {err}");
                return None;
            }
        };
        let ask = Resume::Offer {
            id: id.clone(),
            key: half.public.clone(),
        };
        let window = (self.config.relays.first()).map_or(0, |relay| relay.transport.window());
        let limit = replay_limit(window);
        Some(Offer {
            ask,
            id,
            half,
            limit,
        })
    }

    /// Carries a resumable session over `stream` (replaced by each
    /// resume's) until it ends; a broken stream is resumed through any
    /// relay within the window. `Failed` says why the session could not go
    /// on.
    pub async fn carry<S: Source, W: tokio::io::AsyncWrite + Unpin>(
        &self,
        session: &Resumable,
        stream: &mut Stream,
        source: &mut S,
        writer: &mut W,
    ) -> Outcome {
        let mut peer = Position::default();
        loop {
            let why = match session.attach(stream, peer, source, writer).await {
                Outcome::Broken(why) => why,
                outcome => return outcome,
            };
            transport::abort(stream, Reason::Aborted);
            let broke = Instant::now();
            info!(target: LOG_TARGET, %why, "session path broke; resuming it");
            match self.reattach(session).await {
                Ok((opened, at)) => {
                    info!(target: LOG_TARGET, gap = ?broke.elapsed(), relay = %opened.conn.remote(), "session resumed");
                    (*stream, peer) = (opened.stream, at);
                }
                Err(why) => return Outcome::Failed(why),
            }
        }
    }

    /// Takes `session` up again on a new stream, through whichever relay
    /// answers, trying until the window has passed.
    async fn reattach(&self, session: &Resumable) -> Result<(Opened, Position), String> {
        let window = self.config.resume_window;
        let deadline = tokio::time::Instant::now() + window;
        let mut backoff = Backoff::new(RESUME_BACKOFF);
        let within = humantime::format_duration(window);
        loop {
            let ask = session.again();
            let err = match tokio::time::timeout_at(deadline, self.open_with(Some(&ask))).await {
                Err(_) => return Err(format!("not resumed within {within}")),
                Ok(Ok(mut opened)) => {
                    return match session.resumed(opened.resume.as_ref()) {
                        Ok(at) => Ok((opened, at)),
                        Err(why) => {
                            transport::abort(&mut opened.stream, Reason::Protocol);
                            Err(why)
                        }
                    };
                }
                Ok(Err(OpenError::Refused(r))) if r.reason == Reason::NotResumable => {
                    return Err(r.message);
                }
                Ok(Err(OpenError::Connect(err))) if self.is_final(&err) => {
                    return Err(err.to_string());
                }
                Ok(Err(err)) => err,
            };
            let delay = backoff.delay();
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(format!("not resumed within {within}: {err}"));
            }
            debug!(target: LOG_TARGET, "resume failed, trying again in {delay:.1?}: {err}");
            tokio::time::sleep(delay).await;
        }
    }
}

impl Offer {
    /// The session, from the host's answer to the offer; `None` if the host
    /// made it a plain session.
    pub fn accepted(self, answer: Option<&Resume>) -> Result<Option<Resumable>, String> {
        match answer {
            None => Ok(None),
            Some(Resume::Accept { key }) => {
                let key = (self.half)
                    .agree(key, &self.id)
                    .map_err(|err| format!("bad answer to the resume offer: {err}"))?;
                Ok(Some(Resumable::new(self.id, key, self.limit)))
            }
            Some(_) => Err("the host answered the resume offer with something else".into()),
        }
    }
}
