//! What hosts, clients and `connect` share: how to reach the relay, with
//! which token, and for `client` and `connect` the config file that fills
//! in what flags leave out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use super::{host_id, until_signalled, HumanDuration, TransportOpt};
use crate::access::token::TokenSource;
use crate::cli::invite::{host_invite, Invite};
use crate::net::tls::pin::Pin;
use crate::net::tls::{self, Trust};
use crate::net::transport::dial::{self, RelayAddr};
use crate::net::transport::direct::DirectMode;
use crate::net::transport::Transport;
use crate::{access::private, cli::config, client, host};

/// How hosts and clients reach the relay. The relay and a token are
/// required; `client` and `connect` may take them from the config file.
#[derive(Debug, Args)]
pub struct PeerOpt {
    /// The relay's address. Several relays (repeat, or separate with commas): a host agent registers with each, and the client side takes the first that answers.
    #[arg(
        long,
        env = "SHELLRELAY_RELAY",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    relay: Vec<String>,
    /// The relay's certificate (pinned); without it the system's roots verify the relay.
    #[arg(long, env = "SHELLRELAY_RELAY_CERT", value_name = "PATH")]
    relay_cert: Option<PathBuf>,
    /// The relay's public key (sha256:..., as the relay logs it at start): trusted whatever its certificate's names and dates.
    #[arg(
        long,
        env = "SHELLRELAY_RELAY_PIN",
        value_name = "PIN",
        conflicts_with = "relay_cert"
    )]
    relay_pin: Option<Pin>,
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
    /// How to reach the relay: QUIC over UDP, TLS over TCP, or auto (QUIC,
    /// and TCP too if QUIC has not answered within 300 ms) [default: auto].
    #[arg(
        long = "transport",
        id = "via",
        env = "SHELLRELAY_TRANSPORT",
        value_enum,
        value_name = "TRANSPORT"
    )]
    via: Option<Transport>,
    /// The relay names a fleet: its DNS records (A and AAAA) are the relays, and each host uses this many of them, chosen by rendezvous hashing of the host id; a host agent registers with them, the client side asks them.
    #[arg(long, env = "SHELLRELAY_FLEET", value_name = "K", value_parser = clap::value_parser!(u8).range(1..=16))]
    fleet: Option<u8>,
    /// With --transport auto, how often a peer that fell back to TCP tries QUIC again.
    #[arg(long, env = "SHELLRELAY_QUIC_RETRY", default_value_t = HumanDuration(crate::ops::defaults::QUIC_RETRY), value_name = "DURATION")]
    quic_retry: HumanDuration,
    /// How long a session whose path broke (a relay restarting or dying, a network change, sleep) waits to be resumed, through any relay; 0 makes sessions end with their path.
    #[arg(long, env = "SHELLRELAY_RESUME_WINDOW", default_value_t = HumanDuration(crate::session::resume::RESUME_WINDOW), value_name = "DURATION")]
    resume_window: HumanDuration,
    /// Whether client and host talk directly where the NATs allow (the relay introduces them; sessions start on the relay and move): auto, or off [default: auto].
    #[arg(long, env = "SHELLRELAY_DIRECT", value_name = "MODE")]
    direct: Option<DirectMode>,
}

impl PeerOpt {
    /// `--direct`, else the config file's `direct`, else auto.
    fn direct(&self, file: Option<&config::Loaded>) -> DirectMode {
        (self.direct)
            .or_else(|| file.and_then(|f| f.file.direct))
            .unwrap_or_default()
    }

    /// The relay and the token, from flags (and their environment
    /// variables) first, then from the config file `file`. `wanted` says
    /// where a missing value may be given, for the error.
    fn reach(
        &self,
        file: Option<&config::Loaded>,
        wanted: &dyn Fn(&str) -> String,
    ) -> anyhow::Result<(Vec<RelayAddr>, TokenSource)> {
        self.reach_or(None, file, wanted)
    }

    /// [`PeerOpt::reach`], with the relay, its pin and the token taken from
    /// `invite` (`host --join`) over any flag or variable, which get a
    /// warning. With `--save`, the token is read from the file it was saved
    /// to (`saved`), as later starts will.
    fn reach_or(
        &self,
        invite: Option<(&Invite, Option<&Path>)>,
        file: Option<&config::Loaded>,
        wanted: &dyn Fn(&str) -> String,
    ) -> anyhow::Result<(Vec<RelayAddr>, TokenSource)> {
        if let Some((invite, saved)) = invite {
            let ignored = self.ignored_by_join();
            if !ignored.is_empty() {
                tracing::warn!(
                    "--join gives the relay, its pin and the token: ignoring {}",
                    ignored.join(", ")
                );
            }
            let joined = PeerOpt {
                fleet: self.fleet.or(invite.fleet),
                relay: invite.relays.clone(),
                relay_cert: None,
                relay_pin: Some(invite.pin),
                token_file: saved.map(Path::to_path_buf),
                token: saved.is_none().then(|| invite.token.clone()),
                transport: self.transport.clone(),
                via: self.via,
                quic_retry: self.quic_retry,
                resume_window: self.resume_window,
                direct: self.direct,
            };
            return joined.reach_or(None, None, wanted);
        }
        let keys = file.map(|f| &f.file);
        let from_file = keys.map_or(&[][..], |k| k.relay.as_slice());
        let relays = match (self.relay.as_slice(), from_file) {
            ([], []) => bail!("{}", wanted("--relay HOST:PORT")),
            ([], from_file) => from_file.to_vec(),
            (given, _) => {
                for relay in given {
                    if let Err(err) = dial::check_relay_addr(relay) {
                        bail!("--relay {relay} {err}");
                    }
                }
                given.to_vec()
            }
        };
        // A flag (or its variable) wins over the file, whichever of the
        // two ways of pinning each uses.
        let from_flags = match (&self.relay_pin, &self.relay_cert) {
            (Some(pin), _) => Some(Trust::Key(*pin)),
            (None, Some(path)) => Some(Trust::Pinned(tls::load_certs(path)?)),
            (None, None) => None,
        };
        let from_file = match keys.map(|k| (&k.relay_pin, &k.relay_cert)) {
            Some((Some(pin), _)) => Some(Trust::Key(*pin)),
            Some((None, Some(path))) => Some(Trust::Pinned(tls::load_certs(path)?)),
            _ => None,
        };
        let trust = from_flags.or(from_file).unwrap_or(Trust::System);
        let mut transport = self.transport.options_or(keys.and_then(|k| k.congestion))?;
        transport.via = (self.via)
            .or(keys.and_then(|k| k.transport))
            .unwrap_or_default();
        transport.quic_retry = self.quic_retry.0;
        let relays = (relays.into_iter())
            .map(|addr| RelayAddr {
                addr,
                at: None,
                trust: trust.clone(),
                transport,
            })
            .collect();
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
            if let Some(mode) = private::shared_mode(path) {
                tracing::warn!(
                    "token file {} is readable by other users (mode {mode:o}); run: chmod 600 {}",
                    path.display(),
                    path.display()
                );
            }
        }
        Ok((relays, token))
    }
}

impl PeerOpt {
    /// `--fleet`, else `fleet` in the config file, with how often a host
    /// agent looks at DNS again; checked against the relays given.
    fn fleet(
        &self,
        file: Option<&config::Loaded>,
        relays: &[RelayAddr],
        refresh: std::time::Duration,
    ) -> anyhow::Result<Option<crate::net::fleet::Fleet>> {
        let k = self.fleet.or(file.and_then(|f| f.file.fleet));
        match (k, relays) {
            (None, _) => Ok(None),
            (Some(k), [_]) => Ok(Some(crate::net::fleet::Fleet {
                k: usize::from(k),
                refresh,
            })),
            (Some(_), _) => {
                bail!("--fleet takes one --relay: the name whose DNS records are the relays")
            }
        }
    }

    /// The settings `--join` replaces that were given, as flags or
    /// variables.
    fn ignored_by_join(&self) -> Vec<&'static str> {
        [
            (!self.relay.is_empty(), "--relay (SHELLRELAY_RELAY)"),
            (
                self.relay_cert.is_some(),
                "--relay-cert (SHELLRELAY_RELAY_CERT)",
            ),
            (
                self.relay_pin.is_some(),
                "--relay-pin (SHELLRELAY_RELAY_PIN)",
            ),
            (
                self.token_file.is_some(),
                "--token-file (SHELLRELAY_TOKEN_FILE)",
            ),
            (self.token.is_some(), "--token (SHELLRELAY_TOKEN)"),
        ]
        .into_iter()
        .filter_map(|(given, name)| given.then_some(name))
        .collect()
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

/// Where a missing setting may be given, for errors: `pass FLAG, or set it
/// in FILE` (or how to name a file, if there is no default one).
fn wanted_in(kind: config::Kind, file: Option<&config::Loaded>) -> impl Fn(&str) -> String {
    let place = match (file, config::default_path(kind)) {
        (Some(loaded), _) => format!("set it in {}", loaded.path.display()),
        (None, Some(path)) => format!("set it in {}", path.display()),
        (None, None) => format!("name a config file with --config or ${}", kind.env()),
    };
    move |flag: &str| format!("pass {flag}, or {place}")
}

impl ReachOpt {
    /// The client's configuration: flags and environment variables, then
    /// the config file.
    pub fn client_config(&self) -> anyhow::Result<client::ClientConfig> {
        let file = config::load(config::Kind::Client, self.config.as_deref())?;
        let wanted = wanted_in(config::Kind::Client, file.as_ref());
        let (relays, token) = self.peer.reach(file.as_ref(), &wanted)?;
        let fleet =
            (self.peer).fleet(file.as_ref(), &relays, crate::ops::defaults::FLEET_REFRESH)?;
        let host = (self.host.clone()).or_else(|| file.as_ref().and_then(|f| f.file.host.clone()));
        Ok(client::ClientConfig {
            relays,
            fleet,
            token,
            host,
            resume_window: self.peer.resume_window.0,
            direct: self.peer.direct(file.as_ref()),
        })
    }
}

/// `shellrelay host`
#[derive(Debug, Args)]
pub struct HostOpt {
    #[command(flatten)]
    peer: PeerOpt,
    /// Join string from `shellrelay invite --role host` (the string, @FILE, or - for stdin): the relay, its pin and the token in one.
    #[arg(long, value_name = "STRING")]
    join: Option<String>,
    /// With --join: write the relay, its pin, the token and --target to the config file (mode 0600), so later starts need no arguments.
    #[arg(long, requires = "join")]
    save: bool,
    /// With --save: replace an existing config file and token file.
    #[arg(long, requires = "save")]
    force: bool,
    /// Host agent config file (TOML) for what flags leave out [default:
    /// $XDG_CONFIG_HOME/shellrelay/host.toml or ~/.config/shellrelay/host.toml,
    /// read if it exists]. A file named here must exist, unless --save writes it.
    #[arg(long, env = config::HOST_CONFIG_ENV, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The one address every session is connected to [default: `target` in the config file, else 127.0.0.1:22].
    #[arg(long, env = "SHELLRELAY_TARGET", value_name = "HOST:PORT")]
    target: Option<String>,
    /// With --fleet, how often the host agent resolves the fleet's name again, to follow relays joining and leaving.
    #[arg(long, env = "SHELLRELAY_FLEET_REFRESH", default_value_t = HumanDuration(crate::ops::defaults::FLEET_REFRESH), value_name = "DURATION")]
    fleet_refresh: HumanDuration,
    /// Cap on the delay between reconnect attempts.
    #[arg(long, env = "SHELLRELAY_MAX_BACKOFF", default_value_t = HumanDuration(crate::ops::defaults::MAX_BACKOFF), value_name = "DURATION")]
    max_backoff: HumanDuration,
    /// Most sessions whose path broke that wait for a resume at once, each holding its connection to the target. Past that, a session whose path breaks ends at once.
    #[arg(long, env = "SHELLRELAY_MAX_WAITING", default_value_t = crate::session::resume::parked::MAX_WAITING, value_name = "N", value_parser = clap::value_parser!(usize))]
    max_waiting: usize,
    /// Most of one client token's sessions that wait for a resume at once; past that, its session whose path breaks ends at once. The default stays below sshd's MaxStartups (10 unauthenticated connections), which a token's waiting sessions that never logged in count against.
    #[arg(long, env = "SHELLRELAY_MAX_WAITING_PER_CLIENT", default_value_t = crate::session::resume::parked::MAX_WAITING_PER_CLIENT, value_name = "N", value_parser = clap::value_parser!(usize))]
    max_waiting_per_client: usize,
    /// Serve /metrics (Prometheus: resumes, resumable and waiting sessions, bytes kept for resumes) and /status (JSON) over HTTP on this TCP address; off by default.
    #[arg(long, env = "SHELLRELAY_HOST_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// `shellrelay client`
#[derive(Debug, Args)]
pub struct ClientOpt {
    #[command(flatten)]
    reach: ReachOpt,
    /// Local TCP address that ssh connects to.
    #[arg(long, env = "SHELLRELAY_LISTEN", default_value = crate::ops::defaults::CLIENT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
}

/// `shellrelay connect`
#[derive(Debug, Args)]
pub struct ConnectOpt {
    #[command(flatten)]
    reach: ReachOpt,
    /// Take this suffix off --host: for a `Host *.shellrelay` block in ~/.ssh/config (which `join` prints for a token that reaches every host), where `ssh lab1.shellrelay` passes `--host lab1.shellrelay --host-suffix .shellrelay` and reaches host lab1.
    #[arg(long, value_name = "SUFFIX")]
    host_suffix: Option<String>,
}

impl ConnectOpt {
    /// The client's configuration, with `--host-suffix` taken off `--host`.
    pub(super) fn client_config(&self) -> anyhow::Result<client::ClientConfig> {
        let mut config = self.reach.client_config()?;
        if let Some(suffix) = &self.host_suffix {
            let named = (self.reach.host.as_deref()).context("--host-suffix needs --host")?;
            let id = crate::protocol::id::host_id_before(named, suffix).with_context(|| {
                format!("--host {named} is not a host id followed by {suffix} (--host-suffix)")
            })?;
            config.host = Some(id.to_owned());
        }
        Ok(config)
    }
}

/// Runs the host agent.
pub(super) async fn run_host(opt: HostOpt) -> anyhow::Result<()> {
    let invite = match &opt.join {
        Some(arg) => Some(host_invite(arg)?),
        None => None,
    };
    let mut saved = None;
    if let (true, Some(invite)) = (opt.save, &invite) {
        let path = match &opt.config {
            Some(path) => path.clone(),
            None => config::default_path(config::Kind::Host).with_context(|| {
                format!(
                    "no config directory: HOME is not set; name the file with --config or ${}",
                    config::HOST_CONFIG_ENV
                )
            })?,
        };
        let token = invite.save(&path, opt.target.as_deref(), opt.force)?;
        tracing::info!(
            "saved {} and {}: from now on, `shellrelay host` needs no arguments{}",
            path.display(),
            token.display(),
            match &opt.config {
                Some(_) => format!(" but --config {}", path.display()),
                None => String::new(),
            }
        );
        saved = Some(token);
    }
    // With --join, the string is the configuration: no file is read.
    let file = match &invite {
        Some(_) => None,
        None => config::load(config::Kind::Host, opt.config.as_deref())?,
    };
    let wanted = wanted_in(config::Kind::Host, file.as_ref());
    let wanted = |flag: &str| {
        format!(
            "{} (or run `shellrelay host --join` with an invite)",
            wanted(flag)
        )
    };
    let joined = invite.as_ref().map(|i| (i, saved.as_deref()));
    let (relays, token) = opt.peer.reach_or(joined, file.as_ref(), &wanted)?;
    let refresh = opt.fleet_refresh.0;
    let fleet = match (opt.peer.fleet(file.as_ref(), &relays, refresh)?, &invite) {
        (None, Some(invite)) => invite.fleet.map(|k| crate::net::fleet::Fleet {
            k: usize::from(k),
            refresh,
        }),
        (fleet, _) => fleet,
    };
    let direct = opt.peer.direct(file.as_ref());
    let target = (opt.target)
        .or_else(|| file.and_then(|f| f.file.target))
        .unwrap_or_else(|| crate::ops::defaults::TARGET.to_owned());
    let config = host::HostConfig {
        relays,
        fleet,
        token,
        target,
        max_backoff: opt.max_backoff.0,
        resume_window: opt.peer.resume_window.0,
        max_waiting: crate::session::resume::parked::WaitingLimits {
            all: opt.max_waiting,
            per_client: opt.max_waiting_per_client,
        },
        metrics: opt.metrics,
        direct,
    };
    until_signalled(|shutdown| host::run(config, shutdown)).await
}

/// Runs the client forwarder.
pub(super) async fn run_client(opt: ClientOpt) -> anyhow::Result<()> {
    let config = opt.reach.client_config()?;
    let listener = tokio::net::TcpListener::bind(opt.listen)
        .await
        .with_context(|| format!("could not listen on {}", opt.listen))?;
    until_signalled(|shutdown| client::run(config, listener, shutdown)).await
}
