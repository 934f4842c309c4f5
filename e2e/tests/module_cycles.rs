//! No module cycles in any crate of the workspace. A cycle (`a` uses `b`, `b` uses `a`) makes
//! two modules one unit that can only be read, tested and changed together; this test keeps
//! them out once removed.
//!
//! Edges are the `crate::…` and `super::…` paths of each module's non-test code (everything
//! before its first `#[cfg(test)]`), resolved to the longest module path they name; a module's
//! edges to its own submodules through relative paths are not counted. Plain text, no parser:
//! comments are skipped line by line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 5] = ["protocol", "operator", "worker", "kubectl-funcscale", "e2e"];

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`; the crate roots → "".
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    if parts.first().is_some_and(|p| p == "bin") {
        // each binary is a crate of its own
        return String::new();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The paths after `crate::` / `super::` in `code`, as segment lists (`super` kept).
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let line = line.split(" //").next().unwrap_or("");
        for (i, _) in line
            .match_indices("crate::")
            .chain(line.match_indices("super::"))
        {
            let before = line[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let segs: Vec<String> = line[i..]
                .split("::")
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|s| !s.is_empty())
                .collect();
            out.push(segs);
        }
    }
    out
}

/// The module a path names: the longest known module prefix, `super` resolved from `from`.
fn target(from: &str, segs: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<String> = if segs[0] == "crate" {
        vec![]
    } else {
        from.split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let mut rest = segs;
    if rest[0] == "crate" {
        rest = &rest[1..];
    }
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    let mut best = None;
    for n in 0..=rest.len() {
        let mut cand = base.clone();
        cand.extend(rest[..n].iter().cloned());
        let name = cand.join("::");
        if modules.contains(&name) {
            best = Some(name);
        }
    }
    best.filter(|m| !m.is_empty())
}

/// A cycle in `graph`, if any (as the modules along it).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn graph_of(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        if f.strip_prefix(&src).unwrap().starts_with("bin") {
            continue;
        }
        let from = module_of(&src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let edges = graph.entry(from.clone()).or_default();
        for segs in paths(code) {
            if let Some(to) = target(&from, &segs, &modules)
                && to != from
                // a module's own submodules are part of it
                && !to.starts_with(&format!("{from}::"))
                && !from.is_empty()
            {
                edges.insert(to);
            }
        }
    }
    graph
}

/// The modules each module reaches.
fn reach(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    graph
        .keys()
        .map(|n| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![n.clone()];
            while let Some(m) = todo.pop() {
                for k in graph.get(&m).into_iter().flatten() {
                    if seen.insert(k.clone()) {
                        todo.push(k.clone());
                    }
                }
            }
            (n.clone(), seen)
        })
        .collect()
}

/// The groups of modules that use each other (strongly connected, more than one module).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    let r = reach(graph);
    let mut out = BTreeSet::new();
    for n in graph.keys() {
        let group: Vec<String> = graph
            .keys()
            .filter(|m| m == &n || (r[n].contains(*m) && r[*m].contains(n)))
            .cloned()
            .collect();
        if group.len() > 1 {
            out.insert(group);
        }
    }
    out
}

/// Cycles not removed yet, each to go with the change that removes it (the test fails when
/// a listed cycle is gone, so the list cannot stay as an allowance). None left.
const KNOWN: [(&str, &[&str]); 0] = [];

#[test]
fn no_module_cycles() {
    let mut problems = Vec::new();
    for krate in CRATES {
        let graph = graph_of(krate);
        assert!(
            graph.len() > 1 || krate == "e2e",
            "{krate}: no modules read"
        );
        let known: BTreeSet<Vec<String>> = KNOWN
            .iter()
            .filter(|(k, _)| *k == krate)
            .map(|(_, m)| m.iter().map(|s| s.to_string()).collect())
            .collect();
        let found = cycles(&graph);
        for c in found.difference(&known) {
            let path = find_cycle(
                &graph
                    .iter()
                    .filter(|(n, _)| c.contains(n))
                    .map(|(n, e)| {
                        (
                            n.clone(),
                            e.intersection(&c.iter().cloned().collect())
                                .cloned()
                                .collect(),
                        )
                    })
                    .collect(),
            )
            .unwrap_or_default();
            problems.push(format!(
                "{krate}: modules that use each other: {} (e.g. {})",
                c.join(", "),
                path.join(" → ")
            ));
        }
        for c in known.difference(&found) {
            problems.push(format!(
                "{krate}: {} no longer a cycle: take it out of KNOWN",
                c.join(", ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(
        cycles(&g),
        BTreeSet::from([vec!["a".to_string(), "b".into(), "c".into()]])
    );
    let modules: BTreeSet<String> = ["", "pool", "pool::validate", "context"]
        .into_iter()
        .map(String::from)
        .collect();
    let p = paths(
        "use super::validate::Valid;\nlet c = crate::context::Context::new();\n// crate::nope\n",
    );
    assert_eq!(
        target("pool::build", &p[0], &modules).as_deref(),
        Some("pool::validate")
    );
    assert_eq!(
        target("pool::build", &p[1], &modules).as_deref(),
        Some("context")
    );
    assert_eq!(p.len(), 2);
}
