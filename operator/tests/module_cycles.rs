//! Dependency rule of the operator crate: no two top-level modules (a file or folder directly under
//! `src/`) import each other, directly or through others. A cycle means neither side can be
//! understood or tested without the other; this test names the cycle when one is introduced.
//!
//! The check reads `crate::<module>` paths (also inside `use crate::{a, b::c}` groups) in every
//! source file of a module, tests included.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("readable source dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The identifier at the start of `s`.
fn leading_ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level module names a piece of source refers to through `crate::`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        // `$crate::` in macros is the same crate; `inferscale_worker::...crate::` cannot occur.
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at top-level commas: `{a::x, b::{c, d}, e}` → a, b, e.
            let mut depth = 0usize;
            let mut start = 0usize;
            for (i, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        refs.insert(leading_ident(&group[start..i]).to_owned());
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        refs.insert(leading_ident(&group[start..i]).to_owned());
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            refs.insert(leading_ident(rest).to_owned());
        }
    }
    refs.remove("");
    refs
}

/// Module → the other top-level modules it refers to.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let module_of = |file: &Path| -> Option<String> {
        let rel = file.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
        let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
        // The crate roots are not modules of their own.
        (name != "lib" && name != "main").then_some(name)
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(module) = module_of(f) else { continue };
        let text = fs::read_to_string(f).expect("readable source file");
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(crate_references(&text).into_iter().filter(|d| *d != module));
    }
    graph
}

/// A cycle of the graph as `a -> b -> a`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|p| p == node) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_checker_sees_grouped_imports_and_cycles() {
    let refs = crate_references("use crate::{a::X, b::{c, d}, e};\nlet x = crate::f::g();");
    assert_eq!(
        refs,
        ["a", "b", "e", "f"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("x", vec!["y"]),
        ("y", vec!["z"]),
        ("z", vec!["x"]),
        ("w", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(["x", "y", "z", "x"].map(str::to_owned).to_vec())
    );
}

#[test]
fn operator_modules_do_not_import_each_other_in_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.contains_key("apply") && graph.contains_key("build"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between operator modules: {}\nmodule graph: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}
