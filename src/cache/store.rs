//! The on-disk side of the cache: one file per key in one directory,
//! written atomically (temporary file in the same directory, fsync, rename,
//! fsync of the directory), so a crash leaves either the old file or the new
//! one, never a torn one under the real name.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Prefix of temporary files; leftovers of a crash are swept at start.
const TEMP_PREFIX: &str = ".tmp-";
/// A cache file larger than this is not read (it cannot be ours).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `key`. Keys are configured names; anything outside
    /// `[A-Za-z0-9._-]` is replaced so a key can never leave the directory.
    pub fn path(&self, key: &str) -> PathBuf {
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir
            .join(format!("{}.json", safe.trim_start_matches('.')))
    }

    /// The file's bytes, `None` if there is none.
    pub fn read(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        let path = self.path(key);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "{len} bytes, more than {MAX_FILE_BYTES}"
            )));
        }
        let mut buf = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE_BYTES), &mut buf)?;
        Ok(Some(buf))
    }

    /// Replaces the file of `key` with `bytes`, atomically and durably.
    pub fn write(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(key)).map_err(|e| e.error)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Removes the file of `key` (absent is fine).
    pub fn remove(&self, key: &str) {
        let _ = std::fs::remove_file(self.path(key));
    }

    /// Removes temporary files a crash left behind; returns how many.
    pub fn sweep_temp_files(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        rd.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_and_replace() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("cache"));
        assert_eq!(s.read("x86_64").unwrap(), None);
        s.write("x86_64", b"one").unwrap();
        s.write("x86_64", b"two").unwrap();
        assert_eq!(s.read("x86_64").unwrap().as_deref(), Some(&b"two"[..]));
        let names: Vec<_> = std::fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x86_64.json"], "no temporary file remains");
    }

    #[test]
    fn keys_cannot_escape_the_directory() {
        let s = Store::new("/var/cache/qcapsd");
        assert_eq!(
            s.path("../../etc/passwd"),
            Path::new("/var/cache/qcapsd/_.._etc_passwd.json")
        );
        assert_eq!(s.path("a/b"), Path::new("/var/cache/qcapsd/a_b.json"));
    }

    #[test]
    fn sweep_removes_only_temporary_files() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        s.write("a", b"{}").unwrap();
        std::fs::write(d.path().join(".tmp-crashed"), b"{\"torn").unwrap();
        assert_eq!(s.sweep_temp_files(), 1);
        assert!(s.read("a").unwrap().is_some());
    }
}
