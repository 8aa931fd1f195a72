//! The library's floors, checked: a module imports only from floors below its own (or from
//! inside itself). The drivers used to import `Node`, `Inner`, `lock`, `next_tick` and
//! `DRIVER_TICK` back from the composition root that composed them, a five-file circle; they
//! take the node core now, and this test fails on the first import that reaches up again.
//!
//! ```text
//!  6  client                         a Kv over TCP
//!  5  node                           the composition root
//!  4  backup  gc  hibernate  snapshots   the drivers (none imports another)
//!  3  node_core                      propose, reads, leadership, exclusive access, the tick
//!  2  pool
//!  1  api  config
//!  0  sync  error  archives  tls
//! ```
//!
//! Unit tests (`#[cfg(test)] mod tests`) may reach anywhere: they stand outside the floors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FLOORS: &[(&str, u32)] = &[
    ("sync", 0),
    ("error", 0),
    ("archives", 0),
    ("tls", 0),
    ("api", 1),
    ("config", 1),
    ("pool", 2),
    ("node_core", 3),
    ("backup", 4),
    ("gc", 4),
    ("hibernate", 4),
    ("snapshots", 4),
    ("node", 5),
    ("client", 6),
];

/// Re-exports at the crate root of the upper floors' types: `crate::Node` is `crate::node`.
/// (The others, `crate::Error`, `crate::Consistency`..., are of the floors below the drivers.)
const ROOT_EXPORTS: &[(&str, &str)] = &[
    ("Node", "node"),
    ("Identity", "node"),
    ("IdentityError", "node"),
    ("IDENTITY_FILE", "node"),
    ("WATCH_WAIT_MS_MAX", "node"),
    ("Client", "client"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None`: the crate root).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(m) => Some(m.to_owned()),
        None => Some(first),
    }
}

/// The modules `text` names through `crate::<module>`, outside its unit tests, with the line.
fn imports(text: &str) -> Vec<(String, usize)> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                out.push((name, n + 1));
            } else if let Some((_, module)) = ROOT_EXPORTS.iter().find(|(n, _)| *n == name) {
                // A re-export at the root of a type of the upper floors.
                out.push(((*module).to_owned(), n + 1));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_imports_from_a_floor_above_its_own() {
    let floors: BTreeMap<&str, u32> = FLOORS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(&floor) = floors.get(module.as_str()) else {
            panic!(
                "module {module} ({}) has no floor: add it to FLOORS and to docs/design.md",
                file.display()
            );
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (target, line) in imports(&text) {
            if target == module {
                continue;
            }
            let Some(&to) = floors.get(target.as_str()) else {
                panic!(
                    "{}:{line} names crate::{target}, which has no floor",
                    file.display()
                );
            };
            if to >= floor {
                upward.push(format!(
                    "{}:{line}: {module} (floor {floor}) imports {target} (floor {to})",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not go down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    let found = imports(
        "use crate::node::{Node, lock};\nfn f() { crate::gc::drive(); }\nfn g(n: crate::Node, e: crate::Error) {}\n",
    );
    assert_eq!(
        found,
        vec![
            ("node".to_owned(), 1),
            ("gc".to_owned(), 2),
            ("node".to_owned(), 3)
        ],
        "the parser misses an import"
    );
    let tests_only =
        imports("use crate::api;\n#[cfg(test)]\nmod tests {\n use crate::node::Node;\n}\n");
    assert_eq!(tests_only, vec![("api".to_owned(), 1)]);
}
