//! A host id held by a connection that went silent: an impostor with the
//! host's token takes the registration, and is then killed without a word
//! (SIGKILL). The real agent, refused while the impostor held the id, asks
//! again every second; the relay finds the holder does not answer, closes
//! it and hands the id back, and ssh through the forwarder works again.
#![cfg(unix)]

mod support;

use std::time::Instant;

use support::bin::{peer_args, shellrelay, start_relay, token_file, write_secret};
use support::proc::{addr_field, Proc};
use support::sshd::Sshd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_impostor_gives_the_host_id_back_within_seconds() {
    let Some(sshd) = Sshd::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let (mut relay, at) = start_relay(dir.path(), &secret).await;
    let (at, cert) = (at.to_string(), dir.path().join("relay.crt"));
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let client_token = token_file(&secret, dir.path(), "client.token", "client", "lab1").await;
    let target = sshd.addr().to_string();
    let host = |name: &str, target: &str| {
        let mut args = peer_args("host", &at, &cert, &host_token);
        args.extend(["--target", target]);
        Proc::spawn(name, shellrelay(&args))
    };
    let mut real = host("host", &target);
    real.wait_for_text("registered with relay").await;
    let mut client_args = peer_args("client", &at, &cert, &client_token);
    client_args.extend(["--listen", "127.0.0.1:0"]);
    let mut client = Proc::spawn("client", shellrelay(&client_args));
    let line = client.wait_for_text("client forwarder listening").await;
    let port = addr_field(&line, "listen").port();
    let ssh = |remote: &str| sshd.ssh(port, remote).output();
    let out = ssh("echo before").await.unwrap();
    assert!(out.status.success(), "{}", client.log());

    // The impostor, with the host's token, points at nothing that answers.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut impostor = host("impostor", &nowhere);
    impostor.wait_for_text("registered with relay").await;
    real.wait_for_text("another host agent running with this host id")
        .await;
    // While the impostor lives and answers, the real agent never takes the
    // id: it is refused, again and again.
    for _ in 0..3 {
        relay.wait_for_text("refused host: id taken").await;
    }
    impostor.assert_running();
    assert!(
        !relay.log().contains("did not answer"),
        "a live holder was taken for silent: {}",
        relay.log()
    );

    impostor.signal("KILL");
    impostor.terminate().await;
    let killed = Instant::now();
    real.wait_for_text("registered with relay").await;
    let took = killed.elapsed();
    eprintln!("impostor killed: the real agent registered again after {took:.2?}");
    assert!(relay.log().contains("did not answer"), "{}", relay.log());
    let out = ssh("echo after").await.unwrap();
    assert!(
        out.status.success(),
        "ssh after the takeover: {}\nhost:\n{}\nrelay:\n{}",
        String::from_utf8_lossy(&out.stderr),
        real.log(),
        relay.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
}
