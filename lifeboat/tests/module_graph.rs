//! The library's modules import each other one way only: no circle of
//! imports between modules (docs/ARCHITECTURE.md §2, "Who imports whom").
//! A circle means two concerns cannot be understood, tested or changed apart;
//! this test names the circle and the imports that close it.
//!
//! It reads `lifeboat/src` as text: every `crate::…`, `super::…` and
//! `self::…` path, and a parent's `child::…` paths, resolved to the longest
//! module they name. Unit-test modules (`mod tests` at the end of a file, and
//! `tests.rs`) are left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments and its unit tests.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths starting at `at`: `a::b::C`, or one per item of `a::{b, c::D}`.
fn paths_at(code: &str, at: usize) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut rest = &code[at..];
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => return vec![segs],
        }
    }
    let Some(group) = rest.strip_prefix('{') else {
        return vec![segs];
    };
    let (mut depth, mut item, mut out) = (0, String::new(), Vec::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    out.push(item);
    out.iter()
        .filter_map(|i| {
            let first: String = i.trim().chars().take_while(|c| is_ident(*c)).collect();
            (!first.is_empty()).then(|| {
                let mut p = segs.clone();
                p.push(first);
                p
            })
        })
        .collect()
}

fn imports(
    m: &Module,
    code: &str,
    modules: &BTreeSet<Module>,
) -> BTreeMap<Module, BTreeSet<String>> {
    let mut out: BTreeMap<Module, BTreeSet<String>> = BTreeMap::new();
    let bytes = code.as_bytes();
    let starts = ["crate::", "super::", "self::"];
    let children: Vec<&Module> = modules
        .iter()
        .filter(|c| c.len() == m.len() + 1 && c.starts_with(m))
        .collect();
    for i in 0..code.len() {
        if !code.is_char_boundary(i) {
            continue;
        }
        if i > 0 && (is_ident(bytes[i - 1] as char) || bytes[i - 1] == b':') {
            continue;
        }
        let rest = &code[i..];
        let mut base: Option<Module> = None;
        let mut at = i;
        if let Some(s) = starts.iter().find(|s| rest.starts_with(**s)) {
            at += s.len();
            let mut b = match *s {
                "crate::" => Vec::new(),
                _ => m.clone(),
            };
            if *s == "super::" {
                b.pop();
                while code[at..].starts_with("super::") {
                    b.pop();
                    at += "super::".len();
                }
            }
            base = Some(b);
        } else if children
            .iter()
            .any(|c| rest.starts_with(&format!("{}::", c[c.len() - 1])))
        {
            base = Some(m.clone());
        }
        let Some(base) = base else { continue };
        for path in paths_at(code, at) {
            let mut full = base.clone();
            full.extend(path);
            let target = (0..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(t) = target.filter(|t| !t.is_empty() && t != m) {
                let named = full[t.len()..].first().cloned().unwrap_or_default();
                out.entry(t).or_default().insert(named);
            }
        }
    }
    out
}

/// Strongly connected groups of more than one module (Tarjan).
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit(t: &mut T, v: &Module) {
        let n = t.index.len();
        t.index.insert(v.clone(), n);
        t.low.insert(v.clone(), n);
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        for w in t.edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut group = Vec::new();
            loop {
                let w = t.stack.pop().expect("on the stack");
                t.on.remove(&w);
                let done = &w == v;
                group.push(w);
                if done {
                    break;
                }
            }
            if group.len() > 1 {
                t.out.push(group);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_module_imports_itself_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeSet::new();
    let mut texts = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let m = module_of(&src, f);
        modules.insert(m.clone());
        texts.push((
            m,
            code(&std::fs::read_to_string(f).expect("readable source")),
        ));
    }
    assert!(modules.len() > 40, "found only {} modules", modules.len());
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut names: BTreeMap<(Module, Module), BTreeSet<String>> = BTreeMap::new();
    for (m, code) in &texts {
        edges.entry(m.clone()).or_default();
        for (to, named) in imports(m, code, &modules) {
            edges.entry(m.clone()).or_default().insert(to.clone());
            names.insert((m.clone(), to), named);
        }
    }
    let found = circles(&edges);
    let show = |m: &Module| m.join("::");
    let report: Vec<String> = found
        .iter()
        .map(|group| {
            let set: BTreeSet<&Module> = group.iter().collect();
            let arrows: Vec<String> = group
                .iter()
                .flat_map(|a| {
                    edges[a].iter().filter(|b| set.contains(b)).map(|b| {
                        let n = &names[&(a.clone(), b.clone())];
                        format!("  {} -> {}: {:?}", show(a), show(b), n)
                    })
                })
                .collect();
            format!("circle of {} modules:\n{}", group.len(), arrows.join("\n"))
        })
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}
