//! What the client and the host agent share about a session: the backoff
//! between attempts, the loop that carries a resumable session from stream
//! to stream, and the client's resume offer with what the host's answer
//! makes of it.

pub mod backoff;
pub mod carry;
pub mod offer;
