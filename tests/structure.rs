//! The source tree's shape, checked: the crate's top-level modules on
//! floors (the wire protocol at the bottom, the roles side by side, the
//! command line at the top), no import cycle between any two files; quinn and h2 named only in the
//! transport; the three roles side by side, never importing one another;
//! and no source file over about 400 lines unless its `//!` says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines a source file may have before its `//!` must say why it is long.
const LONG_FILE: usize = 450;

/// What a long file's `//!` says, followed by the reason.
const LONG_MARK: &str = "//! Over 400 lines:";

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src` belongs to (`relay/conn.rs` →
/// `relay`), or `None` for the crate root and the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The code of `text` without comments, doc comments and the unit tests.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`, including those
/// in grouped imports (`use crate::{a, b::c}`).
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the group's top-level items name modules.
            let (mut depth, mut item_start) = (0usize, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() && name != "self" {
                            found.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

fn read_sources() -> (PathBuf, Vec<(PathBuf, String)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let texts = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("read source");
            (f, text)
        })
        .collect();
    (src, texts)
}

#[test]
fn modules_import_each_other_without_cycles() {
    let (src, files) = read_sources();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let deps = graph.entry(module.clone()).or_default();
        let rel = rel(&src, file);
        deps.extend(tops(&code(text), &rel).into_iter().filter(|m| *m != module));
    }
    assert_eq!(find_cycle(&graph), None, "an import cycle");
    // The floors, from the bottom: each module imports only from floors
    // below its own (the wire protocol imports nothing of the crate).
    let floor = |module: &str| {
        FLOORS
            .iter()
            .position(|f| f.contains(&module))
            .unwrap_or_else(|| panic!("{module} is on no floor: add it to FLOORS"))
    };
    for (module, deps) in &graph {
        for dep in deps {
            assert!(
                floor(dep) < floor(module),
                "{module} imports {dep}, which is not below it"
            );
        }
    }
}

/// The crate's top-level modules, a floor each, from the bottom up.
const FLOORS: [&[&str]; 7] = [
    &["protocol"],
    &["ops"],
    &["access"],
    &["net"],
    &["session"],
    &["client", "host", "relay"],
    &["cli"],
];

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry((*a).into()).or_default().insert((*b).into());
            g.entry((*b).into()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&graph(&[("a", "b"), ("b", "c")])), None);
    let cycle = find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert_eq!(
        uses("use crate::{a::{X, y}, b};\nlet x = crate::c::f();"),
        ["a", "b", "c"].map(String::from).into()
    );
    assert_eq!(code("use crate::x;\n// crate::y\n"), "use crate::x;");
}

#[test]
fn long_files_say_why_they_are_long() {
    let (_, files) = read_sources();
    let long: Vec<String> = files
        .iter()
        .filter(|(_, text)| text.lines().count() > LONG_FILE && !text.contains(LONG_MARK))
        .map(|(file, text)| format!("{} ({} lines)", file.display(), text.lines().count()))
        .collect();
    assert!(
        long.is_empty(),
        "files over {LONG_FILE} lines without a `{LONG_MARK}` reason: {long:?}"
    );
}

/// The folder, under `src`, of the transport: the only one that may name
/// quinn or h2.
const TRANSPORT: &str = "net/transport";

/// The roles, as folders under `src` (with their `<role>.rs` if any).
const ROLES: [&str; 3] = ["client", "host", "relay"];

/// The path of `file` under `src`, with `/` between its parts.
fn rel(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Where `code` names one of `crates` (`quinn::`, `h2::`…) as a path.
fn names_crate(code: &str, krate: &str) -> bool {
    let pattern = format!("{krate}::");
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(&pattern).any(|(at, _)| {
        let before = &code[..at];
        match before.strip_suffix("::") {
            // `::h2::` is the crate; `x::h2::` is a module of `x`.
            Some(path) => !path.chars().next_back().is_some_and(ident),
            None => !before.chars().next_back().is_some_and(ident),
        }
    })
}

/// Files outside the transport that name quinn or h2 in their code.
fn transport_leaks(files: &[(String, String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(rel, _)| !rel.starts_with(&format!("{TRANSPORT}/")))
        .filter(|(_, text)| {
            let code = code(text);
            ["quinn", "quinn_proto", "h2"]
                .iter()
                .any(|k| names_crate(&code, k))
        })
        .map(|(rel, _)| rel.clone())
        .collect()
}

/// The role a file belongs to, if any.
fn role_of(rel: &str) -> Option<&'static str> {
    ROLES
        .into_iter()
        .find(|r| rel == format!("{r}.rs") || rel.starts_with(&format!("{r}/")))
}

/// `(file, role)` for each file that names a role it may not: a role
/// names no other role, and below the command line (`cli/`, which starts
/// them) nothing names a role at all.
fn roles_crossed(files: &[(String, String)]) -> Vec<(String, String)> {
    let mut crossed = Vec::new();
    for (rel, text) in files {
        if rel.starts_with("cli/") || rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let own = role_of(rel);
        for other in tops(&code(text), rel) {
            if ROLES.contains(&other.as_str()) && own != Some(other.as_str()) {
                crossed.push((rel.clone(), other));
            }
        }
    }
    crossed
}

#[test]
fn quinn_and_h2_are_named_only_in_the_transport() {
    let (src, files) = read_sources();
    let files: Vec<(String, String)> = files.into_iter().map(|(f, t)| (rel(&src, &f), t)).collect();
    assert!(files.iter().any(|(r, _)| r.starts_with(TRANSPORT)));
    let leaks = transport_leaks(&files);
    assert!(
        leaks.is_empty(),
        "quinn or h2 named outside src/{TRANSPORT}/: {leaks:?}"
    );
}

#[test]
fn the_roles_never_import_one_another() {
    let (src, files) = read_sources();
    let files: Vec<(String, String)> = files.into_iter().map(|(f, t)| (rel(&src, &f), t)).collect();
    for role in ROLES {
        assert!(
            files.iter().any(|(r, _)| role_of(r) == Some(role)),
            "no files of {role}"
        );
    }
    let crossed = roles_crossed(&files);
    assert!(crossed.is_empty(), "a role imports another: {crossed:?}");
}

/// A made-up tree: `(path under src, text)`.
fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, t)| ((*r).to_owned(), (*t).to_owned()))
        .collect()
}

#[test]
fn the_rules_catch_what_they_are_for() {
    let leaky = files(&[
        (&format!("{TRANSPORT}/quic.rs"), "use quinn::Endpoint;"),
        ("relay/conn.rs", "fn f(i: quinn::Incoming) {}"),
        (
            "client/mod.rs",
            "// quinn::Connection in a comment\nuse crate::h2c::X;",
        ),
        ("tls/mod.rs", "use ::h2::client;"),
    ]);
    assert_eq!(transport_leaks(&leaky), ["relay/conn.rs", "tls/mod.rs"]);
    let stacked = files(&[
        ("client/resume.rs", "use crate::host::Backoff;"),
        ("host.rs", "use crate::{relay::X, session::Y};"),
        (
            "relay/conn.rs",
            "use crate::relay::budget; use super::State;",
        ),
        ("status/mod.rs", "use crate::relay::RelayHandle;"),
        ("cli/demo.rs", "use crate::{client, host, relay};"),
        ("host/session.rs", "use super::super::relay::Registry;"),
    ]);
    assert_eq!(
        roles_crossed(&stacked),
        [
            ("client/resume.rs", "host"),
            ("host.rs", "relay"),
            ("status/mod.rs", "relay"),
            ("host/session.rs", "relay"),
        ]
        .map(|(f, r)| (f.to_owned(), r.to_owned()))
    );
}

/// The top-level modules `code`, the text of the file `rel`, names through
/// `crate::` or through `super::` chains that climb out of its own.
fn tops(code: &str, rel: &str) -> BTreeSet<String> {
    let mut found = uses(code);
    found.extend(
        paths(code, &module_path(rel))
            .into_iter()
            .filter_map(|p| p.into_iter().next()),
    );
    found
}

/// The module path of a file under `src` (`relay/conn.rs` → `relay::conn`,
/// `relay/mod.rs` and `relay.rs` → `relay`, `lib.rs` → the crate).
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every path `code` names through `crate::` or `super::`, made absolute
/// from `module` (the file's module path), with use groups expanded
/// (`use super::{a::X, b}` → `m::a::X`, `m::b`).
fn paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    fn expand(text: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        let mut rest = text;
        loop {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                if let Some(group) = rest.strip_prefix('{') {
                    let (mut depth, mut start) = (0usize, 0usize);
                    for (i, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => {
                                expand(group[start..i].trim(), &path, out);
                                return;
                            }
                            '}' => depth -= 1,
                            ',' if depth == 0 => {
                                expand(group[start..i].trim(), &path, out);
                                start = i + 1;
                            }
                            _ => {}
                        }
                    }
                }
                break;
            }
            rest = &rest[name.len()..];
            if name != "self" {
                path.push(name);
            }
            match rest.strip_prefix("::") {
                Some(more) => rest = more,
                None => break,
            }
        }
        out.push(path);
    }
    let mut out = Vec::new();
    let starts = code
        .match_indices("crate::")
        .chain(code.match_indices("super::"));
    for (at, _) in starts {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            // Part of a longer path (`super::super::`), taken from its start.
            continue;
        }
        let mut base: Vec<String> = Vec::new();
        let mut rest = &code[at..];
        if let Some(more) = rest.strip_prefix("crate::") {
            rest = more;
        } else {
            base = module.to_vec();
            while let Some(more) = rest.strip_prefix("super::") {
                base.pop();
                rest = more;
            }
        }
        expand(rest, &base, &mut out);
    }
    out
}

/// What each module re-exports (`pub use child::Item;`, `pub use
/// crate::x::Y;`): the item's name to the path it stands for.
fn reexports(files: &[(String, String)]) -> BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> {
    let mut all = BTreeMap::new();
    for (rel, text) in files {
        let module = module_path(rel);
        let code = code(text);
        let mut items = BTreeMap::new();
        for (at, _) in code.match_indices("pub use ") {
            let rest = &code[at + "pub use ".len()..];
            let end = rest.find(';').unwrap_or(rest.len());
            let used = &rest[..end];
            // A child's items (`pub use child::X`) are the child's; paths
            // through `crate::` and `super::` are made whole by `paths`.
            let whole = if used.starts_with("crate::") || used.starts_with("super::") {
                used.to_owned()
            } else {
                format!("self::{used}")
            };
            let mut expanded = paths(&whole.replacen("self::", "crate::__self__::", 1), &module);
            for path in &mut expanded {
                if path.first().is_some_and(|p| p == "__self__") {
                    path.remove(0);
                    path.splice(0..0, module.iter().cloned());
                }
            }
            for path in expanded {
                if let Some(name) = path.last() {
                    items.insert(name.clone(), path.clone());
                }
            }
        }
        all.insert(module, items);
    }
    all
}

/// The file graph: each file to the files whose modules it names, leaving
/// out a file's own parent and children (a module and its parts). A name a
/// module re-exports counts as the file it comes from.
fn file_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .filter(|(rel, _)| rel != "main.rs")
        .map(|(rel, _)| (module_path(rel), rel.clone()))
        .collect();
    let reexported = reexports(files);
    // The deepest module `path` names, through re-exports.
    let resolve = |path: &[String]| -> Option<(Vec<String>, String)> {
        let mut path = path.to_vec();
        for _ in 0..4 {
            let n = (1..=path.len())
                .rev()
                .find(|n| modules.contains_key(&path[..*n]))?;
            let module = path[..n].to_vec();
            let through = (path.get(n))
                .and_then(|item| reexported.get(&module)?.get(item))
                .filter(|to| to.as_slice() != path.as_slice());
            match through {
                Some(to) => path = to.clone(),
                None => return Some((module.clone(), modules[&module].clone())),
            }
        }
        None
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in files {
        if rel == "main.rs" {
            continue;
        }
        let module = module_path(rel);
        let deps = graph.entry(rel.clone()).or_default();
        for path in paths(&code(text), &module) {
            let Some((target_module, target_file)) = resolve(&path) else {
                continue;
            };
            let related = target_module.starts_with(&module) || module.starts_with(&target_module);
            if !related {
                deps.insert(target_file);
            }
        }
    }
    graph
}

#[test]
fn no_two_files_import_each_other_even_through_others() {
    let (src, files) = read_sources();
    let files: Vec<(String, String)> = files.into_iter().map(|(f, t)| (rel(&src, &f), t)).collect();
    let graph = file_graph(&files);
    assert!(
        graph.values().map(BTreeSet::len).sum::<usize>() > 50,
        "{graph:?}"
    );
    assert_eq!(find_cycle(&graph), None, "an import cycle between files");
}

#[test]
fn the_file_graph_sees_siblings_and_not_parents() {
    let tree = files(&[
        ("resume/mod.rs", "pub use engine::Outcome;"),
        ("resume/close.rs", "use super::engine::{Outcome, Side};"),
        (
            "resume/engine.rs",
            "use super::{close::drain, key};\nuse crate::session::resume::key::End;",
        ),
        (
            "resume/key.rs",
            "use super::super::protocol::Resume; use super::Outcome;",
        ),
        ("protocol/mod.rs", ""),
    ]);
    let graph = file_graph(&tree);
    assert_eq!(
        graph["resume/engine.rs"],
        ["resume/close.rs", "resume/key.rs"]
            .map(String::from)
            .into()
    );
    // `super::Outcome` is the parent's re-export of engine's.
    assert_eq!(
        graph["resume/key.rs"],
        ["protocol/mod.rs", "resume/engine.rs"]
            .map(String::from)
            .into()
    );
    let cycle = find_cycle(&graph).expect("engine with close and with key");
    assert!(cycle.contains(&"resume/engine.rs".to_owned()), "{cycle:?}");
    // A name a parent re-exports from its child counts as the child's.
    let tree = files(&[
        (
            "net/mod.rs",
            "mod error;\npub use error::{Closed, ErrorCode};",
        ),
        ("net/error.rs", "use crate::ops::Counter;"),
        ("ops/mod.rs", "use crate::net::Closed;\npub struct Counter;"),
    ]);
    let graph = file_graph(&tree);
    assert_eq!(
        graph["ops/mod.rs"],
        ["net/error.rs"].map(String::from).into()
    );
    assert!(find_cycle(&graph).is_some(), "{graph:?}");
}
