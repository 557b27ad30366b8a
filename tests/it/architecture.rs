//! The shape of the house, checked: the rooms of `src/` (its top-level modules) import each other
//! in one direction only, from the top floor down, so no room imports one that uses it; `config`
//! is the bottom floor and imports nothing from the crate; `unsafe` appears only under `sys/`.
//! Read from the source text (`crate::ROOM` paths outside `#[cfg(test)]` modules), so a new
//! arrow back up fails here before review has to find it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::repo_root;

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A file's text before its unit tests: `#[cfg(test)]` modules may reach anywhere.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The room (top-level module) a file under src/ belongs to: `tls` for src/tls/sni.rs.
fn room_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// Which rooms each room imports, through `crate::ROOM` paths.
fn room_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = repo_root().join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let room = room_of(&src, &file);
        if room == "main" || room == "lib" {
            continue;
        }
        let code = code_of(&file);
        let entry = graph.entry(room.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() && name != room {
                entry.insert(name);
            }
        }
    }
    graph
}

/// A cycle through `graph`, if there is one, as the rooms along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
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

#[test]
fn rooms_import_each_other_one_way_only() {
    let graph = room_graph();
    assert!(graph.len() > 8, "too few rooms found: {graph:?}");
    assert_eq!(
        find_cycle(&graph),
        None,
        "rooms import each other: {graph:#?}"
    );
}

#[test]
fn config_is_the_bottom_floor() {
    let graph = room_graph();
    assert_eq!(
        graph.get("config"),
        Some(&BTreeSet::new()),
        "config imports {graph:#?}"
    );
}

#[test]
fn the_cycle_finder_finds_a_planted_arrow_back_up() {
    let mut graph = room_graph();
    graph
        .get_mut("config")
        .unwrap()
        .insert("server".to_string());
    assert!(find_cycle(&graph).is_some());
}

#[test]
fn unsafe_code_lives_only_under_sys() {
    let src = repo_root().join("src");
    let outside: Vec<_> = rust_files(&src)
        .into_iter()
        .filter(|f| room_of(&src, f) != "sys")
        .filter(|f| {
            code_of(f)
                .lines()
                .any(|l| !l.trim_start().starts_with("//") && l.contains("unsafe "))
        })
        .collect();
    assert!(outside.is_empty(), "unsafe outside src/sys/: {outside:?}");
}
