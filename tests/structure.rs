//! The source tree's shape, checked: no import cycles between the crate's
//! top-level modules (the wire protocol at the bottom, the command line at
//! the top), and no source file over about 400 lines unless its `//!`
//! says why.

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
        deps.extend(uses(&code(text)).into_iter().filter(|m| *m != module));
    }
    assert!(graph.len() > 10, "found only {graph:?}");
    assert_eq!(find_cycle(&graph), None, "an import cycle");
    // The wire protocol is the bottom floor.
    assert_eq!(graph["protocol"], BTreeSet::new(), "protocol imports");
    // Nothing below the command line reaches up into it.
    for (module, deps) in &graph {
        assert!(
            module == "cli" || !deps.contains("cli"),
            "{module} imports cli"
        );
    }
}

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
