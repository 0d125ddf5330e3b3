//! When a network drops UDP between a peer and the relay, the default
//! `--transport auto` still gets through, over TLS over TCP, and quickly:
//! real ssh through `shellrelay connect` (its ProxyCommand) and through the
//! client forwarder, in the WAN lab ([`support::wan`], wires that do
//! nothing) with iptables in the relay's namespace dropping one peer's UDP.
//! With `--transport quic` the one error line says UDP seems blocked and
//! what to use instead; with nothing listening at all, the one line names
//! UDP and TCP. The lab needs root and iptables: skipped with a note
//! without them, a failure under `CI=true`.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use shellrelay::ops::defaults::CONNECT_TIMEOUT;
use support::bin::{
    assert_error_line, finish, make_certs, make_private, mint_token, path_str, peer_args,
    relay_args, shellrelay, shellrelay_in, write_secret, Out, BIN,
};
use support::proc::{field, Proc};
use support::sshd::Sshd;
use support::wan::{in_ns, Lab, Wire, CLIENT, HOST, RELAY_CLIENT_SIDE, RELAY_HOST_SIDE};
use support::{within, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Wires that pass every packet at once: what is under test is the
/// firewall.
const CLEAN: Wire = Wire {
    delay: Duration::ZERO,
    rate: 1_000_000_000,
    queue: Duration::from_millis(50),
    loss: 0.0,
};

/// The bound on a first session over a path that drops UDP, from
/// starting the client side (ssh with `connect`, or the forwarder) to the
/// remote command's first output.
const FIRST_SESSION: Duration = Duration::from_millis(1500);

/// How late after [`CONNECT_TIMEOUT`] a failed connect may still exit:
/// process start and exit.
const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// The host id every rig serves.
const HOST_ID: &str = "lab1";

/// Whether the lab and iptables are here; says loudly why not (a failure
/// under `CI=true`).
fn lab_available() -> bool {
    let why = Lab::unavailable().or_else(|| {
        let iptables = std::process::Command::new("iptables")
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        (!iptables.is_ok_and(|o| o.status.success()))
            .then(|| "these tests need iptables (apt-get install iptables)".to_owned())
    });
    let Some(why) = why else { return true };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}, and CI=true"
    );
    eprintln!("\n!!! SKIPPED: {why} !!!\n");
    false
}

/// Which peer's UDP the relay's namespace drops.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Blocked {
    Client,
    Host,
}

/// A lab whose relay namespace drops UDP from one peer, with the relay,
/// a host agent `lab1` in front of a private sshd, and the files the
/// client side needs. Fields drop in order: processes before the lab.
struct Rig {
    relay: Proc,
    host: Proc,
    sshd: Sshd,
    /// The relay's port, UDP and TCP alike.
    port: u16,
    cert: PathBuf,
    client_token: PathBuf,
    dir: tempfile::TempDir,
    lab: Lab,
}

impl Rig {
    /// Builds the lab, drops `blocked`'s UDP at the relay, and starts the
    /// relay and the host agent (registered: over TCP if its UDP is
    /// dropped, else over QUIC). `None` where sshd is not installed.
    async fn start(blocked: Blocked) -> Option<Rig> {
        Rig::start_with(blocked, &[]).await
    }

    /// [`Rig::start`], the host agent started with `host_extra` too.
    async fn start_with(blocked: Blocked, host_extra: &[&str]) -> Option<Rig> {
        let lab = Lab::start(CLEAN);
        let from = match blocked {
            Blocked::Client => CLIENT,
            Blocked::Host => HOST,
        };
        in_ns(
            &lab.relay,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-p",
                "udp",
                "-s",
                &from.to_string(),
                "-j",
                "DROP",
            ],
        );
        let sshd = Sshd::start_in(Some(&lab.host)).await?;
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = write_secret(dir.path());
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let names = format!("{RELAY_CLIENT_SIDE},{RELAY_HOST_SIDE}");
        let mut args = relay_args("0.0.0.0:0", &secret, &cert, &key);
        args.extend(["--name", &names]);
        let mut relay = Proc::spawn("relay", shellrelay_in(&lab.relay, &args));
        let line = relay.wait_for_text("relay listening").await;
        let port: u16 = field(&line, "addr")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no relay port in {line:?}"));
        assert_eq!(
            field(&line, "tcp"),
            Some(format!("0.0.0.0:{port}").as_str()),
            "the relay listens on TCP at its UDP address: {line}"
        );
        let token = |role: &str| {
            let path = dir.path().join(format!("{role}.token"));
            let secret = secret.clone();
            let role = role.to_owned();
            async move {
                let jwt = mint_token(&secret, &role, HOST_ID, "1h").await;
                std::fs::write(&path, jwt + "\n").expect("write token");
                make_private(&path);
                path
            }
        };
        let (host_token, client_token) = (token("host").await, token("client").await);
        let at = format!("{RELAY_HOST_SIDE}:{port}");
        let target = format!("127.0.0.1:{}", sshd.port);
        let mut args = peer_args("host", &at, &cert, &host_token);
        args.extend(["--target", &target]);
        args.extend_from_slice(host_extra);
        let mut host = Proc::spawn("host", shellrelay_in(&lab.host, &args));
        let line = host.wait_for_text("registered with relay").await;
        let want = match blocked {
            Blocked::Host => "tcp",
            Blocked::Client => "quic",
        };
        assert_eq!(transport_of(&line), Some(want), "{line}");
        Some(Rig {
            relay,
            host,
            sshd,
            port,
            cert,
            client_token,
            dir,
            lab,
        })
    }

    /// The relay's address as the client namespace reaches it.
    fn relay_addr(&self) -> String {
        format!("{RELAY_CLIENT_SIDE}:{}", self.port)
    }

    /// Writes a client config file naming the relay, its certificate and
    /// the client token, plus `extra` lines; returns its path.
    fn client_config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "relay = \"{}\"\nrelay_cert = {:?}\ntoken_file = {:?}\n{extra}",
                self.relay_addr(),
                path_str(&self.cert),
                path_str(&self.client_token),
            ),
        )
        .expect("write client config");
        path
    }

    /// ssh in the client namespace running `remote` on host `lab1` through
    /// `shellrelay connect --host lab1 {connect_args}` as its ProxyCommand,
    /// which reads the client config file `config`.
    fn proxied_ssh(&self, config: &Path, connect_args: &str, remote: &str) -> Command {
        let proxy = format!("ProxyCommand={BIN} connect --host {HOST_ID} {connect_args}");
        let mut cmd = self.sshd.ssh_with(
            Some(&self.lab.client),
            Ipv4Addr::LOCALHOST,
            22,
            &["-o".into(), proxy],
            Some(remote),
        );
        scrub(&mut cmd).env("SHELLRELAY_CONFIG", config);
        cmd
    }

    /// `shellrelay connect --host lab1` in the client namespace with the
    /// relay, certificate and token as flags, and `extra` flags.
    fn connect(&self, extra: &[&str]) -> Command {
        let at = self.relay_addr();
        let mut args = peer_args("connect", &at, &self.cert, &self.client_token);
        args.extend(["--host", HOST_ID]);
        args.extend_from_slice(extra);
        shellrelay_in(&self.lab.client, &args)
    }

    /// Starts the client forwarder in the client namespace, with the
    /// default transport, on a free port of that namespace's loopback;
    /// returns it once it listens, and its port.
    async fn forwarder(&self) -> (Proc, u16) {
        let at = self.relay_addr();
        let mut args = peer_args("client", &at, &self.cert, &self.client_token);
        args.extend(["--listen", "127.0.0.1:0"]);
        let mut client = Proc::spawn("client", shellrelay_in(&self.lab.client, &args));
        let line = client.wait_for_text("client forwarder listening").await;
        let port = field(&line, "listen")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no forwarder port in {line:?}"));
        (client, port)
    }

    /// Waits for the relay to log its next client connection and checks
    /// that it came from `from` over `transport`.
    async fn client_connected(&mut self, from: Ipv4Addr, transport: &str) {
        let line = self.relay.wait_for_text("client connected").await;
        let remote = field(&line, "remote").unwrap_or_default();
        assert!(remote.starts_with(&format!("{from}:")), "{line}");
        assert_eq!(transport_of(&line), Some(transport), "{line}");
    }

    /// UDP packets the relay namespace's DROP rule has dropped.
    fn udp_dropped(&self) -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.lab.relay])
            .args(["iptables", "-L", "INPUT", "-n", "-v", "-x"])
            .stdin(Stdio::null())
            .output()
            .expect("iptables runs");
        assert!(out.status.success(), "iptables -L: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find(|l| l.contains("DROP"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no DROP rule with a count in:\n{text}"))
    }
}

/// The `transport` field of a log line, which tracing quotes.
fn transport_of(line: &str) -> Option<&str> {
    field(line, "transport").map(|t| t.trim_matches('"'))
}

/// Takes the caller's shellrelay settings out of `cmd`'s environment, as
/// [`support::bin::scrubbed`] does, for a command that starts `connect`
/// itself (ssh with a ProxyCommand).
fn scrub(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHELLRELAY_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG").env(
        "XDG_CONFIG_HOME",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-config-dir"),
    )
}

/// Runs `cmd`, an ssh whose client side started at `start`; returns its
/// first line of output and how long after `start` it came, once ssh has
/// exited 0 with nothing on stderr.
async fn first_output(start: Instant, mut cmd: Command) -> (String, Duration) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ssh runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let first = within(WAIT, "the first output of ssh", lines.next_line())
        .await
        .expect("read ssh's output");
    let took = start.elapsed();
    let rest = async { while let Ok(Some(_)) = lines.next_line().await {} };
    let (out, ()) = within(WAIT, "ssh to exit", async {
        tokio::join!(child.wait_with_output(), rest)
    })
    .await;
    let out = out.expect("wait for ssh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "ssh: {}, first line {first:?}, stderr: {stderr}",
        out.status
    );
    (first.expect("ssh printed a line"), took)
}

/// Runs `cmd`; returns what it printed and how long it took from its start.
async fn timed(cmd: Command) -> (Out, Duration) {
    let start = Instant::now();
    let out = finish(cmd).await;
    (out, start.elapsed())
}

/// Asserts that a connect that gave up took [`CONNECT_TIMEOUT`] and not
/// much more.
fn assert_gave_up_in_time(took: Duration, out: &Out) {
    assert!(
        took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + EXIT_MARGIN,
        "gave up after {took:?}, expected {CONNECT_TIMEOUT:?} to {:?}: {out:?}",
        CONNECT_TIMEOUT + EXIT_MARGIN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_clients_udp_dropped_ssh_gets_through_over_tcp_within_1_5_s() {
    if !lab_available() {
        return;
    }
    let Some(mut rig) = Rig::start(Blocked::Client).await else {
        return;
    };

    // ssh with `connect` as its ProxyCommand: the clock starts with ssh,
    // which starts connect.
    let config = rig.client_config("client.toml", "");
    let ssh = rig.proxied_ssh(&config, "", "echo hello");
    let (line, took) = first_output(Instant::now(), ssh).await;
    assert_eq!(line, "hello");
    assert!(
        took < FIRST_SESSION,
        "first output through connect after {took:?}, over {FIRST_SESSION:?}"
    );
    eprintln!("through connect: first output after {took:?}");
    rig.client_connected(CLIENT, "tcp").await;

    // The client forwarder: the clock starts with the forwarder.
    let start = Instant::now();
    let (mut client, port) = rig.forwarder().await;
    let ssh = rig.sshd.ssh_in(Some(&rig.lab.client), port, "echo hello");
    let (line, took) = first_output(start, ssh).await;
    assert_eq!(line, "hello");
    assert!(
        took < FIRST_SESSION,
        "first output through the forwarder after {took:?}, over {FIRST_SESSION:?}"
    );
    eprintln!("through the forwarder: first output after {took:?}");
    let line = client.logged_text("connected to relay").await;
    assert_eq!(transport_of(&line), Some("tcp"), "{line}");
    rig.client_connected(CLIENT, "tcp").await;

    // QUIC was tried, and the firewall dropped it.
    assert!(
        rig.udp_dropped() > 0,
        "no UDP was dropped: auto never tried QUIC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_hosts_udp_dropped_the_host_agent_registers_over_tcp_and_ssh_works() {
    if !lab_available() {
        return;
    }
    // Registered over TCP (checked by `start`); the client side is on QUIC.
    let Some(mut rig) = Rig::start(Blocked::Host).await else {
        return;
    };
    assert!(
        rig.udp_dropped() > 0,
        "no UDP was dropped: auto never tried QUIC"
    );

    let config = rig.client_config("client.toml", "");
    let ssh = rig.proxied_ssh(&config, "", "echo hello");
    let (line, _) = first_output(Instant::now(), ssh).await;
    assert_eq!(line, "hello");
    rig.client_connected(CLIENT, "quic").await;

    let (_client, port) = rig.forwarder().await;
    let ssh = rig.sshd.ssh_in(Some(&rig.lab.client), port, "echo hello");
    let (line, _) = first_output(Instant::now(), ssh).await;
    assert_eq!(line, "hello");
    rig.client_connected(CLIENT, "quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_dropped_transport_quic_fails_in_one_line_that_says_udp_seems_blocked() {
    if !lab_available() {
        return;
    }
    let Some(mut rig) = Rig::start(Blocked::Client).await else {
        return;
    };
    let relay = rig.relay_addr();
    let needles = [
        format!("no answer from relay {relay} over UDP"),
        format!("its TCP port {} answers", rig.port),
        "UDP seems blocked".to_owned(),
        "--transport tcp".to_owned(),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();

    // QUIC alone, chosen by flag, by environment variable and by the client
    // config file's `transport` key; all three wait out the same 10 s, so
    // they run side by side.
    let flag = rig.connect(&["--transport", "quic"]);
    let mut env = rig.connect(&[]);
    env.env("SHELLRELAY_TRANSPORT", "quic");
    let config = rig.client_config("quic.toml", "transport = \"quic\"\n");
    let mut file = shellrelay_in(&rig.lab.client, &["connect", "--host", HOST_ID]);
    file.env("SHELLRELAY_CONFIG", &config);
    let (flag, env, file) = tokio::join!(timed(flag), timed(env), timed(file));
    for (how, (out, took)) in [("flag", flag), ("environment", env), ("config file", file)] {
        eprintln!("--transport quic by {how}: gave up after {took:?}");
        assert_error_line(&out, &needles);
        assert_gave_up_in_time(took, &out);
    }
    assert!(rig.udp_dropped() > 0, "no UDP was dropped");

    // The advice works.
    let ssh = rig.proxied_ssh(&config, "--transport tcp", "echo hello");
    let (line, _) = first_output(Instant::now(), ssh).await;
    assert_eq!(line, "hello");
    rig.client_connected(CLIENT, "tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_listening_connect_says_once_that_neither_udp_nor_tcp_answered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let (cert, _) = make_certs(dir.path()).await;
    let token = dir.path().join("client.token");
    let jwt = mint_token(&secret, "client", HOST_ID, "1h").await;
    std::fs::write(&token, jwt + "\n").expect("write token");
    make_private(&token);

    // A port on which nothing listens: a TCP socket bound but not
    // listening holds it (a connection attempt gets a reset, as at a
    // closed port); the UDP port of the same number is free, so QUIC's
    // packets find nothing.
    let (tcp, port) = free_port();
    let relay = format!("127.0.0.1:{port}");

    let mut cmd = shellrelay(&peer_args("connect", &relay, &cert, &token));
    cmd.args(["--host", HOST_ID]);
    let (out, took) = timed(cmd).await;
    drop(tcp);
    eprintln!("nothing listening: gave up after {took:?}");
    assert_error_line(&out, &[]);
    assert_eq!(
        out.stderr,
        format!(
            "error: no answer from relay {relay} over UDP or TCP within 10 s: \
             is it running, and are UDP and TCP port {port} open?\n"
        ),
        "{out:?}"
    );
    assert_gave_up_in_time(took, &out);
}

/// A TCP socket bound to a loopback port but not listening, and that
/// port, whose UDP twin is free too.
fn free_port() -> (tokio::net::TcpSocket, u16) {
    for _attempt in 0..20 {
        let tcp = tokio::net::TcpSocket::new_v4().expect("tcp socket");
        tcp.bind(([127, 0, 0, 1], 0).into()).expect("bind tcp");
        let port = tcp.local_addr().expect("tcp address").port();
        // Taken and let go again: free unless someone takes it this instant.
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return (tcp, port);
        }
    }
    panic!("found no loopback port free for both TCP and UDP");
}

/// A host agent on TCP (its UDP dropped) whose UDP gets through again moves
/// back to QUIC while an ssh session runs through it: the session goes on
/// to its end on the old connection, every line in order, and no session
/// is refused during or after the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_agent_moves_back_to_quic_under_a_running_session_and_refuses_none() {
    if !lab_available() {
        return;
    }
    let Some(mut rig) = Rig::start_with(Blocked::Host, &["--quic-retry", "1s"]).await else {
        return;
    };
    let (_client, port) = rig.forwarder().await;
    let counting = "for i in $(seq 100); do echo $i; sleep 0.05; done";
    let mut ssh = rig.sshd.ssh_in(Some(&rig.lab.client), port, counting);
    let mut child = (ssh.stdout(Stdio::piped()).stderr(Stdio::piped()))
        .kill_on_drop(true)
        .spawn()
        .expect("ssh runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = within(WAIT, "the session's first line", lines.next_line()).await;
    assert_eq!(first.ok().flatten().as_deref(), Some("1"));
    let rest = tokio::spawn(async move {
        let mut got = vec!["1".to_owned()];
        while let Ok(Some(line)) = lines.next_line().await {
            got.push(line);
        }
        (got, child.wait_with_output().await)
    });

    // UDP from the host gets through again: at its next try the agent
    // registers over QUIC, while the session runs on its TCP connection.
    let host = HOST.to_string();
    let rule = ["-p", "udp", "-s", host.as_str(), "-j", "DROP"];
    let mut delete = vec!["iptables", "-D", "INPUT"];
    delete.extend(rule);
    in_ns(&rig.lab.relay, &delete);
    rig.host
        .wait_for_text("registered over QUIC and leaving TCP")
        .await;
    for _ in 0..3 {
        let ssh = rig.sshd.ssh_in(Some(&rig.lab.client), port, "echo hello");
        let (line, _) = first_output(Instant::now(), ssh).await;
        assert_eq!(line, "hello");
    }
    let (got, out) = within(WAIT, "the running session to end", rest)
        .await
        .unwrap();
    let out = out.expect("ssh ends");
    let want: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    assert!(
        out.status.success() && got == want,
        "the session across the move: {}, {} lines\nhost:\n{}\nrelay:\n{}",
        out.status,
        got.len(),
        rig.host.log(),
        rig.relay.log()
    );
    rig.relay
        .wait_for_text("the old one drains its sessions")
        .await;
    assert!(
        !rig.relay.log().contains("refused"),
        "a session was refused: {}",
        rig.relay.log()
    );
}
