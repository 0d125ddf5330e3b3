//! The loop that carries a resumable session across the streams it runs
//! on: attached to one until it breaks, then to the next one its role
//! finds, until the session ends or cannot go on.

use std::future::Future;

use tokio::io::AsyncWrite;

use crate::net::transport::{self, Stream};
use crate::protocol::Reason;
use crate::session::resume::{Broke, Failure, Outcome, Position, Resumable};
use crate::session::splice::Source;

/// Where a role finds a session's next stream, and where the peer is on
/// it: the client resumes through the relays, the host waits for the
/// client's resume.
pub trait NextStream {
    /// A new stream that came while the one in use still seemed fine.
    type Takeover;

    /// Resolves when a takeover comes (never, where none can). Dropped
    /// whenever the stream in use ends first, so it must lose nothing
    /// when dropped.
    fn takeover(&mut self) -> impl Future<Output = Self::Takeover>;

    /// Takes `takeover` up for `session`, the stream in use having been
    /// aborted: its stream and where the peer is, or `None` if its stream
    /// failed first.
    fn take_up(
        &mut self,
        session: &Resumable,
        takeover: Self::Takeover,
    ) -> impl Future<Output = Option<(Stream, Position)>>;

    /// The stream in use broke (`why`) and has been aborted: the next
    /// stream and where the peer is, or why the session cannot go on.
    fn after_break(
        &mut self,
        session: &Resumable,
        why: Broke,
    ) -> impl Future<Output = Result<(Stream, Position), Failure>>;
}

/// Carries `session` between `source` and `writer` over `stream`, which
/// is replaced by each new stream `next` finds, until the session is done
/// or aborted, or cannot go on. The stream in use at the end is left as it
/// is, for [`crate::session::resume::end`].
pub async fn carry<S: Source, W: AsyncWrite + Unpin>(
    session: &Resumable,
    stream: &mut Stream,
    source: &mut S,
    writer: &mut W,
    next: &mut impl NextStream,
) -> Outcome {
    let mut peer_at = Position::default();
    loop {
        let outcome = tokio::select! {
            outcome = session.attach(stream, peer_at, source, writer) => outcome,
            // The peer resumed before this end saw the stream in use break.
            takeover = next.takeover() => {
                transport::abort(stream, Reason::Aborted);
                match next.take_up(session, takeover).await {
                    Some(taken) => {
                        (*stream, peer_at) = taken;
                        continue;
                    }
                    // The old stream is gone as well: wait for the next.
                    None => Outcome::Broken(Broke::TakeoverFailed),
                }
            }
        };
        let Outcome::Broken(why) = outcome else {
            return outcome;
        };
        transport::abort(stream, Reason::Aborted);
        match next.after_break(session, why).await {
            Ok(found) => (*stream, peer_at) = found,
            Err(failure) => return Outcome::Failed(failure),
        }
    }
}
