//! What the benches share: the QEMU they measure, their mode and their
//! knobs. Each bench includes it (`mod common;`) and uses what it needs.
#![allow(dead_code)]

use std::path::PathBuf;

/// Whether this is a measurement (`cargo bench`), not `cargo test`'s short
/// pass.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A number from the environment, else `default`; anything else in the
/// variable stops the bench, naming it.
pub fn env_or(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

/// The QEMU a bench measures (`QEMU_BIN`, else qemu-system-x86_64), or
/// `None` (said) when it is missing; with `QCAPSD_REQUIRE_QEMU=1`, as in
/// CI, a missing QEMU fails the bench instead.
pub fn qemu(bench: &str) -> Option<PathBuf> {
    let qemu = PathBuf::from(
        std::env::var("QEMU_BIN").unwrap_or_else(|_| "/usr/bin/qemu-system-x86_64".into()),
    );
    if qemu.exists() {
        return Some(qemu);
    }
    let said = format!(
        "{bench} bench: {} not found (install QEMU: .ci/install-deps)",
        qemu.display()
    );
    assert!(
        std::env::var("QCAPSD_REQUIRE_QEMU").as_deref() != Ok("1"),
        "{said}"
    );
    eprintln!("{said}; nothing to measure");
    None
}
