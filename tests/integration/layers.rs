//! The tree shows the layers, and the code keeps them: `src/lib.rs`
//! declares the top-level modules bottom up, and no module's code names a
//! module declared after its own (doc comments may point anywhere).

use std::path::{Path, PathBuf};

/// The top-level modules in the order `src/lib.rs` declares them.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_owned())
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
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

/// The top-level module a source file belongs to (`None`: lib.rs,
/// main.rs and the other binaries in `src/bin/`, which are wiring).
fn layer_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_str()?.to_owned();
    parts.next()?;
    (first != "bin").then_some(first)
}

/// Every `crate::NAME` in the code of `text` (not in comments).
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((i + 1, name));
        }
    }
    out
}

#[test]
fn lib_rs_lists_every_folder_and_each_layer_uses_only_those_below() {
    let order = layers();
    // Every folder under src/ is a declared layer.
    for e in std::fs::read_dir(src()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.ends_with("bin") {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            assert!(
                order.contains(&name),
                "src/{name}/ is not declared in lib.rs"
            );
        }
    }
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut upward = Vec::new();
    for f in &files {
        let Some(layer) = layer_of(f) else { continue };
        let rank = order.iter().position(|l| *l == layer).unwrap();
        let text = std::fs::read_to_string(f).unwrap();
        for (line, name) in crate_refs(&text) {
            if let Some(r) = order.iter().position(|l| *l == name) {
                if r > rank {
                    upward.push(format!(
                        "{}:{line}: {layer} uses {name}",
                        f.strip_prefix(src()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules that use a layer above their own:\n  {}",
        upward.join("\n  ")
    );
}

/// Issue 23: HTTP and the command line are the top layers' business: no
/// module below `api` names axum, hyper or an HTTP type, and none below
/// `cli` derives clap's traits.
#[test]
fn http_and_cli_types_stay_in_their_layers() {
    let order = layers();
    let rank = |name: &str| order.iter().position(|l| l == name).unwrap();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for f in &files {
        let Some(layer) = layer_of(f) else { continue };
        let r = rank(&layer);
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let http = ["axum::", "hyper::", "http::", "hyper_util::", "tower::"]
                .iter()
                .any(|p| code.contains(p));
            if http && r < rank("api") {
                found.push(format!("{}:{}: {layer} names HTTP", f.display(), i + 1));
            }
            if code.contains("clap::") && r < rank("cli") {
                found.push(format!("{}:{}: {layer} names clap", f.display(), i + 1));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
