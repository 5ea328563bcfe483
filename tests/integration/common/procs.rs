//! Real binaries and processes: QEMU, external tools, the qcapsd binary,
//! and whether a process is still alive.

use std::path::{Path, PathBuf};

/// A real QEMU binary. Tests that call this are `#[ignore = "needs
/// QEMU"]`: a plain `cargo test` leaves them out (reported as ignored,
/// never as passed); `cargo test -- --include-ignored` (the README's test
/// command, CI) runs them, and a missing binary fails the test.
pub fn real_qemu(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/local/bin", "/usr/libexec"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found: install it (.ci/install-deps)"))
}

/// Whether this process can open /dev/kvm read-write, the way QEMU would.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
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

/// An external tool on PATH. Tests that call this are `#[ignore = "needs
/// TOOL"]`, as for [`real_qemu`]; a missing tool fails the test.
pub fn require_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} not found on PATH: install it (.ci/install-deps)"))
}

/// Runs the `qcapsd` binary with `args` and collects its output.
pub fn qcapsd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args(args)
        .output()
        .unwrap()
}

/// A mount point on which every access hangs, as on a dead NFS server: a
/// FUSE file system whose daemon never answers (a `sleep` holds
/// `/dev/fuse` and reads nothing). Dropping it kills the holder, which
/// aborts the connection (what hangs then fails with ENOTCONN), and
/// detaches the mount. Tests that use it are `#[ignore = "needs root …"]`
/// (mount(2)).
pub struct HungMount {
    pub path: PathBuf,
    holder: std::process::Child,
}

impl HungMount {
    /// Mounts it at `path` (made if missing). Nothing may touch `path`
    /// afterwards but the code under test.
    pub fn at(path: &Path) -> HungMount {
        use std::io::BufRead;
        std::fs::create_dir_all(path).unwrap();
        // The device is opened in the child, so no other process this
        // test binary forks can hold it open.
        let mut holder = std::process::Command::new("sh")
            .args([
                "-c",
                "exec 3<>/dev/fuse && mount -i -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 qcapsd-hung \"$1\" && echo mounted && exec sleep infinity",
                "sh",
            ])
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "mounted", "the FUSE mount failed (needs root)");
        HungMount {
            path: path.to_owned(),
            holder,
        }
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        // Its death closes the device: the hung calls return.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
