//! The relay's limits on what peers may hold or try: sessions per
//! connection, connections per address in the handshake phase, hosts, and
//! failed token attempts per address. An address here is a network: the
//! IPv4 address, or the /64 of an IPv6 one ([`network_of`]), since one
//! IPv6 host commonly holds a whole /64.

use crate::ops::defaults::{
    CONNECTIONS_PER_CLIENT, FAILURES_PER_ADDR, FAILURE_WINDOW, HANDSHAKES_PER_ADDR, MAX_BUFFERED,
    MAX_HOSTS, SESSIONS_PER_CLIENT, SESSIONS_PER_HOST, SESSION_RATE_PER_CLIENT,
    SESSION_RATE_PER_HOST,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod keyed;

pub use keyed::{Known, Penalties, Rates, KNOWN_FOR};

/// Most addresses the failure limiter remembers; past this, the oldest
/// windows are forgotten first, so a flood of addresses cannot grow it.
pub(crate) const MAX_TRACKED_ADDRS: usize = 65_536;

/// The relay's limits; every field has a flag and the default named above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent sessions per client token (its `jti`, else its subject),
    /// over all of its connections.
    pub sessions_per_client: usize,
    /// Connections per client token (its `jti`, else its subject).
    pub connections_per_client: usize,
    /// Concurrent sessions per host.
    pub sessions_per_host: usize,
    /// Connections per IP address in the handshake phase.
    pub handshakes_per_addr: usize,
    /// Hosts registered at once.
    pub max_hosts: usize,
    /// Refused tokens per IP address per minute.
    pub failures_per_addr: u32,
    /// Bytes of payload the relay may hold buffered, in all; it admits no
    /// more sessions than fit ([`crate::relay::budget`]).
    pub max_buffered: u64,
    /// New sessions per second per client token, on average (0: no
    /// limit); streams beyond it wait to be taken up.
    pub session_rate_per_client: u32,
    /// New sessions per second towards one host, on average (0: no
    /// limit); sessions beyond it are refused.
    pub session_rate_per_host: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_per_client: SESSIONS_PER_CLIENT,
            connections_per_client: CONNECTIONS_PER_CLIENT,
            sessions_per_host: SESSIONS_PER_HOST,
            handshakes_per_addr: HANDSHAKES_PER_ADDR,
            max_hosts: MAX_HOSTS,
            failures_per_addr: FAILURES_PER_ADDR,
            max_buffered: MAX_BUFFERED,
            session_rate_per_client: SESSION_RATE_PER_CLIENT,
            session_rate_per_host: SESSION_RATE_PER_HOST,
        }
    }
}

/// A shared count with a cap; [`Gauge::acquire`] hands out a guard that
/// gives its unit back when dropped.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicUsize>);

/// One unit of a [`Gauge`], returned on drop.
#[derive(Debug)]
pub struct GaugeGuard(Arc<AtomicUsize>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gauge {
    /// Takes one unit if fewer than `cap` are out.
    pub fn acquire(&self, cap: usize) -> Option<GaugeGuard> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| GaugeGuard(self.0.clone()))
    }

    /// Units out now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// The network `ip` belongs to for per-address limits: an IPv4 address
/// (also when mapped into IPv6) as it is, an IPv6 address as its /64.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !0xffff_ffff_ffff_ffff,
            )),
        },
    }
}

/// The IPv6 /48 `ip` belongs to, for IPv6 addresses (not IPv4 ones, mapped
/// or not): a site's usual allocation, 65,536 networks ([`network_of`]),
/// which per-network limits alone would count 65,536 times.
pub fn block_of(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => Some(IpAddr::V6(
            std::net::Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 80) - 1)),
        )),
        _ => None,
    }
}

/// Counts per key, each unit held by a guard; a key's entry goes with its
/// last unit, so the map holds only keys in use.
#[derive(Debug)]
pub struct Counts<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Clone for Counts<K> {
    fn clone(&self) -> Self {
        Counts(self.0.clone())
    }
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts(Arc::default())
    }
}

/// One unit of a [`Counts`], returned on drop.
#[derive(Debug)]
pub struct CountGuard<K: std::hash::Hash + Eq> {
    map: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: std::hash::Hash + Eq> Drop for CountGuard<K> {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Counts<K> {
    /// Takes one unit for `key` if fewer than `cap` are out.
    pub fn acquire(&self, key: K, cap: usize) -> Option<CountGuard<K>> {
        let mut map = lock(&self.0);
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(CountGuard {
            map: self.0.clone(),
            key,
        })
    }
}

impl<K: std::hash::Hash + Eq + Clone> Counts<K> {
    /// Takes one unit of a pool of `pool` for `key`, unless `key` holds
    /// its fair share already. The share is `pool / (others + 2)` units,
    /// where `others` is how many other keys hold units now (the `+ 2`
    /// keeps room for one key more than hold units, so one key alone takes
    /// at most half the pool), never less than `floor` nor more than
    /// `cap`. And past its `floor`, a key takes a unit only if what stays
    /// free after it still holds a newcomer's share (`pool / (others +
    /// 3)`): shares taken early cannot add up to the whole pool. On
    /// refusal, the share that was reached.
    pub fn acquire_share(
        &self,
        key: K,
        pool: usize,
        floor: usize,
        cap: usize,
    ) -> Result<CountGuard<K>, usize> {
        let mut map = lock(&self.0);
        let held = map.get(&key).copied().unwrap_or(0);
        let others = map.len() - usize::from(held > 0 || map.contains_key(&key));
        let share = (pool / others.saturating_add(2)).max(floor).min(cap);
        if held >= share {
            return Err(share);
        }
        let total: usize = map.values().sum();
        let free_after = pool.saturating_sub(total.saturating_add(1));
        let newcomer = pool / others.saturating_add(3);
        if held >= floor.min(cap) && free_after < newcomer {
            return Err(held);
        }
        *map.entry(key.clone()).or_insert(0) += 1;
        Ok(CountGuard {
            map: self.0.clone(),
            key,
        })
    }

    /// Keys holding units now.
    pub fn keys(&self) -> usize {
        lock(&self.0).len()
    }
}

/// Counts per network ([`network_of`]), each unit held by a guard.
#[derive(Debug, Clone, Default)]
pub struct PerAddr(Counts<IpAddr>);

/// One unit of a [`PerAddr`] count, returned on drop.
pub type PerAddrGuard = CountGuard<IpAddr>;

impl PerAddr {
    /// Takes one unit for `addr`'s network if fewer than `cap` are out.
    pub fn acquire(&self, addr: IpAddr, cap: usize) -> Option<PerAddrGuard> {
        self.0.acquire(network_of(addr), cap)
    }

    /// Takes one unit for `addr`'s network from a pool with `free` units
    /// left: a network may hold `cap`, but no more than one
    /// [`FAIR_PARTS`]th of what is free (and at least one). So the last
    /// quarter of a pool is shared out ever more thinly, and it takes
    /// far more networks than `pool / cap` to leave no place for a new
    /// one.
    pub fn acquire_fair(&self, addr: IpAddr, cap: usize, free: usize) -> Option<PerAddrGuard> {
        let cap = cap.min((free / FAIR_PARTS).max(1));
        self.0.acquire(network_of(addr), cap)
    }
}

/// How thinly [`PerAddr::acquire_fair`] shares what is left of a pool:
/// one network gets at most this fraction of the free places. With 16 per
/// network and a pool of 1,024, the cap starts to shrink once a quarter of
/// the pool is left, and each network after that takes about a
/// seventeenth of what remains: 69 networks leave about 70 places free,
/// 100 networks about 11.
pub const FAIR_PARTS: usize = 16;

/// Failed token attempts per network ([`network_of`]) in fixed windows.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl Failures {
    /// Whether `addr` has used up its failures in the current window; if
    /// so, how long until it may try again.
    pub fn blocked(&self, addr: IpAddr, cap: u32, now: Instant) -> Option<Duration> {
        let addr = network_of(addr);
        let map = lock(&self.0);
        let (start, count) = *map.get(&addr)?;
        let elapsed = now.saturating_duration_since(start);
        (elapsed < FAILURE_WINDOW && count >= cap).then(|| FAILURE_WINDOW - elapsed)
    }

    /// Records a failed attempt from `addr`.
    pub fn record(&self, addr: IpAddr, now: Instant) {
        let addr = network_of(addr);
        let mut map = lock(&self.0);
        if map.len() >= MAX_TRACKED_ADDRS && !map.contains_key(&addr) {
            map.retain(|_, (start, _)| now.saturating_duration_since(*start) < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED_ADDRS {
                // Every window is live: forget the oldest to stay bounded.
                if let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(a, _)| *a) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(addr).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a few map operations that cannot
    // leave the map inconsistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_caps_and_gives_back() {
        let g = Gauge::default();
        let a = g.acquire(2).unwrap();
        let _b = g.acquire(2).unwrap();
        assert!(g.acquire(2).is_none());
        drop(a);
        assert!(g.acquire(2).is_some());
    }

    #[test]
    fn a_gauge_never_passes_its_cap_when_taken_from_many_threads() {
        let g = Gauge::default();
        let held: Vec<Vec<GaugeGuard>> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..1000).filter_map(|_| g.acquire(100)).collect()))
                .collect();
            takers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 100);
        assert_eq!(g.get(), 100);
        drop(held);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn per_addr_counts_each_address_apart() {
        let p = PerAddr::default();
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = p.acquire(x, 1).unwrap();
        assert!(p.acquire(x, 1).is_none());
        assert!(p.acquire(y, 1).is_some());
        drop(g1);
        assert!(p.acquire(x, 1).is_some());
        assert!(lock(&p.0 .0).is_empty(), "entries go when their guards do");
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let p = PerAddr::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _g = p.acquire(a, 1).unwrap();
        assert!(p.acquire(b, 1).is_none(), "same /64");
        let _h = p.acquire(other, 1).expect("another /64");
        assert_eq!(lock(&p.0 .0).len(), 2, "two networks");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(network_of(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let f = Failures::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            f.record(a, t0);
        }
        assert!(f.blocked(b, 3, t0).is_some(), "same /64");
        assert!(f.blocked(other, 3, t0).is_none(), "another /64");
    }

    #[test]
    fn one_key_takes_at_most_half_and_newcomers_find_room() {
        let c: Counts<&str> = Counts::default();
        let pool = 100;
        let take = |key, cap| {
            (0..pool)
                .map_while(|_| c.acquire_share(key, pool, 8, cap).ok())
                .collect::<Vec<_>>()
        };
        let hog = take("hog", 1000);
        assert_eq!(hog.len(), 50, "alone, half the pool");
        assert_eq!(c.acquire_share("hog", pool, 8, 1000).err(), Some(50));
        // A second key: up to a third, but leaving a newcomer's quarter.
        let b = take("b", 1000);
        assert_eq!(b.len(), 25);
        // Later keys get their floor while there is room, and the pool
        // never fills before the fifth key has come.
        let later: Vec<_> = ["c", "d"].map(|k| take(k, 1000)).into();
        assert!(later.iter().all(|held| held.len() == 8));
        let e = take("e", 1000);
        assert_eq!(e.len(), 8, "99 of the 100 places held, by five keys");
        // The hard cap wins over the share.
        drop(e);
        assert_eq!(take("f", 1).len(), 1);
        drop(hog);
        assert!(c.acquire_share("hog", pool, 8, 1000).is_ok(), "given back");
        assert_eq!(c.keys(), 3, "keys go with their last unit");
    }

    #[test]
    fn an_ipv6_48_is_one_block_and_ipv4_none() {
        let a: IpAddr = "2001:db8:1:2:3::1".parse().unwrap();
        assert_eq!(block_of(a), Some("2001:db8:1::".parse().unwrap()));
        let b: IpAddr = "2001:db8:1:ffff::9".parse().unwrap();
        assert_eq!(block_of(a), block_of(b), "same /48");
        assert_ne!(block_of(a), block_of("2001:db8:2::1".parse().unwrap()));
        assert_eq!(block_of("10.0.0.1".parse().unwrap()), None);
        assert_eq!(block_of("::ffff:10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn fair_parts_leave_room_for_a_new_network_after_69_full_ones() {
        let p = PerAddr::default();
        let pool = Gauge::default();
        let mut held = Vec::new();
        for net in 0..69u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + net));
            for _ in 0..16 {
                let Some(all) = pool.acquire(1024) else { break };
                let free = 1024 - pool.get();
                match p.acquire_fair(ip, 16, free) {
                    Some(g) => held.push((all, g)),
                    None => break,
                }
            }
        }
        let free = 1024 - pool.get();
        assert!(free >= 50, "only {free} places left for new networks");
        let newcomer: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(p.acquire_fair(newcomer, 16, free).is_some());
    }

    #[test]
    fn failures_block_within_the_window_only() {
        let f = Failures::default();
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(f.blocked(x, 3, t0).is_none());
            f.record(x, t0);
        }
        assert!(f.blocked(x, 3, t0 + Duration::from_secs(1)).is_some());
        assert!(f.blocked(x, 3, t0 + FAILURE_WINDOW).is_none());
        f.record(x, t0 + FAILURE_WINDOW);
        assert!(
            f.blocked(x, 3, t0 + FAILURE_WINDOW).is_none(),
            "a new window starts"
        );
    }
}
