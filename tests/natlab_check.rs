//! The NAT lab's NATs behave as [`support::natlab`] says, shown with a
//! plain UDP hole punch and no shellrelay code: a relay socket in the wan
//! notes where the client's and the host's sockets come from (their public
//! mappings), then each sends to the other's mapping every 20 ms from the
//! same socket for up to 2 s and waits for the other's datagram.
//!
//! Observed, and asserted (client × host):
//!
//! | client \ host | Public    | Cone     | Symmetric |
//! |---------------|-----------|----------|-----------|
//! | Public        | punch     | punch    | new port* |
//! | Cone          | punch     | punch    | no punch  |
//! | Symmetric     | new port* | no punch | no punch  |
//!
//! "punch": both sides get the other's datagram, from the very mapping
//! the relay saw. "no punch": neither side gets anything. "new port*":
//! the public side's datagrams to the symmetric side's mapping are
//! dropped, but the symmetric side's reach the public side from its
//! public IP and a new port (a mapping of its own for this destination),
//! and answers to that port get through.
//!
//! Behind one cone NAT there is no hairpin: the punch to the public
//! mappings fails both ways, the LAN addresses work. On IPv6 behind two
//! stateful firewalls the punch works. Needs root: skipped with a note
//! without it, a failure under `CI=true`.

mod support;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use support::natlab::{bind_udp, Layout, Nat, NatLab};

/// How long a punch keeps sending before the side that got nothing gives up.
const PUNCH: Duration = Duration::from_secs(2);
/// How often each side sends during a punch.
const EVERY: Duration = Duration::from_millis(20);
/// What the client and the host send, in that order.
const WORDS: [&[u8]; 2] = [b"from the client", b"from the host"];

/// The lab for `layout`, or `None` (with a note) where it cannot run.
fn lab(layout: Layout) -> Option<NatLab> {
    if let Some(why) = NatLab::unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}, and CI=true"
        );
        eprintln!("\n!!! SKIPPED: {why} !!!\n");
        return None;
    }
    Some(NatLab::start(layout))
}

/// A client and a host socket, and where the relay saw each come from.
struct Met {
    client: UdpSocket,
    host: UdpSocket,
    client_seen: SocketAddr,
    host_seen: SocketAddr,
}

/// Binds the client's and the host's sockets in their namespaces (on the
/// relay's address family) and has each send one datagram to a relay
/// socket in the wan, which notes their sources.
fn meet(lab: &NatLab) -> Met {
    let relay = bind_udp(&lab.wan, SocketAddr::new(lab.relay_ip(), 0));
    let relay_at = relay.local_addr().unwrap();
    let any: IpAddr = match relay_at {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let client = bind_udp(&lab.client, SocketAddr::new(any, 0));
    let host = bind_udp(&lab.host, SocketAddr::new(any, 0));
    client.send_to(WORDS[0], relay_at).unwrap();
    host.send_to(WORDS[1], relay_at).unwrap();
    let mut seen = [None, None];
    let deadline = Instant::now() + PUNCH;
    let mut buf = [0u8; 64];
    while seen.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the relay heard only {seen:?} in {PUNCH:?}"
        );
        relay.set_read_timeout(Some(left)).unwrap();
        let Ok((n, from)) = relay.recv_from(&mut buf) else {
            continue;
        };
        if let Some(i) = WORDS.iter().position(|w| *w == &buf[..n]) {
            seen[i] = Some(from);
        }
    }
    Met {
        client,
        host,
        client_seen: seen[0].unwrap(),
        host_seen: seen[1].unwrap(),
    }
}

/// Client and host each send to `to[i]` every [`EVERY`] from their one
/// socket until both have had the other's datagram, or for [`PUNCH`];
/// returns where each (client, host) got the other's from, if it did.
fn exchange(met: &Met, to: [SocketAddr; 2]) -> [Option<SocketAddr>; 2] {
    let socks = [&met.client, &met.host];
    for s in socks {
        s.set_nonblocking(true).unwrap();
    }
    let mut got = [None, None];
    let deadline = Instant::now() + PUNCH;
    let mut next = Instant::now();
    let mut buf = [0u8; 64];
    while got.iter().any(Option::is_none) && Instant::now() < deadline {
        if Instant::now() >= next {
            for (i, s) in socks.iter().enumerate() {
                if let Err(e) = s.send_to(WORDS[i], to[i]) {
                    // An ICMP error from an earlier datagram, at most.
                    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
                }
            }
            next += EVERY;
        }
        readable(&socks, next.min(deadline));
        for (i, s) in socks.iter().enumerate() {
            loop {
                match s.recv_from(&mut buf) {
                    Ok((n, from)) if buf[..n] == *WORDS[1 - i] => {
                        got[i].get_or_insert(from);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
                }
            }
        }
    }
    got
}

/// Waits until one of `socks` is readable or `until` comes.
fn readable(socks: &[&UdpSocket; 2], until: Instant) {
    let mut fds = socks.map(|s| libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = until.saturating_duration_since(Instant::now()).as_millis();
    // SAFETY: two pollfds we own, and their count.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, ms as libc::c_int + 1) };
}

/// Meets at the relay in a [`Layout::Pair`] and punches to the mappings
/// the relay saw; checks the mappings' addresses on the way.
fn pair(client: Nat, host: Nat) -> Option<(NatLab, Met, [Option<SocketAddr>; 2])> {
    let lab = lab(Layout::Pair { client, host })?;
    let met = meet(&lab);
    assert_eq!(met.client_seen.ip(), lab.client_public_ip());
    assert_eq!(met.host_seen.ip(), lab.host_public_ip());
    let got = exchange(&met, [met.host_seen, met.client_seen]);
    Some((lab, met, got))
}

/// Expected: the punch works both ways, and each side's datagram comes
/// from exactly the mapping the relay saw (endpoint-independent mapping).
fn punches(client: Nat, host: Nat) {
    let Some((_lab, met, got)) = pair(client, host) else {
        return;
    };
    assert_eq!(
        got,
        [Some(met.host_seen), Some(met.client_seen)],
        "{client:?} client, {host:?} host: (client got, host got)"
    );
}

/// Expected: neither side gets the other's datagram, and the routers
/// dropped what came unasked.
fn does_not_punch(client: Nat, host: Nat) {
    let Some((lab, _met, got)) = pair(client, host) else {
        return;
    };
    assert_eq!(got, [None, None], "{client:?} client, {host:?} host");
    assert!(lab.dropped() > 0, "the routers dropped nothing");
}

/// Expected with a public side and a symmetric side: the public side's
/// datagrams to the symmetric side's relay-seen mapping are dropped, but
/// the symmetric side's datagrams reach the public side, from the same IP
/// and a fresh random port (a new mapping for the new destination; the
/// same port would be a 1 in 64512 chance). Answering that source works:
/// what a QUIC handshake started from the symmetric side would use.
fn meets_at_the_symmetric_sides_new_port(client: Nat, host: Nat) {
    let Some((lab, met, got)) = pair(client, host) else {
        return;
    };
    let sym = usize::from(host == Nat::Symmetric);
    let public = 1 - sym;
    let sym_seen = [met.client_seen, met.host_seen][sym];
    assert_eq!(got[sym], None, "the symmetric side got the public side's");
    let new = got[public].expect("the public side got nothing");
    assert_eq!(new.ip(), sym_seen.ip());
    assert_ne!(
        new.port(),
        sym_seen.port(),
        "the same mapping as to the relay"
    );
    assert!(
        lab.dropped() > 0,
        "the symmetric side's router dropped nothing"
    );
    let mut to = [met.host_seen, met.client_seen];
    to[public] = new;
    let again = exchange(&met, to);
    assert_eq!(again[sym], Some(to[sym]), "the answer to the new port");
    assert_eq!(again[public], Some(new));
}

#[test]
fn public_and_public_punch() {
    punches(Nat::Public, Nat::Public);
}

#[test]
fn public_client_and_cone_host_punch() {
    punches(Nat::Public, Nat::Cone);
}

#[test]
fn cone_client_and_public_host_punch() {
    punches(Nat::Cone, Nat::Public);
}

#[test]
fn cone_and_cone_punch() {
    punches(Nat::Cone, Nat::Cone);
}

#[test]
fn symmetric_and_symmetric_do_not_punch() {
    does_not_punch(Nat::Symmetric, Nat::Symmetric);
}

#[test]
fn symmetric_client_and_cone_host_do_not_punch() {
    does_not_punch(Nat::Symmetric, Nat::Cone);
}

#[test]
fn cone_client_and_symmetric_host_do_not_punch() {
    does_not_punch(Nat::Cone, Nat::Symmetric);
}

#[test]
fn public_client_meets_a_symmetric_host_at_its_new_port() {
    meets_at_the_symmetric_sides_new_port(Nat::Public, Nat::Symmetric);
}

#[test]
fn symmetric_client_meets_a_public_host_at_its_new_port() {
    meets_at_the_symmetric_sides_new_port(Nat::Symmetric, Nat::Public);
}

/// Expected behind one cone NAT: both mappings on the router's one public
/// address, no hairpin (the router does not send a datagram for its own
/// outside address back in), and the LAN addresses work.
#[test]
fn same_nat_has_no_hairpin_but_the_lan_works() {
    let Some(lab) = lab(Layout::SameNat) else {
        return;
    };
    let met = meet(&lab);
    assert_eq!(met.client_seen.ip(), lab.client_public_ip());
    assert_eq!(met.host_seen.ip(), lab.client_public_ip());
    assert_ne!(met.client_seen.port(), met.host_seen.port());
    let got = exchange(&met, [met.host_seen, met.client_seen]);
    assert_eq!(got, [None, None], "a hairpin through the router");
    let lan = |ip: IpAddr, s: &UdpSocket| SocketAddr::new(ip, s.local_addr().unwrap().port());
    let (client_lan, host_lan) = (
        lan(lab.client_ip(), &met.client),
        lan(lab.host_ip(), &met.host),
    );
    let got = exchange(&met, [host_lan, client_lan]);
    assert_eq!(got, [Some(host_lan), Some(client_lan)]);
}

/// Expected on IPv6: the relay sees the nodes' own addresses, and the
/// punch gets through both stateful firewalls.
#[test]
fn ipv6_punches_through_two_stateful_firewalls() {
    let Some(lab) = lab(Layout::Ipv6) else {
        return;
    };
    let met = meet(&lab);
    assert_eq!(met.client_seen.ip(), lab.client_ip());
    assert_eq!(met.host_seen.ip(), lab.host_ip());
    let got = exchange(&met, [met.host_seen, met.client_seen]);
    assert_eq!(got, [Some(met.host_seen), Some(met.client_seen)]);
}
