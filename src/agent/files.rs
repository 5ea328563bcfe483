//! The files the agent keeps per emulator, each in one checksummed
//! envelope: a header (format, schema version, the emulator's name and
//! path) and the entry, whose checksum binds it to that name and path. A
//! file changed after it was written, or written for another emulator, is
//! refused, never served.
//!
//! - cache files (`cache_dir/NAME.json`): the capabilities document and
//!   the fingerprint it was probed under ([`super::emulators`]);
//! - memo files (`cache_dir/memo/NAME.json`, `cache_dir/verify/NAME.json`):
//!   the recorded answers to pure queries and QEMU's verdicts, with the
//!   fingerprint of the entry they belong to;
//! - failure files (`cache_dir/failed/NAME.json`): a refusal (QEMU's exit
//!   status 1) and the fingerprint it happened under, so a restart does not
//!   probe again what would be refused the same way.

use super::memo::{Answer, QueryKey};
use crate::qemu::caps::SCHEMA_VERSION;
use crate::qemu::fingerprint::Fingerprint;
use crate::support::base64;
use crate::support::digest::Fnv64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};

/// The tag of cache files, so a foreign JSON file is never taken for ours.
pub const CACHE_FORMAT: &str = "qcapsd-cache";
/// The tag of memo files.
pub const MEMO_FORMAT: &str = "qcapsd-memo";
/// The tag of failure files (`cache_dir/failed/NAME.json`): a refusal
/// kept across restarts.
pub const FAILURE_FORMAT: &str = "qcapsd-failure";

/// A cache file as written: the header, then `entry` verbatim.
#[derive(Serialize)]
struct FileOut<'a> {
    format: &'a str,
    schema_version: u32,
    name: &'a str,
    path: &'a Path,
    checksum: String,
    entry: &'a RawValue,
}

/// A cache file as read; `entry` keeps its exact bytes for the checksum.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn<'a> {
    format: String,
    schema_version: u32,
    name: String,
    path: PathBuf,
    checksum: String,
    #[serde(borrow)]
    entry: &'a RawValue,
}

/// The checksum of a file's entry, bound to the emulator it is for.
fn checksum(name: &str, path: &Path, entry: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = Fnv64::default()
        .field(name.as_bytes())
        .field(path.as_os_str().as_bytes())
        .field(entry.as_bytes())
        .finish();
    format!("fnv1a64:{h:016x}")
}

/// `entry` sealed in its envelope for the emulator `name` at `path`.
pub fn seal(
    format: &str,
    name: &str,
    path: &Path,
    entry: &impl Serialize,
) -> Result<Vec<u8>, CacheFileError> {
    let entry = serde_json::value::to_raw_value(entry).map_err(CacheFileError::Encode)?;
    let out = FileOut {
        format,
        schema_version: SCHEMA_VERSION,
        name,
        path,
        checksum: checksum(name, path, entry.get()),
        entry: &entry,
    };
    serde_json::to_vec(&out).map_err(CacheFileError::Encode)
}

/// The entry of a file of `format` for the emulator `key` configured at
/// `configured`, once its header and checksum say it is one.
pub fn open<'a>(
    bytes: &'a [u8],
    format: &'static str,
    key: &str,
    configured: &Path,
) -> Result<&'a RawValue, CacheFileError> {
    let f: FileIn = serde_json::from_slice(bytes).map_err(CacheFileError::Syntax)?;
    if f.format != format {
        return Err(CacheFileError::Format {
            found: f.format,
            expected: format,
        });
    }
    if f.schema_version != SCHEMA_VERSION {
        return Err(CacheFileError::Schema(f.schema_version));
    }
    if f.name != key {
        return Err(CacheFileError::Name {
            found: f.name,
            key: key.to_owned(),
        });
    }
    if f.path != configured {
        return Err(CacheFileError::Path {
            found: f.path,
            configured: configured.to_owned(),
        });
    }
    if f.checksum != checksum(&f.name, &f.path, f.entry.get()) {
        return Err(CacheFileError::Checksum);
    }
    Ok(f.entry)
}

/// Why a cache file is not served.
#[derive(Debug, thiserror::Error)]
pub enum CacheFileError {
    #[error("not a qcapsd cache file: {0}")]
    Syntax(#[source] serde_json::Error),
    #[error("format '{found}', expected '{expected}'")]
    Format {
        found: String,
        expected: &'static str,
    },
    #[error("schema version {0}, this agent writes {SCHEMA_VERSION}")]
    Schema(u32),
    #[error("written for emulator '{found}', not '{key}'")]
    Name { found: String, key: String },
    #[error("written for {}, configured {}", .found.display(), .configured.display())]
    Path { found: PathBuf, configured: PathBuf },
    #[error("checksum mismatch: the file changed after it was written")]
    Checksum,
    #[error("its document names {found}, not this emulator")]
    Document { found: String },
    #[error("bad exec_seconds")]
    ExecSeconds,
    #[error("emulator no longer configured")]
    Unconfigured,
    #[error("cannot encode: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("recorded for another fingerprint")]
    Outdated,
    #[error("an answer is not base64")]
    Encoding,
}

/// One recorded answer as a memo file holds it (QEMU's bytes in base64).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredAnswer {
    argv0: String,
    args: Vec<String>,
    stdout: String,
    stderr: String,
    exit_code: i32,
    exec_seconds: f64,
}

/// What a memo file holds besides its header.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredMemo {
    /// The fingerprint of the entry the answers belong to.
    fingerprint: Fingerprint,
    answers: Vec<StoredAnswer>,
}

/// A memo file's bytes.
pub fn memo_file(
    name: &str,
    path: &Path,
    fingerprint: &Fingerprint,
    answers: &[(QueryKey, std::sync::Arc<Answer>)],
) -> Result<Vec<u8>, CacheFileError> {
    let stored = StoredMemo {
        fingerprint: fingerprint.clone(),
        answers: answers
            .iter()
            .map(|(k, a)| StoredAnswer {
                argv0: k.argv0.clone(),
                args: k.args.clone(),
                stdout: a.encoded.0.clone(),
                stderr: a.encoded.1.clone(),
                exit_code: a.exit_code,
                exec_seconds: a.exec_seconds,
            })
            .collect(),
    };
    seal(MEMO_FORMAT, name, path, &stored)
}

/// The answers of a memo file, if it is sound and belongs to the entry of
/// `fingerprint` (answers recorded under another binary, modules or host
/// are not this entry's).
pub fn read_memo_file(
    bytes: &[u8],
    key: &str,
    configured: &Path,
    fingerprint: &Fingerprint,
) -> Result<Vec<(QueryKey, Answer)>, CacheFileError> {
    let entry = open(bytes, MEMO_FORMAT, key, configured)?;
    let stored: StoredMemo = serde_json::from_str(entry.get()).map_err(CacheFileError::Syntax)?;
    if stored.fingerprint != *fingerprint {
        return Err(CacheFileError::Outdated);
    }
    stored
        .answers
        .into_iter()
        .map(|a| {
            let bytes = |s: &str| base64::decode(s).map_err(|_| CacheFileError::Encoding);
            if !a.exec_seconds.is_finite() || a.exec_seconds < 0.0 {
                return Err(CacheFileError::ExecSeconds);
            }
            Ok((
                QueryKey {
                    argv0: a.argv0,
                    args: a.args,
                },
                Answer::new(
                    bytes(&a.stdout)?,
                    bytes(&a.stderr)?,
                    a.exit_code,
                    a.exec_seconds,
                ),
            ))
        })
        .collect()
}
