//! The shim: the qcapsd binary run under an emulator's name, through a
//! symlink in the shim directory ([`crate::support::shim_dir`]). Tools that
//! exec QEMU for its help text are pointed at it, unmodified.
//!
//! `main` calls [`run_if_shim`] before anything else: no argument parser,
//! no runtime, no thread. The shim reads its manifest (which emulator,
//! which real binary) into a buffer on the stack, then:
//!
//! - a pure query ([`crate::qemu::cmdline`]) is answered by the agent,
//!   over the socket in the shim directory, within the manifest's timeout:
//!   QEMU's own stdout, stderr and exit status, recorded once;
//! - anything else, and every query the agent does not answer, runs QEMU
//!   in place ([`crate::qemu::exec::replace_process`]): the caller's child
//!   *is* QEMU, with the same pid, argv, environment and descriptors. The
//!   pass-through never contacts the agent; it appends one byte to a count
//!   file (how the agent learns of it) and execs.
//!
//! No caller fails or hangs because of qcapsd: an agent that is stopped,
//! gone, slow or confused costs at most the timeout, then QEMU runs.

use crate::api::routes::Id;
use crate::config::defaults::SHIM_ACK_TIMEOUT;
use crate::qemu::cmdline;
use crate::qemu::exec::replace_process;
use crate::support::base64;
use crate::support::shim_dir::{self, FELL_BACK, Manifest, RAN_QEMU};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The most bytes a manifest may have (it is a few short lines).
const MANIFEST_MAX: usize = 4096;
/// The most bytes of an answer read from the agent (the memo's largest
/// answer in base64, and then some).
const ANSWER_MAX: usize = 96 << 20;

/// The exit status of a shim that cannot run QEMU at all (as a shell says
/// of a command it cannot find).
const EXIT_NOT_FOUND: u8 = 127;
/// The exit status of a shim whose QEMU cannot be executed.
const EXIT_CANNOT_EXEC: u8 = 126;

/// The path this process was executed by (`AT_EXECFN`): the shim's own
/// path, whatever argv[0] the caller chose.
fn exec_path() -> PathBuf {
    PathBuf::from(OsStr::from_bytes(rustix::param::linux_execfn().to_bytes()))
}

/// When this process is a shim (run under any name but `qcapsd…`), runs
/// it and returns its exit status; `None` for the `qcapsd` command.
pub fn run_if_shim() -> Option<ExitCode> {
    let path = exec_path();
    let name = path.file_name()?.to_str().unwrap_or("");
    if name.starts_with("qcapsd") || name.is_empty() {
        return None;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some(run(&dir, name))
}

/// The shim `name` in `dir`.
fn run(dir: &Path, name: &str) -> ExitCode {
    let mut buf = [0u8; MANIFEST_MAX];
    let manifest_path = shim_dir::manifest(dir, name);
    let manifest = match read_manifest(&manifest_path, &mut buf) {
        Ok(m) => m,
        Err(why) => {
            eprintln!(
                "{name}: qcapsd shim: {}: {why} (is this a shim directory kept by qcapsd?)",
                manifest_path.display()
            );
            return ExitCode::from(EXIT_NOT_FOUND);
        }
    };
    let real = Path::new(manifest.real);
    if is_this_binary(real) {
        eprintln!(
            "{name}: qcapsd shim: the real binary {} is this shim itself",
            real.display()
        );
        return ExitCode::from(EXIT_NOT_FOUND);
    }
    let argv: Vec<OsString> = std::env::args_os().collect();
    let (argv0, args) = match argv.split_first() {
        Some((first, rest)) => (first.clone(), rest),
        None => (OsString::from(name), &[][..]),
    };
    if cmdline::is_pure_query(args) {
        match ask(dir, &manifest, &argv0, args) {
            Ok(answer) => return replay(&answer),
            // The agent counted it: past the memo's bounds.
            Err(Asked::NotKept) => {}
            Err(Asked::Failed) => count(dir, name, FELL_BACK),
        }
    } else {
        count(dir, name, RAN_QEMU);
    }
    let error = replace_process(real, &argv0, args);
    eprintln!(
        "{}: cannot run {}: {error}",
        argv0.to_string_lossy(),
        real.display()
    );
    ExitCode::from(match error.kind() {
        std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXEC,
    })
}

/// Why a shim's manifest cannot be had.
#[derive(Debug, thiserror::Error)]
enum ManifestFault {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error("larger than a manifest ({MANIFEST_MAX} bytes)")]
    TooLarge,
    #[error(transparent)]
    Parse(#[from] shim_dir::ManifestError),
}

/// The manifest at `path`, read into `buf` (no allocation but the
/// file's).
fn read_manifest<'a>(
    path: &Path,
    buf: &'a mut [u8; MANIFEST_MAX],
) -> Result<Manifest<'a>, ManifestFault> {
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    loop {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if n == buf.len() {
            return Err(ManifestFault::TooLarge);
        }
    }
    Ok(shim_dir::parse_manifest(&buf[..n])?)
}

/// Whether `real` is this very binary (a manifest pointing at a shim would
/// exec itself forever).
fn is_this_binary(real: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(real),
        std::fs::metadata(crate::config::defaults::SELF_EXE),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Adds one to a count file of the shim (best effort: a caller that may
/// not write there is not stopped).
fn count(dir: &Path, name: &str, what: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .open(shim_dir::count_file(dir, name, what))
    {
        let _ = f.write_all(b"\n");
    }
}

/// Why the agent gave no answer.
enum Asked {
    /// Past the memo's bounds ([`crate::api::help::NOT_KEPT`]): the agent
    /// counted it.
    NotKept,
    /// Not reachable, too slow, an error, or an answer that does not read.
    Failed,
}

/// The fields of [`crate::api::bodies::HelpAnswer`] the shim needs,
/// borrowed from the response.
#[derive(serde::Deserialize)]
struct AnswerRef<'a> {
    stdout: &'a str,
    stderr: &'a str,
    exit_code: i32,
}

/// The status of an error body.
#[derive(serde::Deserialize)]
struct StatusRef {
    status: u16,
}

/// QEMU's answer, as the agent gives it.
struct Answer {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: i32,
}

/// Asks the agent for QEMU's answer to the pure query `args`, run as
/// `argv0` (its base name).
fn ask(dir: &Path, manifest: &Manifest, argv0: &OsStr, args: &[OsString]) -> Result<Answer, Asked> {
    let base = Path::new(argv0)
        .file_name()
        .and_then(OsStr::to_str)
        .filter(|b| cmdline::is_plain_name(b))
        .ok_or(Asked::Failed)?;
    let enc = crate::api::routes::percent_encode;
    let mut target = Id::Help.path(&[manifest.emulator]);
    target.push_str("?argv0=");
    target.push_str(&enc(base));
    for a in args {
        // Pure queries are UTF-8 (the allow-list says so).
        target.push_str("&arg=");
        target.push_str(&enc(a.to_str().ok_or(Asked::Failed)?));
    }
    let timeout = Duration::from_millis(manifest.timeout_ms.max(1));
    let (status, response, body) =
        get(&shim_dir::socket(dir), &target, timeout).ok_or(Asked::Failed)?;
    let body = &response[body];
    let not_kept = crate::api::help::NOT_KEPT.as_u16();
    match status {
        200 => {}
        s if s == not_kept => return Err(Asked::NotKept),
        _ => return Err(Asked::Failed),
    }
    // Borrowed from the body: base64 needs no JSON escape, so nothing is
    // copied but the decoded bytes. An acknowledged answer that is an
    // error says its status in the body.
    let a: AnswerRef = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(_) => {
            return Err(match serde_json::from_slice::<StatusRef>(body) {
                Ok(e) if e.status == not_kept => Asked::NotKept,
                _ => Asked::Failed,
            });
        }
    };
    Ok(Answer {
        stdout: base64::decode(a.stdout).map_err(|_| Asked::Failed)?,
        stderr: base64::decode(a.stderr).map_err(|_| Asked::Failed)?,
        exit_code: a.exit_code,
    })
}

/// Connects to the unix socket at `path` without waiting: an agent that
/// accepts nothing (its backlog full, as a stopped agent's fills) is as
/// good as none.
fn connect_now(path: &Path) -> Option<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .ok()?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(path).ok()?).ok()?;
    let s = UnixStream::from(fd);
    s.set_nonblocking(false).ok()?;
    Some(s)
}

/// One GET over the unix socket at `socket`, asking to be acknowledged
/// ([`crate::api::help::ACK_HEADER`]): the head must come within
/// [`SHIM_ACK_TIMEOUT`] (a frozen agent sends nothing), the whole answer
/// within `timeout` after it (a first answer may wait on a probe and a
/// recording). Returns the status, the response and where its body is in
/// it; `None` for anything else (no agent, a frozen one, one killed
/// mid-answer, an answer that does not read).
fn get(socket: &Path, target: &str, timeout: Duration) -> Option<(u16, Vec<u8>, Range<usize>)> {
    let mut s = connect_now(socket)?;
    s.set_write_timeout(Some(SHIM_ACK_TIMEOUT)).ok()?;
    // HTTP/1.0: the answer's body ends with the connection.
    let request = format!(
        "GET {target} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: qcapsd-shim\r\n{}: 1\r\n\r\n",
        crate::api::help::ACK_HEADER
    );
    s.write_all(request.as_bytes()).ok()?;
    let start = Instant::now();
    let mut deadline = start + SHIM_ACK_TIMEOUT;
    let mut acknowledged = false;
    // One buffer, sized for most answers at once: growing it from a few
    // bytes costs an allocation (with musl, an mmap) and a read each time.
    let mut response = vec![0u8; 64 << 10];
    let mut len = 0;
    loop {
        if !acknowledged && response[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            acknowledged = true;
            deadline = Instant::now() + timeout;
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        if len == response.len() {
            if len >= ANSWER_MAX {
                return None;
            }
            response.resize(len * 2, 0);
        }
        match s.read(&mut response[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    response.truncate(len);
    let (status, body) = parse_response(&response)?;
    Some((status, response, body))
}

/// The status and where the body is, of a whole HTTP/1.x response read to
/// the end of its connection: a body with a length, or (HTTP/1.0) the
/// rest of the connection; a chunked one is `None`.
fn parse_response(r: &[u8]) -> Option<(u16, Range<usize>)> {
    let head_end = r.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&r[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let line = lines.next()?;
    let status: u16 = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    let mut length = None;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse::<usize>().ok()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
    }
    let start = head_end + 4;
    let end = match length {
        Some(n) => start.checked_add(n)?,
        None => r.len(),
    };
    (end <= r.len()).then_some((status, start..end))
}

/// Writes QEMU's answer as QEMU would: stdout, stderr, exit status.
fn replay(a: &Answer) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&a.stdout).and_then(|()| out.flush());
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(&a.stderr).and_then(|()| err.flush());
    ExitCode::from(u8::try_from(a.exit_code & 0xff).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_a_length_are_read_and_others_are_not() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\n{}\r\nXX";
        let (status, body) = parse_response(ok).unwrap();
        assert_eq!((status, &ok[body]), (200, &b"{}\r\n"[..]));
        let full = b"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 2\r\n\r\n{}";
        let (status, body) = parse_response(full).unwrap();
        assert_eq!((status, &full[body]), (507, &b"{}"[..]));
        // HTTP/1.0 without a length: the body is the rest.
        let acked = b"HTTP/1.0 200 OK\r\nqcapsd-ack: 1\r\n\r\n{\"a\":1}";
        let (status, body) = parse_response(acked).unwrap();
        assert_eq!((status, &acked[body]), (200, &b"{\"a\":1}"[..]));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n{}",
            b"garbage",
            b"",
        ] {
            assert_eq!(
                parse_response(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
