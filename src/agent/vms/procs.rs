//! Finding the QEMU processes of the configured emulators in `/proc`:
//! each process whose executable is one of their binaries, or was one and
//! has since been replaced (its `exe` link ends in ` (deleted)`, or names
//! the emulator's path but another file), with its command line.
//!
//! Nothing is guessed: a process is an emulator's when its `exe` link
//! says so. One whose `exe` cannot be read (another user's, without
//! `CAP_SYS_PTRACE`) is only counted, and only when its name (`comm`) is
//! an emulator's. A process that exits while it is read, or is still in
//! its exec, is counted as gone. Processes the exec sandbox of any qcapsd
//! started (their environment carries its tag: probes, recordings,
//! verifications) are no VMs and are left out, where their environment
//! can be read (another user's cannot, even with `CAP_SYS_PTRACE`: it is
//! its owner's alone, and this agent's probes run as its own user).
//! Blocking; the cost is a `readlink` per process on the host, and a few
//! reads per QEMU process.

use crate::config::discovery::EmulatorSpec;
use crate::qemu::exec::TAG_VAR;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The most bytes of a command line read (Linux allows a few MiB).
pub const MAX_CMDLINE: u64 = 4 << 20;

/// How the kernel begins an executable link that is not reachable from the
/// reader's root (another mount namespace).
const UNREACHABLE: &str = "(unreachable)";

/// The longest process name the kernel keeps (`comm`, less its NUL).
const COMM_LEN: usize = 15;

/// How an emulator's binary is recognised.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The configured name.
    pub name: String,
    /// Its binary's path with symlinks resolved (what `exe` shows).
    pub canonical: PathBuf,
    /// The binary's device and inode now (`None`: it is not there).
    pub file: Option<(u64, u64)>,
    /// The configured path's file name (for picking among emulators
    /// that are one binary under several names).
    pub file_name: String,
}

/// The identities of `specs` as their binaries are now. Blocking (a stat
/// and a `realpath` each).
pub fn identities(specs: &[EmulatorSpec]) -> Vec<Identity> {
    specs
        .iter()
        .map(|s| {
            // A binary that is gone still names its path: VMs may run
            // it; its directory is resolved instead.
            let canonical = std::fs::canonicalize(&s.path).unwrap_or_else(|_| {
                match (s.path.parent(), s.path.file_name()) {
                    (Some(dir), Some(file)) => std::fs::canonicalize(dir)
                        .map(|d| d.join(file))
                        .unwrap_or_else(|_| s.path.clone()),
                    _ => s.path.clone(),
                }
            });
            Identity {
                name: s.name.clone(),
                file: std::fs::metadata(&canonical)
                    .ok()
                    .map(|m| (m.dev(), m.ino())),
                canonical,
                file_name: s
                    .path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// One QEMU process of a configured emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pid: i32,
    /// Index into the identities.
    pub emulator: usize,
    /// The `exe` link as the kernel shows it.
    pub binary: String,
    /// It runs a file that is no longer the binary at its path.
    pub replaced: bool,
    /// `argv[0]`, lossily.
    pub argv0: String,
    /// The other arguments; `Err` when the command line is over
    /// [`MAX_CMDLINE`].
    pub args: Result<Vec<Vec<u8>>, u64>,
}

/// What a scan found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    pub found: Vec<Found>,
    /// Processes named like an emulator whose `exe` could not be read.
    pub unreadable: usize,
    /// QEMU processes that exited while they were read.
    pub gone: usize,
    /// Other users' processes are hidden from this one: `/proc` is
    /// mounted with `hidepid` (systemd's `ProtectProc=invisible`) and it
    /// may not trace them.
    pub hidden: bool,
}

/// `CAP_SYS_PTRACE`'s bit in the capability sets.
const CAP_SYS_PTRACE: u32 = 19;

/// Whether other users' processes are hidden from this one: the `/proc`
/// at `proc` is mounted with `hidepid` other than 0 and this process lacks
/// `CAP_SYS_PTRACE` (which sees through it). Reads
/// `proc/self/{mountinfo,status}`.
pub fn hidden(proc: &Path) -> bool {
    let hidepid = std::fs::read_to_string(proc.join("self/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*proc.to_string_lossy()) && l.contains(" - proc "))
        .any(|l| {
            l.rsplit(' ').next().unwrap_or("").split(',').any(|o| {
                o.strip_prefix("hidepid=")
                    .is_some_and(|v| !matches!(v, "0" | "off"))
            })
        });
    hidepid && !may_trace(proc)
}

/// Whether this process holds `CAP_SYS_PTRACE` (`CapEff` of its status).
fn may_trace(proc: &Path) -> bool {
    std::fs::read_to_string(proc.join("self/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// Why reading a process stopped.
enum Stop {
    /// Not one of ours (or a kernel thread, or a sandbox's process).
    NotOurs,
    /// Its `exe` could not be read.
    Unreadable,
    /// It exited meanwhile.
    Gone,
}

/// Whether a read of a process's file failed because it exited.
fn exited(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error()
        .is_some_and(|c| c == Errno::NOENT.raw_os_error() || c == Errno::SRCH.raw_os_error())
}

fn gone_or(e: &std::io::Error, other: Stop) -> Stop {
    if exited(e) { Stop::Gone } else { other }
}

/// Lists the QEMU processes of `ids` in the process table at `proc`
/// (`/proc`; another root in tests).
pub fn scan(proc: &Path, ids: &[Identity]) -> Scan {
    let mut out = Scan::default();
    if ids.is_empty() {
        return out;
    }
    out.hidden = hidden(proc);
    let Ok(dir) = std::fs::read_dir(proc) else {
        return out;
    };
    let comms: Vec<&[u8]> = ids
        .iter()
        .map(|i| &i.file_name.as_bytes()[..i.file_name.len().min(COMM_LEN)])
        .collect();
    for e in dir.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let base = e.path();
        match read(&base, pid, ids) {
            Ok(found) => out.found.push(found),
            Err(Stop::NotOurs) => {}
            Err(Stop::Gone) => out.gone += 1,
            Err(Stop::Unreadable) => {
                let comm = std::fs::read(base.join("comm")).unwrap_or_default();
                let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
                if comms.contains(&comm) {
                    out.unreadable += 1;
                }
            }
        }
    }
    out.found.sort_by_key(|f| f.pid);
    out
}

fn read(base: &Path, pid: i32, ids: &[Identity]) -> Result<Found, Stop> {
    let link = std::fs::read_link(base.join("exe")).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Stop::Unreadable,
        // A kernel thread has no exe; an exited process, none either.
        _ => Stop::NotOurs,
    })?;
    let shown = link.to_string_lossy().into_owned();
    // A process of another mount namespace (the agent's own, under
    // systemd's ProtectSystem= and PrivateMounts=, is one) has its path
    // marked unreachable: the same path, from where the agent stands.
    let reached = shown.strip_prefix(UNREACHABLE).unwrap_or(&shown);
    let (path, deleted) = match reached.strip_suffix(" (deleted)") {
        Some(p) => (Path::new(p), true),
        None => (Path::new(reached), false),
    };
    let matching: Vec<usize> = (0..ids.len())
        .filter(|&i| ids[i].canonical == path)
        .collect();
    if matching.is_empty() {
        return Err(Stop::NotOurs);
    }
    let running = std::fs::metadata(base.join("exe"))
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| gone_or(&e, Stop::NotOurs))?;
    // The environment is its owner's alone (mode 0400, whatever the
    // capabilities): another user's process cannot be a probe of this
    // agent, whose probes run as its own user.
    match std::fs::read(base.join("environ")) {
        Ok(environ) => {
            let tag = format!("{TAG_VAR}=");
            if environ
                .split(|&b| b == 0)
                .any(|v| v.starts_with(tag.as_bytes()))
            {
                return Err(Stop::NotOurs);
            }
        }
        Err(e) if exited(&e) => return Err(Stop::Gone),
        Err(_) => {}
    }
    let mut cmdline = Vec::new();
    std::fs::File::open(base.join("cmdline"))
        .and_then(|f| f.take(MAX_CMDLINE + 1).read_to_end(&mut cmdline))
        .map_err(|e| gone_or(&e, Stop::Gone))?;
    if cmdline.is_empty() {
        // A process that exited (a zombie) has no command line, nor one
        // in the middle of its exec (`exe` is set a moment before).
        return Err(Stop::Gone);
    }
    let argv0_of = |c: &[u8]| {
        String::from_utf8_lossy(c.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
    };
    let argv0 = argv0_of(&cmdline);
    // Several emulators may be one binary under several names (a `kvm`
    // symlink): the one the process was called by, else the first.
    let argv0_name = Path::new(&argv0)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let emulator = matching
        .iter()
        .copied()
        .find(|&i| ids[i].file_name == argv0_name)
        .unwrap_or(matching[0]);
    let replaced = deleted || ids[emulator].file != Some(running);
    let args = if cmdline.len() as u64 > MAX_CMDLINE {
        Err(MAX_CMDLINE)
    } else {
        let mut parts: Vec<Vec<u8>> = cmdline.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
        if parts.last().is_some_and(Vec::is_empty) {
            parts.pop();
        }
        if !parts.is_empty() {
            parts.remove(0);
        }
        Ok(parts)
    };
    Ok(Found {
        pid,
        emulator,
        binary: reached.to_owned(),
        replaced,
        argv0,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process table of its own: `proc/PID/{exe,environ,cmdline,comm}`
    /// as the kernel shows them (the `exe` link names a file; a replaced
    /// one, a name ending in ` (deleted)`).
    fn process(proc: &Path, pid: i32, exe: &Path, cmdline: &[u8], environ: &[u8]) {
        let d = proc.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(exe, d.join("exe")).unwrap();
        std::fs::write(d.join("cmdline"), cmdline).unwrap();
        std::fs::write(d.join("environ"), environ).unwrap();
        std::fs::write(d.join("comm"), b"qemu-system-x86\n").unwrap();
    }

    #[test]
    fn emulators_processes_are_found_and_the_replaced_ones_said() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let x86 = bin.join("qemu-system-x86_64");
        std::fs::write(&x86, "new").unwrap();
        // What the kernel shows for a file unlinked while it runs.
        let old = bin.join("qemu-system-x86_64 (deleted)");
        std::fs::write(&old, "old").unwrap();
        let other = bin.join("sshd");
        std::fs::write(&other, "").unwrap();
        let ids = identities(&[EmulatorSpec {
            name: "x86_64".into(),
            path: x86.clone(),
        }]);
        let proc = d.path().join("proc");
        let cmd = b"/usr/bin/qemu-system-x86_64\0-name\0guest=a\0-M\0q35\0";
        process(&proc, 10, &x86, cmd, b"PATH=/bin\0");
        process(&proc, 11, &old, cmd, b"");
        process(&proc, 12, &other, b"sshd\0", b"");
        // A probe of some qcapsd: no VM.
        process(&proc, 13, &x86, cmd, b"QCAPSD_PROBE=cache_dir=/x\0");
        // Exited (a zombie): no command line.
        process(&proc, 14, &x86, b"", b"");
        // Seen from another mount namespace: the kernel marks the path
        // (the link resolves, here, to a hard link of the same file).
        let marked = format!("(unreachable){}", x86.display());
        let d15 = proc.join("15");
        std::fs::create_dir_all(d15.join(&marked).parent().unwrap()).unwrap();
        std::fs::hard_link(&x86, d15.join(&marked)).unwrap();
        process(&proc, 15, Path::new(&marked), cmd, b"");
        // Another user's: its environment cannot be read (here: a
        // directory where the file would be; as root nothing is denied).
        process(&proc, 16, &x86, cmd, b"");
        std::fs::remove_file(proc.join("16/environ")).unwrap();
        std::fs::create_dir(proc.join("16/environ")).unwrap();
        std::fs::create_dir(proc.join("self")).unwrap();
        let s = scan(&proc, &ids);
        assert_eq!(s.found.len(), 4, "{s:?}");
        let f = &s.found[0];
        assert_eq!((f.pid, f.emulator, f.replaced), (10, 0, false));
        assert_eq!(f.argv0, "/usr/bin/qemu-system-x86_64");
        assert_eq!(
            f.args.as_ref().unwrap(),
            &[
                b"-name".to_vec(),
                b"guest=a".to_vec(),
                b"-M".to_vec(),
                b"q35".to_vec()
            ]
        );
        let r = &s.found[1];
        assert_eq!((r.pid, r.replaced), (11, true));
        assert!(r.binary.ends_with(" (deleted)"));
        let u = &s.found[2];
        assert_eq!((u.pid, u.replaced), (15, false), "{u:?}");
        assert_eq!(
            s.found[3].pid, 16,
            "an unreadable environment is no probe's"
        );
        assert_eq!(s.gone, 1);
    }

    #[test]
    fn hidden_processes_are_known_from_the_mount_and_the_capability() {
        let d = tempfile::tempdir().unwrap();
        let proc = d.path().join("proc");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        let at = proc.to_string_lossy().into_owned();
        let mount = |opts: &str| {
            std::fs::write(
                proc.join("self/mountinfo"),
                format!("22 27 0:21 / {at} rw,nosuid - proc proc {opts}\n"),
            )
            .unwrap();
        };
        let caps = |eff: &str| {
            std::fs::write(
                proc.join("self/status"),
                format!("Name:\tq\nCapEff:\t{eff}\n"),
            )
            .unwrap();
        };
        mount("rw,hidepid=invisible");
        caps("0000000000000000");
        assert!(hidden(&proc));
        caps("0000000000080000");
        assert!(!hidden(&proc), "CAP_SYS_PTRACE sees through hidepid");
        caps("0000000000000000");
        mount("rw");
        assert!(!hidden(&proc));
        mount("rw,hidepid=0");
        assert!(!hidden(&proc));
    }
}
