//! Processes that stand for running VMs: real QEMU started stopped (`-S`,
//! no disk, no display), and stand-ins whose executable is a copy of
//! Python named like an emulator (a VM's command line of any shape, even
//! one QEMU would refuse). Each is killed and reaped when dropped.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct TestVm {
    pub child: Child,
}

impl TestVm {
    /// QEMU at `bin` with `args`, stopped, no defaults, no display;
    /// returns once QEMU runs (its command line is readable).
    pub fn qemu(bin: &Path, args: &[&str]) -> TestVm {
        let child = Command::new(bin)
            .args(["-S", "-nodefaults", "-display", "none"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let vm = TestVm { child };
        vm.wait_running(bin);
        vm
    }

    /// A stand-in at `python` (a copy of Python) that sleeps, with `args`
    /// after its own (`-c CODE`), any bytes at all.
    pub fn stand_in<S: AsRef<OsStr>>(python: &Path, args: &[S]) -> TestVm {
        let child = Command::new(python)
            .args(["-c", "import signal; signal.pause()"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let vm = TestVm { child };
        vm.wait_running(python);
        vm
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the process runs `bin` with its command line (its
    /// exec is done: the kernel sets `exe` a moment before the command
    /// line, and a listing in between counts the process gone).
    fn wait_running(&self, bin: &Path) {
        let exe = format!("/proc/{}/exe", self.pid());
        let cmdline = format!("/proc/{}/cmdline", self.pid());
        let real = std::fs::canonicalize(bin).unwrap();
        assert!(
            super::poll_until(|| std::fs::read_link(&exe).is_ok_and(|l| l == real)
                && std::fs::read(&cmdline).is_ok_and(|c| !c.is_empty())),
            "{} did not start",
            bin.display()
        );
    }

    /// Whether it still runs (QEMU exits at once on a command line it
    /// refuses).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of Python in `dir` named `name`: an executable to stand for an
/// emulator whose processes take any command line.
pub fn python_copy(dir: &Path, name: &str) -> PathBuf {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("python3");
    let path = dir.join(name);
    std::fs::copy(std::fs::canonicalize(python).unwrap(), &path).unwrap();
    path
}

/// `s` as an argument, bytes and all (not UTF-8 where it is not).
pub fn arg(s: &[u8]) -> &OsStr {
    OsStr::from_bytes(s)
}

/// The VM of pid `pid` in a `/v1/vms` answer.
pub fn vm_of(list: &serde_json::Value, pid: i32) -> &serde_json::Value {
    list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not listed: {list}"))
}
