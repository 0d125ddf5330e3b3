//! Shared test support: a relay on 127.0.0.1:0 with a pinned rcgen
//! certificate, host agents and client forwarders started in-process, and
//! bounded waits. Targets and traffic are in [`traffic`] (and, for the
//! benchmarks, [`bulk`]), a private OpenSSH
//! server in [`sshd`], the binary run as a process in [`bin`] and [`proc`],
//! a UDP impairment proxy in [`netem`], and raw HTTP against the metrics
//! endpoint in [`http`].
#![allow(dead_code)]

pub mod bin;
pub mod bulk;
pub mod detour;
pub mod direct;
pub mod http;
pub mod natlab;
pub mod netem;
pub mod proc;
pub mod sshd;
pub mod traffic;
pub mod wan;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shellrelay::access::keys::Secret;
use shellrelay::access::token::{self, Claims, TokenSource, Verifier};
use shellrelay::client::{self, ClientConfig};
use shellrelay::host::{self, HostConfig};
use shellrelay::net::tls::{self, Trust};
use shellrelay::net::transport::dial::{self, ConnectError, RelayAddr};
use shellrelay::net::transport::direct::DirectMode;
pub use shellrelay::net::transport::Transport;
use shellrelay::net::transport::TransportOptions;
use shellrelay::protocol::{Reason, Role};
use shellrelay::relay::{Relay, RelayConfig, RelayHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default bound on any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(30);

/// The lifetime of a token that outlives any test.
pub const HOUR: Duration = Duration::from_secs(3600);

/// How often [`Tunnel::next_refusals`] reads the relay's refusal count:
/// short beside any backoff a test measures with it.
pub const REFUSAL_POLL: Duration = Duration::from_millis(2);

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
    /// The same certificate, PEM.
    pub cert_pem: String,
    key: PrivateKeyDer<'static>,
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
        let certified =
            rcgen::generate_simple_self_signed(["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert_pem = certified.cert.pem();
        let cert = vec![certified.cert.der().clone()];
        let key: PrivateKeyDer<'static> =
            PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()).into();
        let identity = tls::Identity {
            chain: cert.clone(),
            key: key.clone_key(),
        };
        let mut config =
            RelayConfig::new(Verifier::new(&secret, shellrelay::ops::defaults::AUDIENCE));
        configure(&mut config);
        let relay = Relay::bind("127.0.0.1:0".parse().unwrap(), identity, config.clone()).unwrap();
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
            cert_pem,
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
        let identity = tls::Identity {
            chain: self.cert.clone(),
            key: self.key.clone_key(),
        };
        // The old relay's socket closes when quinn's endpoint driver notices
        // the last handle is gone, a moment after `run` returns.
        let relay = within(WAIT, "the relay's port to be free again", async {
            loop {
                match Relay::bind(self.addr, identity.clone(), self.config.clone()) {
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

    /// Waits until the relay has refused `n` hellos or sessions in all,
    /// within [`WAIT`].
    pub async fn refused_at_least(&self, n: u64) {
        let what = format!(
            "{n} refusals (the relay has made {})",
            self.registry.refused()
        );
        within(WAIT, &what, async {
            while self.registry.refused() < n {
                tokio::time::sleep(REFUSAL_POLL).await;
            }
        })
        .await;
    }

    /// When the relay made each of its next `n` refusals, as this test saw
    /// them: the registry counts refusals without saying when, so its count
    /// is read every [`REFUSAL_POLL`], and refusals that came between two
    /// reads get the same time. Each refusal is waited for within [`WAIT`].
    pub async fn next_refusals(&self, n: usize) -> Vec<std::time::Instant> {
        let mut seen = self.registry.refused();
        let mut times = Vec::with_capacity(n);
        while times.len() < n {
            let what = format!("refusal {} of {n} after {:?}", times.len() + 1, times);
            let now = within(WAIT, &what, async {
                loop {
                    let now = self.registry.refused();
                    if now > seen {
                        return now;
                    }
                    tokio::time::sleep(REFUSAL_POLL).await;
                }
            })
            .await;
            let at = std::time::Instant::now();
            for _ in seen..now {
                times.push(at);
            }
            seen = now;
        }
        times.truncate(n);
        times
    }

    /// Signs `claims` with the relay's secret.
    pub fn sign(&self, claims: &Claims) -> String {
        token::mint(&self.secret, claims).unwrap()
    }

    /// A token for `role` on `host`, valid for `ttl`.
    pub fn token(&self, role: Role, host: &str, ttl: Duration) -> String {
        self.sign(&Claims::new(
            role,
            host,
            shellrelay::ops::defaults::AUDIENCE,
            ttl,
        ))
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
            at: None,
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
        self.spawn_host_with(relay, token, target, DirectMode::Off)
    }

    /// Starts host agent `id` for `target` that takes direct connections,
    /// and waits until it is registered.
    pub async fn host_direct(&self, id: &str, target: SocketAddr) -> Peer {
        let token = TokenSource::Literal(self.token(Role::Host, id, HOUR));
        let peer = self.spawn_host_with(self.relay_addr(), token, target, DirectMode::Auto);
        within(WAIT, "host to register", self.registry.wait_host(id, true)).await;
        peer
    }

    /// [`Tunnel::spawn_host_via`], with direct paths as `direct` says.
    pub fn spawn_host_with(
        &self,
        relay: RelayAddr,
        token: TokenSource,
        target: SocketAddr,
        direct: DirectMode,
    ) -> Peer {
        let cancel = self.cancel.child_token();
        let config = HostConfig {
            relays: vec![relay],
            fleet: None,
            token,
            target: target.to_string(),
            max_backoff: Duration::from_secs(1),
            resume_window: shellrelay::session::resume::RESUME_WINDOW,
            max_waiting: Default::default(),
            metrics: None,
            // Off unless asked, as for processes ([`bin::scrubbed`]).
            direct,
        };
        let task = tokio::spawn(host::run(config, cancel.clone()));
        Peer { cancel, task }
    }

    /// Starts host agent `id` for `target` and waits until it is registered.
    pub async fn host(&self, id: &str, target: SocketAddr) -> Peer {
        let peer = self.spawn_host(self.token(Role::Host, id, HOUR), target);
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
            relays: vec![relay],
            fleet: None,
            token: TokenSource::Literal(token),
            host: host.map(str::to_owned),
            resume_window: shellrelay::session::resume::RESUME_WINDOW,
            direct: DirectMode::Off,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(client::run(config, listener, cancel.clone()));
        (addr, Peer { cancel, task })
    }

    /// Starts a client forwarder for host `id` with a one-hour token.
    pub async fn client(&self, id: &str) -> SocketAddr {
        let token = self.token(Role::Client, id, HOUR);
        let (addr, peer) = self.client_with(token, None).await;
        // Lives as long as the tunnel: cancelled through the tunnel's token.
        std::mem::forget(peer.task);
        addr
    }

    /// How peers reach this relay with transport `via`.
    pub fn relay_over(&self, via: Transport) -> RelayAddr {
        let transport = TransportOptions {
            via,
            ..TransportOptions::default()
        };
        self.relay_via(self.addr, transport)
    }

    /// Starts host agent `id` for `target` over `via` and waits until it
    /// is registered.
    pub async fn host_over(&self, id: &str, target: SocketAddr, via: Transport) -> Peer {
        let token = TokenSource::Literal(self.token(Role::Host, id, HOUR));
        let peer = self.spawn_host_via(self.relay_over(via), token, target);
        within(WAIT, "host to register", self.registry.wait_host(id, true)).await;
        peer
    }

    /// Starts a client forwarder for host `id` over `via`; returns its
    /// address.
    pub async fn client_over(&self, id: &str, via: Transport) -> SocketAddr {
        let token = self.token(Role::Client, id, HOUR);
        let (addr, peer) = self.client_via(self.relay_over(via), token, None).await;
        std::mem::forget(peer.task);
        addr
    }

    /// A QUIC endpoint that trusts this relay and offers `alpn`, for peers
    /// that misbehave on purpose.
    pub fn raw_endpoint(&self, alpn: &[u8]) -> quinn::Endpoint {
        self.raw_endpoint_at("127.0.0.1:0".parse().unwrap(), alpn)
    }

    /// [`Tunnel::raw_endpoint`] bound to `at`.
    pub fn raw_endpoint_at(&self, at: SocketAddr, alpn: &[u8]) -> quinn::Endpoint {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert[0].clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client(at).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        endpoint
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
        std::fs::write(&cert, &self.cert_pem).unwrap();
        let token = dir.join("client.token");
        let jwt = if shellrelay::protocol::id::valid_host_id(host) {
            self.token(Role::Client, host, HOUR)
        } else {
            let mut claims = Claims::new(
                Role::Client,
                "tester",
                shellrelay::ops::defaults::AUDIENCE,
                HOUR,
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

/// A host agent or client forwarder running in this process.
pub struct Peer {
    /// Stops it.
    pub cancel: CancellationToken,
    /// Its task.
    pub task: JoinHandle<anyhow::Result<()>>,
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
        dial::connect(
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

/// Tries `attempt` until it succeeds, within [`WAIT`], as long as it fails
/// only with errors that `limited` accepts (a place at a limit not yet
/// given back); any other error fails the test.
pub async fn until_a_place_frees_up<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    mut attempt: impl FnMut() -> F,
    limited: impl Fn(&E) -> bool,
) {
    within(WAIT, "a place to free up", async {
        loop {
            match attempt().await {
                Ok(_) => return,
                Err(err) if limited(&err) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await;
}

/// `refusal` is a protocol error whose words contain `words`.
pub fn assert_protocol_refusal(refusal: &shellrelay::protocol::Refusal, words: &str) {
    assert_eq!(
        refusal.reason,
        Reason::Protocol,
        "{words}: {}",
        refusal.message
    );
    assert!(
        refusal.message.contains(words),
        "{:?} lacks {words:?}",
        refusal.message
    );
}
