//! What makes a cached probe still valid: the fingerprint (docs/cache.md
//! says what each part covers), as complete as libvirt's `virQEMUCapsIsValid`, taken from the
//! host (never from QEMU's answer) and checked with a few `stat`s, no exec.
//!
//! Host facts are read below a root directory (`/` in production, a fixture
//! tree in tests, as node_exporter's `--path.procfs`). The slow-to-read,
//! rarely-changing part ([`HostContext`]: kernel, CPU signature, microcode,
//! CPUID feature leaves, KVM's `nested` switch, the secure-guest switches)
//! is a snapshot the revalidator refreshes on each pass; a lookup only
//! stats the binary and the module directories and checks `/dev/kvm`.

use super::accel::Accel;
use super::caps::SCHEMA_VERSION;
use crate::support::digest::Fnv64;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Identity of a file as `stat` reports it (nanosecond times). ctime is
/// included because package managers can set mtime backwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileStamp {
    /// Device number of the file system.
    pub dev: u64,
    /// Inode number (a package upgrade renames a new file in: a new inode).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Last status change, nanoseconds since the epoch.
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

/// The switches that make secure guests (AMD SEV, Intel TDX, IBM Secure
/// Execution) available to KVM; each is `None` where the file is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecureGuest {
    /// `/sys/module/kvm_amd/parameters/sev`
    pub sev: Option<String>,
    /// `/sys/module/kvm_amd/parameters/sev_es`
    pub sev_es: Option<String>,
    /// `/sys/module/kvm_amd/parameters/sev_snp`
    pub sev_snp: Option<String>,
    /// `/sys/module/kvm_intel/parameters/tdx`
    pub tdx: Option<String>,
    /// Whether `/dev/sev` exists.
    pub dev_sev: bool,
    /// `/sys/firmware/uv/prot_virt_host` (s390x)
    pub prot_virt: Option<String>,
}

/// Host facts that matter to accelerated probes: CPU usability under KVM
/// depends on the kernel, the CPU, its microcode and KVM's switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostContext {
    /// `/proc/sys/kernel/osrelease`
    pub kernel_release: String,
    /// `vendor/family/model/stepping` of the first CPU in `/proc/cpuinfo`.
    pub cpu_signature: String,
    /// `microcode` of the first CPU in `/proc/cpuinfo`.
    pub microcode: Option<String>,
    /// A hash of the CPUID feature leaves (`/dev/cpu/0/cpuid` under the
    /// root if readable, else the CPUID instruction; `None` off x86).
    pub cpuid: Option<String>,
    /// KVM's `nested` parameter (`kvm_intel` or `kvm_amd`).
    pub kvm_nested: Option<String>,
    /// The switches that make secure guests available.
    pub secure_guest: SecureGuest,
}

/// Everything an entry's validity depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    /// The document version the entry was probed for.
    pub schema_version: u32,
    /// The QEMU binary.
    pub binary: FileStamp,
    /// mtime (ns) of each QEMU module directory, `None` where it is absent.
    pub module_dirs: Vec<(PathBuf, Option<i128>)>,
    /// Whether the user the agent (and so every probe) runs as may open
    /// `/dev/kvm` read-write.
    pub kvm_usable: bool,
    /// The accelerators asked for (config `accels`).
    pub accels: Vec<Accel>,
    /// Recorded only when the probe could use KVM. Shared with the
    /// handler's snapshot, so taking a stamp copies no strings.
    pub host: Option<Arc<HostContext>>,
}

crate::support::labelled! {
    /// Which part of a fingerprint differs: the reason a cached answer is
    /// no longer valid (the `reason` label of cache misses and
    /// invalidations, beside the cache's own [`crate::cache::Reason`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub enum ChangeReason {
        /// The agent's capabilities schema.
        SchemaChanged = "schema_changed",
        /// The binary: device, inode, size, mtime or ctime.
        BinaryChanged = "binary_changed",
        /// A QEMU module directory.
        ModulesChanged = "modules_changed",
        /// Whether `/dev/kvm` is usable.
        KvmChanged = "kvm_changed",
        /// The accelerators asked for (config `accels`).
        ConfigChanged = "config_changed",
        /// The CPU's feature bits.
        CpuidChanged = "cpuid_changed",
        /// KVM's nested switch.
        KvmNestedChanged = "kvm_nested_changed",
        /// A secure-guest switch (SEV, TDX).
        SecureGuestChanged = "secure_guest_changed",
        /// The kernel release, CPU signature or microcode.
        HostChanged = "host_changed",
        /// Nothing differs.
        Unchanged = "unchanged",
    }
}

impl Fingerprint {
    /// Which part differs.
    pub fn why_changed(old: &Fingerprint, new: &Fingerprint) -> ChangeReason {
        if old.schema_version != new.schema_version {
            return ChangeReason::SchemaChanged;
        }
        if old.binary != new.binary {
            return ChangeReason::BinaryChanged;
        }
        if old.module_dirs != new.module_dirs {
            return ChangeReason::ModulesChanged;
        }
        if old.kvm_usable != new.kvm_usable {
            return ChangeReason::KvmChanged;
        }
        if old.accels != new.accels {
            return ChangeReason::ConfigChanged;
        }
        match (&old.host, &new.host) {
            (Some(a), Some(b)) if a != b => HostContext::why_changed(a, b),
            (a, b) if a != b => ChangeReason::HostChanged,
            _ => ChangeReason::Unchanged,
        }
    }
}

impl HostContext {
    /// Which host fact differs.
    pub fn why_changed(old: &HostContext, new: &HostContext) -> ChangeReason {
        if old.cpuid != new.cpuid {
            ChangeReason::CpuidChanged
        } else if old.kvm_nested != new.kvm_nested {
            ChangeReason::KvmNestedChanged
        } else if old.secure_guest != new.secure_guest {
            ChangeReason::SecureGuestChanged
        } else {
            ChangeReason::HostChanged
        }
    }
}

/// The CPUID leaves (leaf, subleaf) whose feature bits decide which CPU
/// models KVM can run: vendor and basic features, structured extended
/// features, XSAVE, extended features, SVM and SEV. Fields that differ
/// from core to core (APIC ids in leaf 1 EBX) are left out.
const FEATURE_LEAVES: &[(u32, u32)] = &[
    (0x0, 0),
    (0x1, 0),
    (0x7, 0),
    (0x7, 1),
    (0x7, 2),
    (0xd, 0),
    (0xd, 1),
    (0x14, 0),
    (0x19, 0),
    (0x8000_0000, 0),
    (0x8000_0001, 0),
    (0x8000_0007, 0),
    (0x8000_0008, 0),
    (0x8000_000a, 0),
    (0x8000_001f, 0),
    (0x8000_0021, 0),
];

/// The host files facts are read from (below the root).
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const CPUINFO: &str = "/proc/cpuinfo";
const CPUID_DEVICE: &str = "/dev/cpu/0/cpuid";
const KVM_INTEL_NESTED: &str = "/sys/module/kvm_intel/parameters/nested";
const KVM_AMD_NESTED: &str = "/sys/module/kvm_amd/parameters/nested";
const KVM_AMD_PARAMS: &str = "/sys/module/kvm_amd/parameters";
const DEV_SEV: &str = "/dev/sev";
const PROT_VIRT: &str = "/sys/firmware/uv/prot_virt_host";

/// Reads host facts below a root directory.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    /// `/dev/kvm` under the root, checked on every lookup (joined once).
    kvm: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Host {
            kvm: root.join("dev/kvm"),
            root,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `abs` below the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Whether `/dev/kvm` exists and this process's effective user and
    /// groups may open it read-write (the probes run as this process).
    pub fn kvm_usable(&self) -> bool {
        use rustix::fs::{Access, AtFlags, CWD, accessat};
        accessat(
            CWD,
            &self.kvm,
            Access::READ_OK | Access::WRITE_OK,
            AtFlags::EACCESS,
        )
        .is_ok()
    }

    fn read_trimmed(&self, abs: &str) -> Option<String> {
        std::fs::read_to_string(self.path(abs))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Kernel release, CPU signature and microcode, CPUID, KVM's nested
    /// and secure-guest switches (a dozen small reads).
    pub fn context(&self) -> HostContext {
        let cpuinfo = std::fs::read_to_string(self.path(CPUINFO)).unwrap_or_default();
        let (cpu_signature, microcode) = parse_cpuinfo(&cpuinfo);
        let kvm_nested = self
            .read_trimmed(KVM_INTEL_NESTED)
            .or_else(|| self.read_trimmed(KVM_AMD_NESTED));
        HostContext {
            kernel_release: self.read_trimmed(OSRELEASE).unwrap_or_default(),
            cpu_signature,
            microcode,
            cpuid: self.cpuid_hash(),
            kvm_nested,
            secure_guest: SecureGuest {
                sev: self.read_trimmed(&format!("{KVM_AMD_PARAMS}/sev")),
                sev_es: self.read_trimmed(&format!("{KVM_AMD_PARAMS}/sev_es")),
                sev_snp: self.read_trimmed(&format!("{KVM_AMD_PARAMS}/sev_snp")),
                tdx: self.read_trimmed("/sys/module/kvm_intel/parameters/tdx"),
                dev_sev: self.path(DEV_SEV).exists(),
                prot_virt: self.read_trimmed(PROT_VIRT),
            },
        }
    }

    /// Where each fact of [`Host::context`] (and `/dev/kvm`) is read: the
    /// paths below the root, by fact.
    pub fn sources(&self) -> std::collections::BTreeMap<String, String> {
        let at = |abs: &str| self.path(abs).display().to_string();
        let cpuid_device = self.path(CPUID_DEVICE);
        let cpuid = if std::fs::File::open(&cpuid_device).is_ok() {
            cpuid_device.display().to_string()
        } else {
            "the CPUID instruction".to_owned()
        };
        [
            ("kernel_release", at(OSRELEASE)),
            ("cpu_signature", at(CPUINFO)),
            ("microcode", at(CPUINFO)),
            ("cpuid", cpuid),
            (
                "kvm_nested",
                format!("{} or {}", at(KVM_INTEL_NESTED), at(KVM_AMD_NESTED)),
            ),
            (
                "secure_guest",
                format!("{}, {}, {}", at(KVM_AMD_PARAMS), at(DEV_SEV), at(PROT_VIRT)),
            ),
            ("kvm", self.kvm.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A hash of the feature leaves, from the kernel's cpuid device under
    /// the root when it can be read, else from the CPUID instruction.
    fn cpuid_hash(&self) -> Option<String> {
        let leaves = read_cpuid_device(&self.path(CPUID_DEVICE)).or_else(native_cpuid)?;
        Some(hash_leaves(&leaves))
    }

    /// The fingerprint of `binary` now. `host` is the current snapshot of
    /// [`Host::context`]. Errors when the binary cannot be stat'ed.
    pub fn fingerprint(
        &self,
        binary: &Path,
        module_dirs: &[PathBuf],
        accels: &[Accel],
        host: &Arc<HostContext>,
    ) -> std::io::Result<Fingerprint> {
        let binary = FileStamp::of(binary)?;
        let module_dirs = module_dirs
            .iter()
            .map(|d| (d.clone(), FileStamp::of(d).ok().map(|s| s.mtime_ns)))
            .collect();
        let kvm_usable = self.kvm_usable();
        let accelerated = kvm_usable && accels.contains(&Accel::Kvm);
        Ok(Fingerprint {
            schema_version: SCHEMA_VERSION,
            binary,
            module_dirs,
            kvm_usable,
            accels: accels.to_vec(),
            host: accelerated.then(|| Arc::clone(host)),
        })
    }
}

/// One CPUID leaf's registers.
type Leaf = [u32; 4];

/// The feature leaves through the kernel's cpuid device (`pread` of 16
/// bytes at offset `leaf | subleaf << 32`), if it can be opened.
fn read_cpuid_device(path: &Path) -> Option<Vec<Leaf>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    FEATURE_LEAVES
        .iter()
        .map(|&(leaf, sub)| {
            let mut buf = [0u8; 16];
            f.read_exact_at(&mut buf, u64::from(leaf) | (u64::from(sub) << 32))
                .ok()?;
            let reg = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
            Some([reg(0), reg(4), reg(8), reg(12)])
        })
        .collect()
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn native_cpuid() -> Option<Vec<Leaf>> {
    use raw_cpuid::{CpuIdReader, CpuIdReaderNative};
    let r = CpuIdReaderNative;
    Some(
        FEATURE_LEAVES
            .iter()
            .map(|&(leaf, sub)| {
                let c = r.cpuid2(leaf, sub);
                [c.eax, c.ebx, c.ecx, c.edx]
            })
            .collect(),
    )
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn native_cpuid() -> Option<Vec<Leaf>> {
    None
}

/// The hash of the feature leaves, with per-core fields masked.
fn hash_leaves(leaves: &[Leaf]) -> String {
    let mut h = Fnv64::default();
    for (&(leaf, sub), regs) in FEATURE_LEAVES.iter().zip(leaves) {
        let mut regs = *regs;
        if leaf == 1 {
            // EBX: APIC id, logical processor count, CLFLUSH size.
            regs[1] = 0;
        }
        h.update(&leaf.to_le_bytes()).update(&sub.to_le_bytes());
        for r in regs {
            h.update(&r.to_le_bytes());
        }
    }
    format!("fnv1a64:{:016x}", h.finish())
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

    /// A fixture host root with the files a fingerprint reads.
    fn fixture() -> (tempfile::TempDir, Host) {
        let root = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w("proc/sys/kernel/osrelease", "6.1.0-test\n");
        w("proc/cpuinfo", X86);
        w("sys/module/kvm_amd/parameters/nested", "1\n");
        w("sys/module/kvm_amd/parameters/sev", "N\n");
        w("dev/kvm", "");
        write_cpuid_fixture(&root.path().join("dev/cpu/0/cpuid"), 0x1234);
        let host = Host::new(root.path());
        (root, host)
    }

    /// A sparse file laid out like the kernel's cpuid device, with `seed`
    /// in leaf 7's EBX (the structured extended features).
    fn write_cpuid_fixture(path: &Path, seed: u32) {
        use std::os::unix::fs::FileExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(path).unwrap();
        for &(leaf, sub) in FEATURE_LEAVES {
            let ebx = if leaf == 7 && sub == 0 { seed } else { leaf };
            let mut buf = [0u8; 16];
            buf[4..8].copy_from_slice(&ebx.to_le_bytes());
            f.write_all_at(&buf, u64::from(leaf) | (u64::from(sub) << 32))
                .unwrap();
        }
    }

    fn fingerprint(host: &Host, bin: &Path) -> Fingerprint {
        let ctx = Arc::new(host.context());
        host.fingerprint(bin, &[], &[Accel::Kvm], &ctx).unwrap()
    }

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
        let (_root, host) = fixture();
        let ctx = host.context();
        assert_eq!(ctx.kernel_release, "6.1.0-test");
        assert_eq!(ctx.microcode.as_deref(), Some("0x1000065"));
        assert_eq!(ctx.kvm_nested.as_deref(), Some("1"));
        assert_eq!(ctx.secure_guest.sev.as_deref(), Some("N"));
        assert!(!ctx.secure_guest.dev_sev);
        assert!(
            ctx.cpuid
                .as_deref()
                .is_some_and(|c| c.starts_with("fnv1a64:"))
        );
        assert!(host.kvm_usable());
    }

    #[test]
    fn each_host_fact_has_its_own_reason() {
        let (root, host) = fixture();
        let bin = root.path().join("qemu");
        std::fs::write(&bin, "x").unwrap();
        let before = fingerprint(&host, &bin);
        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: [Change; 5] = [
            (
                "cpuid_changed",
                Box::new(|| write_cpuid_fixture(&root.path().join("dev/cpu/0/cpuid"), 0x5678)),
            ),
            (
                "kvm_nested_changed",
                Box::new(|| {
                    std::fs::write(
                        root.path().join("sys/module/kvm_amd/parameters/nested"),
                        "0\n",
                    )
                    .unwrap()
                }),
            ),
            (
                "secure_guest_changed",
                Box::new(|| std::fs::write(root.path().join("dev/sev"), "").unwrap()),
            ),
            (
                "host_changed",
                Box::new(|| {
                    std::fs::write(
                        root.path().join("proc/cpuinfo"),
                        X86.replace("0x1000065", "0x1000099"),
                    )
                    .unwrap()
                }),
            ),
            (
                "kvm_changed",
                Box::new(|| std::fs::remove_file(root.path().join("dev/kvm")).unwrap()),
            ),
        ];
        let mut last = before;
        for (reason, change) in changes {
            change();
            let now = fingerprint(&host, &bin);
            assert_eq!(Fingerprint::why_changed(&last, &now).as_str(), reason);
            last = now;
        }
    }

    #[test]
    fn kvm_usable_follows_the_effective_user_s_access() {
        let (root, host) = fixture();
        use std::os::unix::fs::PermissionsExt;
        let kvm = root.path().join("dev/kvm");
        std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Root may open anything; another user may not open a 0600 file it
        // does not own. Either way the answer is what access(2) says for
        // the effective ids.
        let expected = rustix::process::geteuid().is_root();
        assert_eq!(host.kvm_usable(), expected);
    }

    /// An empty root with a binary in it.
    fn bare_root() -> (tempfile::TempDir, PathBuf, Host) {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("qemu");
        std::fs::write(&bin, "v1").unwrap();
        let host = Host::new(root.path());
        (root, bin, host)
    }

    #[test]
    fn fingerprint_records_host_only_when_kvm_can_be_used() {
        let (root, bin, host) = bare_root();
        let ctx = Arc::new(host.context());
        let no_kvm = host.fingerprint(&bin, &[], &[Accel::Kvm], &ctx).unwrap();
        assert!(!no_kvm.kvm_usable && no_kvm.host.is_none());
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), "").unwrap();
        let kvm = host.fingerprint(&bin, &[], &[Accel::Kvm], &ctx).unwrap();
        assert_eq!(kvm.host.as_ref(), Some(&ctx));
        assert_eq!(
            Fingerprint::why_changed(&no_kvm, &kvm),
            ChangeReason::KvmChanged
        );
        let tcg = host.fingerprint(&bin, &[], &[Accel::Tcg], &ctx).unwrap();
        assert!(
            tcg.host.is_none(),
            "a TCG probe does not depend on the host CPU"
        );
    }

    #[test]
    fn replaced_binary_changes_the_fingerprint() {
        let (d, bin, host) = bare_root();
        let a = fingerprint(&host, &bin);
        let new = d.path().join("qemu.new");
        std::fs::write(&new, "v2").unwrap();
        std::fs::rename(&new, &bin).unwrap();
        let b = fingerprint(&host, &bin);
        assert_eq!(
            Fingerprint::why_changed(&a, &b),
            ChangeReason::BinaryChanged
        );
        let ctx = Arc::new(host.context());
        assert!(
            host.fingerprint(&d.path().join("gone"), &[], &[Accel::Kvm], &ctx)
                .is_err()
        );
    }
}
