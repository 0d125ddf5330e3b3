//! Memory ceilings: what a stalled session (one whose far end stops
//! reading) costs the relay, the host agent and the client forwarder, each
//! a process of its own, and that they hand it back when it ends.
//!
//! Every wait is bounded by a timeout; every port is picked by the kernel.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::bin::*;
use support::proc::{field, rss_kib, Proc};
use support::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Stalled sessions per direction.
const SESSIONS: u64 = 48;

/// The most one stalled session may cost each process: README "Limits".
const CEILING_KIB: u64 = 1536;

/// What one write of a stalling writer offers the kernel.
const CHUNK: usize = 64 * 1024;

/// How long nothing may move (no writer hands the kernel a byte, no
/// process grows) for the way of the stalled sessions to count as full;
/// see [`until_full`].
const SETTLE: Duration = Duration::from_millis(500);

/// How much a process may grow within [`SETTLE`] and still count as
/// still: what it may allocate for itself meanwhile, far below what
/// filling the windows of [`SESSIONS`] sessions takes.
const SETTLED_GROWTH_KIB: u64 = 512;

/// The writers of one kind of stalled session: the bytes the kernel took
/// from them, how many are blocked in a write now, and when one last
/// handed the kernel bytes.
#[derive(Clone, Copy, Debug)]
struct Fill {
    written: u64,
    blocked: u64,
    progress: Instant,
}

/// Writers that say what they do, for [`until_full`].
#[derive(Clone)]
struct Writers(Arc<watch::Sender<Fill>>);

impl Writers {
    fn new() -> Writers {
        let fill = Fill {
            written: 0,
            blocked: 0,
            progress: Instant::now(),
        };
        Writers(Arc::new(watch::Sender::new(fill)))
    }

    /// Writes `byte` to `tcp` without end, until the connection fails;
    /// counted as blocked while a write waits for room.
    async fn flood(&self, tcp: &TcpStream, byte: u8) {
        let chunk = vec![byte; CHUNK];
        loop {
            match tcp.try_write(&chunk) {
                Ok(n) => self.0.send_modify(|f| {
                    f.written += n as u64;
                    f.progress = Instant::now();
                }),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _blocked = Blocked::new(&self.0);
                    if tcp.writable().await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// One writer counted in [`Fill::blocked`] until dropped, also when its
/// write is cancelled.
struct Blocked<'a>(&'a watch::Sender<Fill>);

impl<'a> Blocked<'a> {
    fn new(fill: &'a watch::Sender<Fill>) -> Blocked<'a> {
        fill.send_modify(|f| f.blocked += 1);
        Blocked(fill)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|f| f.blocked -= 1);
    }
}

/// A target that answers `D` by writing without end and `H` by reading
/// nothing, its writes told to `writers`, until `release` is notified.
async fn target(writers: Writers, release: Arc<Notify>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (writers, release) = (writers.clone(), release.clone());
            tokio::spawn(async move {
                let mut command = [0u8; 1];
                if tcp.read_exact(&mut command).await.is_err() {
                    return;
                }
                let released = release.notified();
                if command[0] == b'D' {
                    tokio::select! {
                        _ = writers.flood(&tcp, 0x5a) => {}
                        _ = released => {}
                    }
                } else {
                    released.await;
                }
            });
        }
    });
    addr
}

/// Waits until the `sessions` stalled sessions have filled every window on
/// their way: each of their writers is blocked in a write (the stall has
/// reached them), and for [`SETTLE`] none hands the kernel a byte and no
/// process grows. Writers blocked alone are not enough: the kernel buffers
/// megabytes per session between a writer and the first process, which
/// goes on reading them, and filling the processes' windows behind, while
/// the writers wait. Returns what the writers wrote.
async fn until_full(writers: &Writers, sessions: u64, procs: &Procs, what: &str) -> u64 {
    let mut fill = writers.0.subscribe();
    let full = async {
        loop {
            let start = *fill.borrow_and_update();
            if start.blocked < sessions {
                fill.changed().await.expect("the writers outlive the wait");
                continue;
            }
            let (rss, deadline) = (procs.rss(), Instant::now() + SETTLE);
            let still = loop {
                tokio::select! {
                    biased;
                    changed = fill.changed() => {
                        changed.expect("the writers outlive the wait");
                        let now = *fill.borrow_and_update();
                        if now.written != start.written || now.blocked < sessions {
                            break false;
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => break true,
                }
            };
            let now = procs.rss();
            if still && (0..3).all(|i| now[i] <= rss[i] + SETTLED_GROWTH_KIB) {
                return start.written;
            }
        }
    };
    tokio::time::timeout(WAIT * 2, full)
        .await
        .unwrap_or_else(|_| {
            let now = *writers.0.borrow();
            panic!(
                "{what}: the sessions never filled their way; {} of {sessions} writers \
                 blocked, {} bytes written, the last {:?} ago, RSS {:?} KiB now",
                now.blocked,
                now.written,
                now.progress.elapsed(),
                procs.rss()
            )
        })
}

/// RSS of the three processes once each has trimmed its allocator while
/// the sessions stall: lowest seen over two trim intervals.
async fn trimmed(procs: &Procs) -> [u64; 3] {
    let mut low = procs.rss();
    let end = tokio::time::Instant::now() + shellrelay::ops::defaults::MEMORY_TRIM_INTERVAL * 2;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = procs.rss();
        for i in 0..3 {
            low[i] = low[i].min(now[i]);
        }
    }
    low
}

struct Procs {
    relay: Proc,
    host: Proc,
    client: Proc,
}

impl Procs {
    fn rss(&self) -> [u64; 3] {
        [&self.relay, &self.host, &self.client].map(|p| rss_kib(p.pid()))
    }
}

/// Sessions whose ssh side stops reading (`D`), then sessions whose target
/// stops reading (`H`): each costs each process at most [`CEILING_KIB`],
/// and the processes give the memory back after the sessions end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_costs_each_process_little_and_is_given_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let (relay, relay_addr) = start_relay(dir.path(), &secret).await;
    let cert = dir.path().join("relay.crt");
    let relay_at = relay_addr.to_string();
    let written = Writers::new();
    let release = Arc::new(Notify::new());
    let target = target(written.clone(), release.clone()).await;
    let mut procs = Vec::new();
    for role in ["host", "client"] {
        let path = token_file(&secret, dir.path(), &format!("{role}.token"), role, "lab1").await;
        let mut args = peer_args(role, &relay_at, &cert, &path);
        if role == "host" {
            args.extend(["--target", &target]);
        } else {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let mut proc = Proc::spawn(role, shellrelay(&args));
        // The forwarder connects at start, and a host not yet registered
        // would make that first try a refusal.
        if role == "host" {
            proc.wait_for_text("registered with relay").await;
        }
        procs.push(proc);
    }
    let mut client = procs.pop().expect("client");
    let host = procs.pop().expect("host");
    let line = client.wait_for_text("client forwarder listening").await;
    let tunnel = field(&line, "listen").expect("listen=").to_owned();
    client.wait_for_text("connected to relay").await;
    let procs = Procs {
        relay,
        host,
        client,
    };
    let before = procs.rss();

    for command in [b'D', b'H'] {
        let sent = Writers::new();
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS {
            let mut tcp = TcpStream::connect(&tunnel).await.expect("connect");
            tcp.write_all(&[command]).await.expect("command");
            if command == b'H' {
                let sent = sent.clone();
                sessions.push(tokio::spawn(async move {
                    sent.flood(&tcp, 0x11).await;
                }));
            } else {
                sessions.push(tokio::spawn(async move {
                    std::future::pending::<()>().await;
                    drop(tcp);
                }));
            }
        }
        let (what, count) = match command {
            b'D' => ("what the target wrote", &written),
            _ => ("what the ssh side sent", &sent),
        };
        let held = until_full(count, SESSIONS, &procs, what).await;
        let during = trimmed(&procs).await;
        let per: Vec<u64> = (0..3)
            .map(|i| during[i].saturating_sub(before[i]) / SESSIONS)
            .collect();
        eprintln!(
            "{} stalled sessions ({}), {held} bytes held: relay, host, client RSS {during:?} KiB, per session {per:?} KiB",
            SESSIONS, command as char
        );
        assert!(
            held >= SESSIONS * 64 * 1024,
            "the sessions held only {held} bytes: they did not stall"
        );
        for (name, kib) in ["relay", "host agent", "client forwarder"].iter().zip(&per) {
            assert!(
                *kib <= CEILING_KIB,
                "a stalled session costs the {name} {kib} KiB, over {CEILING_KIB} KiB"
            );
        }
        for s in &sessions {
            s.abort();
        }
        release.notify_waiters();
        // Within a few trim intervals every process is back near where it
        // started.
        tokio::time::timeout(WAIT, async {
            loop {
                let now = procs.rss();
                if (0..3).all(|i| now[i] < before[i] + 6 * 1024) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "RSS stayed at {:?} KiB after the sessions ended (before {before:?} KiB)\nhost: {}\nclient: {}",
                procs.rss(),
                procs.host.log().lines().rev().take(30).collect::<Vec<_>>().join("\n"),
                procs.client.log().lines().rev().take(30).collect::<Vec<_>>().join("\n"),
            )
        });
    }
}

/// Attack A: one client token over TLS over TCP grants the relay no
/// HTTP/2 window (so nothing the relay writes can go out) and opens
/// stream after stream from 20 connections, each stream carrying a whole
/// stream window. The relay once kept every refused stream and what came
/// on it, past 3 GiB with a 256 MiB budget; now what it holds follows its
/// budget, its RSS stays within twice it, and another user gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_grants_no_credit_keeps_the_relay_within_its_budget() {
    use bytes::Bytes;
    use shellrelay::net::tls::Trust;
    use shellrelay::net::transport::tcp::{dial, tcp_client_config};
    use shellrelay::protocol::{read_frame, write_frame, Frame, Jwt, Role, VERSION};

    const BUDGET_MIB: u64 = 256;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let (relay, relay_addr) =
        start_relay_with(dir.path(), &secret, &["--max-buffered", "256MiB"]).await;
    let cert = dir.path().join("relay.crt");
    let relay_at = relay_addr.to_string();
    let echo = support::traffic::echo_server().await.to_string();
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let mut args = peer_args("host", &relay_at, &cert, &host_token);
    args.extend(["--target", &echo]);
    let mut host = Proc::spawn("host", shellrelay(&args));
    host.wait_for_text("registered with relay").await;
    let before = rss_kib(relay.pid());

    let mallory =
        std::fs::read_to_string(jti_token_file(&secret, dir.path(), "lab1", "mallory").await)
            .expect("token");
    let pem = std::fs::read(&cert).expect("certificate");
    let certs = rustls_pemfile_certs(&pem);
    let config = tcp_client_config(&Trust::Pinned(certs)).expect("TLS config");
    let payload = Bytes::from(vec![0x55u8; 512 * 1024]);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut attackers = Vec::new();
    for _ in 0..20 {
        let (config, mallory, payload, stop) = (
            config.clone(),
            mallory.clone(),
            payload.clone(),
            stop.clone(),
        );
        attackers.push(tokio::spawn(async move {
            let Ok(mut tls) = dial(relay_addr, "localhost", config).await else {
                return;
            };
            let hello = Frame::Hello {
                version: VERSION,
                role: Role::Client,
                token: Jwt(mallory),
                host: None,
                keep_other: false,
                moving: false,
                direct: None,
            };
            if write_frame(&mut tls, &hello).await.is_err() {
                return;
            }
            if !matches!(read_frame(&mut tls).await, Ok(Frame::Welcome { .. })) {
                return;
            }
            let Ok((send, conn)) = h2::client::Builder::new()
                .initial_window_size(0)
                .handshake::<_, Bytes>(tls)
                .await
            else {
                return;
            };
            tokio::spawn(conn);
            let mut send = send;
            let mut held = Vec::new();
            let attack = async {
                loop {
                    send = match send.ready().await {
                        Ok(send) => send,
                        Err(_) => return,
                    };
                    let request = ::http::Request::post("https://shellrelay/session")
                        .body(())
                        .expect("request");
                    let Ok((response, mut body)) = send.send_request(request, false) else {
                        return;
                    };
                    let _ = body.send_data(payload.clone(), false);
                    held.push((response, body));
                    // Streams the relay refused are let go of now and then.
                    if held.len() >= 4096 {
                        held.drain(..2048);
                    }
                    // Runs beside the other attackers and the test.
                    tokio::task::yield_now().await;
                }
            };
            tokio::select! {
                () = attack => {}
                () = stop.cancelled() => {}
            }
        }));
    }
    // The attack runs for 10 s; the relay's RSS is watched throughout.
    let mut peak = before;
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < end {
        peak = peak.max(rss_kib(relay.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("relay RSS {peak} KiB at most after 10 s of the attack");
    // Another user gets in while the attack goes on.
    let bob = jti_token_file(&secret, dir.path(), "lab1", "bob").await;
    let took = echo_via_connect(shellrelay(&peer_args("connect", &relay_at, &cert, &bob))).await;
    peak = peak.max(rss_kib(relay.pid()));
    stop.cancel();
    for a in attackers {
        let _ = a.await;
    }
    eprintln!(
        "relay RSS {before} KiB before, {peak} KiB at most under attack (budget {BUDGET_MIB} MiB); another user's echo took {took:?}"
    );
    assert!(
        peak <= 2 * BUDGET_MIB * 1024,
        "the relay reached {peak} KiB under attack, over twice its budget of {BUDGET_MIB} MiB"
    );
    drop(host);
}

/// The certificates in PEM `pem`.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}
