//! The WAN lab comes up and real ssh crosses it: client, relay and host in
//! network namespaces of their own, joined by wires of 10 ms one way,
//! 100 Mbit/s and 1 % loss each ([`support::wan`]). `cargo bench --bench
//! wan` measures on the same lab; this only checks that bytes arrive
//! intact. Needs root: skipped with a note without it, a failure under
//! `CI=true`.

mod support;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use support::bin::*;
use support::proc::{field, Proc};
use support::sshd::Sshd;
use support::traffic::hex;
use support::wan::{Lab, Wire, RELAY_CLIENT_SIDE, RELAY_HOST_SIDE};
use support::{within, WAIT};
use tokio::io::AsyncWriteExt;

const LOSSY: Wire = Wire {
    delay: Duration::from_millis(10),
    rate: 100_000_000,
    queue: Duration::from_millis(50),
    loss: 0.01,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_crosses_a_lossy_wan_through_the_relay_with_bytes_intact() {
    if let Some(why) = Lab::unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}, and CI=true"
        );
        eprintln!("\n!!! SKIPPED: {why} !!!\n");
        return;
    }
    let lab = Lab::start(LOSSY);
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    let names = format!("{RELAY_CLIENT_SIDE},{RELAY_HOST_SIDE}");
    let mut relay = Proc::spawn(
        "relay",
        shellrelay_in(
            &lab.relay,
            &[
                "relay",
                "--listen",
                "0.0.0.0:0",
                "--secret-file",
                path_str(&secret),
                "--cert",
                path_str(&cert),
                "--key",
                path_str(&key),
                "--name",
                &names,
            ],
        ),
    );
    let line = relay.wait_for_text("relay listening").await;
    let port = field(&line, "addr")
        .and_then(|a| a.rsplit(':').next())
        .expect("relay port")
        .to_owned();
    let Some(sshd) = Sshd::start_in(Some(&lab.host)).await else {
        return;
    };
    let target = format!("127.0.0.1:{}", sshd.port);
    let mut peers = Vec::new();
    for (role, ns, relay_ip) in [
        ("host", &lab.host, RELAY_HOST_SIDE),
        ("client", &lab.client, RELAY_CLIENT_SIDE),
    ] {
        let token = dir.path().join(format!("{role}.token"));
        std::fs::write(&token, mint_token(&secret, role, "lab1", "1h").await).expect("token");
        make_private(&token);
        let at = format!("{relay_ip}:{port}");
        let mut args = peer_args(role, &at, &cert, &token);
        match role {
            "host" => args.extend(["--target", &target]),
            _ => args.extend(["--listen", "127.0.0.1:0"]),
        }
        peers.push(Proc::spawn(role, shellrelay_in(ns, &args)));
    }
    peers[0].wait_for_text("registered with relay").await;
    let line = peers[1].wait_for_text("client forwarder listening").await;
    let listen: std::net::SocketAddr = field(&line, "listen")
        .expect("listen=")
        .parse()
        .expect("address");

    // 4 MiB each way: up into sha256sum, down out of cat.
    let mut data = vec![0u8; 4 << 20];
    rand::rngs::SmallRng::seed_from_u64(11).fill_bytes(&mut data);
    let want = hex(&Sha256::digest(&data));
    let mut up = sshd.ssh_in(Some(&lab.client), listen.port(), "sha256sum");
    let mut child = up
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let payload = data.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&payload).await.expect("write to ssh");
    });
    let out = within(WAIT * 4, "4 MiB up through ssh", child.wait_with_output())
        .await
        .expect("ssh");
    writer.await.expect("writer");
    assert!(out.status.success(), "{out:?}");
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(got.starts_with(&want), "sha256 up: {got} want {want}");

    let file = sshd.dir.path().join("down.bin");
    std::fs::write(&file, &data).expect("write file");
    let remote = format!("cat {}", file.display());
    let mut down = sshd.ssh_in(Some(&lab.client), listen.port(), &remote);
    let out = within(WAIT * 4, "4 MiB down through ssh", down.output())
        .await
        .expect("ssh");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(hex(&Sha256::digest(&out.stdout)), want, "sha256 down");

    // The wires did lose packets on the way.
    let lost: u64 = lab
        .stats
        .iter()
        .map(|s| s.lost.load(Ordering::Relaxed))
        .sum();
    assert!(lost > 0, "the wires lost nothing: the lab is not lossy");
    eprintln!(
        "wires: {} packets forwarded, {lost} lost",
        lab.stats
            .iter()
            .map(|s| s.forwarded.load(Ordering::Relaxed))
            .sum::<u64>()
    );
}
