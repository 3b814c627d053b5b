//! The worker's dependency rules, checked over its source: every `crate::<module>` path names an
//! edge between top-level modules (a folder or file directly under `src/`).
//!
//! * No cycle between top-level modules: each layer imports only the layers below it
//!   (`server` → `api` → `plan`, `runtime` → `algorithms` → `judge` → `fanout` → `providers` →
//!   `config`), so a change low down never needs one higher up.
//! * The algorithms, the judge, the fan-out and request planning never see HTTP types.
//! * Providers never see the algorithms (nor anything above them).
//! * `config` stands alone: the operator builds it without the server.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to; `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The code of a file without its line comments (doc links name modules without using them).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a piece of code names through `crate::`, including grouped imports
/// (`use crate::{a::X, b}`).
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        names.insert(ident(&group[j..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(ident(rest).to_owned());
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Whether a piece of code uses the `axum` or `http` crates.
fn uses_http(code: &str) -> bool {
    let mentions = |needle: &str| {
        code.match_indices(needle).any(|(i, _)| {
            code[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
        })
    };
    mentions("axum") || mentions("http::")
}

struct Crate {
    graph: Graph,
    http_users: BTreeSet<String>,
}

fn scan() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph = Graph::new();
    let mut http_users = BTreeSet::new();
    for file in files {
        let Some(from) = module_of(&src, &file) else {
            continue;
        };
        let code = code(&fs::read_to_string(&file).expect("readable source"));
        if uses_http(&code) {
            http_users.insert(from.clone());
        }
        let edges = graph.entry(from.clone()).or_default();
        edges.extend(named_modules(&code).into_iter().filter(|to| *to != from));
    }
    Crate { graph, http_users }
}

/// A cycle, as the path of modules that closes it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
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
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_cycle_between_top_level_modules() {
    let krate = scan();
    assert!(
        krate.graph.contains_key("algorithms") && krate.graph.contains_key("api"),
        "the scan found the worker's modules"
    );
    if let Some(cycle) = find_cycle(&krate.graph) {
        panic!(
            "import cycle between the worker's modules: {}",
            cycle.join(" → ")
        );
    }
}

#[test]
fn algorithms_judge_fanout_and_planning_never_see_http_types() {
    let krate = scan();
    for module in ["algorithms", "judge", "fanout", "plan"] {
        assert!(
            !krate.http_users.contains(module),
            "{module} uses axum or http types; keep them in api/ and server.rs"
        );
    }
    assert!(krate.http_users.contains("api"), "the HTTP check sees api/");
}

#[test]
fn providers_never_see_the_algorithms() {
    let krate = scan();
    let providers = &krate.graph["providers"];
    for above in [
        "algorithms",
        "judge",
        "fanout",
        "plan",
        "api",
        "runtime",
        "server",
    ] {
        assert!(!providers.contains(above), "providers imports {above}");
    }
}

#[test]
fn config_stands_alone() {
    let krate = scan();
    let config = &krate.graph["config"];
    assert!(
        config.is_empty(),
        "config (built for the operator without the server) imports {config:?}"
    );
}

#[test]
fn the_checks_see_what_they_check() {
    let src =
        "use crate::{config::X, metrics::{A, B}};\nlet p = crate::plan::plan();\n// crate::server";
    assert_eq!(
        named_modules(&code(src)),
        ["config", "metrics", "plan"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert!(uses_http("use axum::Json;") && uses_http("use http::StatusCode;"));
    assert!(!uses_http(&code("use reqwest::Client; // not axum")));
    assert!(!uses_http("let https::x = 1; fn bhttp::y"));
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), BTreeSet::from([b.to_owned()])))
        .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
