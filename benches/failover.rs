//! `cargo bench --bench failover` (as root): does the watch on the relay's
//! silence misfire on a lossy path? Relay, host agent and client
//! forwarder run in the WAN lab of `tests/support/wan.rs` (every wire
//! 20 ms one way, 3 % loss), with default keep-alive and idle timeout,
//! while real OpenSSH keeps two sessions live: one echoing a short line
//! every 100 ms, one moving `cat /dev/zero`. The relay never stops, so
//! every "no answer from the relay" in the peers' logs is a false
//! failover. Prints each figure beside its target; asserts nothing.
//!
//! Ten minutes over QUIC, then two over `--transport tcp`.
//! `SHELLRELAY_BENCH_QUICK=1` runs one minute of each;
//! `SHELLRELAY_BENCH_MINUTES` and `SHELLRELAY_BENCH_TCP_MINUTES` set the
//! lengths (0 skips the TCP pass).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::bulk::machine;
use support::sshd::Sshd;
use support::wan::{Lab, Relayed, Wire};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::{Instant, MissedTickBehavior};

/// Each wire: 20 ms one way (40 ms round trip), 100 Mbit/s as in
/// `benches/wan.rs`, a 50 ms drop-tail queue, 3 % loss each way: the
/// path of the requirement.
const WIRE: Wire = Wire {
    delay: Duration::from_millis(20),
    rate: 100_000_000,
    queue: Duration::from_millis(50),
    loss: 0.03,
};

/// How often the interactive session sends a line.
const ECHO_EVERY: Duration = Duration::from_millis(100);

/// How long the last lines sent may take to come back once the run ends.
const DRAIN: Duration = Duration::from_secs(5);

/// Gaps (between echo lines, or in the bulk stream) we call a stall: well
/// under the 1.5 s after which a peer leaves a silent relay, and many
/// round trips of this path.
const STALL: Duration = Duration::from_secs(1);

/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// A false failover: the peers' words when they leave a silent relay
/// (client: "…; leaving it", host agent: the close's reason).
const FAILOVER: &str = "no answer from the relay";

/// Lines of log shown before and after each false failover.
const EXCERPT: usize = 8;

/// What the interactive session saw.
#[derive(Default)]
struct Echo {
    sent: u64,
    back: u64,
    /// Longest time between two lines coming back.
    longest_gap: Duration,
    /// Longest time from a line sent to its echo.
    slowest: Duration,
    /// Gaps longer than [`STALL`].
    stalls: u64,
    /// ssh sessions that ended before the run did.
    broken: u64,
}

/// What the bulk session saw.
#[derive(Default)]
struct Bulk {
    bytes: u64,
    /// Longest time without a byte.
    longest_gap: Duration,
    stalls: u64,
    broken: u64,
}

/// Sends a numbered line through `ssh host cat` every [`ECHO_EVERY`] until
/// `until`, reading the echoes; starts a new session if one ends early.
async fn interactive(lab: &Lab, sshd: &Sshd, port: u16, until: Instant) -> Echo {
    let mut echo = Echo::default();
    while Instant::now() < until {
        let mut child = sshd
            .ssh_in(Some(&lab.client), port, "cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ssh");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut tick = tokio::time::interval(ECHO_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Lines come back in order: the oldest unanswered is next.
        let mut waiting: VecDeque<Instant> = VecDeque::new();
        // The first echo includes the session's setup: gaps count from
        // it, and echo times from the lines sent after it.
        let mut first_back: Option<Instant> = None;
        let mut last_back: Option<Instant> = None;
        let mut sending = true;
        let ended = loop {
            let stop = match sending {
                true => until,
                false => until + DRAIN,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(stop) => match sending {
                    true if waiting.is_empty() => break false,
                    true => sending = false,
                    false => break false,
                },
                _ = tick.tick(), if sending => {
                    let line = format!("line {}\n", echo.sent);
                    if stdin.write_all(line.as_bytes()).await.is_err() {
                        break true;
                    }
                    echo.sent += 1;
                    waiting.push_back(Instant::now());
                }
                line = lines.next_line() => {
                    let Ok(Some(_)) = line else { break true };
                    let now = Instant::now();
                    echo.back += 1;
                    let at = waiting.pop_front();
                    if let (Some(at), Some(first)) = (at, first_back) {
                        if at > first {
                            echo.slowest = echo.slowest.max(now - at);
                        }
                    }
                    first_back = first_back.or(Some(now));
                    if let Some(last) = last_back {
                        let gap = now - last;
                        echo.longest_gap = echo.longest_gap.max(gap);
                        echo.stalls += u64::from(gap > STALL);
                    }
                    last_back = Some(now);
                    if !sending && waiting.is_empty() {
                        break false;
                    }
                }
            }
        };
        let _ = child.kill().await;
        if ended {
            echo.broken += 1;
            eprintln!("failover bench: the interactive ssh session ended early; starting another");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    echo
}

/// Reads `ssh host cat /dev/zero` until `until`; starts a new session if
/// one ends early.
async fn bulk(lab: &Lab, sshd: &Sshd, port: u16, until: Instant) -> Bulk {
    let mut bulk = Bulk::default();
    let mut buf = vec![0u8; 256 << 10];
    while Instant::now() < until {
        let mut child = sshd
            .ssh_in(Some(&lab.client), port, "cat /dev/zero")
            .stdout(Stdio::piped())
            .spawn()
            .expect("ssh");
        let mut out = child.stdout.take().expect("stdout");
        let mut last: Option<Instant> = None;
        let ended = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break false,
                read = out.read(&mut buf) => {
                    let Ok(n @ 1..) = read else { break true };
                    let now = Instant::now();
                    bulk.bytes += n as u64;
                    if let Some(last) = last {
                        let gap = now - last;
                        bulk.longest_gap = bulk.longest_gap.max(gap);
                        bulk.stalls += u64::from(gap > STALL);
                    }
                    last = Some(now);
                }
            }
        };
        let _ = child.kill().await;
        if ended {
            bulk.broken += 1;
            eprintln!("failover bench: the bulk ssh session ended early; starting another");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    bulk
}

/// Lines of `log` containing `needle`.
fn count(log: &[String], needle: &str) -> usize {
    log.iter().filter(|l| l.contains(needle)).count()
}

/// Says every [`PROGRESS_EVERY`] how far the run is, until `until`.
async fn progress(sr: &Relayed, what: &str, started: Instant, until: Instant) {
    let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return,
            _ = tick.tick() => {}
        }
        let [_, host, client] = sr.lines();
        eprintln!(
            "failover bench: {what}: {:.0?} in, false failovers so far {}",
            started.elapsed(),
            count(&client, FAILOVER) + count(&host, FAILOVER)
        );
    }
}

/// Lines of `log` around each line containing `needle`, at most three.
fn excerpts(role: &str, log: &[String], needle: &str) {
    for (i, _) in log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .take(3)
    {
        println!("  --- {role} log around line {}", i + 1);
        let end = (i + 1 + 3).min(log.len());
        for line in &log[i.saturating_sub(EXCERPT)..end] {
            println!("  {line}");
        }
    }
}

/// One run over `transport` for `length`.
async fn pass(transport: &str, length: Duration) -> anyhow::Result<()> {
    println!(
        "\n--transport {transport}, {:.1} min",
        length.as_secs_f64() / 60.0
    );
    let lab = Lab::start(WIRE);
    let Some(sshd) = Sshd::start_in(Some(&lab.host)).await else {
        anyhow::bail!("sshd is not installed");
    };
    let dir = tempfile::tempdir()?;
    let target = format!("127.0.0.1:{}", sshd.port);
    let sr = lab
        .shellrelay_with(dir.path(), &target, &[], &["--transport", transport])
        .await;
    let started = Instant::now();
    let until = started + length;
    let (echo, bulk, ()) = tokio::join!(
        interactive(&lab, &sshd, sr.port, until),
        bulk(&lab, &sshd, sr.port, until),
        progress(&sr, transport, started, until),
    );
    let ran = started.elapsed();
    // Before the lab goes: the peers are still up.
    let [relay, host, client] = sr.lines();
    let false_failovers = count(&client, FAILOVER) + count(&host, FAILOVER);
    let row = |figure: &str, value: String, target: &str| {
        println!("  {figure:<52} {value:>22}   target {target}");
    };
    row(
        "run length",
        format!("{:.1} s", ran.as_secs_f64()),
        &format!("{:.0} s", length.as_secs_f64()),
    );
    for (i, stats) in lab.stats.iter().enumerate() {
        let name = ["client-relay", "relay-host"][i];
        row(
            &format!("wire {} ({name}) packets forwarded/lost", i + 1),
            {
                let forwarded = stats.forwarded.load(Ordering::Relaxed);
                let lost = stats.lost.load(Ordering::Relaxed);
                let share = lost as f64 * 100.0 / (forwarded + lost).max(1) as f64;
                format!("{forwarded}/{lost} ({share:.1} %)")
            },
            "lost about 3 %",
        );
        row(
            &format!("wire {} queue drops", i + 1),
            stats.queue_drops.load(Ordering::Relaxed).to_string(),
            "(report only)",
        );
    }
    row(
        "echo lines back/sent",
        format!("{}/{}", echo.back, echo.sent),
        "all back",
    );
    row(
        "longest gap between echo lines",
        format!("{} ms", echo.longest_gap.as_millis()),
        &format!("< {} ms", STALL.as_millis()),
    );
    row(
        "slowest echo (line sent to line back)",
        format!("{} ms", echo.slowest.as_millis()),
        &format!("< {} ms", STALL.as_millis()),
    );
    row(
        &format!("echo gaps > {} ms", STALL.as_millis()),
        echo.stalls.to_string(),
        "0",
    );
    row(
        "bulk bytes moved",
        format!(
            "{} MiB ({:.1} Mbit/s)",
            bulk.bytes >> 20,
            bulk.bytes as f64 * 8.0 / length.as_secs_f64() / 1e6
        ),
        "> 0, throughout",
    );
    row(
        "longest bulk gap",
        format!("{} ms", bulk.longest_gap.as_millis()),
        &format!("< {} ms", STALL.as_millis()),
    );
    row(
        "ssh sessions ended early (echo/bulk)",
        format!("{}/{}", echo.broken, bulk.broken),
        "0/0",
    );
    row(
        "FALSE FAILOVERS (client + host agent)",
        false_failovers.to_string(),
        "0",
    );
    row(
        "  client \"no answer from the relay\"",
        count(&client, FAILOVER).to_string(),
        "0",
    );
    row(
        "  host agent \"no answer from the relay\"",
        count(&host, FAILOVER).to_string(),
        "0",
    );
    // The host agent logs a registration's end as this line, whatever
    // the reason; the relay logs both peers leaving.
    row(
        "  host agent \"lost the connection to the relay\"",
        count(&host, "lost the connection to the relay").to_string(),
        "0",
    );
    row(
        "  host \"registered with relay\" / client \"connected\"",
        format!(
            "{}/{}",
            count(&host, "registered with relay"),
            count(&client, "connected to relay")
        ),
        "1/1",
    );
    row(
        "  relay \"host unregistered\"/\"client disconnected\"",
        format!(
            "{}/{}",
            count(&relay, "host unregistered"),
            count(&relay, "client disconnected")
        ),
        "0/0",
    );
    row(
        "\"session path broke\" client/host",
        format!(
            "{}/{}",
            count(&client, "session path broke"),
            count(&host, "session path broke")
        ),
        "0/0",
    );
    row(
        "\"session resumed\" client/host/relay",
        format!(
            "{}/{}/{}",
            count(&client, "session resumed"),
            count(&host, "session resumed"),
            count(&relay, "session resumed")
        ),
        "0/0/0",
    );
    for (role, log) in [("client", &client), ("host agent", &host)] {
        excerpts(role, log, FAILOVER);
        excerpts(role, log, "lost the connection to the relay");
        excerpts(role, log, "session path broke");
    }
    Ok(())
}

/// Minutes from `var`, if set.
fn minutes(var: &str) -> anyhow::Result<Option<Duration>> {
    match std::env::var(var) {
        Ok(m) => {
            let m: f64 = m.parse().map_err(|e| anyhow::anyhow!("{var}={m:?}: {e}"))?;
            Ok(Some(Duration::from_secs_f64(m.max(0.0) * 60.0)))
        }
        Err(_) => Ok(None),
    }
}

fn main() -> anyhow::Result<()> {
    if let Some(why) = Lab::unavailable() {
        println!("failover benchmark skipped: {why}");
        return Ok(());
    }
    let quick = std::env::var("SHELLRELAY_BENCH_QUICK").is_ok();
    let default = Duration::from_secs(if quick { 60 } else { 600 });
    let quic = minutes("SHELLRELAY_BENCH_MINUTES")?.unwrap_or(default);
    let tcp =
        minutes("SHELLRELAY_BENCH_TCP_MINUTES")?.unwrap_or(quic.min(Duration::from_secs(120)));
    println!("shellrelay failover benchmark: {}", machine());
    println!(
        "client | relay | host namespaces, each wire {} ms one way ({} ms round trip), \
         {} Mbit/s, {} ms drop-tail queue, {} % loss each way; default keep-alive and \
         idle timeout; real OpenSSH: `cat` echoing a line every {} ms and `cat /dev/zero`",
        WIRE.delay.as_millis(),
        2 * WIRE.delay.as_millis(),
        WIRE.rate / 1_000_000,
        WIRE.queue.as_millis(),
        WIRE.loss * 100.0,
        ECHO_EVERY.as_millis()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        pass("quic", quic).await?;
        if !tcp.is_zero() {
            pass("tcp", tcp).await?;
        }
        Ok(())
    })
}
