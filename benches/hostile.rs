//! `cargo bench --bench hostile`: the relay, host agent and client
//! forwarder as processes under attack, beside the same setup unloaded in
//! the same run. Prints relay, host and client RSS and a live session's
//! throughput for: stalled sessions each way, a datagram flood, an Initial
//! flood from many loopback addresses, a bad-token flood, and one bulk
//! session over a 100 Mbit/s path of 20 ms per hop for each stream window.
//! Then a row per attack on fair shares (issue 21), each against a relay
//! of its own and beside the same relay unloaded: a client that grants no
//! credit (A), opens held unfinished (B), silent connections from 69
//! networks (C), huge hellos into the audit log (D), rapid resets (E), and
//! the bad-token flood's toll on a live session (F); for B, C and E, how
//! many new sessions of another user got in meanwhile, over QUIC and TCP.
//! `SHELLRELAY_BENCH_QUICK=1` scales it down for a smoke run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use shellrelay::access::keys::Secret;
use shellrelay::access::token::{self, Claims};
use shellrelay::net::tls::Trust;
use shellrelay::net::transport::tcp::{tcp_client_config, Settings, Side, TcpConn};
use shellrelay::net::transport::{options::STREAM_WINDOW, TransportOptions};
use shellrelay::net::transport::{Conn, RecvStream, SendStream, Stream};
use shellrelay::protocol::{read_frame, write_frame, Frame, Jwt, Reason, Role, VERSION};
use support::bin::{make_private, path_str, peer_args, relay_args};
use support::bulk::{
    cpu_secs, logged, machine, release_held, settle_rss, spawn, target, CHUNK, GREETING,
};
use support::netem::{Link, Proxy};
use support::proc::{rss_kib, Proc};
use support::HOUR;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

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
    /// Attack A: connections of the client that grants no credit, and
    /// how long it runs.
    no_credit: (u64, Duration),
    /// Attack B: streams held with an unfinished `open`, and how long.
    held_opens: (u64, Duration),
    /// Attack C: networks of 16 silent connections each, and how long.
    silent: (u64, Duration),
    /// Attack D: connections sending huge hellos, and how long.
    huge_hellos: (u64, Duration),
    /// Attack E: connections of the rapid reset, and how long.
    resets: (u64, Duration),
    /// When others try to get in during an attack.
    visits: Visits,
}

/// When the [`VISITORS`] of each transport try to get in during an
/// attack: the first `after` its start, the next each `gap` later
/// (QUIC and TCP side by side), each given `limit` and no longer than
/// the attack lasts.
#[derive(Debug, Clone, Copy)]
struct Visits {
    after: Duration,
    gap: Duration,
    limit: Duration,
}

fn plan() -> Plan {
    let secs = Duration::from_secs;
    if std::env::var("SHELLRELAY_BENCH_QUICK").is_ok() {
        Plan {
            stalled: 20,
            measure: secs(2),
            flood_addrs: 100,
            datagram_conns: 50,
            windows: &["1MiB"],
            no_credit: (4, secs(6)),
            held_opens: (100, secs(6)),
            silent: (69, secs(6)),
            huge_hellos: (16, secs(3)),
            resets: (4, secs(4)),
            visits: Visits {
                after: Duration::from_millis(1500),
                gap: Duration::from_millis(250),
                limit: secs(5),
            },
        }
    } else {
        Plan {
            stalled: 100,
            measure: secs(5),
            flood_addrs: 1000,
            datagram_conns: 1000,
            windows: &["256KiB", "512KiB", "1MiB"],
            no_credit: (20, secs(20)),
            held_opens: (476, secs(20)),
            silent: (69, secs(20)),
            huge_hellos: (64, secs(10)),
            resets: (8, secs(15)),
            visits: Visits {
                after: secs(3),
                gap: secs(1),
                limit: secs(10),
            },
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
    /// The file of the secret that signs tokens, for attackers' own.
    secret_path: PathBuf,
    /// A client token of another user than the client forwarder's.
    visitor: String,
}

impl Rig {
    /// Starts the relay with `relay_extra` arguments, and the host agent
    /// and client forwarder with `peer_extra`.
    async fn start(dir: &Path, relay_extra: &[&str], peer_extra: &[&str]) -> anyhow::Result<Rig> {
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
        args.extend_from_slice(relay_extra);
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
        host_args.extend_from_slice(peer_extra);
        let mut host = spawn("host", &host_args);
        logged(&mut host, "registered with relay", "host").await;
        let via = client_proxy.addr().to_string();
        let mut client_args = peer_args("client", &via, &cert, &client_token);
        client_args.extend(["--listen", "127.0.0.1:0"]);
        client_args.extend_from_slice(peer_extra);
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
            visitor: client_token_for(&secret, "visitor")?,
            secret_path,
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
        &Claims::new(role, host, shellrelay::ops::defaults::AUDIENCE, HOUR),
    )
}

/// A client token for the rig's host `bench` whose id (what the relay's
/// per-token limits count) is `jti`.
fn client_token_for(secret: &Secret, jti: &str) -> anyhow::Result<String> {
    let mut claims = Claims::new(
        Role::Client,
        "bench",
        shellrelay::ops::defaults::AUDIENCE,
        HOUR,
    );
    claims.jti = Some(jti.to_owned());
    token::mint(secret, &claims)
}

/// How long a session through the tunnel may take to greet, and a
/// transfer to show progress, before its figure is counted as 0: a
/// relay that freezes a session must not freeze the benchmark.
const STUCK: Duration = Duration::from_secs(10);

/// A session through `tunnel` that the target has greeted, unless it
/// fails or takes longer than [`STUCK`].
async fn tunnel_session(tunnel: SocketAddr) -> Option<TcpStream> {
    let greeted = async {
        let mut tcp = TcpStream::connect(tunnel).await?;
        tcp.set_nodelay(true)?;
        let mut greeting = [0u8; 1];
        tcp.read_exact(&mut greeting).await?;
        std::io::Result::Ok(tcp)
    };
    tokio::time::timeout(STUCK, greeted).await.ok()?.ok()
}

/// Mbit/s of one download session through `tunnel` over `time`, counted
/// after a second of warm-up.
async fn live_rate(tunnel: SocketAddr, time: Duration) -> f64 {
    let Some(mut tcp) = tunnel_session(tunnel).await else {
        return 0.0;
    };
    let _ = tcp.write_all(b"D").await;
    let _ = tcp.write_all(&u64::MAX.to_be_bytes()).await;
    let mut buf = vec![0u8; CHUNK];
    let warm = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm {
        match tokio::time::timeout(STUCK, tcp.read(&mut buf)).await {
            Ok(Ok(1..)) => {}
            _ => return 0.0,
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
    let Some(mut tcp) = tunnel_session(tunnel).await else {
        return 0.0;
    };
    let _ = tcp.write_all(b"U").await;
    let buf = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    let _ = tokio::time::timeout(time, async { while tcp.write_all(&buf).await.is_ok() {} }).await;
    let _ = tcp.shutdown().await;
    let mut count = [0u8; 8];
    let _ = tokio::time::timeout(STUCK, tcp.read_exact(&mut count)).await;
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
    print!("  {what:<52}");
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
    let rig = Rig::start(dir.path(), &[], &[]).await?;
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
    let flood = bad_tokens(&rig, &plan, &report).await?;
    drop(rig);

    fair_shares(&plan, &flood, unloaded).await?;
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
            let Some(mut tcp) = tunnel_session(rig.tunnel).await else {
                continue;
            };
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
    let mut transport =
        shellrelay::net::transport::quic::transport_config(TransportOptions::default())?;
    transport.datagram_receive_buffer_size(Some(1 << 20));
    let mut config = shellrelay::net::transport::quic::client_config(
        &Trust::PinnedFile(rig.cert.clone()),
        TransportOptions::default(),
    )?;
    config.transport_config(Arc::new(transport));
    let mut endpoint =
        shellrelay::net::transport::quic::bind_endpoint((Ipv4Addr::LOCALHOST, 0).into(), None)?;
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
    let config = shellrelay::net::transport::quic::client_config(
        &Trust::System,
        TransportOptions::default(),
    )?;
    let mut endpoint =
        shellrelay::net::transport::quic::bind_endpoint((Ipv4Addr::LOCALHOST, 0).into(), None)?;
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
    let time = plan.measure + Duration::from_millis(1500);
    let attack = Attack::start("initials", rig, time, plan.flood_addrs.into())?;
    let rate = live(rig, plan.measure).await;
    let rss = rig.rss_now();
    let sent = attack.finish().await;
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
) -> anyhow::Result<Flood> {
    let time = plan.measure + Duration::from_millis(1500);
    let attack = Attack::start("bad-tokens", rig, time, 100)?;
    let (started, cpu) = (Instant::now(), attack.cpu());
    let live = live(rig, plan.measure).await;
    let (attacker, secs) = (attack.cpu() - cpu, started.elapsed().as_secs_f64());
    let rss = rig.rss_now();
    let hellos = attack.finish().await;
    report(
        &format!("bad-token flood, {hellos} hellos"),
        rss,
        Some(live),
    );
    Ok(Flood {
        live,
        attacker: 100.0 * attacker / secs,
    })
}

/// A live session under the bad-token flood: its rate (Mbit/s) and the
/// relay's CPU use (percent of a core), and the attacker's CPU use.
struct Flood {
    live: (f64, f64),
    attacker: f64,
}

// ------------------------------------------------ fair shares (issue 21)

/// New sessions of another user tried during each attack, per transport.
const VISITORS: usize = 6;

/// Most the relay may grow to under attack A before the attack is stopped,
/// KiB: six times the target, well past a verdict, and short of what
/// would threaten the machine.
const RSS_CAP: u64 = 3 * 1024 * 1024;

/// Attack A's relay budget (`--max-buffered`), MiB.
const A_BUDGET_MIB: u64 = 256;

/// The rows of issue 21, each attack against a relay of its own; F's is
/// the live session under the bad-token `flood` against `unloaded` (rate
/// and relay CPU), from the first rig.
async fn fair_shares(plan: &Plan, flood: &Flood, unloaded: (f64, f64)) -> anyhow::Result<()> {
    println!("\nfair shares (issue 21): each attack against a relay of its own");
    println!(
        "  others: new sessions of another token, each from a loopback address new to the \
         relay, that got in (of {VISITORS} over QUIC, of {VISITORS} over TCP)"
    );
    println!(
        "  unloaded: the same relay before the attack (A RSS; B, C others; D the log's growth \
         with those sessions; E CPU scaled from {:?} idle)",
        plan.measure
    );
    row(
        "",
        &["measured", "target", "unloaded", "others in"].map(String::from),
    );
    no_credit(plan).await?;
    for via in [Via::Quic, Via::Tcp] {
        held_opens(plan, via).await?;
    }
    silent(plan).await?;
    huge_hellos(plan).await?;
    for with_open in [false, true] {
        rapid_reset(plan, with_open).await?;
    }
    let share = if unloaded.0 > 0.0 {
        format!("{:.0} %", 100.0 * flood.live.0 / unloaded.0)
    } else {
        "-".to_owned()
    };
    row(
        "F forged-token hellos, 100 addrs: live rate",
        &[
            share,
            "≥ 80 %".into(),
            format!("{:.0} Mbit/s", unloaded.0),
            "-".into(),
        ],
    );
    println!(
        "      (relay CPU {:.0} % of a core, {:.0} % unloaded; the attacker's process {:.0} %)",
        flood.live.1, unloaded.1, flood.attacker
    );
    Ok(())
}

/// Attack A: one client token over TCP grants the relay no HTTP/2 window
/// and opens streams each carrying a stream window of data, from many
/// connections; the relay has a budget of 256 MiB. Its peak RSS, against
/// twice the budget.
async fn no_credit(plan: &Plan) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let budget = format!("{A_BUDGET_MIB}MiB");
    let rig = Rig::start(dir.path(), &["--max-buffered", &budget], &[]).await?;
    let before = others(&rig, 140, plan.visits, Instant::now() + HOUR).await;
    let idle = settle_rss(rig.relay.pid()).await;
    let (conns, time) = plan.no_credit;
    let under = under_attack(&rig, plan, "no-credit", time, conns, 40).await?;
    let peak = if under.capped {
        format!("> {} MiB", RSS_CAP / 1024)
    } else {
        format!("{} MiB", under.peak_kib / 1024)
    };
    row(
        &format!(
            "A {conns} no-credit TCP conns, {}s: relay RSS",
            time.as_secs()
        ),
        &[
            peak,
            format!("≤ {} MiB", 2 * A_BUDGET_MIB),
            format!("{} MiB", idle / 1024),
            under.others.show(),
        ],
    );
    under.note(&format!("{} streams opened", under.count), before);
    Ok(())
}

/// Attack B: one client token holds streams whose `open` never completes,
/// renewed before the relay's open timeout, over `via`. How many
/// sessions of another token get in meanwhile.
async fn held_opens(plan: &Plan, via: Via) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rig = Rig::start(dir.path(), &[], &[]).await?;
    let net = 41 + via as u8;
    let before = others(&rig, net + 100, plan.visits, Instant::now() + HOUR).await;
    let (streams, time) = plan.held_opens;
    let kind = match via {
        Via::Quic => "held-quic",
        Via::Tcp => "held-tcp",
    };
    let under = under_attack(&rig, plan, kind, time, streams, net).await?;
    row(
        &format!("B {streams} held opens over {}: others in", via.name()),
        &[
            under.others.show(),
            "≥ 5/6 each".into(),
            before.show(),
            "-".into(),
        ],
    );
    under.note(&format!("{} streams opened", under.count), before);
    Ok(())
}

/// Attack C: silent TCP connections, 16 from each of 69 loopback
/// addresses (127.1.0.x), made again when cut. How many new peers (from
/// addresses the relay has never seen) get in meanwhile.
async fn silent(plan: &Plan) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rig = Rig::start(dir.path(), &[], &[]).await?;
    let before = others(&rig, 143, plan.visits, Instant::now() + HOUR).await;
    let (networks, time) = plan.silent;
    let under = under_attack(&rig, plan, "silent", time, networks, 43).await?;
    row(
        &format!("C {} silent TCP conns: new peers in", networks * 16),
        &[
            under.others.show(),
            "≥ 5/6 each".into(),
            before.show(),
            "-".into(),
        ],
    );
    under.note(&format!("{} connections made", under.count), before);
    Ok(())
}

/// Attack D: tokenless hellos whose `role` is 16 KB of text, from one
/// network over both transports, into a relay with an audit log. How
/// much the log grows, beside what a dozen sessions of another user add.
async fn huge_hellos(plan: &Plan) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("audit.jsonl");
    let rig = Rig::start(dir.path(), &["--audit-log", path_str(&log)], &[]).await?;
    let size = || std::fs::metadata(&log).map_or(0, |m| m.len());
    let start = size();
    let before = others(&rig, 144, plan.visits, Instant::now() + HOUR).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet = size().saturating_sub(start);
    let start = size();
    let (conns, time) = plan.huge_hellos;
    let under = under_attack(&rig, plan, "huge-hellos", time, conns, 44).await?;
    // The audit log is written by a thread of its own.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = size().saturating_sub(start);
    row(
        &format!(
            "D {conns} conns of 16 KB hellos, {}s: audit log",
            time.as_secs()
        ),
        &[
            format!("+{:.2} MiB", grown as f64 / (1024.0 * 1024.0)),
            "≤ 2 MiB".into(),
            format!("+{:.1} KiB", quiet as f64 / 1024.0),
            under.others.show(),
        ],
    );
    under.note(&format!("{} hellos answered", under.count), before);
    Ok(())
}

/// Attack E: rapid reset with a valid client token: open a stream, reset
/// it 5 ms later (`with_open`: send `open` first), half the connections
/// over QUIC and half over TCP. The relay's CPU time, against half a
/// core.
async fn rapid_reset(plan: &Plan, with_open: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rig = Rig::start(dir.path(), &[], &[]).await?;
    let net = 45 + u8::from(with_open);
    let before = others(&rig, net + 100, plan.visits, Instant::now() + HOUR).await;
    let (conns, time) = plan.resets;
    let idle = {
        let cpu = cpu_secs(rig.relay.pid());
        tokio::time::sleep(plan.measure).await;
        (cpu_secs(rig.relay.pid()) - cpu) * time.as_secs_f64() / plan.measure.as_secs_f64()
    };
    let kind = if with_open { "reset-open" } else { "reset" };
    let under = under_attack(&rig, plan, kind, time, conns, net).await?;
    let what = if with_open { "open, reset" } else { "reset" };
    row(
        &format!("E {what} 5 ms on, {conns} conns, {}s: CPU", time.as_secs()),
        &[
            format!("{:.1} CPU-s", under.cpu),
            format!("≤ {:.1} CPU-s", time.as_secs_f64() / 2.0),
            format!("{idle:.2} CPU-s"),
            under.others.show(),
        ],
    );
    let did = format!(
        "{} streams opened; a connection cut is made again at most 100 times a second",
        under.count
    );
    under.note(&did, before);
    Ok(())
}

/// What an attack cost the relay, and who got in meanwhile.
struct Under {
    others: Others,
    /// What the attack counted.
    count: u64,
    /// The relay's highest RSS, KiB.
    peak_kib: u64,
    /// Whether the relay passed [`RSS_CAP`] and the attack was stopped.
    capped: bool,
    /// The relay's CPU seconds while the attack ran.
    cpu: f64,
    /// The attack's process's CPU seconds, as last seen.
    attacker_cpu: f64,
}

impl Under {
    /// Prints, under its row, what the attack did and why others were
    /// turned away (if they were, now or unloaded).
    fn note(&self, did: &str, before: Others) {
        println!(
            "      ({did}; the attacker's process used {:.1} CPU-s)",
            self.attacker_cpu
        );
        for (when, others) in [("unloaded", &before), ("attacked", &self.others)] {
            for (via, why) in [("QUIC", &others.quic_err), ("TCP", &others.tcp_err)] {
                if let Some(why) = why {
                    let why: String = why.chars().take(110).collect();
                    println!("      {when}, a {via} visitor: {why}");
                }
            }
        }
    }
}

/// Runs attack `kind` of size `n` against `rig` for `time`, while others
/// try to get in from 127.`net`.x.y; samples the relay's RSS throughout,
/// and stops the attack if the relay passes [`RSS_CAP`].
async fn under_attack(
    rig: &Rig,
    plan: &Plan,
    kind: &str,
    time: Duration,
    n: u64,
    net: u8,
) -> anyhow::Result<Under> {
    let pid = rig.relay.pid();
    let cpu = cpu_secs(pid);
    let mut attack = Attack::start(kind, rig, time, n)?;
    let end = Instant::now() + time;
    let visits = async {
        tokio::time::sleep(plan.visits.after).await;
        others(rig, net, plan.visits, end).await
    };
    let sample = async {
        let (mut peak, mut capped, mut attacker) = (0, false, 0.0);
        while Instant::now() < end {
            let rss = rss_kib(pid);
            peak = peak.max(rss);
            attacker = attack.cpu().max(attacker);
            if rss > RSS_CAP && !capped {
                capped = true;
                attack.stop();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (peak, capped, attacker)
    };
    let (others, (peak_kib, capped, attacker_cpu)) = tokio::join!(visits, sample);
    let count = attack.finish().await;
    Ok(Under {
        others,
        count,
        peak_kib,
        capped,
        cpu: cpu_secs(pid) - cpu,
        attacker_cpu,
    })
}

/// How many of the visitors got in over each transport, and why the
/// first one turned away was.
#[derive(Debug, Default)]
struct Others {
    quic: usize,
    tcp: usize,
    quic_err: Option<String>,
    tcp_err: Option<String>,
}

impl Others {
    fn show(&self) -> String {
        format!("{}/{VISITORS}, {}/{VISITORS}", self.quic, self.tcp)
    }
}

/// [`VISITORS`] new sessions over each transport from another token than
/// the rig's client, each from an address of its own (127.`net`.0.x over
/// QUIC, 127.`net`.1.x over TCP), started `visits.gap` apart and each
/// given `visits.limit`, but no later than `until`.
async fn others(rig: &Rig, net: u8, visits: Visits, until: Instant) -> Others {
    let Ok(dialer) = Dialer::new(rig.relay_addr, &rig.cert) else {
        return Others::default();
    };
    let mut tries = JoinSet::new();
    for i in 0..VISITORS {
        for via in [Via::Quic, Via::Tcp] {
            let (dialer, token) = (dialer.clone(), rig.visitor.clone());
            let from = IpAddr::V4(Ipv4Addr::new(127, net, via as u8, i as u8 + 1));
            let wait = visits.gap * i as u32;
            tries.spawn(async move {
                tokio::time::sleep(wait).await;
                let limit = visits
                    .limit
                    .min(until.saturating_duration_since(Instant::now()));
                let got = match tokio::time::timeout(limit, visit(&dialer, from, &token, via)).await
                {
                    Ok(got) => got,
                    Err(_) => Err(anyhow::anyhow!("no session within {limit:.1?}")),
                };
                (via, got)
            });
        }
    }
    let mut others = Others::default();
    while let Some(done) = tries.join_next().await {
        let Ok((via, got)) = done else { continue };
        let (count, err) = match via {
            Via::Quic => (&mut others.quic, &mut others.quic_err),
            Via::Tcp => (&mut others.tcp, &mut others.tcp_err),
        };
        match got {
            Ok(()) => *count += 1,
            Err(why) => {
                err.get_or_insert_with(|| format!("{why:#}"));
            }
        }
    }
    others
}

/// A new client of the rig's host from `from` over `via`: connection,
/// hello, `open`, `ready`, and the target's greeting through the session.
async fn visit(dialer: &Dialer, from: IpAddr, token: &str, via: Via) -> anyhow::Result<()> {
    let link = dialer.link(from, token, via).await?;
    let Stream { mut send, mut recv } = link.conn.open().await?;
    write_frame(&mut send, &open_frame()).await?;
    match read_frame(&mut recv).await? {
        Frame::Ready { .. } => {}
        Frame::Refused { message, .. } => anyhow::bail!("session refused: {message}"),
        other => anyhow::bail!("unexpected answer to open: {other:?}"),
    }
    let mut greeting = [0u8; 1];
    recv.read_exact(&mut greeting).await?;
    anyhow::ensure!(greeting[0] == GREETING, "no greeting from the target");
    let _ = send.finish();
    link.conn.close(Reason::Done, "");
    Ok(())
}

/// An attack run by this benchmark's own binary as a separate process, so
/// that its work does not slow the process that measures the live session.
struct Attack(tokio::process::Child);

impl Attack {
    /// Starts attack `kind` of size `n` against `rig`, for `time`.
    fn start(kind: &str, rig: &Rig, time: Duration, n: u64) -> anyhow::Result<Attack> {
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .env(ATTACK, kind)
            .env("SHELLRELAY_BENCH_RELAY", rig.relay_addr.to_string())
            .env("SHELLRELAY_BENCH_CERT", &rig.cert)
            .env("SHELLRELAY_BENCH_SECRET", &rig.secret_path)
            .env("SHELLRELAY_BENCH_SECS", time.as_secs_f64().to_string())
            .env("SHELLRELAY_BENCH_N", n.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Attack(child))
    }

    /// CPU seconds the attack's process has used so far.
    fn cpu(&self) -> f64 {
        self.0.id().map_or(0.0, cpu_secs)
    }

    /// Stops the attack before its time.
    fn stop(&mut self) {
        let _ = self.0.start_kill();
    }

    /// Waits for the attack to end, at most [`FINISH_WAIT`] (then it is
    /// stopped); what it counted (0 if it was stopped or failed, which it
    /// says on stderr).
    async fn finish(mut self) -> u64 {
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            let read = stdout.read_to_string(&mut out);
            if tokio::time::timeout(FINISH_WAIT, read).await.is_err() {
                self.stop();
            }
        }
        let _ = self.0.wait().await;
        out.trim().parse().unwrap_or(0)
    }
}

/// How long an attack may take to end once its time is up (or, for the
/// first rows, once the live session's figure is in).
const FINISH_WAIT: Duration = Duration::from_secs(15);

/// Set in an attack's process to the attack it runs.
const ATTACK: &str = "SHELLRELAY_BENCH_ATTACK";

/// What an attack's process is told: where the relay is, how to trust it
/// and sign tokens for it, and the attack's size.
#[derive(Clone)]
struct Target {
    dialer: Dialer,
    cert: PathBuf,
    secret: PathBuf,
    n: u64,
}

impl Target {
    /// A client token of the rig's host with token id `jti`.
    fn token(&self, jti: &str) -> anyhow::Result<String> {
        client_token_for(&Secret::from_file(&self.secret)?, jti)
    }
}

/// Runs the attack named by [`ATTACK`]; prints what it counted.
async fn run_attack(kind: &str) -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let relay: SocketAddr = var("SHELLRELAY_BENCH_RELAY").parse()?;
    let cert = PathBuf::from(var("SHELLRELAY_BENCH_CERT"));
    let time = Duration::from_secs_f64(var("SHELLRELAY_BENCH_SECS").parse()?);
    let target = Target {
        dialer: Dialer::new(relay, &cert)?,
        secret: PathBuf::from(var("SHELLRELAY_BENCH_SECRET")),
        n: var("SHELLRELAY_BENCH_N").parse()?,
        cert,
    };
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let attack = match kind {
        "initials" => tokio::spawn(initials(relay, target.n as u32, c)),
        "bad-tokens" => tokio::spawn(forged_hellos(relay, target.cert, c)),
        "no-credit" => tokio::spawn(no_credit_attack(target, c)),
        "held-quic" => tokio::spawn(held_attack(target, Via::Quic, c)),
        "held-tcp" => tokio::spawn(held_attack(target, Via::Tcp, c)),
        "silent" => tokio::spawn(silent_attack(relay, target.n, c)),
        "huge-hellos" => tokio::spawn(huge_hello_attack(target, c)),
        "reset" => tokio::spawn(reset_attack(target, false, c)),
        "reset-open" => tokio::spawn(reset_attack(target, true, c)),
        other => anyhow::bail!("no attack named {other}"),
    };
    tokio::time::sleep(time).await;
    if attack.is_finished() {
        if let Ok(Err(err)) = attack.await {
            eprintln!("attack {kind} failed: {err:#}");
        }
    } else {
        attack.abort();
    }
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
        let mut endpoint = shellrelay::net::transport::quic::bind_endpoint(
            (Ipv4Addr::new(127, 2, 0, i + 1), 0).into(),
            None,
        )?;
        let config = shellrelay::net::transport::quic::client_config(
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
                        moving: false,
                        direct: None,
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

/// Attack A: `n` TLS-over-TCP connections of one client token (from
/// 127.10.0.x), each granting the relay no HTTP/2 stream window and
/// opening streams as fast as the relay lets it, each with `open` and a
/// stream window of data behind it; counts the streams.
async fn no_credit_attack(target: Target, streams: Arc<AtomicU64>) -> anyhow::Result<()> {
    let hello = client_hello(&target.token("attacker-a")?).encode()?;
    let mut payload = open_frame().encode()?;
    payload.push(b'H');
    payload.resize(STREAM_WINDOW as usize, 0x55);
    let payload = Bytes::from(payload);
    let mut conns = JoinSet::new();
    for i in 0..target.n {
        let from = IpAddr::V4(Ipv4Addr::new(127, 10, 0, i as u8 + 1));
        let (dialer, hello, payload) = (target.dialer.clone(), hello.clone(), payload.clone());
        let streams = streams.clone();
        conns.spawn(async move {
            loop {
                let started = Instant::now();
                let tls = dialer.tls_hello(from, &hello).await;
                if let Ok(tls) = tls {
                    let _ = no_credit_conn(tls, &payload, &streams).await;
                }
                pace(started, Duration::from_millis(200)).await;
            }
        });
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// One connection of [`no_credit_attack`], until the relay ends it.
async fn no_credit_conn(
    tls: TlsStream<TcpStream>,
    payload: &Bytes,
    streams: &AtomicU64,
) -> anyhow::Result<()> {
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await?;
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let _ = conn.await;
    });
    let (mut send, _control) = control_stream(send).await?;
    loop {
        send = send.ready().await?;
        let (response, mut body) = send.send_request(session_request()?, false)?;
        body.send_data(payload.clone(), false)?;
        streams.fetch_add(1, Ordering::Relaxed);
        // Held until the relay ends the stream.
        tasks.spawn(async move {
            let _body = body;
            if let Ok(response) = response.await {
                let mut recv = response.into_body();
                while let Some(Ok(_)) = recv.data().await {}
            }
        });
        while tasks.try_join_next().is_some() {}
        // `ready` need not wait: let the connection's driver run.
        tokio::task::yield_now().await;
    }
}

/// The halves of an HTTP/2 stream opened by hand.
type H2Stream = (h2::RecvStream, h2::SendStream<Bytes>);

/// Opens the connection's first stream, its control stream, and waits
/// for the relay's answer to it: by then the relay's settings (its cap
/// on streams above all) are in force. The stream is open as long as
/// the caller keeps it.
async fn control_stream(
    send: h2::client::SendRequest<Bytes>,
) -> anyhow::Result<(h2::client::SendRequest<Bytes>, H2Stream)> {
    let mut send = send.ready().await?;
    let (response, body) = send.send_request(session_request()?, false)?;
    let response = response.await?;
    Ok((send, (response.into_body(), body)))
}

/// How long attack B holds each stream before it gives it up and opens
/// another: just under the relay's open timeout.
const HOLD_FOR: Duration = Duration::from_millis(9500);

/// Attack B: one client token (from 127.11.0.1) holds `n` streams over
/// `via` whose `open` never completes, each given up and replaced after
/// [`HOLD_FOR`] or as soon as the relay ends it; connects again when cut.
/// Counts the streams opened.
async fn held_attack(target: Target, via: Via, opened: Arc<AtomicU64>) -> anyhow::Result<()> {
    let token = target.token("attacker-b")?;
    let from = IpAddr::V4(Ipv4Addr::new(127, 11, 0, 1));
    let mut partial = open_frame().encode()?;
    partial.pop();
    let partial = Bytes::from(partial);
    loop {
        let started = Instant::now();
        if let Ok(link) = target.dialer.link(from, &token, via).await {
            let mut held = JoinSet::new();
            for _ in 0..target.n {
                let (conn, partial, opened) = (link.conn.clone(), partial.clone(), opened.clone());
                held.spawn(async move {
                    while let Ok(Stream { mut send, mut recv }) = conn.open().await {
                        opened.fetch_add(1, Ordering::Relaxed);
                        let ended = async {
                            send.write_all(&partial).await?;
                            let mut buf = [0u8; 1024];
                            while recv.read(&mut buf).await? > 0 {}
                            anyhow::Ok(())
                        };
                        if tokio::time::timeout(HOLD_FOR, ended).await.is_err() {
                            send.reset(Reason::Aborted);
                            recv.stop(Reason::Aborted);
                        } else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                });
            }
            link.conn.closed().await;
        }
        pace(started, Duration::from_millis(200)).await;
    }
}

/// Attack C: 16 TCP connections from each of `networks` loopback
/// addresses (127.1.0.x) that never say a word, each made again when the
/// relay cuts it (at most ten times a second); counts the connections.
async fn silent_attack(
    relay: SocketAddr,
    networks: u64,
    made: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut conns = JoinSet::new();
    for net in 0..networks {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 1, 0, net as u8 + 1)), 0);
        for _ in 0..16 {
            let made = made.clone();
            conns.spawn(async move {
                loop {
                    let started = Instant::now();
                    let socket = TcpSocket::new_v4().and_then(|s| s.bind(from).map(|()| s));
                    if let Ok(socket) = socket {
                        if let Ok(mut tcp) = socket.connect(relay).await {
                            made.fetch_add(1, Ordering::Relaxed);
                            let mut buf = [0u8; 1024];
                            while let Ok(1..) = tcp.read(&mut buf).await {}
                        }
                    }
                    pace(started, Duration::from_millis(100)).await;
                }
            });
        }
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Attack D: `n` connections from one network (127.13.0.1), half over
/// QUIC and half over TCP, each sending tokenless hellos whose `role` is
/// 16 KB of text, one after another as the relay answers; counts the
/// hellos sent.
async fn huge_hello_attack(target: Target, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
    let from = IpAddr::V4(Ipv4Addr::new(127, 13, 0, 1));
    let junk = "x".repeat(16_000);
    let body = format!(r#"{{"type":"hello","version":{VERSION},"role":"{junk}","token":""}}"#);
    let mut hello = u16::try_from(body.len())?.to_be_bytes().to_vec();
    hello.extend_from_slice(body.as_bytes());
    let hello = Bytes::from(hello);
    let mut conns = JoinSet::new();
    for i in 0..target.n {
        let via = if i % 2 == 0 { Via::Quic } else { Via::Tcp };
        let (dialer, hello, sent) = (target.dialer.clone(), hello.clone(), sent.clone());
        conns.spawn(async move {
            let endpoint = dialer.endpoint(from).ok();
            loop {
                let started = Instant::now();
                let said = match (via, &endpoint) {
                    (Via::Quic, Some(endpoint)) => raw_quic_hello(&dialer, endpoint, &hello).await,
                    (Via::Tcp, _) => raw_tcp_hello(&dialer, from, &hello).await,
                    (Via::Quic, None) => Ok(()),
                };
                if said.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                pace(started, Duration::from_millis(10)).await;
            }
        });
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// How long a raw hello waits for the relay's answer and close.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Sends `hello` as they are on a new QUIC connection's first stream, and
/// waits for the relay to close the connection.
async fn raw_quic_hello(
    dialer: &Dialer,
    endpoint: &quinn::Endpoint,
    hello: &[u8],
) -> anyhow::Result<()> {
    let conn = endpoint.connect(dialer.relay, "localhost")?.await?;
    let (mut send, _recv) = conn.open_bi().await?;
    send.write_all(hello).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(ANSWER_WAIT, conn.closed()).await;
    Ok(())
}

/// Sends `hello` as they are over TLS over TCP, and waits for the relay
/// to close the connection.
async fn raw_tcp_hello(dialer: &Dialer, from: IpAddr, hello: &[u8]) -> anyhow::Result<()> {
    let mut tls = dialer.tls(from).await?;
    tls.write_all(hello).await?;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(ANSWER_WAIT, async {
        while let Ok(1..) = tls.read(&mut buf).await {}
    })
    .await;
    Ok(())
}

/// How long after opening it attack E resets each stream.
const RESET_AFTER: Duration = Duration::from_millis(5);

/// Attack E: `n` connections of one client token (from 127.14.0.x, or
/// 127.15.0.x `with_open`), even ones over QUIC and odd ones over TCP,
/// each opening a stream, resetting it [`RESET_AFTER`] later (`with_open`:
/// after sending `open` on it), and again; connects again when cut (at
/// most a hundred times a second). Counts the streams.
async fn reset_attack(
    target: Target,
    with_open: bool,
    streams: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let token = target.token(if with_open {
        "attacker-e2"
    } else {
        "attacker-e"
    })?;
    let hello = client_hello(&token).encode()?;
    // Over QUIC a stream reaches the relay with its first byte.
    let first = match with_open {
        true => Bytes::from(open_frame().encode()?),
        false => Bytes::from_static(&[0]),
    };
    let mut conns = JoinSet::new();
    for i in 0..target.n {
        let from = IpAddr::V4(Ipv4Addr::new(127, 14 + u8::from(with_open), 0, i as u8 + 1));
        let via = if i % 2 == 0 { Via::Quic } else { Via::Tcp };
        let (dialer, token, hello) = (target.dialer.clone(), token.clone(), hello.clone());
        let (first, streams) = (first.clone(), streams.clone());
        conns.spawn(async move {
            loop {
                let started = Instant::now();
                let _ = match via {
                    Via::Quic => reset_quic(&dialer, from, &token, &first, &streams).await,
                    Via::Tcp => {
                        let first = with_open.then_some(&first);
                        reset_tcp(&dialer, from, &hello, first, &streams).await
                    }
                };
                pace(started, Duration::from_millis(10)).await;
            }
        });
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// One QUIC connection of [`reset_attack`], until the relay ends it.
async fn reset_quic(
    dialer: &Dialer,
    from: IpAddr,
    token: &str,
    first: &[u8],
    streams: &AtomicU64,
) -> anyhow::Result<()> {
    let link = dialer.link(from, token, Via::Quic).await?;
    loop {
        let Stream { mut send, mut recv } = link.conn.open().await?;
        send.write_all(first).await?;
        streams.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RESET_AFTER).await;
        send.reset(Reason::Aborted);
        recv.stop(Reason::Aborted);
    }
}

/// One TCP connection of [`reset_attack`], with HTTP/2 by hand so that a
/// stream is reset without waiting for the relay's answer, until the
/// relay ends it.
async fn reset_tcp(
    dialer: &Dialer,
    from: IpAddr,
    hello: &[u8],
    first: Option<&Bytes>,
    streams: &AtomicU64,
) -> anyhow::Result<()> {
    let tls = dialer.tls_hello(from, hello).await?;
    let (send, conn) = h2::client::handshake(tls).await?;
    let mut driver = JoinSet::new();
    driver.spawn(async move {
        let _ = conn.await;
    });
    let (mut send, _control) = control_stream(send).await?;
    loop {
        send = send.ready().await?;
        let (_response, mut body) = send.send_request(session_request()?, false)?;
        if let Some(first) = first {
            body.send_data(first.clone(), false)?;
        }
        streams.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RESET_AFTER).await;
        body.send_reset(h2::Reason::CANCEL);
    }
}

/// Waits until at least `least` has passed since `started`: a loop that
/// fails at once does not spin.
async fn pace(started: Instant, least: Duration) {
    tokio::time::sleep(least.saturating_sub(started.elapsed())).await;
}

/// Which transport a raw peer takes; the value numbers its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Quic = 0,
    Tcp = 1,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Quic => "QUIC",
            Via::Tcp => "TCP",
        }
    }
}

/// Dials the relay from a loopback address of the caller's choosing, as
/// peers that the relay's per-network limits must tell apart.
#[derive(Clone)]
struct Dialer {
    relay: SocketAddr,
    quic: quinn::ClientConfig,
    tls: Arc<rustls::ClientConfig>,
}

/// A client connection the relay welcomed, with what must live as long
/// as it does.
struct ClientLink {
    conn: Conn,
    _control: Option<Stream>,
    _endpoint: Option<quinn::Endpoint>,
}

impl Dialer {
    fn new(relay: SocketAddr, cert: &Path) -> anyhow::Result<Dialer> {
        let trust = Trust::PinnedFile(cert.to_owned());
        Ok(Dialer {
            relay,
            quic: shellrelay::net::transport::quic::client_config(
                &trust,
                TransportOptions::default(),
            )?,
            tls: tcp_client_config(&trust)?,
        })
    }

    /// A QUIC endpoint on `from`.
    fn endpoint(&self, from: IpAddr) -> anyhow::Result<quinn::Endpoint> {
        let mut endpoint =
            shellrelay::net::transport::quic::bind_endpoint(SocketAddr::new(from, 0), None)?;
        endpoint.set_default_client_config(self.quic.clone());
        Ok(endpoint)
    }

    /// TLS over TCP from `from`, as peers dial it.
    async fn tls(&self, from: IpAddr) -> anyhow::Result<TlsStream<TcpStream>> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(self.relay).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost")?;
        Ok(TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?)
    }

    /// [`Dialer::tls`], then `hello` (a framed hello), welcomed.
    async fn tls_hello(&self, from: IpAddr, hello: &[u8]) -> anyhow::Result<TlsStream<TcpStream>> {
        let mut tls = self.tls(from).await?;
        tls.write_all(hello).await?;
        welcomed(read_frame(&mut tls).await?)?;
        Ok(tls)
    }

    /// A client connection from `from` over `via` with `token`, welcomed;
    /// over TCP with HTTP/2 started on it as the client forwarder does.
    async fn link(&self, from: IpAddr, token: &str, via: Via) -> anyhow::Result<ClientLink> {
        let hello = client_hello(token);
        match via {
            Via::Quic => {
                let endpoint = self.endpoint(from)?;
                let conn = endpoint.connect(self.relay, "localhost")?.await?;
                let conn = Conn::Quic(conn);
                let Stream { mut send, mut recv } = conn.open().await?;
                write_frame(&mut send, &hello).await?;
                welcomed(read_frame(&mut recv).await?)?;
                Ok(ClientLink {
                    conn,
                    _control: Some(Stream { send, recv }),
                    _endpoint: Some(endpoint),
                })
            }
            Via::Tcp => {
                let tls = self.tls_hello(from, &hello.encode()?).await?;
                let options = TransportOptions::default();
                let settings = Settings {
                    window: options.window(),
                    max_streams: 0,
                    keep_alive: options.keep_alive,
                    idle_timeout: options.idle_timeout,
                };
                let conn = TcpConn::pending(self.relay);
                conn.start(tls, Side::Opens, settings).await?;
                Ok(ClientLink {
                    conn: Conn::Tcp(conn),
                    _control: None,
                    _endpoint: None,
                })
            }
        }
    }
}

/// Whether the relay's answer to a hello is a welcome.
fn welcomed(answer: Frame) -> anyhow::Result<()> {
    match answer {
        Frame::Welcome { .. } => Ok(()),
        Frame::Refused { message, .. } => anyhow::bail!("hello refused: {message}"),
        other => anyhow::bail!("unexpected answer to hello: {other:?}"),
    }
}

/// A client's hello with `token`.
fn client_hello(token: &str) -> Frame {
    Frame::Hello {
        version: VERSION,
        role: Role::Client,
        token: Jwt(token.to_owned()),
        host: None,
        keep_other: false,
        moving: false,
        direct: None,
    }
}

/// A client's `open` of a new session.
fn open_frame() -> Frame {
    Frame::Open {
        session: 0,
        client: None,
        resume: None,
        owner: None,
        who: None,
        direct: None,
    }
}

/// The request that opens a session stream over HTTP/2.
fn session_request() -> anyhow::Result<http::Request<()>> {
    Ok(http::Request::post("https://shellrelay/session").body(())?)
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
            let args = ["--stream-window", window];
            let rig = Rig::start(dir.path(), &args, &args).await?;
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
