//! The `direct` field of `hello`, `open` and `ready`, and the ticket that
//! opens a direct connection: how the relay introduces a client to a host
//! so that the two can talk without it (see [`crate::net::transport::direct`]).
//!
//! Addresses are `IP:PORT` strings; a reader keeps at most
//! [`MAX_CANDIDATES`] of them that parse, and drops the rest.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Most addresses a peer or the relay names for one side: the one the
/// relay sees, and the peer's own (one per address family it routes
/// with). More are dropped, so that a candidate list cannot make anyone
/// send to many addresses.
pub const MAX_CANDIDATES: usize = 4;

/// Length of a ticket, in hex characters (16 random bytes).
pub const TICKET_HEX_LEN: usize = 32;

/// One step of an introduction.
///
/// A `kind` this version does not know reads as [`Direct::Unknown`], and
/// a missing list of addresses as an empty one, so that a later revision
/// can add steps without making today's peers refuse the whole frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Direct {
    /// Host, in its hello: it accepts direct connections, with a
    /// certificate whose key has this pin, at these addresses of its own
    /// (the relay adds the one it sees).
    Offer {
        /// The pin of the host's direct certificate (`sha256:…`).
        pin: String,
        /// The host's own addresses.
        #[serde(default)]
        addrs: Vec<String>,
    },
    /// Client, in `open`: introduce it to the host; its own addresses.
    Ask {
        /// The client's own addresses.
        #[serde(default)]
        addrs: Vec<String>,
    },
    /// Relay, in an `open` to a host: a client (the `open`'s `owner` and
    /// `who`) will connect from one of `addrs` (first the address the
    /// relay sees) and present `ticket`; its token expires at `expires_at`.
    Expect {
        /// The ticket the client will present.
        ticket: String,
        /// Where the client may connect from.
        #[serde(default)]
        addrs: Vec<String>,
        /// Unix time at which the client's token expires.
        expires_at: u64,
    },
    /// Relay, in `ready` to a client: the host accepts a direct connection
    /// at one of `addrs`, showing a key with `pin`, for `ticket`.
    Meet {
        /// The ticket to present, once.
        ticket: String,
        /// Where the host may be reached (first the address the relay sees).
        #[serde(default)]
        addrs: Vec<String>,
        /// The pin of the host's direct certificate.
        pin: String,
    },
    /// A step of a later revision: ignored.
    #[serde(other)]
    Unknown,
}

/// The addresses in `addrs` that parse and can be a peer's, at most
/// [`MAX_CANDIDATES`], without repeats.
pub fn candidates(addrs: &[String]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for addr in addrs {
        if out.len() == MAX_CANDIDATES {
            break;
        }
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            if usable(addr) && !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// Whether `addr` can be a peer's: not port 0, not an unspecified,
/// multicast or broadcast address. (Loopback can: peers on one machine.)
pub fn usable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// `addrs` as they go on the wire.
pub fn written(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(SocketAddr::to_string).collect()
}

/// Whether `ticket` has a ticket's form: [`TICKET_HEX_LEN`] lowercase hex
/// characters.
pub fn is_ticket(ticket: &str) -> bool {
    ticket.len() == TICKET_HEX_LEN
        && ticket
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_few_parsed_and_distinct() {
        let addrs: Vec<String> = ["1.2.3.4:5", "junk", "1.2.3.4:5", "[::1]:7", "5.6.7.8:1"]
            .iter()
            .map(|s| s.to_string())
            .chain((0..100).map(|i| format!("10.0.0.{i}:9")))
            .collect();
        let got = candidates(&addrs);
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(got[0], "1.2.3.4:5".parse().unwrap());
        assert_eq!(got[1], "[::1]:7".parse().unwrap());
    }

    #[test]
    fn addresses_no_peer_can_have_are_dropped() {
        let addrs: Vec<String> = [
            "0.0.0.0:5",
            "224.0.0.1:5",
            "1.2.3.4:0",
            "255.255.255.255:5",
            "[::]:5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(candidates(&addrs).is_empty());
    }

    #[test]
    fn an_unknown_step_or_missing_addresses_do_not_fail_the_frame() {
        let unknown: Direct = serde_json::from_str(r#"{"kind":"later","x":1}"#).unwrap();
        assert_eq!(unknown, Direct::Unknown);
        let ask: Direct = serde_json::from_str(r#"{"kind":"ask"}"#).unwrap();
        assert_eq!(ask, Direct::Ask { addrs: vec![] });
    }

    #[test]
    fn tickets_are_hex_of_one_length() {
        assert!(is_ticket(&"ab".repeat(16)));
        assert!(!is_ticket(&"AB".repeat(16)));
        assert!(!is_ticket("abc"));
        assert!(!is_ticket(&"zz".repeat(16)));
    }
}
