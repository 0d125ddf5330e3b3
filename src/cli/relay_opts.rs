//! `shellrelay relay`: its flags, the settings file that can stand in for
//! them, and starting the relay.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tracing::info;

use super::{shutdown_signal, HumanDuration, SecretOpt, TransportOpt};
use crate::defaults::SHUTDOWN_GRACE;
use crate::tasks::Tasks;
use crate::token::{self, Verifier};
use crate::{keys, limits, relay, status, tls};

/// `shellrelay relay`
#[derive(Debug, Args)]
pub struct RelayOpt {
    /// UDP address to listen on.
    #[arg(
        long,
        env = "SHELLRELAY_LISTEN",
        default_value_t = crate::defaults::RELAY_LISTEN,
        value_name = "ADDR"
    )]
    listen: SocketAddr,
    /// Settings file (TOML) whose keys are this command's long flags; flags
    /// and SHELLRELAY_* variables override it.
    #[arg(long, env = "SHELLRELAY_RELAY_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Key for tokens without a key id (kid): the shared secret.
    #[command(flatten)]
    secret: SecretOpt,
    /// Public key for tokens whose header names key id KID (repeatable): an
    /// Ed25519 (EdDSA) or P-256 (ES256) public key in PEM.
    #[arg(long = "token-key", env = "SHELLRELAY_TOKEN_KEY", value_name = "KID=PATH", value_parser = keys::parse_kid_path, value_delimiter = ',')]
    token_keys: Vec<(String, PathBuf)>,
    /// Shared secret file (HS256) for tokens whose header names key id KID
    /// (repeatable).
    #[arg(long = "token-secret", env = "SHELLRELAY_TOKEN_SECRET", value_name = "KID=PATH", value_parser = keys::parse_kid_path, value_delimiter = ',')]
    token_secrets: Vec<(String, PathBuf)>,
    /// File of revoked token ids and host ids, one `jti ID` or `host ID` a
    /// line; re-read on SIGHUP and when it changes.
    #[arg(long, env = "SHELLRELAY_REVOCATION_FILE", value_name = "PATH")]
    revocation_file: Option<PathBuf>,
    /// Certificate (PEM); made self-signed, with the key, when neither exists.
    #[arg(
        long,
        env = "SHELLRELAY_CERT",
        default_value = tls::DEFAULT_CERT,
        value_name = "PATH"
    )]
    cert: PathBuf,
    /// Private key (PEM) of the certificate.
    #[arg(
        long,
        env = "SHELLRELAY_KEY",
        default_value = tls::DEFAULT_KEY,
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
    #[arg(long, env = "SHELLRELAY_HELLO_TIMEOUT", default_value_t = HumanDuration(crate::defaults::HELLO_TIMEOUT), value_name = "DURATION")]
    hello_timeout: HumanDuration,
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
    #[arg(long, env = "SHELLRELAY_MAX_SESSIONS_PER_CLIENT", default_value_t = crate::defaults::SESSIONS_PER_CLIENT, value_name = "N")]
    max_sessions_per_client: usize,
    /// Concurrent sessions per host; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_SESSIONS_PER_HOST", default_value_t = crate::defaults::SESSIONS_PER_HOST, value_name = "N")]
    max_sessions_per_host: usize,
    /// Connections per IP address still in their handshake or hello; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_HANDSHAKES_PER_ADDR", default_value_t = crate::defaults::HANDSHAKES_PER_ADDR, value_name = "N")]
    max_handshakes_per_addr: usize,
    /// Hosts registered at once; more are refused.
    #[arg(long, env = "SHELLRELAY_MAX_HOSTS", default_value_t = crate::defaults::MAX_HOSTS, value_name = "N")]
    max_hosts: usize,
    /// Refused tokens per IP address per minute before its hellos are refused unread.
    #[arg(long, env = "SHELLRELAY_MAX_FAILURES_PER_ADDR", default_value_t = crate::defaults::FAILURES_PER_ADDR, value_name = "N")]
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
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("could not handle SIGHUP")?;
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
        hello_timeout: opt.hello_timeout.0,
        revocation_file: opt.revocation_file.clone(),
    };
    let relay = relay::Relay::bind(opt.listen, server, config)?;
    let metrics = opt.metrics.map(status::bind).transpose()?;
    let tasks = Tasks::new();
    let shutdown = shutdown_signal(&tasks)?;
    tasks.spawn(reload_on_hangup(hangup, relay.handle(), shutdown.clone()));
    if let Some((listener, _)) = metrics {
        tasks.spawn(status::serve(listener, relay.handle(), shutdown.clone()));
    }
    let result = relay.run(shutdown.clone()).await;
    shutdown.cancel();
    tasks.shutdown(SHUTDOWN_GRACE).await;
    result
}

/// Re-reads the relay's revocation file on every SIGHUP.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    relay: relay::RelayHandle,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        match relay.reload_revocations() {
            Ok(n) => info!(entries = n, "SIGHUP: revocation file re-read"),
            Err(err) => tracing::warn!("SIGHUP: {err:#}; the previous list stays in force"),
        }
    }
}

/// The flags that the settings file at `path` adds to `relay`'s command
/// line `given`: one per key, except keys whose flag `given` sets already.
pub(super) fn config_args(
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
    if table.contains_key("secret") {
        crate::private::ensure_private(path, "settings file with a secret")?;
    }
    // The secret comes from one place: a flag for either wins over the file.
    let secret_given = set("secret_file") || set("secret");
    let mut out = Vec::new();
    for (key, value) in table {
        let long = match key.as_str() {
            "token_keys" => "token-key".to_owned(),
            "token_secrets" => "token-secret".to_owned(),
            _ => key.replace('_', "-"),
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
            toml::Value::Table(kids) if matches!(key.as_str(), "token_keys" | "token_secrets") => {
                kids.iter()
                    .map(|(kid, p)| scalar(p).map(|p| format!("{kid}={p}")))
                    .collect::<anyhow::Result<_>>()?
            }
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
    use std::time::Duration;

    use super::*;
    use crate::cli::{parse_from, Cli, Command};

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
issuer = "/etc/shellrelay/issuer.pub"
issuer-2 = "/etc/shellrelay/issuer-2.pub"

[token_secrets]
2026-11 = "/etc/shellrelay/hs-2026-11"
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
        assert_eq!(
            opt.token_secrets,
            [("2026-11".into(), "/etc/shellrelay/hs-2026-11".into())]
        );
        assert!(opt
            .token_keys
            .contains(&("issuer".into(), "/etc/shellrelay/issuer.pub".into())));
        // Untouched keys keep their defaults.
        assert_eq!(
            opt.limits.max_sessions_per_host,
            crate::defaults::SESSIONS_PER_HOST
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
        // A secret in the file itself: only in a private file.
        std::fs::write(&path, "secret = \"a secret of sixteen bytes or more\"\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = relay_opt(&["--config", &file]).unwrap_err();
            assert!(err.contains("readable by other users"), "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(relay_opt(&["--config", &file]).is_ok());
        }
        std::fs::remove_file(&path).unwrap();
        let err = relay_opt(&["--config", &file]).unwrap_err();
        assert!(err.contains("could not read settings file"), "{err}");
    }
}
