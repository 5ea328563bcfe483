//! The agent's configuration: YAML text → validated [`Config`].
//!
//! Every check runs inside a serde visitor, so that the YAML library places
//! the error at the offending value: errors read `key.path: what is wrong at
//! line N column M`. Emulator names are checked here too, including those
//! derived from a `path:` and duplicates. Resolving globs and discovery
//! against the file system is [`discovery`]'s job; every default
//! value is in [`defaults`].

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub mod defaults;
pub mod discovery;
pub mod emulators;
pub mod values;

pub use emulators::{EmulatorEntry, EmulatorList, name_problem};
pub use values::{
    AbsPath, Accels, DeviceName, DurationError, FeatureFile, GlobPattern, LabelPart, Limit,
    MaxWait, Period, PureQuery, ShimDir, ValueError, limits, parse_duration,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}not UTF-8 text (line {line})", file_prefix(.path))]
    NotUtf8 { path: String, line: usize },
    #[error(
        "{}more than one YAML document (the second starts at line {line}); a config is one document",
        file_prefix(.path)
    )]
    MultipleDocuments { path: String, line: usize },
    /// A character YAML does not allow in a file (the library says only
    /// its byte position).
    #[error(
        "{}control character {code} at line {line} column {column}: remove it, or write it as an escape in double quotes (\"\\x01\")",
        file_prefix(.path)
    )]
    ControlCharacter {
        path: String,
        code: String,
        line: usize,
        column: usize,
    },
    /// The document is not a mapping of keys.
    #[error(
        "{}the config must be a mapping of keys (e.g. `listen: 127.0.0.1:9733` on a line of its own), not {found}; an empty file means every default",
        file_prefix(.path)
    )]
    NotAMapping { path: String, found: &'static str },
    /// The YAML library's message: the key path, what is wrong, and where.
    #[error("{}{message}", file_prefix(.path))]
    Invalid { path: String, message: String },
}

/// `FILE: ` before a message, or nothing for text that came from no file.
fn file_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The query API and /metrics on TCP; `None` (`listen: null`) serves
    /// the query API on the unix socket only.
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub unix_socket: Option<AbsPath>,
    pub cache_dir: AbsPath,
    pub revalidate_interval: Period,
    pub probe_timeout: Period,
    /// `None`: derived from the CPUs available to the agent.
    pub probe_concurrency: Option<Limit<1, { limits::MAX_PROBE_CONCURRENCY }>>,
    pub forced_probe_interval: Period,
    /// Changes kept per emulator (newest first).
    pub change_history: Limit<1, { limits::MAX_CHANGE_HISTORY }>,
    /// `None`: the default discovery.
    pub emulators: Option<EmulatorList>,
    pub device_properties: Vec<DeviceName>,
    /// Accelerators probed, in order of preference (`kvm`, `tcg`).
    pub accels: Accels,
    /// Root of the host files read for the fingerprint (`/proc/cpuinfo`,
    /// `/dev/kvm`, …); tests point it at a fixture tree.
    pub host_root: AbsPath,
    /// Where QEMU keeps its loadable modules; `None`: the usual places.
    pub module_dirs: Option<Vec<AbsPath>>,
    pub http: HttpLimits,
    /// Where the agent keeps one shim per emulator (and their socket);
    /// `None`: no shims.
    pub shim_dir: Option<ShimDir>,
    /// The binary copied into `shim_dir` for the shims to run; `None`: the
    /// agent's own. The package points it at its static build, which
    /// starts in under a millisecond.
    pub shim_binary: Option<AbsPath>,
    /// Queries recorded right after each probe (with `shim_dir`).
    pub shim_prewarm: Vec<PureQuery>,
    /// Argument lists the memo keeps per emulator.
    pub shim_memo_max_queries: Limit<1, { limits::MAX_MEMO_QUERIES }>,
    /// Bytes of one answer the memo keeps.
    pub shim_memo_max_bytes: Limit<1, { limits::MAX_MEMO_BYTES }>,
    /// QEMU's verdicts (`verify`) kept per emulator: distinct VMs asked
    /// about (machine, accelerator, CPU, devices).
    pub verify_max: Limit<1, { limits::MAX_MEMO_QUERIES }>,
    /// How long a shim waits for the agent before it runs QEMU itself.
    pub shim_timeout: Period,
    /// node-feature-discovery's feature file the agent keeps (node
    /// labels); `None`: none.
    pub nfd_features_file: Option<FeatureFile>,
    /// CPU models labelled where usable.
    pub nfd_cpu_models: Vec<LabelPart>,
    /// Machine types labelled where present.
    pub nfd_machine_types: Vec<LabelPart>,
}

/// Limits of the HTTP servers, all with defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    pub max_connections: Limit<1, { limits::MAX_CONNECTIONS }>,
    pub max_header_bytes: Limit<1, { limits::MAX_HEADER_BYTES }>,
    pub max_body_bytes: Limit<1, { limits::MAX_BODY_BYTES }>,
    /// The largest capabilities document a request may carry
    /// (`POST /v1/vms/against`).
    pub max_document_bytes: Limit<1, { limits::MAX_DOCUMENT_BYTES }>,
    /// How long a query waits on a probe before it gets 503.
    pub request_timeout: Period,
    /// A connection must deliver a request head within this (from accept,
    /// or from its first byte after an idle period).
    pub header_read_timeout: Period,
    /// A response write that makes no progress for this long closes the
    /// connection (a client that does not read).
    pub write_timeout: Period,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Period,
    /// The longest a long-poll (`?wait=`) is held (at most 10 minutes).
    pub max_wait: MaxWait,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: Limit(defaults::MAX_CONNECTIONS),
            max_header_bytes: Limit(defaults::MAX_HEADER_BYTES),
            max_body_bytes: Limit(defaults::MAX_BODY_BYTES),
            max_document_bytes: Limit(defaults::MAX_DOCUMENT_BYTES),
            request_timeout: Period(defaults::REQUEST_TIMEOUT),
            header_read_timeout: Period(defaults::HEADER_READ_TIMEOUT),
            write_timeout: Period(defaults::WRITE_TIMEOUT),
            idle_timeout: Period(defaults::IDLE_TIMEOUT),
            max_wait: MaxWait(defaults::MAX_WAIT),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Some(defaults::LISTEN),
            metrics_listen: None,
            unix_socket: None,
            cache_dir: AbsPath(defaults::cache_dir()),
            revalidate_interval: Period(defaults::REVALIDATE_INTERVAL),
            probe_timeout: Period(defaults::PROBE_TIMEOUT),
            probe_concurrency: None,
            forced_probe_interval: Period(defaults::FORCED_PROBE_INTERVAL),
            change_history: Limit(defaults::CHANGE_HISTORY),
            emulators: None,
            device_properties: defaults::DEVICE_PROPERTIES
                .iter()
                .map(|s| DeviceName((*s).to_owned()))
                .collect(),
            accels: Accels(defaults::ACCELS.to_vec()),
            host_root: AbsPath(PathBuf::from(defaults::HOST_ROOT)),
            module_dirs: None,
            http: HttpLimits::default(),
            shim_dir: None,
            shim_binary: None,
            shim_prewarm: defaults::SHIM_PREWARM
                .iter()
                .map(|q| PureQuery(q.split_whitespace().map(str::to_owned).collect()))
                .collect(),
            shim_memo_max_queries: Limit(defaults::SHIM_MEMO_MAX_QUERIES),
            shim_memo_max_bytes: Limit(defaults::SHIM_MEMO_MAX_BYTES),
            verify_max: Limit(defaults::VERIFY_MAX),
            shim_timeout: Period(defaults::SHIM_TIMEOUT),
            nfd_features_file: None,
            nfd_cpu_models: Vec::new(),
            nfd_machine_types: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let read_error = |source| ConfigError::Read {
            path: shown.clone(),
            source,
        };
        // A FIFO would block the read; a directory says nothing useful.
        // (Symlinks are followed: Kubernetes mounts ConfigMaps through them.)
        let meta = std::fs::metadata(path).map_err(read_error)?;
        if !meta.is_file() {
            return Err(read_error(std::io::Error::other("not a regular file")));
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        Config::parse_bytes(&bytes).map_err(|e| e.in_file(&shown))
    }

    /// Parses and validates YAML text (errors name no file).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_bytes(text.as_bytes())
    }

    fn parse_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
            path: String::new(),
            line: line_at(bytes, e.valid_up_to()),
        })?;
        // Nothing but blank lines, comments and document markers: every
        // default (an explicit `null` is refused below).
        let content = text
            .lines()
            .map(str::trim)
            .any(|l| !l.is_empty() && !l.starts_with('#') && l != "---" && l != "...");
        if !content {
            return Ok(Config::default());
        }
        if let Some((at, ch)) = text.char_indices().find(|&(_, c)| forbidden(c)) {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            return Err(ConfigError::ControlCharacter {
                path: String::new(),
                code: format!("U+{:04X}", u32::from(ch)),
                line: line_at(bytes, at),
                column: text[line_start..at].chars().count() + 1,
            });
        }
        // Only a mapping can be a config; say so instead of the library's
        // "invalid type: unit value, expected struct Config".
        if let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) {
            let found = match doc {
                serde_yaml::Value::Mapping(_) => None,
                serde_yaml::Value::Null => Some("null"),
                serde_yaml::Value::Sequence(_) => Some("a list"),
                serde_yaml::Value::String(_) => Some("a string"),
                serde_yaml::Value::Number(_) => Some("a number"),
                serde_yaml::Value::Bool(_) => Some("a boolean"),
                serde_yaml::Value::Tagged(_) => Some("a tagged value"),
            };
            if let Some(found) = found {
                return Err(ConfigError::NotAMapping {
                    path: String::new(),
                    found,
                });
            }
        }
        serde_yaml::from_str(text).map_err(|e| {
            // The library refuses a second document without a position:
            // name the line it starts on.
            match second_document_line(text) {
                Some(line) if e.location().is_none() => ConfigError::MultipleDocuments {
                    path: String::new(),
                    line,
                },
                _ => ConfigError::Invalid {
                    path: String::new(),
                    message: e.to_string(),
                },
            }
        })
    }

    /// What `qcapsd check-config` says of a valid config: the addresses,
    /// the cache, the probe settings, and the emulators `resolved` from it.
    pub fn describe(&self, file: &Path, resolved: &discovery::Resolved) -> String {
        use std::fmt::Write as _;
        let mut out = format!("{}: ok\n", file.display());
        let mut line = |text: std::fmt::Arguments| {
            let _ = writeln!(out, "{text}");
        };
        match self.listen {
            Some(l) => line(format_args!("listen: {l}")),
            None => line(format_args!(
                "listen: none (query API on the unix socket only)"
            )),
        }
        if let Some(m) = self.metrics_listen {
            line(format_args!("metrics_listen: {m}"));
        }
        if let Some(s) = &self.unix_socket {
            line(format_args!("unix_socket: {} (mode 0660)", s.display()));
        }
        line(format_args!("cache_dir: {}", self.cache_dir.display()));
        line(format_args!(
            "revalidate every {:?}, probe timeout {:?}, at most {} probe(s) at once",
            *self.revalidate_interval,
            *self.probe_timeout,
            self.probe_concurrency()
        ));
        let accels: Vec<&str> = self.accels.0.iter().map(|a| a.as_str()).collect();
        line(format_args!(
            "accelerators probed: {} (the first that works is each document's accel)",
            accels.join(", ")
        ));
        line(format_args!(
            "device properties read for {} device type(s)",
            self.device_properties.len()
        ));
        if let Some(dir) = &self.shim_dir {
            let binary = self.shim_binary();
            let missing = if binary.exists() {
                ""
            } else {
                " (missing now)"
            };
            line(format_args!(
                "shims in {}, running {}{missing}; {} query form(s) recorded after each probe",
                dir.display(),
                binary.display(),
                self.shim_prewarm.len()
            ));
        }
        if let Some(file) = &self.nfd_features_file {
            line(format_args!(
                "node labels in {} (QEMU version per arch and KVM, {} CPU model(s) and {} machine type(s) listed)",
                file.0.display(),
                self.nfd_cpu_models.len(),
                self.nfd_machine_types.len()
            ));
        }
        line(format_args!("{} emulator(s):", resolved.emulators.len()));
        for e in &resolved.emulators {
            let note = if e.path.exists() {
                ""
            } else {
                "  (missing now)"
            };
            line(format_args!("  {}  {}{note}", e.name, e.path.display()));
        }
        for s in &resolved.skipped {
            line(format_args!("skipped {s}"));
        }
        if let Some(warning) = resolved.nothing_found() {
            line(format_args!("warning: {warning}"));
        }
        out
    }

    /// The probe concurrency in force.
    pub fn probe_concurrency(&self) -> usize {
        self.probe_concurrency
            .map_or_else(defaults::probe_concurrency, |l| l.get() as usize)
    }

    /// Device names whose properties are read.
    pub fn device_properties(&self) -> Vec<String> {
        self.device_properties.iter().map(|d| d.0.clone()).collect()
    }

    /// The binary the shims run: `shim_binary`; else the shim alone
    /// (`qcapsd-shim`) beside the running agent's binary, where there is
    /// one; else the running agent (which is a shim too).
    pub fn shim_binary(&self) -> PathBuf {
        if let Some(p) = &self.shim_binary {
            return p.0.clone();
        }
        std::fs::read_link(defaults::SELF_EXE)
            .ok()
            .and_then(|exe| Some(exe.parent()?.join(defaults::SHIM_BINARY_NAME)))
            .filter(|shim| shim.is_file())
            .unwrap_or_else(|| PathBuf::from(defaults::SELF_EXE))
    }

    /// QEMU module directories whose mtime is part of the fingerprint.
    pub fn module_dirs(&self) -> Vec<PathBuf> {
        match &self.module_dirs {
            Some(d) => d.iter().map(|p| p.0.clone()).collect(),
            None => defaults::module_dirs(&self.host_root.0),
        }
    }
}

impl ConfigError {
    fn in_file(self, file: &str) -> ConfigError {
        let path = file.to_owned();
        match self {
            ConfigError::NotUtf8 { line, .. } => ConfigError::NotUtf8 { path, line },
            ConfigError::MultipleDocuments { line, .. } => {
                ConfigError::MultipleDocuments { path, line }
            }
            ConfigError::Invalid { message, .. } => ConfigError::Invalid { path, message },
            ConfigError::ControlCharacter {
                code, line, column, ..
            } => ConfigError::ControlCharacter {
                path,
                code,
                line,
                column,
            },
            ConfigError::NotAMapping { found, .. } => ConfigError::NotAMapping { path, found },
            read @ ConfigError::Read { .. } => read,
        }
    }
}

/// Characters YAML does not allow in a stream: C0 and C1 controls other
/// than tab, line feed, carriage return and next line, and DEL.
fn forbidden(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{85}')
}

/// The 1-based line of byte `offset`.
fn line_at(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of the second document's start marker (`---` at a line start
/// after the first document has content).
fn second_document_line(text: &str) -> Option<usize> {
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line == "...";
        if is_marker && content {
            return Some(i + 1);
        }
        let t = line.trim();
        if !is_marker && !t.is_empty() && !t.starts_with('#') {
            content = true;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    /// The error of `text` says `what` at `line`.
    fn says_at(text: &str, what: &str, line: usize) {
        let e = err(text);
        assert!(
            e.contains(what) && e.contains(&format!("line {line} ")),
            "{e}"
        );
    }

    #[test]
    fn empty_text_is_the_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.unwrap().to_string(), "127.0.0.1:9733");
        assert_eq!(*c.revalidate_interval, Duration::from_secs(60));
        assert_eq!(c.probe_concurrency(), defaults::probe_concurrency());
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
        assert_eq!(c.probe_concurrency(), 4);
        assert_eq!(c.http.max_connections.get(), 8);
        assert_eq!(
            c.emulators.unwrap().0[0],
            EmulatorEntry::Path {
                path: "/usr/bin/qemu-system-x86_64".into(),
                name: "x86_64".into()
            }
        );
    }

    #[test]
    fn listen_null_serves_no_tcp_query_api() {
        assert_eq!(Config::parse("listen: null\n").unwrap().listen, None);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        says_at("listen: 127.0.0.1:1\nlisten_port: 9\n", "listen_port", 2);
        says_at("http:\n  max_conections: 9\n", "max_conections", 2);
    }

    /// The error of `text` names `key` first, says `what`, and gives `line`.
    fn refused(text: &str, key: &str, what: &str, line: usize) {
        let e = err(text);
        assert!(
            e.starts_with(&format!("{key}: "))
                && e.contains(what)
                && e.contains(&format!("line {line} ")),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        assert_eq!(
            err("probe_timeout: 30\n"),
            "probe_timeout: bad duration '30': write an integer and a unit (ms, s, m, h), e.g. 30s at line 1 column 16"
        );
        refused(
            "cache_dir: /x\nrevalidate_interval: 0s\n",
            "revalidate_interval",
            "more than zero",
            2,
        );
        refused(
            "cache_dir: /x\nhttp:\n  write_timeout: 99999999h\n",
            "http.write_timeout",
            "longer than a year",
            3,
        );
        refused("listen: 127.0.0.1\n", "listen", "invalid", 1);
    }

    #[test]
    fn the_line_is_the_value_s_own_even_when_its_text_repeats() {
        // The old heuristic searched the text for the bad value and blamed
        // the first line holding it.
        let e = err(
            "# probe_timeout: 30\ncache_dir: /x\nrevalidate_interval: 30\nprobe_timeout: 30s\n",
        );
        assert!(
            e.starts_with("revalidate_interval:") && e.contains("line 3"),
            "{e}"
        );
        says_at(
            "emulators:\n  - path: /a/x\n    name: p\n  - path: /b/r\n    name: x\n  - path: /c/r2\n    name: x\n",
            "duplicate name 'x'",
            7,
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        says_at("cache_dir: cache\n", "must be absolute", 1);
        says_at(
            "emulators:\n  - path: qemu-system-x86_64\n",
            "must be absolute",
            2,
        );
        says_at("emulators:\n  - glob: qemu-*\n", "absolute", 2);
        let e = err("emulators:\n  - glob: /usr/*/qemu\n");
        assert!(e.contains("last path component"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused_at_their_entry() {
        let e =
            err("emulators:\n  - path: /a/qemu-system-x86_64\n  - path: /b/qemu-system-x86_64\n");
        assert!(
            e.contains("duplicate name 'qemu-system-x86_64'")
                && e.contains("add `name:`")
                && e.contains("line 3"),
            "{e}"
        );
        says_at(
            "emulators:\n  - path: /a/q\n    name: x\n  - path: /b/r\n    name: x\n",
            "duplicate name 'x'",
            5,
        );
    }

    #[test]
    fn names_derived_from_paths_follow_the_same_rules() {
        for bad in ["/d/qemu x", "/d/.qemu-hidden", "/d/qemu;rm", "/d/qemué"] {
            let e = err(&format!("emulators:\n  - path: \"{bad}\"\n"));
            assert!(
                e.contains("add `name:`") && e.contains("line 2"),
                "{bad}: {e}"
            );
        }
        let long = format!("/d/{}", "q".repeat(80));
        assert!(err(&format!("emulators:\n  - path: {long}\n")).contains("add `name:`"));
        // With a name, the same path is fine.
        let c = Config::parse("emulators:\n  - path: \"/d/qemu x\"\n    name: qemu-x\n").unwrap();
        assert_eq!(c.emulators.unwrap().0.len(), 1);
    }

    #[test]
    fn entry_needs_exactly_one_of_path_and_glob() {
        assert!(err("emulators:\n  - name: x\n").contains("needs 'path' or 'glob'"));
        assert!(err("emulators:\n  - path: /a\n    glob: /b*\n").contains("not both"));
        assert!(err("emulators:\n  - path: /a\n    name: ../etc\n").contains("name '../etc'"));
        assert!(err("emulators:\n  - path: /a\n    nmae: x\n").contains("unknown field `nmae`"));
    }

    #[test]
    fn limits_are_bounded_and_zero_limits_refused() {
        let e = err("cache_dir: /x\nprobe_concurrency: 1000\n");
        assert_eq!(
            e,
            "probe_concurrency: 1000 is more than 64 at line 2 column 20"
        );
        let e = err("http:\n  max_connections: 99999999999\n");
        assert!(
            e.starts_with("http.max_connections: 99999999999 is more than 100000")
                && e.contains("line 2"),
            "{e}"
        );
        for key in [
            "max_body_bytes",
            "max_document_bytes",
            "max_connections",
            "max_header_bytes",
        ] {
            let e = err(&format!("http:\n  {key}: 0\n"));
            assert!(
                e.starts_with(&format!("http.{key}: 0 is less than 1")) && e.contains("line 2"),
                "{e}"
            );
        }
        let e = err("probe_concurrency: 0\n");
        assert_eq!(e, "probe_concurrency: 0 is less than 1 at line 1 column 20");
        let e = err("probe_concurrency: -3\n");
        assert!(e.starts_with("probe_concurrency: -3 is less than 1"), "{e}");
    }

    #[test]
    fn the_long_poll_cap_is_at_most_ten_minutes() {
        assert_eq!(Config::default().http.max_wait.0, Duration::from_secs(300));
        assert_eq!(
            Config::parse("http:\n  max_wait: 10m\n")
                .unwrap()
                .http
                .max_wait
                .0,
            Duration::from_secs(600)
        );
        says_at("http:\n  max_wait: 11m\n", "longer than 10 minutes", 2);
        says_at("change_history: 0\n", "less than 1", 1);
    }

    #[test]
    fn more_than_one_document_is_refused_with_its_line() {
        let e = err("cache_dir: /x\n---\ncache_dir: /y\n");
        assert_eq!(
            e,
            "more than one YAML document (the second starts at line 2); a config is one document"
        );
        // A leading marker is not a second document.
        assert!(Config::parse("---\ncache_dir: /x\n").is_ok());
    }

    #[test]
    fn broken_yaml_is_an_error_not_a_hang() {
        let e = err("listen: [oops\n");
        assert!(e.contains("line"), "{e}");
        let e = err("listen: [oops\n---\nx: 1\n");
        assert!(e.contains("line"), "{e}");
    }

    /// Issue 17 item 5: these named neither a key nor a line.
    #[test]
    fn a_control_character_is_placed_by_line_and_column() {
        let e = err("listen: 127.0.0.1:9733\ncache_dir: /tmp/x\nrevalidate_interval: 6\u{1}s\n");
        assert!(
            e.starts_with("control character U+0001 at line 3 column 23"),
            "{e}"
        );
        let e = err("cache_dir: \"/a\u{7}b\"\n");
        assert!(e.contains("U+0007 at line 1 column 15"), "{e}");
        // A tab, and escapes inside quotes, are fine.
        assert!(Config::parse("cache_dir:\t/x\nlisten: \"127.0.0.1:1\"\n").is_ok());
    }

    #[test]
    fn a_document_that_is_not_a_mapping_says_what_a_config_is() {
        for (text, found) in [
            ("null\n", "not null"),
            ("~\n", "not null"),
            ("- a\n- b\n", "not a list"),
            ("42\n", "not a number"),
            ("listen\n", "not a string"),
        ] {
            let e = err(text);
            assert!(
                e.starts_with("the config must be a mapping of keys") && e.contains(found),
                "{text:?}: {e}"
            );
        }
        // Empty, blank or only comments: every default.
        for text in ["", "\n\n", "# nothing set\n", "---\n# nothing\n"] {
            assert_eq!(Config::parse(text).unwrap(), Config::default(), "{text:?}");
        }
    }

    #[test]
    fn nfd_keys_are_checked_where_they_are_written() {
        let c = Config::parse(
            "nfd_features_file: /etc/kubernetes/node-feature-discovery/features.d/qcapsd\nnfd_cpu_models: [Skylake-Server, EPYC-v4]\nnfd_machine_types: [pc-q35-10.0]\n",
        )
        .unwrap();
        assert_eq!(
            c.nfd_features_file.unwrap().0,
            PathBuf::from("/etc/kubernetes/node-feature-discovery/features.d/qcapsd")
        );
        assert_eq!(c.nfd_cpu_models[1].0, "EPYC-v4");
        assert_eq!(c.nfd_machine_types[0].0, "pc-q35-10.0");
        says_at(
            "nfd_features_file: /f.d/.qcapsd\n",
            "ignores files whose names start with '.'",
            1,
        );
        says_at("nfd_features_file: f.d/qcapsd\n", "must be absolute", 1);
        says_at(
            "nfd_cpu_models:\n  - Skylake-Server\n  - -cpu\n",
            "cannot be part of a node label",
            3,
        );
        says_at(
            "nfd_machine_types: [\"pc q35\"]\n",
            "cannot be part of a node label",
            1,
        );
    }

    #[test]
    fn shim_keys_are_checked_where_they_are_written() {
        let c =
            Config::parse("shim_dir: /var/lib/qcapsd/shims\nshim_prewarm: [-cpu help, --help]\n")
                .unwrap();
        assert_eq!(
            c.shim_dir.unwrap().0,
            PathBuf::from("/var/lib/qcapsd/shims")
        );
        assert_eq!(c.shim_prewarm[0].0, ["-cpu", "help"]);
        assert_eq!(Config::default().shim_prewarm.len(), 5);
        assert_eq!(Config::default().shim_memo_max_queries.get(), 64);
        says_at(
            "shim_prewarm: [-cpu help, -m 1024]\n",
            "'-m 1024' is not a pure query",
            1,
        );
        says_at(
            "cache_dir: /x\nshim_prewarm:\n  - -cpu host\n",
            "not a pure query",
            3,
        );
        says_at("shim_dir: shims\n", "must be absolute", 1);
        let long = format!("shim_dir: /{}\n", "d".repeat(100));
        says_at(&long, "too long for the shims' socket", 1);
        says_at("shim_memo_max_queries: 0\n", "less than 1", 1);
        says_at("verify_max: 0\n", "less than 1", 1);
        assert_eq!(Config::default().verify_max.get(), 256);
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_line() {
        let e = Config::parse_bytes(b"cache_dir: /x\nlisten: \xff\n").unwrap_err();
        assert!(matches!(e, ConfigError::NotUtf8 { line: 2, .. }), "{e}");
    }

    #[test]
    fn devices_names_are_checked() {
        says_at(
            "device_properties: [virtio-blk-pci, \"\"]\n",
            "bad device name ''",
            1,
        );
    }

    #[test]
    fn accels_are_kvm_and_tcg_once_each() {
        use crate::qemu::Accel;
        assert_eq!(Config::default().accels.0, [Accel::Kvm, Accel::Tcg]);
        let c = Config::parse("accels: [tcg]\n").unwrap();
        assert_eq!(c.accels.0, [Accel::Tcg]);
        says_at("\naccels: [kvm, hvf]\n", "unknown accelerator 'hvf'", 2);
        says_at("accels: [kvm, kvm]\n", "'kvm' is listed twice", 1);
        says_at("accels: []\n", "an empty list", 1);
        assert!(err("accels: kvm\n").contains("accels"));
    }
}
