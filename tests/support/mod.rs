//! Shared test support: a relay on 127.0.0.1:0 with a pinned rcgen
//! certificate, host agents and client forwarders started in-process, echo
//! and greeting targets, a private OpenSSH server, and bounded waits.
#![allow(dead_code)]

pub mod netem;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use shellrelay::client::{self, ClientConfig};
use shellrelay::host::{self, HostConfig};
use shellrelay::keys::Secret;
use shellrelay::peer::{self, ConnectError, RelayAddr};
use shellrelay::protocol::{Reason, Role};
use shellrelay::relay::{Relay, RelayConfig, RelayHandle};
use shellrelay::tls::{self, TransportOptions, Trust};
use shellrelay::token::{self, Claims, TokenSource, Verifier};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default bound on any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Logs to the test's captured output; `RUST_LOG` picks the level.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The secret that signs tokens without a key id in every [`Tunnel`].
pub const SECRET: &[u8] = b"test secret, at least sixteen bytes";

/// A relay running in this process, and what peers need to reach it.
pub struct Tunnel {
    /// The relay's UDP address.
    pub addr: SocketAddr,
    /// Its registry.
    pub registry: RelayHandle,
    /// The secret its tokens are signed with.
    pub secret: Secret,
    /// Its self-signed certificate, pinned by peers.
    pub cert: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    /// Cancelled on drop: stops the relay and every peer started from here.
    pub cancel: CancellationToken,
    config: RelayConfig,
    relay_cancel: CancellationToken,
    relay: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Tunnel {
    /// Starts a relay on a free loopback port. Refused tokens are not rate
    /// limited here (tests try many on purpose); see [`Tunnel::start_with`].
    pub async fn start() -> Tunnel {
        Tunnel::start_with(|c| c.limits.failures_per_addr = u32::MAX).await
    }

    /// Starts a relay whose default configuration `configure` adjusts.
    pub async fn start_with(configure: impl FnOnce(&mut RelayConfig)) -> Tunnel {
        init_tracing();
        shellrelay::raise_fd_limit();
        let secret = Secret::new(SECRET.to_vec()).unwrap();
        let identity = tls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert = identity.chain.clone();
        let key = identity.key.clone_key();
        let server = tls::server_config(identity, TransportOptions::default()).unwrap();
        let mut config = RelayConfig::new(Verifier::new(&secret, token::DEFAULT_AUDIENCE));
        configure(&mut config);
        let relay = Relay::bind("127.0.0.1:0".parse().unwrap(), server, config.clone()).unwrap();
        let addr = relay.local_addr().unwrap();
        let registry = relay.handle();
        let cancel = CancellationToken::new();
        let relay_cancel = cancel.child_token();
        let task = tokio::spawn(relay.run(relay_cancel.clone()));
        Tunnel {
            addr,
            registry,
            secret,
            cert,
            key,
            cancel,
            config,
            relay_cancel,
            relay: Some(task),
        }
    }

    /// Stops the relay (peers stay up) and waits for it to exit.
    pub async fn stop_relay(&mut self) {
        self.relay_cancel.cancel();
        if let Some(task) = self.relay.take() {
            within(WAIT, "relay to stop", task).await.unwrap().unwrap();
        }
    }

    /// Starts the relay again on the same address, secret and certificate.
    pub async fn start_relay(&mut self) {
        assert!(self.relay.is_none(), "the relay is running");
        let identity = shellrelay::tls::Identity {
            chain: self.cert.clone(),
            key: self.key.clone_key(),
        };
        let server = tls::server_config(identity, TransportOptions::default()).unwrap();
        // The old relay's socket closes when quinn's endpoint driver notices
        // the last handle is gone, a moment after `run` returns.
        let relay = within(WAIT, "the relay's port to be free again", async {
            loop {
                match Relay::bind(self.addr, server.clone(), self.config.clone()) {
                    Ok(relay) => return relay,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        self.registry = relay.handle();
        self.relay_cancel = self.cancel.child_token();
        self.relay = Some(tokio::spawn(relay.run(self.relay_cancel.clone())));
    }

    /// Signs `claims` with the relay's secret.
    pub fn sign(&self, claims: &Claims) -> String {
        token::mint(&self.secret, claims).unwrap()
    }

    /// A token for `role` on `host`, valid for `ttl`.
    pub fn token(&self, role: Role, host: &str, ttl: Duration) -> String {
        self.sign(&Claims::new(role, host, token::DEFAULT_AUDIENCE, ttl))
    }

    /// How peers reach this relay.
    pub fn relay_addr(&self) -> RelayAddr {
        self.relay_via(self.addr, TransportOptions::default())
    }

    /// How peers reach this relay through `addr` (a proxy in front of it),
    /// with `transport` settings.
    pub fn relay_via(&self, addr: SocketAddr, transport: TransportOptions) -> RelayAddr {
        RelayAddr {
            addr: addr.to_string(),
            trust: Trust::Pinned(self.cert.clone()),
            transport,
        }
    }

    /// Starts a host agent without waiting for it to register.
    pub fn spawn_host(&self, token: String, target: SocketAddr) -> Peer {
        self.spawn_host_via(self.relay_addr(), TokenSource::Literal(token), target)
    }

    /// Starts a host agent that reaches the relay as `relay` says.
    pub fn spawn_host_via(&self, relay: RelayAddr, token: TokenSource, target: SocketAddr) -> Peer {
        let cancel = self.cancel.child_token();
        let config = HostConfig {
            relay,
            token,
            target: target.to_string(),
            max_backoff: Duration::from_secs(1),
        };
        let task = tokio::spawn(host::run(config, cancel.clone()));
        Peer { cancel, task }
    }

    /// Starts host agent `id` for `target` and waits until it is registered.
    pub async fn host(&self, id: &str, target: SocketAddr) -> Peer {
        let peer = self.spawn_host(
            self.token(Role::Host, id, Duration::from_secs(3600)),
            target,
        );
        within(WAIT, "host to register", self.registry.wait_host(id, true)).await;
        peer
    }

    /// Starts a client forwarder with `token` on a free port; returns its address.
    pub async fn client_with(&self, token: String, host: Option<&str>) -> (SocketAddr, Peer) {
        self.client_via(self.relay_addr(), token, host).await
    }

    /// Starts a client forwarder that reaches the relay as `relay` says.
    pub async fn client_via(
        &self,
        relay: RelayAddr,
        token: String,
        host: Option<&str>,
    ) -> (SocketAddr, Peer) {
        let cancel = self.cancel.child_token();
        let config = ClientConfig {
            relay,
            token: TokenSource::Literal(token),
            host: host.map(str::to_owned),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(client::run(config, listener, cancel.clone()));
        (addr, Peer { cancel, task })
    }

    /// Starts a client forwarder for host `id` with a one-hour token.
    pub async fn client(&self, id: &str) -> SocketAddr {
        let token = self.token(Role::Client, id, Duration::from_secs(3600));
        let (addr, peer) = self.client_with(token, None).await;
        // Lives as long as the tunnel: cancelled through the tunnel's token.
        std::mem::forget(peer.task);
        addr
    }

    /// Stops the relay and every peer, waiting for the relay to exit.
    pub async fn stop(mut self) {
        self.stop_relay().await;
        self.cancel.cancel();
    }
}

/// What a `client` or `connect` process needs to reach a [`Tunnel`], as
/// files in one directory.
pub struct ClientFiles {
    /// The relay's certificate, PEM.
    pub cert: PathBuf,
    /// A one-hour client token, mode 0600.
    pub token: PathBuf,
    /// A client config file naming the relay, `cert` and `token`.
    pub config: PathBuf,
}

impl Tunnel {
    /// Writes the relay's certificate, a client token for `host` (a host
    /// id, or a pattern such as `lab-*`) and a client config file naming
    /// both into `dir`.
    pub fn client_files(&self, dir: &Path, host: &str) -> ClientFiles {
        use std::os::unix::fs::PermissionsExt;
        let cert = dir.join("relay.crt");
        std::fs::write(&cert, pem("CERTIFICATE", &self.cert[0])).unwrap();
        let token = dir.join("client.token");
        let jwt = if shellrelay::id::valid_host_id(host) {
            self.token(Role::Client, host, Duration::from_secs(3600))
        } else {
            let mut claims = Claims::new(
                Role::Client,
                "tester",
                token::DEFAULT_AUDIENCE,
                Duration::from_secs(3600),
            );
            claims.hosts = vec![host.to_owned()];
            self.sign(&claims)
        };
        std::fs::write(&token, jwt + "\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.join("client.toml");
        std::fs::write(
            &config,
            format!(
                "relay = \"{}\"\nrelay_cert = {:?}\ntoken_file = {:?}\n",
                self.addr,
                cert.display().to_string(),
                token.display().to_string()
            ),
        )
        .unwrap();
        ClientFiles {
            cert,
            token,
            config,
        }
    }
}

/// `der` as a PEM block with `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Finds program `name` for a test, or returns `None` saying loudly that
/// the test is skipped. Under `CI=true` a missing program fails the test,
/// naming the Debian `package` that has it.
pub fn required_program(name: &str, package: &str) -> Option<PathBuf> {
    if let Some(path) = find_program(name, &["/usr/bin", "/usr/local/bin", "/bin"]) {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{name} is not installed, and CI=true: install {package} (apt-get install {package})"
        );
    }
    eprintln!("\n!!! SKIPPED: {name} is not installed; install {package} to run this test !!!\n");
    None
}

/// A host agent or client forwarder running in this process.
pub struct Peer {
    /// Stops it.
    pub cancel: CancellationToken,
    /// Its task.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// A TCP server that echoes every connection back and closes after the
/// peer's FIN; returns its address.
pub async fn echo_server() -> SocketAddr {
    serve(|mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Greeting a target sends the moment a connection is accepted.
pub const GREETING: &[u8] = b"SSH-2.0-target_speaks_first\r\n";

/// Like [`echo_server`], but it writes [`GREETING`] first, as sshd does.
pub async fn greeting_server() -> SocketAddr {
    serve(|mut tcp| async move {
        if tcp.write_all(GREETING).await.is_err() {
            return;
        }
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Serves each accepted connection with `handle` on its own task.
pub async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handle(tcp));
        }
    });
    addr
}

/// A fast deterministic byte stream (xorshift64*), so that senders and
/// checkers agree without keeping the data.
pub struct Noise(u64);

impl Noise {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Noise {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` bytes of [`Noise`] for `seed` to `w`; returns their SHA-256.
pub async fn write_noise<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> [u8; 32] {
    let mut noise = Noise::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        noise.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n as u64;
    }
    hash.finalize().into()
}

/// Reads `r` to its end; returns the byte count and SHA-256.
pub async fn hash_to_end<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (u64, [u8; 32]) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, hash.finalize().into());
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
}

/// Sends `len` bytes of noise (for `seed`) through one session at `client`
/// to an echo target and checks that exactly the same bytes come back.
pub async fn echo_roundtrip(client: SocketAddr, seed: u64, len: u64) {
    let tcp = TcpStream::connect(client).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let sent = write_noise(&mut w, seed, len).await;
        w.shutdown().await.unwrap();
        sent
    });
    let (count, got) = hash_to_end(&mut r).await;
    let sent = writer.await.unwrap();
    assert_eq!(count, len, "session {seed}: byte count");
    assert_eq!(hex(&got), hex(&sent), "session {seed}: SHA-256");
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until the far side closes `tcp` (end of stream or reset),
/// discarding anything still in flight; returns what was read.
pub async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A private OpenSSH server on a free loopback port, with its own host
/// key and an authorized key for the current user.
pub struct Sshd {
    /// The port sshd listens on (127.0.0.1).
    pub port: u16,
    /// Holds keys and config; removed on drop.
    pub dir: tempfile::TempDir,
    child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn find_program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    dirs.iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The current user's name.
pub fn user() -> String {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn keygen(path: &Path) {
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

impl Sshd {
    /// Starts sshd, or returns `None` (saying so loudly) where OpenSSH is
    /// not installed. Under `CI=true` a missing sshd fails the test.
    pub async fn start() -> Option<Sshd> {
        let Some(sshd) = find_program("sshd", &["/usr/sbin", "/usr/local/sbin", "/sbin"]) else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("sshd is not installed, and CI=true: install openssh-server (apt-get install openssh-server)");
            }
            eprintln!("\n!!! SKIPPED: sshd is not installed; install openssh-server to run the real-ssh tests !!!\n");
            return None;
        };
        if find_program("ssh", &["/usr/bin"]).is_none() {
            panic!("sshd is installed but the ssh client is not");
        }
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("id"));
        let auth = dir.path().join("authorized_keys");
        std::fs::copy(dir.path().join("id.pub"), &auth).unwrap();
        // sshd refuses to start as root without its privilege-separation
        // directory, which only the service unit creates.
        if user() == "root" {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        for _attempt in 0..5 {
            let port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().port()
            };
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\nAuthorizedKeysFile {auth}\n\
                     PidFile {dir}/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
                     MaxStartups 200\nMaxSessions 200\nSubsystem sftp internal-sftp\nLogLevel INFO\n",
                    dir = dir.path().display(),
                    auth = auth.display(),
                ),
            )
            .unwrap();
            let mut child = tokio::process::Command::new(&sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("sshd starts");
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let log = Arc::new(Mutex::new(Vec::new()));
            let started = within(Duration::from_secs(20), "sshd to listen", async {
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line.clone());
                    if line.contains("Server listening on") {
                        return true;
                    }
                }
                false
            })
            .await;
            if !started {
                // Most likely the port was taken in between; try another.
                let _ = child.kill().await;
                eprintln!("sshd did not start: {:?}", log.lock().unwrap());
                continue;
            }
            // Keep draining sshd's log so it never blocks on a full pipe.
            let sink = log.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut log = sink.lock().unwrap();
                    if log.len() < 1000 {
                        log.push(line);
                    }
                }
            });
            return Some(Sshd {
                port,
                dir,
                child,
                log,
            });
        }
        panic!("sshd did not start after 5 attempts");
    }

    /// What sshd has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The target address for a host agent.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// An `ssh` command to `port` on 127.0.0.1 (the client forwarder)
    /// running `remote`, with this server's key and no user config.
    pub fn ssh(&self, port: u16, remote: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-T", "-p", &port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=10"])
            .arg("-i")
            .arg(self.dir.path().join("id"))
            .arg(format!("{}@127.0.0.1", user()))
            .arg(remote)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

/// Connects as `role` with `token` and returns the refusal.
pub async fn refusal(
    tunnel: &Tunnel,
    role: Role,
    token: String,
    host: Option<&str>,
) -> (Reason, String) {
    let err = within(
        WAIT,
        "hello answer",
        peer::connect(
            &tunnel.relay_addr(),
            &TokenSource::Literal(token),
            role,
            host,
        ),
    )
    .await
    .expect_err("the relay accepted a token it should refuse");
    match err {
        ConnectError::Refused(r) => (r.reason, r.message),
        other => panic!("expected a refusal, got {other}"),
    }
}
