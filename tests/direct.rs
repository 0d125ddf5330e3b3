//! Direct paths on one machine: the relay introduces client and host, new
//! sessions go direct, live ones move there byte-exact, and `--direct off`
//! on either side keeps everything on the relay. Real OpenSSH, real
//! processes, loopback only. The NAT matrix is in `tests/nat.rs`.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use support::bin::path_str;
use support::direct::{ticker, ticker_over, Extra, Places, Rig};
use support::within;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_session_starts_on_the_relay_and_the_next_goes_direct_byte_exact() {
    let Some(mut rig) = Rig::start(Places::default(), LOOPBACK, ("auto", "auto")).await else {
        return;
    };
    assert_eq!(rig.ssh_output("echo first").await, b"first\n");
    rig.direct_up().await;
    // 8 MiB of noise from the host, hashed at both ends.
    rig.download_checked(8 << 20, 7).await;
    assert_eq!(rig.host_paths(), ["relay", "direct"], "{}", rig.host.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_moves_to_the_direct_path_and_loses_no_line() {
    let Some(mut rig) = Rig::start(Places::default(), LOOPBACK, ("auto", "auto")).await else {
        return;
    };
    // 300 lines, one every 10 ms: the direct path comes up meanwhile, and
    // the session moves to it.
    let longest = ticker(&rig, 300, async {}).await;
    rig.client
        .wait_for_text("session moved to the direct path")
        .await;
    eprintln!("longest gap between two lines: {longest:?}");
    assert_eq!(rig.host_paths(), ["relay"], "{}", rig.host.log());
    assert!(
        rig.host
            .lines()
            .iter()
            .any(|l| l.contains("session resumed") && l.contains("path=\"direct\"")),
        "{}",
        rig.host.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_off_on_either_side_every_session_stays_on_the_relay() {
    for sides in [("off", "auto"), ("auto", "off")] {
        let Some(rig) = Rig::start(Places::default(), LOOPBACK, sides).await else {
            return;
        };
        for _ in 0..3 {
            assert_eq!(rig.ssh_output("echo hi").await, b"hi\n");
        }
        assert_eq!(
            rig.host_paths(),
            ["relay"; 3],
            "{sides:?}: {}",
            rig.host.log()
        );
        let said = |p: &support::proc::Proc| p.lines().iter().any(|l| l.contains("direct path"));
        assert!(!said(&rig.client), "{sides:?}: {}", rig.client.log());
    }
}

/// Without resumption a live session cannot move: it stays on the relay
/// to its end, and only the next session goes direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resumption_only_new_sessions_go_direct() {
    let extra = Extra {
        peers: &["--resume-window", "0"],
        ..Extra::default()
    };
    let rig = Rig::start_with(Places::default(), LOOPBACK, ("auto", "auto"), extra).await;
    let Some(mut rig) = rig else { return };
    ticker(&rig, 100, async {}).await;
    rig.direct_up().await;
    assert_eq!(rig.ssh_output("echo next").await, b"next\n");
    assert_eq!(rig.host_paths(), ["relay", "direct"], "{}", rig.host.log());
    let moved = |l: &String| l.contains("session moved");
    assert!(
        !rig.client.lines().iter().any(moved),
        "{}",
        rig.client.log()
    );
}

/// A client token revoked at the relay: the host closes its direct
/// connection as the relay closes the client's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_client_token_closes_its_direct_connection_at_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let revoked = dir.path().join("revoked");
    std::fs::write(&revoked, "").unwrap();
    let extra = Extra {
        relay: &["--revocation-file", path_str(&revoked)],
        ..Extra::default()
    };
    let rig = Rig::start_with(Places::default(), LOOPBACK, ("auto", "auto"), extra).await;
    let Some(mut rig) = rig else { return };
    assert_eq!(rig.ssh_output("echo first").await, b"first\n");
    rig.direct_up().await;
    let mut ssh = rig.ssh("sleep 120").spawn().expect("ssh runs");
    rig.host.wait_for_text("path=\"direct\"").await;
    std::fs::write(&revoked, "jti alice\n").unwrap();
    let at = std::time::Instant::now();
    rig.host.wait_for_text("direct connection closed").await;
    eprintln!(
        "the direct connection closed {:.2?} after the revocation",
        at.elapsed()
    );
    rig.relay
        .wait_for_text("told the host a client token has ended")
        .await;
    let status = within(support::WAIT, "ssh to end", ssh.wait())
        .await
        .unwrap();
    assert!(!status.success(), "the revoked session ended: {status}");
}

/// `connect` (a process per ssh session) starts its session on the relay,
/// gets its own direct path, and moves the live session to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_moves_its_session_to_the_direct_path() {
    let Some(rig) = Rig::start(Places::default(), LOOPBACK, ("auto", "auto")).await else {
        return;
    };
    let (longest, said) = ticker_over(|remote| rig.ssh_via_connect(remote), 300, async {}).await;
    eprintln!("longest gap between two lines: {longest:?}");
    assert!(said.contains("session moved to the direct path"), "{said}");
    assert_eq!(rig.host_paths(), ["relay"], "{}", rig.host.log());
}
