//! The NAT matrix: client and host each behind a router of one kind
//! ([`Nat`]: public, a home router's cone NAT, a symmetric NAT), one
//! router for both (the LAN address), and IPv6 behind stateful firewalls.
//! Each pair starts a relay, a host agent in front of a private sshd and a
//! client forwarder in their namespaces, runs one ssh session (on the
//! relay), then checks which path the next one takes, and that it carries
//! a file byte-exact. Needs root; skipped with a loud line without it.

mod support;

use std::io::Write;

use support::direct::{ticker, Extra, Places, Rig};
use support::natlab::{Layout, Nat, NatLab};
use support::wan::in_ns;

/// Peers over QUIC only: a first handshake slowed down (the machine
/// busy, a neighbour discovery) must not make them fall back to TCP,
/// which never goes direct; that fallback is `tests/udp_blocked.rs`'s.
const QUIC: Extra = Extra {
    relay: &[],
    peers: &["--transport", "quic"],
};

/// How the next session must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Relay,
}

async fn pair(layout: Layout, want: Path) {
    if let Some(why) = NatLab::unavailable() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the NAT lab cannot run, and CI=true: {why}");
        }
        eprintln!("\n!!! SKIPPED: {why} !!!\n");
        return;
    }
    let lab = NatLab::start(layout);
    let places = Places {
        relay: Some(&lab.wan),
        host: Some(&lab.host),
        client: Some(&lab.client),
    };
    let Some(mut rig) = Rig::start_with(places, lab.relay_ip(), ("auto", "auto"), QUIC).await
    else {
        return;
    };
    assert_eq!(rig.ssh_output("echo first").await, b"first\n");
    let outcome = rig
        .client
        .wait_for("the direct path's outcome", |l| {
            l.contains("direct path to the host is up") || l.contains("no direct path to the host")
        })
        .await;
    let got = if outcome.contains("is up") {
        Path::Direct
    } else {
        Path::Relay
    };
    assert_eq!(
        got,
        want,
        "{layout:?}: {outcome}\nclient:\n{}",
        rig.client.log()
    );
    // 1 MiB of noise from the host, on the path the client now takes.
    rig.download_checked(1 << 20, 11).await;
    let second = match want {
        Path::Direct => "direct",
        Path::Relay => "relay",
    };
    assert_eq!(
        rig.host_paths(),
        ["relay", second],
        "{layout:?}: {}",
        rig.host.log()
    );
    let _ = std::io::stderr().flush();
}

fn pair_of(client: Nat, host: Nat) -> Layout {
    Layout::Pair { client, host }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_and_public_host_go_direct() {
    pair(pair_of(Nat::Public, Nat::Public), Path::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_and_cone_host_go_direct() {
    pair(pair_of(Nat::Public, Nat::Cone), Path::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_client_and_public_host_go_direct() {
    pair(pair_of(Nat::Cone, Nat::Public), Path::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_client_and_cone_host_go_direct() {
    pair(pair_of(Nat::Cone, Nat::Cone), Path::Direct).await;
}

/// The client's NAT maps it anew towards the host, but a public host
/// admits the introduced address's IP on any port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_client_and_public_host_go_direct() {
    pair(pair_of(Nat::Symmetric, Nat::Public), Path::Direct).await;
}

/// The host's NAT maps it anew towards the client: the client's handshake
/// goes to the port the relay saw, which lets nothing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_and_symmetric_host_stay_on_the_relay() {
    pair(pair_of(Nat::Public, Nat::Symmetric), Path::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cone_client_and_symmetric_host_stay_on_the_relay() {
    pair(pair_of(Nat::Cone, Nat::Symmetric), Path::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_client_and_cone_host_stay_on_the_relay() {
    pair(pair_of(Nat::Symmetric, Nat::Cone), Path::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_client_and_symmetric_host_stay_on_the_relay() {
    pair(pair_of(Nat::Symmetric, Nat::Symmetric), Path::Relay).await;
}

/// Behind one router (no hairpin), the host's LAN address gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_host_behind_one_nat_go_direct_over_the_lan() {
    pair(Layout::SameNat, Path::Direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_behind_stateful_firewalls_goes_direct() {
    pair(Layout::Ipv6, Path::Direct).await;
}

/// A direct path that breaks under a live session (the wan drops what
/// goes between the two routers, as a NAT that forgot its mapping would):
/// the session resumes over the relay, and loses no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_path_that_breaks_resumes_its_session_over_the_relay() {
    if let Some(why) = NatLab::unavailable() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        return eprintln!("\n!!! SKIPPED: {why} !!!\n");
    }
    let lab = NatLab::start(pair_of(Nat::Cone, Nat::Cone));
    let places = Places {
        relay: Some(&lab.wan),
        host: Some(&lab.host),
        client: Some(&lab.client),
    };
    let Some(mut rig) = Rig::start_with(places, lab.relay_ip(), ("auto", "auto"), QUIC).await
    else {
        return;
    };
    assert_eq!(rig.ssh_output("echo first").await, b"first\n");
    rig.direct_up().await;
    let (client, host) = (
        lab.client_public_ip().to_string(),
        lab.host_public_ip().to_string(),
    );
    let cut = async {
        for (from, to) in [(&client, &host), (&host, &client)] {
            let rule = [
                "iptables", "-I", "FORWARD", "-s", from, "-d", to, "-j", "DROP",
            ];
            in_ns(&lab.wan, &rule);
        }
    };
    // 500 lines, one every 10 ms: the path breaks after the first.
    let longest = ticker(&rig, 500, cut).await;
    let resumed = rig.client.wait_for_text("session resumed").await;
    eprintln!("longest gap while the session left the broken direct path: {longest:?}");
    assert!(resumed.contains("path=\"relay\""), "{resumed}");
    assert_eq!(rig.host_paths(), ["relay", "direct"], "{}", rig.host.log());
}
