//! Real OpenSSH end to end: a private sshd, relay, host agent and client
//! forwarder, and the `ssh` client talking through them.

mod support;

use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;
use tokio::io::AsyncWriteExt;

/// A relay, a host agent in front of a private sshd, and a client forwarder.
struct Rig {
    sshd: Sshd,
    client_port: u16,
    _tunnel: Tunnel,
    _host: Peer,
}

async fn rig() -> Option<Rig> {
    let sshd = Sshd::start().await?;
    let tunnel = Tunnel::start().await;
    let host = tunnel.host("lab1", sshd.addr()).await;
    let client_port = tunnel.client("lab1").await.port();
    Some(Rig {
        sshd,
        client_port,
        _tunnel: tunnel,
        _host: host,
    })
}

/// Runs `remote` over ssh through the tunnel; returns stdout, failing with
/// stderr and sshd's log if ssh fails.
async fn ssh_output(rig: &Rig, remote: &str) -> String {
    let out = within(
        Duration::from_secs(120),
        &format!("ssh {remote:?}"),
        rig.sshd.ssh(rig.client_port, remote).output(),
    )
    .await
    .expect("ssh runs");
    assert!(
        out.status.success(),
        "ssh {remote:?} failed: {}\nstderr: {}\nsshd log: {:#?}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        rig.sshd.log()
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_echo_hello_through_the_tunnel() {
    let Some(rig) = rig().await else { return };
    assert_eq!(ssh_output(&rig, "echo hello").await, "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_ssh_sessions_run_a_live_command_to_the_end() {
    let Some(rig) = rig().await else { return };
    let cmd = "top -b -n 3 -d 0.3; echo top-done";
    let (a, b, c) = tokio::join!(
        ssh_output(&rig, cmd),
        ssh_output(&rig, cmd),
        ssh_output(&rig, cmd)
    );
    for out in [a, b, c] {
        assert_eq!(
            out.matches("top - ").count(),
            3,
            "three screens of top in:\n{out}"
        );
        assert!(out.ends_with("top-done\n"), "output ends early:\n{out}");
    }
}

const BIG: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_carries_256_mib_each_way_with_equal_sha256() {
    let Some(rig) = rig().await else { return };

    // Host to client: a file of noise on the sshd side, read with cat.
    let file = rig.sshd.dir.path().join("big");
    let file_hash = {
        let mut f = tokio::fs::File::create(&file).await.unwrap();
        let h = write_noise(&mut f, 42, BIG).await;
        f.flush().await.unwrap();
        h
    };
    let download = async {
        let mut child = rig
            .sshd
            .ssh(rig.client_port, &format!("cat {}", file.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (count, hash) = hash_to_end(&mut stdout).await;
        let status = child.wait().await.unwrap();
        assert!(status.success(), "download ssh failed: {status}");
        assert_eq!(count, BIG, "downloaded byte count");
        assert_eq!(hex(&hash), hex(&file_hash), "downloaded SHA-256");
    };

    // Client to host: noise piped into sha256sum on the sshd side.
    let upload = async {
        let mut child = rig
            .sshd
            .ssh(rig.client_port, "sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let sent = write_noise(&mut stdin, 7, BIG).await;
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "upload ssh failed: {}", out.status);
        let remote = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            remote.split_whitespace().next(),
            Some(hex(&sent).as_str()),
            "uploaded SHA-256"
        );
    };

    within(Duration::from_secs(300), "256 MiB each way", async {
        tokio::join!(download, upload)
    })
    .await;
    // The hash helper itself: sanity check against a known vector.
    assert_eq!(
        hex(&Sha256::digest(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_carries_a_real_ssh_session_and_stops_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Some(sshd) = Sshd::start().await else {
        return;
    };
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_shellrelay"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &sshd.addr().to_string(),
        ])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let port: u16 = within(WAIT, "the demo's ssh command", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim().strip_prefix("ssh -p ") {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("the demo ended without printing an ssh command");
    })
    .await;
    let out = within(
        WAIT,
        "ssh through the demo",
        sshd.ssh(port, "echo demo-ok").output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "demo-ok\n");

    let pid = demo.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = within(WAIT, "the demo to stop", demo.wait()).await.unwrap();
    assert!(status.success(), "demo exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_cat_into_a_file_ends_with_the_file_complete() {
    let Some(rig) = rig().await else { return };
    let source = rig.sshd.dir.path().join("source");
    let copy = rig.sshd.dir.path().join("copy");
    let len = 32u64 << 20;
    let sent = {
        let mut f = tokio::fs::File::create(&source).await.unwrap();
        let h = write_noise(&mut f, 5, len).await;
        f.flush().await.unwrap();
        h
    };
    // `ssh host 'cat > f' < file`: the end of stdin is the only signal that
    // the copy is complete, so the half-close must travel end to end.
    let stdin = std::fs::File::open(&source).unwrap();
    let status = within(
        Duration::from_secs(120),
        "ssh cat > f",
        rig.sshd
            .ssh(rig.client_port, &format!("cat > {}", copy.display()))
            .stdin(stdin)
            .status(),
    )
    .await
    .unwrap();
    assert!(status.success(), "ssh failed: {status}");
    let mut f = tokio::fs::File::open(&copy).await.unwrap();
    let (count, got) = hash_to_end(&mut f).await;
    assert_eq!(count, len);
    assert_eq!(hex(&got), hex(&sent));
}
