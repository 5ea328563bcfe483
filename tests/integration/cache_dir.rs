//! Issue 17 item 4: a cache directory the agent cannot write (a read-only
//! mount, an immutable directory, a regular file in its place) used to
//! stop the agent from starting. The cache is an optimisation: the agent
//! starts and serves from memory, says so once, shows it in
//! `qcapsd_cache_dir_writable`, and writes its files once the directory
//! takes them, with no extra probe. Two live agents still never share one.

use crate::common::{self, AgentProc, Http, count, metric};
use std::path::{Path, PathBuf};

/// The warning logged when the directory refuses a write.
const WARNING: &str = "the cache directory cannot be written";

/// The test's emulator, revalidated every second. (Agents under test keep
/// their cache in `DIR/cache`.)
fn yaml(x86: &Path) -> String {
    format!(
        "revalidate_interval: 1s\nemulators:\n  - path: {}\n    name: x86_64\n",
        x86.display()
    )
}

/// The agent serves x86_64 from memory with the directory unwritable, and
/// has said so exactly once over a few revalidation passes.
fn serves_from_memory(get: impl Fn(&str) -> common::Resp, log: impl Fn() -> String) {
    assert_eq!(get("/readyz").status, 200);
    assert_eq!(
        get("/v1/emulators/x86_64").json()["qemu"]["version"],
        "9.1.0"
    );
    let m = || get("/metrics").text();
    assert_eq!(metric(&m(), "qcapsd_cache_dir_writable"), Some(0.0));
    assert!(common::poll_until(|| {
        metric(&m(), "qcapsd_revalidations_total").is_some_and(|n| n >= 4.0)
    }));
    assert_eq!(log().matches(WARNING).count(), 1, "{}", log());
}

/// Once the directory takes files again, the one probe's file is written
/// (no second probe) and the gauge says so.
fn written_once_writable(get: impl Fn(&str) -> common::Resp, file: &Path, count_file: &Path) {
    assert!(
        common::poll_until(|| file.is_file()),
        "{} never written",
        file.display()
    );
    assert_eq!(
        metric(&get("/metrics").text(), "qcapsd_cache_dir_writable"),
        Some(1.0)
    );
    assert_eq!(count(count_file), 1, "no probe beyond the first");
}

#[test]
fn a_regular_file_where_the_cache_directory_goes_serves_from_memory() {
    let d = tempfile::tempdir().unwrap();
    let (x86, n) = common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let cache = d.path().join("cache");
    std::fs::write(&cache, "not a directory").unwrap();
    let agent = AgentProc::start(d.path(), &yaml(&x86));
    serves_from_memory(|p| agent.get(p), || agent.log_text());
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), "not a directory");
    // It is still taken: a second agent on it is refused.
    let second = d.path().join("second.yaml");
    std::fs::write(
        &second,
        format!(
            "listen: 127.0.0.1:{}\ncache_dir: {}\n{}",
            common::free_port(),
            cache.display(),
            yaml(&x86)
        ),
    )
    .unwrap();
    let out = refused(
        std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd")).args([
            "run",
            "--config",
            second.to_str().unwrap(),
        ]),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another agent uses this cache directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&n), 1);
}

/// Runs a second agent that must be refused: its output once it exited
/// with status 1 (killed, and the test failed, if it is still running
/// after the bound).
fn refused(cmd: &mut std::process::Command) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = common::poll_until(|| child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "the second agent was not refused");
    assert_eq!(out.status.code(), Some(1));
    out
}

/// `chattr -i` on drop, so a failed test leaves a removable directory.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
#[ignore = "needs root, chattr"]
fn an_immutable_cache_directory_serves_from_memory_then_takes_the_files() {
    let chattr = common::require_tool("chattr");
    let d = tempfile::tempdir().unwrap();
    let (x86, n) = common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let cache = d.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let set = |flag: &str| {
        assert!(
            std::process::Command::new(&chattr)
                .arg(flag)
                .arg(&cache)
                .status()
                .unwrap()
                .success()
        );
    };
    set("+i");
    let _undo = Immutable(cache.clone());
    let agent = AgentProc::start(d.path(), &yaml(&x86));
    serves_from_memory(|p| agent.get(p), || agent.log_text());
    set("-i");
    written_once_writable(|p| agent.get(p), &cache.join("x86_64.json"), &n);
    assert!(agent.log_text().contains("can be written again"));
}

/// A `qcapsd run` in a mount namespace of its own, where `dir` is a
/// read-only tmpfs. Killed on drop.
struct InNamespace {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl InNamespace {
    fn start(d: &Path, dir: &Path, extra: &str) -> InNamespace {
        let port = common::free_port();
        let config = d.join(format!("ns-{port}.yaml"));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ncache_dir: {}\naccels: [kvm]\n{extra}",
                dir.display()
            ),
        )
        .unwrap();
        let log = d.join(format!("ns-{port}.log"));
        let child = std::process::Command::new(common::require_tool("unshare"))
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o ro tmpfs '{}' && exec '{}' run --config '{}'",
                dir.display(),
                env!("CARGO_BIN_EXE_qcapsd"),
                config.display()
            ))
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        assert!(
            common::wait_ready(port),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        InNamespace { child, port, log }
    }

    /// `args`, to run inside the agent's mount namespace.
    fn nsenter(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(common::require_tool("nsenter"));
        cmd.args(["-t", &self.child.id().to_string(), "-m", "--"])
            .args(args);
        cmd
    }

    /// A path as the agent sees it.
    fn seen(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.child.id())).join(path.strip_prefix("/").unwrap())
    }
}

impl Http for InNamespace {
    fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root, unshare, nsenter"]
fn a_read_only_cache_directory_serves_from_memory_then_takes_the_files() {
    let d = tempfile::tempdir().unwrap();
    let (x86, n) = common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let cache = d.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let agent = InNamespace::start(d.path(), &cache, &yaml(&x86));
    let log = || std::fs::read_to_string(&agent.log).unwrap_or_default();
    serves_from_memory(|p| agent.get(p), log);
    assert!(log().contains("Read-only file system"), "{}", log());
    // The lock is on the directory itself: it holds on a read-only mount.
    let second = d.path().join("second.yaml");
    std::fs::write(
        &second,
        format!(
            "listen: 127.0.0.1:{}\ncache_dir: {}\n{}",
            common::free_port(),
            cache.display(),
            yaml(&x86)
        ),
    )
    .unwrap();
    let out = refused(&mut agent.nsenter(&[
        env!("CARGO_BIN_EXE_qcapsd"),
        "run",
        "--config",
        second.to_str().unwrap(),
    ]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another agent uses this cache directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remount = agent
        .nsenter(&["mount", "-o", "remount,rw", cache.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        remount.status.success(),
        "{}",
        String::from_utf8_lossy(&remount.stderr)
    );
    written_once_writable(
        |p| agent.get(p),
        &agent.seen(&cache.join("x86_64.json")),
        &n,
    );
}
