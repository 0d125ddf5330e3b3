//! The command line: one clap struct per subcommand, turned into the
//! library's configurations. Every flag can also come from an environment
//! variable `SHELLRELAY_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::peer::RelayAddr;
use crate::tls::{self, TransportOptions, Trust};
use crate::token::{self, Claims, Role, Secret, TokenSource, Verifier};
use crate::{client, demo, host, limits, relay, status};

/// Relay ssh to a machine behind NAT over QUIC.
#[derive(Debug, Parser)]
#[command(name = "shellrelay", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay on a UDP-reachable server.
    Relay(RelayOpt),
    /// Run the host agent next to sshd, behind NAT.
    Host(HostOpt),
    /// Run the client forwarder: `ssh -p2222 localhost` reaches the host.
    Client(ClientOpt),
    /// Print a signed token on stdout.
    Token(TokenOpt),
    /// Write a self-signed certificate and key for the relay.
    Certs(CertsOpt),
    /// Relay, host and client in one process on loopback, for a first try.
    Demo(DemoOpt),
    /// Print the hosts online at a relay, from its metrics endpoint.
    Status(StatusOpt),
}

fn host_id(s: &str) -> Result<String, String> {
    if token::valid_host_id(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "a host id is 1 to {} letters, digits, '.', '_' or '-'",
            token::MAX_HOST_ID_LEN
        ))
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 15m, 1h)"))
}

/// The shared secret, from a file or given directly.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SecretOpt {
    /// File holding the shared secret that signs tokens (at least 16 bytes).
    #[arg(long, env = "SHELLRELAY_SECRET_FILE", value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// The shared secret itself (prefer --secret-file: arguments are visible to other users).
    #[arg(
        long,
        env = "SHELLRELAY_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    secret: Option<String>,
}

impl SecretOpt {
    fn load(&self) -> anyhow::Result<Secret> {
        match (&self.secret_file, &self.secret) {
            (Some(path), _) => Secret::from_file(path),
            (None, Some(s)) => Secret::new(s.trim().as_bytes().to_vec()).context("in --secret"),
            (None, None) => bail!("pass --secret-file or --secret"),
        }
    }
}

/// Keep-alive and idle timeout.
#[derive(Debug, Args)]
pub struct TransportOpt {
    /// Interval of keep-alive packets; keeps NAT mappings open.
    #[arg(long, env = "SHELLRELAY_KEEP_ALIVE", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    keep_alive: Duration,
    /// Silence after which the peer is considered gone.
    #[arg(long, env = "SHELLRELAY_IDLE_TIMEOUT", default_value = "30s", value_parser = duration, value_name = "DURATION")]
    idle_timeout: Duration,
}

impl TransportOpt {
    fn options(&self) -> anyhow::Result<TransportOptions> {
        if self.keep_alive >= self.idle_timeout {
            bail!("--keep-alive must be shorter than --idle-timeout");
        }
        Ok(TransportOptions {
            keep_alive: self.keep_alive,
            idle_timeout: self.idle_timeout,
        })
    }
}

/// How hosts and clients reach the relay.
#[derive(Debug, Args)]
pub struct PeerOpt {
    /// The relay's address.
    #[arg(long, env = "SHELLRELAY_RELAY", value_name = "HOST:PORT")]
    relay: String,
    /// The relay's certificate (pinned); without it the system's roots verify the relay.
    #[arg(long, env = "SHELLRELAY_RELAY_CERT", value_name = "PATH")]
    relay_cert: Option<PathBuf>,
    /// File holding this peer's token; re-read on every reconnect.
    #[arg(
        long,
        env = "SHELLRELAY_TOKEN_FILE",
        value_name = "PATH",
        required_unless_present = "token",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// The token itself (prefer --token-file: arguments are visible to other users).
    #[arg(
        long,
        env = "SHELLRELAY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    #[command(flatten)]
    transport: TransportOpt,
}

impl PeerOpt {
    fn relay(&self) -> anyhow::Result<RelayAddr> {
        if !self.relay.contains(':') {
            bail!(
                "--relay {} needs a port, as in {}:4433",
                self.relay,
                self.relay
            );
        }
        let trust = match &self.relay_cert {
            Some(path) => Trust::Pinned(tls::load_certs(path)?),
            None => Trust::System,
        };
        Ok(RelayAddr {
            addr: self.relay.clone(),
            trust,
            transport: self.transport.options()?,
        })
    }

    fn token(&self) -> anyhow::Result<TokenSource> {
        let source = match (&self.token_file, &self.token) {
            (Some(path), _) => TokenSource::File(path.clone()),
            (None, Some(t)) => TokenSource::Literal(t.clone()),
            (None, None) => bail!("pass --token-file or --token"),
        };
        // Fail now on a missing file rather than at the first reconnect.
        source.load()?;
        if let Some(path) = &self.token_file {
            if let Some(mode) = token::shared_mode(path) {
                tracing::warn!(
                    "token file {} is readable by other users (mode {mode:o}); run: chmod 600 {}",
                    path.display(),
                    path.display()
                );
            }
        }
        Ok(source)
    }
}

/// `shellrelay relay`
#[derive(Debug, Args)]
pub struct RelayOpt {
    /// UDP address to listen on.
    #[arg(
        long,
        env = "SHELLRELAY_LISTEN",
        default_value = "[::]:4433",
        value_name = "ADDR"
    )]
    listen: SocketAddr,
    #[command(flatten)]
    secret: SecretOpt,
    /// Certificate (PEM); made self-signed, with the key, when neither exists.
    #[arg(
        long,
        env = "SHELLRELAY_CERT",
        default_value = "certs/relay.crt",
        value_name = "PATH"
    )]
    cert: PathBuf,
    /// Private key (PEM) of the certificate.
    #[arg(
        long,
        env = "SHELLRELAY_KEY",
        default_value = "certs/relay.key",
        value_name = "PATH"
    )]
    key: PathBuf,
    /// The `aud` that tokens must carry.
    #[arg(long, env = "SHELLRELAY_AUDIENCE", default_value = token::DEFAULT_AUDIENCE)]
    audience: String,
    /// Extra DNS name or IP for a generated certificate (repeatable).
    #[arg(
        long = "name",
        env = "SHELLRELAY_NAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    names: Vec<String>,
    /// Longest a new connection may take to send its hello.
    #[arg(long, env = "SHELLRELAY_HELLO_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    hello_timeout: Duration,
    /// Serve /metrics (Prometheus) and /status (JSON) over HTTP on this TCP address; off by default.
    #[arg(long, env = "SHELLRELAY_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    limits: LimitsOpt,
    #[command(flatten)]
    transport: TransportOpt,
}

/// The relay's limits.
#[derive(Debug, Args)]
pub struct LimitsOpt {
    /// Concurrent sessions per client connection; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_SESSIONS_PER_CLIENT", default_value_t = limits::DEFAULT_SESSIONS_PER_CLIENT, value_name = "N")]
    max_sessions_per_client: usize,
    /// Concurrent sessions per host; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_SESSIONS_PER_HOST", default_value_t = limits::DEFAULT_SESSIONS_PER_HOST, value_name = "N")]
    max_sessions_per_host: usize,
    /// Connections per IP address still in their handshake or hello; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_HANDSHAKES_PER_ADDR", default_value_t = limits::DEFAULT_HANDSHAKES_PER_ADDR, value_name = "N")]
    max_handshakes_per_addr: usize,
    /// Hosts registered at once; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_HOSTS", default_value_t = limits::DEFAULT_MAX_HOSTS, value_name = "N")]
    max_hosts: usize,
    /// Refused tokens per IP address per minute before its hellos are refused unread.
    #[arg(long, env = "SHELLRELAY_MAX_FAILURES_PER_ADDR", default_value_t = limits::DEFAULT_FAILURES_PER_ADDR, value_name = "N")]
    max_failures_per_addr: u32,
}

impl LimitsOpt {
    fn limits(&self) -> limits::Limits {
        limits::Limits {
            sessions_per_client: self.max_sessions_per_client,
            sessions_per_host: self.max_sessions_per_host,
            handshakes_per_addr: self.max_handshakes_per_addr,
            max_hosts: self.max_hosts,
            failures_per_addr: self.max_failures_per_addr,
        }
    }
}

/// `shellrelay host`
#[derive(Debug, Args)]
pub struct HostOpt {
    #[command(flatten)]
    peer: PeerOpt,
    /// The one address every session is connected to.
    #[arg(long, env = "SHELLRELAY_TARGET", default_value = host::DEFAULT_TARGET, value_name = "HOST:PORT")]
    target: String,
    /// Cap on the delay between reconnect attempts.
    #[arg(long, env = "SHELLRELAY_MAX_BACKOFF", default_value = "30s", value_parser = duration, value_name = "DURATION")]
    max_backoff: Duration,
}

/// `shellrelay client`
#[derive(Debug, Args)]
pub struct ClientOpt {
    #[command(flatten)]
    peer: PeerOpt,
    /// Local TCP address that ssh connects to.
    #[arg(long, env = "SHELLRELAY_LISTEN", default_value = client::DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
    /// Host to reach (default: the host the token names).
    #[arg(long, env = "SHELLRELAY_HOST", value_name = "ID", value_parser = host_id)]
    host: Option<String>,
}

/// `shellrelay token`
#[derive(Debug, Args)]
pub struct TokenOpt {
    #[command(flatten)]
    secret: SecretOpt,
    /// What the token allows: register as the host, or reach it as a client.
    #[arg(long, env = "SHELLRELAY_ROLE", value_enum)]
    role: Role,
    /// The host id.
    #[arg(long, env = "SHELLRELAY_HOST", value_name = "ID", value_parser = host_id)]
    host: String,
    /// How long the token is valid.
    #[arg(long, env = "SHELLRELAY_TTL", default_value = "1h", value_parser = duration, value_name = "DURATION")]
    ttl: Duration,
    /// The relay's audience.
    #[arg(long, env = "SHELLRELAY_AUDIENCE", default_value = token::DEFAULT_AUDIENCE)]
    audience: String,
    /// Optional token id (`jti`).
    #[arg(long, env = "SHELLRELAY_JTI", value_name = "ID")]
    jti: Option<String>,
}

/// `shellrelay certs`
#[derive(Debug, Args)]
pub struct CertsOpt {
    /// Directory for relay.crt and relay.key.
    #[arg(
        long,
        env = "SHELLRELAY_OUT",
        default_value = "certs",
        value_name = "DIR"
    )]
    out: PathBuf,
    /// Extra DNS name or IP the certificate is valid for (repeatable).
    #[arg(
        long = "name",
        env = "SHELLRELAY_NAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    names: Vec<String>,
    /// Replace an existing certificate and key.
    #[arg(long)]
    force: bool,
}

/// `shellrelay demo`
#[derive(Debug, Args)]
pub struct DemoOpt {
    /// What the demo host agent connects sessions to.
    #[arg(long, env = "SHELLRELAY_TARGET", default_value = host::DEFAULT_TARGET, value_name = "HOST:PORT")]
    target: String,
    /// Local TCP address that ssh connects to.
    #[arg(long, env = "SHELLRELAY_LISTEN", default_value = client::DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
}

/// `shellrelay status`
#[derive(Debug, Args)]
pub struct StatusOpt {
    /// The relay's metrics endpoint (the address it was given with --metrics).
    #[arg(long, env = "SHELLRELAY_METRICS", default_value = status::DEFAULT_METRICS, value_name = "HOST:PORT")]
    metrics: String,
}

/// A token that is cancelled on SIGINT or SIGTERM. The handlers are in
/// place when this returns, so a signal that arrives right after start-up
/// still ends in a graceful shutdown. Must be called inside the runtime.
pub fn shutdown_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("could not handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("could not handle SIGTERM")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT: shutting down"),
            _ = terminate.recv() => info!("SIGTERM: shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}

impl Cli {
    /// Whether the role runs best on one thread. The host agent and the
    /// client forwarder sit at the edges: on one thread their tasks hand
    /// data to quinn's connection task without waking another thread for
    /// every packet, which bought about a quarter more throughput per
    /// session in `cargo bench --bench relay`. `status` makes one request.
    /// The relay serves many connections at once and uses every core.
    pub fn single_threaded(&self) -> bool {
        matches!(
            self.command,
            Command::Host(_) | Command::Client(_) | Command::Status(_)
        )
    }

    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Relay(opt) => run_relay(opt).await,
            Command::Host(opt) => {
                let config = host::HostConfig {
                    relay: opt.peer.relay()?,
                    token: opt.peer.token()?,
                    target: opt.target,
                    max_backoff: opt.max_backoff,
                };
                host::run(config, shutdown_signal()?).await
            }
            Command::Client(opt) => {
                let config = client::ClientConfig {
                    relay: opt.peer.relay()?,
                    token: opt.peer.token()?,
                    host: opt.host,
                };
                let listener = tokio::net::TcpListener::bind(opt.listen)
                    .await
                    .with_context(|| format!("could not listen on {}", opt.listen))?;
                client::run(config, listener, shutdown_signal()?).await
            }
            Command::Token(opt) => {
                if opt.ttl < Duration::from_secs(1) {
                    bail!("--ttl must be at least 1s (token times are whole seconds)");
                }
                let secret = opt.secret.load()?;
                let mut claims = Claims::new(opt.role, &opt.host, &opt.audience, opt.ttl);
                claims.jti = opt.jti;
                println!("{}", token::mint(&secret, &claims)?);
                Ok(())
            }
            Command::Certs(opt) => {
                let (cert, key) = (opt.out.join("relay.crt"), opt.out.join("relay.key"));
                if !opt.force && (cert.exists() || key.exists()) {
                    bail!(
                        "{} or {} exists already; pass --force to replace them",
                        cert.display(),
                        key.display()
                    );
                }
                let names = tls::default_names(&opt.names);
                let identity = tls::create_self_signed(&cert, &key, &names)?;
                println!("wrote {} and {}", cert.display(), key.display());
                println!("names: {}", names.join(", "));
                println!(
                    "sha-256 fingerprint: {}",
                    tls::fingerprint(&identity.chain[0])
                );
                Ok(())
            }
            Command::Demo(opt) => demo::run(&opt.target, opt.listen, shutdown_signal()?).await,
            Command::Status(opt) => {
                let report = status::fetch(&opt.metrics).await?;
                print!("{}", status::table(&report));
                Ok(())
            }
        }
    }
}

async fn run_relay(opt: RelayOpt) -> anyhow::Result<()> {
    let secret = opt.secret.load()?;
    let names = tls::default_names(&opt.names);
    let (identity, created) = tls::load_or_create(&opt.cert, &opt.key, &names)?;
    let fingerprint = tls::fingerprint(&identity.chain[0]);
    if created {
        info!(cert = %opt.cert.display(), key = %opt.key.display(), names = %names.join(","), %fingerprint, "made a self-signed certificate");
    } else {
        info!(cert = %opt.cert.display(), %fingerprint, "loaded certificate");
    }
    let server = tls::server_config(identity, opt.transport.options()?)?;
    let config = relay::RelayConfig {
        verifier: Verifier::new(&secret, &opt.audience),
        limits: opt.limits.limits(),
        hello_timeout: opt.hello_timeout,
        metrics: opt.metrics,
    };
    let relay = relay::Relay::bind(opt.listen, server, config)?;
    relay.run(shutdown_signal()?).await
}
