//! How a resumable session lets go of a stream: as its outcome says, and
//! without cutting off what the peer still has to say.

use super::engine::{Resumable, DONE_LINGER};
use super::outcome::{Outcome, Side};
use crate::net::transport::Stream;
use crate::session::splice::drain;

/// Ends `session`'s `stream` as `outcome` says: finished when done, an
/// abort sent when this end aborted or cannot go on (so that the peer ends
/// too rather than wait for a resume), reset otherwise. A session that
/// could not go on says why in the log.
pub async fn end(session: &Resumable, outcome: &Outcome, stream: &mut Stream) {
    match outcome {
        Outcome::Done => {
            let _ = stream.send.finish();
            // Until the peer finishes too (it is done once it has this
            // end's last acknowledgement): letting go of the receiving
            // half first would stop the peer's sending, which the relay
            // would count as an abort.
            drain(&mut stream.recv, DONE_LINGER).await;
        }
        Outcome::Aborted(Side::Local) => session.abort(stream).await,
        Outcome::Aborted(Side::Peer) | Outcome::Broken(_) => {
            crate::net::transport::abort(stream, crate::protocol::Reason::Aborted)
        }
        Outcome::Failed(why) => {
            tracing::warn!("session ended: {why}");
            session.abort(stream).await;
        }
    }
}
