//! The top-level modules form layers without import cycles: lower layers (config, envelope,
//! smtp primitives, metrics, shutdown) depend on nothing above them, the filter on none of
//! its front ends, the front ends (proxy, milter) not on each other nor on the server. A
//! reference `crate::<module>` in a file under `src/<top>/` is an edge top → module; any cycle
//! in that graph fails the test with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::name` references in `text`, comments left out.
fn references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        // `use crate::{a, b::c}`: every first segment inside the braces.
        if let Some(start) = code.find("crate::{") {
            let inner = &code[start + "crate::{".len()..];
            for part in inner.split([',', '}']) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(&src).ok())
        .filter_map(|rel| rel.components().next())
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .filter(|t| t != "main" && t != "lib")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .unwrap_or_default();
        if !tops.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for name in references(&text) {
            if name != top && tops.contains(&name) {
                graph.entry(top.clone()).or_default().insert(name);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for top in &tops {
        if let Some(cycle) = visit(top, &graph, &mut Vec::new(), &mut done) {
            panic!(
                "import cycle between top-level modules: {}\nthe graph: {graph:#?}",
                cycle.join(" → ")
            );
        }
    }
    // The lowest layers stay low.
    for low in ["config", "smtp", "metrics", "shutdown", "state"] {
        let above: Vec<&String> = graph
            .get(low)
            .into_iter()
            .flatten()
            .filter(|d| *d != "config")
            .collect();
        assert!(above.is_empty(), "{low} depends on {above:?}");
    }
    for front_end in ["proxy", "milter"] {
        assert!(
            !graph.values().any(|deps| deps.contains(front_end))
                || graph
                    .iter()
                    .filter(|(_, deps)| deps.contains(front_end))
                    .all(|(m, _)| m == "server" || m == "fuzzing" || m == "cli"),
            "only the server starts the front ends: {graph:#?}"
        );
    }
}
