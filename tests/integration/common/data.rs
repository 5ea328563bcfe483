//! Where the recorded QEMU data lives (never copied into the repository).

use std::path::{Path, PathBuf};

/// `../shared` beside the checkout (CI lays a copy there), or
/// `$QCAPSD_SHARED_DIR`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("QCAPSD_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

pub fn replies_dir() -> PathBuf {
    shared_dir().join("qemucaps/libvirt-replies")
}

/// Every `.replies` transcript in the shared folder, sorted.
pub fn all_transcripts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(replies_dir())
        .expect("the shared QEMU transcripts (../shared/qemucaps/libvirt-replies)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "replies"))
        .collect();
    v.sort();
    v
}

pub fn transcript(name: &str) -> PathBuf {
    replies_dir().join(name)
}

/// The command names in a transcript's recorded `query-qmp-schema`.
pub fn schema_commands_of(transcript: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(transcript).unwrap();
    let objs: Vec<serde_json::Value> = text
        .split("\n\n")
        .filter(|c| !c.trim().is_empty())
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let at = objs
        .iter()
        .position(|o| o["execute"] == "query-qmp-schema")
        .expect("a recorded schema");
    let mut names: Vec<String> = objs[at + 1]["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}
