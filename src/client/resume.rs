//! The client side of a resumable session (forwarder and `connect`): the
//! offer in `open`, and when the stream breaks, resumes through whichever
//! relay answers until one is taken or the window has passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{Forwarder, OpenError, Opened};
use crate::net::transport::{self, Stream};
use crate::protocol::Reason;
use crate::session::backoff::Backoff;
use crate::session::carry::{self, NextStream};
use crate::session::offer::Offer;
use crate::session::resume::{replay_limit, Broke, Failure, Outcome, Position, Resumable};
use crate::session::splice::Source;

/// Log lines of sessions are the role's, whichever module logs them.
const LOG_TARGET: &str = "shellrelay::client";

/// Longest pause between two resume attempts.
const RESUME_BACKOFF: Duration = Duration::from_secs(2);

impl Forwarder {
    /// An offer to make the next session resumable, if this forwarder's
    /// window is not zero (and the system has random numbers).
    pub fn offer(&self) -> Option<Offer> {
        if self.config.resume_window.is_zero() {
            return None;
        }
        let window = (self.config.relays.first()).map_or(0, |relay| relay.transport.window());
        match Offer::new(replay_limit(window)) {
            Ok(offer) => Some(offer),
            Err(err) => {
                tracing::warn!(target: LOG_TARGET, "sessions are not resumable: {err}");
                None
            }
        }
    }

    /// Carries a resumable session over `stream` (replaced by each
    /// resume's) until it ends; a broken stream is resumed through any
    /// relay within the window, and a session on a relay moves to the
    /// direct path once one is up. `direct` says whether `stream` is on
    /// the direct path. `Failed` says why the session could not go on.
    pub async fn carry<S: Source, W: tokio::io::AsyncWrite + Unpin>(
        &self,
        session: &Resumable,
        (stream, direct): (&mut Stream, bool),
        source: &mut S,
        writer: &mut W,
    ) -> Outcome {
        let mut next = Reattach {
            forwarder: self,
            direct,
            moved: false,
        };
        carry::carry(session, stream, source, writer, &mut next).await
    }

    /// Takes `session` up again on a new stream, through whichever relay
    /// answers, trying until the window has passed.
    async fn reattach(&self, session: &Resumable) -> Result<(Opened, Position), Failure> {
        let window = self.config.resume_window;
        let deadline = tokio::time::Instant::now() + window;
        let mut backoff = Backoff::new(RESUME_BACKOFF);
        let not_resumed = |last| Failure::NotResumed { window, last };
        loop {
            let ask = session.again();
            let err = match tokio::time::timeout_at(deadline, self.open_with(Some(&ask))).await {
                Err(_) => return Err(not_resumed(None)),
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
                    return Err(Failure::Refused(r.message));
                }
                Ok(Err(OpenError::Connect(err))) if self.is_final(&err) => {
                    return Err(Failure::RelayRefused(Arc::new(err)));
                }
                Ok(Err(err)) => err,
            };
            let delay = backoff.delay();
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(not_resumed(Some(Arc::new(err))));
            }
            debug!(target: LOG_TARGET, "resume failed, trying again in {delay:.1?}: {err}");
            tokio::time::sleep(delay).await;
        }
    }
}

/// A client's next stream for a session: on the direct path once one is
/// up (a takeover: the host takes the resume while the relay's stream
/// still works), and after a break a resume through the direct path or
/// whichever relay answers.
struct Reattach<'a> {
    forwarder: &'a Forwarder,
    /// Whether the stream in use is on the direct path.
    direct: bool,
    /// Whether the session has tried a move to the direct path: it tries
    /// once, so that a path that fails resumes cannot make it go round.
    moved: bool,
}

impl NextStream for Reattach<'_> {
    type Takeover = transport::Conn;

    fn takeover(&mut self) -> impl std::future::Future<Output = Self::Takeover> {
        let (forwarder, stay) = (self.forwarder, self.direct || self.moved);
        async move {
            match stay {
                true => std::future::pending().await,
                false => forwarder.direct_up().await,
            }
        }
    }

    async fn take_up(
        &mut self,
        session: &Resumable,
        conn: Self::Takeover,
    ) -> Option<(Stream, Position)> {
        self.moved = true;
        let moving = Instant::now();
        let ask = session.again();
        let opened = super::open_on(&conn, Some(&ask), None).await;
        let mut ready = match opened {
            Ok(ready) => ready,
            Err(err) => {
                info!(target: LOG_TARGET, "could not move the session to the direct path: {err}");
                return None;
            }
        };
        match session.resumed(ready.resume.as_ref()) {
            Ok(at) => {
                self.direct = true;
                info!(target: LOG_TARGET, gap = ?moving.elapsed(), path = "direct", "session moved to the direct path");
                Some((ready.stream, at))
            }
            Err(why) => {
                info!(target: LOG_TARGET, "could not move the session to the direct path: {why}");
                transport::abort(&mut ready.stream, Reason::Protocol);
                None
            }
        }
    }

    async fn after_break(
        &mut self,
        session: &Resumable,
        why: Broke,
    ) -> Result<(Stream, Position), Failure> {
        let broke = Instant::now();
        info!(target: LOG_TARGET, %why, "session path broke; resuming it");
        let (opened, at) = self.forwarder.reattach(session).await?;
        self.direct = opened.direct;
        let path = if opened.direct { "direct" } else { "relay" };
        info!(target: LOG_TARGET, gap = ?broke.elapsed(), path, remote = %opened.conn.remote(), "session resumed");
        Ok((opened.stream, at))
    }
}
