//! The agent's configuration: YAML → validated [`Config`], and the emulator
//! set it names (explicit paths, globs, or the default discovery).
//!
//! Two stages, as ripgrep does: serde reads the raw file with every key
//! checked (unknown keys, bad durations, relative paths and zero limits are
//! errors that carry the line), then [`Config::emulators`] resolves globs and
//! discovery into the concrete emulator set, which a reload redoes.

use crate::qemu::probe::DEFAULT_DEVICES;
use serde::{Deserialize, Deserializer, de};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the query API listens by default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9733";
pub const DEFAULT_REVALIDATE_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_PROBE_CONCURRENCY: usize = 2;
/// Cache directory when running as root.
pub const ROOT_CACHE_DIR: &str = "/var/cache/qcapsd";
/// Directories searched, besides PATH, by the default discovery.
pub const DISCOVERY_EXTRA_DIRS: &[&str] = &["/usr/libexec"];
/// The longest duration any key accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Upper bounds that keep a typo from becoming a resource problem.
pub const MAX_PROBE_CONCURRENCY: usize = 64;
pub const MAX_CONNECTIONS: usize = 100_000;
/// File-name patterns of the default discovery.
pub const DISCOVERY_PATTERNS: &[&str] = &["qemu-system-*", "qemu-kvm", "kvm"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub unix_socket: Option<AbsPath>,
    pub cache_dir: AbsPath,
    pub revalidate_interval: Period,
    pub probe_timeout: Period,
    pub probe_concurrency: NonZeroUsize,
    /// `None`: the default discovery.
    pub emulators: Option<Vec<EmulatorEntry>>,
    pub device_properties: Vec<String>,
    /// Root of the host files read for the fingerprint (`/proc/cpuinfo`,
    /// `/dev/kvm`, …); tests point it at a fixture tree.
    pub host_root: AbsPath,
    /// Where QEMU keeps its loadable modules; `None`: the usual places.
    pub module_dirs: Option<Vec<AbsPath>>,
    pub http: HttpLimits,
}

/// Limits of the query API, all with defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    pub max_connections: NonZeroUsize,
    pub max_header_bytes: NonZeroUsize,
    pub max_body_bytes: usize,
    pub request_timeout: Period,
    pub header_read_timeout: Period,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: NonZeroUsize::new(512).unwrap_or(NonZeroUsize::MIN),
            max_header_bytes: NonZeroUsize::new(16 << 10).unwrap_or(NonZeroUsize::MIN),
            max_body_bytes: 4 << 10,
            request_timeout: Period(Duration::from_secs(10)),
            header_read_timeout: Period(Duration::from_secs(5)),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9733))),
            metrics_listen: None,
            unix_socket: None,
            cache_dir: AbsPath(default_cache_dir()),
            revalidate_interval: Period(DEFAULT_REVALIDATE_INTERVAL),
            probe_timeout: Period(DEFAULT_PROBE_TIMEOUT),
            probe_concurrency: NonZeroUsize::new(DEFAULT_PROBE_CONCURRENCY)
                .unwrap_or(NonZeroUsize::MIN),
            emulators: None,
            device_properties: DEFAULT_DEVICES.iter().map(|s| (*s).to_owned()).collect(),
            host_root: AbsPath(PathBuf::from("/")),
            module_dirs: None,
            http: HttpLimits::default(),
        }
    }
}

/// `/var/cache/qcapsd` for root, `$XDG_CACHE_HOME/qcapsd` (or
/// `~/.cache/qcapsd`) otherwise.
pub fn default_cache_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from(ROOT_CACHE_DIR);
    }
    let abs = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").and_then(abs) {
        return x.join("qcapsd");
    }
    if let Some(h) = std::env::var_os("HOME").and_then(abs) {
        return h.join(".cache/qcapsd");
    }
    std::env::temp_dir().join("qcapsd-cache")
}

/// One `emulators:` entry: a `path` (with an optional `name`) or a `glob`.
#[derive(Debug, Clone, PartialEq)]
pub enum EmulatorEntry {
    Path { path: PathBuf, name: Option<String> },
    Glob(String),
}

impl<'de> Deserialize<'de> for EmulatorEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            path: Option<AbsPath>,
            name: Option<String>,
            glob: Option<String>,
        }
        let raw = Raw::deserialize(d)?;
        match (raw.path, raw.glob, raw.name) {
            (Some(p), None, name) => {
                if let Some(n) = &name {
                    validate_name(n).map_err(de::Error::custom)?;
                }
                Ok(EmulatorEntry::Path { path: p.0, name })
            }
            (None, Some(g), None) => {
                if !g.starts_with('/') {
                    return Err(de::Error::custom(format!(
                        "glob '{g}' must be an absolute path pattern"
                    )));
                }
                Ok(EmulatorEntry::Glob(g))
            }
            (None, Some(_), Some(_)) => Err(de::Error::custom(
                "'name' goes with 'path', not 'glob' (a glob's emulators are named by file name)",
            )),
            (Some(_), Some(_), _) => Err(de::Error::custom(
                "an entry has either 'path' or 'glob', not both",
            )),
            (None, None, _) => Err(de::Error::custom("an entry needs 'path' or 'glob'")),
        }
    }
}

/// Names are used in URLs, file names and metric labels: keep them plain.
fn validate_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !n.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name '{n}' must be 1-64 characters of letters, digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

/// An absolute path (relative ones are refused: the agent's working
/// directory is not something to depend on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("empty path"));
        }
        let p = PathBuf::from(&s);
        if !p.is_absolute() {
            return Err(de::Error::custom(format!("path '{s}' must be absolute")));
        }
        Ok(AbsPath(p))
    }
}

impl std::ops::Deref for AbsPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// A positive duration written with a unit: `500ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period(pub Duration);

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Period).map_err(de::Error::custom)
    }
}

impl std::ops::Deref for Period {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h` (an integer and a unit; zero refused).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("bad duration '{s}': write an integer and a unit (ms, s, m, h), e.g. 30s");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("duration '{s}' must be more than zero"));
    }
    if d > MAX_DURATION {
        return Err(format!("duration '{s}' is longer than a year"));
    }
    Ok(d)
}

/// One concrete emulator the agent keeps: a configured name and its path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EmulatorSpec {
    pub name: String,
    pub path: PathBuf,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates YAML text. Errors name the key and the line.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let cfg: Config = serde_yaml::from_str(text).map_err(|e| locate(text, e))?;
        for d in &cfg.device_properties {
            if d.is_empty() || d.len() > 128 {
                return Err(format!("device_properties: bad device name '{d}'"));
            }
        }
        let at = |key: &str| {
            line_of_key(text, key)
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default()
        };
        if cfg.probe_concurrency.get() > MAX_PROBE_CONCURRENCY {
            return Err(format!(
                "probe_concurrency: at most {MAX_PROBE_CONCURRENCY}{}",
                at("probe_concurrency")
            ));
        }
        if cfg.http.max_connections.get() > MAX_CONNECTIONS {
            return Err(format!(
                "http.max_connections: at most {MAX_CONNECTIONS}{}",
                at("max_connections")
            ));
        }
        if cfg.http.max_header_bytes.get() > 1 << 20 {
            return Err(format!(
                "http.max_header_bytes: at most 1048576{}",
                at("max_header_bytes")
            ));
        }
        // Names of explicit paths must be unique; the rest is checked once
        // globs are resolved.
        let mut seen = BTreeMap::new();
        for e in cfg.emulators.iter().flatten() {
            if let EmulatorEntry::Path { path, name } = e {
                let n = name.clone().unwrap_or_else(|| file_name(path));
                if seen.insert(n.clone(), ()).is_some() {
                    return Err(format!(
                        "emulators: duplicate name '{n}'{}",
                        line_of_second(text, &n)
                            .map(|l| format!(" at line {l}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        Ok(cfg)
    }

    /// Resolves the emulator set: explicit paths as given, globs and the
    /// default discovery against the file system now. Symlinks to a binary
    /// already in the set are skipped (Debian's qemu-system-amd64 is
    /// qemu-system-x86_64).
    pub fn emulators(&self) -> Result<Vec<EmulatorSpec>, String> {
        let mut out: Vec<EmulatorSpec> = Vec::new();
        let mut seen_targets = Vec::new();
        let mut push = |spec: EmulatorSpec, explicit: bool| -> Result<(), String> {
            if out.iter().any(|o| o.name == spec.name) {
                if explicit {
                    return Err(format!("emulators: duplicate name '{}'", spec.name));
                }
                return Ok(());
            }
            let target = std::fs::canonicalize(&spec.path).ok();
            if !explicit && target.is_some() && seen_targets.contains(&target) {
                return Ok(());
            }
            seen_targets.push(target);
            out.push(spec);
            Ok(())
        };
        match &self.emulators {
            Some(entries) => {
                for e in entries {
                    match e {
                        EmulatorEntry::Path { path, name } => push(
                            EmulatorSpec {
                                name: name.clone().unwrap_or_else(|| file_name(path)),
                                path: path.clone(),
                            },
                            true,
                        )?,
                        EmulatorEntry::Glob(g) => {
                            for path in glob(g) {
                                push(spec_for(path), false)?;
                            }
                        }
                    }
                }
            }
            None => {
                for path in discover() {
                    push(spec_for(path), false)?;
                }
            }
        }
        Ok(out)
    }

    /// QEMU module directories whose mtime is part of the fingerprint.
    pub fn module_dirs(&self) -> Vec<PathBuf> {
        match &self.module_dirs {
            Some(d) => d.iter().map(|p| p.0.clone()).collect(),
            None => {
                let root = &self.host_root.0;
                let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
                [
                    format!("usr/lib/{multiarch}/qemu"),
                    "usr/lib64/qemu".to_owned(),
                    "usr/lib/qemu".to_owned(),
                ]
                .iter()
                .map(|rel| root.join(rel))
                .collect()
            }
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn spec_for(path: PathBuf) -> EmulatorSpec {
    EmulatorSpec {
        name: file_name(&path),
        path,
    }
}

/// serde_yaml places structural errors (unknown keys, wrong types) but not
/// the ones our own value types raise; those quote the bad value, so find the
/// `key: value` line that holds it and name both.
fn locate(text: &str, e: serde_yaml::Error) -> String {
    let msg = e.to_string();
    if msg.contains(" line ") {
        return msg;
    }
    let quoted = msg.split('\'').nth(1).filter(|v| !v.is_empty());
    let found = quoted.and_then(|v| {
        text.lines().enumerate().find_map(|(i, l)| {
            let l = l.trim().trim_start_matches("- ");
            let (key, val) = l.split_once(':')?;
            let val = val.trim().trim_matches(|c| c == '"' || c == '\'');
            (val == v).then(|| (key.trim().to_owned(), i + 1))
        })
    });
    if let Some((key, line)) = found {
        return format!("{key}: {msg} at line {line}");
    }
    // Serde's position for a value error is that of the enclosing mapping.
    if let Some(loc) = e.location() {
        let key = text
            .lines()
            .nth(loc.line().saturating_sub(1))
            .and_then(|l| l.trim().trim_start_matches("- ").split_once(':'))
            .map(|(k, _)| format!("{}: ", k.trim()))
            .unwrap_or_default();
        return format!("{key}{msg} at line {}", loc.line());
    }
    msg
}

/// The line (1-based) of the first `key:` in the text.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{key}:"))
        })
        .map(|i| i + 1)
}

/// The line (1-based) of the second `name: n` in the text, for an error
/// about a duplicate.
fn line_of_second(text: &str, n: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim().trim_start_matches("- ").trim();
            l.strip_prefix("name:")
                .or_else(|| l.strip_prefix("path:"))
                .is_some_and(|v| {
                    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                    v == n || v.ends_with(&format!("/{n}"))
                })
        })
        .nth(1)
        .map(|(i, _)| i + 1)
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
            e.file_name()
                .to_str()
                .is_some_and(|n| patterns.iter().any(|p| wildcard_match(p, n)))
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

/// The default discovery: `qemu-system-*`, `qemu-kvm` and `kvm` on PATH and
/// in /usr/libexec.
pub fn discover() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(DISCOVERY_EXTRA_DIRS.iter().map(PathBuf::from));
    let mut out = Vec::new();
    let mut seen_dirs = Vec::new();
    for d in dirs {
        let canon = std::fs::canonicalize(&d).unwrap_or_else(|_| d.clone());
        if seen_dirs.contains(&canon) {
            continue;
        }
        seen_dirs.push(canon);
        out.extend(match_in_dir(&d, DISCOVERY_PATTERNS));
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

    #[test]
    fn empty_text_is_the_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(*c.revalidate_interval, Duration::from_secs(60));
        assert_eq!(c.probe_concurrency.get(), 2);
        assert!(c.emulators.is_none());
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            "listen: 127.0.0.1:9800\nmetrics_listen: 127.0.0.1:9801\nunix_socket: /run/qcapsd.sock\n\
             cache_dir: /tmp/c\nrevalidate_interval: 5m\nprobe_timeout: 500ms\nprobe_concurrency: 4\n\
             emulators:\n  - path: /usr/bin/qemu-system-x86_64\n    name: x86_64\n  - glob: /usr/bin/qemu-system-*\n\
             device_properties: [virtio-blk-pci]\nhttp:\n  max_connections: 8\n",
        )
        .unwrap();
        assert_eq!(*c.revalidate_interval, Duration::from_secs(300));
        assert_eq!(*c.probe_timeout, Duration::from_millis(500));
        assert_eq!(c.http.max_connections.get(), 8);
        assert_eq!(
            c.emulators.unwrap()[0],
            EmulatorEntry::Path {
                path: "/usr/bin/qemu-system-x86_64".into(),
                name: Some("x86_64".into())
            }
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = Config::parse("listen: 127.0.0.1:1\nlisten_port: 9\n").unwrap_err();
        assert!(e.contains("listen_port") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_duration_names_line() {
        let e = Config::parse("probe_timeout: 30\n").unwrap_err();
        assert!(
            e.contains("bad duration '30'") && e.contains("line 1"),
            "{e}"
        );
        let e = Config::parse("cache_dir: /x\nrevalidate_interval: 0s\n").unwrap_err();
        assert!(e.contains("more than zero") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let e = Config::parse("cache_dir: cache\n").unwrap_err();
        assert!(
            e.contains("must be absolute") && e.contains("line 1"),
            "{e}"
        );
        let e = Config::parse("emulators:\n  - path: qemu-system-x86_64\n").unwrap_err();
        assert!(
            e.contains("must be absolute") && e.contains("line 2"),
            "{e}"
        );
        let e = Config::parse("emulators:\n  - glob: qemu-*\n").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused_with_the_line() {
        let e = Config::parse(
            "emulators:\n  - path: /a/qemu-system-x86_64\n  - path: /b/qemu-system-x86_64\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "emulators: duplicate name 'qemu-system-x86_64' at line 3"
        );
        let e =
            Config::parse("emulators:\n  - path: /a/q\n    name: x\n  - path: /b/r\n    name: x\n")
                .unwrap_err();
        assert_eq!(e, "emulators: duplicate name 'x' at line 5");
    }

    #[test]
    fn entry_needs_exactly_one_of_path_and_glob() {
        assert!(
            Config::parse("emulators:\n  - name: x\n")
                .unwrap_err()
                .contains("needs 'path' or 'glob'")
        );
        assert!(
            Config::parse("emulators:\n  - path: /a\n    glob: /b*\n")
                .unwrap_err()
                .contains("not both")
        );
        assert!(
            Config::parse("emulators:\n  - path: /a\n    name: ../etc\n")
                .unwrap_err()
                .contains("name '../etc'")
        );
    }

    #[test]
    fn limits_are_bounded() {
        let e = Config::parse("cache_dir: /x\nprobe_concurrency: 1000\n").unwrap_err();
        assert_eq!(e, "probe_concurrency: at most 64 at line 2");
        let e = Config::parse("http:\n  max_connections: 99999999999\n").unwrap_err();
        assert_eq!(e, "http.max_connections: at most 100000 at line 2");
        let e = Config::parse("probe_timeout: 99999999h\n").unwrap_err();
        assert!(
            e.contains("longer than a year") && e.contains("line 1"),
            "{e}"
        );
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let e = Config::parse("probe_concurrency: 0\n").unwrap_err();
        assert!(
            e.contains("probe_concurrency") || e.contains("line 1"),
            "{e}"
        );
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
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        for n in ["qemu-system-x86_64", "qemu-system-aarch64"] {
            let p = d.path().join(n);
            std::fs::write(&p, "").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::os::unix::fs::symlink("qemu-system-x86_64", d.path().join("qemu-system-amd64"))
            .unwrap();
        std::fs::write(d.path().join("qemu-system-notes"), "").unwrap(); // not executable
        let yaml = format!(
            "emulators:\n  - glob: {}/qemu-system-*\n",
            d.path().display()
        );
        let names: Vec<_> = Config::parse(&yaml)
            .unwrap()
            .emulators()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["qemu-system-aarch64", "qemu-system-x86_64"]);
    }
}
