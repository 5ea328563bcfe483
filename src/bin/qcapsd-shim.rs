//! The shim alone: what a symlink named like an emulator runs
//! ([`qcapsd::shim`]). The same code as the `qcapsd` binary's shim, in a
//! binary of its own with nothing else linked in: fewer pages to map and
//! relocate at each exec, which every VM start pays.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    qcapsd::shim::run_if_shim().unwrap_or_else(|| {
        eprintln!(
            "qcapsd-shim: run it under an emulator's name, through a symlink in a shim directory kept by qcapsd (see qcapsd shim)"
        );
        ExitCode::from(64)
    })
}
