//! `cargo bench --bench wan` (as root): real OpenSSH across the WAN lab of
//! `tests/support/wan.rs` (client, relay and host namespaces joined by two
//! wires), through shellrelay with each congestion controller and over
//! direct routed TCP with the kernel on cubic and on bbr. Prints bulk
//! throughput through `ssh host cat` each way, the time of `ssh host
//! true`, and keystroke echo p50/p95 through `ssh host cat`, idle and
//! while a bulk download shares the tunnel. Then direct paths, in a lab
//! where the relay is a detour (`wan/direct.rs`). `SHELLRELAY_BENCH_QUICK=1`
//! runs one path with short transfers; `SHELLRELAY_BENCH_ONLY=direct` runs
//! only the direct paths.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "wan/direct.rs"]
mod direct;

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::bulk::machine;
use support::proc::Proc;
use support::sshd::Sshd;
use support::wan::{in_ns, Lab, Wire, HOST, RELAY_CLIENT_SIDE, RELAY_HOST_SIDE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How one tunnel is reached from the client namespace.
struct Tunnel {
    ip: Ipv4Addr,
    port: u16,
    /// Extra ssh options (a ProxyCommand).
    options: Vec<String>,
}

impl Tunnel {
    /// `ssh host remote` through this tunnel, from the client namespace.
    fn ssh(&self, lab: &Lab, sshd: &Sshd, remote: &str) -> tokio::process::Command {
        sshd.ssh_with(
            Some(&lab.client),
            self.ip,
            self.port,
            &self.options,
            Some(remote),
        )
    }

    /// [`Tunnel::ssh`] started, with its stdin and stdout piped to us.
    fn spawn_piped(&self, lab: &Lab, sshd: &Sshd, remote: &str) -> tokio::process::Child {
        self.ssh(lab, sshd, remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ssh")
    }
}

/// An OpenSSH reverse tunnel via a bastion: a second sshd in the relay
/// namespace, the host holding `ssh -N -R` to it, and the client going
/// through it with `ssh -W` as its ProxyCommand.
struct Reverse {
    _bastion: Sshd,
    _forward: Proc,
    tunnel: Tunnel,
}

async fn reverse_tunnel(lab: &Lab, sshd: &Sshd) -> anyhow::Result<Reverse> {
    let Some(bastion) = Sshd::start_in(Some(&lab.relay)).await else {
        anyhow::bail!("sshd is not installed");
    };
    // Any port is free on the relay namespace's fresh loopback; take one
    // the kernel gives here.
    let remote_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let forward_spec = format!("{remote_port}:127.0.0.1:{}", sshd.port);
    let options: Vec<String> = ["-N", "-R", &forward_spec, "-o", "ExitOnForwardFailure=yes"]
        .map(String::from)
        .to_vec();
    let cmd = bastion.ssh_with(
        Some(&lab.host),
        RELAY_HOST_SIDE,
        bastion.port,
        &options,
        None,
    );
    let forward = Proc::spawn("ssh -R", cmd);
    let id = bastion.dir.path().join("id");
    let proxy = format!(
        "ProxyCommand=ssh -F /dev/null -i {} -p {} -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes \
         -o LogLevel=ERROR -W %h:%p {}@{RELAY_CLIENT_SIDE}",
        id.display(),
        bastion.port,
        support::sshd::user()
    );
    let tunnel = Tunnel {
        ip: Ipv4Addr::LOCALHOST,
        port: remote_port,
        options: vec!["-o".into(), proxy],
    };
    // Up once a session gets through.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Refused until the forward is up: nothing to print.
        let ok = tunnel
            .ssh(lab, sshd, "true")
            .stderr(Stdio::null())
            .status()
            .await;
        if ok.is_ok_and(|s| s.success()) {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the reverse tunnel did not come up");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Reverse {
        _bastion: bastion,
        _forward: forward,
        tunnel,
    })
}

/// Mbit/s of `ssh host cat /dev/zero` over `time`, after a second.
async fn bulk_down(lab: &Lab, sshd: &Sshd, t: &Tunnel, time: Duration) -> f64 {
    let mut cmd = t.ssh(lab, sshd, "cat /dev/zero");
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("ssh");
    let mut out = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    let start = Instant::now();
    let mut counting: Option<Instant> = None;
    let _ = tokio::time::timeout(time + Duration::from_secs(30), async {
        while let Ok(n @ 1..) = out.read(&mut buf).await {
            match counting {
                Some(at) if at.elapsed() >= time => break,
                Some(_) => got += n as u64,
                None if start.elapsed() >= Duration::from_secs(1) => {
                    counting = Some(Instant::now())
                }
                None => {}
            }
        }
    })
    .await;
    let secs = counting.map_or(1.0, |at| at.elapsed().as_secs_f64());
    let _ = child.kill().await;
    got as f64 * 8.0 / secs / 1e6
}

/// Mbit/s into `ssh host wc -c` for `time`, counted by `wc`.
async fn bulk_up(lab: &Lab, sshd: &Sshd, t: &Tunnel, time: Duration) -> f64 {
    let mut child = t.spawn_piped(lab, sshd, "wc -c");
    let mut stdin = child.stdin.take().expect("stdin");
    let buf = vec![0u8; 256 << 10];
    let start = Instant::now();
    let _ =
        tokio::time::timeout(time, async { while stdin.write_all(&buf).await.is_ok() {} }).await;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await;
    let count: u64 = out
        .ok()
        .and_then(|o| o.ok())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0);
    count as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6
}

/// Median milliseconds of `ssh host true`, of three.
async fn ssh_true(lab: &Lab, sshd: &Sshd, t: &Tunnel) -> f64 {
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let _ = t.ssh(lab, sshd, "true").status().await;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[1]
}

/// Keystroke echo p50 and p95 (ms) through `ssh host cat`: one byte, its
/// echo, then the next 20 ms later, `count` times.
async fn echo(lab: &Lab, sshd: &Sshd, t: &Tunnel, count: usize) -> (f64, f64) {
    let mut child = t.spawn_piped(lab, sshd, "cat");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut times = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    for i in 0..=count {
        let start = Instant::now();
        if stdin.write_all(b"k").await.is_err() || stdin.flush().await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), stdout.read_exact(&mut byte)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        // The first includes the session's setup.
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill().await;
    if times.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.95))
}

/// Every figure for one tunnel.
async fn measure(lab: &Lab, sshd: &Sshd, t: &Tunnel, name: &str, time: Duration, samples: usize) {
    let down = bulk_down(lab, sshd, t, time).await;
    let up = bulk_up(lab, sshd, t, time).await;
    let setup = ssh_true(lab, sshd, t).await;
    let idle = echo(lab, sshd, t, samples).await;
    let busy = {
        let load = bulk_down(lab, sshd, t, time + Duration::from_secs(30));
        tokio::pin!(load);
        tokio::select! {
            _ = &mut load => (f64::NAN, f64::NAN),
            e = async {
                // Let the bulk download get going first.
                tokio::time::sleep(Duration::from_secs(2)).await;
                echo(lab, sshd, t, samples).await
            } => e,
        }
    };
    println!(
        "  {name:<28} {down:>8.1} {up:>8.1} {setup:>9.0} {:>6.0}/{:<6.0} {:>6.0}/{:<6.0}",
        idle.0, idle.1, busy.0, busy.1
    );
}

/// Sets the kernel's TCP congestion control in every namespace of `lab`.
fn tcp_congestion(lab: &Lab, algorithm: &str) {
    for ns in [&lab.client, &lab.relay, &lab.host] {
        in_ns(
            ns,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.tcp_congestion_control={algorithm}"),
            ],
        );
    }
}

fn main() -> anyhow::Result<()> {
    if let Some(why) = Lab::unavailable() {
        println!("wan benchmark skipped: {why}");
        return Ok(());
    }
    // Child namespaces may only use what the root namespace allows.
    let allowed_key = "net.ipv4.tcp_allowed_congestion_control";
    let allowed = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")?;
    let _ = std::process::Command::new("sysctl")
        .args(["-q", "-w", &format!("{allowed_key}=reno cubic bbr")])
        .status();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run());
    let _ = std::process::Command::new("sysctl")
        .args(["-q", "-w", &format!("{allowed_key}={}", allowed.trim())])
        .status();
    result
}

async fn run() -> anyhow::Result<()> {
    let quick = std::env::var("SHELLRELAY_BENCH_QUICK").is_ok();
    let (time, samples) = if quick {
        (Duration::from_secs(4), 20)
    } else {
        (Duration::from_secs(8), 60)
    };
    let wire = |delay: u64, rate: u64, loss: f64| Wire {
        delay: Duration::from_millis(delay),
        rate,
        queue: Duration::from_millis(50),
        loss,
    };
    let mut paths = vec![(
        "10 ms one way per wire, 100 Mbit/s, 1 % loss",
        wire(10, 100_000_000, 0.01),
    )];
    if !quick {
        paths = vec![
            (
                "10 ms one way per wire, 100 Mbit/s, 0 % loss",
                wire(10, 100_000_000, 0.0),
            ),
            (
                "10 ms one way per wire, 100 Mbit/s, 1 % loss",
                wire(10, 100_000_000, 0.01),
            ),
            (
                "10 ms one way per wire, 100 Mbit/s, 3 % loss",
                wire(10, 100_000_000, 0.03),
            ),
            (
                "40 ms one way per wire, 1 Gbit/s, 0 % loss",
                wire(40, 1_000_000_000, 0.0),
            ),
        ];
    }
    // `SHELLRELAY_BENCH_ONLY=40` runs only the paths whose label has "40";
    // `=direct`, only the direct paths.
    let only = std::env::var("SHELLRELAY_BENCH_ONLY").ok();
    if let Some(only) = &only {
        paths.retain(|(label, _)| label.contains(only));
    }
    println!("shellrelay WAN benchmark: {}", machine());
    println!(
        "real OpenSSH, client | relay | host namespaces, two wires with a 50 ms drop-tail queue"
    );
    for (what, wire) in paths {
        println!("\n{what}");
        println!(
            "  {:<28} {:>8} {:>8} {:>9} {:>13} {:>13}",
            "tunnel", "down", "up", "ssh true", "echo idle", "echo w/ bulk"
        );
        println!(
            "  {:<28} {:>8} {:>8} {:>9} {:>13} {:>13}",
            "", "Mbit/s", "Mbit/s", "ms", "p50/p95 ms", "p50/p95 ms"
        );
        let lab = Lab::start(wire);
        let Some(sshd) = Sshd::start_in(Some(&lab.host)).await else {
            anyhow::bail!("sshd is not installed");
        };
        let default_window = "512KiB";
        // `tcp/W` is the TLS-over-TCP transport (the kernel's bbr).
        let mut runs = vec![
            ("bbr", default_window),
            ("cubic", default_window),
            ("tcp", default_window),
        ];
        // A long fat path needs more than the default window: the figure
        // with the flag that raises it, beside the default's.
        if wire.rate >= 1_000_000_000 {
            runs.insert(1, ("bbr", "16MiB"));
        }
        // With loss the receiver holds what arrived after a hole for about
        // a round trip: a window of twice each hop's bandwidth-delay
        // product and more, beside the default's figure.
        if wire.loss > 0.0 {
            runs.insert(1, ("bbr", "1MiB"));
        }
        // `SHELLRELAY_BENCH_RUNS="bbr/2MiB cubic/512KiB tcp"` chooses the
        // shellrelay runs, and the TCP tunnels only if it names `tcp`;
        // `plain/W` is bbr with sessions that are not resumable.
        let chosen = std::env::var("SHELLRELAY_BENCH_RUNS").ok();
        if let Some(chosen) = &chosen {
            runs = chosen
                .split_whitespace()
                .filter_map(|run| run.split_once('/'))
                .collect();
        }
        for (congestion, window) in runs {
            let dir = tempfile::tempdir()?;
            let target = format!("127.0.0.1:{}", sshd.port);
            let (flags, peers) = match congestion {
                "tcp" => {
                    tcp_congestion(&lab, "bbr");
                    (vec!["--stream-window", window], vec!["--transport", "tcp"])
                }
                // Sessions that are not resumable: what resumption costs.
                "plain" => (
                    vec!["--congestion", "bbr", "--stream-window", window],
                    vec!["--transport", "quic", "--resume-window", "0"],
                ),
                _ => (
                    vec!["--congestion", congestion, "--stream-window", window],
                    vec!["--transport", "quic"],
                ),
            };
            let sr = lab
                .shellrelay_with(dir.path(), &target, &flags, &peers)
                .await;
            let tunnel = Tunnel {
                ip: Ipv4Addr::LOCALHOST,
                port: sr.port,
                options: Vec::new(),
            };
            let name = match window {
                w if w == default_window && congestion == "tcp" => {
                    "shellrelay --transport tcp".to_owned()
                }
                _ if congestion == "plain" => format!("  ... --resume-window 0 ({window})"),
                w if w == default_window => format!("shellrelay --congestion {congestion}"),
                w => format!("  ... --stream-window {w}"),
            };
            measure(&lab, &sshd, &tunnel, &name, time, samples).await;
        }
        let tcp = chosen
            .as_ref()
            .is_none_or(|c| c.split_whitespace().any(|r| r == "tcp"));
        for algorithm in ["bbr", "cubic"].into_iter().filter(|_| tcp) {
            tcp_congestion(&lab, algorithm);
            let reverse = reverse_tunnel(&lab, &sshd).await?;
            let name = format!("ssh -R via bastion, {algorithm}");
            measure(&lab, &sshd, &reverse.tunnel, &name, time, samples).await;
            drop(reverse);
            let direct = Tunnel {
                ip: HOST,
                port: sshd.port,
                options: Vec::new(),
            };
            measure(
                &lab,
                &sshd,
                &direct,
                &format!("direct TCP, kernel {algorithm}"),
                time,
                samples,
            )
            .await;
        }
    }
    if only.as_deref().is_none_or(|only| only == "direct") {
        direct::run(quick).await?;
    }
    Ok(())
}
