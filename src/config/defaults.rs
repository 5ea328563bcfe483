//! Every default value of qcapsd, in one place: the config's keys, and the
//! constants other layers would otherwise pick for themselves (the probe's
//! devices and timeout, the cache's backoff, QEMU's module directories).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the query API listens by default: loopback only.
pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9733));
/// Cache directory when running as root.
pub const ROOT_CACHE_DIR: &str = "/var/cache/qcapsd";
pub const REVALIDATE_INTERVAL: Duration = Duration::from_secs(60);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of the derived default of `probe_concurrency`: each probe
/// is one QEMU process taking about a core and 50–100 MB for ~0.1 s;
/// past 8 a cold start is memory-bound, not faster.
pub const PROBE_CONCURRENCY_CAP: usize = 8;
/// Minimum time between two forced probes of one emulator.
pub const FORCED_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Changes kept per emulator.
pub const CHANGE_HISTORY: u64 = 50;
/// Accelerators whose CPU usability is probed, in order of preference:
/// both, as libvirt does, so that a check for either is answered from
/// QEMU's own word (one more exec per emulator where KVM works).
pub const ACCELS: &[crate::qemu::Accel] = &[crate::qemu::Accel::Kvm, crate::qemu::Accel::Tcg];
/// The longest a long-poll (`?wait=`) is held.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
pub const HOST_ROOT: &str = "/";
pub const MAX_CONNECTIONS: u64 = 512;
pub const MAX_HEADER_BYTES: u64 = 16 << 10;
pub const MAX_BODY_BYTES: u64 = 4 << 10;
/// A capabilities document is 0.1–1 MB.
pub const MAX_DOCUMENT_BYTES: u64 = 8 << 20;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Directories searched, besides PATH, by the default discovery.
pub const DISCOVERY_EXTRA_DIRS: &[&str] = &["/usr/libexec"];
/// File-name patterns of the default discovery.
pub const DISCOVERY_PATTERNS: &[&str] = &["qemu-system-*", "qemu-kvm", "kvm"];

/// The devices whose properties are read by default: those libvirt inspects,
/// with their -ccw and -device variants for s390x and virtio-mmio targets.
pub const DEVICE_PROPERTIES: &[&str] = &[
    "virtio-blk-pci",
    "virtio-net-pci",
    "virtio-scsi-pci",
    "vfio-pci",
    "scsi-hd",
    "ide-hd",
    "usb-storage",
    "usb-host",
    "VGA",
    "qxl",
    "virtio-gpu-pci",
    "virtio-balloon-pci",
    "intel-iommu",
    "nvdimm",
    "pcie-root-port",
    "virtio-mem-pci",
    "virtio-iommu-pci",
    "virtio-blk-ccw",
    "virtio-net-ccw",
    "virtio-scsi-ccw",
    "virtio-balloon-ccw",
    "virtio-gpu-ccw",
    "vfio-ccw",
    "virtio-blk-device",
    "virtio-net-device",
    "virtio-scsi-device",
    "virtio-balloon-device",
    "virtio-gpu-device",
];

/// Retry delays of a failed probe: the first, doubling up to the last.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// Where QEMU keeps its loadable modules on the usual distributions,
/// below `root` (config `module_dirs` overrides them).
pub fn module_dirs(root: &Path) -> Vec<PathBuf> {
    let multiarch = format!("usr/lib/{}-linux-gnu/qemu", std::env::consts::ARCH);
    [multiarch.as_str(), "usr/lib64/qemu", "usr/lib/qemu"]
        .iter()
        .map(|rel| root.join(rel))
        .collect()
}

/// A probe request with the default timeout and devices (`qcapsd probe`,
/// tests and benches; the agent takes its own from the config).
pub fn probe_request(name: impl Into<String>) -> crate::qemu::ProbeRequest {
    crate::qemu::ProbeRequest::new(
        name,
        PROBE_TIMEOUT,
        DEVICE_PROPERTIES.iter().map(|s| (*s).to_owned()).collect(),
    )
}

/// `/var/cache/qcapsd` for root, `$XDG_CACHE_HOME/qcapsd` (or
/// `~/.cache/qcapsd`) otherwise.
pub fn cache_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from(ROOT_CACHE_DIR);
    }
    let abs = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").and_then(abs) {
        return x.join("qcapsd");
    }
    if let Some(h) = std::env::var_os("HOME").and_then(abs) {
        return h.join(".cache/qcapsd");
    }
    std::env::temp_dir().join("qcapsd-cache")
}

/// The default of `probe_concurrency`: the CPUs available to the agent
/// (its affinity mask and cgroup quota, as `available_parallelism` reads
/// them), at least 1 and at most [`PROBE_CONCURRENCY_CAP`].
pub fn probe_concurrency() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, PROBE_CONCURRENCY_CAP)
}

/// Queries recorded right after each probe when shims are kept, so the
/// first caller never waits: one exec each per probe.
pub const SHIM_PREWARM: &[&str] = &[
    "--help",
    "-version",
    "-machine help",
    "-cpu help",
    "-device help",
];
/// Argument lists the memo keeps per emulator.
pub const SHIM_MEMO_MAX_QUERIES: u64 = 64;
/// Bytes of one memo answer (`-device help` is about 30 KB).
pub const SHIM_MEMO_MAX_BYTES: u64 = 4 << 20;
/// QEMU's verdicts (`verify`) kept per emulator fingerprint.
pub const VERIFY_MAX: u64 = 256;
/// Bytes of one kept verdict (QEMU's error line and the devices it was
/// not asked about).
pub const VERIFY_MAX_BYTES: usize = 64 << 10;
/// How long a shim waits for the agent to acknowledge its request (the
/// agent sends the head of its answer at once): past it, the agent is
/// taken for stopped or frozen, and the shim runs QEMU itself.
pub const SHIM_ACK_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a shim waits for the agent's answer before it runs QEMU
/// itself: a first answer may wait on a probe and a recording.
pub const SHIM_TIMEOUT: Duration = Duration::from_secs(3);

/// Node labels expire this many revalidation intervals after they are
/// written (each pass rewrites them), so they vanish when the agent stops…
pub const NFD_EXPIRY_PASSES: u32 = 3;
/// …but never sooner than this after, so nfd-worker (which reads the file
/// every minute by default) always sees them while the agent runs.
pub const NFD_EXPIRY_MIN: Duration = Duration::from_secs(180);

/// The shim alone, as built beside the agent (`src/bin/qcapsd-shim.rs`):
/// what the shims run unless `shim_binary` says.
pub const SHIM_BINARY_NAME: &str = "qcapsd-shim";
/// The running binary, as the kernel has it (also when its file was
/// replaced since): what the shims run without a `qcapsd-shim` beside it.
pub const SELF_EXE: &str = "/proc/self/exe";
