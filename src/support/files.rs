//! Replacing a file atomically: the one way the agent writes the files
//! others read (cache and memo files, the shims' manifest and binary copy,
//! node-feature-discovery's feature file).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Prefix of the temporary files [`replace`] makes. They start with `.`,
/// so readers that skip dotfiles (node-feature-discovery, the cache's own
/// listing) never see a partial file; a crash's leftovers can be swept by
/// it.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Replaces `path` with `bytes`, mode `mode`: a temporary file in the same
/// directory, written and fsynced, renamed over `path`, then the directory
/// fsynced. A crash leaves the old file or the new one, never a torn one;
/// on an error nothing is left behind. The directory must exist.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("labels");
        replace(&f, b"one", 0o600).unwrap();
        replace(&f, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["labels"]);
        assert!(replace(&d.path().join("missing/labels"), b"x", 0o644).is_err());
    }
}
