//! Would the VMs running here start again — on the binary installed now,
//! or on another host or QEMU? A running VM's command line
//! ([`crate::qemu::vm_args`]) becomes a [`CheckRequest`] and gets
//! [`check::check`]'s verdict, the one code path `check` itself takes.
//!
//! Each VM ends in one of four verdicts (the `verdict` label of
//! `qcapsd_vms`): `would_fail` (the check has problems), `binary_replaced`
//! (it would start, but runs a binary that has since been replaced: it
//! needs a restart to get the upgrade), `ok`, or `unknown` (its command
//! line cannot be read, its accelerator is not one qcapsd probes, or the
//! emulator has no capabilities to judge by). Pure: the agent lists the
//! processes and hands each here.

use crate::qemu::Accel;
use crate::qemu::caps::Capabilities;
use crate::qemu::vm_args::{ArgsError, VmArgs};
use crate::verdicts::check::{self, CheckRequest, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

crate::support::labelled! {
    /// What a running VM comes to: the `verdict` label of `qcapsd_vms`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
    pub enum VmVerdict {
        /// It would start again.
        Ok = "ok",
        /// It would not: the check (or QEMU) found problems.
        WouldFail = "would_fail",
        /// It would start again, but runs a binary since replaced (an
        /// upgrade it gets at its next restart).
        BinaryReplaced = "binary_replaced",
        /// It cannot be judged (see its problems).
        Unknown = "unknown",
    }
}

/// One running VM and its verdict: an item of `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Vm {
    pub pid: i32,
    /// `-name`, when given.
    pub name: Option<String>,
    /// `-uuid`, when given.
    pub uuid: Option<String>,
    /// The configured emulator it runs.
    pub emulator: String,
    /// The executable as the kernel shows it (`… (deleted)` once replaced).
    pub binary: String,
    /// It runs a binary that is no longer the one installed at its path.
    pub binary_replaced: bool,
    /// What its command line asks for; `None` when it cannot be read.
    pub command: Option<VmCommand>,
    pub verdict: VmVerdict,
    /// Why it would not start (or cannot be judged); empty when it would.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// QEMU itself confirmed the verdict (`verify`).
    pub verified: bool,
    /// The check's verdict in full; `None` when there was no check.
    pub check: Option<Verdict>,
}

/// What a VM's command line asks for, as the check sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmCommand {
    /// The machine type asked for; `None`: QEMU's default.
    pub machine: Option<String>,
    /// The accelerators QEMU tries, in order.
    pub accels: Vec<String>,
    /// The CPU model; `None`: the machine's default.
    pub cpu: Option<String>,
    /// Its explicit feature flags (`+vmx`, `-hle`).
    pub cpu_flags: Vec<String>,
    /// The most vCPUs; `None`: QEMU's default.
    pub cpus: Option<u64>,
    /// Each `-device` driver, in order.
    pub devices: Vec<String>,
    /// What the command line holds that cannot be seen from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unseen: Vec<String>,
}

impl VmCommand {
    pub fn of(args: &VmArgs) -> VmCommand {
        VmCommand {
            machine: args.machine.clone(),
            accels: args.accels.clone(),
            cpu: args.cpu.as_ref().map(|c| c.model.clone()),
            cpu_flags: args
                .cpu
                .iter()
                .flat_map(|c| &c.flags)
                .map(|f| format!("{}{}", if f.on { '+' } else { '-' }, f.name))
                .collect(),
            cpus: args.cpus,
            devices: args.devices.clone(),
            unseen: args.unseen.clone(),
        }
    }
}

/// The answer of `GET /v1/vms` and `qcapsd vms --json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VmList {
    /// The document the VMs were judged against; `None`: each VM's own
    /// emulator as installed here now.
    pub against: Option<Against>,
    /// The VMs, by pid.
    pub vms: Vec<Vm>,
    /// Processes left out, counted.
    pub skipped: Skipped,
}

/// Another host's or QEMU's document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Against {
    /// Where it came from.
    pub label: String,
    /// The emulator it describes.
    pub emulator: String,
    pub arch: Option<String>,
    pub qemu_version: Option<String>,
}

/// Processes not listed, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Skipped {
    /// Processes named like an emulator whose executable the agent may
    /// not read (another user's: the agent needs root or
    /// `CAP_SYS_PTRACE` to see them).
    pub unreadable: usize,
    /// QEMU processes that exited while they were read.
    pub gone: usize,
    /// QEMU processes with `-machine none`: probes, not VMs.
    pub not_vms: usize,
    /// VMs of another architecture than the document's.
    pub other_arch: usize,
    /// Other users' processes are hidden from the agent (`/proc` mounted
    /// with `hidepid`, as systemd's `ProtectProc=invisible` does): their
    /// VMs cannot be seen, nor counted.
    #[serde(default)]
    pub hidden: bool,
}

/// What a VM is judged against.
pub struct Judge<'a> {
    /// The capabilities document; `None`: the emulator has none (the
    /// reason is `missing`).
    pub caps: Option<&'a Capabilities>,
    /// Why there is no document, or why it is stale.
    pub missing: Option<&'a str>,
    pub stale: Option<&'a str>,
}

/// The accelerator a restart would run under, of those the VM names,
/// as QEMU picks it: the first that runs here; the first of all where
/// none does (the check then says why). A warning when QEMU would fall
/// back to a later one.
fn accel_of(args: &VmArgs, caps: &Capabilities) -> Result<(Accel, Option<String>), String> {
    let runs = |a: Accel| {
        caps.accel == a.as_str()
            || caps
                .other_accels
                .get(a.as_str())
                .is_some_and(|p| p.error.is_none())
    };
    let mut named = Vec::new();
    for name in &args.accels {
        match Accel::concrete(name) {
            Ok(a) => named.push(a),
            Err(_) => {
                return Err(format!(
                    "it runs under the accelerator '{}', which qcapsd does not probe (kvm, tcg)",
                    crate::qemu::vm_args::keyval(name)[0]
                ));
            }
        }
    }
    let Some(&first) = named.first() else {
        return Err("it names no accelerator".to_owned());
    };
    match named.iter().position(|&a| runs(a)) {
        Some(0) | None => Ok((first, None)),
        Some(i) => Ok((
            named[i],
            Some(format!(
                "{} does not run here: QEMU would start it under {}",
                first.as_str(),
                named[i].as_str()
            )),
        )),
    }
}

/// The check request a VM's command line makes, against `caps`.
pub fn request_of(
    args: &VmArgs,
    caps: &Capabilities,
) -> Result<(CheckRequest, Vec<String>), String> {
    let (accel, fallback) = accel_of(args, caps)?;
    let enforced = args
        .cpu
        .iter()
        .flat_map(|c| &c.flags)
        .any(|f| f.name == "enforce" && f.on);
    Ok((
        CheckRequest {
            // As QEMU itself runs the VM's own -cpu.
            cpu_lenient: !enforced,
            machine: args.machine.clone(),
            cpu: args.cpu.as_ref().map(|c| c.model.clone()),
            cpu_flags: args
                .cpu
                .as_ref()
                .map(|c| c.flags.clone())
                .unwrap_or_default(),
            devices: args.devices.clone(),
            accel: Some(accel),
            cpus: args.cpus,
        },
        fallback.into_iter().collect(),
    ))
}

/// A VM's verdict, and the check behind it where there was one.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub verdict: VmVerdict,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// The check's request and verdict (for `verify`).
    pub checked: Option<(CheckRequest, Verdict)>,
}

impl Judged {
    fn unknown(why: String) -> Judged {
        Judged {
            verdict: VmVerdict::Unknown,
            problems: vec![why],
            warnings: Vec::new(),
            checked: None,
        }
    }
}

/// The verdict on a VM whose command line read as `args`, running a
/// binary that was `replaced` (or not), against `judge`.
pub fn judge(args: &Result<VmArgs, ArgsError>, replaced: bool, judge: &Judge) -> Judged {
    let args = match args {
        Ok(a) => a,
        Err(e) => return Judged::unknown(format!("its command line cannot be read: {e}")),
    };
    let Some(caps) = judge.caps else {
        let why = judge.missing.unwrap_or("no capabilities yet");
        return Judged::unknown(format!("no capabilities to judge it by: {why}"));
    };
    let (req, fallback) = match request_of(args, caps) {
        Ok(r) => r,
        Err(why) => return Judged::unknown(why),
    };
    let mut verdict = check::check(caps, &req, judge.stale);
    verdict.warnings.extend(fallback);
    verdict.warnings.extend(args.unseen.iter().cloned());
    let (v, problems, warnings) = outcome(&verdict, replaced);
    Judged {
        verdict: v,
        problems,
        warnings,
        checked: Some((req, verdict)),
    }
}

/// A VM's verdict from its check's verdict (again after `verify`).
pub fn outcome(verdict: &Verdict, replaced: bool) -> (VmVerdict, Vec<String>, Vec<String>) {
    let mut warnings = verdict.warnings.clone();
    if replaced {
        warnings.insert(
            0,
            "it runs a binary that has since been replaced: a restart gets the new one".to_owned(),
        );
    }
    let v = if !verdict.ok {
        VmVerdict::WouldFail
    } else if replaced {
        VmVerdict::BinaryReplaced
    } else {
        VmVerdict::Ok
    };
    (v, verdict.problems.clone(), warnings)
}

/// The architecture an emulator is for: its document's, else what its
/// binary's name says (`qemu-system-ARCH`).
pub fn arch_of(caps: Option<&Capabilities>, file_name: &str) -> Option<String> {
    caps.and_then(|c| c.arch.clone()).or_else(|| {
        file_name
            .strip_prefix("qemu-system-")
            .filter(|a| !a.is_empty() && !a.contains('-'))
            .map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::caps::AccelPass;
    use crate::qemu::caps::sample::{cpu, doc};
    use crate::qemu::vm_args::parse;

    fn args(s: &str) -> Result<VmArgs, ArgsError> {
        parse(
            "qemu-system-x86_64",
            &s.split_whitespace().collect::<Vec<_>>(),
        )
    }

    fn judged(
        s: &str,
        caps: &Capabilities,
        replaced: bool,
    ) -> (VmVerdict, Vec<String>, Vec<String>) {
        let j = Judge {
            caps: Some(caps),
            missing: None,
            stale: None,
        };
        let r = judge(&args(s), replaced, &j);
        (r.verdict, r.problems, r.warnings)
    }

    #[test]
    fn a_vm_gets_the_check_s_verdict_and_a_replaced_binary_is_its_own_finding() {
        let d = doc();
        let (v, p, _) = judged(
            "-machine q35 -accel kvm -cpu Haswell -device virtio-blk-pci",
            &d,
            false,
        );
        assert_eq!((v, p.len()), (VmVerdict::Ok, 0), "{p:?}");
        let (v, _, w) = judged("-machine q35 -accel kvm", &d, true);
        assert_eq!(v, VmVerdict::BinaryReplaced);
        assert!(w[0].contains("replaced"), "{w:?}");
        let (v, p, _) = judged("-machine pc-q35-99.0 -accel kvm", &d, true);
        assert_eq!(v, VmVerdict::WouldFail, "failing outranks replaced");
        assert!(p[0].contains("no machine type 'pc-q35-99.0'"), "{p:?}");
    }

    /// x86 QEMU runs a model whose features the host lacks, without
    /// them, unless the VM's `-cpu` says `enforce`: so does the verdict.
    #[test]
    fn a_cpu_without_enforce_starts_without_what_it_lacks() {
        let mut d = doc();
        d.cpu_models
            .push(cpu("Skylake-X", Some(false), &["avx512f"]));
        let (v, _, w) = judged("-machine q35 -accel kvm -cpu Skylake-X", &d, false);
        assert_eq!(v, VmVerdict::Ok);
        assert!(w.iter().any(|w| w.contains("lacks avx512f")), "{w:?}");
        let (v, p, _) = judged("-machine q35 -accel kvm -cpu Skylake-X,enforce", &d, false);
        assert_eq!(v, VmVerdict::WouldFail);
        assert!(p[0].contains("missing avx512f"), "{p:?}");
    }

    #[test]
    fn what_cannot_be_judged_is_unknown_with_the_reason() {
        let d = doc();
        let (v, p, _) = judged("-accel xen -machine q35", &d, false);
        assert_eq!(v, VmVerdict::Unknown);
        assert!(p[0].contains("'xen'"), "{p:?}");
        let (v, p, _) = judged("-device {oops", &d, false);
        assert_eq!(v, VmVerdict::Unknown);
        assert!(p[0].starts_with("its command line cannot be read"), "{p:?}");
        let j = Judge {
            caps: None,
            missing: Some("probe failed: boom"),
            stale: None,
        };
        let r = judge(&args("-M q35"), false, &j);
        assert_eq!(r.verdict, VmVerdict::Unknown);
        assert!(r.problems[0].ends_with("probe failed: boom"));
    }

    /// `kvm:tcg` on a host without KVM: QEMU falls back, and so does the
    /// verdict, with a warning; `kvm` alone is a problem.
    #[test]
    fn the_accelerator_is_the_first_that_runs_here() {
        let mut d = doc();
        d.accel = "tcg".into();
        d.other_accels.insert(
            "kvm".into(),
            AccelPass {
                error: Some("no /dev/kvm".into()),
                cpu_models: Vec::new(),
            },
        );
        d.cpu_models.push(cpu("qemu64", Some(true), &[]));
        let (v, _, w) = judged("-machine q35,accel=kvm:tcg", &d, false);
        assert_eq!(v, VmVerdict::Ok);
        assert!(w.iter().any(|w| w.contains("under tcg")), "{w:?}");
        let (v, p, _) = judged("-machine q35 -enable-kvm", &d, false);
        assert_eq!(v, VmVerdict::WouldFail);
        assert!(p[0].contains("cannot run under kvm"), "{p:?}");
        // QEMU's default for a qemu-system-* binary is TCG first.
        let (v, _, _) = judged("-machine q35", &d, false);
        assert_eq!(v, VmVerdict::Ok);
    }

    #[test]
    fn the_arch_comes_from_the_document_or_the_binary_s_name() {
        assert_eq!(arch_of(Some(&doc()), "whatever").as_deref(), Some("x86_64"));
        assert_eq!(
            arch_of(None, "qemu-system-aarch64").as_deref(),
            Some("aarch64")
        );
        assert_eq!(arch_of(None, "qemu-system-x86_64-microvm"), None);
        assert_eq!(arch_of(None, "kvm"), None);
    }
}
