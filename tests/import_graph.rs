//! The source files' import graph has no cycles (docs/architecture.md): every `crate::…`,
//! `super::…` and `self::…` path in code (comments, strings and `#[cfg(test)]` items excluded: unit
//! tests may use `crate::testing`) is resolved to the file that defines the module it names, giving
//! an edge "file → file". A `pub use` of a child module's items in a `mod.rs` is namespace
//! plumbing, not a dependency, and is not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code without comments and string literals (good enough for path scanning).
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '/' && i + 1 < b.len() && b[i + 1] == '/' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if b[i] == '/' && i + 1 < b.len() && b[i + 1] == '*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == '\'' && i + 2 < b.len() && (b[i + 2] == '\'' || b[i + 1] == '\\') {
            // a char literal such as 'x' or '\n'
            i += 1;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The file defining the module a path names: `start_dir` is the directory of the module the path
/// is relative to, `start_file` its file; segments are followed while they name module files.
/// `code` without the items marked `#[cfg(test)]` (up to their closing brace or semicolon).
fn strip_cfg_test(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn resolve(start_dir: &Path, start_file: &Path, segs: &[String]) -> PathBuf {
    let mut dir = start_dir.to_path_buf();
    let mut file = start_file.to_path_buf();
    for s in segs {
        let f = dir.join(format!("{s}.rs"));
        let m = dir.join(s).join("mod.rs");
        if f.is_file() {
            file = f;
            dir = dir.join(s);
        } else if m.is_file() {
            file = m;
            dir = dir.join(s);
        } else {
            break;
        }
    }
    file
}

/// (directory, file) of the module `file` defines.
fn module_of(src: &Path, file: &Path) -> (PathBuf, PathBuf) {
    let name = file.file_name().unwrap().to_str().unwrap();
    let parent = file.parent().unwrap();
    if name == "mod.rs" || (parent == src && (name == "lib.rs" || name == "main.rs")) {
        (parent.to_path_buf(), file.to_path_buf())
    } else {
        (
            parent.join(name.trim_end_matches(".rs")),
            file.to_path_buf(),
        )
    }
}

/// (directory, file) of the parent module.
fn parent_module(src: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let up = dir.parent().unwrap();
    if up == src {
        return (src.to_path_buf(), src.join("lib.rs"));
    }
    let as_file = up.with_extension("rs");
    let mod_rs = up.join("mod.rs");
    (
        up.to_path_buf(),
        if mod_rs.is_file() { mod_rs } else { as_file },
    )
}

fn edges(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    };
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for f in &files {
        let code = strip_cfg_test(&strip(&std::fs::read_to_string(f).unwrap()));
        let (mdir, mfile) = module_of(src, f);
        let is_mod_rs = f.file_name().unwrap() == "mod.rs" || f.ends_with("lib.rs");
        let mut targets = BTreeSet::new();
        for stmt_start in 0..code.len() {
            if !code.is_char_boundary(stmt_start) {
                continue;
            }
            let rest = &code[stmt_start..];
            let root = ["crate::", "super::", "self::"]
                .into_iter()
                .find(|r| rest.starts_with(r));
            let Some(root) = root else { continue };
            let prev = code[..stmt_start].chars().next_back().unwrap_or(' ');
            if prev.is_alphanumeric() || prev == '_' || prev == ':' {
                continue;
            }
            // `pub use child::…` in a mod.rs re-exports; not a dependency
            let line_start = code[..stmt_start].rfind('\n').map_or(0, |i| i + 1);
            let line = code[line_start..stmt_start].trim();
            let reexport = is_mod_rs && line.starts_with("pub use") && root == "self::";
            // the path: identifiers and `::`, then optionally one `{…}` group
            let body = &rest[root.len()..];
            let end = body
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(body.len());
            let mut path = ident(&body[..end]);
            let mut groups: Vec<Vec<String>> = vec![vec![]];
            if body[..end].ends_with("::") && body[end..].starts_with('{') {
                let close = body[end..].find('}').map_or(body.len(), |i| end + i);
                groups = body[end + 1..close]
                    .split(',')
                    .map(|item| {
                        ident(
                            item.trim()
                                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                                .next()
                                .unwrap_or(""),
                        )
                    })
                    .collect();
            }
            let (mut dir, mut file) = match root {
                "crate::" => (src.to_path_buf(), src.join("lib.rs")),
                "self::" => (mdir.clone(), mfile.clone()),
                _ => parent_module(src, &mdir),
            };
            // more leading `super::`
            while path.first().map(String::as_str) == Some("super") {
                path.remove(0);
                (dir, file) = parent_module(src, &dir);
            }
            for grp in groups {
                let mut segs = path.clone();
                segs.extend(grp);
                let t = resolve(&dir, &file, &segs);
                let child_of_self = t.starts_with(&mdir) && is_mod_rs;
                if t != *f
                    && !t.ends_with("lib.rs")
                    && !t.ends_with("main.rs")
                    && !(reexport || (child_of_self && line.starts_with("pub use")))
                {
                    targets.insert(t);
                }
            }
        }
        g.insert(f.clone(), targets);
    }
    g
}

fn find_cycle(g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        n: &PathBuf,
        g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|x| x == m).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_source_import_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = edges(&src);
    let n_edges: usize = g.values().map(|s| s.len()).sum();
    // the scan must see the obvious edges, or it would pass vacuously
    assert!(n_edges > 100, "only {n_edges} import edges found");
    let rel = |p: &Path| p.strip_prefix(&src).unwrap().display().to_string();
    assert!(
        g[&src.join("experiments/clip.rs")].contains(&src.join("experiments/harness.rs")),
        "clip.rs → harness.rs not found: {:?}",
        g[&src.join("experiments/clip.rs")]
            .iter()
            .map(|p| rel(p))
            .collect::<Vec<_>>()
    );
    if std::env::var_os("EQUIRUN_PRINT_IMPORTS").is_some() {
        for (f, ts) in &g {
            for t in ts {
                println!("{} -> {}", rel(f), rel(t));
            }
        }
    }
    if let Some(c) = find_cycle(&g) {
        panic!(
            "import cycle: {}",
            c.iter().map(|p| rel(p)).collect::<Vec<_>>().join(" -> ")
        );
    }
    println!("{} files, {n_edges} import edges, no cycle", g.len());
}

#[test]
fn test_items_are_left_out() {
    let code = "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::testing;\n    fn f() {}\n}\nuse crate::b;\n";
    let s = strip_cfg_test(code);
    assert!(s.contains("crate::a") && s.contains("crate::b"), "{s}");
    assert!(!s.contains("testing"), "{s}");
}

#[test]
fn a_cycle_is_found() {
    // the detector itself: a → b → c → a
    let p = |s: &str| PathBuf::from(s);
    let mut g = BTreeMap::new();
    g.insert(p("a"), BTreeSet::from([p("b")]));
    g.insert(p("b"), BTreeSet::from([p("c")]));
    g.insert(p("c"), BTreeSet::from([p("a")]));
    g.insert(p("d"), BTreeSet::from([p("a")]));
    let c = find_cycle(&g).expect("a cycle");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4);
}
