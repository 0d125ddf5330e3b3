//! A fleet of relays named by DNS, with no database: the A and AAAA records
//! of one name are the relays, and a host registers with `k` of them chosen
//! by rendezvous hashing of (host id, relay address). A client computes the
//! same `k` from the same records and asks them, so no relay needs to know
//! of another, and nothing is shared but DNS. A relay that joins or leaves
//! moves only the hosts whose `k` it enters or leaves (about `k / N` of
//! them).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::net::transport::dial::RelayAddr;

/// How a peer uses a fleet: `k` relays per host, and for a host agent how
/// often it looks at DNS again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fleet {
    /// Relays per host.
    pub k: usize,
    /// How often a host agent resolves the fleet's name again.
    pub refresh: Duration,
}

/// The relays of the fleet `name` (`HOST:PORT`): every address it
/// resolves to, each once, in a stable order.
pub async fn members(name: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut all: Vec<SocketAddr> = tokio::net::lookup_host(name)
        .await
        .with_context(|| format!("could not resolve relay fleet {name}"))?
        .collect();
    all.sort();
    all.dedup();
    anyhow::ensure!(!all.is_empty(), "relay fleet {name} resolves to nothing");
    Ok(all)
}

/// The `k` relays of `members` that host `host` uses, best first: those
/// with the highest SHA-256 of the host id and the relay's address
/// (rendezvous hashing). The same inputs give the same choice everywhere.
pub fn choose(host: &str, members: &[SocketAddr], k: usize) -> Vec<SocketAddr> {
    let mut scored: Vec<([u8; 32], SocketAddr)> = members
        .iter()
        .map(|member| {
            let mut hash = Sha256::new();
            hash.update(host.as_bytes());
            hash.update([0]);
            hash.update(member.to_string().as_bytes());
            (hash.finalize().into(), *member)
        })
        .collect();
    scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    scored.into_iter().take(k).map(|(_, m)| m).collect()
}

/// The relays host `host` uses in the fleet `fleet` names, each dialled at
/// its address and verified as `fleet` says.
pub async fn relays_for(fleet: &RelayAddr, host: &str, k: usize) -> anyhow::Result<Vec<RelayAddr>> {
    let members = members(&fleet.addr).await?;
    Ok(choose(host, &members, k)
        .into_iter()
        .map(|at| RelayAddr {
            at: Some(at),
            ..fleet.clone()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 4433)))
            .collect()
    }

    #[test]
    fn the_choice_is_stable_and_moves_little_when_a_relay_leaves_or_joins() {
        let five = fleet(5);
        let hosts: Vec<String> = (0..1000).map(|i| format!("host-{i}")).collect();
        let mut per_relay = std::collections::HashMap::<SocketAddr, usize>::new();
        let mut moved = 0;
        for host in &hosts {
            let two = choose(host, &five, 2);
            assert_eq!(two.len(), 2);
            assert_ne!(two[0], two[1]);
            // The order of the records does not matter.
            let mut reversed = five.clone();
            reversed.reverse();
            assert_eq!(choose(host, &reversed, 2), two);
            for relay in &two {
                *per_relay.entry(*relay).or_default() += 1;
            }
            // A relay leaving moves only the hosts that used it.
            let four: Vec<SocketAddr> = five[1..].to_vec();
            let after = choose(host, &four, 2);
            if !two.contains(&five[0]) {
                assert_eq!(after, two, "{host}");
            } else {
                moved += 1;
                assert!(after.iter().any(|r| two.contains(r)), "{host} keeps one");
            }
            // A relay joining takes a place only where it ranks first or second.
            let six = fleet(6);
            let joined = choose(host, &six, 2);
            if !joined.contains(&six[5]) {
                assert_eq!(joined, two, "{host}");
            }
        }
        // Spread: each of 5 relays carries about 2/5 of 1000 hosts.
        for (relay, n) in per_relay {
            assert!((300..=500).contains(&n), "{relay}: {n}");
        }
        assert!((300..=500).contains(&moved), "{moved}");
        assert!(choose("h", &[], 2).is_empty());
        assert_eq!(choose("h", &five[..1], 2), [five[0]]);
    }
}
