//! The config's value types, each checked inside its serde visitor so the
//! YAML library reports the key path and the value's own line: absolute
//! paths, durations (also used by the API's `?wait=`), bounded integers,
//! device names, globs, accelerators.

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bounds that keep a typo from becoming a resource problem.
pub mod limits {
    use std::time::Duration;

    /// The longest duration any key accepts.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
    pub const MAX_PROBE_CONCURRENCY: u64 = 64;
    pub const MAX_CONNECTIONS: u64 = 100_000;
    pub const MAX_HEADER_BYTES: u64 = 1 << 20;
    pub const MAX_BODY_BYTES: u64 = 1 << 20;
    pub const MAX_DEVICE_NAME: usize = crate::qemu::cmdline::MAX_NAME;
    pub const MAX_CHANGE_HISTORY: u64 = 10_000;
    /// `http.max_wait` may not exceed this.
    pub const MAX_WAIT: Duration = Duration::from_secs(600);
    /// Argument lists the memo keeps per emulator, at most.
    pub const MAX_MEMO_QUERIES: u64 = 4096;
    /// Bytes of one memo answer, at most.
    pub const MAX_DOCUMENT_BYTES: u64 = 256 << 20;
    pub const MAX_MEMO_BYTES: u64 = 64 << 20;
}

/// An absolute path (relative ones are refused: the agent's working
/// directory is not something to depend on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);

impl std::ops::Deref for AbsPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// Implements `Deserialize` for a type parsed from a YAML string: the
/// check runs in the visitor, so errors carry the value's position.
macro_rules! from_str_visitor {
    ($ty:ty, $expecting:literal, $parse:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$ty, E> {
                        let parse: fn(&str) -> Result<$ty, ValueError> = $parse;
                        parse(s).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// Why a config value is refused (the YAML library adds key and line).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("empty path")]
    EmptyPath,
    #[error("path '{0}' must be absolute")]
    RelativePath(String),
    #[error("bad device name '{0}'")]
    DeviceName(String),
    #[error("glob '{0}' must be an absolute path pattern")]
    RelativeGlob(String),
    #[error("glob '{0}': wildcards go in the last path component only")]
    WildDirectory(String),
    #[error("'{0}' is longer than 10 minutes")]
    WaitTooLong(String),
    #[error(
        "'{0}' is too long for the shims' socket in it ({1} bytes with /.qcapsd/agent.sock; a unix socket path takes at most {max})",
        max = crate::support::shim_dir::MAX_SOCKET_PATH
    )]
    ShimDirTooLong(String, usize),
    #[error("'{0}' is not a pure query (help or version requests only; see docs/shims.md)")]
    NotAPureQuery(String),
    #[error(
        "'{0}': node-feature-discovery ignores files whose names start with '.' (and needs a file name)"
    )]
    HiddenFeatureFile(String),
    #[error("'{0}' cannot be part of a node label: {rule}", rule = crate::support::nfd::RULE)]
    NotALabel(String),
    #[error(transparent)]
    Duration(#[from] DurationError),
}

fn parse_abs(s: &str) -> Result<AbsPath, ValueError> {
    if s.is_empty() {
        Err(ValueError::EmptyPath)
    } else if !s.starts_with('/') {
        Err(ValueError::RelativePath(s.to_owned()))
    } else {
        Ok(AbsPath(PathBuf::from(s)))
    }
}

from_str_visitor!(AbsPath, "an absolute path", parse_abs);

/// A positive duration written with a unit: `500ms`, `30s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period(pub Duration);

impl std::ops::Deref for Period {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

from_str_visitor!(Period, "a duration such as 30s", |s| Ok(Period(
    parse_duration(s)?
)));

/// `http.max_wait`: a duration of at most [`limits::MAX_WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxWait(pub Duration);

from_str_visitor!(MaxWait, "a duration of at most 10m", |s| {
    let d = parse_duration(s)?;
    if d > limits::MAX_WAIT {
        Err(ValueError::WaitTooLong(s.to_owned()))
    } else {
        Ok(MaxWait(d))
    }
});

/// A device type name for `device_properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceName(pub String);

from_str_visitor!(DeviceName, "a device type name", |s| {
    if s.is_empty() || s.len() > limits::MAX_DEVICE_NAME || s.chars().any(char::is_control) {
        Err(ValueError::DeviceName(s.to_owned()))
    } else {
        Ok(DeviceName(s.to_owned()))
    }
});

/// `shim_dir`: an absolute path leaving room for the shims' socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimDir(pub PathBuf);

from_str_visitor!(ShimDir, "an absolute path", |s| {
    let AbsPath(dir) = parse_abs(s)?;
    let socket = crate::support::shim_dir::socket(&dir);
    let len = socket.as_os_str().len();
    if len > crate::support::shim_dir::MAX_SOCKET_PATH {
        return Err(ValueError::ShimDirTooLong(s.to_owned(), len));
    }
    Ok(ShimDir(dir))
});

impl std::ops::Deref for ShimDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// `nfd_features_file`: an absolute path whose file name NFD reads (not a
/// dotfile: those it ignores).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFile(pub PathBuf);

from_str_visitor!(FeatureFile, "an absolute file path", |s| {
    let AbsPath(path) = parse_abs(s)?;
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) if !name.starts_with('.') && !s.ends_with('/') => Ok(FeatureFile(path)),
        _ => Err(ValueError::HiddenFeatureFile(s.to_owned())),
    }
});

/// One of `nfd_cpu_models` or `nfd_machine_types`: a name that can be part
/// of a node label (`Skylake-Server`, `pc-q35-10.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelPart(pub String);

from_str_visitor!(LabelPart, "a CPU model or machine type name", |s| {
    if crate::support::nfd::is_label_part(s) {
        Ok(LabelPart(s.to_owned()))
    } else {
        Err(ValueError::NotALabel(s.to_owned()))
    }
});

/// One of `shim_prewarm`: a pure query, written as QEMU's arguments
/// separated by spaces (`-machine help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PureQuery(pub Vec<String>);

from_str_visitor!(
    PureQuery,
    "a help or version request, e.g. '-cpu help'",
    |s| {
        let args: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        if crate::qemu::cmdline::is_pure_query(&args) {
            Ok(PureQuery(args))
        } else {
            Err(ValueError::NotAPureQuery(s.to_owned()))
        }
    }
);

/// A glob pattern: absolute, wildcards (`*`, `?`) in the last component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobPattern(pub String);

from_str_visitor!(GlobPattern, "an absolute glob pattern", |s| {
    let p = Path::new(s);
    let wild_dir = p
        .parent()
        .is_some_and(|d| d.to_string_lossy().contains(['*', '?']));
    if !s.starts_with('/') {
        Err(ValueError::RelativeGlob(s.to_owned()))
    } else if wild_dir || p.file_name().is_none() {
        Err(ValueError::WildDirectory(s.to_owned()))
    } else {
        Ok(GlobPattern(s.to_owned()))
    }
});

/// `accels`: one or two of `kvm` and `tcg`, in order of preference, each
/// once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accels(pub Vec<crate::qemu::Accel>);

impl<'de> Deserialize<'de> for Accels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::qemu::Accel;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Accels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of accelerators: kvm, tcg")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Accels, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    let a = Accel::concrete(&name).map_err(de::Error::custom)?;
                    if out.contains(&a) {
                        return Err(de::Error::custom(format!("'{name}' is listed twice")));
                    }
                    out.push(a);
                }
                if out.is_empty() {
                    return Err(de::Error::custom(
                        "an empty list: name at least one of kvm, tcg",
                    ));
                }
                Ok(Accels(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// An integer in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> Limit<MIN, MAX> {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Limit<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: u64, const MAX: u64>;
        impl<const MIN: u64, const MAX: u64> Visitor<'_> for V<MIN, MAX> {
            type Value = Limit<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an integer from {MIN} to {MAX}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if (MIN..=MAX).contains(&v) {
                    Ok(Limit(v))
                } else if v < MIN {
                    Err(E::custom(format!("{v} is less than {MIN}")))
                } else {
                    Err(E::custom(format!("{v} is more than {MAX}")))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!("{v} is less than {MIN}"))),
                }
            }
        }
        // `any`: a negative number reaches `visit_i64` and gets our message.
        d.deserialize_any(V::<MIN, MAX>)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("bad duration '{0}': write an integer and a unit (ms, s, m, h), e.g. 30s")]
    Syntax(String),
    #[error("duration '{0}' must be more than zero")]
    Zero(String),
    #[error("duration '{0}' is longer than a year")]
    TooLong(String),
}

/// Parses `500ms`, `30s`, `5m`, `1h` (an integer and a unit; zero and
/// more than a year refused).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || DurationError::Syntax(s.to_owned());
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(DurationError::Zero(s.to_owned()));
    }
    if d > limits::MAX_DURATION {
        return Err(DurationError::TooLong(s.to_owned()));
    }
    Ok(d)
}
