//! Helpers shared by the integration tests: where the recorded QEMU data
//! lives, stand-in emulators, real QEMU binaries, and a small reader for
//! libvirt's capabilities XML.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `../shared` beside the checkout (CI lays a copy there), or
/// `$QCAPSD_SHARED_DIR`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("QCAPSD_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

pub fn replies_dir() -> PathBuf {
    shared_dir().join("qemucaps/libvirt-replies")
}

/// Every `.replies` transcript in the shared folder, sorted.
pub fn all_transcripts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(replies_dir())
        .expect("the shared QEMU transcripts (../shared/qemucaps/libvirt-replies)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "replies"))
        .collect();
    v.sort();
    v
}

fn python3() -> PathBuf {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("python3")
}

/// Writes an executable `#!/bin/sh` script named `name` into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A stand-in emulator in `dir` that replays `transcript` over QMP.
pub fn replay_emulator(dir: &Path, name: &str, transcript: &Path) -> PathBuf {
    let replayer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_qemu.py");
    script(
        dir,
        name,
        &format!(
            "exec '{}' '{}' '{}' \"$@\"",
            python3().display(),
            replayer.display(),
            transcript.display()
        ),
    )
}

/// A replay stand-in that also logs every command it receives to `log`.
pub fn recording_emulator(dir: &Path, name: &str, transcript: &Path, log: &Path) -> PathBuf {
    let replayer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_qemu.py");
    script(
        dir,
        name,
        &format!(
            "exec '{}' '{}' '{}' --log '{}' \"$@\"",
            python3().display(),
            replayer.display(),
            transcript.display(),
            log.display()
        ),
    )
}

/// The command names in a transcript's recorded `query-qmp-schema`.
pub fn schema_commands_of(transcript: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(transcript).unwrap();
    let objs: Vec<serde_json::Value> = text
        .split("\n\n")
        .filter(|c| !c.trim().is_empty())
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let at = objs
        .iter()
        .position(|o| o["execute"] == "query-qmp-schema")
        .expect("a recorded schema");
    let mut names: Vec<String> = objs[at + 1]["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A real QEMU binary, or `None` (the test then skips) unless
/// `QCAPSD_REQUIRE_QEMU=1`, where a missing binary fails the test.
pub fn real_qemu(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/local/bin", "/usr/libexec"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("QCAPSD_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("{name} not found and QCAPSD_REQUIRE_QEMU=1 (run .ci/install-deps)");
        }
        eprintln!("skipping: {name} not installed");
    }
    found
}

/// Whether this process can open /dev/kvm read-write, the way QEMU would.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// One XML element's attributes.
pub type Attrs = BTreeMap<String, String>;

/// The parts of libvirt's `<qemuCaps>` XML the probe is compared with.
#[derive(Debug, Default)]
pub struct LibvirtCaps {
    pub version: u64,
    pub arch: String,
    /// `<machine>` elements.
    pub machines: Vec<Attrs>,
    /// `<cpu>` elements with the names of their `<blocker>` children.
    pub cpus: Vec<(Attrs, Vec<String>)>,
}

/// Reads libvirt's capabilities XML. The format is regular (one element per
/// tag, single-quoted attributes), so a tag scanner is enough.
pub fn parse_libvirt_xml(text: &str) -> LibvirtCaps {
    let mut caps = LibvirtCaps::default();
    let mut rest = text;
    let mut in_cpu = false;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>').expect("unterminated tag");
        let tag = &after[..end];
        let body_after = &after[end + 1..];
        let (name, attrs_text) = tag.split_once(char::is_whitespace).unwrap_or((tag, ""));
        let self_closing = tag.ends_with('/');
        let name = name.trim_end_matches('/');
        match name {
            "version" => {
                let close = body_after.find('<').unwrap();
                caps.version = body_after[..close].trim().parse().unwrap();
            }
            "arch" if caps.arch.is_empty() => {
                let close = body_after.find('<').unwrap();
                caps.arch = body_after[..close].trim().to_owned();
            }
            "machine" => caps.machines.push(attributes(attrs_text)),
            "cpu" => {
                caps.cpus.push((attributes(attrs_text), Vec::new()));
                in_cpu = !self_closing;
            }
            "/cpu" => in_cpu = false,
            "blocker" if in_cpu => {
                let a = attributes(attrs_text);
                caps.cpus.last_mut().unwrap().1.push(a["name"].clone());
            }
            _ => {}
        }
        rest = body_after;
    }
    caps
}

fn attributes(text: &str) -> Attrs {
    let mut out = Attrs::new();
    let mut rest = text.trim().trim_end_matches('/');
    while let Some(eq) = rest.find("='") {
        let key = rest[..eq].trim().to_owned();
        let val_start = eq + 2;
        let val_end = val_start
            + rest[val_start..]
                .find('\'')
                .expect("unterminated attribute");
        out.insert(key, unescape(&rest[val_start..val_end]));
        rest = &rest[val_end + 1..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// PIDs listed, one per line, in a file a stand-in wrote.
pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `pid` is a live process (a zombie left to init counts as gone:
/// it runs nothing and is not ours to reap; one whose parent is this test
/// process counts as alive, because then we failed to reap it).
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the command name: state ppid ...
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let mut f = after.split_whitespace();
    let state = f.next().unwrap_or("");
    let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    state != "Z" || ppid == std::process::id()
}

/// A stand-in emulator that replays `transcript` and appends a line to
/// `count_file` on every exec, so tests count execs exactly.
pub fn counting_emulator(dir: &Path, name: &str, transcript: &Path, count_file: &Path) -> PathBuf {
    let replayer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_qemu.py");
    script(
        dir,
        name,
        &format!(
            "echo exec >> '{}'\nexec '{}' '{}' '{}' \"$@\"",
            count_file.display(),
            python3().display(),
            replayer.display(),
            transcript.display()
        ),
    )
}

/// Lines in a count file (0 if absent).
pub fn count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

pub fn transcript(name: &str) -> PathBuf {
    replies_dir().join(name)
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP response as a test sees it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw request bytes (a request line and headers of the test's
/// choosing) and reads the whole answer (`Connection: close`).
pub fn raw_http(port: u16, request: &[u8]) -> Resp {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

/// A `qcapsd run` process with its own temporary directory, port, cache
/// and unix socket. Killed on drop if still running.
pub struct AgentProc {
    pub child: std::process::Child,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl AgentProc {
    /// Writes a config (listen, cache_dir, unix_socket, then `extra`) and
    /// starts the agent; returns once /readyz says ready.
    pub fn start(dir: &Path, extra: &str) -> AgentProc {
        let port = free_port();
        let config = dir.join("qcapsd.yaml");
        let socket = dir.join("run/qcapsd.sock");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ncache_dir: {}\nunix_socket: {}\n{extra}",
                dir.join("cache").display(),
                socket.display()
            ),
        )
        .unwrap();
        Self::start_with(dir, &config, port, socket)
    }

    /// Starts the agent again on the same directory and config.
    pub fn restart(self) -> AgentProc {
        let (dir, config, socket) = (self.dir.clone(), self.config.clone(), self.socket.clone());
        let port = self.port;
        let status = self.stop();
        assert!(status.success(), "agent exited with {status}");
        Self::start_with(&dir, &config, port, socket)
    }

    fn start_with(dir: &Path, config: &Path, port: u16, socket: PathBuf) -> AgentProc {
        let log = dir.join(format!(
            "agent-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let a = AgentProc {
            child,
            port,
            dir: dir.to_owned(),
            config: config.to_owned(),
            socket,
            log,
        };
        a.wait_ready();
        a
    }

    /// Polls /readyz (bounded: 60 s) — a condition, not a timing.
    pub fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                if buf.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("agent not ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Content-Length: 0\r\n\r\n");
        raw_http(self.port, req.as_bytes())
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[])
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        let st = self.child.wait().unwrap();
        std::mem::forget(self);
        st
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An external tool on PATH, or `None` (the test then skips) unless
/// `QCAPSD_REQUIRE_QEMU=1` (CI), where a missing tool fails the test.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("QCAPSD_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("{name} not found and QCAPSD_REQUIRE_QEMU=1 (run .ci/install-deps)");
        }
        eprintln!("skipping: {name} not installed");
    }
    found
}

/// The value of a sample line `name{labels} value` in a /metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Runs the `qcapsd` binary with `args` and collects its output.
pub fn qcapsd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args(args)
        .output()
        .unwrap()
}

/// A `#!/bin/sh` stand-in that first appends its pid to a file, then runs
/// `body`; returns the script and the pid file.
pub fn pid_stand_in(dir: &Path, body: &str) -> (PathBuf, PathBuf) {
    let pids = dir.join("pids");
    let bin = script(
        dir,
        "qemu",
        &format!("echo $$ >> '{}'\n{body}", pids.display()),
    );
    (bin, pids)
}

/// A counting replay stand-in named `name` in `dir/bin`, counting into
/// `dir/<name>.count`; returns its path and the count file.
pub fn stand_in(dir: &Path, name: &str, transcript_file: &str) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let count_file = dir.join(format!("{name}.count"));
    let path = counting_emulator(&bin, name, &transcript(transcript_file), &count_file);
    (path, count_file)
}

/// Polls `cond` every 25 ms until it holds, for at most 20 s (a condition
/// with a bound, not a timing); returns whether it held. Callers assert
/// the state they need right after.
pub fn poll_until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..800 {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}
