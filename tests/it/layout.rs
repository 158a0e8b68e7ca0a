//! The layout of `src/`, checked: every `crate::`, `super::` and `self::` path (and every
//! `use` of a child module) in non-test code must be allowed by the import rules in
//! ARCHITECTURE.md (the fenced `layout` block), folders must not import each other in a
//! circle, files must not either (the sandbox may keep one circle of at most 3 files), no
//! source file may pass 1,000 lines (tests inside it count; generated tables aside), and
//! `src/` holds at most 15 entries.
//!
//! A rule reads `MODULE: ALLOWED, ALLOWED, …`. A file follows the rule with the longest
//! MODULE that is a prefix of its module path (`src/rows/transform/value.rs` is
//! `rows::transform::value`); it may import anything under that MODULE and under each
//! ALLOWED prefix, nothing else. `crate::rows::cell::Cell` is under `rows::cell` and `rows`,
//! not under `rows::source`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 1_000;
const MAX_SRC_ENTRIES: usize = 15;

/// A module path, `["rows", "transform", "value"]`.
type ModPath = Vec<String>;

struct SourceFile {
    path: PathBuf,
    module: ModPath,
    /// The text without `#[cfg(test)]` items.
    code: String,
    lines: usize,
    generated: bool,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(path: &Path) -> ModPath {
    let rel = path.strip_prefix(src_dir()).expect("under src/");
    let mut parts: ModPath = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn sources() -> Vec<SourceFile> {
    let mut paths = Vec::new();
    walk(&src_dir(), &mut paths);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable source");
            SourceFile {
                module: module_of(&path),
                code: strip_test_items(&text),
                lines: text.lines().count(),
                generated: text.lines().take(5).any(|l| l.contains("@generated")),
                path,
            }
        })
        .collect()
}

/// The byte index just past the item that starts at `from` (a `{ … }` block or a `;`),
/// skipping strings, characters and comments.
fn item_end(b: &[u8], from: usize) -> usize {
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) == Some(&b'"') {
                    j += 1;
                    loop {
                        if j >= b.len() {
                            return b.len();
                        }
                        if b[j] == b'"' && b[j + 1..].iter().take(hashes).all(|&c| c == b'#') {
                            j += 1 + hashes;
                            break;
                        }
                        j += 1;
                    }
                    i = j - 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'\'' => {
                // A character literal ('x', '\n', '\''), not a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 2;
                } else if let Some(len) = std::str::from_utf8(&b[i + 1..])
                    .ok()
                    .and_then(|s| s.chars().next())
                    .map(char::len_utf8)
                    .filter(|&n| n > 1 && b.get(i + 1 + n) == Some(&b'\''))
                {
                    i += 1 + len;
                }
            }
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b';' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The text without items under `#[cfg(test)]` (test modules, test-only helpers).
fn strip_test_items(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = at + "#[cfg(test)]".len();
        let end = after + item_end(&rest.as_bytes()[after..], 0);
        rest = &rest[end.min(rest.len())..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Comments out of the way, so a path named in a doc comment is not an import.
fn without_comments(code: &str) -> String {
    code.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::b::{c, d::e}` from `s` (just after `crate::`): the paths it names.
fn paths_after(s: &str) -> Vec<ModPath> {
    let mut segs = ModPath::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        let start = i;
        while i < b.len() && is_ident(b[i] as char) {
            i += 1;
        }
        if i > start {
            segs.push(s[start..i].to_string());
        } else if b.get(i) == Some(&b'{') {
            // A group: each item is a path of its own after the prefix.
            let close = i + group_end(&s[i..]);
            let inner = &s[i + 1..close.saturating_sub(1)];
            let mut out = Vec::new();
            for item in split_top(inner) {
                let item = item.trim();
                if item.is_empty() || item == "self" {
                    out.push(segs.clone());
                    continue;
                }
                for tail in paths_after(item) {
                    let mut p = segs.clone();
                    p.extend(tail);
                    out.push(p);
                }
            }
            return out;
        }
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            break;
        }
    }
    vec![segs]
}

fn group_end(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The child modules a file declares (`mod x;`, `pub mod x;`).
fn child_mods(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let l = line.trim_start();
        let l = l
            .strip_prefix("pub(crate) ")
            .or_else(|| l.strip_prefix("pub "))
            .unwrap_or(l);
        if let Some(rest) = l.strip_prefix("mod ") {
            if let Some(name) = rest.strip_suffix(';') {
                out.insert(name.trim().to_string());
            }
        }
    }
    out
}

/// Every crate path a file names, as absolute module paths, with the line it is on.
fn imports(file: &SourceFile) -> Vec<(usize, ModPath)> {
    let code = without_comments(&file.code);
    let children = child_mods(&code);
    // The module `self` and `super` are relative to (a `mod.rs` is its folder's module).
    let here = file.module.clone();
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut search = 0;
        while let Some(pos) = ["crate::", "super::", "self::"]
            .iter()
            .filter_map(|k| line[search..].find(k).map(|p| (search + p, *k)))
            .min()
        {
            let (at, key) = pos;
            search = at + key.len();
            if at > 0 && is_ident(line[..at].chars().last().unwrap_or(' ')) {
                continue;
            }
            let base: ModPath = match key {
                "crate::" => Vec::new(),
                "super::" => {
                    let mut b = here.clone();
                    b.pop();
                    b
                }
                _ => here.clone(),
            };
            // A group may run over several lines.
            let rest_start = code.lines().take(n).map(|l| l.len() + 1).sum::<usize>() + search;
            let rest = &code[rest_start..];
            for tail in paths_after(rest) {
                let mut p = base.clone();
                p.extend(tail);
                out.push((n + 1, p));
            }
        }
        // `use child::…` of a declared child module.
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(rest) = t.strip_prefix("use ") {
            let first: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if children.contains(&first) {
                let mut p = here.clone();
                p.extend(paths_after(rest).into_iter().next().unwrap_or_default());
                out.push((n + 1, p));
            }
        }
    }
    out
}

struct Rules(BTreeMap<ModPath, Vec<ModPath>>);

fn split_path(s: &str) -> ModPath {
    s.split("::").map(|x| x.trim().to_string()).collect()
}

fn rules() -> Rules {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&doc).expect("ARCHITECTURE.md");
    let block = text
        .split("```layout\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("ARCHITECTURE.md has a ```layout block of import rules");
    let mut map = BTreeMap::new();
    for line in block.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (module, allowed) = line
            .split_once(": ")
            .or_else(|| line.strip_suffix(':').map(|m| (m, "")))
            .filter(|(m, _)| !m.contains(' '))
            .unwrap_or_else(|| panic!("a layout rule is `MODULE: ALLOWED, …`, not `{line}`"));
        let allowed = allowed
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "-")
            .map(split_path)
            .collect();
        map.insert(split_path(module), allowed);
    }
    Rules(map)
}

impl Rules {
    /// The rule a module follows: the longest rule module that is a prefix of it.
    fn rule_for(&self, module: &[String]) -> Option<(&ModPath, &Vec<ModPath>)> {
        self.0
            .iter()
            .filter(|(m, _)| module.starts_with(m))
            .max_by_key(|(m, _)| m.len())
    }
}

/// The file a path lands in: the longest prefix that names a file.
fn file_of<'a>(files: &'a BTreeMap<ModPath, usize>, path: &[String]) -> Option<&'a usize> {
    (1..=path.len()).rev().find_map(|k| files.get(&path[..k]))
}

/// Strongly connected components of more than one node (Tarjan).
fn circles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct T<'e, N: Ord> {
        edges: &'e BTreeMap<N, BTreeSet<N>>,
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on: BTreeSet<N>,
        out: Vec<Vec<N>>,
    }
    fn visit<N: Ord + Clone>(t: &mut T<'_, N>, v: &N) {
        let i = t.index.len();
        t.index.insert(v.clone(), i);
        t.low.insert(v.clone(), i);
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
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
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

fn shown(p: &[String]) -> String {
    if p.is_empty() {
        "crate".into()
    } else {
        p.join("::")
    }
}

/// The edges between files (index → indices) of the library, and the imports that break
/// the rules.
fn analyse(files: &[SourceFile], rules: &Rules) -> (BTreeMap<usize, BTreeSet<usize>>, Vec<String>) {
    let by_module: BTreeMap<ModPath, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.module.clone(), i))
        .collect();
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut broken = Vec::new();
    for (i, f) in files.iter().enumerate() {
        edges.entry(i).or_default();
        // The binary is a crate of its own: its `crate::` is not the library's.
        if f.path.ends_with("src/main.rs") || f.module.is_empty() {
            continue;
        }
        let Some((rule_module, allowed)) = rules.rule_for(&f.module) else {
            broken.push(format!(
                "{}: no layout rule covers module `{}`; add one to ARCHITECTURE.md",
                f.path.display(),
                shown(&f.module)
            ));
            continue;
        };
        for (line, target) in imports(f) {
            let Some(&j) = file_of(&by_module, &target) else {
                continue; // a name from outside kdit's modules (e.g. a macro path)
            };
            if j != i {
                edges.entry(i).or_default().insert(j);
            }
            let ok = target.starts_with(rule_module)
                || allowed.iter().any(|a| target.starts_with(a))
                // a folder's own module file, reached through `super::` by its children
                || (f.module.starts_with(&target) && !target.is_empty());
            if !ok {
                broken.push(format!(
                    "{}:{line}: `{}` imports `{}`, which the rule `{}: {}` does not allow",
                    f.path.strip_prefix(src_dir()).unwrap_or(&f.path).display(),
                    shown(&f.module),
                    shown(&target),
                    shown(rule_module),
                    allowed
                        .iter()
                        .map(|a| shown(a))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    (edges, broken)
}

#[test]
fn imports_follow_the_rules_in_architecture_md() {
    let files = sources();
    let rules = rules();
    let (_, broken) = analyse(&files, &rules);
    assert!(
        broken.is_empty(),
        "imports that break the layout rules (ARCHITECTURE.md, ```layout block):\n{}",
        broken.join("\n")
    );
}

#[test]
fn no_circle_between_folders() {
    let files = sources();
    let (edges, _) = analyse(&files, &rules());
    let folder = |i: usize| shown(&files[i].module[..files[i].module.len().min(1)]);
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &edges {
        let a = folder(*from);
        let entry = folders.entry(a.clone()).or_default();
        for to in tos {
            let b = folder(*to);
            if b != a {
                entry.insert(b);
            }
        }
    }
    let found = circles(&folders);
    assert!(
        found.is_empty(),
        "folders that import each other in a circle: {found:?}"
    );
}

#[test]
fn no_circle_between_files_and_at_most_a_small_one_in_the_sandbox() {
    let files = sources();
    let (edges, _) = analyse(&files, &rules());
    let name = |i: &usize| {
        files[*i]
            .path
            .strip_prefix(src_dir())
            .unwrap_or(&files[*i].path)
            .display()
            .to_string()
    };
    let found: Vec<Vec<String>> = circles(&edges)
        .iter()
        .map(|c| c.iter().map(name).collect())
        .collect();
    let (sandbox, other): (Vec<_>, Vec<_>) = found
        .into_iter()
        .partition(|c| c.iter().all(|f| f.starts_with("sandbox/")));
    assert!(
        other.is_empty(),
        "files that import each other in a circle: {other:?}"
    );
    assert!(
        sandbox.len() <= 1 && sandbox.iter().all(|c| c.len() <= 3),
        "the sandbox may keep one circle of at most 3 files: {sandbox:?}"
    );
}

#[test]
fn no_source_file_is_over_a_thousand_lines() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|f| f.lines > MAX_LINES && !f.generated)
        .map(|f| {
            format!(
                "{} ({} lines)",
                f.path.strip_prefix(src_dir()).unwrap_or(&f.path).display(),
                f.lines
            )
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (tests inside count); split them by concept: {long:?}"
    );
}

#[test]
fn src_holds_few_entries() {
    let entries: Vec<String> = std::fs::read_dir(src_dir())
        .expect("src/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(
        entries.len() <= MAX_SRC_ENTRIES,
        "src/ holds {} entries (at most {MAX_SRC_ENTRIES}): {entries:?}",
        entries.len()
    );
}

#[test]
fn every_folder_has_a_rule_and_every_rule_a_folder() {
    let files = sources();
    let rules = rules();
    for module in rules.0.keys() {
        assert!(
            files.iter().any(|f| f.module.starts_with(module)),
            "ARCHITECTURE.md has a layout rule for `{}`, which no file under src/ is",
            shown(module)
        );
    }
}

/// Files that may read a file's contents whole (`fs::read`, `read_to_string`, `File::open`),
/// and what they read: stored query files only the job loader reads (`job::load::read_query`,
/// a regular file of at most 1 MiB), so a job that validates cannot be made to read a device
/// or a huge file at run time.
const FILE_READERS: &[(&str, &str)] = &[
    (
        "job/load.rs",
        "job and project files, stored queries (`read_query`)",
    ),
    ("plan/file.rs", "plan files"),
    ("apply/spill.rs", "its own work file"),
    ("commands/connect.rs", "/etc/hostname"),
    ("commands/bench/scratch.rs", "/proc/self"),
    ("commands/bench/sync.rs", "/proc and its own report"),
    ("commands/sandbox.rs", "/proc/self (the sandbox bench)"),
    ("sandbox/ratelimit.rs", "its own test fixtures"),
    ("sandbox/store/persist.rs", "the sandbox's --state-file"),
];

#[test]
fn only_the_job_loader_reads_query_files() {
    let mut found = Vec::new();
    for f in sources() {
        let rel = f.path.strip_prefix(src_dir()).unwrap_or(&f.path);
        let rel = rel.to_string_lossy().replace('\\', "/");
        let code = without_comments(&f.code);
        for (n, line) in code.lines().enumerate() {
            let reads = ["read_to_string(", "fs::read(", "File::open("]
                .iter()
                .any(|r| line.contains(r));
            if reads && !FILE_READERS.iter().any(|(file, _)| *file == rel) {
                found.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "files read outside the readers this test allows (query files: `job::load::read_query`):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_rows_take_the_compiled_job_not_the_spec() {
    let named: Vec<String> = sources()
        .iter()
        .filter(|f| f.module.first().map(String::as_str) == Some("rows"))
        .filter(|f| without_comments(&f.code).contains("JobSpec"))
        .map(|f| f.path.display().to_string())
        .collect();
    assert!(
        named.is_empty(),
        "rows/ names `JobSpec`; it takes the compiled `job::compile::Job`: {named:?}"
    );
}

/// The checker itself: paths in groups, `super::`, children and test code.
#[test]
fn the_checker_reads_paths_as_rust_does() {
    let file = |module: &str, code: &str| SourceFile {
        path: src_dir().join("x.rs"),
        module: split_path(module),
        code: strip_test_items(code),
        lines: 0,
        generated: false,
    };
    let got = |f: &SourceFile| -> Vec<String> {
        imports(f).into_iter().map(|(_, p)| shown(&p)).collect()
    };
    let f = file(
        "rows::transform::value",
        "use crate::{digest::{Hash, key_hash}, job::spec};\nuse super::reject::Rule;\n// crate::sync::nothing\nfn f() { crate::output::thousands(1); }\n#[cfg(test)]\nmod tests {\n    use crate::sandbox::Sandbox;\n    const S: &str = \"}\";\n}\nfn g() { let c = '{'; self::h(); }\n",
    );
    assert_eq!(
        got(&f),
        [
            "digest::Hash",
            "digest::key_hash",
            "job::spec",
            "rows::transform::reject::Rule",
            "output::thousands",
            "rows::transform::value::h"
        ]
    );
    let m = file("plan", "mod diff;\npub use diff::Differ;\n");
    assert_eq!(got(&m), ["plan::diff::Differ"]);
    let rules = Rules(BTreeMap::from([
        (split_path("plan"), vec![split_path("state::snapshot")]),
        (split_path("state"), vec![]),
    ]));
    assert_eq!(
        rules
            .rule_for(&split_path("plan::diff"))
            .map(|r| shown(r.0)),
        Some("plan".into())
    );
    let a = [1usize, 2].into_iter().collect::<BTreeSet<_>>();
    let edges = BTreeMap::from([(0usize, a), (1, BTreeSet::from([0])), (2, BTreeSet::new())]);
    assert_eq!(circles(&edges), vec![vec![0, 1]]);
}
