//! Resolving a config's `emulators:` into the concrete emulator set, against
//! the file system as it is now: explicit paths as given, globs expanded,
//! or, without the key, the default discovery (`qemu-system-*`,
//! `qemu-kvm`, `kvm` on PATH and in /usr/libexec). A reload redoes it.
//!
//! Every emulator gets a name that is a plain key (see
//! [`crate::cache::store::is_plain_key`]), and no two share one, so no two
//! share a cache file. A glob that yields an unusable or taken name is an
//! error that says to list the file with `name:`; the default discovery
//! skips such files with a note instead, so that a stray binary on PATH
//! cannot stop an agent that was given no config.

use crate::config::{Config, EmulatorEntry, defaults};
use std::path::{Path, PathBuf};

/// One concrete emulator the agent keeps: a configured name and its path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EmulatorSpec {
    pub name: String,
    pub path: PathBuf,
}

/// The emulator set, with notes on what discovery skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub emulators: Vec<EmulatorSpec>,
    /// Files the default discovery found but left out, and why.
    pub skipped: Vec<String>,
    /// Where the emulators were looked for: the default discovery's
    /// patterns and directories, or the config's globs.
    pub looked: String,
}

impl Resolved {
    /// When the set is empty: a warning that says where discovery looked
    /// and what to do (an agent with nothing to serve is not an error).
    pub fn nothing_found(&self) -> Option<String> {
        self.emulators.is_empty().then(|| {
            format!(
                "no QEMU emulator found ({}): install QEMU (e.g. apt install qemu-system-x86), or list emulators in the config (`emulators:` with `path:` or `glob:`)",
                self.looked
            )
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error(
        "glob {pattern} matched {}, whose file name is not a usable emulator name: list it as `- path: {}` with a `name:`",
        .path.display(), .path.display()
    )]
    UnusableName { pattern: String, path: PathBuf },
    #[error(
        "glob {pattern} matched {}, but the name '{name}' is already used by {}: list one of them as `- path:` with a `name:`",
        .path.display(), .taken_by.display()
    )]
    NameTaken {
        pattern: String,
        path: PathBuf,
        name: String,
        taken_by: PathBuf,
    },
}

/// Where an emulator came from, which decides what a clash means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin<'a> {
    Explicit,
    Glob(&'a str),
    Discovery,
}

/// Whether `cfg`'s emulator set depends on what is on disk (globs or the
/// default discovery) rather than listed paths only.
pub fn searches(cfg: &Config) -> bool {
    match &cfg.emulators {
        None => true,
        Some(list) => list.0.iter().any(|e| matches!(e, EmulatorEntry::Glob(_))),
    }
}

/// The directories a search looks in (to watch them for new binaries).
pub fn searched_dirs(cfg: &Config) -> Vec<PathBuf> {
    match &cfg.emulators {
        None => discovery_dirs(),
        Some(list) => list
            .0
            .iter()
            .filter_map(|e| match e {
                EmulatorEntry::Glob(g) => Path::new(&g.0).parent().map(Path::to_path_buf),
                EmulatorEntry::Path { .. } => None,
            })
            .collect(),
    }
}

/// Resolves `cfg`'s emulators now. Symlinks to a binary already in the set
/// are skipped (Debian's qemu-system-amd64 is qemu-system-x86_64).
pub fn resolve(cfg: &Config) -> Result<Resolved, DiscoveryError> {
    let mut r = Resolver::default();
    match &cfg.emulators {
        Some(list) => {
            let globs: Vec<&str> = list
                .0
                .iter()
                .filter_map(|e| match e {
                    EmulatorEntry::Glob(g) => Some(g.0.as_str()),
                    EmulatorEntry::Path { .. } => None,
                })
                .collect();
            r.done.looked = if globs.is_empty() {
                "the config's `emulators:` list is empty".to_owned()
            } else {
                format!("the config's globs match nothing: {}", globs.join(", "))
            };
            for e in &list.0 {
                match e {
                    EmulatorEntry::Path { path, name } => r.add(
                        EmulatorSpec {
                            name: name.clone(),
                            path: path.clone(),
                        },
                        Origin::Explicit,
                    )?,
                    EmulatorEntry::Glob(g) => {
                        for path in glob(&g.0) {
                            r.add_file(path, Origin::Glob(&g.0))?;
                        }
                    }
                }
            }
        }
        None => {
            let dirs = discovery_dirs();
            r.done.looked = format!(
                "looked for {} in {}",
                defaults::DISCOVERY_PATTERNS.join(", "),
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            );
            for path in discover_in(&dirs) {
                r.add_file(path, Origin::Discovery)?;
            }
        }
    }
    Ok(r.done)
}

#[derive(Default)]
struct Resolver {
    done: Resolved,
    /// Canonical targets of what is in the set (`None`: not resolvable).
    targets: Vec<Option<PathBuf>>,
}

impl Resolver {
    fn add_file(&mut self, path: PathBuf, origin: Origin) -> Result<(), DiscoveryError> {
        // A shim directory on PATH (or under a glob) holds qcapsd, not QEMU.
        if crate::support::shim_dir::is_shim(&path) {
            self.done.skipped.push(format!(
                "{}: a qcapsd shim, not QEMU (its shim directory is searched)",
                path.display()
            ));
            return Ok(());
        }
        let name = file_name(&path);
        if crate::config::name_problem(&name).is_some() {
            return match origin {
                Origin::Glob(pattern) => Err(DiscoveryError::UnusableName {
                    pattern: pattern.to_owned(),
                    path,
                }),
                _ => {
                    self.done.skipped.push(format!(
                        "{}: its file name is not a usable emulator name (list it in the config with a `name:`)",
                        path.display()
                    ));
                    Ok(())
                }
            };
        }
        self.add(EmulatorSpec { name, path }, origin)
    }

    fn add(&mut self, spec: EmulatorSpec, origin: Origin) -> Result<(), DiscoveryError> {
        let target = std::fs::canonicalize(&spec.path).ok();
        if origin != Origin::Explicit && target.is_some() && self.targets.contains(&target) {
            return Ok(());
        }
        if let Some(other) = self.done.emulators.iter().find(|o| o.name == spec.name) {
            return match origin {
                // Explicit names are unique (the config checked them); a
                // glob or discovery match may share one with them.
                Origin::Glob(pattern) => Err(DiscoveryError::NameTaken {
                    pattern: pattern.to_owned(),
                    name: spec.name,
                    taken_by: other.path.clone(),
                    path: spec.path,
                }),
                Origin::Discovery | Origin::Explicit => {
                    self.done.skipped.push(format!(
                        "{}: the name '{}' is already used by {} (earlier on PATH)",
                        spec.path.display(),
                        spec.name,
                        other.path.display()
                    ));
                    Ok(())
                }
            };
        }
        self.targets.push(target);
        self.done.emulators.push(spec);
        Ok(())
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Files matching an absolute glob whose wildcards (`*`, `?`) are in the
/// last component only, sorted.
pub fn glob(pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (Some(dir), Some(pat)) = (p.parent(), p.file_name().and_then(|f| f.to_str())) else {
        return Vec::new();
    };
    match_in_dir(dir, &[pat])
}

fn match_in_dir(dir: &Path, patterns: &[&str]) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            patterns.iter().any(|p| wildcard_match(p, &n))
        })
        .map(|e| e.path())
        .filter(|p| is_executable_file(p))
        .collect();
    drop_aliases(v)
}

/// Sorts paths and drops symlinks to a real file also in the list (Debian's
/// qemu-system-amd64 → qemu-system-x86_64 keeps qemu-system-x86_64).
fn drop_aliases(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    v.sort();
    let is_link = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    let real_targets: Vec<PathBuf> = v
        .iter()
        .filter(|p| !is_link(p))
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    v.retain(|p| {
        !is_link(p) || std::fs::canonicalize(p).map_or(true, |t| !real_targets.contains(&t))
    });
    v
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where the default discovery looks: PATH's absolute directories, then
/// [`defaults::DISCOVERY_EXTRA_DIRS`].
fn discovery_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(defaults::DISCOVERY_EXTRA_DIRS.iter().map(PathBuf::from));
    dirs
}

/// The default discovery: `qemu-system-*`, `qemu-kvm` and `kvm` on PATH and
/// in /usr/libexec, in PATH order.
pub fn discover() -> Vec<PathBuf> {
    discover_in(&discovery_dirs())
}

fn discover_in(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut seen_dirs = Vec::new();
    for d in dirs {
        let canon = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if seen_dirs.contains(&canon) {
            continue;
        }
        seen_dirs.push(canon);
        out.extend(match_in_dir(d, defaults::DISCOVERY_PATTERNS));
    }
    out
}

/// `*` and `?` wildcards over a file name.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn names(yaml: &str) -> Result<Vec<String>, DiscoveryError> {
        let cfg = Config::parse(yaml).unwrap();
        resolve(&cfg).map(|r| r.emulators.into_iter().map(|s| s.name).collect())
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("qemu-system-*", "qemu-system-x86_64"));
        assert!(wildcard_match("qemu-kvm", "qemu-kvm"));
        assert!(!wildcard_match("qemu-kvm", "qemu-kvm2"));
        assert!(wildcard_match("q?mu-*-x*", "qemu-system-x86_64"));
        assert!(!wildcard_match("qemu-system-*", "qemu-img"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn globs_skip_symlinks_to_binaries_already_listed() {
        let d = tempfile::tempdir().unwrap();
        executable(d.path(), "qemu-system-x86_64");
        executable(d.path(), "qemu-system-aarch64");
        std::os::unix::fs::symlink("qemu-system-x86_64", d.path().join("qemu-system-amd64"))
            .unwrap();
        std::fs::write(d.path().join("qemu-system-notes"), "").unwrap(); // not executable
        let yaml = format!(
            "emulators:\n  - glob: {}/qemu-system-*\n",
            d.path().display()
        );
        assert_eq!(
            names(&yaml).unwrap(),
            ["qemu-system-aarch64", "qemu-system-x86_64"]
        );
    }

    #[test]
    fn shims_are_never_taken_for_qemu() {
        // A shim directory globbed (or first on PATH: discovery adds files
        // the same way): the real binaries are found, the shims skipped
        // with a note.
        let d = tempfile::tempdir().unwrap();
        let (bin, shims) = (d.path().join("bin"), d.path().join("shims"));
        let private = shims.join(crate::support::shim_dir::PRIVATE);
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&private).unwrap();
        executable(&bin, "qemu-system-x86_64");
        executable(&private, crate::support::shim_dir::BINARY);
        std::os::unix::fs::symlink(
            crate::support::shim_dir::link_target(),
            shims.join("qemu-system-x86_64"),
        )
        .unwrap();
        let yaml = format!(
            "emulators:\n  - glob: {}/qemu-system-*\n  - glob: {}/qemu-system-*\n",
            shims.display(),
            bin.display()
        );
        let r = resolve(&Config::parse(&yaml).unwrap()).unwrap();
        let paths: Vec<&Path> = r.emulators.iter().map(|e| e.path.as_path()).collect();
        assert_eq!(paths, [bin.join("qemu-system-x86_64")]);
        assert!(
            r.skipped[0].contains("a qcapsd shim, not QEMU"),
            "{:?}",
            r.skipped
        );
    }

    #[test]
    fn a_glob_matching_an_unusable_name_says_to_list_it_with_a_name() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["qemu x", "qemu;rm", "qemué", &"q".repeat(80)] {
            let p = executable(d.path(), bad);
            let yaml = format!("emulators:\n  - glob: {}/q*\n", d.path().display());
            let e = names(&yaml).unwrap_err();
            assert!(
                matches!(&e, DiscoveryError::UnusableName { path, .. } if *path == p),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains("with a `name:`"), "{e}");
            std::fs::remove_file(p).unwrap();
        }
        // Hidden files never match a pattern that does not start with '.'.
        executable(d.path(), ".qemu-hidden");
        let yaml = format!("emulators:\n  - glob: {}/*qemu*\n", d.path().display());
        let e = names(&yaml).unwrap_err();
        assert!(e.to_string().contains(".qemu-hidden"), "{e}");
    }

    #[test]
    fn two_globs_can_never_give_two_emulators_one_name() {
        let d = tempfile::tempdir().unwrap();
        let (d1, d2) = (d.path().join("d1"), d.path().join("d2"));
        std::fs::create_dir_all(&d1).unwrap();
        std::fs::create_dir_all(&d2).unwrap();
        executable(&d1, "qemu_x");
        executable(&d2, "qemu_x");
        let yaml = format!(
            "emulators:\n  - glob: {}/qemu*\n  - glob: {}/qemu*\n",
            d1.display(),
            d2.display()
        );
        let e = names(&yaml).unwrap_err();
        assert!(
            matches!(&e, DiscoveryError::NameTaken { name, .. } if name == "qemu_x"),
            "{e}"
        );
    }

    #[test]
    fn an_explicit_name_wins_over_a_glob_of_the_same_binary() {
        let d = tempfile::tempdir().unwrap();
        let x = executable(d.path(), "qemu-system-x86_64");
        let yaml = format!(
            "emulators:\n  - path: {}\n    name: x86_64\n  - glob: {}/qemu-system-*\n",
            x.display(),
            d.path().display()
        );
        assert_eq!(names(&yaml).unwrap(), ["x86_64"]);
    }
}
