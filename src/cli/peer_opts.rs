//! What hosts, clients and `connect` share: how to reach the relay, with
//! which token, and for `client` and `connect` the config file that fills
//! in what flags leave out.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::{host_id, until_signalled, HumanDuration, TransportOpt};
use crate::peer::{self, RelayAddr};
use crate::pin::Pin;
use crate::tls::{self, Trust};
use crate::token::TokenSource;
use crate::transport::Transport;
use crate::{client, config, host, private};

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
    /// With --transport auto, how often a peer that fell back to TCP tries QUIC again.
    #[arg(long, env = "SHELLRELAY_QUIC_RETRY", default_value_t = HumanDuration(crate::defaults::QUIC_RETRY), value_name = "DURATION")]
    quic_retry: HumanDuration,
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
                if let Err(err) = peer::check_relay_addr(relay) {
                    bail!("--relay {relay} {err}");
                }
                relay.clone()
            }
            (None, Some(relay)) => relay.clone(),
            (None, None) => bail!("{}", wanted("--relay HOST:PORT")),
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
        let relay = RelayAddr {
            addr: relay,
            trust,
            transport,
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
            if let Some(mode) = private::shared_mode(path) {
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
    #[arg(long, env = "SHELLRELAY_TARGET", default_value = crate::defaults::TARGET, value_name = "HOST:PORT")]
    target: String,
    /// Cap on the delay between reconnect attempts.
    #[arg(long, env = "SHELLRELAY_MAX_BACKOFF", default_value_t = HumanDuration(crate::defaults::MAX_BACKOFF), value_name = "DURATION")]
    max_backoff: HumanDuration,
}

/// `shellrelay client`
#[derive(Debug, Args)]
pub struct ClientOpt {
    #[command(flatten)]
    reach: ReachOpt,
    /// Local TCP address that ssh connects to.
    #[arg(long, env = "SHELLRELAY_LISTEN", default_value = crate::defaults::CLIENT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
}

/// `shellrelay connect`
#[derive(Debug, Args)]
pub struct ConnectOpt {
    #[command(flatten)]
    pub(super) reach: ReachOpt,
}

/// Runs the host agent.
pub(super) async fn run_host(opt: HostOpt) -> anyhow::Result<()> {
    let wanted = |flag: &str| format!("pass {flag}");
    let (relay, token) = opt.peer.reach(None, &wanted)?;
    let config = host::HostConfig {
        relay,
        token,
        target: opt.target,
        max_backoff: opt.max_backoff.0,
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
