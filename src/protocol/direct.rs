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
        addrs: Vec<String>,
    },
    /// Client, in `open`: introduce it to the host; its own addresses.
    Ask {
        /// The client's own addresses.
        addrs: Vec<String>,
    },
    /// Relay, in an `open` to a host: a client (the `open`'s `owner` and
    /// `who`) will connect from one of `addrs` (first the address the
    /// relay sees) and present `ticket`; its token expires at `expires_at`.
    Expect {
        /// The ticket the client will present.
        ticket: String,
        /// Where the client may connect from.
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
        addrs: Vec<String>,
        /// The pin of the host's direct certificate.
        pin: String,
    },
}

/// The addresses in `addrs` that parse, at most [`MAX_CANDIDATES`], without
/// repeats.
pub fn candidates(addrs: &[String]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for addr in addrs {
        if out.len() == MAX_CANDIDATES {
            break;
        }
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
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
    fn tickets_are_hex_of_one_length() {
        assert!(is_ticket(&"ab".repeat(16)));
        assert!(!is_ticket(&"AB".repeat(16)));
        assert!(!is_ticket("abc"));
        assert!(!is_ticket(&"zz".repeat(16)));
    }
}
