//! The on-disk side of the cache: one file per key in one directory,
//! written atomically (temporary file in the same directory, fsync, rename,
//! fsync of the directory), so a crash leaves either the old file or the new
//! one, never a torn one under the real name.
//!
//! Reading never blocks on what it finds: files are opened non-blocking and
//! without following symlinks, and anything but a regular file (a FIFO, a
//! socket, a device node, a link) is refused. Keys map to file names one to
//! one: a key that is not a plain name is refused, never rewritten, so two
//! keys can never share a file.

use crate::support::files::{TEMP_PREFIX, replace};
use rustix::fs::{FileType, Mode, OFlags};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A cache file larger than this is not read (it cannot be ours).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The longest key.
pub const MAX_KEY_LEN: usize = 64;

/// Whether `key` is a plain name: 1–64 ASCII letters, digits, `.`, `_`,
/// `-`, not starting with `.`. Such names are safe as file names, URL
/// segments and metric labels, and distinct names are distinct files.
pub fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// The file-name suffix (`.json` for capabilities).
    suffix: &'static str,
}

fn bad_key(key: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("'{key}' is not a plain name"),
    )
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store {
            dir: dir.into(),
            suffix: ".json",
        }
    }

    /// Another store of the same kind in a subdirectory (e.g. histories).
    pub fn subdir(&self, name: &str) -> Store {
        Store {
            dir: self.dir.join(name),
            suffix: self.suffix,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `key` (only meaningful for a plain key).
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{}", self.suffix))
    }

    /// The file's bytes, `None` if there is none. A file that is not a
    /// regular file, or is too large, is an error; nothing here can block
    /// on a FIFO or follow a link out of the directory.
    pub fn read(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        if !is_plain_key(key) {
            return Err(bad_key(key));
        }
        let path = self.path(key);
        let fd = match rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(std::io::Error::other("a symbolic link, not a regular file"));
            }
            // What open(2) says of a socket.
            Err(rustix::io::Errno::NXIO) => {
                return Err(std::io::Error::other("not a regular file (a socket?)"));
            }
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(std::io::Error::other(format!(
                "not a regular file ({kind:?})"
            )));
        }
        let len = st.st_size as u64;
        if len > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "{len} bytes, more than {MAX_FILE_BYTES}"
            )));
        }
        let mut buf = Vec::with_capacity(len as usize);
        std::fs::File::from(fd)
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// Replaces the file of `key` with `bytes`, atomically and durably.
    pub fn write(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        if !is_plain_key(key) {
            return Err(bad_key(key));
        }
        std::fs::create_dir_all(&self.dir)?;
        replace(&self.path(key), bytes, 0o600)
    }

    /// Whether files can be written here now: the directory is created if
    /// needed, and a temporary file made in it and removed.
    pub fn check_writable(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map(drop)
    }

    /// Removes the file of `key` (absent is fine).
    pub fn remove(&self, key: &str) {
        if is_plain_key(key) {
            let _ = std::fs::remove_file(self.path(key));
        }
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
    fn keys_that_are_not_plain_names_are_refused_not_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        for key in ["../../etc/passwd", "a/b", "a b", ".hidden", "", "é"] {
            assert!(s.write(key, b"x").is_err(), "{key:?}");
            assert!(s.read(key).is_err(), "{key:?}");
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        assert!(is_plain_key("qemu-system-x86_64") && is_plain_key("a_b.c"));
        assert!(!is_plain_key(&"q".repeat(65)));
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

    #[test]
    fn a_fifo_a_socket_and_a_link_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        rustix::fs::mknodat(
            rustix::fs::CWD,
            s.path("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(s.path("sock")).unwrap();
        std::fs::write(d.path().join("target"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path().join("target"), s.path("link")).unwrap();
        for key in ["fifo", "sock", "link"] {
            let e = s.read(key).unwrap_err().to_string();
            assert!(
                e.contains("not a regular file") || e.contains("symbolic link"),
                "{key}: {e}"
            );
        }
        // The atomic write replaces whatever was there.
        s.write("fifo", b"ok").unwrap();
        assert_eq!(s.read("fifo").unwrap().as_deref(), Some(&b"ok"[..]));
    }
}
