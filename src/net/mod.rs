//! Networking: the transport, which owns a connection from its socket to
//! its close ([`transport`]: QUIC with its congestion control, TLS over
//! TCP with HTTP/2, dialling and accepting); certificates, pins and the
//! verifier of a relay's certificate ([`tls`]); and a fleet of relays
//! named by DNS ([`fleet`]).

pub mod fleet;
pub mod tls;
pub mod transport;
