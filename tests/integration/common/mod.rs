//! Helpers shared by the integration tests, one concern per module.

#![allow(dead_code, unused_imports)]

pub mod agent_proc;
pub mod data;
pub mod http;
pub mod in_process;
pub mod libvirt;
pub mod poll;
pub mod procs;
pub mod qemu;
pub mod prometheus;
pub mod schema;
pub mod stand_ins;
pub mod vms;

/// `accels: [kvm]` unless `extra` sets `accels` itself. Test agents probe
/// under one accelerator (KVM where it works, TCG otherwise), so a probe
/// is one exec whether or not this machine has KVM and the exec counts the
/// cache tests assert are the same on every machine. The default (a
/// second, TCG pass where KVM works) is tested on its own in `check.rs`.
pub fn one_pass(extra: &str) -> &'static str {
    if extra.contains("accels:") {
        ""
    } else {
        "accels: [kvm]\n"
    }
}

pub use agent_proc::AgentProc;
pub use data::*;
pub use http::*;
pub use in_process::{InProcess, x86_yaml};
pub use libvirt::*;
pub use poll::{poll_until, poll_until_async, poll_until_for};
pub use procs::*;
pub use prometheus::{Prometheus, check_rules};
pub use qemu::*;
pub use stand_ins::*;
pub use vms::{TestVm, python_copy, vm_of};
