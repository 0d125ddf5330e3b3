//! One session at the host agent: the target dialled for a new session,
//! the session carried (resumable when the client asks and the window is
//! not zero), and a resume handed to the session it names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::{info, warn};

use super::direct::{Admitted, DirectPaths};
use crate::net::transport::direct::DirectListener;
use crate::net::transport::{self, SendStream, Stream};
use crate::ops::defaults::{DIAL_TIMEOUT, OPEN_TIMEOUT, SHUTDOWN_GRACE};
use crate::ops::memory::Live;
use crate::ops::metrics::HostMetrics;
use crate::protocol::{read_frame, write_frame, Frame, Reason, Refusal, Resume};
use crate::session::carry::NextStream;
use crate::session::resume::key::{self, Half};
use crate::session::resume::parked::{NotTaken, Parked, Registered, Takeover};
use crate::session::resume::{Broke, Failure, Outcome, Position, Resumable};
use crate::session::splice;

/// Log lines of sessions are the role's, whichever module logs them.
const LOG_TARGET: &str = "shellrelay::host";

/// What every session of a host agent shares.
pub(super) struct Sessions {
    /// The one address sessions are connected to.
    pub target: Arc<str>,
    /// Resumable sessions, for resumes through any relay to find.
    pub parked: Arc<Parked>,
    /// How long a session whose path broke waits for a resume.
    pub window: Duration,
    /// Most unacknowledged bytes a session keeps per direction.
    pub replay_limit: usize,
    /// Resumes and what resumable sessions hold.
    pub metrics: Arc<HostMetrics>,
    /// Direct paths, unless they are off.
    pub direct: Option<Arc<DirectPaths>>,
}

/// Where a session stream came from.
pub(super) enum Origin {
    /// A relay, whose introductions punch from this listener (on the
    /// endpoint of the agent's link to it), if it takes direct connections
    /// and the link still serves (a session outlives its link; the
    /// listener goes with the link).
    Relay(Option<std::sync::Weak<DirectListener>>),
    /// A direct connection, from this client.
    Direct(Arc<Admitted>),
}

/// Serves one session stream a relay or a direct client opened: a new
/// session, or a resume.
pub(super) async fn host_session(
    ctx: Arc<Sessions>,
    mut stream: Stream,
    live: Live,
    origin: Origin,
) {
    let open = tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut stream.recv)).await;
    let (session, client, resume, owner, who, direct) = match (open, &origin) {
        (
            Ok(Ok(Frame::Open {
                session,
                client,
                resume,
                owner,
                who,
                direct,
            })),
            Origin::Relay(_),
        ) => (
            session,
            client.unwrap_or_default(),
            resume,
            owner,
            who,
            direct,
        ),
        // On a direct connection the ticket says who the client is, and
        // only a relay introduces or says a token has ended.
        (
            Ok(Ok(Frame::Open {
                resume,
                direct: None,
                ..
            })),
            Origin::Direct(admitted),
        ) if !matches!(resume, Some(Resume::Ended { .. })) => {
            let (owner, who) = (admitted.owner.clone(), admitted.who.clone());
            let client = admitted.client.to_string();
            (admitted.next_session(), client, resume, owner, who, None)
        }
        (other, _) => {
            warn!(target: LOG_TARGET, ?other, "session stream did not start with open");
            stream.send.reset(Reason::Protocol);
            return;
        }
    };
    let path = match origin {
        Origin::Relay(_) => "relay",
        Origin::Direct(_) => "direct",
    };
    if let (Some(expect), Origin::Relay(Some(listener)), Some(paths)) =
        (direct, &origin, &ctx.direct)
    {
        if let Some(listener) = listener.upgrade() {
            paths.expect(&listener, expect, owner.clone(), who.clone());
        }
    }
    let span = tracing::Span::current();
    span.record("session", session);
    if let Some(who) = who {
        span.record("subject", who.subject);
        span.record("jti", who.jti.unwrap_or_default());
    }
    let offer = match resume {
        None => None,
        Some(Resume::Offer { id, key }) => Some((id, key)),
        Some(Resume::Again {
            id,
            attempt,
            received,
            fin,
            proof,
        }) => {
            let takeover = Takeover {
                stream,
                attempt,
                peer_at: Position { received, fin },
                path,
            };
            return take_up(&ctx, &id, owner.as_deref(), takeover, &proof, &client).await;
        }
        Some(Resume::Ended { why }) => {
            // From the relay: a client token ended; its sessions that wait
            // for a resume end now.
            if let Some(owner) = owner {
                info!(target: LOG_TARGET, "the relay says a client token has ended ({why}); its sessions cannot be resumed");
                if let Some(paths) = &ctx.direct {
                    paths.end_owner(&owner, &why);
                }
                ctx.parked.end_token(&owner, why, ctx.window);
            }
            let _ = stream.send.finish();
            return;
        }
        Some(_) => {
            let refusal = Refusal::new(Reason::Protocol, "open carried a host's resume answer");
            return refuse(&mut stream.send, refusal).await;
        }
    };
    let started = Instant::now();
    let tcp = match dial(&ctx.target).await {
        Ok(tcp) => tcp,
        Err(refusal) => return refuse(&mut stream.send, refusal).await,
    };
    let _ = tcp.set_nodelay(true);
    let resumable = match offer {
        Some((id, key)) if !ctx.window.is_zero() => match accept(&ctx, id, &key, owner) {
            Ok(accepted) => Some(accepted),
            Err(refusal) => return refuse(&mut stream.send, refusal).await,
        },
        _ => None,
    };
    let answer = resumable
        .as_ref()
        .map(|(_, _, key)| Resume::Accept { key: key.clone() });
    let ready = Frame::Ready {
        session,
        resume: answer,
        direct: None,
    };
    if write_frame(&mut stream.send, &ready).await.is_err() {
        return;
    }
    info!(target: LOG_TARGET, %client, path, resumable = resumable.is_some(), "session started");
    let _on = ctx.metrics.session_on(path);
    let mut finished = None;
    let (to_client, to_host, aborted) = match resumable {
        Some((session, registered, _)) => {
            let (outcome, moved) = carry(&ctx, &session, &registered, tcp, stream).await;
            let done = matches!(outcome, Outcome::Done);
            if done {
                finished = Some((session, registered));
            }
            (moved.0, moved.1, !done)
        }
        None => {
            let t = splice::tcp(tcp, stream).await;
            (t.sent, t.received, t.aborted)
        }
    };
    drop(live);
    info!(
        target: LOG_TARGET,
        %client,
        to_client,
        to_host,
        aborted,
        duration = ?started.elapsed(),
        "session ended"
    );
    if let Some((session, registered)) = finished {
        linger(&session, &registered, FINISHED_LINGER).await;
    }
}

/// How long a resumable session that ended well can still be resumed:
/// its client may not have had the last acknowledgement when the path
/// broke, and then asks for a resume to learn that everything arrived.
pub(super) const FINISHED_LINGER: Duration = Duration::from_secs(60);

/// Answers, for `time`, the resumes of a session that ended well: each
/// learns where this end is (everything received, the end of data too),
/// and the session ends on the new stream as it did on the old one, so
/// that its client reports it finished rather than not resumable.
async fn linger(session: &Resumable, registered: &Registered, time: Duration) {
    registered.finished();
    let answer = async {
        loop {
            let takeover = registered.handoff.next().await;
            let Some((mut stream, peer_at)) = take(session, takeover).await else {
                continue;
            };
            let (mut nothing, mut nowhere) =
                (splice::Reader(tokio::io::empty()), tokio::io::sink());
            let outcome = session
                .attach(&mut stream, peer_at, &mut nothing, &mut nowhere)
                .await;
            info!(target: LOG_TARGET, ?outcome, "a finished session's client learnt it had finished");
            crate::session::resume::end(session, &outcome, &mut stream).await;
        }
    };
    let _ = tokio::time::timeout(time, answer).await;
}

/// Hands a resume's stream to the session it names, or refuses it.
async fn take_up(
    ctx: &Sessions,
    id: &str,
    owner: Option<&str>,
    takeover: Takeover,
    proof: &str,
    client: &str,
) {
    if let Err(not) = ctx.parked.take_up(id, owner, takeover, proof) {
        let NotTaken {
            refusal,
            kind,
            mut takeover,
        } = *not;
        ctx.metrics.resume(kind);
        warn!(target: LOG_TARGET, %client, reason = %refusal.message, "resume refused");
        refuse(&mut takeover.stream.send, refusal).await;
    }
}

/// Connects to the host's one target, or says why the client cannot have
/// it.
async fn dial(target: &str) -> Result<TcpStream, Refusal> {
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(err)) => {
            let message = format!("could not connect to {target}: {err}");
            Err(Refusal::new(Reason::TargetUnreachable, message))
        }
        Err(_) => {
            let secs = DIAL_TIMEOUT.as_secs();
            let message = format!("could not connect to {target}: no answer within {secs}s");
            Err(Refusal::new(Reason::TargetUnreachable, message))
        }
    }
}

/// Takes up a client's offer: the session's key, and its place among the
/// sessions resumes can find.
fn accept(
    ctx: &Sessions,
    id: String,
    client_key: &str,
    owner: Option<String>,
) -> Result<(Arc<Resumable>, Registered, String), Refusal> {
    let bad =
        |err: key::KeyError| Refusal::new(Reason::Protocol, format!("bad resume offer: {err}"));
    key::check_id(&id).map_err(bad)?;
    let half = Half::new().map_err(bad)?;
    let public = half.public.clone();
    let key = half.agree(client_key, &id).map_err(bad)?;
    let session = Arc::new(Resumable::new(id, key, ctx.replay_limit));
    let registered = ctx.parked.register(session.clone(), owner)?;
    Ok((session, registered, public))
}

/// Carries a resumable session until it ends, taking each stream a resume
/// brings, and waiting up to the window whenever the stream in use breaks.
/// Returns how it ended, with the bytes sent to the client and received.
async fn carry(
    ctx: &Sessions,
    session: &Resumable,
    registered: &Registered,
    mut tcp: TcpStream,
    mut stream: Stream,
) -> (Outcome, (u64, u64)) {
    let (mut from_target, mut to_target) = tcp.split();
    let mut resumes = Resumes { ctx, registered };
    let outcome = crate::session::carry::carry(
        session,
        &mut stream,
        &mut from_target,
        &mut to_target,
        &mut resumes,
    )
    .await;
    crate::session::resume::end(session, &outcome, &mut stream).await;
    if matches!(outcome, Outcome::Aborted(_) | Outcome::Failed(_)) {
        // Linger 0: sshd sees a reset, not an orderly end.
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    }
    (outcome, session.moved())
}

/// A session's next stream at the host: the one the client's resume
/// brings, taken whenever it comes, and waited for up to the window once
/// the stream in use broke.
struct Resumes<'a> {
    ctx: &'a Sessions,
    registered: &'a Registered,
}

impl NextStream for Resumes<'_> {
    type Takeover = Takeover;

    fn takeover(&mut self) -> impl std::future::Future<Output = Takeover> {
        self.registered.handoff.next()
    }

    async fn take_up(
        &mut self,
        session: &Resumable,
        takeover: Takeover,
    ) -> Option<(Stream, Position)> {
        let path = takeover.path;
        let taken = take(session, takeover).await?;
        self.ctx.metrics.resume("resumed");
        info!(target: LOG_TARGET, gap = ?Duration::ZERO, path, "session resumed");
        Some(taken)
    }

    async fn after_break(
        &mut self,
        session: &Resumable,
        why: Broke,
    ) -> Result<(Stream, Position), Failure> {
        let ctx = self.ctx;
        // Each waiting session holds a connection to the target: a client
        // token that leaves many behind ends its own, not the host's.
        let Some(_waiting) = self.registered.wait() else {
            ctx.metrics.resume("too_many_waiting");
            let limits = ctx.parked.limits();
            return Err(Failure::TooManyWaiting {
                broke: why,
                per_client: limits.per_client,
                all: limits.all,
            });
        };
        if let Some(ended) = self.registered.token_ended() {
            ctx.metrics.resume("token_ended");
            return Err(Failure::TokenEnded(ended));
        }
        let broke = Instant::now();
        info!(target: LOG_TARGET, %why, window = ?ctx.window, "session path broke; waiting for the client to resume it");
        let deadline = tokio::time::Instant::now() + ctx.window;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, self.registered.handoff.next()) => next,
                ended = self.registered.until_token_ended() => {
                    ctx.metrics.resume("token_ended");
                    return Err(Failure::TokenEnded(ended));
                }
            };
            match next {
                Ok(takeover) => {
                    let path = takeover.path;
                    if let Some(taken) = take(session, takeover).await {
                        ctx.metrics.resume("resumed");
                        info!(target: LOG_TARGET, gap = ?broke.elapsed(), path, "session resumed");
                        return Ok(taken);
                    }
                }
                Err(_) => {
                    ctx.metrics.resume("window_passed");
                    let window = ctx.window;
                    return Err(Failure::NotResumed { window, last: None });
                }
            }
        }
    }
}

/// Answers the resume that brought `takeover`; the new stream and where
/// the client is, or `None` if the stream failed meanwhile.
async fn take(session: &Resumable, mut takeover: Takeover) -> Option<(Stream, Position)> {
    let ready = Frame::Ready {
        session: 0,
        resume: Some(session.answer(takeover.attempt)),
        direct: None,
    };
    let sent = tokio::time::timeout(
        SHUTDOWN_GRACE * 5,
        write_frame(&mut takeover.stream.send, &ready),
    );
    match sent.await {
        Ok(Ok(())) => Some((takeover.stream, takeover.peer_at)),
        _ => {
            transport::abort(&mut takeover.stream, Reason::Aborted);
            None
        }
    }
}

async fn refuse(send: &mut SendStream, refusal: Refusal) {
    warn!(target: LOG_TARGET, reason = %refusal.message, "session refused");
    send.refuse(&refusal);
}

#[cfg(test)]
mod tests;
