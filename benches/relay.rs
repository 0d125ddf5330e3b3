//! `cargo bench --bench relay`: relay, host agent and client forwarder as
//! separate processes on loopback, measured against direct TCP in the same
//! run. Prints one table: each figure, its baseline and the ratio.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use shellrelay::access::keys::Secret;
use shellrelay::access::token::{self, Claims, TokenSource};
use shellrelay::client::{ClientConfig, Forwarder};
use shellrelay::net::tls::Trust;
use shellrelay::net::transport::dial::{self, RelayAddr};
use shellrelay::net::transport::TransportOptions;
use shellrelay::protocol::Role;
use support::bin::{make_private, peer_args, relay_args};
use support::bulk::{
    cpu_secs, download, logged, machine, open, settle_rss, spawn, target, upload, CHUNK,
};
use support::proc::{field, Proc};
use support::sshd::{user, Sshd};
use support::HOUR;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sizes, scaled down by `SHELLRELAY_BENCH_QUICK=1` for a smoke run.
struct Plan {
    bulk: u64,
    window: Duration,
    pings: usize,
    setups: usize,
    idle_hosts: usize,
    idle_sessions: usize,
}

fn plan() -> Plan {
    if std::env::var("SHELLRELAY_BENCH_QUICK").is_ok() {
        Plan {
            bulk: 64 << 20,
            window: Duration::from_secs(1),
            pings: 500,
            setups: 50,
            idle_hosts: 50,
            idle_sessions: 200,
        }
    } else {
        Plan {
            bulk: 1 << 30,
            window: Duration::from_secs(5),
            pings: 10_000,
            setups: 1_000,
            idle_hosts: 1_000,
            idle_sessions: 10_000,
        }
    }
}

/// Aggregate Gbit/s of `sessions` concurrent downloads over one common
/// `window`, and the slowest session's bytes against the mean. Bytes are
/// counted where they arrive, so nothing sitting in a send buffer counts.
async fn aggregate(addr: SocketAddr, sessions: usize, window: Duration) -> (f64, f64) {
    let mut open_sessions = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        open_sessions.push(open(addr).await);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let deadline = start + window;
    let tasks: Vec<_> = open_sessions
        .into_iter()
        .map(|mut tcp| {
            tokio::spawn(async move {
                tokio::time::sleep_until(start).await;
                tcp.write_all(b"D").await.expect("cmd");
                tcp.write_all(&u64::MAX.to_be_bytes()).await.expect("len");
                let mut buf = vec![0u8; CHUNK];
                let mut moved = 0u64;
                while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                    moved += n as u64;
                }
                moved
            })
        })
        .collect();
    let mut moved = Vec::with_capacity(sessions);
    for t in tasks {
        moved.push(t.await.expect("session"));
    }
    if std::env::var("SHELLRELAY_BENCH_DEBUG").is_ok() {
        let mut sorted = moved.clone();
        sorted.sort();
        eprintln!("{addr} {sessions} sessions, bytes each: {sorted:?}");
    }
    let total: u64 = moved.iter().sum();
    let mean = total as f64 / sessions as f64;
    let slowest = moved.iter().copied().min().unwrap_or(0) as f64;
    (
        (total * 8) as f64 / window.as_secs_f64() / 1e9,
        slowest / mean,
    )
}

fn gbps(len: u64, secs: f64) -> f64 {
    (len * 8) as f64 / secs / 1e9
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn pings(addr: SocketAddr, count: usize) -> (Duration, Duration) {
    let mut tcp = open(addr).await;
    tcp.write_all(b"E").await.expect("cmd");
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        tcp.write_all(&msg).await.expect("ping");
        tcp.read_exact(&mut back).await.expect("pong");
        rtts.push(t.elapsed());
    }
    rtts.sort();
    (percentile(&rtts, 0.5), percentile(&rtts, 0.99))
}

/// Round trips of 64 bytes over one raw quinn connection on loopback, both
/// ends in this process: the floor that each QUIC hop of the tunnel adds.
async fn quinn_pings(count: usize) -> anyhow::Result<(Duration, Duration)> {
    use shellrelay::net::tls;
    let identity = tls::self_signed(&["localhost".into()])?;
    let trust = Trust::Pinned(identity.chain.clone());
    let opts = TransportOptions::default();
    let server = shellrelay::net::transport::quic::bind_endpoint(
        "127.0.0.1:0".parse()?,
        Some(shellrelay::net::transport::quic::server_config(
            identity, opts,
        )?),
    )?;
    let addr = server.local_addr()?;
    tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut buf = [0u8; 64];
        while recv.read_exact(&mut buf).await.is_ok() {
            send.write_all(&buf).await?;
        }
        anyhow::Ok(())
    });
    let mut client = shellrelay::net::transport::quic::bind_endpoint("127.0.0.1:0".parse()?, None)?;
    client.set_default_client_config(shellrelay::net::transport::quic::client_config(
        &trust, opts,
    )?);
    let conn = client.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        send.write_all(&msg).await?;
        recv.read_exact(&mut back).await?;
        rtts.push(t.elapsed());
    }
    rtts.sort();
    Ok((percentile(&rtts, 0.5), percentile(&rtts, 0.99)))
}

async fn setups(addr: SocketAddr, count: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let tcp = open(addr).await;
        times.push(t.elapsed());
        drop(tcp);
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

struct Table(Vec<[String; 4]>);

impl Table {
    fn row(&mut self, what: &str, ours: String, base: String, ratio: String) {
        println!("  {what:<44} {ours:>14} {base:>14} {ratio:>9}");
        self.0.push([what.into(), ours, base, ratio]);
    }
}

/// `perf record -g` on the relay while one transport's bulk transfers
/// run, when `SHELLRELAY_BENCH_PERF=DIR` asks (as root, with a build that
/// keeps symbols: `CARGO_PROFILE_BENCH_STRIP=none
/// CARGO_PROFILE_BENCH_DEBUG=1`): `DIR/relay-quic.data` and
/// `DIR/relay-tcp.data`, for `perf report -i`.
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(pid: u32, name: &str) -> Profile {
        let Ok(dir) = std::env::var("SHELLRELAY_BENCH_PERF") else {
            return Profile(None);
        };
        let out = std::path::Path::new(&dir).join(format!("relay-{name}.data"));
        let child = std::process::Command::new("perf")
            .args(["record", "--call-graph", "dwarf,16384", "-F", "999", "-q"])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => Profile(Some(child)),
            Err(err) => {
                eprintln!("perf did not start: {err}");
                Profile(None)
            }
        }
    }

    fn stop(self) {
        if let Some(mut child) = self.0 {
            support::proc::signal(child.id(), "INT");
            let _ = child.wait();
        }
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is taken.
    shellrelay::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let plan = plan();
    let dir = tempfile::tempdir()?;
    let secret_path = dir.path().join("secret");
    let secret = Secret::generate();
    std::fs::write(&secret_path, secret.expose())?;
    make_private(&secret_path);
    let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    let mint = |role, host: &str| {
        token::mint(
            &secret,
            &Claims::new(role, host, shellrelay::ops::defaults::AUDIENCE, HOUR),
        )
    };
    let host_token = dir.path().join("host.token");
    std::fs::write(&host_token, mint(Role::Host, "bench")?)?;
    let client_token = dir.path().join("client.token");
    std::fs::write(&client_token, mint(Role::Client, "bench")?)?;

    let sink = target().await;
    let limit = (plan.idle_sessions + 1_000).to_string();
    // `SHELLRELAY_BENCH_CONGESTION=cubic` (or newreno) compares controllers.
    let congestion = std::env::var("SHELLRELAY_BENCH_CONGESTION").unwrap_or_else(|_| "bbr".into());
    // `SHELLRELAY_BENCH_WINDOW=4MiB` compares stream windows.
    let window = std::env::var("SHELLRELAY_BENCH_WINDOW").unwrap_or_else(|_| "512KiB".into());
    let mut args = relay_args("127.0.0.1:0", &secret_path, &cert, &key);
    args.extend([
        "--congestion",
        &congestion,
        "--stream-window",
        &window,
        "--max-sessions-per-client",
        &limit,
        "--max-sessions-per-host",
        &limit,
        "--max-handshakes-per-addr",
        "100000",
        "--max-hosts",
        &limit,
        // Room for every idle session: they hold nothing.
        "--max-buffered",
        "1TiB",
    ]);
    let mut relay = spawn("relay", &args);
    let relay_addr = logged(&mut relay, "relay listening", "addr").await;
    let sink_at = sink.to_string();
    let mut host_args = peer_args("host", &relay_addr, &cert, &host_token);
    host_args.extend(["--target", &sink_at, "--congestion", &congestion]);
    host_args.extend(["--stream-window", &window]);
    let mut host = spawn("host", &host_args);
    logged(&mut host, "registered with relay", "host").await;
    let mut client_args = peer_args("client", &relay_addr, &cert, &client_token);
    client_args.extend(["--listen", "127.0.0.1:0", "--congestion", &congestion]);
    client_args.extend(["--stream-window", &window]);
    let mut client = spawn("client", &client_args);
    let tunnel: SocketAddr = logged(&mut client, "client forwarder listening", "listen")
        .await
        .parse()?;
    logged(&mut client, "connected to relay", "host").await;

    println!("shellrelay relay benchmark: {}", machine());
    println!(
        "relay, host agent and client forwarder as processes; baseline: direct loopback TCP\n"
    );
    println!(
        "  {:<44} {:>14} {:>14} {:>9}",
        "measure", "shellrelay", "direct TCP", "ratio"
    );
    let mut table = Table(Vec::new());

    // Footprint: idle host connections, then idle sessions.
    let relay_at = RelayAddr {
        addr: relay_addr.clone(),
        at: None,
        trust: Trust::PinnedFile(cert.clone()),
        transport: TransportOptions::default(),
    };
    let base_rss = settle_rss(relay.pid()).await;
    let mut hosts = Vec::new();
    for i in 0..plan.idle_hosts {
        let token = TokenSource::Literal(mint(Role::Host, &format!("idle-{i}"))?);
        hosts.push(dial::connect(&relay_at, &token, Role::Host, None).await?);
    }
    let with_hosts = settle_rss(relay.pid()).await;
    let per_host = with_hosts.saturating_sub(base_rss) as f64 / plan.idle_hosts as f64;
    table.row(
        &format!(
            "relay RSS per idle host connection (KiB, {})",
            plan.idle_hosts
        ),
        format!("{per_host:.1}"),
        "-".into(),
        "-".into(),
    );
    for h in &hosts {
        h.conn.close(shellrelay::protocol::Reason::Done, "done");
    }
    drop(hosts);
    let after_hosts = settle_rss(relay.pid()).await;

    let forwarder = Forwarder::new(ClientConfig {
        relays: vec![relay_at],
        fleet: None,
        token: TokenSource::Literal(mint(Role::Client, "bench")?),
        host: None,
        resume_window: shellrelay::session::resume::RESUME_WINDOW,
        direct: shellrelay::net::transport::direct::DirectMode::Off,
    });
    let before_sessions = settle_rss(relay.pid()).await;
    let mut sessions = Vec::with_capacity(plan.idle_sessions);
    for _ in 0..plan.idle_sessions {
        sessions.push(forwarder.open().await?);
    }
    let with_sessions = settle_rss(relay.pid()).await;
    let per_session =
        with_sessions.saturating_sub(before_sessions) as f64 / plan.idle_sessions as f64;
    table.row(
        &format!("relay RSS per idle session (KiB, {})", plan.idle_sessions),
        format!("{per_session:.1}"),
        "-".into(),
        "-".into(),
    );
    drop(sessions);
    forwarder.close().await;
    let after_sessions = settle_rss(relay.pid()).await;
    // Warm up both paths.
    upload(tunnel, 16 << 20).await;
    download(sink, 16 << 20).await;

    let profile = Profile::start(relay.pid(), "quic");
    let cpu0 = cpu_secs(relay.pid());
    let up = gbps(plan.bulk, upload(tunnel, plan.bulk).await);
    let down = gbps(plan.bulk, download(tunnel, plan.bulk).await);
    let cpu = cpu_secs(relay.pid()) - cpu0;
    profile.stop();
    let (up_d, down_d) = (
        gbps(plan.bulk, upload(sink, plan.bulk).await),
        gbps(plan.bulk, download(sink, plan.bulk).await),
    );
    table.row(
        "1 session, client to host (Gbit/s)",
        format!("{up:.2}"),
        format!("{up_d:.2}"),
        format!("{:.2}", up / up_d),
    );
    table.row(
        "1 session, host to client (Gbit/s)",
        format!("{down:.2}"),
        format!("{down_d:.2}"),
        format!("{:.2}", down / down_d),
    );
    for n in [8usize, 64] {
        let (ours, fair) = aggregate(tunnel, n, plan.window).await;
        let (base, _) = aggregate(sink, n, plan.window).await;
        table.row(
            &format!("{n} sessions, aggregate host to client (Gbit/s)"),
            format!("{ours:.2}"),
            format!("{base:.2}"),
            format!("{:.2}", ours / base),
        );
        table.row(
            &format!("{n} sessions, slowest session / mean"),
            format!("{fair:.2}"),
            "-".into(),
            "-".into(),
        );
    }
    let (p50, p99) = pings(tunnel, plan.pings).await;
    let (b50, b99) = pings(sink, plan.pings).await;
    table.row(
        "64 B echo round trip p50 (µs)",
        us(p50),
        us(b50),
        format!("+{}", us(p50.saturating_sub(b50))),
    );
    table.row(
        "64 B echo round trip p99 (µs)",
        us(p99),
        us(b99),
        format!("+{}", us(p99.saturating_sub(b99))),
    );
    let (q50, q99) = quinn_pings(plan.pings).await?;
    table.row(
        "  one raw QUIC hop, same process, p50 (µs)",
        us(q50),
        us(b50),
        format!("+{}", us(q50.saturating_sub(b50))),
    );
    table.row(
        "  one raw QUIC hop, same process, p99 (µs)",
        us(q99),
        us(b99),
        format!("+{}", us(q99.saturating_sub(b99))),
    );
    let (s50, s99) = setups(tunnel, plan.setups).await;
    let (d50, d99) = setups(sink, plan.setups).await;
    table.row(
        "session setup to first byte p50 (µs)",
        us(s50),
        us(d50),
        format!("+{}", us(s50.saturating_sub(d50))),
    );
    table.row(
        "session setup to first byte p99 (µs)",
        us(s99),
        us(d99),
        format!("+{}", us(s99.saturating_sub(d99))),
    );
    let gib = (2 * plan.bulk) as f64 / (1u64 << 30) as f64;
    table.row(
        "relay CPU seconds per GiB relayed",
        format!("{:.2}", cpu / gib),
        "-".into(),
        "-".into(),
    );

    // The same paths over the TLS-over-TCP transport: a second host and
    // client on the same relay, forced to TCP.
    let tcp_host_token = dir.path().join("host-tcp.token");
    std::fs::write(&tcp_host_token, mint(Role::Host, "bench-tcp")?)?;
    let tcp_client_token = dir.path().join("client-tcp.token");
    std::fs::write(&tcp_client_token, mint(Role::Client, "bench-tcp")?)?;
    let mut tcp_host_args = peer_args("host", &relay_addr, &cert, &tcp_host_token);
    tcp_host_args.extend(["--target", &sink_at, "--transport", "tcp"]);
    tcp_host_args.extend(["--stream-window", &window]);
    let mut tcp_host = spawn("host-tcp", &tcp_host_args);
    logged(&mut tcp_host, "registered with relay", "host").await;
    let mut tcp_client_args = peer_args("client", &relay_addr, &cert, &tcp_client_token);
    tcp_client_args.extend(["--listen", "127.0.0.1:0", "--transport", "tcp"]);
    tcp_client_args.extend(["--stream-window", &window]);
    let mut tcp_client = spawn("client-tcp", &tcp_client_args);
    let over_tcp: SocketAddr = logged(&mut tcp_client, "client forwarder listening", "listen")
        .await
        .parse()?;
    logged(&mut tcp_client, "connected to relay", "host").await;
    upload(over_tcp, 16 << 20).await;
    let profile = Profile::start(relay.pid(), "tcp");
    let cpu0 = cpu_secs(relay.pid());
    let tcp_up = gbps(plan.bulk, upload(over_tcp, plan.bulk).await);
    let tcp_down = gbps(plan.bulk, download(over_tcp, plan.bulk).await);
    let tcp_cpu = cpu_secs(relay.pid()) - cpu0;
    profile.stop();
    table.row(
        "TCP transport: 1 session, client to host",
        format!("{tcp_up:.2}"),
        format!("{up_d:.2}"),
        format!("{:.2}", tcp_up / up_d),
    );
    table.row(
        "TCP transport: 1 session, host to client",
        format!("{tcp_down:.2}"),
        format!("{down_d:.2}"),
        format!("{:.2}", tcp_down / down_d),
    );
    let (ours64, fair64) = aggregate(over_tcp, 64, plan.window).await;
    let (base64, _) = aggregate(sink, 64, plan.window).await;
    table.row(
        "TCP transport: 64 sessions, aggregate",
        format!("{ours64:.2}"),
        format!("{base64:.2}"),
        format!("{:.2}", ours64 / base64),
    );
    table.row(
        "TCP transport: 64 sessions, slowest / mean",
        format!("{fair64:.2}"),
        "-".into(),
        "-".into(),
    );
    let (t50, t99) = pings(over_tcp, plan.pings).await;
    table.row(
        "TCP transport: 64 B echo p50 (µs)",
        us(t50),
        us(b50),
        format!("+{}", us(t50.saturating_sub(b50))),
    );
    table.row(
        "TCP transport: 64 B echo p99 (µs)",
        us(t99),
        us(b99),
        format!("+{}", us(t99.saturating_sub(b99))),
    );
    let (ts50, ts99) = setups(over_tcp, plan.setups).await;
    table.row(
        "TCP transport: session setup p50 (µs)",
        us(ts50),
        us(d50),
        format!("+{}", us(ts50.saturating_sub(d50))),
    );
    table.row(
        "TCP transport: session setup p99 (µs)",
        us(ts99),
        us(d99),
        format!("+{}", us(ts99.saturating_sub(d99))),
    );
    table.row(
        "TCP transport: relay CPU seconds per GiB",
        format!("{:.2}", tcp_cpu / gib),
        "-".into(),
        "-".into(),
    );
    drop((tcp_client, tcp_host));

    // What resumption costs: a second client forwarder with sessions that
    // are not resumable (raw bytes after `ready`), to the same host.
    let mut plain_args = peer_args("client", &relay_addr, &cert, &client_token);
    plain_args.extend(["--listen", "127.0.0.1:0", "--congestion", &congestion]);
    plain_args.extend(["--stream-window", &window, "--resume-window", "0"]);
    let mut plain_client = spawn("client-plain", &plain_args);
    let plain: SocketAddr = logged(&mut plain_client, "client forwarder listening", "listen")
        .await
        .parse()?;
    logged(&mut plain_client, "connected to relay", "host").await;
    upload(plain, 16 << 20).await;
    // Side by side, best of three each, so that drift on a shared machine
    // does not pass for a cost.
    let (mut r_up, mut r_down, mut plain_up, mut plain_down) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..3 {
        r_up = r_up.max(gbps(plan.bulk, upload(tunnel, plan.bulk).await));
        plain_up = plain_up.max(gbps(plan.bulk, upload(plain, plan.bulk).await));
        r_down = r_down.max(gbps(plan.bulk, download(tunnel, plan.bulk).await));
        plain_down = plain_down.max(gbps(plan.bulk, download(plain, plan.bulk).await));
    }
    let (up, down) = (r_up, r_down);
    let (p50, p99) = pings(tunnel, plan.pings).await;
    let (r50, r99) = pings(plain, plan.pings).await;
    let (s50, _) = setups(tunnel, plan.setups).await;
    let (rs50, _) = setups(plain, plan.setups).await;
    let cost = |resumable: f64, not: f64| format!("{:+.1} %", (resumable / not - 1.0) * 100.0);
    println!();
    println!(
        "  {:<44} {:>14} {:>14} {:>9}",
        "resumable sessions (the default) vs not", "resumable", "not", "change"
    );
    for (what, ours, theirs, change) in [
        (
            "1 session, client to host (Gbit/s)",
            format!("{up:.2}"),
            format!("{plain_up:.2}"),
            cost(up, plain_up),
        ),
        (
            "1 session, host to client (Gbit/s)",
            format!("{down:.2}"),
            format!("{plain_down:.2}"),
            cost(down, plain_down),
        ),
        (
            "64 B echo round trip p50 (µs)",
            us(p50),
            us(r50),
            format!("+{}", us(p50.saturating_sub(r50))),
        ),
        (
            "64 B echo round trip p99 (µs)",
            us(p99),
            us(r99),
            format!("+{}", us(p99.saturating_sub(r99))),
        ),
        (
            "session setup to first byte p50 (µs)",
            us(s50),
            us(rs50),
            format!("+{}", us(s50.saturating_sub(rs50))),
        ),
    ] {
        println!("  {what:<44} {ours:>14} {theirs:>14} {change:>9}");
    }
    drop(plain_client);

    let ours = [up, down, p50.as_secs_f64() * 1e6, s50.as_secs_f64() * 1e6];
    if let Err(err) = openssh_rows(sink, &plan, ours).await {
        println!("\nOpenSSH reverse tunnel: skipped ({err:#})");
    }

    // The relay hands freed memory back every MEMORY_TRIM_INTERVAL.
    tokio::time::sleep(shellrelay::ops::defaults::MEMORY_TRIM_INTERVAL + Duration::from_secs(1))
        .await;
    let after_bulk = settle_rss(relay.pid()).await;
    println!();
    println!(
        "relay RSS: {base_rss} KiB at start, {with_hosts} with idle hosts, {after_hosts} after they left, \
         {with_sessions} with idle sessions, {after_sessions} after they ended, {after_bulk} after the transfers"
    );
    if std::env::var("SHELLRELAY_BENCH_DEBUG").is_ok() {
        for (name, proc) in [("host", &host), ("relay", &relay), ("client", &client)] {
            let mut sent: Vec<u64> = proc
                .lines()
                .iter()
                .filter(|l| l.contains("session ended"))
                .filter_map(|l| field(l, "to_client").and_then(|v| v.parse().ok()))
                .collect();
            sent.sort();
            eprintln!("{name}: to_client per session: {sent:?}");
        }
    }
    drop((client, host, relay));
    Ok(())
}

/// The same traffic through an OpenSSH reverse tunnel (`ssh -N -R`) to a
/// private sshd, when OpenSSH is installed: the tool people use instead.
/// `ours` holds shellrelay's up and down Gbit/s, echo p50 and setup p50 (µs).
async fn openssh_rows(sink: SocketAddr, plan: &Plan, ours: [f64; 4]) -> anyhow::Result<()> {
    let sshd = Sshd::start().await.context("sshd not found")?;
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-N", "-p", &sshd.port.to_string(), "-i"])
        .arg(sshd.dir.path().join("id"))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"])
        .args(["-R", &format!("0:{sink}"), &format!("{}@127.0.0.1", user())]);
    let mut tunnel = Proc::spawn("ssh -R", cmd);
    let forwarded: u16 = tunnel
        .find(|l| l.starts_with("Allocated port "))
        .await
        .and_then(|l| {
            l.strip_prefix("Allocated port ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .context("ssh -R did not report its port")?;
    let via: SocketAddr = ([127, 0, 0, 1], forwarded).into();
    upload(via, 16 << 20).await;
    let up = gbps(plan.bulk, upload(via, plan.bulk).await);
    let down = gbps(plan.bulk, download(via, plan.bulk).await);
    let (p50, _) = pings(via, plan.pings).await;
    let (s50, _) = setups(via, plan.setups).await;
    println!("\nOpenSSH reverse tunnel (ssh -N -R through a private sshd) on the same traffic:");
    println!(
        "  {:<44} {:>14} {:>14} {:>9}",
        "measure", "shellrelay", "ssh -R", "ratio"
    );
    let rows = [
        (
            "1 session, client to host (Gbit/s)",
            ours[0],
            up,
            ours[0] / up,
        ),
        (
            "1 session, host to client (Gbit/s)",
            ours[1],
            down,
            ours[1] / down,
        ),
        (
            "64 B echo round trip p50 (µs)",
            ours[2],
            p50.as_secs_f64() * 1e6,
            ours[2] / (p50.as_secs_f64() * 1e6),
        ),
        (
            "session setup to first byte p50 (µs)",
            ours[3],
            s50.as_secs_f64() * 1e6,
            ours[3] / (s50.as_secs_f64() * 1e6),
        ),
    ];
    for (what, a, b, ratio) in rows {
        println!("  {what:<44} {a:>14.2} {b:>14.2} {ratio:>9.2}");
    }
    Ok(())
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}
