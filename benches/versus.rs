//! qcapsd side by side with libvirt and the exec path: runs
//! `scripts/bench_versus.py` (see it and `scripts/bench-versus`, which also
//! installs libvirt and builds the release agent) against this build's
//! agent.
//!
//! `cargo bench --bench versus` is the full run; under `cargo test` (no
//! `--bench`) it runs once, short (`--short`), as the other benches do.
//! Either way it is skipped, with a message, where libvirt (libvirtd,
//! virsh, Debian's python3-libvirt) is absent, where it cannot run (not
//! root, or a libvirtd of the machine's own is running), or where QEMU for
//! x86_64 and aarch64 is missing. It is a benchmark, not a gate: it fails
//! only when the script itself breaks.

// Benchmarks run tools and binaries; the exec ban is for the agent
// (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::Command;

/// The script's exit status for "this machine cannot run it".
const CANNOT_RUN: i32 = 77;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let python = Path::new("/usr/bin/python3");
    let has = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let binding = python.exists()
        && Command::new(python)
            .args(["-c", "import libvirt"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !(has("libvirtd") && has("virsh") && has("strace") && binding) {
        eprintln!(
            "versus bench: skipped: needs libvirtd, virsh, strace and python3-libvirt \
             (scripts/bench-versus installs them)"
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_versus.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(["--qcapsd", env!("CARGO_BIN_EXE_qcapsd")]);
    if !bench {
        cmd.arg("--short");
    }
    let status = cmd.status().expect("runs python3");
    match status.code() {
        Some(0) => {}
        Some(CANNOT_RUN) => eprintln!("versus bench: skipped (see above)"),
        _ => panic!("scripts/bench_versus.py failed: {status}"),
    }
}
