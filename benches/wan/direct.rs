//! The direct-path section of `cargo bench --bench wan`, in the detour lab
//! of `tests/support/detour.rs`: client and host near each other, the
//! relay far from both. Relay, host agent (in front of a private sshd) and
//! client forwarder run as in `tests/support/direct.rs`, with `--direct
//! auto` on host and client, and for the baseline `--direct off` on both
//! (or routed TCP ssh straight to the host). Each figure is printed beside
//! the same run's baseline and its target; nothing is asserted but that
//! bytes and lines arrive.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::support::detour::{debug_duration, quantile, Detour};
use super::support::direct::{ticker, Places, Rig};
use super::support::proc::field;
use super::support::wan::{Wire, HOST, RELAY_CLIENT_SIDE};
use super::{echo, ssh_true, Tunnel};

const UP: &str = "direct path to the host is up";
const NOT_UP: &str = "no direct path to the host";
const MOVED: &str = "session moved to the direct path";

/// How much of each figure to take.
struct Sizes {
    /// Bytes of the download.
    download: u64,
    /// Fresh starts per mode, for the first session's figures.
    starts: usize,
    /// Ticker runs per mode.
    tickers: usize,
    /// Lines per ticker (one every 10 ms or so).
    lines: u32,
    /// Keystrokes per echo figure.
    samples: usize,
}

/// A relay, host agent and client forwarder across the lab, each peer
/// with `--direct mode`.
async fn rig(d: &Detour, mode: &str) -> anyhow::Result<Rig> {
    let places = Places {
        relay: Some(&d.lab.relay),
        host: Some(&d.lab.host),
        client: Some(&d.lab.client),
    };
    let relay = IpAddr::V4(RELAY_CLIENT_SIDE);
    let rig = Rig::start(places, relay, (mode, mode)).await;
    rig.ok_or_else(|| anyhow::anyhow!("sshd is not installed"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A fresh rig's first `ssh host true`: how long it took, and with
/// `--direct auto` how long after its start the client said its direct
/// path was up, and the client's own `took=` for the dial. `cut` cuts the
/// short wire for the session: the introduction's cost alone.
async fn fresh_start(
    d: &Detour,
    mode: &str,
    cut: bool,
) -> anyhow::Result<(f64, Option<(f64, f64)>)> {
    let mut rig = rig(d, mode).await?;
    let mut ssh = rig.ssh("true");
    d.cut.store(cut, Ordering::Relaxed);
    let start = Instant::now();
    let session = async {
        let status = ssh.status().await;
        (status, start.elapsed())
    };
    let client = &mut rig.client;
    let outcome = async {
        if mode == "off" || cut {
            return None;
        }
        let line = (client.wait_for("the direct path's outcome", |l| {
            l.contains(UP) || l.contains(NOT_UP)
        }))
        .await;
        let took = field(&line, "took").and_then(debug_duration)?;
        Some((ms(start.elapsed()), ms(took)))
    };
    let ((status, setup), up) = tokio::join!(session, outcome);
    d.cut.store(false, Ordering::Relaxed);
    anyhow::ensure!(status?.success(), "the first ssh host true failed");
    Ok((ms(setup), up))
}

/// The ticker as a fresh rig's first session. With `--direct auto` the
/// short wire is cut until the ticker's first line is in (and 300 ms
/// more), so the session starts on the relay and moves while lines flow.
/// The longest gap between lines, and the client's `gap=` of the move if
/// it moved while the ticker ran.
async fn ticker_run(
    d: &Detour,
    mode: &str,
    lines: u32,
) -> anyhow::Result<(f64, Option<Option<f64>>)> {
    let rig = rig(d, mode).await?;
    let auto = mode == "auto";
    d.cut.store(auto, Ordering::Relaxed);
    let moved = Cell::new(None);
    let during = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.cut.store(false, Ordering::Relaxed);
        if !auto {
            return;
        }
        loop {
            let log = rig.client.lines();
            if let Some(line) = log.iter().find(|l| l.contains(MOVED)) {
                moved.set(Some(field(line, "gap").and_then(debug_duration).map(ms)));
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let longest = ticker(&rig, lines, during).await;
    d.cut.store(false, Ordering::Relaxed);
    Ok((ms(longest), moved.get()))
}

/// Downloads `size` bytes through `ssh host cat`-like `head`: the bytes
/// the relay's links and the short wire moved meanwhile, and the time.
async fn download(d: &Detour, rig: &Rig, size: u64) -> anyhow::Result<(u64, u64, f64)> {
    let (relay, short) = (d.relay_bytes(), d.short_bytes());
    let start = Instant::now();
    let out = rig
        .ssh(&format!("head -c {size} /dev/zero"))
        .output()
        .await?;
    let took = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success() && out.stdout.len() as u64 == size,
        "the download failed: {} ({} bytes)",
        out.status,
        out.stdout.len()
    );
    Ok((d.relay_bytes() - relay, d.short_bytes() - short, took))
}

/// A rig whose first session is done, and with `--direct auto` whose
/// direct path is up.
async fn warm(d: &Detour, mode: &str) -> anyhow::Result<Rig> {
    let mut rig = rig(d, mode).await?;
    rig.ssh_output("true").await;
    if mode == "auto" {
        let line = (rig.client)
            .wait_for("the direct path's outcome", |l| {
                l.contains(UP) || l.contains(NOT_UP)
            })
            .await;
        anyhow::ensure!(line.contains(UP), "no direct path: {line}");
    }
    Ok(rig)
}

/// Bytes and time of the download, echo p50/p95 and `ssh host true`.
struct Bulk {
    relay: u64,
    short: u64,
    secs: f64,
    echo: (f64, f64),
    setup: f64,
}

async fn bulk(d: &Detour, rig: &Rig, t: &Tunnel, s: &Sizes) -> anyhow::Result<Bulk> {
    let (relay, short, secs) = download(d, rig, s.download).await?;
    let echo = echo(&d.lab, &rig.sshd, t, s.samples).await;
    let setup = ssh_true(&d.lab, &rig.sshd, t).await;
    Ok(Bulk {
        relay,
        short,
        secs,
        echo,
        setup,
    })
}

fn row(figure: &str, auto: String, baseline: String, target: &str) {
    println!("  {figure:<40} {auto:>18} {baseline:>30}   {target}");
}

fn mb(bytes: u64) -> String {
    match bytes {
        0..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.2} MB", bytes as f64 / 1e6),
    }
}

fn p50_p95(values: &[f64]) -> String {
    format!(
        "{:.0}/{:.0} ms",
        quantile(values, 0.5),
        quantile(values, 0.95)
    )
}

pub async fn run(quick: bool) -> anyhow::Result<()> {
    let s = match quick {
        true => Sizes {
            download: 16 << 20,
            starts: 3,
            tickers: 2,
            lines: 300,
            samples: 20,
        },
        false => Sizes {
            download: 64 << 20,
            starts: 10,
            tickers: 6,
            lines: 400,
            samples: 60,
        },
    };
    let wire = |delay: u64| Wire {
        delay: Duration::from_millis(delay),
        rate: 100_000_000,
        queue: Duration::from_millis(50),
        loss: 0.0,
    };
    let d = Detour::start(wire(20), wire(1));
    let (direct_rtt, relay_rtt) = d.round_trips();
    println!(
        "\ndirect paths, detour lab: client and host {:?} apart one way, the relay {:?} from each",
        d.short.delay, d.long.delay
    );
    println!(
        "(100 Mbit/s wires, 50 ms queues, no loss): round trip {:.0} ms direct, {:.0} ms through the relay",
        ms(direct_rtt),
        ms(relay_rtt)
    );
    // What the user-space wires add: UDP round trips, p50/p95.
    let short = d.udp_round_trips(&d.lab.host, HOST, s.samples);
    let leg = d.udp_round_trips(&d.lab.relay, RELAY_CLIENT_SIDE, s.samples);
    row(
        "figure",
        "--direct auto".into(),
        "baseline".into(),
        "target",
    );
    row(
        "UDP round trip, client-host (short wire)",
        format!(
            "{:.2}/{:.2} ms",
            quantile(&short, 0.5),
            quantile(&short, 0.95)
        ),
        format!(
            "{:.1}/{:.1} client-relay",
            quantile(&leg, 0.5),
            quantile(&leg, 0.95)
        ),
        "",
    );

    // A warm rig each way: the download, echo and later sessions' setup.
    let payload = s.download;
    let auto = {
        let rig = warm(&d, "auto").await?;
        let t = Tunnel {
            ip: Ipv4Addr::LOCALHOST,
            port: rig.port,
            options: Vec::new(),
        };
        let bulk = bulk(&d, &rig, &t, &s).await?;
        let paths = rig.host_paths();
        let off_path = paths.iter().skip(1).filter(|p| *p != "direct").count();
        if off_path > 0 {
            println!("  (!) {off_path} later session(s) did not go direct: {paths:?}");
        }
        bulk
    };
    let (off, tcp) = {
        let rig = warm(&d, "off").await?;
        let t = Tunnel {
            ip: Ipv4Addr::LOCALHOST,
            port: rig.port,
            options: Vec::new(),
        };
        let off = bulk(&d, &rig, &t, &s).await?;
        let t = Tunnel {
            ip: HOST,
            port: rig.sshd.port,
            options: Vec::new(),
        };
        let tcp = (
            echo(&d.lab, &rig.sshd, &t, s.samples).await,
            ssh_true(&d.lab, &rig.sshd, &t).await,
        );
        (off, tcp)
    };
    let mib = payload >> 20;
    row(
        &format!("relay-link bytes, {mib} MiB download"),
        format!(
            "{} ({:.2} %)",
            mb(auto.relay),
            auto.relay as f64 * 100.0 / payload as f64
        ),
        format!("{} off", mb(off.relay)),
        &format!("< {} (1 % of the payload)", mb(payload / 100)),
    );
    row(
        "short-wire bytes, same download",
        mb(auto.short),
        format!("{} off", mb(off.short)),
        "",
    );
    row(
        "download time",
        format!("{:.1} s", auto.secs),
        format!("{:.1} s off", off.secs),
        "",
    );
    row(
        "echo p50/p95, `ssh host cat`",
        format!("{:.1}/{:.1} ms", auto.echo.0, auto.echo.1),
        format!(
            "{:.1}/{:.1} off, {:.1}/{:.1} TCP",
            off.echo.0, off.echo.1, tcp.0 .0, tcp.0 .1
        ),
        &format!(
            "p50 <= {:.1} ms (RTT + 0.5; {:.1} on the UDP RTT)",
            ms(direct_rtt) + 0.5,
            quantile(&short, 0.5) + 0.5
        ),
    );
    row(
        "later `ssh host true`, median of 3",
        format!("{:.0} ms", auto.setup),
        format!("{:.0} off, {:.0} TCP", off.setup, tcp.1),
        "",
    );

    // Fresh starts, the modes in turn.
    let (mut setup, mut up, mut took) = (vec![], vec![], vec![]);
    let (mut cut, mut base) = (vec![], vec![]);
    for _ in 0..s.starts {
        let (ms, outcome) = fresh_start(&d, "auto", false).await?;
        setup.push(ms);
        if let Some((at, dial)) = outcome {
            up.push(at);
            took.push(dial);
        }
        cut.push(fresh_start(&d, "auto", true).await?.0);
        base.push(fresh_start(&d, "off", false).await?.0);
    }
    let ratio = |v: &[f64]| quantile(v, 0.5) / quantile(&base, 0.5);
    row(
        &format!("first `ssh host true`, p50 of {}", s.starts),
        format!("{:.0} ms ({:.3}x)", quantile(&setup, 0.5), ratio(&setup)),
        format!("{:.0} ms off", quantile(&base, 0.5)),
        "<= 1.05x off",
    );
    row(
        "  the same, short wire cut",
        format!("{:.0} ms ({:.3}x)", quantile(&cut, 0.5), ratio(&cut)),
        format!("{:.0} ms off", quantile(&base, 0.5)),
        "<= 1.05x off",
    );
    row(
        "first session start to direct up",
        format!("{} ({}/{})", p50_p95(&up), up.len(), s.starts),
        "-".into(),
        "",
    );
    row(
        "  of which the dial (took=)",
        p50_p95(&took),
        "-".into(),
        "",
    );

    // Tickers, the two modes in turn.
    let (mut gaps, mut moves, mut base) = (vec![], vec![], vec![]);
    for _ in 0..s.tickers {
        let (gap, moved) = ticker_run(&d, "auto", s.lines).await?;
        if let Some(move_gap) = moved {
            gaps.push(gap);
            moves.extend(move_gap);
        }
        base.push(ticker_run(&d, "off", s.lines).await?.0);
    }
    let max_p50 = |v: &[f64]| format!("{:.0}/{:.0} ms", quantile(v, 1.0), quantile(v, 0.5));
    row(
        "longest ticker gap with a move, max/p50",
        format!("{} ({}/{})", max_p50(&gaps), gaps.len(), s.tickers),
        format!("{} off", max_p50(&base)),
        "",
    );
    row(
        "  the move's gap= (client), max/p50",
        max_p50(&moves),
        "-".into(),
        "",
    );
    Ok(())
}
