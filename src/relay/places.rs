//! Places before the hello: each transport's pool, each network's fair
//! part of it, the reserve for known networks, and the handshakes a
//! network penalised for bad tokens may still try.

use std::net::IpAddr;
use std::time::Instant;

use tracing::warn;

use super::{throttle, State, LOG_TARGET};
use crate::ops::defaults::{KNOWN_RESERVE, MAX_HANDSHAKES, PENALISED_HANDSHAKES};
use crate::ops::limits::{Gauge, GaugeGuard, PerAddr, PerAddrGuard, FAIR_PARTS};

/// One transport's connections before their hello: how many from each
/// network (those that proved their address, for QUIC), and in all.
#[derive(Debug, Default)]
pub(super) struct PreHello {
    pub per_network: PerAddr,
    /// Per IPv6 /48 ([`crate::ops::limits::block_of`]), whose holder has
    /// 65,536 networks.
    pub per_block: PerAddr,
    pub all: Gauge,
}

/// Whether `ip`'s network is penalised for bad tokens at `now`.
pub(super) fn penalised(state: &State, ip: IpAddr, now: Instant) -> bool {
    let limit = state.config.limits.failures_per_addr;
    state.failures.blocked(ip, limit, now).is_some()
}

/// Whether a penalised network may try another handshake now
/// ([`PENALISED_HANDSHAKES`]). A network a peer was admitted from lately
/// is not slowed: behind an office's or a carrier's NAT, someone trying
/// bad tokens must not keep out everyone else there.
pub(super) fn handshake_allowed(state: &State, ip: IpAddr, now: Instant) -> bool {
    if state.known.contains(ip, now) {
        return true;
    }
    let (rate, burst) = PENALISED_HANDSHAKES;
    let network = crate::ops::limits::network_of(ip);
    state
        .penalised_handshakes
        .take(&network, now, rate, burst)
        .is_ok()
}

/// A place before the hello for a connection from `ip` over the
/// transport whose places are `pool`, counted for its network in
/// `per_network`: one of the pool's, within the network's fair part
/// ([`crate::ops::limits::PerAddr::acquire_fair`]), or, with the pool full or
/// the network over its part, one of [`KNOWN_RESERVE`] if the network is
/// known (`known_at` is when, for an address that proved itself).
pub(super) fn pre_hello_slot(
    state: &State,
    pool: &PreHello,
    per_network: &PerAddr,
    ip: IpAddr,
    known_at: impl Into<Option<Instant>>,
) -> Option<Slot> {
    let cap = state.config.limits.handshakes_per_addr;
    // Taken at once, so that attempts accepted together on several
    // threads cannot pass the cap between a check and a take.
    if let Some(all) = pool.all.acquire(MAX_HANDSHAKES) {
        let free = MAX_HANDSHAKES.saturating_sub(pool.all.get());
        // An IPv6 site's networks share its /48's part as well.
        let block = match crate::ops::limits::block_of(ip) {
            Some(block) => {
                let (cap, free) = (cap * BLOCK_NETWORKS, free * FAIR_PARTS / BLOCK_PARTS);
                pool.per_block.acquire_fair(block, cap, free).map(Some)
            }
            None => Some(None),
        };
        if let Some(block) = block {
            if let Some(network) = per_network.acquire_fair(ip, cap, free) {
                return Some(Slot {
                    _all: all,
                    _network: network,
                    _block: block,
                });
            }
        }
    }
    let now = known_at.into()?;
    if !state.known.contains(ip, now) {
        return None;
    }
    let all = state.known_reserve.acquire(KNOWN_RESERVE)?;
    let network = per_network.acquire(ip, cap)?;
    Some(Slot {
        _all: all,
        _network: network,
        _block: None,
    })
}

/// How many networks' caps an IPv6 /48 may hold before the hello.
const BLOCK_NETWORKS: usize = 4;

/// An IPv6 /48 holds at most this fraction of its transport's free places
/// (a network, a [`FAIR_PARTS`]th).
const BLOCK_PARTS: usize = 4;

/// Says, at most once per throttle window, that a transport's places
/// before the hello are full.
pub(super) fn full(state: &State, now: Instant) {
    if let Some(n) = state.handshakes_full.allow(now) {
        warn!(
            target: LOG_TARGET,
            "connections in their handshake fill their places; refusing more{}",
            throttle::left_out(n)
        );
    }
}

/// A connection's place among those before their hello: one of
/// [`MAX_HANDSHAKES`] in all and one of its network's; given back once the
/// peer is admitted or refused.
pub(super) struct Slot {
    _all: GaugeGuard,
    _network: PerAddrGuard,
    _block: Option<PerAddrGuard>,
}
