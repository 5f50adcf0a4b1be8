//! The house's rules that no compiler checks: modules depend one way. A circle of imports
//! means two rooms that cannot be read, changed or tested apart.
//!
//! Two levels are checked, in every crate of the workspace: the crate's top-level modules
//! (a directory module counts as one), and the files inside each directory module (its
//! `mod.rs` left out: the parent declares its children, and they use what it defines). An
//! edge is a path that names another module: `crate::a::…` or, inside a directory,
//! `super::b::…`. Unit tests (after a file's first `#[cfg(test)]`) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 3] = ["agent/src", "mock-server/src", "signing/src"];

#[test]
fn no_import_circles_between_modules_or_the_files_of_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut circles = Vec::new();
    for krate in CRATES {
        let src = root.join(krate);
        let files = rust_files(&src);
        assert!(!files.is_empty(), "no source files under {krate}");
        circles.extend(circles_in(&top_level_graph(&src, &files), krate));
        for dir in directory_modules(&src) {
            let room = format!("{krate}/{dir}");
            circles.extend(circles_in(&directory_graph(&src, &dir, &files), &room));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn a_circle_is_found() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .iter()
        .fold(Graph::new(), |mut g, (from, to)| {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            g
        });
    let found = circles_in(&graph, "x");
    assert_eq!(found, ["x: a → b → c → a"]);
    assert!(circles_in(&Graph::new(), "x").is_empty());
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The directories of `src` that hold a module's files (`cycle/`, `client/`, `events/`).
fn directory_modules(src: &Path) -> Vec<String> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "bin"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A file's module path below `src`: `cycle/install.rs` is ["cycle", "install"], `cycle/mod.rs`
/// and `cycle.rs` are ["cycle"], `lib.rs` and `main.rs` are [].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments and its unit tests.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("\n#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow each `prefix` in `code` (`crate::` gives `cycle`, `store`, …).
fn names_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> {
    code.match_indices(prefix).filter_map(move |(at, _)| {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &code[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// Braced imports name several modules at once: `use crate::{a, b::C}`.
fn braced_names(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let opener = format!("{prefix}{{");
    for (at, _) in code.match_indices(&opener) {
        let inner = &code[at + opener.len()..];
        let mut depth = 0;
        let mut item = String::new();
        for c in inner.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => out.push(std::mem::take(&mut item)),
                _ => item.push(c),
            }
        }
        out.push(item);
    }
    out.iter()
        .filter_map(|i| i.trim().split("::").next().map(str::to_owned))
        .filter(|n| !n.is_empty())
        .collect()
}

fn top_level_graph(src: &Path, files: &[PathBuf]) -> Graph {
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(src, f).first().cloned())
        .collect();
    let mut graph = Graph::new();
    for file in files {
        let Some(from) = module_of(src, file).first().cloned() else {
            continue;
        };
        let code = code_of(file);
        let named = names_after(&code, "crate::")
            .map(str::to_owned)
            .chain(braced_names(&code, "crate::"));
        for to in named.filter(|m| modules.contains(m) && *m != from) {
            graph.entry(from.clone()).or_default().insert(to);
        }
    }
    graph
}

fn directory_graph(src: &Path, dir: &str, files: &[PathBuf]) -> Graph {
    let inside: Vec<(String, &PathBuf)> = files
        .iter()
        .filter_map(|f| match module_of(src, f).as_slice() {
            [d, name] if d == dir => Some((name.clone(), f)),
            _ => None,
        })
        .collect();
    let siblings: BTreeSet<&String> = inside.iter().map(|(n, _)| n).collect();
    let mut graph = Graph::new();
    for (from, file) in &inside {
        let code = code_of(file);
        let crate_path = format!("crate::{dir}::");
        let named = names_after(&code, "super::")
            .chain(names_after(&code, &crate_path))
            .map(str::to_owned)
            .chain(braced_names(&code, "super::"));
        for to in named.filter(|m| siblings.contains(m) && m != from) {
            graph.entry(from.clone()).or_default().insert(to);
        }
    }
    graph
}

/// Every circle in `graph`, once each, as `room: a → b → a`.
fn circles_in(graph: &Graph, room: &str) -> Vec<String> {
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        let mut path = vec![start.clone()];
        walk(graph, start, &mut path, &mut found);
    }
    found
        .into_iter()
        .map(|c: Vec<String>| format!("{room}: {}", c.join(" → ")))
        .collect()
}

fn walk(graph: &Graph, node: &str, path: &mut Vec<String>, found: &mut BTreeSet<Vec<String>>) {
    for next in graph.get(node).into_iter().flatten() {
        if *next == path[0] {
            // Each circle is kept once, from its smallest name.
            let smallest = path.iter().min().unwrap();
            if *smallest == path[0] {
                let mut circle = path.clone();
                circle.push(next.clone());
                found.insert(circle);
            }
        } else if !path.contains(next) {
            path.push(next.clone());
            walk(graph, next, path, found);
            path.pop();
        }
    }
}

/// Every "Checked by:" line of the contract names a test that is there: a test renamed or
/// moved takes its reference with it.
#[test]
fn every_test_the_contract_names_is_where_it_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let contract = std::fs::read_to_string(root.join("docs/contract.md")).unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    for line in contract.lines().filter(|l| l.starts_with("- `")) {
        let ticks: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
        let Some(file) = ticks.first().filter(|f| f.ends_with(".rs")) else {
            continue;
        };
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        for name in ticks.iter().filter_map(|t| t.strip_prefix("fn ")) {
            checked += 1;
            if !text.contains(&format!("fn {name}(")) {
                missing.push(format!("{file}: fn {name}"));
            }
        }
    }
    assert!(checked > 50, "only {checked} references read");
    assert!(missing.is_empty(), "not found:\n{}", missing.join("\n"));
}
