//! The QEMU side of qcapsd: starting an emulator (`exec`, the only module
//! that starts processes), talking QMP to it (`qmp`), turning its replies into
//! the capabilities document (`parse`, `caps`), one probe end to end
//! (`probe`), and what makes a cached probe still valid (`fingerprint`).

pub mod accel;
pub mod caps;
pub mod cmdline;
pub mod exec;
pub mod fingerprint;
pub mod outcome;
pub mod parse;
pub mod probe;
pub mod qmp;
pub mod reaper;
pub mod verify;
pub mod vm_args;

pub use accel::Accel;
pub use caps::Capabilities;
pub use outcome::{ExecCounter, ExecError, FailureReason};
pub use probe::{ProbeError, ProbeReport, ProbeRequest, probe};
pub use qmp::CommandTime;

/// Whether an emulator called `name` is the one QEMU names for `arch`
/// (`qemu-system-x86_64`, not `qemu-system-x86_64-microvm`): where several
/// emulators are for one architecture, that one stands for it.
pub fn named_for_arch(name: &str, arch: &str) -> bool {
    name.strip_prefix("qemu-system-") == Some(arch)
}
