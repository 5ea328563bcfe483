//! Keeping the shim directory (config `shim_dir`; layout in
//! [`crate::support::shim_dir`]): one shim per emulator, named like its
//! binary, a symlink to a copy of the agent's own binary (so another
//! container sharing the directory can run it), and a manifest saying
//! which emulator and which real QEMU it fronts.
//!
//! [`sync`] makes the directory match the emulator set, at start, on
//! reload and when discovery finds a new binary. Each change is atomic (a
//! temporary name, then a rename); stale shims are removed; nothing that is
//! not ours (a file someone put there, a symlink elsewhere) is touched.
//! Every file is readable by everyone and the count files writable by
//! everyone, whatever the agent's umask: callers of a shim run as their own
//! users.

use super::metrics::{Metrics, ShimResult};
use super::pass::{Feature, Snapshot, Work};
use crate::config::discovery::EmulatorSpec;
use crate::support::shim_dir::{
    self, BINARY, COUNTS, FELL_BACK, MANIFEST_SUFFIX, Manifest, PRIVATE, RAN_QEMU,
};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The shim directory as a feature of the agent: kept in step with the
/// emulator set ([`Shims::sync`], at start, on reload and on discovery),
/// and the shims' own counts of what they did without the agent (run
/// QEMU, fell back) taken into `qcapsd_shim_requests_total` after each
/// pass and at each scrape, the files emptied as they are read.
pub struct Shims {
    metrics: Arc<Metrics>,
    /// What the last sync could not make, so each is logged once.
    skipped: Mutex<Vec<String>>,
}

impl Shims {
    pub fn new(metrics: Arc<Metrics>) -> Shims {
        Shims {
            metrics,
            skipped: Mutex::new(Vec::new()),
        }
    }

    /// Makes the shim directory (config `shim_dir`) hold one shim per
    /// emulator of `snap`. A directory that cannot be written is logged:
    /// callers of a missing shim run QEMU as before.
    pub async fn sync(&self, snap: &Snapshot) {
        let cfg = &snap.config;
        let Some(dir) = cfg.shim_dir.as_ref().map(|d| d.0.clone()) else {
            return;
        };
        let specs = snap.specs();
        let timeout_ms = cfg.shim_timeout.as_millis() as u64;
        let (task_dir, binary) = (dir.clone(), cfg.shim_binary());
        let synced =
            tokio::task::spawn_blocking(move || sync(&task_dir, &specs, &binary, timeout_ms)).await;
        match synced {
            Ok(Ok(done)) => {
                for (name, real) in &done.written {
                    tracing::info!(shim = %dir.join(name).display(), real = %real.display(), "shim in place");
                }
                for name in &done.removed {
                    tracing::info!(shim = %dir.join(name).display(), "shim removed");
                }
                let mut last = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
                if *last != done.skipped {
                    for s in &done.skipped {
                        tracing::warn!("shim not made: {s}");
                    }
                    *last = done.skipped;
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot keep the shim directory; callers of its shims run QEMU as before")
            }
            Err(error) => tracing::warn!(%error, "shim directory update did not complete"),
        }
    }

    /// Adds what the shims counted since the last look to
    /// `qcapsd_shim_requests_total`, emptying their count files.
    fn take_counts(&self, snap: &Snapshot) {
        let Some(dir) = snap.config.shim_dir.as_ref() else {
            return;
        };
        let (shims, _) = wanted(&snap.specs());
        for (shim, spec) in &shims {
            for (what, result) in [
                (RAN_QEMU, ShimResult::RanQemu),
                (FELL_BACK, ShimResult::FellBack),
            ] {
                let n = take_count(&shim_dir::count_file(dir, shim, what));
                if n > 0 {
                    self.metrics.shim_counted(&spec.name, result, n);
                }
            }
        }
    }
}

impl Feature for Shims {
    fn name(&self) -> &'static str {
        "shims"
    }

    fn after_pass(self: Arc<Self>, snapshot: Arc<Snapshot>) -> Option<Work> {
        snapshot.config.shim_dir.as_ref()?;
        Some(Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || self.take_counts(&snapshot)).await;
        }))
    }

    fn on_scrape(&self, snapshot: &Snapshot) {
        self.take_counts(snapshot);
    }
}

/// What a count file holds (a byte per call the shim counted), emptied:
/// the shims append to it, so it would otherwise grow by a byte per call
/// forever. A call counted between the read and the truncation (a window
/// of microseconds) is lost, never counted twice. Blocking; 0 for a file
/// that is not there or cannot be written.
pub fn take_count(path: &Path) -> u64 {
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return 0;
    };
    match f.metadata() {
        Ok(m) if m.len() > 0 => match f.set_len(0) {
            Ok(()) => m.len(),
            Err(_) => 0,
        },
        _ => 0,
    }
}

/// What [`sync`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Shims made or whose manifest changed: (shim, real binary).
    pub written: Vec<(String, PathBuf)>,
    /// Shims removed (their emulator is gone).
    pub removed: Vec<String>,
    /// Emulators without a shim, and why.
    pub skipped: Vec<String>,
    /// Whether the binary copy was (re)written.
    pub binary: bool,
}

/// The shims the emulator set calls for: file name of each binary → (its
/// emulator, its path). Two emulators whose binaries share a file name get
/// one shim (the first); one whose file name is not a plain name, or that
/// qcapsd's own files would shadow, gets none.
pub fn wanted(specs: &[EmulatorSpec]) -> (BTreeMap<String, EmulatorSpec>, Vec<String>) {
    let mut shims = BTreeMap::new();
    let mut skipped = Vec::new();
    for s in specs {
        let file = s
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path_ok = !s.path.as_os_str().to_string_lossy().contains('\n');
        if !crate::cache::store::is_plain_key(&file) || file.starts_with("qcapsd") || !path_ok {
            skipped.push(format!(
                "{}: no shim for a binary named '{}'",
                s.name,
                file.escape_debug()
            ));
        } else if let Some(first) = shims.get(&file) {
            let first: &EmulatorSpec = first;
            skipped.push(format!(
                "{}: no shim, its file name '{file}' is {}'s",
                s.name, first.name
            ));
        } else {
            shims.insert(file, s.clone());
        }
    }
    (shims, skipped)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// `bytes` at `path`, atomically (a temporary file in the same directory,
/// renamed), with `mode`; unless the file holds them already. Returns
/// whether it wrote.
fn put(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|b| b == bytes) {
        return Ok(false);
    }
    crate::support::files::replace(path, bytes, mode)?;
    Ok(true)
}

/// `dir/name` made a symlink to the binary copy, atomically; `Ok(false)`
/// when it is one already; an error (touching nothing) when something
/// else is there.
fn link(dir: &Path, name: &str) -> std::io::Result<bool> {
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(_) if shim_dir::is_shim(&path) => return Ok(false),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a qcapsd shim; left alone",
                    path.display()
                ),
            ));
        }
        Err(_) => {}
    }
    let tmp = dir.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(shim_dir::link_target(), &tmp)?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

/// An empty count file, writable by every caller of the shims.
fn count_file(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
    }
    set_mode(path, 0o666)
}

/// Makes `dir` hold exactly one shim per emulator of `specs`, each
/// fronting its real binary, with `binary` (the agent's own) copied in and
/// `timeout_ms` in each manifest. Blocking (file I/O).
pub fn sync(
    dir: &Path,
    specs: &[EmulatorSpec],
    binary: &Path,
    timeout_ms: u64,
) -> std::io::Result<Synced> {
    let private = dir.join(PRIVATE);
    let counts = private.join(COUNTS);
    for d in [dir, &private, &counts] {
        std::fs::create_dir_all(d)?;
        set_mode(d, 0o755)?;
    }
    let mut done = Synced::default();
    let exe = std::fs::read(binary)?;
    done.binary = put(&private.join(BINARY), &exe, 0o755)?;
    let (shims, skipped) = wanted(specs);
    done.skipped = skipped;
    for (name, spec) in &shims {
        let manifest = Manifest {
            emulator: &spec.name,
            real: &spec.path.to_string_lossy(),
            timeout_ms,
        }
        .render();
        let wrote = put(&shim_dir::manifest(dir, name), manifest.as_bytes(), 0o644)?;
        for what in [RAN_QEMU, FELL_BACK] {
            count_file(&shim_dir::count_file(dir, name, what))?;
        }
        match link(dir, name) {
            Ok(linked) if wrote || linked => done.written.push((name.clone(), spec.path.clone())),
            Ok(_) => {}
            Err(e) => {
                // No shim there: no manifest either.
                let _ = std::fs::remove_file(shim_dir::manifest(dir, name));
                for what in [RAN_QEMU, FELL_BACK] {
                    let _ = std::fs::remove_file(shim_dir::count_file(dir, name, what));
                }
                done.skipped.push(format!("{}: {e}", spec.name));
            }
        }
    }
    // Manifests of shims no longer wanted: remove them, their counts, and
    // the link if it is ours.
    for e in std::fs::read_dir(&private)?.filter_map(Result::ok) {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        if shims.contains_key(name) {
            continue;
        }
        let link = dir.join(name);
        if shim_dir::is_shim(&link) {
            std::fs::remove_file(&link)?;
        }
        for what in [RAN_QEMU, FELL_BACK] {
            let _ = std::fs::remove_file(shim_dir::count_file(dir, name, what));
        }
        std::fs::remove_file(e.path())?;
        done.removed.push(name.to_owned());
    }
    done.removed.sort();
    Ok(done)
}

/// One shim as `qcapsd shim` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub emulator: String,
    pub real: String,
    /// The link is in place (a manifest without it fronts nothing).
    pub linked: bool,
}

/// The shims in `dir`, by name. Blocking.
pub fn list(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join(PRIVATE))?.filter_map(Result::ok) {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        let bytes = std::fs::read(e.path())?;
        if let Ok(m) = shim_dir::parse_manifest(&bytes) {
            out.push(Listed {
                name: name.to_owned(),
                emulator: m.emulator.to_owned(),
                real: m.real.to_owned(),
                linked: shim_dir::is_shim(&dir.join(name)),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, path: &str) -> EmulatorSpec {
        EmulatorSpec {
            name: name.into(),
            path: path.into(),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn shims_follow_the_emulators_and_nothing_else_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("qcapsd-build");
        std::fs::write(&bin, b"the agent").unwrap();
        let dir = d.path().join("shims");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("README"), "mine").unwrap();
        std::fs::write(dir.join("qemu-system-arm"), "a real file").unwrap();
        let specs = [
            spec("x86_64", "/usr/bin/qemu-system-x86_64"),
            spec("aarch64", "/usr/bin/qemu-system-aarch64"),
            spec("arm", "/usr/bin/qemu-system-arm"),
            spec("other-x86", "/opt/q/qemu-system-x86_64"),
        ];
        let s = sync(&dir, &specs, &bin, 3000).unwrap();
        assert!(s.binary);
        assert_eq!(s.written.len(), 2);
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        assert_eq!(
            names(&dir),
            [
                ".qcapsd",
                "README",
                "qemu-system-aarch64",
                "qemu-system-arm",
                "qemu-system-x86_64"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("qemu-system-arm")).unwrap(),
            "a real file"
        );
        assert_eq!(
            std::fs::read(dir.join("qemu-system-x86_64")).unwrap(),
            b"the agent"
        );
        let listed = list(&dir).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|l| l.linked));
        let x86 = listed
            .iter()
            .find(|l| l.name == "qemu-system-x86_64")
            .unwrap();
        assert_eq!(
            (x86.emulator.as_str(), x86.real.as_str()),
            ("x86_64", "/usr/bin/qemu-system-x86_64")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(&shim_dir::count_file(&dir, "qemu-system-x86_64", RAN_QEMU)),
            0o666
        );
        assert_eq!(mode(&dir.join(PRIVATE).join(BINARY)), 0o755);

        // Again: nothing to do.
        let again = sync(&dir, &specs, &bin, 3000).unwrap();
        assert_eq!((again.written.len(), again.binary), (0, false));

        // aarch64 goes away, the binary changes.
        std::fs::write(&bin, b"the agent, upgraded").unwrap();
        let s = sync(&dir, &specs[..1], &bin, 3000).unwrap();
        assert_eq!(s.removed, ["qemu-system-aarch64"]);
        assert!(s.binary);
        assert_eq!(
            names(&dir),
            [".qcapsd", "README", "qemu-system-arm", "qemu-system-x86_64"]
        );
        assert_eq!(
            std::fs::read(dir.join("qemu-system-x86_64")).unwrap(),
            b"the agent, upgraded"
        );
        assert!(
            !names(&dir.join(PRIVATE))
                .iter()
                .any(|n| n.starts_with(".tmp-")),
            "no temporary file is left"
        );
    }
}
