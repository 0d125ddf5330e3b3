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

use crate::net::transport::dial;
use crate::protocol::id;

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
    pub relay_pin: Option<crate::net::tls::pin::Pin>,
    /// File holding the client token (`--token-file`); paths as for
    /// `relay_cert`.
    pub token_file: Option<PathBuf>,
    /// Host to reach when `--host` is not given (default: the host the
    /// token names).
    pub host: Option<String>,
    /// Congestion controller (`--congestion`).
    pub congestion: Option<crate::net::transport::Congestion>,
    /// `auto`, `quic` or `tcp` (`--transport`).
    pub transport: Option<crate::net::transport::Transport>,
    /// The relay names a fleet of this many relays per host (`--fleet`).
    pub fleet: Option<u8>,
    /// Host agent only: the address sessions are connected to (`--target`).
    pub target: Option<String>,
    /// `auto` or `off` (`--direct`).
    pub direct: Option<crate::net::transport::direct::DirectMode>,
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
        if let Err(err) = dial::check_relay_addr(relay) {
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
mod tests;
