//! No module dependency cycles in any crate of the workspace (issue 12).
//!
//! Lives in the protocol crate because it is the smallest one the test run always builds; it
//! checks every member listed in the root `Cargo.toml`, so a new crate is covered by itself.
//!
//! What counts as a dependency: a path that starts with `crate::`, `super::` or `self::`
//! (in a `use` tree or anywhere in the code, `#[cfg(test)]` modules included) from a module to
//! the module that path names; a name a module re-exports (`pub use`, `pub(crate) use`) names
//! the module that defines it (`crate::TaskStatus`, re-exported at the root from `task_status`,
//! is a dependency on `task_status`, not on the root). An edge between two modules is lifted to the two sibling modules
//! under their nearest common parent (`pool::validate::rules` → `pool::dereference` counts as
//! `pool::validate` → `pool::dereference`); an edge between a module and one of its own ancestors
//! or descendants is nesting, not a dependency, and is left out. A cycle is a strongly connected
//! component of more than one module. The library tree (`src/lib.rs` and what lies below it) is
//! read; `src/main.rs` and `src/bin/` hold no modules in this workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;
/// Tokens with their line numbers.
type Toks = Vec<(Tok, usize)>;

/// One `crate::`/`super::`/`self::` reference: from which module, to which module, and where.
#[derive(Debug, Clone)]
struct Reference {
    from: ModPath,
    to: ModPath,
    file: String,
    line: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Sep, // `::`
    Open,
    Close,
    Comma,
    Other(char),
}

/// Tokens of Rust source without comments, string/char literals and numbers, with line numbers.
fn lex(src: &str) -> Toks {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0usize, 1usize, Vec::new());
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
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
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"'
            || ((ch == 'r' || ch == 'b') && (at(i + 1) == '"' || at(i + 1) == '#'))
            || (ch == 'b' && at(i + 1) == 'r' && (at(i + 2) == '"' || at(i + 2) == '#'))
        {
            // (byte/raw) string literal
            let mut j = i;
            let mut raw = false;
            while c[j] != '"' && c[j] != '#' {
                raw |= c[j] == 'r';
                j += 1;
            }
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                // `r#ident` or `b#`: an identifier after all
                out.push((Tok::Ident(ident_at(&c, j).0), line));
                i = ident_at(&c, j).1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '\n' {
                    line += 1;
                }
                if !raw && c[j] == '\\' {
                    line += usize::from(at(j + 1) == '\n');
                    j += 2;
                    continue;
                }
                if c[j] == '"' && (0..hashes).all(|h| at(j + 1 + h) == '#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1; // a lifetime: its name follows as an identifier
            }
        } else if ch == 'b' && at(i + 1) == '\'' {
            i += 1; // byte literal: the quote is handled next round
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                if c[i] == '.' && !at(i + 1).is_ascii_digit() {
                    break;
                }
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let (id, j) = ident_at(&c, i);
            out.push((Tok::Ident(id), line));
            i = j;
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            out.push((
                match ch {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    ',' => Tok::Comma,
                    other => Tok::Other(other),
                },
                line,
            ));
            i += 1;
        }
    }
    out
}

fn ident_at(c: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
        i += 1;
    }
    (c[start..i].iter().collect(), i)
}

/// One path of a path tree: its segments, the name it is imported as (`as name`), and whether
/// it ends in a glob (`a::*`).
#[derive(Debug, Clone, Default)]
struct Leaf {
    path: Vec<String>,
    alias: Option<String>,
    glob: bool,
}

/// The paths of a path tree starting at `toks[i]` (a segment after `crate::` etc.): `a::b`,
/// `a::{b, c::d as e}`, `{a, b}`, `a::*`; returns the expanded paths and the index after the tree.
fn path_tree(toks: &[(Tok, usize)], mut i: usize) -> (Vec<Leaf>, usize) {
    let tok = |i: usize| toks.get(i).map(|t| &t.0);
    let mut prefix = Vec::new();
    loop {
        match tok(i) {
            Some(Tok::Ident(id)) => {
                prefix.push(id.clone());
                i += 1;
                if tok(i) == Some(&Tok::Sep) {
                    i += 1;
                    continue;
                }
                let mut alias = None;
                if tok(i) == Some(&Tok::Ident("as".into()))
                    && let Some(Tok::Ident(name)) = tok(i + 1)
                {
                    alias = Some(name.clone());
                    i += 2;
                }
                let leaf = Leaf {
                    path: prefix,
                    alias,
                    glob: false,
                };
                return (vec![leaf], i);
            }
            Some(Tok::Open) => {
                let mut all = Vec::new();
                i += 1;
                loop {
                    match tok(i) {
                        Some(Tok::Close) => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Comma) => i += 1,
                        None => break,
                        _ => {
                            let (leaves, next) = path_tree(toks, i);
                            for mut leaf in leaves {
                                let mut full = prefix.clone();
                                full.extend(leaf.path);
                                leaf.path = full;
                                all.push(leaf);
                            }
                            // skip anything else up to the next `,` or `}`
                            i = next.max(i + 1);
                            while !matches!(tok(i), None | Some(Tok::Comma) | Some(Tok::Close)) {
                                i += 1;
                            }
                        }
                    }
                }
                return (all, i);
            }
            other => {
                // `*` or the end of the path
                let glob = other == Some(&Tok::Other('*'));
                let leaf = Leaf {
                    path: prefix,
                    alias: None,
                    glob,
                };
                return (vec![leaf], i + usize::from(glob));
            }
        }
    }
}

/// Re-exports: (module, name) → (the module whose `pub use` names it, the path it names).
type Reexports = BTreeMap<(ModPath, String), (ModPath, Vec<String>)>;

/// The module a path names: the longest prefix of it (resolved against `current`) that is a
/// known module, following re-exports: a name a module re-exports (`pub use records::TaskStatus`
/// in the root) stands for the module that defines it, so `crate::TaskStatus` names `records`.
fn resolve(
    current: &[String],
    path: &[String],
    modules: &BTreeSet<ModPath>,
    reexports: &Reexports,
) -> Option<ModPath> {
    resolve_at(current, path, modules, reexports, 0)
}

fn resolve_at(
    current: &[String],
    path: &[String],
    modules: &BTreeSet<ModPath>,
    reexports: &Reexports,
    depth: usize,
) -> Option<ModPath> {
    let mut segs = path.iter().peekable();
    let mut base: ModPath = match segs.next()?.as_str() {
        "crate" => Vec::new(),
        "self" => current.to_vec(),
        "super" => current[..current.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    while segs.peek().map(|s| s.as_str()) == Some("super") {
        segs.next();
        base.pop()?;
    }
    for seg in segs {
        let mut next = base.clone();
        next.push(seg.clone());
        if modules.contains(&next) {
            base = next;
            continue;
        }
        // a re-exported name: continue in the module it comes from (a chain of re-exports
        // is followed a few steps; a loop of them is a compile error anyway)
        match reexports.get(&(base.clone(), seg.clone())) {
            Some((at, target)) if depth < 8 => {
                match resolve_at(at, target, modules, reexports, depth + 1) {
                    Some(defined_in) => base = defined_in,
                    None => break,
                }
            }
            _ => break,
        }
    }
    Some(base)
}

/// The re-exports of a crate: every `pub use` / `pub(crate) use` (at any module level) of an
/// item or module of the crate itself (`pub use self::x::Y`, `pub use x::{A, B as C}`,
/// `pub use crate::x::Y`, `pub use super::x::Y`). Globs (`pub use x::*`), `self` in a brace
/// list, and paths into other crates are left out.
fn reexports(lexed: &[(ModPath, String, Toks)], modules: &BTreeSet<ModPath>) -> Reexports {
    let mut out = Reexports::new();
    for (module, _, toks) in lexed {
        walk(module, toks, |current, i, _| {
            if toks[i].0 != Tok::Ident("use".into()) || !after_pub(toks, i) {
                return;
            }
            let (leaves, _) = path_tree(toks, i + 1);
            for leaf in leaves {
                let Some(last) = leaf.path.last() else {
                    continue;
                };
                if leaf.glob || last == "self" {
                    continue;
                }
                let name = leaf.alias.clone().unwrap_or_else(|| last.clone());
                let mut path = leaf.path.clone();
                if !matches!(path[0].as_str(), "crate" | "self" | "super") {
                    // 2018 paths: `x::Y` names the child module `x`, else another crate
                    let mut child = current.to_vec();
                    child.push(path[0].clone());
                    if !modules.contains(&child) {
                        continue;
                    }
                    path.insert(0, "self".into());
                }
                out.insert((current.to_vec(), name), (current.to_vec(), path));
            }
        });
    }
    out
}

/// Whether the `use` at `toks[i]` is preceded by `pub` or `pub(...)`.
fn after_pub(toks: &[(Tok, usize)], i: usize) -> bool {
    let pub_at = |j: usize| toks[j].0 == Tok::Ident("pub".into());
    if i >= 1 && pub_at(i - 1) {
        return true;
    }
    if i >= 1 && toks[i - 1].0 == Tok::Other(')') {
        let mut j = i - 1;
        while j > 0 && toks[j].0 != Tok::Other('(') {
            j -= 1;
        }
        return j >= 1 && i - j <= 5 && pub_at(j - 1);
    }
    false
}

/// The module path of a file below `src/`: `lib.rs` → root, `a.rs`/`a/mod.rs` → `a`, `a/b.rs` → `a::b`.
fn file_module(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// All references in one crate, given its files as (path relative to src/, source).
fn references(files: &[(PathBuf, String)]) -> (BTreeSet<ModPath>, Vec<Reference>) {
    let lexed: Vec<(ModPath, String, Toks)> = files
        .iter()
        .map(|(rel, src)| (file_module(rel), rel.display().to_string(), lex(src)))
        .collect();
    // known modules: the files, and inline `mod name {` blocks
    let mut modules: BTreeSet<ModPath> = BTreeSet::new();
    for (module, _, toks) in &lexed {
        modules.insert(module.clone());
        walk(module, toks, |current, _, _| {
            modules.insert(current.to_vec());
        });
    }
    let reexports = reexports(&lexed, &modules);
    let mut refs = Vec::new();
    for (module, file, toks) in &lexed {
        walk(module, toks, |current, i, line| {
            let Some(Tok::Ident(head)) = toks.get(i).map(|t| &t.0) else {
                return;
            };
            if !matches!(head.as_str(), "crate" | "super" | "self")
                || toks.get(i + 1).map(|t| &t.0) != Some(&Tok::Sep)
                || (i > 0 && toks[i - 1].0 == Tok::Sep)
            {
                return;
            }
            let (paths, _) = path_tree(toks, i + 2);
            for tail in paths {
                let mut path = vec![head.clone()];
                path.extend(tail.path);
                if let Some(to) = resolve(current, &path, &modules, &reexports) {
                    refs.push(Reference {
                        from: current.to_vec(),
                        to,
                        file: file.clone(),
                        line,
                    });
                }
            }
        });
    }
    (modules, refs)
}

/// Calls `f(current module, token index, line)` for every token, tracking inline `mod x { }`.
fn walk(file_module: &[String], toks: &[(Tok, usize)], mut f: impl FnMut(&[String], usize, usize)) {
    let mut current = file_module.to_vec();
    let mut depth = 0usize;
    let mut open_at: Vec<usize> = Vec::new(); // brace depth at which each inline module opened
    for (i, (tok, line)) in toks.iter().enumerate() {
        match tok {
            Tok::Open => {
                depth += 1;
                if i >= 2
                    && toks[i - 2].0 == Tok::Ident("mod".into())
                    && let Tok::Ident(name) = &toks[i - 1].0
                {
                    current.push(name.clone());
                    open_at.push(depth);
                }
            }
            Tok::Close => {
                if open_at.last() == Some(&depth) {
                    open_at.pop();
                    current.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        f(&current, i, *line);
    }
}

/// The strongly connected components (more than one module) of the sibling-lifted graph, each
/// with the references that make its edges.
fn cycles(refs: &[Reference]) -> Vec<String> {
    let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, Vec<&Reference>>> = BTreeMap::new();
    for r in refs {
        let common = r.from.iter().zip(&r.to).take_while(|(a, b)| a == b).count();
        if common == r.from.len() || common == r.to.len() {
            continue; // the same module, or nesting
        }
        let (a, b) = (r.from[..=common].to_vec(), r.to[..=common].to_vec());
        edges.entry(b.clone()).or_default();
        edges.entry(a).or_default().entry(b).or_default().push(r);
    }
    let nodes: Vec<&ModPath> = edges.keys().collect();
    let index_of = |m: &ModPath| nodes.iter().position(|n| *n == m).unwrap();
    // Tarjan
    struct St {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        sccs: Vec<Vec<usize>>,
    }
    let adj: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| edges[*n].keys().map(index_of).collect())
        .collect();
    fn visit(v: usize, adj: &[Vec<usize>], st: &mut St) {
        st.index[v] = Some(st.next);
        st.low[v] = st.next;
        st.next += 1;
        st.stack.push(v);
        st.on[v] = true;
        for &w in &adj[v] {
            match st.index[w] {
                None => {
                    visit(w, adj, st);
                    st.low[v] = st.low[v].min(st.low[w]);
                }
                Some(iw) if st.on[w] => st.low[v] = st.low[v].min(iw),
                _ => {}
            }
        }
        if Some(st.low[v]) == st.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            st.sccs.push(scc);
        }
    }
    let n = nodes.len();
    let mut st = St {
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for v in 0..n {
        if st.index[v].is_none() {
            visit(v, &adj, &mut st);
        }
    }
    let name = |m: &ModPath| {
        if m.is_empty() {
            "crate".to_string()
        } else {
            m.join("::")
        }
    };
    let mut out = Vec::new();
    for scc in st.sccs.into_iter().filter(|s| s.len() > 1) {
        let members: BTreeSet<usize> = scc.iter().copied().collect();
        let mut lines = vec![format!(
            "cycle: {}",
            members
                .iter()
                .map(|&m| name(nodes[m]))
                .collect::<Vec<_>>()
                .join(" <-> ")
        )];
        for &m in &members {
            for (to, rs) in &edges[nodes[m]] {
                if members.contains(&index_of(to)) {
                    let r = rs[0];
                    lines.push(format!(
                        "  {} -> {}: {}:{} ({} -> {}{})",
                        name(nodes[m]),
                        name(to),
                        r.file,
                        r.line,
                        name(&r.from),
                        name(&r.to),
                        if rs.len() > 1 {
                            format!(", +{} more", rs.len() - 1)
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
        out.push(lines);
    }
    out.into_iter().map(|l| l.join("\n")).collect()
}

fn rs_files(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(base).unwrap().to_path_buf();
        if p.is_dir() {
            if rel != Path::new("bin") {
                rs_files(&p, base, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") && rel != Path::new("main.rs") {
            out.push((rel, fs::read_to_string(&p).unwrap()));
        }
    }
}

fn workspace_members(root: &Path) -> Vec<String> {
    let toml = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let start = toml
        .find("members")
        .expect("a members list in the root Cargo.toml");
    let list = &toml[start..];
    let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    list.split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn no_module_cycles_in_any_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let members = workspace_members(root);
    assert!(members.len() >= 4, "members: {members:?}");
    let mut found = Vec::new();
    for member in &members {
        let src = root.join(member).join("src");
        let mut files = Vec::new();
        rs_files(&src, &src, &mut files);
        assert!(!files.is_empty(), "no sources in {}", src.display());
        let (_, refs) = references(&files);
        for c in cycles(&refs) {
            found.push(format!("{member}: {c}"));
        }
    }
    assert!(
        found.is_empty(),
        "module dependency cycles:\n{}",
        found.join("\n")
    );
}

fn files(list: &[(&str, &str)]) -> Vec<(PathBuf, String)> {
    list.iter()
        .map(|(p, s)| (PathBuf::from(p), s.to_string()))
        .collect()
}

#[test]
fn finds_a_cycle_between_siblings_and_through_submodules() {
    let src = files(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("a.rs", "use crate::b::{x, y as z};"),
        ("b/mod.rs", "pub mod inner;"),
        ("b/inner.rs", "fn f() { crate::c::g(); }"),
        ("c.rs", "use super::{a::A, b};"),
    ]);
    let (_, refs) = references(&src);
    let found = cycles(&refs);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cycle: a <-> b <-> c"), "{}", found[0]);
    assert!(
        found[0].contains("b/inner.rs:1 (b::inner -> c)"),
        "{}",
        found[0]
    );
}

#[test]
fn finds_a_cycle_between_submodules_and_from_a_test_module() {
    let src = files(&[
        ("lib.rs", "pub mod pool;"),
        (
            "pool/mod.rs",
            "mod validate; mod dereference; use validate::v;",
        ),
        ("pool/validate.rs", "use super::dereference::Pointed;"),
        (
            "pool/dereference.rs",
            "fn f() {}\n#[cfg(test)]\nmod tests {\n use super::*;\n use crate::pool::validate::v;\n}",
        ),
    ]);
    let (modules, refs) = references(&src);
    assert!(modules.contains(&vec![
        "pool".to_string(),
        "dereference".into(),
        "tests".into()
    ]));
    let found = cycles(&refs);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cycle: pool::dereference <-> pool::validate"));
    assert!(found[0].contains("pool/dereference.rs:5"), "{}", found[0]);
}

#[test]
fn nesting_strings_comments_and_one_way_use_are_no_cycle() {
    let src = files(&[
        ("lib.rs", "pub mod a; pub mod b; pub use a::A;"),
        (
            "a/mod.rs",
            "pub mod sub; use crate::b::B; use self::sub::S;\n// crate::b is fine, and so is crate::a::sub\n",
        ),
        (
            "a/sub.rs",
            "use super::A; use crate::a::X; const T: &str = \"crate::b::B\"; fn f<'a>(c: char) -> bool { c == '{' }",
        ),
        (
            "b.rs",
            "/* use crate::a::A; */ const R: &str = r#\"crate::a::A \"quoted\" \"#; fn g() { let s = self::h; }",
        ),
    ]);
    let (_, refs) = references(&src);
    assert!(cycles(&refs).is_empty(), "{:?}", cycles(&refs));
    assert!(refs.iter().any(|r| r.from == ["a"] && r.to == ["b"]));
}

#[test]
fn finds_a_cycle_through_re_exports() {
    // `crate::A` and `crate::Bee` are re-exports at the root: they name `a` and `b`, not the root
    let src = files(&[
        (
            "lib.rs",
            "pub mod a; pub mod b; pub mod c;\npub use a::A;\npub use self::b::{B as Bee, self};",
        ),
        ("a.rs", "pub struct A;\nuse crate::Bee;"),
        ("b.rs", "pub struct B;\nfn f() { crate::A::new(); }"),
        // a chain: `c` re-exports `crate::A` again, and `pub(crate) use crate::x::Y` is one too
        ("c.rs", "pub(crate) use crate::A as CA;"),
    ]);
    let (_, refs) = references(&src);
    let found = cycles(&refs);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cycle: a <-> b\n"), "{}", found[0]);
    assert!(found[0].contains("b.rs:2 (b -> a)"), "{}", found[0]);
    let src = files(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c;\npub use a::A;"),
        ("a.rs", "pub struct A;\nuse crate::c::CA;\nuse crate::b::B;"),
        ("b.rs", "pub struct B;\nfn f() { crate::c::CA::new(); }"),
        ("c.rs", "pub(crate) use crate::A as CA;"),
    ]);
    let (_, refs) = references(&src);
    let found = cycles(&refs);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cycle: a <-> b\n"), "{}", found[0]);
}
