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
use support::sshd::Sshd;
use support::traffic::hex;
use support::wan::{Lab, Wire};
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
    let Some(sshd) = Sshd::start_in(Some(&lab.host)).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let target = format!("127.0.0.1:{}", sshd.port);
    let relayed = lab.shellrelay(dir.path(), &target, &[]).await;
    let port = relayed.port;

    // 4 MiB each way: up into sha256sum, down out of cat.
    let mut data = vec![0u8; 4 << 20];
    rand::rngs::SmallRng::seed_from_u64(11).fill_bytes(&mut data);
    let want = hex(&Sha256::digest(&data));
    let mut up = sshd.ssh_in(Some(&lab.client), port, "sha256sum");
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
    let mut down = sshd.ssh_in(Some(&lab.client), port, &remote);
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
