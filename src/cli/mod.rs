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

pub mod config;
pub mod demo;
pub mod invite;
mod invite_opts;
pub mod manual;
mod peer_opts;
mod relay_file;
mod relay_opts;
mod setting;
mod token_opts;
mod transport_opts;

pub use invite_opts::{InviteOpt, JoinOpt};
pub use peer_opts::{ClientOpt, ConnectOpt, HostOpt, PeerOpt, ReachOpt};
pub use relay_opts::{LimitsOpt, RelayOpt};
pub use token_opts::{KeygenOpt, TokenOpt};
pub use transport_opts::TransportOpt;

use crate::access::keys::Secret;
use crate::net::tls;
use crate::ops::signals::{Signal, Signals};
use crate::ops::tasks::Tasks;
use crate::{client::connect, ops::status, protocol::id};

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
    Relay(Box<RelayOpt>),
    /// Run the host agent next to sshd, behind NAT.
    Host(HostOpt),
    /// Run the client forwarder: `ssh -p2222 localhost` reaches the host.
    Client(ClientOpt),
    /// One session to a host over stdin and stdout, for ssh's ProxyCommand.
    Connect(ConnectOpt),
    /// Print a join string that sets up a host agent or a client in one command.
    Invite(InviteOpt),
    /// Set up this machine to ssh through a relay, from a client invite.
    Join(JoinOpt),
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

/// Value parser for a host id.
fn host_id(s: &str) -> Result<String, id::BadId> {
    id::host_id(s).map(str::to_owned)
}

/// A duration as flags and their variables write it (`30s`, `15m`, `1h`),
/// and as `--help` shows it: a default is written once, as the constant it
/// comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct HumanDuration(Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("{e} (examples: 30s, 15m, 1h)"))
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl PartialEq<Duration> for HumanDuration {
    fn eq(&self, other: &Duration) -> bool {
        self.0 == *other
    }
}

/// Value parser for a host id or pattern.
fn host_pattern(s: &str) -> Result<String, id::BadId> {
    id::host_pattern(s).map(str::to_owned)
}

/// Value parser for a key id.
fn kid(s: &str) -> Result<String, id::BadId> {
    id::kid(s).map(str::to_owned)
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

/// `shellrelay certs`
#[derive(Debug, Args)]
pub struct CertsOpt {
    /// Directory for relay.crt and relay.key.
    #[arg(
        long,
        env = "SHELLRELAY_OUT",
        default_value = crate::ops::defaults::CERT_DIR,
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
    /// Re-issue the existing certificate with this name (DNS name or IP) too, keeping its key and so its pin (repeatable).
    #[arg(
        long = "add-name",
        value_name = "NAME",
        value_delimiter = ',',
        conflicts_with_all = ["force", "names"]
    )]
    add_names: Vec<String>,
}

/// Prints what peers pin a relay by: its key's pin and its certificate's
/// fingerprint.
fn print_identity(identity: &tls::Identity) -> anyhow::Result<()> {
    let pin = crate::net::tls::pin::Pin::of(&identity.chain[0])?;
    println!("pin (for --relay-pin): {pin}");
    println!(
        "sha-256 fingerprint: {}",
        tls::fingerprint(&identity.chain[0])
    );
    Ok(())
}

/// `shellrelay demo`
#[derive(Debug, Args)]
pub struct DemoOpt {
    /// What the demo host agent connects sessions to.
    #[arg(long, env = "SHELLRELAY_TARGET", default_value = crate::ops::defaults::TARGET, value_name = "HOST:PORT")]
    target: String,
    /// Local TCP address that ssh connects to.
    #[arg(long, env = "SHELLRELAY_LISTEN", default_value = crate::ops::defaults::CLIENT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
}

/// `shellrelay status`
#[derive(Debug, Args)]
pub struct StatusOpt {
    /// The relay's metrics endpoint (the address it was given with --metrics).
    #[arg(long, env = "SHELLRELAY_METRICS", default_value = crate::ops::defaults::METRICS, value_name = "HOST:PORT")]
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

/// A token that is cancelled on SIGINT or SIGTERM, by a task in `tasks`.
/// The handlers are in place when this returns, so a signal that arrives
/// right after start-up still ends in a graceful shutdown. Must be called
/// inside the runtime.
pub fn shutdown_signal(tasks: &Tasks) -> anyhow::Result<CancellationToken> {
    let mut signals = Signals::new(&[Signal::Interrupt, Signal::Terminate])
        .context("could not handle SIGINT and SIGTERM")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => return,
            signal = signals.recv() => info!("{signal}: shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}

/// Runs `role` until SIGINT or SIGTERM cancels the token it is given, then
/// stops the signal handler's task.
async fn until_signalled<F, Fut>(role: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let tasks = Tasks::new();
    let shutdown = shutdown_signal(&tasks)?;
    let result = role(shutdown.clone()).await;
    shutdown.cancel();
    tasks.shutdown(crate::ops::defaults::SHUTDOWN_GRACE).await;
    result
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
            Command::Relay(opt) => relay_opts::run(*opt).await,
            Command::Host(opt) => peer_opts::run_host(opt).await,
            Command::Client(opt) => peer_opts::run_client(opt).await,
            Command::Connect(opt) => connect::run(opt.client_config()?).await,
            Command::Invite(opt) => invite_opts::invite(opt),
            Command::Join(opt) => invite_opts::join(opt),
            Command::Token(opt) => token_opts::run(opt),
            Command::Keygen(opt) => token_opts::keygen(opt),
            Command::Certs(opt) => {
                let (cert, key) = (opt.out.join(tls::CERT_FILE), opt.out.join(tls::KEY_FILE));
                if !opt.add_names.is_empty() {
                    let (identity, names) = tls::add_names(&cert, &key, &opt.add_names)?;
                    println!("wrote {} (key {} kept)", cert.display(), key.display());
                    println!("names: {}", names.join(", "));
                    print_identity(&identity)?;
                    println!("restart the relay to serve it; peers' pins stay valid");
                    return Ok(());
                }
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
                print_identity(&identity)
            }
            Command::Demo(opt) => {
                until_signalled(|shutdown| demo::run(&opt.target, opt.listen, shutdown)).await
            }
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
    let mut cmd = Cli::command();
    let matches = cmd.clone().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::Relay(opt), Some(("relay", given))) = (&mut cli.command, matches.subcommand())
    {
        relay_file::merge(opt, given)
            .map_err(|e| cmd.error(clap::error::ErrorKind::InvalidValue, format!("{e:#}")))?;
    }
    Ok(cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
