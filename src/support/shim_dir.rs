//! The layout of a shim directory, shared by the agent that keeps it, the
//! shim that reads it, and the config that checks its path:
//!
//! ```text
//! SHIM_DIR/
//!   qemu-system-x86_64 -> .qcapsd/qcapsd   one symlink per emulator, named
//!                                          like its binary
//!   .qcapsd/
//!     qcapsd                               a copy of the agent's binary (so
//!                                          another container can run it)
//!     agent.sock                           the agent's socket for shims
//!     qemu-system-x86_64.shim              the manifest: which emulator,
//!                                          which real binary
//!     counts/qemu-system-x86_64.ran_qemu   a byte per pass-through
//!     counts/qemu-system-x86_64.fell_back  a byte per fallback
//! ```
//!
//! A manifest is a few `key=value` lines; parsing it borrows from the
//! caller's buffer and allocates nothing (the shim reads it on every exec).

use std::path::{Path, PathBuf};

/// The directory of qcapsd's own files inside a shim directory.
pub const PRIVATE: &str = ".qcapsd";
/// The copy of the binary every shim links to, in [`PRIVATE`].
pub const BINARY: &str = "qcapsd";
/// The agent's socket for shims, in [`PRIVATE`].
pub const SOCKET: &str = "agent.sock";
/// The suffix of a manifest, in [`PRIVATE`].
pub const MANIFEST_SUFFIX: &str = ".shim";
/// The directory of pass-through and fallback counts, in [`PRIVATE`].
pub const COUNTS: &str = "counts";
/// The first line of every manifest.
pub const MANIFEST_HEADER: &str = "# qcapsd shim manifest: written by the agent, do not edit";
/// The longest socket path a unix socket takes (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// `dir/.qcapsd/agent.sock`.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join(PRIVATE).join(SOCKET)
}

/// `dir/.qcapsd/NAME.shim`.
pub fn manifest(dir: &Path, shim: &str) -> PathBuf {
    dir.join(PRIVATE).join(format!("{shim}{MANIFEST_SUFFIX}"))
}

/// `dir/.qcapsd/counts/NAME.WHAT`.
pub fn count_file(dir: &Path, shim: &str, what: &str) -> PathBuf {
    dir.join(PRIVATE)
        .join(COUNTS)
        .join(format!("{shim}.{what}"))
}

/// What every shim links to, relative to its directory: the binary copy.
pub fn link_target() -> PathBuf {
    Path::new(PRIVATE).join(BINARY)
}

/// Whether `path` is a shim (a symlink to a shim directory's binary
/// copy), wherever it is: discovery skips those, as they are not QEMU.
pub fn is_shim(path: &Path) -> bool {
    std::fs::read_link(path).is_ok_and(|t| t == link_target())
}

/// Count files: one byte each time the shim ran QEMU for a command line
/// that is not a pure query, and each time it fell back (the agent did
/// not answer).
pub const RAN_QEMU: &str = "ran_qemu";
pub const FELL_BACK: &str = "fell_back";

/// What a shim fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest<'a> {
    /// The configured emulator name (the key in the agent's URLs).
    pub emulator: &'a str,
    /// The real QEMU binary.
    pub real: &'a str,
    /// How long the shim waits for the agent's answer, in milliseconds.
    pub timeout_ms: u64,
}

impl Manifest<'_> {
    /// The manifest's text.
    pub fn render(&self) -> String {
        format!(
            "{MANIFEST_HEADER}\nemulator={}\nreal={}\ntimeout_ms={}\n",
            self.emulator, self.real, self.timeout_ms
        )
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not a qcapsd shim manifest")]
    Header,
    #[error("not UTF-8")]
    NotUtf8,
    #[error("no '{0}' line")]
    Missing(&'static str),
    #[error("bad timeout_ms")]
    Timeout,
}

/// Reads a manifest's text.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest<'_>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotUtf8)?;
    let mut lines = text.lines();
    if lines.next() != Some(MANIFEST_HEADER) {
        return Err(ManifestError::Header);
    }
    let (mut emulator, mut real, mut timeout) = (None, None, None);
    for line in lines {
        match line.split_once('=') {
            Some(("emulator", v)) => emulator = Some(v),
            Some(("real", v)) => real = Some(v),
            Some(("timeout_ms", v)) => {
                timeout = Some(v.parse().map_err(|_| ManifestError::Timeout)?)
            }
            _ => {}
        }
    }
    Ok(Manifest {
        emulator: emulator.ok_or(ManifestError::Missing("emulator"))?,
        real: real
            .filter(|r| r.starts_with('/'))
            .ok_or(ManifestError::Missing("real"))?,
        timeout_ms: timeout.ok_or(ManifestError::Missing("timeout_ms"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_what_was_written() {
        let m = Manifest {
            emulator: "x86_64",
            real: "/usr/bin/qemu-system-x86_64",
            timeout_ms: 3000,
        };
        let text = m.render();
        assert_eq!(parse_manifest(text.as_bytes()).unwrap(), m);
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(parse_manifest(b"emulator=x\n"), Err(ManifestError::Header));
        let no_real = format!("{MANIFEST_HEADER}\nemulator=x\ntimeout_ms=1\n");
        assert_eq!(
            parse_manifest(no_real.as_bytes()),
            Err(ManifestError::Missing("real"))
        );
        let relative = format!("{MANIFEST_HEADER}\nemulator=x\nreal=bin/q\ntimeout_ms=1\n");
        assert_eq!(
            parse_manifest(relative.as_bytes()),
            Err(ManifestError::Missing("real"))
        );
        let bad = format!("{MANIFEST_HEADER}\nemulator=x\nreal=/q\ntimeout_ms=soon\n");
        assert_eq!(parse_manifest(bad.as_bytes()), Err(ManifestError::Timeout));
        assert_eq!(parse_manifest(b"\xff"), Err(ManifestError::NotUtf8));
    }
}
