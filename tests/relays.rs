//! Several relays, as processes: a host agent registers with each; the
//! client side (`connect`, the forwarder) takes the first that answers; and
//! when the relay in use is killed with SIGKILL, new sessions go through
//! the other.
#![cfg(unix)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::bin::{
    make_private, path_str, pinned_peer_args, shellrelay, start_relay, token_file, write_secret,
};
use support::proc::{addr_field, field, Proc};
use support::traffic::*;

/// Two relay processes sharing a secret and a key (so one pin trusts
/// both), a host agent registered with both in front of an echo server,
/// and a client token.
struct Rig {
    relays: [(Proc, SocketAddr); 2],
    host: Proc,
    pin: String,
    client_token: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// `A,B`, as `--relay` takes them.
    fn relay_list(&self) -> String {
        format!("{},{}", self.relays[0].1, self.relays[1].1)
    }

    /// The arguments of a client-side role reaching host lab1 through
    /// both relays.
    fn client_args<'a>(&'a self, role: &'a str, relays: &'a str) -> Vec<&'a str> {
        let mut args = pinned_peer_args(role, relays, &self.pin, &self.client_token);
        args.extend(["--host", "lab1"]);
        args
    }
}

/// Two relay processes in `dir` sharing its secret and one key; the pin of
/// that key.
async fn two_relays(dir: &Path, secret: &Path) -> ([(Proc, SocketAddr); 2], String) {
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let (mut relay_a, a) = start_relay(&a_dir, secret).await;
    let pin = field(&relay_a.logged_text("certificate cert=").await, "pin")
        .unwrap()
        .to_owned();
    for file in ["relay.crt", "relay.key"] {
        std::fs::copy(a_dir.join(file), b_dir.join(file)).unwrap();
    }
    make_private(&b_dir.join("relay.key"));
    let (relay_b, b) = start_relay(&b_dir, secret).await;
    ([(relay_a, a), (relay_b, b)], pin)
}

/// Waits for `host` to log one registration with each of `relays`.
async fn registered_with_each(host: &mut Proc, relays: &[(Proc, SocketAddr); 2]) {
    let mut registered = Vec::new();
    for _ in 0..2 {
        let line = host
            .wait_for("registered with relay", |l| {
                l.contains("registered with relay")
            })
            .await;
        registered.push(field(&line, "relay").unwrap().to_owned());
    }
    registered.sort();
    let mut expected: Vec<String> = relays.iter().map(|(_, a)| a.to_string()).collect();
    expected.sort();
    assert_eq!(registered, expected, "{}", host.log());
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let (relays, pin) = two_relays(dir.path(), &secret).await;
    let (a, b) = (relays[0].1, relays[1].1);
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let client_token = token_file(&secret, dir.path(), "client.token", "client", "lab1").await;
    let target = echo_server().await.to_string();
    let both = format!("{a},{b}");
    let mut args = pinned_peer_args("host", &both, &pin, &host_token);
    args.extend(["--target", &target]);
    // Notices a relay that died silently within seconds.
    args.extend(["--keep-alive", "1s", "--idle-timeout", "3s"]);
    let mut host = Proc::spawn("host", shellrelay(&args));
    // One registration with each.
    registered_with_each(&mut host, &relays).await;
    Rig {
        relays,
        host,
        pin,
        client_token,
        _dir: dir,
    }
}

/// Runs `connect` with `args` to the echo target; how long the echo took.
async fn echo_through_connect(args: &[&str]) -> Duration {
    support::bin::echo_via_connect(shellrelay(args)).await
}

/// Kills relay `i` with SIGKILL: no close, no word to its peers.
async fn kill(rig: &mut Rig, i: usize) {
    let relay = &mut rig.relays[i].0;
    relay.signal("KILL");
    relay.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_the_first_relay_that_answers_and_gets_past_a_dead_one() {
    let mut rig = rig().await;
    let both = rig.relay_list();
    let took = echo_through_connect(&rig.client_args("connect", &both)).await;
    eprintln!("connect through A,B, both up: first echo after {took:?}");
    kill(&mut rig, 0).await;
    // A, first in the list, is gone without a word: B answers.
    let took = echo_through_connect(&rig.client_args("connect", &both)).await;
    eprintln!("connect through A,B, A killed: first echo after {took:?}");
    // The host agent keeps its registration with B, and says it lost A.
    let a = rig.relays[0].1.to_string();
    rig.host
        .wait_for("the loss of relay A", |l| {
            l.contains("reconnecting") && l.contains(&a)
        })
        .await;
    rig.host.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_moves_new_sessions_past_a_relay_that_died_silently() {
    let mut rig = rig().await;
    let both = rig.relay_list();
    let mut args = rig.client_args("client", &both);
    args.extend(["--listen", "127.0.0.1:0"]);
    let mut client = Proc::spawn("client", shellrelay(&args));
    let line = client.wait_for_text("client forwarder listening").await;
    let listen = addr_field(&line, "listen");
    let line = client.wait_for_text("connected to relay").await;
    let a = rig.relays[0].1.to_string();
    assert_eq!(field(&line, "relay"), Some(a.as_str()), "{line}");
    let _on_a = ping(listen).await;
    kill(&mut rig, 0).await;
    // The forwarder's connection to A looks alive (SIGKILL sends nothing)
    // until its idle timeout; a new session gets past it.
    // Five at once: one of them finds B, the others use its connection.
    let started = Instant::now();
    let mut after = futures_util::future::join_all((0..5).map(|_| ping(listen))).await;
    let took = started.elapsed();
    eprintln!("five new sessions with relay A killed: echoes after {took:?}");
    let b = rig.relays[1].1.to_string();
    let moved = client.wait_for_text("moved to").await;
    assert!(moved.contains(&b), "{moved}");
    for session in &mut after {
        echo(session, b"still there").await;
    }
    assert_eq!(
        client.log().matches("moved to").count(),
        1,
        "{}",
        client.log()
    );
    // Later sessions go straight to B.
    let started = Instant::now();
    ping(listen).await;
    eprintln!("the next session: echo after {:?}", started.elapsed());
    client.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_for_two_relays_registers_the_host_with_both() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let (relays, _pin) = two_relays(dir.path(), &secret).await;
    let (a, b) = (relays[0].1.to_string(), relays[1].1.to_string());
    let cert = dir.path().join("a/relay.crt");
    let out = support::bin::run(&[
        "invite",
        "--role",
        "host",
        "--host",
        "lab1",
        "--secret-file",
        path_str(&secret),
        "--cert",
        path_str(&cert),
        "--relay",
        &a,
        "--relay",
        &b,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let string_file = dir.path().join("invite");
    std::fs::write(&string_file, &out.stdout).unwrap();
    let home = dir.path().join("home");
    let target = echo_server().await.to_string();
    let join = format!("@{}", string_file.display());
    let mut cmd = shellrelay(&["host", "--join", &join, "--save", "--target", &target]);
    cmd.env("XDG_CONFIG_HOME", &home);
    let mut host = Proc::spawn("host", cmd);
    registered_with_each(&mut host, &relays).await;
    // The saved file names both, and a later start registers with both.
    let saved = std::fs::read_to_string(home.join("shellrelay/host.toml")).unwrap();
    assert!(
        saved.contains(&format!("relay = [\"{a}\", \"{b}\"]")),
        "{saved}"
    );
    host.terminate().await;
    let mut cmd = shellrelay(&["host"]);
    cmd.env("XDG_CONFIG_HOME", &home);
    let mut host = Proc::spawn("host", cmd);
    registered_with_each(&mut host, &relays).await;
}
