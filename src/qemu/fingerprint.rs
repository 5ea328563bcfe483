//! What makes a cached probe still valid: the fingerprint of DESIGN.md
//! §Validity, taken from the host (never from QEMU's answer) and checked
//! with a few `stat`s, no exec.
//!
//! Host facts are read below a root directory (`/` in production, a fixture
//! tree in tests, as node_exporter's `--path.procfs`). The slow-to-read,
//! rarely-changing part (kernel release, CPU signature, microcode) is kept
//! as a [`HostContext`] snapshot that the revalidator refreshes; a lookup
//! only stats the binary and module directories and checks `/dev/kvm`.

use super::caps::SCHEMA_VERSION;
use super::exec::Accel;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Identity of a file as `stat` reports it (nanosecond times). ctime is
/// included because package managers can set mtime backwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    /// One `statx` asking only for the basic fields (cheaper than
    /// `std::fs::metadata`, which asks for everything); follows symlinks.
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
        let st = statx(CWD, path, AtFlags::empty(), StatxFlags::BASIC_STATS)?;
        let ns = |t: rustix::fs::StatxTimestamp| {
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        };
        Ok(FileStamp {
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: st.stx_size,
            mtime_ns: ns(st.stx_mtime),
            ctime_ns: ns(st.stx_ctime),
        })
    }
}

/// Host facts that matter to accelerated probes: CPU usability under KVM
/// depends on the kernel, the CPU and its microcode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostContext {
    pub kernel_release: String,
    /// `vendor/family/model/stepping` of the first CPU.
    pub cpu_signature: String,
    pub microcode: Option<String>,
}

/// Everything an entry's validity depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    pub schema_version: u32,
    pub binary: FileStamp,
    /// mtime (ns) of each QEMU module directory, `None` where it is absent.
    pub module_dirs: Vec<(PathBuf, Option<i128>)>,
    pub kvm_usable: bool,
    pub accel: Accel,
    /// Recorded only when the probe could use KVM. Shared with the
    /// handler's snapshot, so taking a stamp copies no strings.
    pub host: Option<Arc<HostContext>>,
}

impl Fingerprint {
    /// Which part differs, as a bounded reason label.
    pub fn why_changed(old: &Fingerprint, new: &Fingerprint) -> &'static str {
        if old.schema_version != new.schema_version {
            "schema_changed"
        } else if old.binary != new.binary {
            "binary_changed"
        } else if old.module_dirs != new.module_dirs {
            "modules_changed"
        } else if old.kvm_usable != new.kvm_usable {
            "kvm_changed"
        } else if old.host != new.host {
            "host_changed"
        } else if old.accel != new.accel {
            "config_changed"
        } else {
            "unchanged"
        }
    }
}

/// Reads host facts below a root directory.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host { root: root.into() }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Whether `/dev/kvm` exists and this process may open it read-write.
    pub fn kvm_usable(&self) -> bool {
        use rustix::fs::{Access, access};
        access(self.path("/dev/kvm"), Access::READ_OK | Access::WRITE_OK).is_ok()
    }

    /// Kernel release, CPU signature and microcode (reads two files).
    pub fn context(&self) -> HostContext {
        let kernel_release = std::fs::read_to_string(self.path("/proc/sys/kernel/osrelease"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let cpuinfo = std::fs::read_to_string(self.path("/proc/cpuinfo")).unwrap_or_default();
        let (cpu_signature, microcode) = parse_cpuinfo(&cpuinfo);
        HostContext {
            kernel_release,
            cpu_signature,
            microcode,
        }
    }

    /// The fingerprint of `binary` now. `host` is the current snapshot of
    /// [`Host::context`]. Errors when the binary cannot be stat'ed (missing).
    pub fn fingerprint(
        &self,
        binary: &Path,
        module_dirs: &[PathBuf],
        accel: Accel,
        host: &Arc<HostContext>,
    ) -> std::io::Result<Fingerprint> {
        let binary = FileStamp::of(binary)?;
        let module_dirs = module_dirs
            .iter()
            .map(|d| (d.clone(), FileStamp::of(d).ok().map(|s| s.mtime_ns)))
            .collect();
        let kvm_usable = self.kvm_usable();
        let accelerated = kvm_usable && accel != Accel::Tcg;
        Ok(Fingerprint {
            schema_version: SCHEMA_VERSION,
            binary,
            module_dirs,
            kvm_usable,
            accel,
            host: accelerated.then(|| Arc::clone(host)),
        })
    }
}

/// The first processor block's signature and microcode from `/proc/cpuinfo`
/// (x86 keys; other architectures' keys where x86's are absent).
pub fn parse_cpuinfo(text: &str) -> (String, Option<String>) {
    let block = text.split("\n\n").next().unwrap_or("");
    let get = |key: &str| {
        block.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    let parts: Vec<String> = [
        ["vendor_id", "CPU implementer"],
        ["cpu family", "CPU architecture"],
        ["model", "CPU part"],
        ["stepping", "CPU revision"],
    ]
    .iter()
    .map(|alts| alts.iter().find_map(|k| get(k)).unwrap_or_default())
    .collect();
    let signature = if parts.iter().all(String::is_empty) {
        get("cpu").unwrap_or_default()
    } else {
        parts.join("/")
    };
    (signature, get("microcode"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\
                       model name\t: AMD EPYC\nstepping\t: 1\nmicrocode\t: 0x1000065\n\n\
                       processor\t: 1\nvendor_id\t: AuthenticAMD\nmicrocode\t: 0x1000066\n";

    #[test]
    fn x86_signature_and_microcode_of_the_first_cpu() {
        assert_eq!(
            parse_cpuinfo(X86),
            (
                "AuthenticAMD/25/17/1".to_owned(),
                Some("0x1000065".to_owned())
            )
        );
    }

    #[test]
    fn arm_signature() {
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU architecture: 8\n\
                   CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n";
        assert_eq!(parse_cpuinfo(arm), ("0x41/8/0xd0c/1".to_owned(), None));
    }

    #[test]
    fn file_stamp_agrees_with_std_metadata() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "12345").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let s = FileStamp::of(&f).unwrap();
        assert_eq!((s.dev, s.ino, s.size), (m.dev(), m.ino(), 5));
        assert_eq!(
            s.mtime_ns,
            i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
        );
        assert_eq!(
            s.ctime_ns,
            i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
        );
        assert!(FileStamp::of(&d.path().join("none")).is_err());
    }

    #[test]
    fn empty_cpuinfo_is_empty_not_an_error() {
        assert_eq!(parse_cpuinfo(""), (String::new(), None));
    }

    #[test]
    fn host_facts_come_from_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/kernel")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(
            root.path().join("proc/sys/kernel/osrelease"),
            "6.1.0-test\n",
        )
        .unwrap();
        std::fs::write(root.path().join("proc/cpuinfo"), X86).unwrap();
        let host = Host::new(root.path());
        assert!(!host.kvm_usable(), "no /dev/kvm in the fixture");
        std::fs::write(root.path().join("dev/kvm"), "").unwrap();
        assert!(host.kvm_usable());
        let ctx = host.context();
        assert_eq!(ctx.kernel_release, "6.1.0-test");
        assert_eq!(ctx.microcode.as_deref(), Some("0x1000065"));
    }

    #[test]
    fn fingerprint_records_host_only_when_kvm_can_be_used() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("qemu");
        std::fs::write(&bin, "x").unwrap();
        let host = Host::new(root.path());
        let ctx = Arc::new(HostContext {
            kernel_release: "k".into(),
            cpu_signature: "s".into(),
            microcode: None,
        });
        let no_kvm = host.fingerprint(&bin, &[], Accel::Auto, &ctx).unwrap();
        assert!(!no_kvm.kvm_usable && no_kvm.host.is_none());
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), "").unwrap();
        let kvm = host.fingerprint(&bin, &[], Accel::Auto, &ctx).unwrap();
        assert_eq!(kvm.host.as_ref(), Some(&ctx));
        assert_eq!(Fingerprint::why_changed(&no_kvm, &kvm), "kvm_changed");
        let tcg = host.fingerprint(&bin, &[], Accel::Tcg, &ctx).unwrap();
        assert!(
            tcg.host.is_none(),
            "a TCG probe does not depend on the host CPU"
        );
    }

    #[test]
    fn replaced_binary_changes_the_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("qemu");
        std::fs::write(&bin, "v1").unwrap();
        let host = Host::new(d.path());
        let ctx = Arc::new(host.context());
        let a = host.fingerprint(&bin, &[], Accel::Auto, &ctx).unwrap();
        let new = d.path().join("qemu.new");
        std::fs::write(&new, "v2").unwrap();
        std::fs::rename(&new, &bin).unwrap();
        let b = host.fingerprint(&bin, &[], Accel::Auto, &ctx).unwrap();
        assert_eq!(Fingerprint::why_changed(&a, &b), "binary_changed");
        assert!(
            host.fingerprint(&d.path().join("gone"), &[], Accel::Auto, &ctx)
                .is_err()
        );
    }
}
