//! What the client and the host agent share about a session: moving its
//! bytes ([`splice`]), resumable sessions ([`resume`]), the loop that
//! carries a resumable session from stream to stream ([`carry`]), the
//! client's resume offer with what the host's answer makes of it
//! ([`offer`]), and the backoff between attempts ([`backoff`]).

pub mod backoff;
pub mod carry;
pub mod offer;
pub mod resume;
pub mod splice;
