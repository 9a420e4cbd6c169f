//! The library's modules import each other without cycles: a module below another never reaches
//! back up. The graph is read from the source: a module is a file under src/ (`foo/mod.rs` is the
//! folder `foo`), and an edge is any `crate::…` path (in `use` or in code) or `super::…` path
//! outside `#[cfg(test)]` blocks and comments. A `mod.rs` (or lib.rs) that only declares
//! submodules and re-exports is transparent: `crate::cuda::DTensor` counts as a use of the file
//! that defines `DTensor`, not of the folder.
//!
//! A module's own submodules count as part of it (`cuda/ops/gemm/policy` may use its parent
//! `cuda/ops/gemm`, which launches what the policy chooses): only edges between modules that are
//! not nested in one another can form a cycle.
//!
//! `WHITTLE_MODULES_SRC=/path/to/src cargo test --test modules -- --ignored` prints the cycles
//! of another tree (e.g. an older checkout) without failing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// A module file: its name and its code with comments and test blocks removed.
struct Module {
    name: String,
    code: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// "cuda/gpu" for src/cuda/gpu.rs, "cuda" for src/cuda/mod.rs, "" for lib.rs.
fn module_name(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("/")
}

/// The code without `//` comments and without a trailing `#[cfg(test)] mod tests` block.
fn strip(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a path starting at `s` names (after its `crate::` / `super::`), with `{…}` groups
/// expanded: `a::{b, c::d}` → [a::b, a::c::d]. Returns the paths and the bytes consumed.
fn parse_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut prefix: Vec<String> = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            let mut out = Vec::new();
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let (sub, n) = parse_tree(&s[i..]);
                i += n.max(1);
                for p in sub {
                    let mut full = prefix.clone();
                    full.extend(p.into_iter().filter(|x| x != "self"));
                    out.push(full);
                }
            }
            return (out, i);
        }
        let start = i;
        while i < b.len() && is_ident(b[i] as char) {
            i += 1;
        }
        if i == start {
            return (vec![prefix], i);
        }
        prefix.push(s[start..i].to_string());
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// Every `crate::` and `super::` path in `code`, as absolute segment lists.
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    // `super` of "a/b" (a/b.rs) is "a"; of "a" (a/mod.rs or a.rs) the crate root.
    let parent: Vec<String> = {
        let mut p: Vec<String> = module
            .split('/')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect();
        p.pop();
        p
    };
    let mut out = Vec::new();
    for (kw, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut at = 0;
        while let Some(i) = code[at..].find(kw) {
            let i = at + i;
            at = i + kw.len();
            // `$crate::` is `crate::`; any other identifier character before is another word.
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == ':') {
                continue;
            }
            let (ps, n) = parse_tree(&code[at..]);
            at += n;
            for p in ps {
                let mut full = base.clone();
                let ups = p.iter().take_while(|x| *x == "super").count();
                for _ in 0..ups {
                    full.pop();
                }
                full.extend(p.into_iter().skip(ups));
                out.push(full);
            }
        }
    }
    out
}

/// Whether a folder module's file only declares submodules and re-exports them.
fn transparent(code: &str) -> bool {
    let mut stmts = code.split(';').map(str::trim).filter(|s| !s.is_empty());
    stmts.all(|s| {
        let s = s
            .lines()
            .filter(|l| !l.trim_start().starts_with("#"))
            .collect::<Vec<_>>()
            .join(" ");
        let s = s.trim();
        s.is_empty()
            || s.starts_with("pub mod ")
            || s.starts_with("mod ")
            || s.starts_with("pub(crate) mod ")
            || s.starts_with("pub use ")
            || s.starts_with("pub(crate) use ")
    })
}

/// Name → defining submodule of a transparent folder module's re-exports (`pub use gpu::X`).
fn reexports(folder: &str, code: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in code.split(';') {
        let s = stmt.trim();
        let Some(rest) = s
            .strip_prefix("pub use ")
            .or_else(|| s.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let (ps, _) = parse_tree(rest);
        for p in ps {
            if p.len() >= 2 {
                let sub = if folder.is_empty() {
                    p[0].clone()
                } else {
                    format!("{folder}/{}", p[0])
                };
                out.insert(p.last().unwrap().clone(), sub);
            }
        }
    }
    out
}

/// The module graph of the library under `src` (main.rs, a separate crate, left out).
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut mods = Vec::new();
    let mut folders = BTreeSet::new();
    for f in &files {
        if f.strip_prefix(src).unwrap() == Path::new("main.rs") {
            continue;
        }
        let name = module_name(src, f);
        let stem = f.file_stem().unwrap();
        if stem == "mod" || stem == "lib" {
            folders.insert(name.clone());
        }
        let text = std::fs::read_to_string(f).unwrap();
        mods.push(Module {
            name,
            code: strip(&text),
        });
    }
    let names: BTreeSet<String> = mods.iter().map(|m| m.name.clone()).collect();
    let see_through: BTreeMap<String, BTreeMap<String, String>> = mods
        .iter()
        .filter(|m| folders.contains(&m.name) && transparent(&m.code))
        .map(|m| (m.name.clone(), reexports(&m.name, &m.code)))
        .collect();
    let mut g = Graph::new();
    for m in &mods {
        let deps = g.entry(m.name.clone()).or_default();
        for p in paths(&m.name, &m.code) {
            // The longest prefix of the path that is a module.
            let mut hit = None;
            for n in (0..=p.len()).rev() {
                let cand = p[..n].join("/");
                if names.contains(&cand) {
                    hit = Some((cand, n));
                    break;
                }
            }
            let Some((mut target, n)) = hit else { continue };
            if let Some(re) = see_through.get(&target) {
                match p.get(n).and_then(|item| re.get(item)) {
                    Some(sub) if names.contains(sub) => target = sub.clone(),
                    _ => continue,
                }
            }
            // A module and its own submodules are one unit (Rust's privacy says so too): a
            // submodule reaching its parent (`super::`) is not a layering edge.
            let inside = |a: &str, b: &str| a.starts_with(&format!("{b}/"));
            if target != m.name
                && !target.is_empty()
                && !inside(&m.name, &target)
                && !inside(&target, &m.name)
            {
                deps.insert(target);
            }
        }
    }
    g
}

/// One cycle of `g` as module names (first = last), if there is any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        n: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match marks.get(d).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let at = stack.iter().position(|x| x == d).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(g, d, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(g, n, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Every cycle, found by removing one edge of each found cycle until none is left.
fn all_cycles(src: &Path) -> Vec<Vec<String>> {
    let mut g = module_graph(src);
    let mut out = Vec::new();
    while let Some(c) = find_cycle(&g) {
        g.get_mut(&c[c.len() - 2]).unwrap().remove(&c[c.len() - 1]);
        out.push(c);
    }
    out
}

#[test]
fn library_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = module_graph(&src);
    let mut cycles = Vec::new();
    while let Some(c) = find_cycle(&g) {
        g.get_mut(&c[c.len() - 2]).unwrap().remove(&c[c.len() - 1]);
        cycles.push(c);
    }
    assert!(
        cycles.is_empty(),
        "import cycles between modules (move the shared part below both):\n{}",
        cycles
            .iter()
            .map(|c| c.join(" → "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_check_finds_cycles_through_use_groups_super_and_reexports() {
    let dir = std::env::temp_dir().join(format!("whittle-modules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("eng")).unwrap();
    let w = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    w("lib.rs", "pub mod a;\npub mod b;\npub mod eng;\n");
    w(
        "eng/mod.rs",
        "//! docs\npub mod run;\npub use run::Runner;\n",
    );
    // a → eng/run (through the re-export), eng/run → b (in code), b → a (in a use group).
    w("a.rs", "use crate::{eng::Runner, x};\n");
    w(
        "eng/run.rs",
        "pub struct Runner;\nfn f() { crate::b::g(); }\n// crate::a::nothing\n",
    );
    w(
        "b.rs",
        "use crate::{a, c::{d}};\npub fn g() {}\n#[cfg(test)]\nmod tests {\n use crate::eng;\n}\n",
    );
    let cycles = all_cycles(&dir);
    assert_eq!(
        cycles,
        vec![vec!["a", "eng/run", "b", "a"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()]
    );
    // `super::` from a submodule is its folder's sibling.
    w("b.rs", "pub fn g() {}\n");
    w("eng/run.rs", "use super::super::a;\n");
    assert_eq!(all_cycles(&dir).len(), 1, "a → eng/run → a");
    w("eng/run.rs", "pub struct Runner;\n");
    assert!(all_cycles(&dir).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "reports on the tree named by WHITTLE_MODULES_SRC"]
fn cycles_of_another_tree() {
    let Ok(src) = std::env::var("WHITTLE_MODULES_SRC") else {
        return;
    };
    let cycles = all_cycles(Path::new(&src));
    for c in &cycles {
        println!("cycle: {}", c.join(" → "));
    }
    println!("{} cycles in {src}", cycles.len());
}
