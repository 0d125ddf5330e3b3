//! A detour lab: the WAN lab's three namespaces ([`super::wan`]) where the
//! relay is out of the way. Client and host are near each other, joined by
//! a short wire; each is far from the relay, on a long wire of its own.
//! A direct path between them is much shorter than the relayed one, and
//! [`Detour::relay_bytes`] counts what still crosses the relay's links.
//!
//! ```text
//!  client ns                       relay ns                        host ns
//!  10.77.1.2 ====long wire 1==== 10.77.1.1   10.77.2.1 ====long wire 2==== 10.77.2.2
//!  10.77.3.1 ===================== short wire 3 ======================== 10.77.3.2
//! ```
//!
//! Plain routing, no NAT: each end reaches the relay over its long wire
//! (default route), and the other end's long-wire address over the short
//! wire, from its own long-wire address (`src`), which is the address the
//! relay sees and introduces. The relay forwards nothing, so routed TCP
//! between client and host (`ssh` to [`HOST`]) takes the short wire too.
//! Setting [`Detour::cut`] makes the short wire drop every packet.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::natlab::bind_udp;
use super::wan::{run_in, Lab, Wire, CLIENT, HOST};

/// The client's end of the short wire.
pub const SHORT_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 77, 3, 1);
/// The host's end of the short wire.
pub const SHORT_HOST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 77, 3, 2);

/// The lab, and what its wires do.
pub struct Detour {
    /// Wires 0 (client-relay) and 1 (relay-host) are long, wire 2
    /// (client-host) short.
    pub lab: Lab,
    /// While set, the short wire drops every packet (the direct path
    /// cannot come up, or breaks).
    pub cut: Arc<AtomicBool>,
    pub long: Wire,
    pub short: Wire,
}

impl Detour {
    /// Builds the namespaces, the three wires and the routes.
    pub fn start(long: Wire, short: Wire) -> Detour {
        let mut lab = Lab::through_relay(long);
        let (client, host) = (lab.client.clone(), lab.host.clone());
        let cut = Arc::default();
        let near = (client.as_str(), SHORT_CLIENT, "cs");
        lab.join(near, (&host, SHORT_HOST, "hs"), short, Arc::clone(&cut));
        run_in(
            &client,
            &format!("ip route add {HOST}/32 via {SHORT_HOST} src {CLIENT}"),
        );
        run_in(
            &host,
            &format!("ip route add {CLIENT}/32 via {SHORT_CLIENT} src {HOST}"),
        );
        Detour {
            lab,
            cut,
            long,
            short,
        }
    }

    /// Bytes both long wires (the relay's links) have moved so far, both
    /// ways, IP headers included.
    pub fn relay_bytes(&self) -> u64 {
        let s = &self.lab.stats;
        s[0].bytes.load(Ordering::Relaxed) + s[1].bytes.load(Ordering::Relaxed)
    }

    /// Bytes the short wire has moved so far, both ways.
    pub fn short_bytes(&self) -> u64 {
        self.lab.stats[2].bytes.load(Ordering::Relaxed)
    }

    /// Round trip over the short wire, and through the relay, with empty
    /// queues and no serialisation.
    pub fn round_trips(&self) -> (Duration, Duration) {
        (self.short.delay * 2, self.long.delay * 4)
    }
}

impl Detour {
    /// Round trips (ms, one every 10 ms) of a small UDP datagram from the
    /// client namespace to an echo at `to` in namespace `ns` and back, as
    /// the wires are now: what the lab itself adds to their delays.
    pub fn udp_round_trips(&self, ns: &str, to: Ipv4Addr, n: usize) -> Vec<f64> {
        let timeout = Some(Duration::from_secs(1));
        let echo = bind_udp(ns, SocketAddr::from((to, 0)));
        let at = echo.local_addr().expect("echo address");
        let me = bind_udp(
            &self.lab.client,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        );
        let _ = (echo.set_read_timeout(timeout), me.set_read_timeout(timeout));
        let server = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((len, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..len], from);
            }
        });
        let mut times = Vec::with_capacity(n);
        let mut buf = [0u8; 64];
        for i in 0..n as u32 {
            let start = Instant::now();
            let _ = me.send_to(&i.to_be_bytes(), at);
            // A late answer to an earlier probe is not this one's.
            while let Ok(len) = me.recv(&mut buf) {
                if buf[..len] == i.to_be_bytes() {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(me);
        let _ = server.join();
        times
    }
}

/// A [`Duration`] as its `Debug` writes it (`4.5ms`, `812.3µs`, `1.2s`),
/// as in a log line's `took=` or `gap=`.
pub fn debug_duration(text: &str) -> Option<Duration> {
    let text = text.trim_matches('"');
    let units: [(&str, f64); 5] = [
        ("ns", 1e-9),
        ("µs", 1e-6),
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
    ];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| Some((text.strip_suffix(unit)?, *scale)))?;
    let secs = number.parse::<f64>().ok()? * scale;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The `p` quantile (0 to 1) of `values`, nearest rank; NaN if empty.
pub fn quantile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n - 1) as f64 * p).round() as usize],
    }
}
