//! Per-key state that comes and goes: token buckets (new sessions per
//! token and per host, handshakes of a penalised network), penalties, and
//! the networks a peer was admitted from. Every map is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{lock, network_of, MAX_TRACKED_ADDRS};

/// Networks whose peers got in: their address is not forged and someone
/// there holds a token. Each is remembered for [`KNOWN_FOR`] after its
/// last admission, at most `MAX_TRACKED_ADDRS` of them (past that the
/// oldest go first), so that a reserve of places before the hello can be
/// kept for them.
#[derive(Debug, Default)]
pub struct Known(Mutex<HashMap<IpAddr, Instant>>);

/// How long a network counts as [`Known`] after its last admission.
pub const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);

impl Known {
    /// Notes that a peer from `addr` was admitted at `now`.
    pub fn admitted(&self, addr: IpAddr, now: Instant) {
        let addr = network_of(addr);
        let mut map = lock(&self.0);
        if map.len() >= MAX_TRACKED_ADDRS && !map.contains_key(&addr) {
            map.retain(|_, seen| now.saturating_duration_since(*seen) < KNOWN_FOR);
            if map.len() >= MAX_TRACKED_ADDRS {
                if let Some(oldest) = map.iter().min_by_key(|(_, s)| **s).map(|(a, _)| *a) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(addr, now);
    }

    /// Whether a peer from `addr`'s network was admitted within
    /// [`KNOWN_FOR`] of `now`.
    pub fn contains(&self, addr: IpAddr, now: Instant) -> bool {
        lock(&self.0)
            .get(&network_of(addr))
            .is_some_and(|seen| now.saturating_duration_since(*seen) < KNOWN_FOR)
    }
}

/// Token buckets per key: each key may do something `rate` times a
/// second on average, `burst` times at once. A key's bucket is forgotten
/// once it has filled up again, and at most `MAX_TRACKED_ADDRS` are kept
/// (past that the fullest go first), so the map stays bounded.
#[derive(Debug)]
pub struct Rates<K>(Mutex<HashMap<K, Bucket>>);

impl<K> Default for Rates<K> {
    fn default() -> Self {
        Rates(Mutex::default())
    }
}

/// A token bucket: tokens left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn now(self, now: Instant, rate: f64, burst: f64) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        (self.tokens + refilled).min(burst)
    }
}

impl<K: std::hash::Hash + Eq + Clone> Rates<K> {
    /// Takes one token from `key`'s bucket, or says how long until one is
    /// there. A `rate` of 0 means no limit.
    pub fn take(&self, key: &K, now: Instant, rate: u32, burst: u32) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let (rate, burst) = (f64::from(rate), f64::from(burst.max(1)));
        let mut map = lock(&self.0);
        if map.len() >= MAX_TRACKED_ADDRS && !map.contains_key(key) {
            map.retain(|_, b| b.now(now, rate, burst) < burst);
            if map.len() >= MAX_TRACKED_ADDRS {
                let fullest = map
                    .iter()
                    .max_by(|a, b| {
                        a.1.now(now, rate, burst)
                            .total_cmp(&b.1.now(now, rate, burst))
                    })
                    .map(|(k, _)| k.clone());
                if let Some(fullest) = fullest {
                    map.remove(&fullest);
                }
            }
        }
        let bucket = map.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = bucket.now(now, rate, burst);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            return Ok(());
        }
        *bucket = Bucket { tokens, at: now };
        Err(Duration::from_secs_f64((1.0 - tokens) / rate))
    }
}

impl<K: std::hash::Hash + Eq + Clone> Rates<K> {
    /// Waits until a token of `key`'s bucket is there and takes it, for
    /// at most `longest` (`None`: as long as it takes). False if that
    /// would take longer.
    pub async fn wait(&self, key: &K, rate: u32, burst: u32, longest: Option<Duration>) -> bool {
        let deadline = longest.map(|l| Instant::now() + l);
        loop {
            let now = Instant::now();
            let wait = match self.take(key, now, rate, burst) {
                Ok(()) => return true,
                Err(wait) => wait,
            };
            if deadline.is_some_and(|d| now + wait > d) {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Keys barred until a time: tokens that opened and abandoned sessions
/// too fast. Entries go once their time has passed; at most
/// `MAX_TRACKED_ADDRS` are kept (past that the soonest to end go first).
#[derive(Debug)]
pub struct Penalties<K>(Mutex<HashMap<K, Instant>>);

impl<K> Default for Penalties<K> {
    fn default() -> Self {
        Penalties(Mutex::default())
    }
}

impl<K: std::hash::Hash + Eq + Clone> Penalties<K> {
    /// Bars `key` until `until`.
    pub fn impose(&self, key: K, until: Instant, now: Instant) {
        let mut map = lock(&self.0);
        map.retain(|_, end| *end > now);
        if map.len() >= MAX_TRACKED_ADDRS {
            if let Some(soonest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                map.remove(&soonest);
            }
        }
        map.insert(key, until);
    }

    /// How long `key` is still barred at `now`, if it is.
    pub fn left(&self, key: &K, now: Instant) -> Option<Duration> {
        let end = *lock(&self.0).get(key)?;
        (end > now).then(|| end - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let r: Rates<&str> = Rates::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(r.take(&"a", t0, 10, 100).is_ok());
        }
        let wait = r.take(&"a", t0, 10, 100).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(r.take(&"b", t0, 10, 100).is_ok(), "keys apart");
        assert!(r
            .take(&"a", t0 + Duration::from_millis(100), 10, 100)
            .is_ok());
        assert!(r
            .take(&"a", t0 + Duration::from_millis(110), 10, 100)
            .is_err());
        assert!(r.take(&"a", t0, 0, 0).is_ok(), "a rate of 0 is no limit");
    }

    #[test]
    fn known_networks_and_penalties_expire() {
        let k = Known::default();
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        k.admitted(a, t0);
        assert!(k.contains("2001:db8::2".parse().unwrap(), t0), "same /64");
        assert!(!k.contains("10.0.0.1".parse().unwrap(), t0));
        assert!(!k.contains(a, t0 + KNOWN_FOR));
        let p: Penalties<&str> = Penalties::default();
        p.impose("x", t0 + Duration::from_secs(60), t0);
        assert_eq!(
            p.left(&"x", t0 + Duration::from_secs(50)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(p.left(&"x", t0 + Duration::from_secs(60)), None);
        assert_eq!(p.left(&"y", t0), None);
    }
}
