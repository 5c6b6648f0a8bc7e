//! The bridge's modules import each other one way only.
//!
//! Reads every `crate::`, `super::` and child-module path in `src/`, maps each to the module
//! file it names, and fails on a cycle, printing it. Also checks the rules `docs/architecture.md`
//! states: nothing imports the router's module (`app`), the login area does not reach into the
//! OAuth, admin or Kubernetes areas, and the HTTP layer knows no area.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `src/lib.rs` is the crate root, "".
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The text without comments and string literals, so that paths in docs and messages are not
/// counted.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'r' && matches!(b.get(i + 1), Some(b'"' | b'#')) {
            // A raw string: r"…", r#"…"#, closed by a quote and as many hashes as opened it.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            while j < b.len() {
                if b[j] == b'"' && b[j + 1..].iter().take_while(|c| **c == b'#').count() >= hashes {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'') {
            i += 4;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path a file's code names, expanded from `use a::{b, c::{d}}` groups, as written.
fn paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let stmt_start = &rest[at + 4..];
        let end = stmt_start.find(';').unwrap_or(stmt_start.len());
        expand("", &stmt_start[..end], &mut found);
        rest = &stmt_start[end..];
    }
    // Paths used inline, outside `use`.
    let bytes = code.as_bytes();
    for (i, _) in code.match_indices("::") {
        let mut s = i;
        while s > 0
            && (bytes[s - 1].is_ascii_alphanumeric()
                || bytes[s - 1] == b'_'
                || bytes[s - 1] == b':')
        {
            s -= 1;
        }
        let mut e = i + 2;
        while e < bytes.len()
            && (bytes[e].is_ascii_alphanumeric() || bytes[e] == b'_' || bytes[e] == b':')
        {
            e += 1;
        }
        found.push(code[s..e].trim_end_matches(':').to_owned());
    }
    found
}

fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&head, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&head, &inner[start..], out);
    } else if !tree.is_empty() {
        let path = format!("{prefix}{tree}");
        let path = path.split(" as ").next().unwrap_or_default().trim();
        out.push(path.trim_end_matches("::self").to_owned());
    }
}

/// The module a path lands in: the longest prefix that is one of `modules`.
fn resolve(
    path: &str,
    here: &str,
    children: &BTreeSet<String>,
    modules: &BTreeSet<String>,
) -> Option<String> {
    let segs: Vec<&str> = path.split("::").map(str::trim).collect();
    let mut abs: Vec<String> = match segs.first().copied() {
        Some("crate") => Vec::new(),
        Some("super") => {
            let mut m: Vec<String> = here
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            m.pop();
            m
        }
        Some("self") => here
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(first) if children.contains(first) => {
            let mut m: Vec<String> = here
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            m.push(first.to_owned());
            return Some(m.join("::"))
                .filter(|m| modules.contains(m))
                .or(None)
                .map(|m| {
                    let mut full = m.clone();
                    for s in &segs[1..] {
                        let next = format!("{full}::{s}");
                        if modules.contains(&next) {
                            full = next;
                        } else {
                            break;
                        }
                    }
                    full
                });
        }
        _ => return None,
    };
    let start = usize::from(matches!(
        segs.first().copied(),
        Some("crate" | "super" | "self")
    ));
    // `super::item` names the parent module itself.
    let mut best = Some(abs.join("::")).filter(|m| !m.is_empty() && modules.contains(m));
    for s in &segs[start..] {
        if *s == "super" {
            abs.pop();
            continue;
        }
        abs.push((*s).to_owned());
        let m = abs.join("::");
        if modules.contains(&m) {
            best = Some(m);
        } else {
            break;
        }
    }
    best
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeSet<String> = all.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &all {
        let here = module_of(&src, f);
        let code = code_only(&std::fs::read_to_string(f).expect("read"));
        // A file's tests (its `mod tests`, last by convention) may use anything.
        let code = match code.find("#[cfg(test)]\nmod tests") {
            Some(at) => code[..at].to_owned(),
            None => code,
        };
        let children: BTreeSet<String> = modules
            .iter()
            .filter_map(|m| {
                let rest = if here.is_empty() {
                    Some(m.as_str())
                } else {
                    m.strip_prefix(&format!("{here}::"))
                }?;
                (!rest.contains("::") && !rest.is_empty()).then(|| rest.to_owned())
            })
            .collect();
        let found = paths(&code);
        // Modules brought in by `use` (`use crate::http;`), so that `http::body::x` below counts
        // as an edge to `http::body`.
        let mut aliases: BTreeMap<String, String> = BTreeMap::new();
        for p in &found {
            if p.starts_with("crate::")
                && let Some(m) = resolve(p, &here, &children, &modules)
                && let Some(last) = p.rsplit("::").next()
                && m.rsplit("::").next() == Some(last)
            {
                aliases.insert(last.to_owned(), m);
            }
        }
        let to = edges.entry(here.clone()).or_default();
        for p in found {
            let p = match p.split_once("::") {
                Some((first, rest)) if !children.contains(first) => match aliases.get(first) {
                    Some(m) => format!("crate::{m}::{rest}"),
                    None => p,
                },
                _ => p,
            };
            if let Some(m) = resolve(&p, &here, &children, &modules)
                && m != here
            {
                to.insert(m);
            }
        }
    }
    edges
}

fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied() {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str()) {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, edges, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn area(m: &str) -> &str {
    m.split("::").next().unwrap_or(m)
}

#[test]
fn no_module_imports_in_a_cycle() {
    let mut edges = graph();
    // The crate root declares and re-exports; nothing imports it back, so it cannot close a
    // cycle, and its re-exports are not dependencies.
    edges.remove("");
    assert!(
        edges.contains_key("login::password"),
        "the scan found the modules: {:?}",
        edges.keys()
    );
    if let Some(c) = cycle(&edges) {
        panic!("modules import each other in a cycle: {}", c.join(" -> "));
    }
}

#[test]
fn the_areas_depend_one_way() {
    let edges = graph();
    for (from, to) in &edges {
        for t in to {
            assert!(
                t != "app" || from.is_empty(),
                "{from} imports the router's module `app`"
            );
            if area(from) == "login" {
                assert!(
                    !matches!(area(t), "oauth" | "admin" | "kube"),
                    "{from} (login) imports {t}: logins end in the token service, not in another area"
                );
            }
            if matches!(area(from), "kube" | "oauth" | "login" | "admin" | "observe") {
                let to = area(t);
                assert!(
                    to == area(from)
                        || matches!(to, "http" | "state" | "settings")
                        || (area(from) == "oauth" && to == "login"),
                    "{from} imports {t}: an area uses only its own modules, `http`, `state` and \
                     `settings` (and `oauth` the `login` area); move what both need into `http`"
                );
            }
            if matches!(from.as_str(), "state" | "settings") {
                // Shared state, below every handler: it may hold an area's state types, never
                // reach its handlers.
                assert!(
                    matches!(
                        t.as_str(),
                        "state"
                            | "settings"
                            | "observe::metrics"
                            | "login::throttle"
                            | "login::upstream"
                    ) || area(t) == "http",
                    "{from} imports {t}: shared state must not reach into an area's handlers"
                );
            }
            if area(from) == "http" {
                assert!(
                    matches!(area(t), "http" | "state" | "settings"),
                    "{from} (http) imports {t}: the HTTP layer knows no area"
                );
            }
        }
    }
}
