//! Resumable sessions with real OpenSSH and real processes: ssh sessions
//! that outlive their relay (killed with SIGKILL and started again 3 s
//! later), a forwarder stopped for 90 s, and the relay carrying a session
//! dying while another serves; a session whose window has passed
//! ending with a reason the user sees; and one client token's broken
//! sessions kept waiting at a host agent only up to a cap below sshd's
//! `MaxStartups`.
#![cfg(unix)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::bin::write_secret;
use support::bin::{
    jti_token_file, path_str, peer_args, relay_args, shellrelay, start_relay, start_relay_with,
    token_file,
};
use support::http::get;
use support::proc::{addr_field, field, Proc};
use support::sshd::Sshd;
use support::traffic::{counted_echo_server, echo, echo_server, ping};
use support::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

/// Long enough for any of these sessions, short enough to fail a hung one.
const SESSION_LIMIT: Duration = Duration::from_secs(240);

/// Bytes of each bulk transfer.
const BULK: usize = 64 * 1024 * 1024;

/// A relay process, and the directory with its certificate, key and secret.
struct Relay {
    proc: Proc,
    at: SocketAddr,
    dir: PathBuf,
    secret: PathBuf,
}

impl Relay {
    async fn start(dir: &Path, secret: &Path) -> Relay {
        std::fs::create_dir_all(dir).unwrap();
        let (proc, at) = start_relay(dir, secret).await;
        Relay {
            proc,
            at,
            dir: dir.to_owned(),
            secret: secret.to_owned(),
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("relay.crt")
    }

    /// Kills the relay with SIGKILL: no close, no word to its peers.
    async fn kill(&mut self) {
        self.proc.signal("KILL");
        self.proc.terminate().await;
    }

    /// Starts the relay again on its address, with its key and its
    /// metrics on a free port; the metrics' address.
    async fn restart(&mut self) -> SocketAddr {
        let (cert, key) = (self.dir.join("relay.crt"), self.dir.join("relay.key"));
        let listen = self.at.to_string();
        let mut args = relay_args(&listen, &self.secret, &cert, &key);
        args.extend(["--metrics", "127.0.0.1:0"]);
        self.proc = Proc::spawn("relay", shellrelay(&args));
        self.proc.wait_for_text("relay listening").await;
        let line = self.proc.logged_text("metrics listening").await;
        addr_field(&line, "addr")
    }
}

/// Starts a host agent for `target` through `relays` (with the pin of the
/// first's certificate), waiting for its registration with each.
async fn host(relays: &[&Relay], token: &Path, target: &str, extra: &[&str]) -> Proc {
    let list: Vec<String> = relays.iter().map(|r| r.at.to_string()).collect();
    let list = list.join(",");
    let cert = relays[0].cert();
    let mut args = peer_args("host", &list, &cert, token);
    args.extend(["--target", target]);
    args.extend_from_slice(extra);
    let mut host = Proc::spawn("host", shellrelay(&args));
    for _ in relays {
        host.wait_for_text("registered with relay").await;
    }
    host
}

/// Starts a client forwarder through `relays`; it and its port, once it is
/// connected.
async fn forwarder(relays: &[&Relay], token: &Path, extra: &[&str]) -> (Proc, u16) {
    let list: Vec<String> = relays.iter().map(|r| r.at.to_string()).collect();
    let list = list.join(",");
    let cert = relays[0].cert();
    let mut args = peer_args("client", &list, &cert, token);
    args.extend(["--host", "lab1", "--listen", "127.0.0.1:0"]);
    args.extend_from_slice(extra);
    let mut client = Proc::spawn("client", shellrelay(&args));
    let line = client.wait_for_text("client forwarder listening").await;
    let port = field(&line, "listen")
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("forwarder port");
    client.wait_for_text("connected to relay").await;
    (client, port)
}

/// Two relay processes sharing one key and secret (so one certificate
/// pins both) in `dir`.
async fn relays(dir: &Path, secret: &Path, n: usize) -> Vec<Relay> {
    let first = Relay::start(&dir.join("r0"), secret).await;
    let mut all = vec![first];
    for i in 1..n {
        let sub = dir.join(format!("r{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        for file in ["relay.crt", "relay.key"] {
            std::fs::copy(all[0].dir.join(file), sub.join(file)).unwrap();
        }
        support::bin::make_private(&sub.join("relay.key"));
        all.push(Relay::start(&sub, secret).await);
    }
    all
}

/// A directory with a token secret, `n` relays sharing one key, and a
/// host and a client token for host lab1.
struct Setup {
    dir: tempfile::TempDir,
    relays: Vec<Relay>,
    host_token: PathBuf,
    client_token: PathBuf,
}

async fn setup(n: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let relays = relays(dir.path(), &secret, n).await;
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let client_token = token_file(&secret, dir.path(), "client.token", "client", "lab1").await;
    Setup {
        dir,
        relays,
        host_token,
        client_token,
    }
}

/// The printing session: `seq` 1 to 300, a line every 50 ms.
const COUNTING: &str = "for i in $(seq 300); do echo $i; sleep 0.05; done";

/// Runs `ssh` with `remote` through the forwarder on `port`, its stdout
/// read line by line; `started` hears of each line count.
fn counting(
    sshd: &Sshd,
    port: u16,
    options: &[String],
) -> (
    tokio::task::JoinHandle<(Vec<String>, std::process::Output)>,
    watch::Receiver<usize>,
) {
    let mut cmd = sshd.ssh_with(
        None,
        std::net::Ipv4Addr::LOCALHOST,
        port,
        options,
        Some(COUNTING),
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("ssh runs");
    let stdout = child.stdout.take().expect("stdout");
    let (count, lines_seen) = watch::channel(0usize);
    let task = tokio::spawn(async move {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout).lines();
        let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
        while let Ok(Some(line)) = reader.next_line().await {
            if !lines.is_empty() {
                longest = longest.max(last.elapsed());
            }
            last = Instant::now();
            lines.push(line);
            let _ = count.send(lines.len());
        }
        let out = child.wait_with_output().await.expect("ssh ends");
        eprintln!("longest pause in the counting session's output: {longest:.2?}");
        (lines, out)
    });
    (task, lines_seen)
}

/// Checks a counting session printed 1 to 300 in order and ssh exited 0.
fn assert_counted(lines: &[String], out: &std::process::Output, logs: &str) {
    let want: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    assert!(
        out.status.success(),
        "ssh failed: {}: {}\n{logs}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines, want, "the output is not 1 to 300 in order\n{logs}");
}

/// Deterministic bytes, not compressible by anyone on the way.
fn bulk_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Waits until `rx` has seen at least `n`.
async fn reached(rx: &mut watch::Receiver<usize>, n: usize, what: &str) {
    within(SESSION_LIMIT, what, rx.wait_for(|v| *v >= n))
        .await
        .unwrap_or_else(|_| panic!("{what}: the session ended first"));
}

/// The gap of each "session resumed" line `proc` logged.
fn gaps(proc: &Proc) -> Vec<String> {
    (proc.lines().iter())
        .filter(|l| l.contains("session resumed"))
        .map(|l| field(l, "gap").unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_sessions_survive_the_relay_killed_and_started_again_3_s_later() {
    let Some(sshd) = Sshd::start().await else {
        return;
    };
    let Setup {
        dir,
        relays,
        host_token,
        client_token,
    } = setup(1).await;
    let mut relay = relays.into_iter().next().expect("a relay");
    let target = sshd.addr().to_string();
    let mut host = host(
        &[&relay],
        &host_token,
        &target,
        &["--metrics", "127.0.0.1:0"],
    )
    .await;
    let host_metrics = addr_field(&host.logged_text("metrics listening").await, "addr");
    let (client, port) = forwarder(&[&relay], &client_token, &[]).await;

    // Three sessions at once: counting, 64 MiB up, 64 MiB down.
    let (counting, mut lines_seen) = counting(&sshd, port, &[]);
    let data = bulk_bytes(BULK);
    let want = hex_sha256(&data);
    let (killed_tx, killed) = watch::channel(false);
    let (half_up_tx, mut half_up) = watch::channel(0usize);
    let mut up = sshd.ssh(port, "sha256sum");
    up.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut up = up.spawn().expect("ssh runs");
    let mut stdin = up.stdin.take().expect("stdin");
    let upload = {
        let data = data.clone();
        let mut killed = killed.clone();
        tokio::spawn(async move {
            let (first, rest) = data.split_at(BULK / 2);
            stdin.write_all(first).await.expect("first half written");
            let _ = half_up_tx.send(1);
            let _ = killed.wait_for(|k| *k).await;
            stdin.write_all(rest).await.expect("second half written");
            drop(stdin);
            up.wait_with_output().await.expect("ssh ends")
        })
    };
    let file = dir.path().join("bulk");
    std::fs::write(&file, &data).unwrap();
    let mut down = sshd.ssh(port, &format!("cat {}", path_str(&file)));
    down.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut down = down.spawn().expect("ssh runs");
    let mut stdout = down.stdout.take().expect("stdout");
    let (half_down_tx, mut half_down) = watch::channel(0usize);
    let download = {
        let mut killed = killed.clone();
        tokio::spawn(async move {
            let mut got = vec![0u8; BULK / 2];
            stdout.read_exact(&mut got).await.expect("first half read");
            let _ = half_down_tx.send(1);
            let _ = killed.wait_for(|k| *k).await;
            stdout.read_to_end(&mut got).await.expect("rest read");
            (got, down.wait_with_output().await.expect("ssh ends"))
        })
    };

    reached(&mut lines_seen, 20, "20 lines counted").await;
    reached(&mut half_up, 1, "32 MiB sent").await;
    reached(&mut half_down, 1, "32 MiB received").await;
    let killed_at = Instant::now();
    relay.kill().await;
    let _ = killed_tx.send(true);
    // Part of the scenario, not a wait for anything: the relay is down 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let relay_metrics = relay.restart().await;

    let logs = || format!("host:\n{}\nclient:\n{}", host.log(), client.log());
    let (lines, out) = within(SESSION_LIMIT, "the counting session", counting)
        .await
        .unwrap();
    assert_counted(&lines, &out, &logs());
    let up = within(SESSION_LIMIT, "the upload", upload).await.unwrap();
    assert!(
        up.status.success(),
        "upload: {}\n{}",
        String::from_utf8_lossy(&up.stderr),
        logs()
    );
    let remote = String::from_utf8_lossy(&up.stdout);
    assert_eq!(
        remote.split_whitespace().next(),
        Some(want.as_str()),
        "{}",
        logs()
    );
    let (got, out) = within(SESSION_LIMIT, "the download", download)
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "download: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    assert_eq!(got.len(), BULK, "{}", logs());
    assert_eq!(hex_sha256(&got), want, "{}", logs());
    let (host_gaps, client_gaps) = (gaps(&host), gaps(&client));
    eprintln!(
        "relay killed and back after 3 s: all three sessions done {:.1?} after the kill; \
         resume gaps at the host {host_gaps:?}, at the client {client_gaps:?}",
        killed_at.elapsed()
    );
    assert_eq!(client_gaps.len(), 3, "{}", logs());
    // Both count the three resumes; nothing is kept for resumes once the
    // sessions have ended.
    let relay_says = get(relay_metrics, "/metrics").await.body;
    assert!(
        relay_says.contains("shellrelay_resumes_total{reason=\"resumed\"} 3"),
        "{relay_says}"
    );
    let lines = [
        "shellrelay_host_resumes_total{reason=\"resumed\"} 3",
        "shellrelay_host_sessions_resumable 0",
        "shellrelay_host_resume_buffered_bytes 0",
    ];
    // The host agent lets go of a session once both ends have finished
    // its stream, a moment after ssh exits.
    let settled = within(support::WAIT, "the host's sessions to end", async {
        loop {
            let says = get(host_metrics, "/metrics").await.body;
            if lines.iter().all(|l| says.contains(l)) {
                return says;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    settled.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_through_the_other_relay_when_its_relay_dies() {
    // A relay that died silently is noticed within seconds.
    let quick = ["--keep-alive", "1s", "--idle-timeout", "3s"];
    a_session_goes_on_through_the_other_relay(Gone::Killed, &quick).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_after_its_forwarder_was_stopped_for_90_s() {
    let Some(sshd) = Sshd::start().await else {
        return;
    };
    let Setup {
        dir: _dir,
        relays,
        host_token,
        client_token,
    } = setup(1).await;
    let relay = relays.into_iter().next().expect("a relay");
    let target = sshd.addr().to_string();
    let host = host(&[&relay], &host_token, &target, &[]).await;
    let (client, port) = forwarder(&[&relay], &client_token, &[]).await;
    // ssh's own default: no keepalives of its own (the test harness
    // otherwise asks for them), as with a laptop's ssh left running.
    let options = ["-o".to_owned(), "ServerAliveInterval=0".to_owned()];
    let (counting, mut lines_seen) = counting(&sshd, port, &options);
    reached(&mut lines_seen, 20, "20 lines counted").await;
    client.signal("STOP");
    // The scenario: 90 s asleep, past the relay's idle timeout (30 s).
    tokio::time::sleep(Duration::from_secs(90)).await;
    client.signal("CONT");
    let (lines, out) = within(SESSION_LIMIT, "the counting session", counting)
        .await
        .unwrap();
    let logs = format!("host:\n{}\nclient:\n{}", host.log(), client.log());
    assert_counted(&lines, &out, &logs);
    assert!(
        host.log().contains("session path broke"),
        "the relay did not drop the stopped forwarder: {logs}"
    );
    eprintln!("forwarder stopped 90 s: resumed, gaps {:?}", gaps(&client));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_window_a_session_ends_and_connect_says_why() {
    let Setup {
        dir: _dir,
        relays,
        host_token,
        client_token,
    } = setup(1).await;
    let mut relay = relays.into_iter().next().expect("a relay");
    let target = echo_server().await.to_string();
    let quick = ["--keep-alive", "1s", "--idle-timeout", "3s"];
    let mut host_extra = quick.to_vec();
    host_extra.extend(["--resume-window", "2s"]);
    let mut host = host(&[&relay], &host_token, &target, &host_extra).await;
    let relay_at = relay.at.to_string();
    let cert = relay.cert();
    let mut args = peer_args("connect", &relay_at, &cert, &client_token);
    args.extend(["--host", "lab1"]);
    args.extend(quick);
    let mut connect = shellrelay(&args);
    connect
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut connect = connect.spawn().expect("connect runs");
    let mut stdin = connect.stdin.take().expect("stdin");
    let mut stdout = connect.stdout.take().expect("stdout");
    stdin.write_all(b"ping\n").await.unwrap();
    let mut back = [0u8; 5];
    within(support::WAIT, "the echo", stdout.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"ping\n");

    relay.kill().await;
    host.wait_for_text("not resumed within 2s").await;
    let _ = relay.restart().await;
    let out = within(SESSION_LIMIT, "connect to end", connect.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("session to host lab1 ended: cannot resume the session: it has ended, or its resume window has passed"),
        "{stderr}"
    );
    drop(stdin);
}

/// The value of the metric line `name` (with its labels) in `text`; 0 if
/// there is none yet.
fn metric(text: &str, name: &str) -> u64 {
    (text.lines())
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_token_keeps_at_most_8_sessions_waiting_at_a_host() {
    // host --max-waiting-per-client by default: below the 10
    // unauthenticated connections at which sshd's MaxStartups (10:30:100)
    // starts refusing logins, which a waiting session that never logged
    // in counts against.
    const PER_CLIENT: usize = 8;
    // More than MaxStartups' 10 of one token; and another token's.
    const GREEDY: usize = 12;
    const OTHER: usize = 2;
    let Setup {
        dir,
        relays,
        host_token,
        client_token,
    } = setup(1).await;
    let mut relay = relays.into_iter().next().expect("a relay");
    let other_token = token_file(&relay.secret, dir.path(), "other.token", "client", "lab1").await;
    let (target, mut open) = counted_echo_server().await;
    let quick = ["--keep-alive", "1s", "--idle-timeout", "3s"];
    let mut host_extra = quick.to_vec();
    host_extra.extend(["--metrics", "127.0.0.1:0"]);
    let mut host = host(&[&relay], &host_token, &target.to_string(), &host_extra).await;
    let host_metrics = addr_field(&host.logged_text("metrics listening").await, "addr");
    let (greedy, greedy_port) = forwarder(&[&relay], &client_token, &quick).await;
    let (other, other_port) = forwarder(&[&relay], &other_token, &quick).await;
    let mut sessions = Vec::new();
    for (port, n) in [(greedy_port, GREEDY), (other_port, OTHER)] {
        for _ in 0..n {
            sessions.push(ping(([127, 0, 0, 1], port).into()).await);
        }
    }
    assert_eq!(*open.borrow(), GREEDY + OTHER);

    // Every session's path breaks at once; each then waits for a resume,
    // or ends for want of a place.
    relay.kill().await;
    let logs = || {
        format!(
            "host:\n{}\nclients:\n{}\n{}",
            host.log(),
            greedy.log(),
            other.log()
        )
    };
    let waiting_name = "shellrelay_host_sessions_waiting";
    let ended_name = "shellrelay_host_resumes_total{reason=\"too_many_waiting\"}";
    let (waiting, ended) = within(support::WAIT, "every session to break", async {
        loop {
            let says = get(host_metrics, "/metrics").await.body;
            let (waiting, ended) = (metric(&says, waiting_name), metric(&says, ended_name));
            if waiting + ended == (GREEDY + OTHER) as u64 {
                return (waiting, ended);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        (waiting, ended),
        ((PER_CLIENT + OTHER) as u64, (GREEDY - PER_CLIENT) as u64),
        "sessions waiting, and ended as too many of one token\n{}",
        logs()
    );
    // The ended sessions' connections to the target are closed, so sshd's
    // count of them drops; the waiting ones stay open.
    within(
        support::WAIT,
        "ended sessions' connections to close",
        async { open.wait_for(|n| *n == PER_CLIENT + OTHER).await },
    )
    .await
    .expect("the target runs");

    // The other token's sessions waited: they resume once the relay is back.
    let _ = relay.restart().await;
    for session in &mut sessions[GREEDY..] {
        echo(session, b"resumed").await;
    }
}

/// How the relay carrying a session goes away.
#[derive(PartialEq)]
enum Gone {
    /// SIGKILL: its peers' packets get no answer, or a stateless reset.
    Killed,
    /// SIGSTOP: no close, no reset, its sockets still open; with the
    /// default idle timeout of 30 s, only the peers' probes notice.
    Silent,
}

/// A relay goes away as `gone` says while it carries a session, the peers
/// run with `extra`: the session goes on through the other relay, every
/// line in order.
async fn a_session_goes_on_through_the_other_relay(gone: Gone, extra: &[&str]) {
    let Some(sshd) = Sshd::start().await else {
        return;
    };
    let Setup {
        dir: _dir,
        mut relays,
        host_token,
        client_token,
    } = setup(2).await;
    let target = sshd.addr().to_string();
    let both = [&relays[0], &relays[1]];
    let host = host(&both, &host_token, &target, extra).await;
    let (mut client, port) = forwarder(&both, &client_token, extra).await;
    let line = client.logged_text("connected to relay").await;
    let carrying = field(&line, "relay").expect("relay=").to_owned();
    let i = relays
        .iter()
        .position(|r| r.at.to_string() == carrying)
        .expect("one of the two");

    let (counting, mut lines_seen) = counting(&sshd, port, &[]);
    reached(&mut lines_seen, 20, "20 lines counted").await;
    match gone {
        Gone::Killed => relays[i].kill().await,
        Gone::Silent => relays[i].proc.signal("STOP"),
    }
    let (lines, out) = within(SESSION_LIMIT, "the counting session", counting)
        .await
        .unwrap();
    let logs = format!("host:\n{}\nclient:\n{}", host.log(), client.log());
    assert_counted(&lines, &out, &logs);
    assert!(
        gone == Gone::Killed || client.log().contains("no answer from the relay"),
        "the forwarder did not notice the silence: {logs}"
    );
    let other = relays[1 - i].at.to_string();
    let resumed: Vec<String> = (client.lines().iter())
        .filter(|l| l.contains("session resumed"))
        .cloned()
        .collect();
    assert_eq!(resumed.len(), 1, "{logs}");
    assert!(resumed[0].contains(&other), "not through {other}: {logs}");
    eprintln!(
        "relay {carrying} {} ({extra:?}): resumed through {other}, gaps {:?}",
        if gone == Gone::Killed {
            "killed"
        } else {
            "stopped"
        },
        gaps(&client)
    );
    if gone == Gone::Silent {
        relays[i].proc.signal("CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_when_its_relay_goes_silent_over_quic() {
    a_session_goes_on_through_the_other_relay(Gone::Silent, &["--transport", "quic"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_when_its_relay_goes_silent_over_tcp() {
    a_session_goes_on_through_the_other_relay(Gone::Silent, &["--transport", "tcp"]).await;
}

/// A client token revoked while its session's path is broken (its
/// forwarder killed): the relay tells the host, which ends the waiting
/// session at once rather than wait out its window (10 minutes) for a
/// resume that cannot come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_during_a_break_ends_its_waiting_session_at_the_host() {
    let Some(sshd) = Sshd::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let revoked = dir.path().join("revoked");
    std::fs::write(&revoked, "").unwrap();
    let (mut relay, at) = start_relay_with(
        dir.path(),
        &secret,
        &["--revocation-file", path_str(&revoked)],
    )
    .await;
    let (at, cert) = (at.to_string(), dir.path().join("relay.crt"));
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let alice = jti_token_file(&secret, dir.path(), "lab1", "alice").await;
    let target = sshd.addr().to_string();
    let mut args = peer_args("host", &at, &cert, &host_token);
    args.extend(["--target", &target]);
    let mut host = Proc::spawn("host", shellrelay(&args));
    host.wait_for_text("registered with relay").await;
    // The relay hears of a dead forwarder within its idle timeout.
    let mut args = peer_args("client", &at, &cert, &alice);
    args.extend([
        "--listen",
        "127.0.0.1:0",
        "--keep-alive",
        "1s",
        "--idle-timeout",
        "3s",
    ]);
    let mut client = Proc::spawn("client", shellrelay(&args));
    let line = client.wait_for_text("client forwarder listening").await;
    let port = addr_field(&line, "listen").port();
    let mut ssh = sshd.ssh(port, "sleep 120");
    ssh.stdout(Stdio::null()).stderr(Stdio::null());
    let mut ssh = ssh.spawn().expect("ssh runs");
    let started = host.wait_for_text("session started").await;
    assert!(started.contains("resumable=true"), "{started}");

    client.signal("KILL");
    client.terminate().await;
    host.wait_for_text("waiting for the client to resume it")
        .await;
    std::fs::write(&revoked, "jti alice\n").unwrap();
    let revoked_at = Instant::now();
    let ended = (host.wait_for_text("not resumable: the client token was revoked")).await;
    eprintln!(
        "revoked during the break: the host ended the session after {:.2?}: {ended}",
        revoked_at.elapsed()
    );
    relay
        .wait_for_text("told the host a client token has ended")
        .await;
    let _ = ssh.kill().await;
}
