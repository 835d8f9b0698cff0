//! Layering (issue #11, step 0): imports between the crate's top-level modules run one way only,
//! down the order declared in [`LAYERS`].
//!
//! What it checks: every file of the library reached from `src/lib.rs` through `mod` declarations
//! (`#[cfg(test)]` modules left out) is lexed, and each reference it makes to another top-level
//! module is an edge of the graph: `crate::x::…` anywhere in code (in `use`, in paths, in
//! `$crate::x`, in `use crate::{x, y}` groups), and a `super::…` path that climbs out of its own
//! top-level module (`use super::x` in `src/flows/mod.rs`, `super::super::x` in
//! `src/flows/mqtt_session.rs`; inline `mod m { … }` blocks count as a level). A module may import
//! the modules of the layers below its own; an import of its own layer or of one above is an
//! edge against the order. Today's such edges are listed in [`ALLOWED_VIOLATIONS`]; the test
//! fails when a new one appears, when a listed one is gone (remove it from the list), when a
//! top-level module has no layer, and when a file under `src/` is reached by no `mod` declaration
//! (so a `#[path]` or a forgotten file cannot hide an import). Run it with `-- --nocapture` to see
//! the use sites of the listed edges.
//!
//! What it does not check: structure inside a top-level module (the cycles among
//! `proto::mqtt`'s files are allowed by the issue; others, such as `reactor::core` ↔
//! `reactor::time`, are out of its scope); `#[cfg(test)]` code, comments, doc comments and
//! string literals (a path there is no import); dependencies that name nothing (a method called
//! on a value whose type comes from another module through a field is not an import of that
//! module: the field's declaration is); `src/main.rs` (the binary, a tool on top of everything,
//! reaches the library as `simgate::…`); references to items defined at the crate root itself.
//! It is a lexer over tokens, not a compiler: `macro_rules!` bodies are read as code, and a module
//! path built by a macro from pieces is not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The declared order, top layer first: a module may import modules of the layers BELOW its own,
/// never one of its own layer or of a layer above. `identity` and `adapters` are not written yet;
/// their place is declared now so that they land in it.
const LAYERS: &[(&str, &[&str])] = &[
    // `simgate demo`: the whole path on loopback; `simgate top`: a client of the admin API. Tools
    // may use everything, nothing may use them.
    ("tools", &["demo", "top"]),
    // Test doubles (certificates, HTTPS sink, device simulator): may use everything below,
    // nothing in the data plane or the control plane may use them.
    ("test doubles", &["testkit"]),
    // The control thread: admin API, metrics, reload (which compiles config), probes.
    ("control plane", &["control"]),
    // The shard (threads, listeners, dispatch) and the config compiler sit side by side: the
    // control thread uses both, neither uses the other, and nothing in the data plane below sees
    // the TOML schema (only the compiled `policy::Plan`).
    ("shard, config", &["shard", "config"]),
    // The glue per device protocol.
    ("flows", &["flows"]),
    // Pools, links, backoff; adapters are pure mappings flows call before handing bytes to
    // upstream, so the two are siblings that never import each other.
    ("upstream, adapters", &["upstream", "adapters"]),
    // The compiled plan and its templates: the topic rules check renderings with the MQTT
    // codec's validators, so `policy` sits above `proto`.
    ("policy", &["policy"]),
    // Foundations: none imports another (`upstream/transport.rs` glues reactor sockets to TLS).
    // `config` builds TLS material with `tls`'s types, so `tls` stays below it. `stats` is the
    // plain data every layer counts into (merged and exposed by `control`).
    ("foundations", &["tls", "reactor", "proto", "stats"]),
    // The SIM table the compiled plan carries (`plan.identify(peer)`): below `policy`.
    ("identity", &["identity"]),
];

/// Today's edges against [`LAYERS`], each to be removed by the refactor of issue #11; the seam
/// that removes each is in docs/decisions/0009-one-way-imports.md. When the refactor removes an
/// edge, the test fails until the edge is struck from this list too, so the list only shrinks.
/// Empty since the seams of issue #11 step 0 landed (`select2` and the wake-up primitive in
/// `reactor`, the pool driver in `upstream::driver`, the flows' `ShardState` in `flows::context`,
/// the counters in `stats`); keep it empty.
const ALLOWED_VIOLATIONS: &[(&str, &str)] = &[];

#[test]
fn imports_run_down_the_declared_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = scan_crate(&src);
    let verdict = judge(&graph, ALLOWED_VIOLATIONS);
    eprintln!("{}", verdict.listing);
    assert!(
        verdict.problems.is_empty(),
        "\nlayering: imports must run down the declared order (tests/layering.rs, LAYERS):\n  {}\n\n{}",
        order_line(),
        verdict.problems.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The order.

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// True if `from` may import `to` under [`LAYERS`] (both must have a layer).
fn allowed(from: &str, to: &str) -> bool {
    matches!((layer_of(from), layer_of(to)), (Some(f), Some(t)) if f < t)
}

fn below(module: &str) -> Vec<&'static str> {
    let Some(l) = layer_of(module) else {
        return Vec::new();
    };
    LAYERS[l + 1..]
        .iter()
        .flat_map(|(_, m)| m.iter().copied())
        .collect()
}

fn order_line() -> String {
    LAYERS
        .iter()
        .map(|(_, mods)| mods.join(", "))
        .collect::<Vec<_>>()
        .join("  >  ")
}

// ---------------------------------------------------------------------------------------------
// The verdict.

struct Verdict {
    problems: Vec<String>,
    /// The allowlisted edges still present, with their use sites (printed on every run).
    listing: String,
}

fn judge(graph: &Graph, allowlist: &[(&str, &str)]) -> Verdict {
    let mut problems = graph.problems.clone();
    for module in &graph.modules {
        if layer_of(module).is_none() {
            problems.push(format!(
                "module `{module}` (src/lib.rs) has no layer: add it to LAYERS in tests/layering.rs \
                 where it belongs (and say why in docs/decisions/ if the order changes)."
            ));
        }
    }
    let mut edges: BTreeMap<(&str, &str), Vec<&Site>> = BTreeMap::new();
    for site in &graph.sites {
        edges
            .entry((site.from.as_str(), site.to.as_str()))
            .or_default()
            .push(site);
    }
    let mut listing = String::from("layering: allowlisted edges still in the code:\n");
    for (&(from, to), sites) in &edges {
        if !graph.modules.contains(to) || layer_of(from).is_none() || layer_of(to).is_none() {
            continue; // a root item, or a module without a layer (reported above)
        }
        if allowed(from, to) {
            continue;
        }
        let listed = allowlist.contains(&(from, to));
        let mut text = String::new();
        for site in sites {
            let _ = writeln!(text, "    {}:{}  {}", site.file, site.line, site.code);
        }
        if listed {
            let _ = write!(
                listing,
                "  {from} -> {to} ({} use site(s))\n{text}",
                sites.len()
            );
        } else {
            problems.push(format!(
                "NEW edge against the order: {from} -> {to}\n  `{from}` may import only: {}\n  \
                 use sites:\n{text}  Move what `{from}` needs into a layer below it (see \
                 docs/decisions/0009-one-way-imports.md for the seams), or change LAYERS with a \
                 decision record if the order itself is wrong. Do not add it to ALLOWED_VIOLATIONS.",
                below(from).join(", ")
            ));
        }
    }
    for &(from, to) in allowlist {
        if allowed(from, to) {
            problems.push(format!(
                "ALLOWED_VIOLATIONS lists {from} -> {to}, which the order permits: remove \
                 (\"{from}\", \"{to}\") from the allowlist."
            ));
        } else if !edges.contains_key(&(from, to)) {
            problems.push(format!(
                "edge {from} -> {to} is gone from the code: remove (\"{from}\", \"{to}\") from \
                 ALLOWED_VIOLATIONS in tests/layering.rs (the allowlist only shrinks)."
            ));
        }
    }
    if !listing.contains(" -> ") {
        listing.push_str("  (none)\n");
    }
    Verdict { problems, listing }
}

// ---------------------------------------------------------------------------------------------
// The graph: walk the module tree from src/lib.rs.

/// One reference from a file of top-level module `from` to top-level module `to`.
#[derive(Debug, Clone)]
struct Site {
    from: String,
    to: String,
    file: String,
    line: usize,
    code: String,
}

struct Graph {
    /// Top-level modules declared in src/lib.rs.
    modules: BTreeSet<String>,
    sites: Vec<Site>,
    /// Structural problems: files no `mod` reaches, `mod` declarations without a file.
    problems: Vec<String>,
}

fn scan_crate(src: &Path) -> Graph {
    let mut problems = Vec::new();
    let mut sites = Vec::new();
    let mut modules = BTreeSet::new();
    let mut reached: BTreeSet<PathBuf> = BTreeSet::new();
    let mut test_only_paths: Vec<PathBuf> = Vec::new();
    // (file, its module path from the crate root)
    let mut queue: Vec<(PathBuf, Vec<String>)> = vec![(src.join("lib.rs"), Vec::new())];
    while let Some((file, path)) = queue.pop() {
        let rel = display_path(src, &file);
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("cannot read {rel}: {e}"));
                continue;
            }
        };
        reached.insert(file.clone());
        let scan = scan_file(&text, &path);
        let dir = child_dir(&file);
        for decl in &scan.test_mods {
            test_only_paths.push(dir.join(&decl.name));
            test_only_paths.push(dir.join(format!("{}.rs", decl.name)));
        }
        for decl in &scan.mods {
            let mut base = dir.clone();
            base.extend(&decl.inline);
            let candidates = [
                base.join(format!("{}.rs", decl.name)),
                base.join(&decl.name).join("mod.rs"),
            ];
            let Some(child) = candidates.into_iter().find(|c| c.is_file()) else {
                problems.push(format!(
                    "{rel}:{}: `mod {};` has no file this test can find (a #[path] attribute?): \
                     teach tests/layering.rs where it is, so its imports are checked",
                    decl.line, decl.name
                ));
                continue;
            };
            let mut child_path = path.clone();
            child_path.extend(decl.inline.iter().cloned());
            child_path.push(decl.name.clone());
            if path.is_empty() && decl.inline.is_empty() {
                modules.insert(decl.name.clone());
            }
            queue.push((child, child_path));
        }
        let Some(top) = path.first() else {
            continue; // the crate root itself: only declares modules
        };
        let lines: Vec<&str> = text.lines().collect();
        for (to, line) in scan.refs {
            if &to == top {
                continue;
            }
            let code = lines.get(line - 1).map_or("", |l| l.trim());
            let code = match code.char_indices().nth(100) {
                Some((cut, _)) => format!("{}…", &code[..cut]),
                None => code.to_string(),
            };
            sites.push(Site {
                from: top.clone(),
                to,
                file: rel.clone(),
                line,
                code,
            });
        }
    }
    let mut all = Vec::new();
    collect_rs_files(src, &mut all);
    for file in all {
        let is_bin = file == src.join("main.rs") || file.starts_with(src.join("bin"));
        let is_test = test_only_paths.iter().any(|p| file.starts_with(p));
        if !reached.contains(&file) && !is_bin && !is_test {
            problems.push(format!(
                "{} is reached by no `mod` declaration from src/lib.rs: either it is not compiled \
                 (delete it) or it is declared in a way tests/layering.rs does not follow (teach \
                 it), so its imports would go unchecked",
                display_path(src, &file)
            ));
        }
    }
    sites.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Graph {
        modules,
        sites,
        problems,
    }
}

/// The directory in which the `mod x;` declarations of `file` look for `x.rs` / `x/mod.rs`.
fn child_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    match file.file_name().and_then(|n| n.to_str()) {
        Some("lib.rs" | "main.rs" | "mod.rs") => dir,
        _ => dir.join(file.file_stem().unwrap_or_default()),
    }
}

fn display_path(src: &Path, file: &Path) -> String {
    let root = src.parent().unwrap_or(src);
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One file: its references to top-level modules and its `mod` declarations.

#[derive(Debug, PartialEq)]
struct ModDecl {
    /// Names of the inline `mod m { … }` blocks the declaration sits in.
    inline: Vec<String>,
    name: String,
    line: usize,
}

#[derive(Debug, Default)]
struct FileScan {
    /// (top-level module named, line) for every reference leaving the crate root's children.
    refs: Vec<(String, usize)>,
    /// `mod x;` declarations compiled outside tests.
    mods: Vec<ModDecl>,
    /// `#[cfg(test)] mod x;` declarations (their files are test code).
    test_mods: Vec<ModDecl>,
}

/// Scan one file whose module path from the crate root is `module` (empty for src/lib.rs).
fn scan_file(text: &str, module: &[String]) -> FileScan {
    let mut scan = FileScan::default();
    let toks = strip_test_code(lex(text), &mut scan.test_mods);
    let mut inline: Vec<(String, usize)> = Vec::new(); // (name, brace depth outside it)
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let prev_is_sep = i > 0 && toks[i - 1].kind == Kind::PathSep;
        match &toks[i].kind {
            Kind::Punct('{') => depth += 1,
            Kind::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Kind::Ident(kw) if kw == "mod" => {
                if let Some(Kind::Ident(name)) = toks.get(i + 1).map(|t| &t.kind) {
                    match toks.get(i + 2).map(|t| &t.kind) {
                        Some(Kind::Punct('{')) => inline.push((name.clone(), depth)),
                        Some(Kind::Punct(';')) => scan.mods.push(ModDecl {
                            inline: inline.iter().map(|(n, _)| n.clone()).collect(),
                            name: name.clone(),
                            line: toks[i].line,
                        }),
                        _ => {}
                    }
                }
            }
            Kind::Ident(kw) if kw == "crate" && !prev_is_sep && is_sep(&toks, i + 1) => {
                for name in first_segments(&toks, i + 2) {
                    scan.refs.push((name, toks[i].line));
                }
            }
            Kind::Ident(kw) if kw == "super" && !prev_is_sep && is_sep(&toks, i + 1) => {
                let mut j = i;
                let mut climbs = 0;
                while is_ident(&toks, j, "super") && is_sep(&toks, j + 1) {
                    climbs += 1;
                    j += 2;
                }
                // The module this code is in: the file's path plus the inline blocks around it.
                let level = module.len() + inline.len();
                if climbs == level && level > 0 {
                    for name in first_segments(&toks, j) {
                        scan.refs.push((name, toks[i].line));
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

fn is_sep(toks: &[Tok], i: usize) -> bool {
    toks.get(i).is_some_and(|t| t.kind == Kind::PathSep)
}

fn is_ident(toks: &[Tok], i: usize, word: &str) -> bool {
    matches!(toks.get(i).map(|t| &t.kind), Some(Kind::Ident(w)) if w == word)
}

/// The first segment of the path starting at `i` (after `crate::`): `x` in `x::…`, or each
/// element's first segment in a `{x::…, y, self}` group (`self` left out).
fn first_segments(toks: &[Tok], i: usize) -> Vec<String> {
    match toks.get(i).map(|t| &t.kind) {
        Some(Kind::Ident(name)) if name != "self" => vec![name.clone()],
        Some(Kind::Punct('{')) => {
            let mut out = Vec::new();
            let mut depth = 0usize;
            let mut at_element_start = true;
            for tok in &toks[i..] {
                match &tok.kind {
                    Kind::Punct('{') => {
                        depth += 1;
                        continue;
                    }
                    Kind::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Kind::Punct(',') if depth == 1 => {
                        at_element_start = true;
                        continue;
                    }
                    Kind::Ident(name) if depth == 1 && at_element_start && name != "self" => {
                        out.push(name.clone());
                    }
                    _ => {}
                }
                at_element_start = false;
            }
            out
        }
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// `#[cfg(test)]` items are dropped before scanning.

/// Drop every item (or statement, field, arm) under a `#[cfg(test)]`-only attribute; a file
/// under `#![cfg(test)]` becomes empty. `mod x;` declarations dropped so go to `test_mods`.
fn strip_test_code(toks: Vec<Tok>, test_mods: &mut Vec<ModDecl>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let Some((attr_end, inner, test_only)) = attribute_at(&toks, i) else {
            out.push(toks[i].clone());
            i += 1;
            continue;
        };
        if !test_only {
            out.extend_from_slice(&toks[i..attr_end]);
            i = attr_end;
            continue;
        }
        if inner {
            return Vec::new();
        }
        // Further attributes of the same item go with it.
        let mut start = attr_end;
        while let Some((end, false, _)) = attribute_at(&toks, start) {
            start = end;
        }
        let end = item_end(&toks, start);
        let words: Vec<&Kind> = toks[start..end].iter().map(|t| &t.kind).collect();
        if let Some(pos) = words.iter().position(|k| **k == Kind::Ident("mod".into())) {
            if let (Some(Kind::Ident(name)), Some(Kind::Punct(';'))) =
                (words.get(pos + 1), words.get(pos + 2))
            {
                test_mods.push(ModDecl {
                    inline: Vec::new(),
                    name: name.clone(),
                    line: toks[start + pos].line,
                });
            }
        }
        i = end;
    }
    out
}

/// If an attribute starts at `i`: (index after its `]`, is it inner `#![…]`, is it test-only).
fn attribute_at(toks: &[Tok], i: usize) -> Option<(usize, bool, bool)> {
    if toks.get(i)?.kind != Kind::Punct('#') {
        return None;
    }
    let inner = toks.get(i + 1)?.kind == Kind::Punct('!');
    let open = if inner { i + 2 } else { i + 1 };
    if toks.get(open)?.kind != Kind::Punct('[') {
        return None;
    }
    let close = matching(toks, open)?;
    let body = &toks[open + 1..close];
    let test_only = is_ident(body, 0, "cfg")
        && body.get(1).map(|t| &t.kind) == Some(&Kind::Punct('('))
        && body.last().map(|t| &t.kind) == Some(&Kind::Punct(')'))
        && cfg_is_test_only(&body[2..body.len() - 1]);
    Some((close + 1, inner, test_only))
}

/// `test`, or `all(…)` with a test-only argument. `any(test, …)` and `not(test)` are compiled
/// outside tests, so they are not test-only.
fn cfg_is_test_only(pred: &[Tok]) -> bool {
    if pred.len() == 1 {
        return is_ident(pred, 0, "test");
    }
    if !is_ident(pred, 0, "all") || pred.len() < 3 {
        return false;
    }
    split_top_level(&pred[2..pred.len() - 1])
        .iter()
        .any(|arg| cfg_is_test_only(arg))
}

fn split_top_level(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (k, t) in toks.iter().enumerate() {
        match t.kind {
            Kind::Punct('(' | '[' | '{') => depth += 1,
            Kind::Punct(')' | ']' | '}') => depth -= 1,
            Kind::Punct(',') if depth == 0 => {
                parts.push(&toks[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[start..]);
    parts
}

/// Index of the bracket closing the one at `open`.
fn matching(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t.kind {
            Kind::Punct('(' | '[' | '{') => depth += 1,
            Kind::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// Words that start an item (which ends at its `;` or its closing `}`, never at a `,`).
const ITEM_WORDS: &[&str] = &[
    "pub",
    "mod",
    "fn",
    "impl",
    "struct",
    "enum",
    "union",
    "use",
    "const",
    "static",
    "trait",
    "type",
    "macro_rules",
    "async",
    "unsafe",
    "extern",
];

/// End (exclusive) of the item, statement, field or arm starting at `start`: after its `;` or
/// its closing `}` at bracket depth 0; a field or an arm also after a `,` at depth 0; anything
/// before a bracket that closes what encloses it.
fn item_end(toks: &[Tok], start: usize) -> usize {
    let is_item = matches!(toks.get(start).map(|t| &t.kind),
        Some(Kind::Ident(w)) if ITEM_WORDS.contains(&w.as_str()));
    let mut depth = 0i32;
    for (k, t) in toks.iter().enumerate().skip(start) {
        match t.kind {
            Kind::Punct('(' | '[' | '{') => depth += 1,
            Kind::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth < 0 {
                    return k;
                }
                if depth == 0 && t.kind == Kind::Punct('}') {
                    return k + 1;
                }
            }
            Kind::Punct(';') if depth == 0 => return k + 1,
            Kind::Punct(',') if depth == 0 && !is_item => return k + 1,
            _ => {}
        }
    }
    toks.len()
}

// ---------------------------------------------------------------------------------------------
// The lexer: identifiers, `::` and single punctuation; comments and literals vanish.

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ident(String),
    PathSep,
    Punct(char),
}

#[derive(Debug, Clone)]
struct Tok {
    kind: Kind,
    line: usize,
}

fn lex(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let ident_start = |ch: char| ch == '_' || ch.is_alphabetic();
    let ident_char = |ch: char| ch == '_' || ch.is_alphanumeric();
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Skip from `i` to the end of a quoted literal whose body starts at `i`; counts lines.
    let skip_quoted = |mut i: usize, quote: char, line: &mut usize| -> usize {
        while i < c.len() && c[i] != quote {
            if c[i] == '\\' {
                i += 1;
            }
            if at(i) == '\n' {
                *line += 1;
            }
            i += 1;
        }
        i + 1
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some(after) = raw_string_start(&c, i) {
            // r"…", r#"…"#, br"…", cr#"…"#: no escapes; ends at `"` and as many `#`.
            let hashes = after - i - prefix_len(&c, i) - 1;
            i = after;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#')) {
                if c[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 1 + hashes;
        } else if ch == '"' {
            i = skip_quoted(i + 1, '"', &mut line);
        } else if (ch == 'b' || ch == 'c') && at(i + 1) == '"' {
            i = skip_quoted(i + 2, '"', &mut line);
        } else if ch == 'b' && at(i + 1) == '\'' {
            i = skip_quoted(i + 2, '\'', &mut line);
        } else if ch == '\'' {
            if at(i + 1) == '\\' || (at(i + 1) != '\0' && at(i + 2) == '\'') {
                i = skip_quoted(i + 1, '\'', &mut line); // a char literal
            } else {
                i += 1; // a lifetime or a label: its name follows as an identifier
                while ident_char(at(i)) {
                    i += 1;
                }
            }
        } else if ch == 'r' && at(i + 1) == '#' && ident_start(at(i + 2)) {
            i += 2; // a raw identifier, r#name
        } else if ident_start(ch) {
            let s = i;
            while ident_char(at(i)) {
                i += 1;
            }
            toks.push(Tok {
                kind: Kind::Ident(c[s..i].iter().collect()),
                line,
            });
        } else if ch.is_ascii_digit() {
            while ident_char(at(i)) {
                i += 1;
            }
        } else if ch == ':' && at(i + 1) == ':' {
            toks.push(Tok {
                kind: Kind::PathSep,
                line,
            });
            i += 2;
        } else {
            toks.push(Tok {
                kind: Kind::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    toks
}

/// Length of a raw-string prefix (`r`, `br`, `cr`) at `i`, or 0.
fn prefix_len(c: &[char], i: usize) -> usize {
    match (c.get(i), c.get(i + 1)) {
        (Some('b' | 'c'), Some('r')) => 2,
        (Some('r'), _) => 1,
        _ => 0,
    }
}

/// If a raw string starts at `i` (and `i` does not continue an identifier): the index after its
/// opening `"`.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    if i > 0 && (c[i - 1] == '_' || c[i - 1].is_alphanumeric()) {
        return None;
    }
    let p = prefix_len(c, i);
    if p == 0 {
        return None;
    }
    let mut k = i + p;
    while c.get(k) == Some(&'#') {
        k += 1;
    }
    (c.get(k) == Some(&'"')).then_some(k + 1)
}

// ---------------------------------------------------------------------------------------------
// The checker's own tests: each can fail.

fn refs_of(text: &str, module: &[&str]) -> Vec<String> {
    let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
    scan_file(text, &module)
        .refs
        .into_iter()
        .map(|(to, _)| to)
        .collect()
}

#[test]
fn comments_and_literals_are_not_imports() {
    let text = r####"
        // use crate::shard::ShardState;
        /// see [`crate::shard::ShardState`]
        //! crate::control
        /* crate::demo /* nested crate::testkit */ still comment crate::config */
        const A: &str = "crate::shard::X";
        const B: &str = r#"crate::shard::"X""#;
        const C: &[u8] = b"crate::shard";
        const D: char = '"';
        const E: char = '\'';
        fn f<'a>(x: &'a str) -> &'a str { x }
        #[doc = "crate::shard"]
        fn g() { crate::policy::f(); }
    "####;
    assert_eq!(refs_of(text, &["upstream"]), ["policy"]);
}

#[test]
fn test_only_code_is_skipped_and_other_cfgs_are_not() {
    let text = r#"
        #[cfg(test)]
        mod tests { use crate::shard::A; }
        #[cfg(test)] use crate::control::B;
        #[cfg(all(test, unix))]
        #[allow(dead_code)]
        fn t() { crate::testkit::x(); }
        #[cfg(not(test))] use crate::policy::C;
        #[cfg(any(test, fuzzing))] use crate::proto::D;
        struct S { #[cfg(test)] a: crate::demo::X, b: crate::tls::Y }
        fn h() { #[cfg(test)] let _x = crate::config::Z; crate::reactor::now(); }
    "#;
    assert_eq!(
        refs_of(text, &["upstream"]),
        ["policy", "proto", "tls", "reactor"]
    );
    let whole = "#![cfg(test)]\nuse crate::shard::A;\n";
    assert!(refs_of(whole, &["upstream"]).is_empty());
}

#[test]
fn groups_super_and_inline_modules_are_followed() {
    let text = r#"
        use crate::{shard::{A, B}, policy, self};
        use super::select::Either;
        use super::super::shard::C;
        mod inner {
            use super::super::super::control::D;
            use super::super::mqtt_link::E;
        }
        $crate::reactor::spawn(x);
    "#;
    assert_eq!(
        refs_of(text, &["flows", "mqtt_session"]),
        ["shard", "policy", "shard", "control", "reactor"]
    );
    // `use super::x` at the root of a top-level module climbs to the crate root.
    assert_eq!(
        refs_of("use super::shard::ShardState;", &["flows"]),
        ["shard"]
    );
    assert!(refs_of("use super::ShardState;", &["flows", "http_forward"]).is_empty());
}

#[test]
fn mod_declarations_are_found_and_test_ones_set_apart() {
    let text = "pub mod a;\nmod b { pub mod c; }\n#[cfg(test)]\nmod tests;\n";
    let scan = scan_file(text, &["x".to_string()]);
    let names: Vec<_> = scan
        .mods
        .iter()
        .map(|m| (m.inline.join("/"), m.name.as_str()))
        .collect();
    assert_eq!(names, [("".to_string(), "a"), ("b".to_string(), "c")]);
    assert_eq!(scan.test_mods.len(), 1);
    assert_eq!(scan.test_mods[0].name, "tests");
}

#[test]
fn the_order_reads_as_declared() {
    assert!(allowed("control", "shard"));
    assert!(allowed("shard", "flows"));
    assert!(allowed("flows", "upstream"));
    assert!(allowed("upstream", "tls"));
    assert!(allowed("config", "policy"));
    assert!(allowed("config", "tls"));
    assert!(allowed("demo", "testkit"));
    assert!(allowed("policy", "identity"));
    assert!(!allowed("upstream", "shard"));
    assert!(!allowed("flows", "config"));
    assert!(!allowed("shard", "config"));
    assert!(!allowed("upstream", "adapters"));
    assert!(!allowed("tls", "reactor"));
    assert!(!allowed("control", "testkit"));
    assert!(!allowed("nowhere", "policy"));
}

/// A small tree on disk: a new edge, a vanished allowlisted edge, an unlayered module and a file
/// no `mod` reaches are each reported; a test-only file is not read.
#[test]
fn a_tree_with_each_kind_of_fault_fails_with_each_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src");
    let write = |rel: &str, text: &str| {
        let path = src.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    };
    write("lib.rs", "pub mod flows;\npub mod shard;\npub mod extra;\n");
    write("flows/mod.rs", "pub mod a;\n#[cfg(test)]\nmod tests;\n");
    write("flows/a.rs", "use crate::shard::ShardState;\n");
    write("flows/tests.rs", "use crate::demo::X;\n");
    write("shard.rs", "use crate::flows::a;\n");
    write("extra.rs", "");
    write("orphan.rs", "use crate::shard::X;\n");
    let graph = scan_crate(&src);
    let verdict = judge(&graph, &[("upstream", "shard")]);
    let all = verdict.problems.join("\n");
    assert!(
        all.contains("NEW edge against the order: flows -> shard"),
        "{all}"
    );
    assert!(
        all.contains("src/flows/a.rs:1  use crate::shard::ShardState;"),
        "{all}"
    );
    assert!(all.contains("remove (\"upstream\", \"shard\")"), "{all}");
    assert!(all.contains("module `extra`"), "{all}");
    assert!(
        all.contains("src/orphan.rs is reached by no `mod`"),
        "{all}"
    );
    assert!(!all.contains("demo"), "test-only file was read: {all}");
    assert_eq!(verdict.problems.len(), 4, "{all}");
    // With the edge listed and the unlayered module and the orphan gone, it passes.
    fs::remove_file(src.join("orphan.rs")).expect("rm");
    fs::remove_file(src.join("extra.rs")).expect("rm");
    write("lib.rs", "pub mod flows;\npub mod shard;\n");
    let verdict = judge(&scan_crate(&src), &[("flows", "shard")]);
    assert!(verdict.problems.is_empty(), "{:?}", verdict.problems);
}
