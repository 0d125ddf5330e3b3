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
use crate::{client, config, connect, demo, host, keys, limits, manual, relay, status};

/// Relay ssh to a machine behind NAT over QUIC.
#[derive(Debug, Parser)]
#[command(name = "shellrelay", version, about, long_about = None)]
pub struct Cli {
    /// Log lines on stderr as text, or as one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "SHELLRELAY_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
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
    /// Write a new token-signing key: a shared secret or a key pair.
    Keygen(KeygenOpt),
    /// Write a self-signed certificate and key for the relay.
    Certs(CertsOpt),
    /// Relay, host and client in one process on loopback, for a first try.
    Demo(DemoOpt),
    /// Print the hosts online at a relay, from its metrics endpoint.
    Status(StatusOpt),
    /// Print the completion script for a shell on stdout.
    Completions(CompletionsOpt),
    /// Print the man page on stdout, or write one page per subcommand with --dir.
    Man(ManOpt),
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people.
    Text,
    /// One JSON object per line; session and host ids under `span`.
    Json,
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

fn host_pattern(s: &str) -> Result<String, String> {
    if token::valid_host_pattern(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "a host is 1 to {} letters, digits, '.', '_' or '-', and a pattern may use '*' and '?'",
            token::MAX_HOST_ID_LEN
        ))
    }
}

fn kid(s: &str) -> Result<String, String> {
    if keys::valid_kid(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "a key id is 1 to {} letters, digits, '.', '_' or '-'",
            keys::MAX_KID_LEN
        ))
    }
}

/// The shared secret, from a file or given directly.
#[derive(Debug, Args)]
#[group(multiple = false)]
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
    fn load(&self) -> anyhow::Result<Option<Secret>> {
        match (&self.secret_file, &self.secret) {
            (Some(path), _) => Secret::from_file(path).map(Some),
            (None, Some(s)) => Secret::new(s.trim().as_bytes().to_vec())
                .context("in --secret")
                .map(Some),
            (None, None) => Ok(None),
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
    /// Settings file (TOML) whose keys are this command's long flags; flags
    /// and SHELLRELAY_* variables override it.
    #[arg(long, env = "SHELLRELAY_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Key for tokens without a key id (kid): the shared secret.
    #[command(flatten)]
    secret: SecretOpt,
    /// Key for tokens whose header names key id KID (repeatable): a shared
    /// secret file (HS256) or an Ed25519 or P-256 public key in PEM.
    #[arg(long = "token-key", env = "SHELLRELAY_TOKEN_KEY", value_name = "KID=PATH", value_parser = keys::parse_kid_path, value_delimiter = ',')]
    token_keys: Vec<(String, PathBuf)>,
    /// File of revoked token ids and host ids, one `jti ID` or `host ID` a
    /// line; re-read on SIGHUP and when it changes.
    #[arg(long, env = "SHELLRELAY_REVOCATION_FILE", value_name = "PATH")]
    revocation_file: Option<PathBuf>,
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
#[command(group(clap::ArgGroup::new("signing").required(true).args(["secret_file", "secret", "signing_key"])))]
pub struct TokenOpt {
    #[command(flatten)]
    secret: SecretOpt,
    /// Sign with this key instead of the shared secret: a PEM private key
    /// (Ed25519 or P-256, as `shellrelay keygen` writes) or a secret file.
    #[arg(long, env = "SHELLRELAY_SIGNING_KEY", value_name = "PATH", conflicts_with_all = ["secret_file", "secret"])]
    signing_key: Option<PathBuf>,
    /// Key id (kid) to name in the token's header, so the relay knows which
    /// of its keys checks it.
    #[arg(long, env = "SHELLRELAY_KID", value_name = "KID", value_parser = kid)]
    kid: Option<String>,
    /// What the token allows: register as the host, or reach it as a client.
    #[arg(long, env = "SHELLRELAY_ROLE", value_enum)]
    role: Role,
    /// The host id. A client token may name several (repeat, or separate
    /// with commas) and patterns such as `lab-*`.
    #[arg(long, env = "SHELLRELAY_HOST", value_name = "ID", value_parser = host_pattern, value_delimiter = ',', required = true)]
    host: Vec<String>,
    /// Who a client token naming several hosts is for (its `sub`).
    #[arg(long, env = "SHELLRELAY_SUBJECT", value_name = "NAME", value_parser = host_id, default_value = "client")]
    subject: String,
    /// How long the token is valid.
    #[arg(long, env = "SHELLRELAY_TTL", default_value = "1h", value_parser = duration, value_name = "DURATION")]
    ttl: Duration,
    /// The relay's audience.
    #[arg(long, env = "SHELLRELAY_AUDIENCE", default_value = token::DEFAULT_AUDIENCE)]
    audience: String,
    /// Token id (`jti`), which a revocation file can name (default: random).
    #[arg(long, env = "SHELLRELAY_JTI", value_name = "ID", value_parser = host_id)]
    jti: Option<String>,
}

/// `shellrelay keygen`
#[derive(Debug, Args)]
pub struct KeygenOpt {
    /// Kind of key: a shared secret, or a key pair whose public half the
    /// relay verifies with.
    #[arg(long, env = "SHELLRELAY_KIND", value_enum, default_value = "ed25519")]
    kind: keys::KeyKind,
    /// File for the new secret or private key (mode 0600); a key pair's
    /// public key goes to the same path with `.pub` appended.
    #[arg(long, env = "SHELLRELAY_OUT", value_name = "PATH")]
    out: PathBuf,
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

/// `shellrelay completions`
#[derive(Debug, Args)]
pub struct CompletionsOpt {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// `shellrelay man`
#[derive(Debug, Args)]
pub struct ManOpt {
    /// Write shellrelay.1 and one page per subcommand (shellrelay-relay.1, ...) here instead.
    #[arg(long, env = "SHELLRELAY_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
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
            Command::Host(_) | Command::Client(_) | Command::Connect(_) | Command::Status(_)
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
                let key = match (&opt.signing_key, opt.secret.load()?) {
                    (Some(path), _) => keys::SigningKey::from_file(path)?,
                    (None, Some(secret)) => keys::SigningKey::secret(&secret),
                    (None, None) => bail!("pass --secret-file, --secret or --signing-key"),
                };
                let claims = token_claims(&opt)?;
                println!("{}", token::mint_with(&key, opt.kid.as_deref(), &claims)?);
                Ok(())
            }
            Command::Keygen(opt) => {
                for path in keys::generate(opt.kind, &opt.out)? {
                    println!("wrote {}", path.display());
                }
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
            Command::Completions(opt) => manual::completions(opt.shell, &mut std::io::stdout()),
            Command::Man(ManOpt { dir: None }) => manual::man(&mut std::io::stdout()),
            Command::Man(ManOpt { dir: Some(dir) }) => {
                for path in manual::man_pages(&dir)? {
                    println!("wrote {}", path.display());
                }
                Ok(())
            }
        }
    }
}

/// The claims `shellrelay token` signs.
fn token_claims(opt: &TokenOpt) -> anyhow::Result<Claims> {
    let single = match opt.host.as_slice() {
        [one] if token::valid_host_id(one) => Some(one.as_str()),
        _ => None,
    };
    let mut claims = match (opt.role, single) {
        (_, Some(host)) => Claims::new(opt.role, host, &opt.audience, opt.ttl),
        (Role::Host, None) => {
            bail!("a host token names exactly one host id, without '*' or '?'")
        }
        (Role::Client, None) => {
            let mut c = Claims::new(opt.role, &opt.subject, &opt.audience, opt.ttl);
            c.hosts = opt.host.clone();
            c
        }
    };
    claims.jti = Some(match &opt.jti {
        Some(jti) => jti.clone(),
        None => token::random_id(),
    });
    Ok(claims)
}

/// The relay's verification keys from its flags.
fn relay_keys(opt: &RelayOpt) -> anyhow::Result<keys::KeySet> {
    let mut set = keys::KeySet::default();
    if let Some(secret) = opt.secret.load()? {
        set.set_default(keys::VerifyKey::secret(&secret));
    }
    for (kid, path) in &opt.token_keys {
        set.insert(kid, keys::VerifyKey::from_file(path)?)?;
    }
    if set.is_empty() {
        bail!(
            "pass --secret-file, --secret or --token-key KID=PATH: the relay needs a key to check tokens"
        );
    }
    Ok(set)
}

async fn run_relay(opt: RelayOpt) -> anyhow::Result<()> {
    let keys = relay_keys(&opt)?;
    if !keys.kids().is_empty() {
        info!(kids = ?keys.kids(), "token keys by key id");
    }
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
        verifier: Verifier::with_keys(keys, &opt.audience),
        limits: opt.limits.limits(),
        hello_timeout: opt.hello_timeout,
        revocation_file: opt.revocation_file.clone(),
        metrics: opt.metrics,
    };
    let relay = relay::Relay::bind(opt.listen, server, config)?;
    reload_on_hangup(relay.handle())?;
    relay.run(shutdown_signal()?).await
}

/// Re-reads the relay's revocation file on every SIGHUP.
fn reload_on_hangup(relay: relay::RelayHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("could not handle SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match relay.reload_revocations() {
                Ok(n) => info!(entries = n, "SIGHUP: revocation file re-read"),
                Err(err) => tracing::warn!("SIGHUP: {err:#}; the previous list stays in force"),
            }
        }
    });
    Ok(())
}

/// Parses the command line; for `relay --config FILE`, fills the flags not
/// given (on the command line or as SHELLRELAY_* variables) from the file.
/// Exits with a usage error as clap does.
pub fn parse() -> Cli {
    parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// [`parse`] over `args` (the first being the program name).
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let cmd = Cli::command();
    let matches = cmd.clone().try_get_matches_from(&args)?;
    let config = match matches.subcommand() {
        Some(("relay", sub)) => sub.get_one::<PathBuf>("config").map(|p| (sub, p)),
        _ => None,
    };
    let Some((sub, path)) = config else {
        return Cli::from_arg_matches(&matches);
    };
    let mut cmd = cmd;
    let fail =
        |cmd: &mut clap::Command, msg: String| cmd.error(clap::error::ErrorKind::InvalidValue, msg);
    let extra = match cmd.find_subcommand("relay") {
        Some(relay) => config_args(path, relay, sub),
        None => Err(anyhow::anyhow!("no relay command")),
    }
    .map_err(|e| fail(&mut cmd, format!("{e:#}")))?;
    let mut all = args;
    all.extend(extra);
    let matches = cmd.clone().try_get_matches_from(&all).map_err(|e| {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let what = first.strip_prefix("error: ").unwrap_or(first);
        fail(&mut cmd, format!("in {}: {what}", path.display()))
    })?;
    Cli::from_arg_matches(&matches)
}

/// The flags that the settings file at `path` adds to `relay`'s command
/// line `given`: one per key, except keys whose flag `given` sets already.
fn config_args(
    path: &std::path::Path,
    relay: &clap::Command,
    given: &clap::ArgMatches,
) -> anyhow::Result<Vec<std::ffi::OsString>> {
    use clap::parser::ValueSource;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read settings file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let set = |id: &str| {
        matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    // The secret comes from one place: a flag for either wins over the file.
    let secret_given = set("secret_file") || set("secret");
    let mut out = Vec::new();
    for (key, value) in table {
        let long = if key == "token_keys" {
            "token-key".to_owned()
        } else {
            key.replace('_', "-")
        };
        let arg = relay.get_arguments().find(|a| {
            a.get_long() == Some(long.as_str()) && !matches!(long.as_str(), "config" | "help")
        });
        let Some(arg) = arg else {
            bail!(
                "{}, line {}: unknown key `{key}` (the keys are the long flags of `shellrelay relay --help`, and come before any [table])",
                path.display(),
                line_of(&text, &key)
            );
        };
        let id = arg.get_id().as_str();
        if set(id) || (secret_given && matches!(id, "secret_file" | "secret")) {
            continue;
        }
        let flag = format!("--{long}");
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(anyhow::anyhow!(
                "{}, line {}: `{key}` takes a string or a number",
                path.display(),
                line_of(&text, &key)
            )),
        };
        let values: Vec<String> = match &value {
            toml::Value::Table(kids) if key == "token_keys" => kids
                .iter()
                .map(|(kid, p)| scalar(p).map(|p| format!("{kid}={p}")))
                .collect::<anyhow::Result<_>>()?,
            toml::Value::Array(items) => {
                items.iter().map(&scalar).collect::<anyhow::Result<_>>()?
            }
            toml::Value::Boolean(b) if !arg.get_action().takes_values() => {
                if *b {
                    out.push(flag.into());
                }
                continue;
            }
            v => vec![scalar(v)?],
        };
        for v in values {
            out.push(flag.clone().into());
            out.push(v.into());
        }
    }
    Ok(out)
}

/// The 1-based line on which `key` is set in `text` (0 if not found).
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix(key)
                .or_else(|| line.strip_prefix(&format!("\"{key}\"")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(0, |n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn relay_opt(args: &[&str]) -> Result<RelayOpt, String> {
        let mut all = vec!["shellrelay", "relay"];
        all.extend_from_slice(args);
        match parse_from(all) {
            Ok(Cli {
                command: Command::Relay(opt),
                ..
            }) => Ok(opt),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn the_relay_settings_file_fills_what_flags_do_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            r#"
# the relay of the lab
listen = "127.0.0.1:7000"
secret_file = "/etc/shellrelay/secret"
max_hosts = 5
name = ["relay.example.com", "10.0.0.1"]
hello_timeout = "3s"
revocation_file = "/etc/shellrelay/revoked"

[token_keys]
2026-11 = "/etc/shellrelay/hs-2026-11"
issuer = "/etc/shellrelay/issuer.pub"
"#,
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let opt = relay_opt(&["--config", file]).unwrap();
        assert_eq!(opt.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(opt.limits.max_hosts, 5);
        assert_eq!(opt.names, ["relay.example.com", "10.0.0.1"]);
        assert_eq!(opt.hello_timeout, Duration::from_secs(3));
        assert_eq!(
            opt.secret.secret_file.as_deref(),
            Some(std::path::Path::new("/etc/shellrelay/secret"))
        );
        assert_eq!(opt.token_keys.len(), 2);
        assert!(opt
            .token_keys
            .contains(&("issuer".into(), "/etc/shellrelay/issuer.pub".into())));
        // Untouched keys keep their defaults.
        assert_eq!(
            opt.limits.max_sessions_per_host,
            limits::DEFAULT_SESSIONS_PER_HOST
        );

        // Flags win, and a secret given by flag replaces the file's.
        let opt = relay_opt(&[
            "--config",
            file,
            "--max-hosts",
            "9",
            "--secret",
            "a secret given on the command line",
        ])
        .unwrap();
        assert_eq!(opt.limits.max_hosts, 9);
        assert_eq!(opt.secret.secret_file, None);
        assert_eq!(opt.listen, "127.0.0.1:7000".parse().unwrap());
    }

    #[test]
    fn settings_file_errors_name_the_file_the_key_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let file = path.to_str().unwrap().to_owned();
        let err_for = |text: &str| {
            std::fs::write(&path, text).unwrap();
            relay_opt(&["--config", &file]).unwrap_err()
        };
        let err = err_for("max_hosts = 5\n\nmax_hots = 6\n");
        assert!(
            err.contains(&format!("{file}, line 3: unknown key `max_hots`")),
            "{err}"
        );
        let err = err_for("max_hosts = \"many\"\n");
        assert!(err.contains(&file) && err.contains("--max-hosts"), "{err}");
        let err = err_for("max_hosts = = 5\n");
        assert!(err.contains(&file) && err.contains("line 1"), "{err}");
        let err = err_for("listen = { a = 1 }\n");
        assert!(err.contains("`listen` takes a string or a number"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = relay_opt(&["--config", &file]).unwrap_err();
        assert!(err.contains("could not read settings file"), "{err}");
    }
}
