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

/// The reply a transcript recorded to the first `command`.
pub fn recorded_reply(transcript: &Path, command: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(transcript).unwrap();
    let mut objs = text
        .split("\n\n")
        .filter(|c| !c.trim().is_empty())
        .map(|c| serde_json::from_str::<serde_json::Value>(c).unwrap());
    objs.find(|o| o["execute"] == command)
        .unwrap_or_else(|| panic!("{}: no {command} recorded", transcript.display()));
    objs.next().expect("its reply")
}

/// The command names of a `query-qmp-schema` reply, sorted, no duplicates.
pub fn schema_command_names(reply: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = reply["return"]
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

/// The command names in a transcript's recorded `query-qmp-schema`.
pub fn schema_commands_of(transcript: &Path) -> Vec<String> {
    schema_command_names(&recorded_reply(transcript, "query-qmp-schema"))
}
