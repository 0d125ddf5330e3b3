//! Refusing a stream the peer opened, without waiting on the peer's
//! credit, and reading such a refusal at the side that opened it.

use bytes::Bytes;

use super::{RecvStream, Stream, StreamError};
use crate::protocol::{Reason, Refusal};

/// Refuses a stream the peer opened without waiting on the peer's
/// flow-control credit, and keeps nothing the peer sent on it. The
/// refusal frame goes out if the stream's window takes it at once (then
/// the stream is finished); otherwise the stream is reset with the
/// reason's code, which the peer reads as the same refusal without its
/// words ([`reset_reason`]).
///
/// QUIC's receiving half is stopped at once, which drops what arrived.
/// HTTP/2 ends both halves of a stream together, and a reset there would
/// drop the frame before it leaves: so over HTTP/2 a stream whose
/// refusal went out is returned as a future that reads and drops what
/// the peer still sends, for at most
/// [`REFUSE_LINGER`](crate::ops::defaults::REFUSE_LINGER), holding no more
/// than one chunk at a time. Run it in a task; `None` means nothing is
/// left to do.
pub fn refuse_at_once(
    stream: Stream,
    refusal: &Refusal,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let Stream { mut send, mut recv } = stream;
    let said = send.refuse(refusal);
    match recv {
        RecvStream::Http2(_) if said => Some(async move {
            let drain = async {
                let mut chunks = [Bytes::new(), Bytes::new(), Bytes::new(), Bytes::new()];
                while let Ok(Some(_)) = recv.read_chunks(&mut chunks).await {
                    chunks = Default::default();
                }
            };
            let _ = tokio::time::timeout(crate::ops::defaults::REFUSE_LINGER, drain).await;
            drop(send);
        }),
        _ => {
            recv.stop(refusal.reason);
            None
        }
    }
}

/// The reason a peer gave by resetting a stream, if `err` is such a
/// reset with a code this version knows as a refusal: what a refusal
/// that could not be written at once ([`refuse_at_once`]) looks like to
/// the side that opened the stream.
pub fn reset_reason(err: &std::io::Error) -> Option<Reason> {
    let code = match err.get_ref()?.downcast_ref::<StreamError>() {
        Some(StreamError::Aborted(code)) => code.0,
        _ => match err.get_ref()?.downcast_ref::<quinn::ReadError>() {
            Some(quinn::ReadError::Reset(code)) => code.into_inner(),
            _ => return None,
        },
    };
    match Reason::from_code(code) {
        Reason::Done | Reason::Aborted | Reason::Unknown => None,
        reason => Some(reason),
    }
}
