//! Direct paths on one machine: the relay introduces client and host, new
//! sessions go direct, live ones move there byte-exact, and `--direct off`
//! on either side keeps everything on the relay. Real OpenSSH, real
//! processes, loopback only. The NAT matrix is in `tests/nat.rs`.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use support::direct::{ticker, Places, Rig};
use support::traffic::{hash_to_end, hex, write_noise};
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
    let file = rig.sshd.dir.path().join("noise");
    let want = {
        let mut f = tokio::fs::File::create(&file).await.unwrap();
        let hash = write_noise(&mut f, 7, 8 << 20).await;
        tokio::io::AsyncWriteExt::flush(&mut f).await.unwrap();
        hash
    };
    let mut child = rig
        .ssh(&format!("cat {}", file.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (len, got) = within(support::WAIT, "the download", hash_to_end(&mut out)).await;
    assert!(child.wait().await.unwrap().success());
    assert_eq!((len, hex(&got)), (8 << 20, hex(&want)));
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
        rig.host.lines().iter().any(|l| l.contains("session resumed")),
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
        assert_eq!(rig.host_paths(), ["relay"; 3], "{sides:?}: {}", rig.host.log());
        let said = |p: &support::proc::Proc| p.lines().iter().any(|l| l.contains("direct path"));
        assert!(!said(&rig.client), "{sides:?}: {}", rig.client.log());
    }
}
