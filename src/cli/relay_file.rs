//! The relay's settings file (`relay --config`): TOML whose keys are the
//! relay's long flags, read into a typed struct and merged under the flags
//! and their SHELLRELAY_* variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use serde::Deserialize;

use super::setting::{kid_paths, scalar, scalars};
use super::{HumanDuration, RelayOpt, SecretOpt};
use crate::{access::private, cli::config};

/// The keys of a relay settings file: the long flags of `shellrelay relay`,
/// written with `_` or `-`, before any `[table]`; `[token_keys]` and
/// `[token_secrets]` map key ids to files. Every key is optional. Unknown
/// keys are errors, so that a misspelt key is not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RelayFile {
    #[serde(default, deserialize_with = "scalar")]
    pub listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "scalar")]
    pub listen_tcp: Option<String>,
    #[serde(default, deserialize_with = "scalar")]
    pub secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "scalar")]
    pub secret: Option<String>,
    #[serde(default, deserialize_with = "kid_paths")]
    pub token_keys: Option<Vec<(String, PathBuf)>>,
    #[serde(default, deserialize_with = "kid_paths")]
    pub token_secrets: Option<Vec<(String, PathBuf)>>,
    #[serde(default, deserialize_with = "scalar")]
    pub revocation_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "scalar")]
    pub audit_log: Option<PathBuf>,
    #[serde(default, deserialize_with = "scalar")]
    pub cert: Option<PathBuf>,
    #[serde(default, deserialize_with = "scalar")]
    pub key: Option<PathBuf>,
    #[serde(default, deserialize_with = "scalar")]
    pub audience: Option<String>,
    #[serde(default, deserialize_with = "scalars")]
    pub name: Option<Vec<String>>,
    #[serde(default, deserialize_with = "scalar")]
    pub hello_timeout: Option<HumanDuration>,
    #[serde(default, deserialize_with = "scalar")]
    pub metrics: Option<SocketAddr>,
    #[serde(default, deserialize_with = "scalar")]
    pub max_sessions_per_client: Option<usize>,
    #[serde(default, deserialize_with = "scalar")]
    pub max_connections_per_client: Option<usize>,
    #[serde(default, deserialize_with = "scalar")]
    pub max_sessions_per_host: Option<usize>,
    #[serde(default, deserialize_with = "scalar")]
    pub max_handshakes_per_addr: Option<usize>,
    #[serde(default, deserialize_with = "scalar")]
    pub max_hosts: Option<usize>,
    #[serde(default, deserialize_with = "scalar")]
    pub max_failures_per_addr: Option<u32>,
    #[serde(default, deserialize_with = "scalar")]
    pub max_buffered: Option<bytesize::ByteSize>,
    #[serde(default, deserialize_with = "scalar")]
    pub session_rate_per_client: Option<u32>,
    #[serde(default, deserialize_with = "scalar")]
    pub session_rate_per_host: Option<u32>,
    #[serde(default, deserialize_with = "scalar")]
    pub keep_alive: Option<HumanDuration>,
    #[serde(default, deserialize_with = "scalar")]
    pub idle_timeout: Option<HumanDuration>,
    #[serde(default, deserialize_with = "scalar")]
    pub stream_window: Option<bytesize::ByteSize>,
    #[serde(default)]
    pub congestion: Option<crate::net::transport::Congestion>,
}

/// Reads the settings file at `path`.
pub(super) fn load(path: &Path) -> anyhow::Result<RelayFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read settings file {}", path.display()))?;
    config::parse_toml_keys("settings file", path, &text, spell)
}

/// The one spelling of a key: `_` for `-`, and the tables of the
/// repeatable `--token-key` and `--token-secret` in the plural.
fn spell(key: &str) -> String {
    match key.replace('-', "_").as_str() {
        "token_key" => "token_keys".to_owned(),
        "token_secret" => "token_secrets".to_owned(),
        spelt => spelt.to_owned(),
    }
}

/// Fills what neither flags nor SHELLRELAY_* variables set in `opt` (`given`
/// says which did) from the settings file named by `--config`, if any.
pub(super) fn merge(opt: &mut RelayOpt, given: &clap::ArgMatches) -> anyhow::Result<()> {
    let Some(path) = opt.config.clone() else {
        return Ok(());
    };
    let file = load(&path)?;
    if file.secret.is_some() {
        private::ensure_private(&path, "settings file with a secret")?;
    }
    let set = |id: &str| {
        matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    // The secret comes from one place: a flag for either wins over the file.
    if !set("secret_file") && !set("secret") {
        match (file.secret_file, file.secret) {
            (Some(_), Some(_)) => bail!(
                "settings file {}: set secret_file or secret, not both",
                path.display()
            ),
            (None, None) => {}
            (secret_file, secret) => {
                opt.secret = SecretOpt {
                    secret_file,
                    secret,
                }
            }
        }
    }
    // Each setting: the file's value, unless the flag or variable of the
    // field (its clap id) was given.
    macro_rules! fill {
        ($($owner:expr => $field:ident = $value:expr;)*) => {$(
            if let (Some(value), false) = ($value, set(stringify!($field))) {
                $owner.$field = value;
            }
        )*};
    }
    fill! {
        opt => listen = file.listen;
        opt => listen_tcp = file
            .listen_tcp
            .map(|v| super::relay_opts::listen_tcp(&v).map_err(|e| anyhow::anyhow!("`listen_tcp`: {e}")))
            .transpose()?
            .map(Some);
        opt => token_keys = file.token_keys;
        opt => token_secrets = file.token_secrets;
        opt => revocation_file = file.revocation_file.map(Some);
        opt => audit_log = file.audit_log.map(Some);
        opt => cert = file.cert;
        opt => key = file.key;
        opt => audience = file.audience;
        opt => names = file.name;
        opt => hello_timeout = file.hello_timeout;
        opt => metrics = file.metrics.map(Some);
        opt.limits => max_sessions_per_client = file.max_sessions_per_client;
        opt.limits => max_connections_per_client = file.max_connections_per_client;
        opt.limits => max_sessions_per_host = file.max_sessions_per_host;
        opt.limits => max_handshakes_per_addr = file.max_handshakes_per_addr;
        opt.limits => max_hosts = file.max_hosts;
        opt.limits => max_failures_per_addr = file.max_failures_per_addr;
        opt.transport => keep_alive = file.keep_alive;
        opt.limits => max_buffered = file.max_buffered;
        opt.limits => session_rate_per_client = file.session_rate_per_client;
        opt.limits => session_rate_per_host = file.session_rate_per_host;
        opt.transport => idle_timeout = file.idle_timeout;
        opt.transport => stream_window = file.stream_window;
        opt.transport => congestion = file.congestion.map(Some);
    }
    Ok(())
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
            }) => Ok(*opt),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn every_long_flag_is_a_key() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let relay = cli.find_subcommand("relay").unwrap();
        for long in relay.get_arguments().filter_map(|a| a.get_long()) {
            if matches!(long, "config" | "help") {
                continue;
            }
            // A list is the wrong type for most keys, but never unknown.
            let text = format!("{long} = []\n");
            let parsed = config::parse_toml_keys::<RelayFile>("f", Path::new("f"), &text, spell);
            let err = parsed.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!err.contains("unknown field"), "--{long}: {err}");
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
stream_window = "1MiB"
max_buffered = "2GiB"
congestion = "newreno"
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
        let transport = opt.transport.options().unwrap();
        assert_eq!(transport.stream_window, 1 << 20);
        assert_eq!(
            transport.congestion,
            crate::net::transport::Congestion::NewReno
        );
        assert_eq!(opt.limits.max_buffered.as_u64(), 2 << 30);
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
            crate::ops::defaults::SESSIONS_PER_HOST
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
    fn settings_file_keys_take_either_spelling_once_and_values_parse_as_flags_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let file = path.to_str().unwrap().to_owned();
        let opt_for = |text: &str| {
            std::fs::write(&path, text).unwrap();
            relay_opt(&["--config", &file])
        };
        let opt = opt_for(
            "max-hosts = \"7\"\nname = \"relay.example.com\"\nkeep-alive = \"2s\"\n\n[token-key]\nissuer = \"/k\"\n",
        )
        .unwrap();
        assert_eq!(opt.limits.max_hosts, 7);
        assert_eq!(opt.names, ["relay.example.com"]);
        assert_eq!(opt.transport.keep_alive, Duration::from_secs(2));
        assert_eq!(opt.token_keys, [("issuer".into(), "/k".into())]);

        let err = opt_for("max-hosts = 5\nmax_hosts = 6\n").unwrap_err();
        assert!(
            err.contains("line 2, column 1: `max_hosts`: set twice"),
            "{err}"
        );
        let err = opt_for("hello_timeout = 3\n").unwrap_err();
        assert!(err.contains("(examples: 30s, 15m, 1h)"), "{err}");
        let err = opt_for("[token_secrets]\n\"a b\" = \"/k\"\nok = \"\"\n").unwrap_err();
        assert!(err.contains("line 2, column 1"), "{err}");
        assert!(err.contains("\"a b\" is not a key id"), "{err}");
        let err = opt_for("[token_secrets]\nok = \"\"\n").unwrap_err();
        assert!(
            err.contains("line 2, column 6: `token_secrets.ok`"),
            "{err}"
        );
        std::fs::write(
            &path,
            "secret_file = \"/s\"\nsecret = \"0123456789abcdef\"\n",
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = relay_opt(&["--config", &file]).unwrap_err();
        assert!(err.contains("set secret_file or secret, not both"), "{err}");
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
            err.contains(&format!(
                "settings file {file}: line 3, column 1: unknown field `max_hots`"
            )),
            "{err}"
        );
        let err = err_for("max_hosts = \"many\"\n");
        assert!(
            err.contains(&file) && err.contains("line 1, column 13: `max_hosts`: invalid value"),
            "{err}"
        );
        let err = err_for("max_hosts = = 5\n");
        assert!(err.contains(&file) && err.contains("line 1"), "{err}");
        let err = err_for("listen = { a = 1 }\n");
        assert!(
            err.contains("`listen`: invalid type: map, expected a string or a number"),
            "{err}"
        );
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
