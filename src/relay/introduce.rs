//! Introductions: a client over QUIC that asks to reach its host directly,
//! where the host (over QUIC too) takes direct connections, gets the
//! host's addresses and key pin in its `ready`; the host gets, in the
//! session's `open`, the client's addresses and a one-time ticket bound
//! to the host (only it is told), the client's token (the `open`'s
//! `owner`) and the token's expiry. The relay keeps nothing of an
//! introduction: each costs it a rate-limiter entry per token, and the
//! few hundred bytes of the two frames.

use std::net::SocketAddr;
use std::time::Instant;

use ring::rand::SecureRandom;

use super::State;
use crate::net::transport::Conn;
use crate::ops::defaults::INTRODUCTIONS_PER_CLIENT;
use crate::protocol::direct::{candidates, written, MAX_CANDIDATES, TICKET_HEX_LEN};
use crate::protocol::Direct;

/// What a host that takes direct connections offers: its key pin, and
/// its addresses (first the one the relay sees).
#[derive(Debug, Clone)]
pub(super) struct Offered {
    pin: String,
    addrs: Vec<SocketAddr>,
}

/// A host's offer from its hello, if it made one over QUIC with a pin of
/// the right form.
pub(super) fn offered(conn: &Conn, direct: Option<Direct>) -> Option<Offered> {
    let Some(Direct::Offer { pin, addrs }) = direct else {
        return None;
    };
    if !matches!(conn, Conn::Quic(_)) || pin.parse::<crate::net::tls::pin::Pin>().is_err() {
        return None;
    }
    Some(Offered {
        pin,
        addrs: seen_first(conn.remote(), &addrs),
    })
}

/// `seen`, then the addresses a peer names for itself, at most
/// [`MAX_CANDIDATES`] in all.
fn seen_first(seen: SocketAddr, own: &[String]) -> Vec<SocketAddr> {
    let mut addrs = vec![seen];
    for addr in candidates(own) {
        if addrs.len() < MAX_CANDIDATES && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs
}

/// The two halves of an introduction: [`Direct::Expect`] for the host,
/// [`Direct::Meet`] for the client.
pub(super) struct Introduction {
    pub expect: Direct,
    pub meet: Direct,
}

/// Why a client that asked was not introduced, for the metrics.
#[derive(Debug, Clone, Copy)]
pub(super) enum NotIntroduced {
    /// The client or the host is over TCP, or the host takes no direct
    /// connections.
    NoPath,
    /// The client's token asks faster than [`INTRODUCTIONS_PER_CLIENT`].
    Limited,
    /// No random numbers for a ticket.
    NoTicket,
}

impl NotIntroduced {
    pub fn as_str(self) -> &'static str {
        match self {
            NotIntroduced::NoPath => "no_path",
            NotIntroduced::Limited => "limited",
            NotIntroduced::NoTicket => "no_ticket",
        }
    }
}

/// The client that asked for it, as the relay knows it.
pub(super) struct Asking<'a> {
    pub conn: &'a Conn,
    /// Its token, as the relay's limits count it.
    pub token: &'a str,
    /// When its token expires (Unix seconds).
    pub expires_at: u64,
}

/// Introduces `client`, which asked with `ask`, to a host that `offered`;
/// counted in the relay's metrics either way.
pub(super) fn introduce(
    state: &State,
    client: &Asking<'_>,
    ask: Direct,
    offered: Option<&Offered>,
) -> Result<Introduction, NotIntroduced> {
    let made = make(state, client, ask, offered);
    let outcome = match &made {
        Ok(_) => "made",
        Err(why) => why.as_str(),
    };
    state.metrics.introduced(outcome);
    made
}

fn make(
    state: &State,
    client: &Asking<'_>,
    ask: Direct,
    offered: Option<&Offered>,
) -> Result<Introduction, NotIntroduced> {
    let (Direct::Ask { addrs }, Some(offered), Conn::Quic(_)) = (ask, offered, client.conn) else {
        return Err(NotIntroduced::NoPath);
    };
    let (rate, burst) = INTRODUCTIONS_PER_CLIENT;
    let token = client.token.to_owned();
    if (state.introductions)
        .take(&token, Instant::now(), rate, burst)
        .is_err()
    {
        return Err(NotIntroduced::Limited);
    }
    let mut bytes = [0u8; TICKET_HEX_LEN / 2];
    (ring::rand::SystemRandom::new())
        .fill(&mut bytes)
        .map_err(|_| NotIntroduced::NoTicket)?;
    let ticket = hex::encode(bytes);
    let from = seen_first(client.conn.remote(), &addrs);
    Ok(Introduction {
        expect: Direct::Expect {
            ticket: ticket.clone(),
            addrs: written(&from),
            expires_at: client.expires_at,
        },
        meet: Direct::Meet {
            ticket,
            addrs: written(&offered.addrs),
            pin: offered.pin.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seen_address_comes_first_and_the_list_stays_short() {
        let seen: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let own: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:4000")).collect();
        let got = seen_first(seen, &own);
        assert_eq!(got[0], seen);
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(seen_first(seen, &[seen.to_string()]), vec![seen]);
    }
}
