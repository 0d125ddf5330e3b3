//! A NAT lab: network namespaces joined by veth pairs (no delay, no loss),
//! with a "wan" in the middle that stands for the public internet and
//! hosts the relay, and on each side a router namespace in front of a node
//! namespace. Each router is one of the [`Nat`] kinds, built from
//! `iptables` inside its namespace. Needs root, `ip` and `iptables`;
//! [`NatLab::unavailable`] says why not.
//!
//! ```text
//!  client ns      router_c ns           wan ns (relay)            router_h ns          host ns
//!  eth0 ─────── lan [NAT] out ──────── w1          w2 ───────── out [NAT] lan ──────── eth0
//!  192.168.1.2  .1        10.99.1.2    10.99.1.1   10.99.2.1    10.99.2.2 .1           192.168.2.2
//! ```
//!
//! The wan forwards between its links; each router has a default route via
//! the wan, each node one via its router. The relay's address is the wan's
//! 10.99.1.1 ([`RELAY`]), which both sides reach. The wan routes to an
//! inside subnet only when that side is [`Nat::Public`]; behind a NAT the
//! inside addresses are unreachable from outside, as on the internet.
//!
//! [`Layout::SameNat`] puts client (192.168.1.2) and host (192.168.1.3)
//! behind one [`Nat::Cone`] router, on a bridge `lan` in its namespace;
//! there is no `router_h`. [`Layout::Ipv6`] gives every link an IPv6
//! /64 as well (wan links `fd00:99:0:1::/64` and `fd00:99:0:2::/64`,
//! inside `fd00:99:1::/64` and `fd00:99:2::/64`, routers `::1` inside and
//! `::2` outside, nodes `::2`) with no NAT; each router is a stateful
//! firewall for IPv6 and a [`Nat::Cone`] for IPv4 (a dual-stack home).
//! The relay is `fd00:99:0:1::1` ([`RELAY6`]) there.
//!
//! Every device is created inside a lab namespace, never in the caller's,
//! so device names are short and the same in every lab (`out`, `lan`,
//! `eth0`, `w1`); the namespaces themselves are named per process and per
//! lab, so labs run side by side. Dropping the lab deletes its namespaces,
//! which deletes their devices, rules and connection tracking.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::wan::in_ns;

/// The relay's IPv4 address: the wan's end of the client side's link.
pub const RELAY: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
/// The relay's IPv6 address in [`Layout::Ipv6`].
pub const RELAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 1, 0, 0, 0, 1);

/// How long addresses may stay tentative before the lab gives up.
const SETTLE: Duration = Duration::from_secs(5);

/// What a router does to IPv4 between its inside and the wan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// No NAT, no filtering: the router routes, and the wan has a route to
    /// the inside subnet via it.
    Public,
    /// A home router: endpoint-independent mapping (`MASQUERADE` keeps the
    /// source port while it is free), address-and-port-dependent
    /// filtering (only conntrack's ESTABLISHED,RELATED come in; NEW from
    /// the wan is dropped, in FORWARD and in INPUT alike).
    Cone,
    /// Endpoint-dependent mapping: [`Nat::Cone`] with `MASQUERADE
    /// --random-fully`, a fresh random public port for each destination.
    Symmetric,
}

/// Which namespaces and routers a lab has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Client and host each behind a router of their own.
    Pair { client: Nat, host: Nat },
    /// Client and host on one LAN behind one [`Nat::Cone`] router.
    SameNat,
    /// As `Pair` with both sides [`Nat::Cone`] for IPv4, plus IPv6
    /// everywhere: no NAT, each router a stateful firewall.
    Ipv6,
}

/// The lab's namespaces; deleted on drop.
pub struct NatLab {
    /// What was built.
    pub layout: Layout,
    /// The public internet, where the relay runs.
    pub wan: String,
    /// The client's node.
    pub client: String,
    /// The host's node.
    pub host: String,
    /// Router namespaces: the client side's, then the host side's (none
    /// in [`Layout::SameNat`]).
    pub routers: Vec<String>,
    /// Every namespace made so far, deleted on drop (also when building
    /// panics half way).
    made: Vec<String>,
}

static LABS: AtomicU64 = AtomicU64::new(0);

/// Runs `cmd` (split at whitespace) inside `ns`, panicking on failure.
fn run(ns: &str, cmd: impl AsRef<str>) {
    in_ns(ns, &cmd.as_ref().split_whitespace().collect::<Vec<_>>());
}

/// What `args` prints inside `ns`, panicking on failure.
fn output_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "in {ns}: {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`.
/// Sockets made in `f` stay in `ns` for good, whichever thread uses them
/// afterwards.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a descriptor we hold open; it moves only
            // this thread, which ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A UDP socket bound to `addr` inside namespace `ns`.
pub fn bind_udp(ns: &str, addr: SocketAddr) -> UdpSocket {
    in_netns(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"))
}

impl NatLab {
    /// Why the lab cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("the NAT lab needs root (network namespaces, iptables)".into());
        }
        for (tool, package) in [
            ("ip", "iproute2"),
            ("iptables", "iptables"),
            ("ip6tables", "iptables"),
        ] {
            let runs = Command::new(tool).arg("-V").output();
            if !runs.is_ok_and(|o| o.status.success()) {
                return Some(format!("the NAT lab needs the {tool} command ({package})"));
            }
        }
        None
    }

    /// Builds the namespaces, links, routes and rules of `layout`.
    pub fn start(layout: Layout) -> NatLab {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("srn{}x{n}", std::process::id() % 100_000);
        let name = |s: &str| format!("{tag}-{s}");
        let mut lab = NatLab {
            layout,
            wan: name("w"),
            client: name("c"),
            host: name("h"),
            routers: vec![name("rc")],
            made: Vec::new(),
        };
        if layout != Layout::SameNat {
            lab.routers.push(name("rh"));
        }
        let routers = lab.routers.clone();
        for ns in [&lab.wan, &lab.client, &lab.host]
            .into_iter()
            .chain(&routers)
        {
            add_namespace(&mut lab.made, ns);
        }
        for ns in [&lab.wan].into_iter().chain(&routers) {
            run(
                ns,
                "sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
            );
        }
        let (client, host) = (lab.client.clone(), lab.host.clone());
        match layout {
            Layout::Pair { client: c, host: h } => {
                lab.side(1, c, &[&client]);
                lab.side(2, h, &[&host]);
            }
            Layout::SameNat => lab.side(1, Nat::Cone, &[&client, &host]),
            Layout::Ipv6 => {
                lab.side(1, Nat::Cone, &[&client]);
                lab.side(2, Nat::Cone, &[&host]);
                lab.settle();
            }
        }
        lab
    }

    /// Side `s` (1 client, 2 host): the wan link `w{s}`–`out`, the
    /// router's LAN `lan` with `nodes` on it (`eth0` each, addresses .2,
    /// .3, ...), routes, and the router's rules for `nat` (and IPv6).
    fn side(&self, s: usize, nat: Nat, nodes: &[&str]) {
        let v6 = self.layout == Layout::Ipv6;
        let (wan, router) = (&self.wan, &self.routers[s - 1]);
        let w = (format!("10.99.{s}"), format!("fd00:99:0:{s}:"));
        let l = (format!("192.168.{s}"), format!("fd00:99:{s}:"));
        veth(wan, &format!("w{s}"), "out", router);
        addr(wan, &format!("w{s}"), &w, 1, v6);
        addr(router, "out", &w, 2, v6);
        run(router, format!("ip route add default via {}.1", w.0));
        if let [node] = nodes {
            veth(router, "lan", "eth0", node);
        } else {
            run(router, "ip link add lan type bridge");
            for (i, node) in nodes.iter().enumerate() {
                veth(router, &format!("lan{i}"), "eth0", node);
                run(router, format!("ip link set lan{i} master lan up"));
            }
        }
        addr(router, "lan", &l, 1, v6);
        for (i, node) in nodes.iter().enumerate() {
            addr(node, "eth0", &l, i + 2, v6);
            run(node, format!("ip route add default via {}.1", l.0));
            if v6 {
                run(node, format!("ip -6 route add default via {}:1", l.1));
            }
        }
        if v6 {
            run(router, format!("ip -6 route add default via {}:1", w.1));
            run(wan, format!("ip -6 route add {}:/64 via {}:2", l.1, w.1));
            firewall(router, "ip6tables");
        }
        match nat {
            Nat::Public => run(wan, format!("ip route add {}.0/24 via {}.2", l.0, w.0)),
            Nat::Cone | Nat::Symmetric => {
                let random = if nat == Nat::Symmetric {
                    "--random-fully"
                } else {
                    ""
                };
                let masq = "iptables -t nat -A POSTROUTING -o out -j MASQUERADE";
                run(router, format!("{masq} {random}"));
                firewall(router, "iptables");
            }
        }
    }

    /// Waits, within [`SETTLE`], until no IPv6 address in the lab is
    /// tentative (DAD is off, so this is at once; the poll only proves it).
    fn settle(&self) {
        let deadline = Instant::now() + SETTLE;
        for ns in &self.made {
            loop {
                let tentative = output_in(ns, &["ip", "-6", "addr", "show", "tentative"]);
                if tentative.trim().is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "IPv6 addresses in {ns} still tentative after {SETTLE:?}: {tentative}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The address peers send to for the relay, in the wan: [`RELAY6`] in
    /// [`Layout::Ipv6`], else [`RELAY`].
    pub fn relay_ip(&self) -> IpAddr {
        match self.layout {
            Layout::Ipv6 => RELAY6.into(),
            _ => RELAY.into(),
        }
    }

    /// The client node's own address (IPv6 in [`Layout::Ipv6`]).
    pub fn client_ip(&self) -> IpAddr {
        match self.layout {
            Layout::Ipv6 => Ipv6Addr::new(0xfd00, 0x99, 1, 0, 0, 0, 0, 2).into(),
            _ => Ipv4Addr::new(192, 168, 1, 2).into(),
        }
    }

    /// The host node's own address (IPv6 in [`Layout::Ipv6`]).
    pub fn host_ip(&self) -> IpAddr {
        match self.layout {
            Layout::Ipv6 => Ipv6Addr::new(0xfd00, 0x99, 2, 0, 0, 0, 0, 2).into(),
            Layout::SameNat => Ipv4Addr::new(192, 168, 1, 3).into(),
            Layout::Pair { .. } => Ipv4Addr::new(192, 168, 2, 2).into(),
        }
    }

    /// The address the relay sees the client come from: its own when
    /// public or on IPv6, else its router's outside address.
    pub fn client_public_ip(&self) -> IpAddr {
        match self.layout {
            Layout::Pair {
                client: Nat::Public,
                ..
            }
            | Layout::Ipv6 => self.client_ip(),
            _ => Ipv4Addr::new(10, 99, 1, 2).into(),
        }
    }

    /// The address the relay sees the host come from (in
    /// [`Layout::SameNat`], the one router's, as for the client).
    pub fn host_public_ip(&self) -> IpAddr {
        match self.layout {
            Layout::Pair {
                host: Nat::Public, ..
            }
            | Layout::Ipv6 => self.host_ip(),
            Layout::SameNat => self.client_public_ip(),
            Layout::Pair { .. } => Ipv4Addr::new(10, 99, 2, 2).into(),
        }
    }

    /// Packets the routers' firewalls have dropped so far, IPv4 and IPv6,
    /// INPUT and FORWARD, all routers together.
    pub fn dropped(&self) -> u64 {
        let mut sum = 0;
        for router in &self.routers {
            for tool in ["iptables", "ip6tables"] {
                for chain in ["INPUT", "FORWARD"] {
                    let table = output_in(router, &[tool, "-n", "-v", "-x", "-L", chain]);
                    // Rows after two header lines: pkts bytes target ...
                    sum += table
                        .lines()
                        .skip(2)
                        .map(|l| l.split_whitespace().collect::<Vec<_>>())
                        .filter(|f| f.get(2) == Some(&"DROP"))
                        .filter_map(|f| f[0].parse::<u64>().ok())
                        .sum::<u64>();
                }
            }
        }
        sum
    }
}

/// Makes namespace `ns` with loopback up and DAD off (before any device
/// exists, so every device and address there comes up usable at once);
/// records it in `made` first, for the drop.
fn add_namespace(made: &mut Vec<String>, ns: &str) {
    let out = Command::new("ip")
        .args(["netns", "add", ns])
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip netns add {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    made.push(ns.to_owned());
    run(ns, "ip link set lo up");
    run(
        ns,
        "sysctl -q -w net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
    );
}

/// Gives `dev` in `ns` address `me` in the /24 `net.0` (and, with `v6`,
/// in the /64 `net.1`, without DAD), then brings it up.
fn addr(ns: &str, dev: &str, net: &(String, String), me: usize, v6: bool) {
    run(ns, format!("ip addr add {}.{me}/24 dev {dev}", net.0));
    if v6 {
        run(
            ns,
            format!("ip -6 addr add {}:{me}/64 dev {dev} nodad", net.1),
        );
    }
    run(ns, format!("ip link set {dev} up"));
}

/// A veth pair: `dev` in `ns`, `peer` in `peer_ns`, made from inside `ns`
/// so that neither name ever exists in the caller's namespace.
fn veth(ns: &str, dev: &str, peer: &str, peer_ns: &str) {
    run(
        ns,
        format!("ip link add {dev} type veth peer name {peer} netns {peer_ns}"),
    );
}

/// A stateful firewall on the router in `ns`, with `tool` (`iptables` or
/// `ip6tables`): from the wan (`out`) only ESTABLISHED,RELATED come in,
/// forwarded or for the router itself; everything else from the wan is
/// dropped, not refused. Dropping in INPUT matters: a packet the router
/// accepted for itself (answering it with an ICMP error) would leave a
/// conntrack entry behind that takes the public port a hole punch needs,
/// so the inside's later packet out would be mapped to another port.
/// ICMPv6 to the router is let in for neighbour discovery.
fn firewall(ns: &str, tool: &str) {
    let answers = "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT";
    for chain in ["FORWARD", "INPUT"] {
        run(ns, format!("{tool} -A {chain} -i out {answers}"));
    }
    if tool == "ip6tables" {
        run(ns, "ip6tables -A INPUT -i out -p ipv6-icmp -j ACCEPT");
    }
    for chain in ["FORWARD", "INPUT"] {
        run(ns, format!("{tool} -A {chain} -i out -j DROP"));
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
