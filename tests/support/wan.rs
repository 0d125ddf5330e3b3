//! A WAN lab: three network namespaces (client, relay, host) joined by two
//! wires, each a pair of TUN devices with a program between them (threads
//! of this process) that delays, loses, rate-limits and queues packets the
//! way a real path does. The kernel here has no `netem` qdisc, so the
//! wire is ours. Needs root; [`Lab::unavailable`] says why not.
//!
//! ```text
//!  client ns            relay ns                     host ns
//!  10.77.1.2 ==wire 1== 10.77.1.1   10.77.2.1 ==wire 2== 10.77.2.2
//! ```
//!
//! The relay namespace forwards IP, so client and host also reach each
//! other directly (routed TCP, the baseline). Dropping the lab stops the
//! wires and deletes the namespaces. [`Lab::namespaces`] and [`Lab::join`]
//! build other shapes from the same parts ([`super::detour`]).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The client's address (client namespace).
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// The relay's address towards the client.
pub const RELAY_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The relay's address towards the host.
pub const RELAY_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
/// The host's address (host namespace).
pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);

/// What one wire does to packets, the same both ways.
#[derive(Clone, Copy, Debug)]
pub struct Wire {
    /// One-way delay.
    pub delay: Duration,
    /// Rate in bits per second.
    pub rate: u64,
    /// Longest a packet waits in the drop-tail queue before the rate limit.
    pub queue: Duration,
    /// Probability that a packet is lost.
    pub loss: f64,
}

/// Packets a wire moved and dropped, both directions, and the bytes (IP
/// packets whole) it moved.
#[derive(Debug, Default)]
pub struct WireStats {
    pub forwarded: AtomicU64,
    pub bytes: AtomicU64,
    pub lost: AtomicU64,
    pub queue_drops: AtomicU64,
}

/// Three namespaces joined by two wires.
pub struct Lab {
    /// Namespace names: client, relay, host.
    pub client: String,
    pub relay: String,
    pub host: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Per wire, in the order they were joined.
    pub stats: Vec<Arc<WireStats>>,
    /// Prefix of device names.
    tag: String,
    /// The lab's number in this process, which seeds its wires.
    n: u64,
}

/// One end of a wire: namespace, address (a /24), device name suffix.
pub type End<'a> = (&'a str, Ipv4Addr, &'a str);

static LABS: AtomicU64 = AtomicU64::new(0);

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Runs `ip args`, panicking with its output on failure.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip netns exec ns args`, panicking on failure.
pub fn in_ns(ns: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    ip(&all);
}

/// Runs `cmd` (split at whitespace) inside `ns`, panicking on failure.
pub fn run_in(ns: &str, cmd: &str) {
    in_ns(ns, &cmd.split_whitespace().collect::<Vec<_>>());
}

/// `program` to run inside namespace `ns`, or here without one.
pub fn command_in(
    ns: Option<&str>,
    program: impl AsRef<std::ffi::OsStr>,
) -> tokio::process::Command {
    match ns {
        Some(ns) => {
            let mut cmd = tokio::process::Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => tokio::process::Command::new(program),
    }
}

/// Opens a TUN device named `name` (no packet information header).
fn tun(name: &str) -> OwnedFd {
    // SAFETY: plain libc calls on a path and an ifreq we own.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(
            fd >= 0,
            "open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().take(15).enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        let rc = libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &req);
        assert!(
            rc >= 0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        fd
    }
}

impl Lab {
    /// Why the lab cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("the WAN lab needs root (network namespaces and TUN devices)".into());
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Some("the WAN lab needs /dev/net/tun".into());
        }
        let ip = std::process::Command::new("ip").arg("-V").output();
        if !ip.is_ok_and(|o| o.status.success()) {
            return Some("the WAN lab needs the ip command (iproute2)".into());
        }
        None
    }

    /// Builds the namespaces and both wires; the relay forwards between
    /// them, so client and host reach each other through it.
    pub fn start(wire: Wire) -> Lab {
        let lab = Lab::through_relay(wire);
        run_in(&lab.relay, "sysctl -q -w net.ipv4.ip_forward=1");
        lab
    }

    /// The namespaces, client and host each joined to the relay by a wire
    /// like `wire` and routed through it by default; the relay forwards
    /// nothing yet.
    pub fn through_relay(wire: Wire) -> Lab {
        let mut lab = Lab::namespaces();
        let (client, relay, host) = (lab.client.clone(), lab.relay.clone(), lab.host.clone());
        let never = Arc::new(AtomicBool::new(false));
        let near = (client.as_str(), CLIENT, "c");
        lab.join(near, (&relay, RELAY_CLIENT_SIDE, "r1"), wire, never.clone());
        let near = (host.as_str(), HOST, "h");
        lab.join(near, (&relay, RELAY_HOST_SIDE, "r2"), wire, never);
        run_in(
            &client,
            &format!("ip route add default via {RELAY_CLIENT_SIDE}"),
        );
        run_in(
            &host,
            &format!("ip route add default via {RELAY_HOST_SIDE}"),
        );
        lab
    }

    /// The three namespaces, each with its loopback up, and no wire yet.
    pub fn namespaces() -> Lab {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("srw{}x{n}", std::process::id() % 100_000);
        let (client, relay, host) = (format!("{tag}-c"), format!("{tag}-r"), format!("{tag}-h"));
        for ns in [&client, &relay, &host] {
            ip(&["netns", "add", ns]);
            in_ns(ns, &["ip", "link", "set", "lo", "up"]);
        }
        Lab {
            client,
            relay,
            host,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: Vec::new(),
            tag,
            n,
        }
    }

    /// Joins two namespaces by a wire that does `wire` both ways and drops
    /// every packet while `cut` is set. Each end is a namespace, its
    /// address (a /24) and a device name suffix (unique in the lab). Its
    /// counts are pushed on [`Lab::stats`] and returned.
    pub fn join(&mut self, a: End, b: End, wire: Wire, cut: Arc<AtomicBool>) -> Arc<WireStats> {
        let w = self.stats.len() as u64;
        let mut fds = Vec::new();
        for (ns, addr, suffix) in [a, b] {
            let dev = format!("{}{suffix}", self.tag);
            let fd = tun(&dev);
            ip(&["link", "set", &dev, "netns", ns]);
            run_in(ns, &format!("ip addr add {addr}/24 dev {dev}"));
            run_in(ns, &format!("ip link set {dev} up"));
            fds.push(Arc::new(fd));
        }
        let st = Arc::new(WireStats::default());
        for (from, to) in [(0, 1), (1, 0)] {
            let ends = (fds[from].clone(), fds[to].clone());
            let seed = (self.n << 8) + w * 2 + from as u64;
            let run = (self.stop.clone(), cut.clone(), st.clone());
            self.threads.extend(run_wire(ends, wire, run, seed));
        }
        self.stats.push(st.clone());
        st
    }
}

/// shellrelay across a [`Lab`]: the relay in the relay namespace, the host
/// agent in the host namespace serving `target`, the client forwarder in
/// the client namespace; stopped on drop.
pub struct Relayed {
    _procs: Vec<super::proc::Proc>,
    /// The client forwarder's port on the client namespace's loopback.
    pub port: u16,
}

impl Relayed {
    /// What the relay, the host agent and the client forwarder have
    /// written to stderr so far, in that order.
    pub fn lines(&self) -> [Vec<String>; 3] {
        std::array::from_fn(|i| self._procs[i].lines())
    }
}

impl Lab {
    /// Starts shellrelay across the lab with its files in `dir`, every role
    /// given `extra` flags (`--congestion`, `--stream-window`), the host
    /// agent dialling `target`; returns once the client is connected.
    pub async fn shellrelay(&self, dir: &std::path::Path, target: &str, extra: &[&str]) -> Relayed {
        self.shellrelay_with(dir, target, extra, &[]).await
    }

    /// [`Lab::shellrelay`], with `peers` passed to the host agent and the
    /// client forwarder only.
    pub async fn shellrelay_with(
        &self,
        dir: &std::path::Path,
        target: &str,
        extra: &[&str],
        peers: &[&str],
    ) -> Relayed {
        use super::bin::{
            make_private, mint_token, peer_args, relay_args, shellrelay_in, write_secret,
        };
        use super::proc::{field, Proc};
        let secret = write_secret(dir);
        let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
        let names = format!("{RELAY_CLIENT_SIDE},{RELAY_HOST_SIDE}");
        let mut args = relay_args("0.0.0.0:0", &secret, &cert, &key);
        args.extend(["--name", &names]);
        args.extend_from_slice(extra);
        let mut relay = Proc::spawn("relay", shellrelay_in(&self.relay, &args));
        let line = relay.wait_for_text("relay listening").await;
        let port = field(&line, "addr")
            .and_then(|a| a.rsplit(':').next())
            .expect("relay port")
            .to_owned();
        let mut procs = vec![relay];
        let mut listen = 0;
        for (role, ns, relay_ip) in [
            ("host", &self.host, RELAY_HOST_SIDE),
            ("client", &self.client, RELAY_CLIENT_SIDE),
        ] {
            let token = dir.join(format!("{role}.token"));
            std::fs::write(&token, mint_token(&secret, role, "lab1", "1h").await).expect("token");
            make_private(&token);
            let at = format!("{relay_ip}:{port}");
            let mut args = peer_args(role, &at, &cert, &token);
            args.extend_from_slice(extra);
            args.extend_from_slice(peers);
            match role {
                "host" => args.extend(["--target", target]),
                _ => args.extend(["--listen", "127.0.0.1:0"]),
            }
            let mut proc = Proc::spawn(role, shellrelay_in(ns, &args));
            if role == "host" {
                proc.wait_for_text("registered with relay").await;
            } else {
                let line = proc.wait_for_text("client forwarder listening").await;
                listen = field(&line, "listen")
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .expect("client forwarder port");
                proc.wait_for_text("connected to relay").await;
            }
            procs.push(proc);
        }
        Relayed {
            _procs: procs,
            port: listen,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in [&self.client, &self.relay, &self.host] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// One direction of a wire: a reader that drops and schedules packets, and
/// a writer that delivers each at its time.
/// It stops once `stop` is set, and drops every packet (counted as lost)
/// while `cut` is.
fn run_wire(
    (from, to): (Arc<OwnedFd>, Arc<OwnedFd>),
    wire: Wire,
    (stop, cut, stats): (Arc<AtomicBool>, Arc<AtomicBool>, Arc<WireStats>),
    seed: u64,
) -> [JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = {
        let stop = stop.clone();
        let stats = stats.clone();
        std::thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut next_free = Instant::now();
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: from.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd we own.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                // SAFETY: reading into a buffer we own, of its length.
                let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    continue;
                }
                if rng.random::<f64>() < wire.loss || cut.load(Ordering::Relaxed) {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                let start = next_free.max(now);
                if start - now > wire.queue {
                    stats.queue_drops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let bits = n as u64 * 8 * 1_000_000_000;
                next_free = start + Duration::from_nanos(bits.checked_div(wire.rate).unwrap_or(0));
                if tx
                    .send((next_free + wire.delay, buf[..n as usize].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let writer = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((at, packet)) = rx.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            // SAFETY: writing a buffer we own, of its length.
            let n = unsafe { libc::write(to.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
            if n > 0 {
                stats.forwarded.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    [reader, writer]
}
