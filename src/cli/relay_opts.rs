//! `shellrelay relay`: its flags, the settings file that can stand in for
//! them, and starting the relay.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;
use tracing::info;

use super::{shutdown_signal, HumanDuration, SecretOpt, TransportOpt};
use crate::access::token::Verifier;
use crate::ops::defaults::SHUTDOWN_GRACE;
use crate::ops::signals::{Signal, Signals};
use crate::ops::tasks::Tasks;
use crate::{access::keys, net::tls, ops::limits, ops::status, relay};

/// `shellrelay relay`
#[derive(Debug, Args)]
pub struct RelayOpt {
    /// UDP address to listen on.
    #[arg(
        long,
        env = "SHELLRELAY_LISTEN",
        default_value_t = crate::ops::defaults::RELAY_LISTEN,
        value_name = "ADDR"
    )]
    pub(super) listen: SocketAddr,
    /// TCP address for peers whose network blocks UDP (TLS over TCP), or
    /// `off` [default: the UDP address and port].
    #[arg(long, env = "SHELLRELAY_LISTEN_TCP", value_name = "ADDR|off", value_parser = listen_tcp)]
    pub(super) listen_tcp: Option<relay::ListenTcp>,
    /// Settings file (TOML) whose keys are this command's long flags; flags
    /// and SHELLRELAY_* variables override it.
    #[arg(long, env = "SHELLRELAY_RELAY_CONFIG", value_name = "PATH")]
    pub(super) config: Option<PathBuf>,
    /// Key for tokens without a key id (kid): the shared secret.
    #[command(flatten)]
    pub(super) secret: SecretOpt,
    /// Public key for tokens whose header names key id KID (repeatable): an
    /// Ed25519 (EdDSA) or P-256 (ES256) public key in PEM.
    #[arg(long = "token-key", env = "SHELLRELAY_TOKEN_KEY", value_name = "KID=PATH", value_parser = keys::parse_kid_path, value_delimiter = ',')]
    pub(super) token_keys: Vec<(String, PathBuf)>,
    /// Shared secret file (HS256) for tokens whose header names key id KID
    /// (repeatable).
    #[arg(long = "token-secret", env = "SHELLRELAY_TOKEN_SECRET", value_name = "KID=PATH", value_parser = keys::parse_kid_path, value_delimiter = ',')]
    pub(super) token_secrets: Vec<(String, PathBuf)>,
    /// File of revoked token ids and host ids, one `jti ID` or `host ID` a
    /// line; re-read on SIGHUP and when it changes.
    #[arg(long, env = "SHELLRELAY_REVOCATION_FILE", value_name = "PATH")]
    pub(super) revocation_file: Option<PathBuf>,
    /// Append a JSON line for every admission, refusal, session start and
    /// session end to this file; opened again on SIGHUP (rotate by rename).
    #[arg(long, env = "SHELLRELAY_AUDIT_LOG", value_name = "PATH")]
    pub(super) audit_log: Option<PathBuf>,
    /// Certificate (PEM); made self-signed, with the key, when neither exists.
    #[arg(
        long,
        env = "SHELLRELAY_CERT",
        default_value = crate::ops::defaults::CERT,
        value_name = "PATH"
    )]
    pub(super) cert: PathBuf,
    /// Private key (PEM) of the certificate.
    #[arg(
        long,
        env = "SHELLRELAY_KEY",
        default_value = crate::ops::defaults::KEY,
        value_name = "PATH"
    )]
    pub(super) key: PathBuf,
    /// The `aud` that tokens must carry.
    #[arg(long, env = "SHELLRELAY_AUDIENCE", default_value = crate::ops::defaults::AUDIENCE)]
    pub(super) audience: String,
    /// Extra DNS name or IP for a generated certificate (repeatable).
    #[arg(
        long = "name",
        env = "SHELLRELAY_NAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub(super) names: Vec<String>,
    /// Longest a new connection may take to send its hello.
    #[arg(long, env = "SHELLRELAY_HELLO_TIMEOUT", default_value_t = HumanDuration(crate::ops::defaults::HELLO_TIMEOUT), value_name = "DURATION")]
    pub(super) hello_timeout: HumanDuration,
    /// Serve /metrics (Prometheus) and /status (JSON) over HTTP on this TCP address; off by default.
    #[arg(long, env = "SHELLRELAY_METRICS", value_name = "ADDR")]
    pub(super) metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub(super) limits: LimitsOpt,
    #[command(flatten)]
    pub(super) transport: TransportOpt,
}

/// The relay's limits.
#[derive(Debug, Args)]
pub struct LimitsOpt {
    /// Concurrent sessions per client token (its jti, else its subject), over all its connections; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_SESSIONS_PER_CLIENT", default_value_t = crate::ops::defaults::SESSIONS_PER_CLIENT, value_name = "N")]
    pub(super) max_sessions_per_client: usize,
    /// Connections per client token (its jti, else its subject) at once; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_CONNECTIONS_PER_CLIENT", default_value_t = crate::ops::defaults::CONNECTIONS_PER_CLIENT, value_name = "N")]
    pub(super) max_connections_per_client: usize,
    /// Concurrent sessions per host; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_SESSIONS_PER_HOST", default_value_t = crate::ops::defaults::SESSIONS_PER_HOST, value_name = "N")]
    pub(super) max_sessions_per_host: usize,
    /// Connections per IP address still in their handshake or hello; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_HANDSHAKES_PER_ADDR", default_value_t = crate::ops::defaults::HANDSHAKES_PER_ADDR, value_name = "N")]
    pub(super) max_handshakes_per_addr: usize,
    /// Hosts registered at once; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_HOSTS", default_value_t = crate::ops::defaults::MAX_HOSTS, value_name = "N")]
    pub(super) max_hosts: usize,
    /// Refused tokens per IP address per minute before its hellos are refused unread.
    #[arg(long, env = "SHELLRELAY_MAX_FAILURES_PER_ADDR", default_value_t = crate::ops::defaults::FAILURES_PER_ADDR, value_name = "N")]
    pub(super) max_failures_per_addr: u32,
    /// New sessions per second one client token may start, on average (bursts of 256 start at once); streams beyond it wait. 0: no limit.
    #[arg(long, env = "SHELLRELAY_SESSION_RATE_PER_CLIENT", default_value_t = crate::ops::defaults::SESSION_RATE_PER_CLIENT, value_name = "N")]
    pub(super) session_rate_per_client: u32,
    /// New sessions per second towards one host, on average (bursts of 512 at once); sessions beyond it wait up to 5 s, then are refused. 0: no limit.
    #[arg(long, env = "SHELLRELAY_SESSION_RATE_PER_HOST", default_value_t = crate::ops::defaults::SESSION_RATE_PER_HOST, value_name = "N")]
    pub(super) session_rate_per_host: u32,
    /// Payload the relay may hold buffered in all; it admits no more sessions than fit (four stream windows each, see SECURITY.md).
    #[arg(long, env = "SHELLRELAY_MAX_BUFFERED", default_value_t = ByteSize::b(crate::ops::defaults::MAX_BUFFERED), value_name = "BYTES")]
    pub(super) max_buffered: ByteSize,
}

impl LimitsOpt {
    fn limits(&self) -> limits::Limits {
        limits::Limits {
            sessions_per_client: self.max_sessions_per_client,
            connections_per_client: self.max_connections_per_client,
            sessions_per_host: self.max_sessions_per_host,
            handshakes_per_addr: self.max_handshakes_per_addr,
            max_hosts: self.max_hosts,
            failures_per_addr: self.max_failures_per_addr,
            max_buffered: self.max_buffered.as_u64(),
            session_rate_per_client: self.session_rate_per_client,
            session_rate_per_host: self.session_rate_per_host,
        }
    }
}

/// The relay's verification keys from its flags.
fn relay_keys(opt: &RelayOpt) -> anyhow::Result<keys::KeySet> {
    let mut set = keys::KeySet::default();
    if let Some(secret) = opt.secret.load()? {
        set.set_default(keys::VerifyKey::secret(&secret));
    }
    for (kid, path) in &opt.token_keys {
        set.insert(kid, keys::VerifyKey::public_key_file(path)?)?;
    }
    for (kid, path) in &opt.token_secrets {
        set.insert(kid, keys::VerifyKey::secret_file(path)?)?;
    }
    if set.is_empty() {
        bail!(
            "pass --secret-file, --secret, --token-key KID=PATH or --token-secret KID=PATH: the relay needs a key to check tokens"
        );
    }
    Ok(set)
}

pub(super) async fn run(opt: RelayOpt) -> anyhow::Result<()> {
    // First of all: SIGHUP's default action ends the process, and a reload
    // may come while the relay is still starting.
    let hangup = Signals::new(&[Signal::Hangup]).context("could not handle SIGHUP")?;
    let keys = relay_keys(&opt)?;
    if !keys.kids().is_empty() {
        info!(kids = ?keys.kids(), "token keys by key id");
    }
    let names = tls::default_names(&opt.names);
    let (identity, created) = tls::load_or_create(&opt.cert, &opt.key, &names)?;
    let fingerprint = tls::fingerprint(&identity.chain[0]);
    // What peers pin with --relay-pin: it stays while the key does.
    let pin = crate::net::tls::pin::Pin::of(&identity.chain[0])
        .with_context(|| format!("could not read the certificate in {}", opt.cert.display()))?;
    if created {
        info!(cert = %opt.cert.display(), key = %opt.key.display(), names = %names.join(","), %pin, %fingerprint, "made a self-signed certificate");
    } else {
        info!(cert = %opt.cert.display(), %pin, %fingerprint, "loaded certificate");
        warn_missing_names(&opt, &identity);
    }
    let config = relay::RelayConfig {
        verifier: Verifier::with_keys(keys, &opt.audience),
        limits: opt.limits.limits(),
        transport: opt.transport.options()?,
        hello_timeout: opt.hello_timeout.0,
        revocation_file: opt.revocation_file.clone(),
        audit_log: opt.audit_log.clone(),
        // Stateless resets that survive a restart ([`crate::net::transport::quic::keys`]).
        endpoint_keys: crate::net::transport::listen::EndpointKeys::FromIdentity,
        listen_tcp: opt.listen_tcp.unwrap_or_default(),
    };
    let relay = relay::Relay::bind(opt.listen, identity, config)?;
    let metrics = opt.metrics.map(status::bind).transpose()?;
    let tasks = Tasks::new();
    let shutdown = shutdown_signal(&tasks)?;
    tasks.spawn(reload_on_hangup(hangup, relay.handle(), shutdown.clone()));
    if let Some((listener, _)) = metrics {
        let pages = relay.handle().pages();
        tasks.spawn(status::serve(listener, pages, shutdown.clone()));
    }
    let result = relay.run(shutdown.clone()).await;
    shutdown.cancel();
    tasks.shutdown(SHUTDOWN_GRACE).await;
    result
}

/// Warns about every `--name` the loaded certificate is not valid for
/// (the relay makes a certificate for them only when it makes one), and
/// says how to add them without changing the relay's pin.
fn warn_missing_names(opt: &RelayOpt, identity: &tls::Identity) {
    let Ok(has) = tls::cert_names(&identity.chain[0]) else {
        return;
    };
    let missing: Vec<&String> = opt.names.iter().filter(|n| !has.contains(n)).collect();
    if missing.is_empty() {
        return;
    }
    let dir = opt.cert.parent().unwrap_or(std::path::Path::new("."));
    let list: Vec<&str> = missing.iter().map(|n| n.as_str()).collect();
    tracing::warn!(
        "certificate {} is not valid for {}: peers that dial that name and pin the certificate will fail (those with --relay-pin do not); run: shellrelay certs --out {} --add-name {}, then restart the relay (the key and its pin stay)",
        opt.cert.display(),
        list.join(", "),
        dir.display(),
        list.join(",")
    );
}

/// `--listen-tcp`: an address, or `off`.
pub(super) fn listen_tcp(value: &str) -> Result<relay::ListenTcp, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(relay::ListenTcp::Off);
    }
    value
        .parse()
        .map(relay::ListenTcp::At)
        .map_err(|_| format!("expected an address such as 0.0.0.0:4433, or off; got {value:?}"))
}

/// Re-reads the relay's revocation file and opens its audit log again on
/// every SIGHUP.
async fn reload_on_hangup(
    mut hangup: Signals,
    relay: relay::RelayHandle,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = hangup.recv() => {}
        }
        relay.reopen_audit_log();
        match relay.reload_revocations() {
            Ok(n) => info!(entries = n, "SIGHUP: revocation file re-read"),
            Err(err) => tracing::warn!("SIGHUP: {err:#}; the previous list stays in force"),
        }
    }
}
