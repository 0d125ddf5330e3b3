//! The config files: keys, paths, errors with line and column, kinds.

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
            congestion: Some(crate::net::transport::Congestion::Cubic),
            transport: None,
            relay_pin: None,
            target: None,
            fleet: None,
            direct: None,
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
