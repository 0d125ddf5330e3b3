//! `cargo bench --bench hostile`: the relay, host agent and client
//! forwarder as processes under attack, beside the same setup unloaded in
//! the same run. Prints relay, host and client RSS and a live session's
//! throughput for: stalled sessions each way, a datagram flood, an Initial
//! flood from many loopback addresses, a bad-token flood, and one bulk
//! session over a 100 Mbit/s path of 20 ms per hop for each stream window.
//! `SHELLRELAY_BENCH_QUICK=1` scales it down for a smoke run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shellrelay::keys::Secret;
use shellrelay::protocol::{read_frame, write_frame, Frame, Jwt, Role, VERSION};
use shellrelay::tls::{self, TransportOptions, Trust};
use shellrelay::token::{self, Claims};
use shellrelay::transport::{RecvStream, SendStream};
use support::bin::{make_private, peer_args, relay_args};
use support::bulk::{
    cpu_secs, logged, machine, open, release_held, settle_rss, spawn, target, CHUNK,
};
use support::netem::{Link, Proxy};
use support::proc::{rss_kib, Proc};
use support::HOUR;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

struct Plan {
    /// Stalled sessions per direction.
    stalled: usize,
    /// How long each live throughput figure is measured.
    measure: Duration,
    /// Source addresses of the Initial flood.
    flood_addrs: u32,
    /// Connections of the datagram flood.
    datagram_conns: usize,
    /// Stream windows tried on the long path.
    windows: &'static [&'static str],
}

fn plan() -> Plan {
    if std::env::var("SHELLRELAY_BENCH_QUICK").is_ok() {
        Plan {
            stalled: 20,
            measure: Duration::from_secs(2),
            flood_addrs: 100,
            datagram_conns: 50,
            windows: &["1MiB"],
        }
    } else {
        Plan {
            stalled: 100,
            measure: Duration::from_secs(5),
            flood_addrs: 1000,
            datagram_conns: 1000,
            windows: &["256KiB", "512KiB", "1MiB"],
        }
    }
}

/// A relay, host agent and client forwarder, the peers reaching the relay
/// through one proxy each.
struct Rig {
    relay: Proc,
    host: Proc,
    client: Proc,
    relay_addr: SocketAddr,
    /// The client forwarder's listening address.
    tunnel: SocketAddr,
    host_proxy: Proxy,
    client_proxy: Proxy,
    cert: PathBuf,
}

impl Rig {
    async fn start(dir: &Path, transport: &[&str]) -> anyhow::Result<Rig> {
        let secret = Secret::generate();
        let secret_path = dir.join("secret");
        std::fs::write(&secret_path, secret.expose())?;
        make_private(&secret_path);
        let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
        let mint = |role| mint(&secret, role, "bench");
        let host_token = dir.join("host.token");
        std::fs::write(&host_token, mint(Role::Host)?)?;
        let client_token = dir.join("client.token");
        std::fs::write(&client_token, mint(Role::Client)?)?;
        let mut args = relay_args("127.0.0.1:0", &secret_path, &cert, &key);
        args.extend_from_slice(transport);
        let mut relay = spawn("relay", &args);
        let relay_addr: SocketAddr = logged(&mut relay, "relay listening", "addr")
            .await
            .parse()?;
        let host_proxy = Proxy::start(relay_addr).await;
        let client_proxy = Proxy::start(relay_addr).await;
        let sink = target().await.to_string();
        let via = host_proxy.addr().to_string();
        let mut host_args = peer_args("host", &via, &cert, &host_token);
        host_args.extend(["--target", &sink]);
        host_args.extend_from_slice(transport);
        let mut host = spawn("host", &host_args);
        logged(&mut host, "registered with relay", "host").await;
        let via = client_proxy.addr().to_string();
        let mut client_args = peer_args("client", &via, &cert, &client_token);
        client_args.extend(["--listen", "127.0.0.1:0"]);
        client_args.extend_from_slice(transport);
        let mut client = spawn("client", &client_args);
        let tunnel = logged(&mut client, "client forwarder listening", "listen")
            .await
            .parse()?;
        logged(&mut client, "connected to relay", "host").await;
        Ok(Rig {
            relay,
            host,
            client,
            relay_addr,
            tunnel,
            host_proxy,
            client_proxy,
            cert,
        })
    }

    /// RSS of relay, host agent and client forwarder now, KiB.
    fn rss_now(&self) -> [u64; 3] {
        [&self.relay, &self.host, &self.client].map(|p| rss_kib(p.pid()))
    }

    /// Settled RSS of relay, host agent and client forwarder, KiB.
    async fn rss(&self) -> [u64; 3] {
        [
            settle_rss(self.relay.pid()).await,
            settle_rss(self.host.pid()).await,
            settle_rss(self.client.pid()).await,
        ]
    }
}

fn mint(secret: &Secret, role: Role, host: &str) -> anyhow::Result<String> {
    token::mint(
        secret,
        &Claims::new(role, host, shellrelay::defaults::AUDIENCE, HOUR),
    )
}

/// Mbit/s of one download session through `tunnel` over `time`, counted
/// after a second of warm-up.
async fn live_rate(tunnel: SocketAddr, time: Duration) -> f64 {
    let mut tcp = open(tunnel).await;
    let _ = tcp.write_all(b"D").await;
    let _ = tcp.write_all(&u64::MAX.to_be_bytes()).await;
    let mut buf = vec![0u8; CHUNK];
    let warm = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm {
        if matches!(tcp.read(&mut buf).await, Ok(0) | Err(_)) {
            return 0.0;
        }
    }
    let start = Instant::now();
    let mut got = 0u64;
    let _ = tokio::time::timeout(time, async {
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            got += n as u64;
        }
    })
    .await;
    got as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6
}

/// Mbit/s of one upload session through `tunnel` over `time`, counted at
/// the target (which reports at the end), warm-up included.
async fn upload_rate(tunnel: SocketAddr, time: Duration) -> f64 {
    let mut tcp = open(tunnel).await;
    let _ = tcp.write_all(b"U").await;
    let buf = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    let _ = tokio::time::timeout(time, async { while tcp.write_all(&buf).await.is_ok() {} }).await;
    let _ = tcp.shutdown().await;
    let mut count = [0u8; 8];
    let _ = tcp.read_exact(&mut count).await;
    u64::from_be_bytes(count) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6
}

/// [`live_rate`], and the relay's CPU use meanwhile (percent of one core).
async fn live(rig: &Rig, time: Duration) -> (f64, f64) {
    let (cpu, start) = (cpu_secs(rig.relay.pid()), Instant::now());
    let rate = live_rate(rig.tunnel, time).await;
    let used = cpu_secs(rig.relay.pid()) - cpu;
    (rate, 100.0 * used / start.elapsed().as_secs_f64())
}

fn row(what: &str, figures: &[String]) {
    print!("  {what:<46}");
    for f in figures {
        print!(" {f:>12}");
    }
    println!();
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn main() -> anyhow::Result<()> {
    shellrelay::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match std::env::var(ATTACK) {
        Ok(kind) => rt.block_on(run_attack(&kind)),
        Err(_) => rt.block_on(run()),
    }
}

async fn run() -> anyhow::Result<()> {
    let plan = plan();
    println!("shellrelay hostile-load benchmark: {}", machine());
    println!("relay, host agent and client forwarder as processes on loopback\n");
    let dir = tempfile::tempdir()?;
    let rig = Rig::start(dir.path(), &[]).await?;
    let idle = rig.rss().await;
    let unloaded = live(&rig, plan.measure).await;
    row(
        "",
        &[
            "relay MiB",
            "host MiB",
            "client MiB",
            "live Mbit/s",
            "relay CPU %",
        ]
        .map(String::from),
    );
    let report = |what: &str, rss: [u64; 3], live: Option<(f64, f64)>| {
        let mut figures: Vec<String> = rss.iter().map(|&k| mib(k)).collect();
        if let Some((rate, cpu)) = live {
            figures.push(format!("{rate:.0}"));
            figures.push(format!("{cpu:.0}"));
        }
        row(what, &figures);
    };
    report("unloaded", idle, Some(unloaded));

    stalled(&rig, &plan, &report).await?;
    datagrams(&rig, &plan, &report).await?;
    initial_flood(&rig, &plan, &report).await?;
    bad_tokens(&rig, &plan, &report).await?;
    drop(rig);

    long_path(&plan).await?;
    Ok(())
}

/// Sessions whose far end never reads, downloads then uploads; RSS per
/// stalled session at each process.
async fn stalled(
    rig: &Rig,
    plan: &Plan,
    report: &impl Fn(&str, [u64; 3], Option<(f64, f64)>),
) -> anyhow::Result<()> {
    for (what, command) in [("download", b'D'), ("upload", b'H')] {
        let before = rig.rss().await;
        let mut held = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..plan.stalled {
            let mut tcp = open(rig.tunnel).await;
            tcp.write_all(&[command]).await?;
            if command == b'D' {
                tcp.write_all(&u64::MAX.to_be_bytes()).await?;
                held.push(tcp);
            } else {
                writers.push(tokio::spawn(async move {
                    let buf = vec![0x11u8; CHUNK];
                    while tcp.write_all(&buf).await.is_ok() {}
                }));
            }
        }
        let during = rig.rss().await;
        let rate = live(rig, plan.measure).await;
        report(
            &format!("{} stalled sessions, {what}", plan.stalled),
            during,
            Some(rate),
        );
        let per: Vec<String> = (0..3)
            .map(|i| {
                let kib = during[i].saturating_sub(before[i]) as f64 / plan.stalled as f64;
                format!("{kib:.0} KiB")
            })
            .collect();
        row("  per stalled session", &per);
        drop(held);
        for w in writers {
            w.abort();
        }
        release_held();
        tokio::time::sleep(Duration::from_secs(6)).await;
        report("  after they end", rig.rss().await, None);
    }
    Ok(())
}

/// Connections without a token that try to send DATAGRAM frames before
/// their hello.
async fn datagrams(
    rig: &Rig,
    plan: &Plan,
    report: &impl Fn(&str, [u64; 3], Option<(f64, f64)>),
) -> anyhow::Result<()> {
    let mut transport = tls::transport_config(TransportOptions::default())?;
    transport.datagram_receive_buffer_size(Some(1 << 20));
    let mut config = tls::client_config(
        &Trust::PinnedFile(rig.cert.clone()),
        TransportOptions::default(),
    )?;
    config.transport_config(Arc::new(transport));
    let mut endpoint = tls::bind_endpoint((Ipv4Addr::LOCALHOST, 0).into(), None)?;
    endpoint.set_default_client_config(config);
    let (mut conns, mut refused) = (Vec::new(), 0u64);
    for _ in 0..plan.datagram_conns {
        let Ok(connecting) = endpoint.connect(rig.relay_addr, "localhost") else {
            continue;
        };
        let Ok(conn) = connecting.await else { continue };
        for _ in 0..64 {
            if conn.send_datagram(vec![0u8; 1000].into()).is_err() {
                refused += 1;
                break;
            }
        }
        conns.push(conn);
    }
    let rss = rig.rss().await;
    let rate = live(rig, plan.measure).await;
    report(
        &format!(
            "datagrams: {} of {} conns up, {refused} told no",
            conns.len(),
            plan.datagram_conns
        ),
        rss,
        Some(rate),
    );
    drop(conns);
    endpoint.close(0u32.into(), b"");
    Ok(())
}

/// One real client Initial (as quinn's client sends it), caught on a
/// socket that never answers.
async fn an_initial() -> anyhow::Result<Vec<u8>> {
    let sink = UdpSocket::bind("127.0.0.1:0").await?;
    let config = tls::client_config(&Trust::System, TransportOptions::default())?;
    let mut endpoint = tls::bind_endpoint((Ipv4Addr::LOCALHOST, 0).into(), None)?;
    endpoint.set_default_client_config(config);
    let _connecting = endpoint.connect(sink.local_addr()?, "localhost")?;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sink.recv_from(&mut buf)).await??;
    buf.truncate(n);
    Ok(buf)
}

/// Real QUIC Initials from `flood_addrs` loopback addresses (127.1.x.y)
/// at 2.4 MB/s, while a session downloads; RSS during and after.
async fn initial_flood(
    rig: &Rig,
    plan: &Plan,
    report: &impl Fn(&str, [u64; 3], Option<(f64, f64)>),
) -> anyhow::Result<()> {
    let attack = Attack::start("initials", rig, plan)?;
    let rate = live(rig, plan.measure).await;
    let rss = rig.rss_now();
    let sent = attack.finish().await?;
    report(
        &format!(
            "Initial flood, {} addrs, {sent} Initials at 2.4 MB/s",
            plan.flood_addrs
        ),
        rss,
        Some(rate),
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    report("  after it ends", rig.rss().await, None);
    Ok(())
}

/// Hellos with a badly signed token, from 100 loopback addresses
/// (127.2.0.x), as fast as the relay answers them, while a session
/// downloads.
async fn bad_tokens(
    rig: &Rig,
    plan: &Plan,
    report: &impl Fn(&str, [u64; 3], Option<(f64, f64)>),
) -> anyhow::Result<()> {
    let attack = Attack::start("bad-tokens", rig, plan)?;
    let rate = live(rig, plan.measure).await;
    let rss = rig.rss_now();
    let hellos = attack.finish().await?;
    report(
        &format!("bad-token flood, {hellos} hellos"),
        rss,
        Some(rate),
    );
    Ok(())
}

/// An attack run by this benchmark's own binary as a separate process, so
/// that its work does not slow the process that measures the live session.
struct Attack(tokio::process::Child);

impl Attack {
    fn start(kind: &str, rig: &Rig, plan: &Plan) -> anyhow::Result<Attack> {
        let secs = (plan.measure + Duration::from_millis(1500)).as_secs_f64();
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .env(ATTACK, kind)
            .env("SHELLRELAY_BENCH_RELAY", rig.relay_addr.to_string())
            .env("SHELLRELAY_BENCH_CERT", &rig.cert)
            .env("SHELLRELAY_BENCH_SECS", secs.to_string())
            .env("SHELLRELAY_BENCH_ADDRS", plan.flood_addrs.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Attack(child))
    }

    /// Waits for the attack to end; what it counted.
    async fn finish(self) -> anyhow::Result<u64> {
        let out = self.0.wait_with_output().await?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }
}

/// Set in an attack's process to the attack it runs.
const ATTACK: &str = "SHELLRELAY_BENCH_ATTACK";

/// Runs the attack named by [`ATTACK`]; prints what it counted.
async fn run_attack(kind: &str) -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let relay: SocketAddr = var("SHELLRELAY_BENCH_RELAY").parse()?;
    let cert = PathBuf::from(var("SHELLRELAY_BENCH_CERT"));
    let time = Duration::from_secs_f64(var("SHELLRELAY_BENCH_SECS").parse()?);
    let addrs: u32 = var("SHELLRELAY_BENCH_ADDRS").parse()?;
    let count = Arc::new(AtomicU64::new(0));
    let attack = match kind {
        "initials" => tokio::spawn(initials(relay, addrs, count.clone())),
        _ => tokio::spawn(forged_hellos(relay, cert, count.clone())),
    };
    tokio::time::sleep(time).await;
    attack.abort();
    println!("{}", count.load(Ordering::Relaxed));
    Ok(())
}

/// Sends one real Initial from each of `addrs` loopback addresses in turn
/// (127.1.x.y) at 2.4 MB/s.
async fn initials(relay: SocketAddr, addrs: u32, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
    let initial = an_initial().await?;
    let mut sockets = Vec::new();
    for i in 0..addrs {
        let ip = Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8 + 1);
        sockets.push(UdpSocket::bind((ip, 0)).await?);
    }
    let per_tick = 2_400_000 / 100 / initial.len() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut next = 0usize;
    loop {
        tick.tick().await;
        for _ in 0..per_tick {
            let _ = sockets[next % sockets.len()].send_to(&initial, relay).await;
            next += 1;
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Hellos with a token signed by the wrong key from 100 loopback addresses
/// (127.2.0.x), each as fast as the relay answers.
async fn forged_hellos(
    relay: SocketAddr,
    cert: PathBuf,
    hellos: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let forged = mint(&Secret::generate(), Role::Client, "bench")?;
    let mut tasks = Vec::new();
    for i in 0..100u8 {
        let mut endpoint = tls::bind_endpoint((Ipv4Addr::new(127, 2, 0, i + 1), 0).into(), None)?;
        let config = tls::client_config(
            &Trust::PinnedFile(cert.clone()),
            TransportOptions::default(),
        )?;
        endpoint.set_default_client_config(config);
        let (forged, hellos) = (forged.clone(), hellos.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(connecting) = endpoint.connect(relay, "localhost") else {
                    return;
                };
                let Ok(conn) = connecting.await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if let Ok((send, recv)) = conn.open_bi().await {
                    let hello = Frame::Hello {
                        version: VERSION,
                        role: Role::Client,
                        token: Jwt(forged.clone()),
                        host: None,
                        keep_other: false,
                    };
                    let _ = write_frame(&mut SendStream::Quic(send), &hello).await;
                    let _ = read_frame(&mut RecvStream::Quic(recv)).await;
                    hellos.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// One bulk session over a 100 Mbit/s path on both hops (client–relay and
/// relay–host), 10 and 20 ms each way, for each stream window.
async fn long_path(plan: &Plan) -> anyhow::Result<()> {
    println!("\none bulk session, 100 Mbit/s on both hops (down / up Mbit/s)");
    row("", &["10 ms each way", "20 ms each way"].map(String::from));
    for window in plan.windows {
        let mut figures = Vec::new();
        for delay in [10, 20] {
            let link = Link::path(100_000_000, Duration::from_millis(delay));
            let dir = tempfile::tempdir()?;
            let rig = Rig::start(dir.path(), &["--stream-window", window]).await?;
            for proxy in [&rig.host_proxy, &rig.client_proxy] {
                proxy.set_link(link, link);
            }
            let time = plan.measure * 2;
            let down = live_rate(rig.tunnel, time).await;
            let up = upload_rate(rig.tunnel, time).await;
            figures.push(format!("{down:.1} / {up:.1}"));
        }
        row(&format!("--stream-window {window}"), &figures);
    }
    Ok(())
}
