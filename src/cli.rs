//! The command line: one clap struct per subcommand, turned into the
//! library's configurations. Every flag can also come from an environment
//! variable `SHELLRELAY_<FLAG>`; `client` and `connect` take what both
//! leave out from the client config file.

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
use crate::{client, config, connect, demo, host, limits, relay};

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
    /// One session to a host over stdin and stdout, for ssh's ProxyCommand.
    Connect(ConnectOpt),
    /// Print a signed token on stdout.
    Token(TokenOpt),
    /// Write a self-signed certificate and key for the relay.
    Certs(CertsOpt),
    /// Relay, host and client in one process on loopback, for a first try.
    Demo(DemoOpt),
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

/// How hosts and clients reach the relay. The relay and a token are
/// required; `client` and `connect` may take them from the config file.
#[derive(Debug, Args)]
pub struct PeerOpt {
    /// The relay's address.
    #[arg(long, env = "SHELLRELAY_RELAY", value_name = "HOST:PORT")]
    relay: Option<String>,
    /// The relay's certificate (pinned); without it the system's roots verify the relay.
    #[arg(long, env = "SHELLRELAY_RELAY_CERT", value_name = "PATH")]
    relay_cert: Option<PathBuf>,
    /// File holding this peer's token; re-read on every reconnect.
    #[arg(
        long,
        env = "SHELLRELAY_TOKEN_FILE",
        value_name = "PATH",
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
    /// The relay and the token, from flags (and their environment
    /// variables) first, then from the config file `file`. `wanted` says
    /// where a missing value may be given, for the error.
    fn reach(
        &self,
        file: Option<&config::Loaded>,
        wanted: &dyn Fn(&str) -> String,
    ) -> anyhow::Result<(RelayAddr, TokenSource)> {
        let keys = file.map(|f| &f.file);
        let relay = match (&self.relay, keys.and_then(|k| k.relay.as_ref())) {
            (Some(relay), _) => {
                if !relay.contains(':') {
                    bail!("--relay {relay} needs a port, as in {relay}:4433");
                }
                relay.clone()
            }
            (None, Some(relay)) => relay.clone(),
            (None, None) => bail!("{}", wanted("--relay HOST:PORT")),
        };
        let relay_cert = self
            .relay_cert
            .as_ref()
            .or_else(|| keys.and_then(|k| k.relay_cert.as_ref()));
        let trust = match relay_cert {
            Some(path) => Trust::Pinned(tls::load_certs(path)?),
            None => Trust::System,
        };
        let relay = RelayAddr {
            addr: relay,
            trust,
            transport: self.transport.options()?,
        };
        let file_token = keys.and_then(|k| k.token_file.as_ref());
        let token = match (&self.token_file, &self.token, file_token) {
            (Some(path), _, _) => TokenSource::File(path.clone()),
            (None, Some(t), _) => TokenSource::Literal(t.clone()),
            (None, None, Some(path)) => TokenSource::File(path.clone()),
            (None, None, None) => bail!("{}", wanted("--token-file PATH (or --token)")),
        };
        // Fail now on a missing file rather than at the first reconnect.
        token.load()?;
        if let TokenSource::File(path) = &token {
            if let Some(mode) = token::shared_mode(path) {
                tracing::warn!(
                    "token file {} is readable by other users (mode {mode:o}); run: chmod 600 {}",
                    path.display(),
                    path.display()
                );
            }
        }
        Ok((relay, token))
    }
}

/// What `client` and `connect` share: the relay, the token and the host,
/// each from a flag, its environment variable or the config file.
#[derive(Debug, Args)]
pub struct ReachOpt {
    #[command(flatten)]
    peer: PeerOpt,
    /// Host to reach (default: `host` in the config file, else the host the token names).
    #[arg(long, env = "SHELLRELAY_HOST", value_name = "ID", value_parser = host_id)]
    host: Option<String>,
    /// Client config file (TOML) for what flags leave out [default:
    /// $XDG_CONFIG_HOME/shellrelay/client.toml or ~/.config/shellrelay/client.toml,
    /// read if it exists]. A file named here must exist.
    #[arg(long, env = config::CONFIG_ENV, value_name = "PATH")]
    config: Option<PathBuf>,
}

impl ReachOpt {
    /// The client's configuration: flags and environment variables, then
    /// the config file.
    pub fn client_config(&self) -> anyhow::Result<client::ClientConfig> {
        let file = config::load(self.config.as_deref())?;
        let place = match (&file, config::default_path()) {
            (Some(loaded), _) => format!("set it in {}", loaded.path.display()),
            (None, Some(path)) => format!("set it in {}", path.display()),
            (None, None) => format!(
                "name a config file with --config or ${}",
                config::CONFIG_ENV
            ),
        };
        let wanted = |flag: &str| format!("pass {flag}, or {place}");
        let (relay, token) = self.peer.reach(file.as_ref(), &wanted)?;
        let host = self.host.clone().or_else(|| file.and_then(|f| f.file.host));
        Ok(client::ClientConfig { relay, token, host })
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
// The host agent reads no config file: the relay and a token are flags.
#[command(
    mut_arg("relay", |a| a.required(true)),
    mut_arg("token_file", |a| a.required_unless_present("token"))
)]
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
    reach: ReachOpt,
    /// Local TCP address that ssh connects to.
    #[arg(long, env = "SHELLRELAY_LISTEN", default_value = client::DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
}

/// `shellrelay connect`
#[derive(Debug, Args)]
pub struct ConnectOpt {
    #[command(flatten)]
    reach: ReachOpt,
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
    /// session in `cargo bench --bench relay`. The relay serves many
    /// connections at once and uses every core.
    pub fn single_threaded(&self) -> bool {
        matches!(
            self.command,
            Command::Host(_) | Command::Client(_) | Command::Connect(_)
        )
    }

    /// Log level when `RUST_LOG` is not set. `connect` runs inside ssh,
    /// whose terminal its stderr shares: it says only what went wrong.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Connect(_) => "warn",
            _ => "info",
        }
    }

    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Relay(opt) => run_relay(opt).await,
            Command::Host(opt) => {
                let wanted = |flag: &str| format!("pass {flag}");
                let (relay, token) = opt.peer.reach(None, &wanted)?;
                let config = host::HostConfig {
                    relay,
                    token,
                    target: opt.target,
                    max_backoff: opt.max_backoff,
                };
                host::run(config, shutdown_signal()?).await
            }
            Command::Client(opt) => {
                let config = opt.reach.client_config()?;
                let listener = tokio::net::TcpListener::bind(opt.listen)
                    .await
                    .with_context(|| format!("could not listen on {}", opt.listen))?;
                client::run(config, listener, shutdown_signal()?).await
            }
            Command::Connect(opt) => connect::run(opt.reach.client_config()?).await,
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
    };
    let relay = relay::Relay::bind(opt.listen, server, config)?;
    relay.run(shutdown_signal()?).await
}
