//! The config files (TOML) that peers read for what flags and environment
//! variables leave out: `client.toml` for `client` and `connect` (the
//! relay, how it is trusted, the token file and a default host), and
//! `host.toml` for the host agent (the same, with its target). `join` and
//! `host --join --save` write them.

use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_path_to_error::Segment;
use toml::de::DeTable;
use toml::Spanned;

use crate::{id, peer};

/// Environment variable naming the client config file (as `--config`
/// does); a file named there must exist.
pub const CONFIG_ENV: &str = "SHELLRELAY_CONFIG";

/// Environment variable naming the host agent's config file.
pub const HOST_CONFIG_ENV: &str = "SHELLRELAY_HOST_CONFIG";

/// Largest config file read: a handful of keys fit many times over, and a
/// path named by mistake (a log, a disk image) fails fast.
const MAX_CONFIG_LEN: u64 = 64 * 1024;

/// Which peer a config file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `client` and `connect`: `client.toml`.
    Client,
    /// The host agent: `host.toml`.
    Host,
}

impl Kind {
    /// The file's name in the config directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::Client => "client.toml",
            Kind::Host => "host.toml",
        }
    }

    /// The environment variable that names the file, as `--config` does.
    pub fn env(self) -> &'static str {
        match self {
            Kind::Client => CONFIG_ENV,
            Kind::Host => HOST_CONFIG_ENV,
        }
    }
}

/// The keys of a peer's config file. Every key is optional; a flag or its
/// environment variable overrides the key. Unknown keys are errors, so that
/// a misspelt key is not silently ignored; `host` is a client key and
/// `target` a host agent's.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// The relay's `HOST:PORT` (`--relay`), or a list of several relays'.
    #[serde(default, deserialize_with = "one_or_many")]
    pub relay: Vec<String>,
    /// The relay's certificate, pinned (`--relay-cert`). Relative paths are
    /// taken from the config file's directory; `~/` is the home directory.
    pub relay_cert: Option<PathBuf>,
    /// The relay's public key (`--relay-pin`), instead of `relay_cert`.
    pub relay_pin: Option<crate::pin::Pin>,
    /// File holding the client token (`--token-file`); paths as for
    /// `relay_cert`.
    pub token_file: Option<PathBuf>,
    /// Host to reach when `--host` is not given (default: the host the
    /// token names).
    pub host: Option<String>,
    /// Congestion controller (`--congestion`).
    pub congestion: Option<crate::tls::Congestion>,
    /// `auto`, `quic` or `tcp` (`--transport`).
    pub transport: Option<crate::transport::Transport>,
    /// The relay names a fleet of this many relays per host (`--fleet`).
    pub fleet: Option<u8>,
    /// Host agent only: the address sessions are connected to (`--target`).
    pub target: Option<String>,
}

/// A config file as read from disk, its paths made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Where it was read from.
    pub path: PathBuf,
    /// What it says.
    pub file: PeerFile,
}

/// Where a `kind` config file is looked for when none is named:
/// `$XDG_CONFIG_HOME/shellrelay/client.toml` (or `host.toml`), else
/// `~/.config/shellrelay/client.toml`.
pub fn default_path(kind: Kind) -> Option<PathBuf> {
    default_path_from(
        kind,
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`default_path`] for the given `XDG_CONFIG_HOME` and `HOME`. A relative
/// or empty `XDG_CONFIG_HOME` is ignored, as the XDG spec asks.
pub fn default_path_from(
    kind: Kind,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let base = match xdg.map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(dir) => dir,
        None => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(base.join("shellrelay").join(kind.file_name()))
}

/// Reads a `kind` config file. A file named by `--config` or its variable
/// (`explicit`) must exist; the default file may be missing, which gives
/// `None`.
pub fn load(kind: Kind, explicit: Option<&Path>) -> anyhow::Result<Option<Loaded>> {
    let (path, required) = match explicit {
        Some(path) => (path.to_owned(), true),
        None => match default_path(kind) {
            Some(path) => (path, false),
            None => return Ok(None),
        },
    };
    match std::fs::metadata(&path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(err) => {
            return Err(err)
                .with_context(|| format!("could not read config file {}", path.display()))
        }
        Ok(meta) if meta.len() > MAX_CONFIG_LEN => bail!(
            "config file {} is {} bytes; a config file is at most {MAX_CONFIG_LEN}",
            path.display(),
            meta.len()
        ),
        Ok(_) => {}
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("could not read config file {}", path.display()))?;
    let file = parse(kind, &path, &text)?;
    Ok(Some(Loaded { path, file }))
}

/// Parses the text of `kind` config file `path`: checks its values and
/// makes its paths absolute. Errors name the file, and the line and column
/// where TOML reports them.
pub fn parse(kind: Kind, path: &Path, text: &str) -> anyhow::Result<PeerFile> {
    let mut file: PeerFile = parse_toml("config file", path, text)?;
    match (kind, &file.host, &file.target) {
        (Kind::Host, Some(_), _) => bail!(
            "config file {}: `host` is a client key; a host agent's id comes from its token",
            path.display()
        ),
        (Kind::Client, _, Some(_)) => bail!(
            "config file {}: `target` is a host agent key (host.toml), not a client's",
            path.display()
        ),
        _ => {}
    }
    if let Some(k) = file.fleet.filter(|k| !(1..=16).contains(k)) {
        bail!(
            "config file {}: fleet = {k}: a fleet uses 1 to 16 relays per host",
            path.display()
        );
    }
    for relay in &file.relay {
        if let Err(err) = peer::check_relay_addr(relay) {
            bail!("config file {}: relay = {relay:?} {err}", path.display());
        }
    }
    if let Some(host) = &file.host {
        if let Err(err) = id::host_id(host) {
            bail!("config file {}: host = {host:?} is {err}", path.display());
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for p in [&mut file.relay_cert, &mut file.token_file]
        .into_iter()
        .flatten()
    {
        *p = resolve(dir, home.as_deref(), p);
    }
    Ok(file)
}

/// Deserializes `text`, the TOML of `path` (a `what`, for messages), into
/// `T`. Errors are one line that names the file, the line and column where
/// TOML reports them, and the key whose value is wrong:
/// `config file /etc/c.toml: line 2, column 9: `relay`: invalid type: …`.
pub fn parse_toml<T: DeserializeOwned>(what: &str, path: &Path, text: &str) -> anyhow::Result<T> {
    parse_toml_keys(what, path, text, str::to_owned)
}

/// [`parse_toml`] with each top-level key first spelt as `spell` spells it,
/// for files that accept several spellings of a key. Two spellings of one
/// key in a file are an error.
pub fn parse_toml_keys<T: DeserializeOwned>(
    what: &str,
    path: &Path,
    text: &str,
    spell: impl Fn(&str) -> String,
) -> anyhow::Result<T> {
    // One line each: toml's own Display spans several with a snippet.
    let fail = |key: Option<&str>, message: &str, span: Option<Range<usize>>| {
        let mut place = format!("{what} {}", path.display());
        if let Some(span) = span {
            let (line, column) = line_column(text, span.start);
            place = format!("{place}: line {line}, column {column}");
        }
        if let Some(key) = key {
            place = format!("{place}: `{key}`");
        }
        anyhow::anyhow!("{place}: {}", message.trim().replace('\n', " "))
    };
    let document = DeTable::parse(text).map_err(|err| fail(None, err.message(), err.span()))?;
    let span = document.span();
    let mut table = DeTable::new();
    for (key, value) in document.into_inner() {
        let spelt = spell(key.get_ref());
        if table.contains_key(spelt.as_str()) {
            return Err(fail(Some(&spelt), "set twice", Some(key.span())));
        }
        table.insert(Spanned::new(key.span(), spelt.into()), value);
    }
    let document = toml::de::Deserializer::from(Spanned::new(span, table));
    serde_path_to_error::deserialize(document).map_err(|err| {
        let inner = err.inner();
        // The key whose value is wrong; an unknown key's message names it
        // already.
        let key = match err.path().iter().next_back() {
            Some(Segment::Map { key }) if !inner.message().contains(&format!("`{key}`")) => {
                Some(err.path().to_string())
            }
            _ => None,
        };
        fail(key.as_deref(), inner.message(), inner.span())
    })
}

/// A string, or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut all = Vec::new();
            while let Some(one) = seq.next_element()? {
                all.push(one);
            }
            Ok(all)
        }
    }
    d.deserialize_any(Visitor)
}

/// `path` from a config file in `dir`: `~/` is `home`; a relative path is
/// relative to `dir`.
fn resolve(dir: &Path, home: Option<&Path>, path: &Path) -> PathBuf {
    if let (Ok(rest), Some(home)) = (path.strip_prefix("~"), home) {
        return home.join(rest);
    }
    dir.join(path)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(text: &str) -> String {
        format!(
            "{:#}",
            parse(Kind::Client, Path::new("/etc/x/client.toml"), text).unwrap_err()
        )
    }

    #[test]
    fn every_key_is_read_and_paths_are_taken_from_the_files_directory() {
        let text = "# the lab relay\n\
                    relay = \"relay.example.org:4433\"\n\
                    relay_cert = \"relay.crt\"\n\
                    token_file = \"/secure/client.token\"\n\
                    host = \"lab-1\"\n\
                    congestion = \"cubic\"\n";
        let file = parse(Kind::Client, Path::new("/etc/shellrelay/client.toml"), text).unwrap();
        assert_eq!(
            file,
            PeerFile {
                relay: vec!["relay.example.org:4433".into()],
                relay_cert: Some("/etc/shellrelay/relay.crt".into()),
                token_file: Some("/secure/client.token".into()),
                host: Some("lab-1".into()),
                congestion: Some(crate::tls::Congestion::Cubic),
                transport: None,
                relay_pin: None,
                target: None,
                fleet: None,
            }
        );
        assert_eq!(
            parse(Kind::Client, Path::new("/x/c.toml"), "").unwrap(),
            PeerFile::default()
        );
        let host = parse(
            Kind::Host,
            Path::new("/x/host.toml"),
            "target = \"10.0.0.5:22\"\n",
        );
        assert_eq!(host.unwrap().target.as_deref(), Some("10.0.0.5:22"));
    }

    #[test]
    fn a_tilde_path_is_in_the_home_directory() {
        let home = Path::new("/home/ann");
        assert_eq!(
            resolve(Path::new("/etc"), Some(home), Path::new("~/.shellrelay/t")),
            Path::new("/home/ann/.shellrelay/t")
        );
        assert_eq!(
            resolve(Path::new("/etc"), Some(home), Path::new("t")),
            Path::new("/etc/t")
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line_and_column() {
        let err = err_of("relay = \"r:1\"\n\n  colour = \"blue\"\n");
        assert!(err.contains("/etc/x/client.toml"), "{err}");
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line 3, column 3"), "{err}");
        assert!(err.contains("token_file"), "lists the known keys: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn syntax_and_type_errors_name_the_file_and_line() {
        for (text, line) in [
            ("relay = \"r:1\"\nhost = \n", "line 2"),
            ("relay = 4433\n", "line 1"),
            ("relay = \"r:1\"\nrelay = \"s:2\"\n", "line 2"),
        ] {
            let err = err_of(text);
            assert!(err.contains("/etc/x/client.toml"), "{text:?}: {err}");
            assert!(err.contains(line), "{text:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{text:?}: {err}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_key() {
        let err = err_of("host = \"lab1\"\nrelay = 4433\n");
        assert!(
            err.contains("client.toml: line 2, column 9: `relay`: invalid type: integer"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_refused_by_key() {
        let err = err_of("relay = \"relay.example.org\"\n");
        assert!(
            err.contains("relay = \"relay.example.org\" needs a port"),
            "{err}"
        );
        let err = err_of("host = \"no spaces\"\n");
        assert!(
            err.contains("host = \"no spaces\" is not a host id"),
            "{err}"
        );
    }

    #[test]
    fn the_default_path_follows_xdg_then_home() {
        let p = |x: Option<&str>, h: Option<&str>| {
            default_path_from(Kind::Client, x.map(Into::into), h.map(Into::into))
        };
        assert_eq!(
            p(Some("/xdg"), Some("/home/ann")),
            Some("/xdg/shellrelay/client.toml".into())
        );
        for xdg in [None, Some(""), Some("relative")] {
            assert_eq!(
                p(xdg, Some("/home/ann")),
                Some("/home/ann/.config/shellrelay/client.toml".into()),
                "XDG_CONFIG_HOME={xdg:?}"
            );
        }
        assert_eq!(p(None, None), None);
        assert_eq!(
            default_path_from(Kind::Host, Some("/xdg".into()), None),
            Some("/xdg/shellrelay/host.toml".into())
        );
    }

    #[test]
    fn each_kind_refuses_the_others_key() {
        let err = err_of("target = \"127.0.0.1:22\"\n");
        assert!(err.contains("`target` is a host agent key"), "{err}");
        let err = parse(Kind::Host, Path::new("/x/host.toml"), "host = \"lab1\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("`host` is a client key"),
            "{err:#}"
        );
    }

    #[test]
    fn a_named_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = format!("{:#}", load(Kind::Client, Some(&missing)).unwrap_err());
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("No such file"), "{err}");
        let named = dir.path().join("client.toml");
        std::fs::write(&named, "host = \"lab1\"\n").unwrap();
        let loaded = load(Kind::Client, Some(&named)).unwrap().unwrap();
        assert_eq!(loaded.path, named);
        assert_eq!(loaded.file.host.as_deref(), Some("lab1"));
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("ab\ncé d", 0), (1, 1));
        assert_eq!(line_column("ab\ncé d", 3), (2, 1));
        assert_eq!(line_column("ab\ncé d", 7), (2, 4));
    }
}
