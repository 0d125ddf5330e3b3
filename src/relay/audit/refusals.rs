//! Refusal lines at a bounded rate: in each [`WINDOW`], at most
//! [`PER_NETWORK`] from one network and [`IN_ALL`] in all are written; the
//! rest are counted, and when the window ends one `refused_summary` line
//! per network (the [`SUMMARIES`] with most, then one for all others)
//! says how many were left out. A network is an IPv4 address or an IPv6
//! /64 ([`network_of`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ops::limits::network_of;

/// How long a window lasts; the same as the relay's summarised warnings.
pub(super) const WINDOW: Duration = crate::relay::throttle::WINDOW;

/// Refusal lines written per network per window: a network's first few
/// refusals whole, enough to see what it tried.
pub(super) const PER_NETWORK: u32 = 10;

/// Refusal lines written per window from all networks together: ten a
/// second, which no honest crowd of peers comes near, while a peer with
/// many networks (IPv6 /64s are cheap) cannot write more.
pub(super) const IN_ALL: u32 = 100;

/// Networks counted one by one in a window; refusals from networks past
/// these are counted together (as `others`). Bounds the map's memory.
pub(super) const MAX_NETWORKS: usize = 4096;

/// Networks named in their own summary line when a window ends; the rest
/// share one line.
pub(super) const SUMMARIES: usize = 16;

/// The refusals of the current window.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// When the window started; none while no refusal came.
    start: Option<Instant>,
    /// Lines written in it, in all.
    written: u32,
    networks: HashMap<IpAddr, Count>,
    /// Left out from networks past [`MAX_NETWORKS`].
    others: u64,
}

#[derive(Debug, Default)]
struct Count {
    written: u32,
    left_out: u64,
}

/// A `refused_summary` line: the refusal lines from `network` (or from
/// `others`) left out of a window.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(super) struct Summary {
    pub network: String,
    pub left_out: u64,
}

impl Refusals {
    /// Whether a refusal from `ip` at `now` is written; if not, it is
    /// counted. Call [`Refusals::end`] first, so that a window that is
    /// over is summarised before the next begins.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.start.get_or_insert(now);
        let network = network_of(ip);
        let full = self.networks.len() >= MAX_NETWORKS;
        let count = match self.networks.get_mut(&network) {
            Some(count) => count,
            None if full => {
                self.others += 1;
                return false;
            }
            None => self.networks.entry(network).or_default(),
        };
        if count.written < PER_NETWORK && self.written < IN_ALL {
            count.written += 1;
            self.written += 1;
            true
        } else {
            count.left_out += 1;
            false
        }
    }

    /// When the current window ends, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.start.map(|start| start + WINDOW)
    }

    /// The summaries of the window, if it is over at `now`; a new one
    /// starts with the next refusal.
    pub fn end(&mut self, now: Instant) -> Vec<Summary> {
        match self.deadline() {
            Some(deadline) if now >= deadline => self.finish(),
            _ => Vec::new(),
        }
    }

    /// The summaries of the window, over or not (the relay stops).
    pub fn finish(&mut self) -> Vec<Summary> {
        let done = std::mem::take(self);
        let mut left: Vec<(IpAddr, u64)> = (done.networks.into_iter())
            .filter(|(_, c)| c.left_out > 0)
            .map(|(network, c)| (network, c.left_out))
            .collect();
        left.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let rest = left.split_off(left.len().min(SUMMARIES));
        let others = done.others + rest.iter().map(|(_, n)| n).sum::<u64>();
        let mut summaries: Vec<Summary> = (left.into_iter())
            .map(|(network, left_out)| Summary {
                network: network.to_string(),
                left_out,
            })
            .collect();
        if others > 0 {
            summaries.push(Summary {
                network: "others".into(),
                left_out: others,
            });
        }
        summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_network_gets_its_lines_then_a_count() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        let written = (0..1000).filter(|_| r.allow(ip("203.0.113.9"), t0)).count();
        assert_eq!(written, PER_NETWORK as usize);
        // Another address of the same IPv6 /64 is the same network.
        assert!(r.allow(ip("2001:db8::1"), t0));
        for _ in 1..PER_NETWORK {
            r.allow(ip("2001:db8::2"), t0);
        }
        assert!(!r.allow(ip("2001:db8::ffff"), t0));
        assert!(r.allow(ip("2001:db8:0:1::1"), t0), "another /64");
        assert_eq!(r.end(t0 + WINDOW / 2), []);
        let summaries = r.end(t0 + WINDOW);
        let summary = |network: &str, left_out| Summary {
            network: network.into(),
            left_out,
        };
        assert_eq!(
            summaries,
            [summary("203.0.113.9", 990), summary("2001:db8::", 1)]
        );
        assert_eq!(r.deadline(), None);
        assert!(r.allow(ip("203.0.113.9"), t0 + WINDOW), "a new window");
    }

    #[test]
    fn many_networks_write_no_more_than_the_cap_in_all() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..(MAX_NETWORKS as u32 + 1000) {
            let network = IpAddr::V6(std::net::Ipv6Addr::from_bits(u128::from(i) << 64));
            for _ in 0..2 {
                written += u32::from(r.allow(network, t0));
            }
        }
        assert_eq!(written, IN_ALL);
        let summaries = r.finish();
        assert_eq!(summaries.len(), SUMMARIES + 1);
        let left_out: u64 = summaries.iter().map(|s| s.left_out).sum();
        assert_eq!(
            left_out,
            2 * (MAX_NETWORKS as u64 + 1000) - u64::from(IN_ALL)
        );
        assert_eq!(summaries[SUMMARIES].network, "others");
        assert!(r.networks.is_empty() && r.start.is_none());
    }
}
