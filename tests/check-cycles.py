#!/usr/bin/env python3
"""tests/check-cycles.py — module dependency rules of the Rust crates (docs/architecture.md).

For each crate (worker/src, operator/src) the graph's nodes are the top-level modules: a file
`X.rs` or a folder `X/` directly under `src/` (lib.rs and main.rs are the crate root, not nodes).
An edge A -> B is any path in A's non-test code that names B: `use crate::B...` (use trees with
braces are expanded), a `crate::B::...` path in code, or `super::`/`self::` paths that resolve to B
from where they are written (inline `mod` blocks are followed). Code under `#[cfg(test)]` is left
out: test helpers may reach across modules without making the production code circular.

The check fails, printing every offending line, when
  * a cycle exists between top-level modules of a crate (each strongly connected component is
    listed with one cycle through it and the lines that create its edges);
  * the worker crate depends on the operator crate (Cargo.toml or an `inferscale_operator` path);
  * worker `algorithms`, `judge`, `fanout` or `plan` names HTTP types (axum, http, hyper,
    reqwest), or `algorithms` reaches `api`/`server`;
  * worker `providers` or `reward` reaches `algorithms` (directly or through other modules);
  * worker `config` (built without the server feature, shared with the operator) reaches any
    module of the server;
  * operator `build` does I/O: a kube `Api`/`Client`, `kube::runtime`, files, sockets, reqwest,
    or reaches a module that talks to the API server (`apply`, `controller`, `run`, `leader`,
    `server`).

Usage: tests/check-cycles.py [ROOT]     (ROOT defaults to the repository)
       tests/check-cycles.py --self-test
Python 3.11 standard library only.
"""

from __future__ import annotations

import bisect
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# --- reading Rust source -----------------------------------------------------------------------

_CHAR_LITERAL = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|.)|[^\\'\n])'")
_RAW_STRING = re.compile(r'b?r(#*)"')
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|::|\S")


def strip_comments_and_literals(text: str) -> str:
    """Blanks comments, strings and char literals, keeping newlines so line numbers stay right."""
    out: list[str] = []
    i, n = 0, len(text)

    def blank(s: str) -> str:
        return "".join(c if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif (m := _RAW_STRING.match(text, i)) and (i == 0 or not _is_ident(text[i - 1])):
            end = text.find('"' + m.group(1), m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + blank(text[i + 2 : j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append('""' + blank(text[i + 2 : j]))
            i = j
        elif c == "'" and (m := _CHAR_LITERAL.match(text, i)):
            out.append("' '" + blank(text[i + 3 : m.end()]))
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _is_ident(c: str) -> bool:
    return c.isalnum() or c == "_"


@dataclass
class Token:
    text: str
    line: int


def tokenize(text: str) -> list[Token]:
    clean = strip_comments_and_literals(text)
    line_starts = [0] + [m.end() for m in re.finditer("\n", clean)]
    return [
        Token(m.group(), bisect.bisect_right(line_starts, m.start()))
        for m in _TOKEN.finditer(clean)
    ]


@dataclass
class PathUse:
    """One path written in the source, e.g. ['crate', 'config', 'WorkerConfig'], and its line."""

    segments: list[str]
    line: int
    module: list[str]  # the module it is written in, from the crate root


@dataclass
class FileScan:
    paths: list[PathUse] = field(default_factory=list)
    test_only_children: set[str] = field(default_factory=set)  # `#[cfg(test)] mod x;`
    whole_file_is_test: bool = False


def _is_test_cfg(attr: list[str]) -> bool:
    """`cfg(test)` or `cfg(any(test, ...))`; not `cfg(not(test))` nor `cfg_attr(test, ...)`."""
    return len(attr) > 1 and attr[0] == "cfg" and "test" in attr and "not" not in attr


def scan_file(text: str, module: list[str]) -> FileScan:
    toks = tokenize(text)
    scan = FileScan()
    depth = 0
    inline_mods: list[tuple[str, int]] = []  # (name, depth of its body)
    skip_until_depth: int | None = None  # inside a #[cfg(test)] item
    pending_test = False
    i = 0
    while i < len(toks):
        t = toks[i].text
        # attributes: #[...] and #![...]
        if t == "#" and i + 1 < len(toks) and toks[i + 1].text in ("[", "!"):
            j = i + 1 + (toks[i + 1].text == "!")
            inner = toks[i + 1].text == "!"
            k, level, attr = j, 0, []
            while k < len(toks):
                if toks[k].text == "[":
                    level += 1
                elif toks[k].text == "]":
                    level -= 1
                    if level == 0:
                        break
                else:
                    attr.append(toks[k].text)
                k += 1
            if _is_test_cfg(attr):
                if inner and depth == 0 and not inline_mods:
                    scan.whole_file_is_test = True
                    return scan
                if skip_until_depth is None:
                    pending_test = True
            i = k + 1
            continue
        if t == "{":
            depth += 1
            if pending_test and skip_until_depth is None:
                skip_until_depth = depth - 1
                pending_test = False
        elif t == "}":
            depth -= 1
            if inline_mods and inline_mods[-1][1] == depth + 1:
                inline_mods.pop()
            if skip_until_depth is not None and depth == skip_until_depth:
                skip_until_depth = None
        elif t == ";" and pending_test:
            pending_test = False
            # `#[cfg(test)] mod name;` makes that child file test-only
            if i >= 2 and toks[i - 2].text == "mod":
                scan.test_only_children.add(toks[i - 1].text)
        elif skip_until_depth is not None or pending_test:
            pass
        elif t == "mod" and i + 2 < len(toks) and toks[i + 2].text == "{":
            inline_mods.append((toks[i + 1].text, depth + 1))
        elif t == "use":
            current = module + [name for name, _ in inline_mods]
            end = i + 1
            while end < len(toks) and toks[end].text != ";":
                end += 1
            for segs in expand_use_tree([x.text for x in toks[i + 1 : end]]):
                scan.paths.append(PathUse(segs, toks[i].line, current))
            i = end
            continue
        elif _TOKEN_IDENT.match(t) and not (i > 0 and toks[i - 1].text in ("::", "$")):
            segs, k = [t], i + 1
            while k + 1 < len(toks) and toks[k].text == "::":
                nxt = toks[k + 1].text
                if nxt == "<":  # turbofish: Api::<Pod>::all — keep what precedes it
                    break
                if not _TOKEN_IDENT.match(nxt):
                    break
                segs.append(nxt)
                k += 2
            if len(segs) > 1:
                current = module + [name for name, _ in inline_mods]
                scan.paths.append(PathUse(segs, toks[i].line, current))
            i = k
            continue
        i += 1
    return scan


_TOKEN_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def expand_use_tree(tokens: list[str]) -> list[list[str]]:
    """`a::{b, c::{d as e, self}}` -> [[a, b], [a, c, d], [a, c]] (aliases dropped)."""
    paths: list[list[str]] = []
    if tokens and tokens[0] == "::":
        tokens = tokens[1:]

    def parse(pos: int, prefix: list[str]) -> int:
        segs = list(prefix)
        while pos < len(tokens):
            t = tokens[pos]
            if t == "{":
                pos += 1
                while pos < len(tokens) and tokens[pos] != "}":
                    pos = parse(pos, segs)
                    if pos < len(tokens) and tokens[pos] == ",":
                        pos += 1
                return pos + 1
            if t == "*":
                paths.append(segs)
                return pos + 1
            if t in (",", "}"):
                break
            if t == "as":
                pos += 2
                continue
            if t == "::":
                pos += 1
                continue
            if t == "self" and len(segs) == len(prefix) and prefix:
                # `use a::{self}`: the path is the prefix itself
                pos += 1
                continue
            segs.append(t)
            pos += 1
        if segs:
            paths.append(segs)
        return pos

    parse(0, [])
    return paths


def resolve(path: PathUse) -> list[str] | None:
    """The path from the crate root, or None when it names another crate."""
    segs, here = path.segments, list(path.module)
    if segs[0] == "crate":
        return segs[1:]
    if segs[0] == "self":
        return here + segs[1:]
    if segs[0] == "super":
        k = 0
        while k < len(segs) and segs[k] == "super":
            here = here[:-1]
            k += 1
        return here + segs[k:]
    return None


# --- the crate graph ----------------------------------------------------------------------------


@dataclass
class Crate:
    name: str
    src: Path
    modules: set[str] = field(default_factory=set)
    # edge (a, b) -> first few places that create it
    edges: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # top-level module -> external paths it names (e.g. kube::Api) with their places
    external: dict[str, list[tuple[list[str], str]]] = field(default_factory=dict)


def module_path_of(rel: Path) -> list[str]:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def load_crate(name: str, src: Path, root: Path) -> Crate:
    crate = Crate(name, src)
    files = sorted(p for p in src.rglob("*.rs") if p.relative_to(src).parts[0] != "bin")
    test_only: set[Path] = set()
    scans: dict[Path, FileScan] = {}
    roots = [src / "lib.rs", src / "main.rs"]
    for f in files:
        rel = f.relative_to(src)
        scans[f] = scan_file(f.read_text(encoding="utf-8"), [] if f in roots else module_path_of(rel))
    for f, scan in scans.items():
        # a module file's children live next to it (lib.rs, main.rs, mod.rs) or in its folder
        base = f.parent if f.name == "mod.rs" or f in roots else f.with_suffix("")
        for child in scan.test_only_children:
            test_only.update({base / f"{child}.rs", base / child / "mod.rs"})
    # a test-only module's files are test-only too
    test_only_dirs = {p.parent for p in test_only if p.name == "mod.rs"} | {p.with_suffix("") for p in test_only}
    for f, scan in scans.items():
        if f in roots:
            continue  # the crate root declares modules; its own paths are not between modules
        rel = f.relative_to(src)
        top = rel.parts[0].removesuffix(".rs")
        if scan.whole_file_is_test or f in test_only or any(d in f.parents for d in test_only_dirs):
            continue
        crate.modules.add(top)
        where_prefix = f.relative_to(root).as_posix()
        for use in scan.paths:
            where = f"{where_prefix}:{use.line}: {'::'.join(use.segments)}"
            target = resolve(use)
            if target is None:
                crate.external.setdefault(top, []).append((use.segments, where))
                continue
            if not target or target[0] == top:
                continue
            places = crate.edges.setdefault((top, target[0]), [])
            if len(places) < 3:
                places.append(where)
    # names that resolved to something other than a module (e.g. `crate::SomeType`) are not edges
    crate.edges = {e: w for e, w in crate.edges.items() if e[1] in crate.modules}
    return crate


def strongly_connected(nodes: set[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Tarjan's algorithm; components of more than one module (or a self-loop) are returned."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in sorted(edges):
        succ.setdefault(a, []).append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for n in sorted(succ):
        if n not in index:
            visit(n)
    return sorted(out)


def one_cycle(component: list[str], edges: set[tuple[str, str]]) -> list[str]:
    """A cycle through the component's first module (breadth-first, so a shortest one)."""
    members = set(component)
    start = component[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for a in frontier:
            for b in sorted(m for (x, m) in edges if x == a and m in members):
                if b == start:
                    path = [a]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if b not in prev:
                    prev[b] = a
                    nxt.append(b)
        frontier = nxt
    return component


def reaches(crate: Crate, start: str, targets: set[str]) -> list[str] | None:
    """A dependency chain from `start` to one of `targets`, or None."""
    prev: dict[str, str] = {}
    frontier, seen = [start], {start}
    while frontier:
        nxt = []
        for a in frontier:
            for b in sorted(m for (x, m) in crate.edges if x == a):
                if b in seen:
                    continue
                prev[b] = a
                if b in targets:
                    chain = [b]
                    while chain[-1] != start:
                        chain.append(prev[chain[-1]])
                    return list(reversed(chain))
                seen.add(b)
                nxt.append(b)
        frontier = nxt
    return None


# --- the rules ----------------------------------------------------------------------------------


def check_cycles(crate: Crate) -> list[str]:
    edges = set(crate.edges)
    problems = []
    for comp in strongly_connected(crate.modules, edges):
        cycle = one_cycle(comp, edges)
        lines = [f"{crate.name}: import cycle between {', '.join(comp)}: {' -> '.join(cycle)}"]
        for a, b in sorted(edges):
            if a in comp and b in comp:
                lines.append(f"    {a} -> {b}:")
                lines += [f"        {w}" for w in crate.edges[(a, b)]]
        problems.append("\n".join(lines))
    return problems


def chain_problem(crate: Crate, rule: str, start: str, targets: set[str]) -> list[str]:
    if start not in crate.modules:
        return []
    chain = reaches(crate, start, targets)
    if chain is None:
        return []
    lines = [f"{crate.name}: {rule}: {' -> '.join(chain)}"]
    for a, b in zip(chain, chain[1:]):
        lines.append(f"    {a} -> {b}:")
        lines += [f"        {w}" for w in crate.edges[(a, b)]]
    return ["\n".join(lines)]


def external_problem(crate: Crate, rule: str, module: str, forbidden: list[list[str]]) -> list[str]:
    hits = [
        where
        for segs, where in crate.external.get(module, [])
        if any(segs[: len(f)] == f for f in forbidden)
    ]
    if not hits:
        return []
    return [f"{crate.name}: {rule}:\n" + "\n".join(f"        {w}" for w in hits)]


HTTP_CRATES = [["axum"], ["http"], ["hyper"], ["reqwest"]]
IO_PATHS = [
    ["kube", "Api"],
    ["kube", "api", "Api"],
    ["kube", "Client"],
    ["kube", "client"],
    ["kube", "runtime"],
    ["reqwest"],
    ["std", "fs"],
    ["std", "net"],
    ["tokio", "fs"],
    ["tokio", "net"],
]
API_SERVER_MODULES = {"apply", "controller", "run", "leader", "server"}


def check_worker_never_depends_on_operator(root: Path) -> list[str]:
    problems = []
    manifest = tomllib.loads((root / "worker/Cargo.toml").read_text(encoding="utf-8"))
    for table in ("dependencies", "dev-dependencies", "build-dependencies"):
        if "inferscale-operator" in manifest.get(table, {}):
            problems.append(f"worker/Cargo.toml: [{table}] lists inferscale-operator")
    for f in sorted((root / "worker").rglob("*.rs")):
        if "target" in f.relative_to(root).parts:
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if "inferscale_operator" in line:
                problems.append(f"{f.relative_to(root).as_posix()}:{n}: names inferscale_operator")
    if problems:
        return ["worker: the worker crate must never depend on the operator crate:\n"
                + "\n".join(f"        {p}" for p in problems)]
    return []


def check(root: Path) -> list[str]:
    worker = load_crate("worker", root / "worker/src", root)
    operator = load_crate("operator", root / "operator/src", root)
    problems: list[str] = []
    problems += check_cycles(worker)
    problems += check_cycles(operator)
    problems += check_worker_never_depends_on_operator(root)
    for pure in ("algorithms", "judge", "fanout", "plan"):
        problems += external_problem(
            worker, f"{pure} must not use HTTP types", pure, HTTP_CRATES)
    problems += chain_problem(
        worker, "config (shared with the operator) must not reach the server's modules", "config",
        {"api", "algorithms", "judge", "fanout", "plan", "providers", "reward", "runtime", "server",
         "metrics"})
    problems += chain_problem(
        worker, "algorithms must not reach the HTTP layer", "algorithms", {"api", "server"})
    problems += chain_problem(
        worker, "providers must not reach algorithms", "providers", {"algorithms"})
    # The PRM client is a provider of scores: it sends a call and reports its result.
    problems += chain_problem(
        worker, "reward must not reach algorithms", "reward", {"algorithms"})
    problems += external_problem(
        operator, "build must not do I/O (kube Api/Client, files, sockets)", "build", IO_PATHS)
    problems += chain_problem(
        operator, "build must not reach modules that talk to the API server", "build",
        API_SERVER_MODULES)
    return problems


# --- self-test ----------------------------------------------------------------------------------


def self_test() -> int:
    """The check on small fabricated crates: each rule must fire, and a clean tree must pass."""
    clean_worker = {
        "lib.rs": "pub mod api; pub mod algorithms; pub mod providers; mod rand;\n#[cfg(test)]\nmod test_support;",
        "test_support/mod.rs": "use crate::api::x; mod more;",
        "test_support/more.rs": "use crate::algorithms::run;",
        "api/mod.rs": "use crate::algorithms::run;\nmod chat;",
        "api/chat.rs": "use super::super::providers::{self, Call};\n",
        "algorithms/mod.rs": "use crate::{providers::Call, rand};\npub fn run() {}\n#[cfg(test)]\nmod testkit;",
        "algorithms/testkit/mod.rs": "use axum::Json;\nmod deep;",
        "algorithms/testkit/deep.rs": "use crate::api::x;",
        "providers/mod.rs": (
            "// use crate::algorithms; (a comment)\n"
            'const S: &str = "crate::algorithms::run";\n'
            "#[cfg(test)]\nmod tests { use crate::algorithms::run; fn f() { crate::api::x(); } }\n"
            "#[cfg(test)]\nmod fixtures;\n"
            "pub struct Call;"
        ),
        "providers/fixtures.rs": "use crate::api::x;",
        "rand.rs": "pub fn unit() -> char { '{' }\n#[cfg(test)]\nmod tests { use super::*; }",
    }
    clean_operator = {
        "lib.rs": "pub mod build; pub mod apply; pub mod validate;",
        "build/mod.rs": "use kube::api::{ApiResource, DynamicObject};\nuse crate::validate::Resolved;",
        "validate.rs": "pub struct Resolved;",
        "apply.rs": "use kube::{Api, Client};\nuse crate::build;",
    }
    cases = {
        "clean tree": ({}, {}, []),
        "cycle via use tree": (
            {"providers/mod.rs": "use crate::{api::{self}, rand};\n#[cfg(test)]\nmod fixtures;"},
            {},
            ["worker: import cycle between algorithms, api, providers",
             "worker: algorithms must not reach the HTTP layer: algorithms -> providers -> api",
             "worker: providers must not reach algorithms: providers -> api -> algorithms"],
        ),
        "cycle via super::super": (
            {"rand.rs": "fn f() { super::api::chat::g(); }"},
            {},
            ["worker: import cycle between algorithms, api, rand",
             "worker: algorithms must not reach the HTTP layer: algorithms -> rand -> api"],
        ),
        "algorithms use axum": (
            {"algorithms/vote.rs": "fn f(_: axum::Json<()>) {}",
             "algorithms/mod.rs": "mod vote; use crate::providers::Call;\n#[cfg(test)]\nmod testkit;"},
            {},
            ["worker: algorithms must not use HTTP types"],
        ),
        "providers use algorithms": (
            {"providers/openai.rs": "use crate::algorithms::run;"},
            {},
            ["worker: import cycle between algorithms, providers",
             "worker: providers must not reach algorithms: providers -> algorithms"],
        ),
        "worker depends on the operator crate": (
            {"Cargo.toml": '[package]\nname = "w"\n[dependencies]\ninferscale-operator = { path = "../operator" }\n'},
            {},
            ["worker: the worker crate must never depend on the operator crate"],
        ),
        "literals and test-only files are not edges": (
            {"algorithms/mod.rs": (
                "use crate::providers::Call;\nconst A: &str = r#\"crate::api::x\"#;\n"
                "const B: char = '\"'; const C: &str = \"use crate::api;\";\n"
                "fn f<'a>(x: &'a str) {}\n#[cfg(test)]\nmod testkit;")},
            {},
            [],
        ),
        "build does I/O": (
            {},
            {"build/worker.rs": "async fn f(c: kube::Client) { let a = kube::Api::<P>::all(c); }"},
            ["operator: build must not do I/O"],
        ),
        "build reaches apply": (
            {},
            {"validate.rs": "pub struct Resolved; use crate::apply::Stores;"},
            ["operator: import cycle between apply, build, validate",
             "operator: build must not reach modules that talk to the API server"],
        ),
    }
    failures = 0
    for name, (worker_over, operator_over, expected) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for crate, files, over in (("worker", clean_worker, worker_over),
                                       ("operator", clean_operator, operator_over)):
                for rel, text in {**files, **over}.items():
                    if rel == "Cargo.toml":
                        continue
                    p = root / crate / "src" / rel
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(text)
            manifest = worker_over.get("Cargo.toml", '[package]\nname = "w"\n[dependencies]\n')
            (root / "worker/Cargo.toml").write_text(manifest)
            got = check(root)
            heads = [p.splitlines()[0] for p in got]
            ok = len(heads) == len(expected) and all(
                any(h.startswith(e) for h in heads) for e in expected)
            if not ok:
                failures += 1
                print(f"self-test {name!r}: expected {expected}, got:\n" + "\n".join(got))
    print(f"check-cycles self-test: {len(cases) - failures}/{len(cases)} cases pass")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--self-test"]:
        return self_test()
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"check-cycles: {len(problems)} problem(s); rules in docs/architecture.md",
              file=sys.stderr)
        return 1
    print("check-cycles: no import cycle between top-level modules; dependency rules hold")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
