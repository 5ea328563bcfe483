//! Helpers shared by the integration tests: where the recorded QEMU data
//! lives, stand-in emulators, real QEMU binaries, and a small reader for
//! libvirt's capabilities XML.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
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

fn python3() -> PathBuf {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("python3")
}

/// Writes an executable `#!/bin/sh` script named `name` into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A stand-in emulator in `dir` that replays `transcript` over QMP.
pub fn replay_emulator(dir: &Path, name: &str, transcript: &Path) -> PathBuf {
    let replayer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_qemu.py");
    script(
        dir,
        name,
        &format!(
            "exec '{}' '{}' '{}' \"$@\"",
            python3().display(),
            replayer.display(),
            transcript.display()
        ),
    )
}

/// A real QEMU binary, or `None` (the test then skips) unless
/// `QCAPSD_REQUIRE_QEMU=1`, where a missing binary fails the test.
pub fn real_qemu(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/local/bin", "/usr/libexec"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("QCAPSD_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("{name} not found and QCAPSD_REQUIRE_QEMU=1 (run .ci/install-deps)");
        }
        eprintln!("skipping: {name} not installed");
    }
    found
}

/// Whether this process can open /dev/kvm read-write, the way QEMU would.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// One XML element's attributes.
pub type Attrs = BTreeMap<String, String>;

/// The parts of libvirt's `<qemuCaps>` XML the probe is compared with.
#[derive(Debug, Default)]
pub struct LibvirtCaps {
    pub version: u64,
    pub arch: String,
    /// `<machine>` elements.
    pub machines: Vec<Attrs>,
    /// `<cpu>` elements with the names of their `<blocker>` children.
    pub cpus: Vec<(Attrs, Vec<String>)>,
}

/// Reads libvirt's capabilities XML. The format is regular (one element per
/// tag, single-quoted attributes), so a tag scanner is enough.
pub fn parse_libvirt_xml(text: &str) -> LibvirtCaps {
    let mut caps = LibvirtCaps::default();
    let mut rest = text;
    let mut in_cpu = false;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>').expect("unterminated tag");
        let tag = &after[..end];
        let body_after = &after[end + 1..];
        let (name, attrs_text) = tag.split_once(char::is_whitespace).unwrap_or((tag, ""));
        let self_closing = tag.ends_with('/');
        let name = name.trim_end_matches('/');
        match name {
            "version" => {
                let close = body_after.find('<').unwrap();
                caps.version = body_after[..close].trim().parse().unwrap();
            }
            "arch" if caps.arch.is_empty() => {
                let close = body_after.find('<').unwrap();
                caps.arch = body_after[..close].trim().to_owned();
            }
            "machine" => caps.machines.push(attributes(attrs_text)),
            "cpu" => {
                caps.cpus.push((attributes(attrs_text), Vec::new()));
                in_cpu = !self_closing;
            }
            "/cpu" => in_cpu = false,
            "blocker" if in_cpu => {
                let a = attributes(attrs_text);
                caps.cpus.last_mut().unwrap().1.push(a["name"].clone());
            }
            _ => {}
        }
        rest = body_after;
    }
    caps
}

fn attributes(text: &str) -> Attrs {
    let mut out = Attrs::new();
    let mut rest = text.trim().trim_end_matches('/');
    while let Some(eq) = rest.find("='") {
        let key = rest[..eq].trim().to_owned();
        let val_start = eq + 2;
        let val_end = val_start
            + rest[val_start..]
                .find('\'')
                .expect("unterminated attribute");
        out.insert(key, unescape(&rest[val_start..val_end]));
        rest = &rest[val_end + 1..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// PIDs listed, one per line, in a file a stand-in wrote.
pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `pid` is a live process (a zombie left to init counts as gone:
/// it runs nothing and is not ours to reap; one whose parent is this test
/// process counts as alive, because then we failed to reap it).
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the command name: state ppid ...
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let mut f = after.split_whitespace();
    let state = f.next().unwrap_or("");
    let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    state != "Z" || ppid == std::process::id()
}
