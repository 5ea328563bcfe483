//! One regression test per fault found by attacking the running agent
//! (issue 12), each named for the fault it pins down: what an agent killed
//! hard leaves behind, a binary replaced mid-probe, clients that do not
//! read, odd files where cache files go, corrupted cache files, names that
//! collide, a socket already in use, bodies over the limit, and helpers
//! that leave a probe's process group.

use crate::common::{self, AgentProc, Http, InProcess, count, process_alive, raw_http};
use qcapsd::agent::probe_tag;
use qcapsd::qemu::exec::TAG_VAR;
use rustix::process::{Pid, Signal};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Pids of live processes whose environment carries the probe tag of an
/// agent using `cache_dir`.
fn tagged(cache_dir: &Path) -> Vec<i32> {
    let needle = format!("{TAG_VAR}={}", probe_tag(cache_dir));
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .filter(|&pid| process_alive(pid))
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn kill(pid: u32, sig: Signal) {
    let _ = rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), sig);
}

/// A child killed when the test ends, passed or not (a failed assertion
/// must not leave an agent running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[ignore = "needs QEMU"]
#[test]
fn kill_9_of_the_agent_during_a_probe_leaves_no_qemu() {
    let qemu = common::real_qemu("qemu-system-x86_64");
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    // The real QEMU, held at start-up (a server socket nobody connects to,
    // before its greeting) so that the probe is surely under way when the
    // agent dies.
    let hold = d.path().join("hold.sock");
    let held = common::script(
        d.path(),
        "qemu-system-x86_64",
        &format!(
            "exec '{}' -chardev socket,id=hold,path='{}',server=on,wait=on \"$@\"",
            qemu.display(),
            hold.display()
        ),
    );
    let config = d.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{}\ncache_dir: {}\nprobe_timeout: 5m\nemulators:\n  - path: {}\n    name: x86_64\n",
            common::free_port(),
            cache.display(),
            held.display(),
        ),
    )
    .unwrap();
    for round in 0..3 {
        let mut agent = KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
                .args(["run", "--config", config.to_str().unwrap()])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let me = agent.0.id() as i32;
        let probing =
            common::poll_until(|| tagged(&cache).iter().any(|&p| parent_of(p) == Some(me)));
        assert!(probing, "round {round}: no probe seen");
        // QEMU itself (not the wrapper script) holds at start-up.
        assert!(
            common::poll_until(|| hold.exists()),
            "round {round}: QEMU never reached its start-up socket"
        );
        let qemus = tagged(&cache);
        assert!(
            !qemus.is_empty(),
            "round {round}: the probe is still running"
        );
        kill(agent.0.id(), Signal::KILL);
        agent.0.wait().unwrap();
        common::poll_until(|| tagged(&cache).is_empty());
        let left = tagged(&cache);
        assert!(
            left.is_empty(),
            "round {round}: QEMU outlived the agent: {left:?}"
        );
        std::fs::remove_file(&hold).unwrap();
    }
}

#[test]
fn processes_an_earlier_instance_left_are_killed_at_start() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    // What a probe of an agent killed in the old days left: tagged.
    let mut leftover = std::process::Command::new("sleep")
        .arg("600")
        .env(TAG_VAR, probe_tag(&cache))
        .spawn()
        .unwrap();
    let pid = leftover.id() as i32;
    assert!(process_alive(pid));
    let (x86, _) = common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let agent = InProcess::start(
        d.path(),
        &format!("emulators:\n  - path: {}\n", x86.display()),
    );
    let status = leftover.wait().unwrap();
    assert!(status.code().is_none(), "killed by a signal: {status}");
    drop(agent);
}

#[test]
fn a_lookup_after_a_mid_probe_rename_gets_the_new_binary() {
    let d = tempfile::tempdir().unwrap();
    let (x86, _) = common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let agent = AgentProc::start(
        d.path(),
        &format!(
            "emulators:\n  - path: {}\n    name: x86_64\nhttp:\n  request_timeout: 60s\n",
            x86.display()
        ),
    );
    let bin = x86.parent().unwrap();
    // Version B answers slowly.
    let (b_count, c_count) = (d.path().join("b.count"), d.path().join("c.count"));
    let b_inner = common::counting_emulator(
        bin,
        ".b-inner",
        &common::transcript("caps_8.2.0_x86_64.replies"),
        &b_count,
    );
    let b = common::script(
        bin,
        ".b",
        &format!("sleep 2\nexec '{}' \"$@\"", b_inner.display()),
    );
    let lookups = |agent: &AgentProc| {
        common::metric(
            &agent.get("/metrics").text(),
            "qcapsd_cache_lookups_total{emulator=\"x86_64\"}",
        )
        .unwrap_or(0.0)
    };
    let lookups_before = lookups(&agent);
    std::fs::rename(&b, &x86).unwrap();
    let port = agent.port;
    let before = std::thread::spawn(move || {
        common::raw_http(
            port,
            b"GET /v1/emulators/x86_64 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
    });
    // B is being probed (by this lookup or by the watcher: its exec has
    // begun) and the agent has taken the lookup (it counts it before
    // waiting); only then is the binary replaced again (version C). B's
    // own exec count is the sign: any other process may be named like B.
    assert!(
        common::poll_until(|| count(&b_count) == 1),
        "B's probe never began"
    );
    assert!(common::poll_until(|| lookups(&agent) > lookups_before));
    common::rename_upgrade(&x86, "caps_10.0.0_x86_64.replies", &c_count);
    let after = agent.get("/v1/emulators/x86_64");
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(
        after.json()["qemu"]["version"],
        "10.0.0",
        "a lookup made after the rename is answered for the new binary"
    );
    let before = before.join().unwrap();
    assert_eq!(
        before.json()["qemu"]["version"],
        "8.2.0",
        "its own question"
    );
    common::poll_until(|| agent.get("/v1/emulators").json()[0]["state"] == "fresh");
    let now = agent.get("/v1/emulators/x86_64");
    assert_eq!(now.header("qcapsd-cache"), Some("hit"));
    assert_eq!(now.json()["qemu"]["version"], "10.0.0");
    assert_eq!(count(&c_count), 1, "exactly one probe of the new binary");
}

#[test]
fn slow_readers_cannot_starve_a_fresh_client() {
    let d = tempfile::tempdir().unwrap();
    let (agent, _, _) = InProcess::with_x86(
        d.path(),
        "caps_10.0.0_x86_64.replies",
        "http:\n  max_connections: 8\n  write_timeout: 1s\n",
    );
    // Eight clients fill every slot: each pipelines requests for the full
    // document (~190 KB) and never reads.
    let pipelined = "GET /v1/emulators/x86_64 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(300);
    let hogs: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
            s.write_all(pipelined.as_bytes()).unwrap();
            s
        })
        .collect();
    // A fresh client is answered: the write timeout frees the slots.
    let mut fresh = std::net::TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let read = fresh.read_to_end(&mut answer);
    assert!(read.is_ok(), "no answer within 30 s: {read:?}");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    drop(hogs);
}

/// A non-regular file at the cache path of `x86_64`.
enum Odd {
    Fifo,
    Socket,
    DeviceNode,
}

/// An odd file where the cache file goes: the agent neither hangs on it
/// at start nor at stop, probes instead, and writes a real file.
fn odd_file_at_the_cache_path(odd: Odd) {
    let d = tempfile::tempdir().unwrap();
    let (x86, x86_count) =
        common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let cache = d.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let file = cache.join("x86_64.json");
    let _listener;
    let node = |kind, dev| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &file,
            kind,
            rustix::fs::Mode::from_raw_mode(0o600),
            dev,
        )
    };
    match odd {
        Odd::Fifo => node(rustix::fs::FileType::Fifo, 0).unwrap(),
        Odd::Socket => _listener = std::os::unix::net::UnixListener::bind(&file).unwrap(),
        // The null device's numbers (1, 3); only root may make one.
        Odd::DeviceNode => node(
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(1, 3),
        )
        .expect("making a device node needs root"),
    }
    let agent = AgentProc::start(
        d.path(),
        &format!(
            "emulators:\n  - path: {}\n    name: x86_64\n",
            x86.display()
        ),
    );
    assert_eq!(count(&x86_count), 1, "probed instead");
    assert!(
        std::fs::metadata(&file).unwrap().is_file(),
        "replaced by a real file"
    );
    assert!(agent.log_text().contains("not a regular file"));
    let status = agent.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn a_fifo_or_a_socket_at_a_cache_path_neither_hangs_start_nor_stop() {
    odd_file_at_the_cache_path(Odd::Fifo);
    odd_file_at_the_cache_path(Odd::Socket);
}

#[test]
#[ignore = "needs root"]
fn a_device_node_at_a_cache_path_neither_hangs_start_nor_stop() {
    odd_file_at_the_cache_path(Odd::DeviceNode);
}

/// The x86_64 handler of an agent with the emulator at `path`, for
/// decoding cache files directly.
fn handler(path: &Path) -> qcapsd::agent::emulators::Emulators {
    use qcapsd::agent::emulators::{Emulators, ProbeSettings};
    Emulators::new(
        qcapsd::qemu::fingerprint::Host::new("/"),
        &[qcapsd::config::discovery::EmulatorSpec {
            name: "x86_64".into(),
            path: path.to_owned(),
        }],
        ProbeSettings::new(
            vec![qcapsd::qemu::Accel::Kvm],
            Duration::from_secs(30),
            Vec::new(),
            Vec::new(),
        ),
        "test".into(),
        qcapsd::cache::store::Store::new(path.with_file_name("memo")),
        qcapsd::cache::store::Store::new(path.with_file_name("verify")),
    )
}

#[test]
fn bit_flips_and_edits_in_a_cache_file_are_discarded() {
    use qcapsd::cache::Handler;
    let d = tempfile::tempdir().unwrap();
    let (x86, x86_count) =
        common::stand_in(d.path(), "qemu-system-x86_64", "caps_10.0.0_x86_64.replies");
    let yaml = common::x86_yaml(&x86);
    let agent = InProcess::start(d.path(), &yaml);
    let file = d.path().join("cache/x86_64.json");
    common::poll_until(|| file.exists());
    let good = std::fs::read(&file).unwrap();
    let h = handler(&x86);
    assert!(
        h.load_file("x86_64", &good).is_ok(),
        "the file as written loads"
    );
    // Single-bit flips all over the file (a fixed pseudo-random sample).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..400 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let at = (seed >> 33) as usize % good.len();
        let bit = (seed >> 29) as u8 % 8;
        let mut flipped = good.clone();
        flipped[at] ^= 1 << bit;
        assert!(
            h.load_file("x86_64", &flipped).is_err(),
            "flip of bit {bit} at byte {at} ({:?}) was accepted",
            char::from(good[at])
        );
    }
    // Edits that keep the JSON valid and the fingerprint intact.
    let text = String::from_utf8(good.clone()).unwrap();
    let edits: &[(&str, &str, &str)] = &[
        ("arch", "\"arch\":\"x86_64\"", "\"arch\":\"aarch64\""),
        (
            "version",
            "\"version\":\"10.0.0\"",
            "\"version\":\"10.0.1\"",
        ),
        (
            "a machine name",
            "\"name\":\"pc-q35-10.0\"",
            "\"name\":\"pc-q35-99.0\"",
        ),
        (
            "a device added",
            "\"devices\":[",
            "\"devices\":[\"evil-device\",",
        ),
        (
            "commands emptied",
            "\"commands\":[\"",
            "\"commands\":[],\"x\":[\"",
        ),
        (
            "a CPU model made usable",
            "\"usable\":false",
            "\"usable\":true",
        ),
        (
            "the emulator's name",
            "\"name\":\"x86_64\"",
            "\"name\":\"x86-64\"",
        ),
        (
            "the header's name",
            "\"name\":\"x86_64\",\"path\"",
            "\"name\":\"other\",\"path\"",
        ),
    ];
    for (what, from, to) in edits {
        assert!(text.contains(from), "{what}: {from} not in the file");
        let edited = text.replacen(from, to, 1);
        assert!(
            h.load_file("x86_64", edited.as_bytes()).is_err(),
            "{what} was accepted"
        );
    }
    // A file written for another path is not this emulator's.
    let elsewhere = handler(&d.path().join("bin/elsewhere"));
    assert!(elsewhere.load_file("x86_64", &good).is_err());
    // End to end: a flipped file at start is discarded and re-probed.
    let agent = {
        agent.stop().unwrap();
        let mut flipped = good.clone();
        let mid = good.len() / 2;
        flipped[mid] ^= 0x04;
        std::fs::write(&file, flipped).unwrap();
        InProcess::start(d.path(), &yaml)
    };
    assert_eq!(count(&x86_count), 2, "re-probed, never served");
    assert_eq!(
        agent.get("/v1/emulators/x86_64").json()["qemu"]["version"],
        "10.0.0"
    );
}

#[test]
fn names_derived_from_files_follow_the_name_rules_and_never_collide() {
    let d = tempfile::tempdir().unwrap();
    let check = |yaml: &str| {
        let f = d.path().join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        common::qcapsd(&["check-config", f.to_str().unwrap()])
    };
    let exec = |dir: &Path, name: &str| {
        std::fs::create_dir_all(dir).unwrap();
        common::script(dir, name, "exit 0")
    };
    // A glob matching a file whose name is not usable.
    let g = d.path().join("g");
    exec(&g, "qemu x");
    let out = check(&format!("emulators:\n  - glob: {}/qemu*\n", g.display()));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qemu x") && err.contains("`name:`"), "{err}");
    // A path whose file name is not usable.
    let out = check(&format!(
        "emulators:\n  - path: \"{}/qemu x\"\n",
        g.display()
    ));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("add `name:`") && err.contains("line 2"),
        "{err}"
    );
    // Two globs giving the same name.
    let (d1, d2) = (d.path().join("d1"), d.path().join("d2"));
    exec(&d1, "qemu_x");
    exec(&d2, "qemu_x");
    let out = check(&format!(
        "emulators:\n  - glob: {}/qemu*\n  - glob: {}/qemu*\n",
        d1.display(),
        d2.display()
    ));
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already used by"));
}

#[test]
fn a_second_agent_refuses_a_live_unix_socket() {
    let d = tempfile::tempdir().unwrap();
    let (x86, _) = common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let first = AgentProc::start(
        d.path(),
        &format!("emulators:\n  - path: {}\n", x86.display()),
    );
    let other = d.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let cfg = other.join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{}\ncache_dir: {}\nunix_socket: {}\nemulators: []\n",
            common::free_port(),
            other.join("cache").display(),
            first.socket.display()
        ),
    )
    .unwrap();
    let out = common::qcapsd(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another agent is listening on it"), "{err}");
    // The first agent is still reachable on its socket.
    let out = common::qcapsd(&["query", "--socket", first.socket.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_agents_never_share_a_cache_directory() {
    let d = tempfile::tempdir().unwrap();
    let first = InProcess::start(d.path(), "emulators: []\n");
    let cfg = d.path().join("second.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{}\ncache_dir: {}\nemulators: []\n",
            common::free_port(),
            d.path().join("cache").display()
        ),
    )
    .unwrap();
    let out = common::qcapsd(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another agent uses this cache directory")
    );
    drop(first);
}

#[test]
fn a_chunked_body_over_the_limit_gets_413_and_no_probe() {
    let d = tempfile::tempdir().unwrap();
    let (agent, _, x86_count) = InProcess::with_x86(
        d.path(),
        "caps_9.1.0_x86_64.replies",
        "http:\n  max_body_bytes: 4096\n",
    );
    let chunk = "x".repeat(4096);
    let body = format!("1000\r\n{chunk}\r\n1000\r\n{chunk}\r\n0\r\n\r\n");
    let r = raw_http(
        agent.port,
        format!(
            "POST /v1/emulators/x86_64/revalidate HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["status"], 413);
    assert_eq!(count(&x86_count), 1, "no probe");
    // A small chunked body is fine.
    let r = raw_http(
        agent.port,
        b"POST /v1/emulators/x86_64/revalidate HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 202, "{}", r.text());
}

#[test]
fn a_helper_that_calls_setsid_does_not_survive_the_probe() {
    let d = tempfile::tempdir().unwrap();
    let pidfile: PathBuf = d.path().join("helper.pid");
    let replay = common::replay_emulator(
        d.path(),
        "replay",
        &common::transcript("caps_8.2.0_aarch64.replies"),
    );
    // A wrapper that starts a helper in a session of its own, waits until
    // it runs, then becomes the emulator.
    let wrapper = common::script(
        d.path(),
        "qemu-wrapper",
        &format!(
            "setsid sh -c 'echo $$ > {p}; exec sleep 600' < /dev/null > /dev/null 2>&1 &\n\
             while [ ! -s {p} ]; do :; done\n\
             exec '{}' \"$@\"",
            replay.display(),
            p = pidfile.display()
        ),
    );
    let out = common::qcapsd(&["probe", wrapper.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let helper: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::poll_until(|| !process_alive(helper));
    if process_alive(helper) {
        kill(helper as u32, Signal::KILL);
        panic!("the setsid helper {helper} outlived the probe");
    }
}
