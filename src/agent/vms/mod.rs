//! The running VMs as a feature of the agent: every QEMU process of a
//! configured emulator ([`procs`]), its command line read
//! ([`crate::qemu::vm_args`]) and judged ([`crate::verdicts::vms`]) —
//! against the binary installed now (would it restart here?) or against
//! another host's document (would it start there?) — and, on request,
//! confirmed by QEMU once ([`crate::agent::verify`]).
//!
//! A listing is one blocking step ([`judge_all`]: reading `/proc` and
//! judging, all of it CPU and a few reads per QEMU process) and then, with
//! `verify`, QEMU's word on each VM not yet confirmed. After every pass
//! the agent lists the VMs and sets `qcapsd_vms{emulator,verdict}` (no
//! per-VM labels) and `qcapsd_vms_unreadable`; `GET /v1/vms` lists them
//! anew. One listing runs at a time. A VM that starts failing, or fails no
//! more, is logged once.

pub mod procs;

use super::emulators::{Emulators, Entry};
use super::metrics::Metrics;
use super::pass::{Feature, Snapshot, Work};
use crate::config::discovery::EmulatorSpec;
use crate::qemu::Capabilities;
use crate::qemu::vm_args::{self, ArgsError, VmArgs};
use crate::verdicts::check::{self, CheckRequest, Verdict};
use crate::verdicts::vms::{self, Against, Judge, Skipped, Vm, VmCommand, VmList, VmVerdict};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The process table read (not below `host_root`: the VMs that matter
/// are the ones beside the agent).
pub const PROC: &str = "/proc";

/// Another host's (or QEMU's) document, to judge the VMs against.
#[derive(Clone)]
pub struct Other {
    /// Where it came from (a file name, a URL).
    pub label: String,
    pub caps: Arc<Capabilities>,
}

/// What the listing knows of one configured emulator.
#[derive(Clone)]
pub struct Known {
    pub spec: EmulatorSpec,
    /// Its capabilities now, if it has any.
    pub entry: Option<Arc<Entry>>,
    /// Why it has none (`x86_64 is failed: …`).
    pub missing: Option<String>,
    /// Why its capabilities are the last good ones, if they are.
    pub stale: Option<String>,
}

impl Known {
    /// Every emulator of `snap`.
    pub fn of(snap: &Snapshot) -> Vec<Known> {
        snap.view
            .table
            .values()
            .map(|spec| {
                let status = snap.statuses.iter().find(|s| s.key == spec.name);
                let entry = status.and_then(|s| s.data.clone());
                Known {
                    spec: spec.clone(),
                    missing: status.filter(|_| entry.is_none()).map(|s| match &s.error {
                        Some(e) => format!("{} is {}: {e}", s.key, s.state.as_str()),
                        None => format!("{} is {}", s.key, s.state.as_str()),
                    }),
                    stale: status.filter(|s| s.stale).map(|s| {
                        s.error
                            .clone()
                            .unwrap_or_else(|| "unknown error".to_owned())
                    }),
                    entry,
                }
            })
            .collect()
    }
}

/// A VM whose verdict QEMU may confirm: its index in the list, and what
/// its check was.
pub struct Checked {
    pub index: usize,
    pub emulator: usize,
    pub replaced: bool,
    pub request: CheckRequest,
    pub verdict: Verdict,
    /// The VM's own `-cpu` value.
    pub cpu: Option<String>,
}

/// Lists and judges the VMs in the process table at `proc`: against each
/// one's emulator as `known` has it, or against `other`. Blocking (reads
/// `/proc`); the rest is CPU. Returns the list and the VMs that had a
/// check (for `verify`).
pub fn judge_all(proc: &Path, known: &[Known], other: Option<&Other>) -> (VmList, Vec<Checked>) {
    let specs: Vec<EmulatorSpec> = known.iter().map(|k| k.spec.clone()).collect();
    let ids = procs::identities(&specs);
    let scan = procs::scan(proc, &ids);
    let mut list = VmList {
        against: other.map(|o| Against {
            label: o.label.clone(),
            emulator: o.caps.emulator.name.clone(),
            arch: o.caps.arch.clone(),
            qemu_version: o.caps.qemu.as_ref().map(|q| q.version.clone()),
        }),
        vms: Vec::with_capacity(scan.found.len()),
        skipped: Skipped {
            unreadable: scan.unreadable,
            gone: scan.gone,
            hidden: scan.hidden,
            ..Skipped::default()
        },
    };
    let mut checked = Vec::new();
    for found in scan.found {
        let k = &known[found.emulator];
        let args: Result<VmArgs, ArgsError> = match &found.args {
            Ok(a) => vm_args::parse(&found.argv0, a),
            Err(max) => Err(ArgsError::BadValue {
                option: "the command line".to_owned(),
                value: String::new(),
                why: format!("over {max} bytes"),
            }),
        };
        if args
            .as_ref()
            .is_ok_and(|a| a.machine.as_deref() == Some("none"))
        {
            // `-machine none`: a probe (libvirt's, a script's), no VM.
            list.skipped.not_vms += 1;
            continue;
        }
        let local = k.entry.as_ref().map(|e| &e.caps);
        if let Some(o) = other {
            let arch = vms::arch_of(local, &ids[found.emulator].file_name);
            if arch.is_some() && o.caps.arch.is_some() && arch != o.caps.arch {
                list.skipped.other_arch += 1;
                continue;
            }
        }
        let judge = match other {
            Some(o) => Judge {
                caps: Some(&o.caps),
                missing: None,
                stale: None,
            },
            None => Judge {
                caps: local,
                missing: k.missing.as_deref(),
                stale: k.stale.as_deref(),
            },
        };
        // Against another host, the binary here is beside the point.
        let replaced = found.replaced && other.is_none();
        let judged = vms::judge(&args, replaced, &judge);
        let vm = args.as_ref().ok();
        if let Some((request, verdict)) = &judged.checked {
            checked.push(Checked {
                index: list.vms.len(),
                emulator: found.emulator,
                replaced,
                request: request.clone(),
                verdict: verdict.clone(),
                cpu: vm.and_then(|a| a.cpu.as_ref()).map(|c| c.value.clone()),
            });
        }
        list.vms.push(Vm {
            pid: found.pid,
            name: vm.and_then(|a| a.name.clone()),
            uuid: vm.and_then(|a| a.uuid.clone()),
            emulator: k.spec.name.clone(),
            binary: found.binary,
            binary_replaced: found.replaced,
            command: vm.map(VmCommand::of),
            verdict: judged.verdict,
            problems: judged.problems,
            warnings: judged.warnings,
            verified: false,
            check: judged.checked.map(|(_, v)| v),
        });
    }
    (list, checked)
}

pub struct Vms {
    metrics: Arc<Metrics>,
    emulators: Arc<Emulators>,
    proc: PathBuf,
    /// One listing at a time: a pass and requests take turns.
    listing: tokio::sync::Mutex<()>,
    /// The VMs that would not start again at the last listing of this
    /// host, with their first problem, so a change is logged once.
    failing: Mutex<BTreeMap<i32, String>>,
}

impl Vms {
    pub fn new(metrics: Arc<Metrics>, emulators: Arc<Emulators>) -> Vms {
        Vms {
            metrics,
            emulators,
            proc: PathBuf::from(PROC),
            listing: tokio::sync::Mutex::new(()),
            failing: Mutex::new(BTreeMap::new()),
        }
    }

    /// The running VMs of `snap`'s emulators with their verdicts: against
    /// the binaries installed now, or against `other`; confirmed by QEMU
    /// with `verify` (this host's emulators only). A list of this host
    /// also sets the gauges.
    pub async fn list(&self, snap: &Snapshot, other: Option<Other>, verify: bool) -> VmList {
        let _one = self.listing.lock().await;
        let known = Known::of(snap);
        let (proc, task_known, task_other) = (self.proc.clone(), known.clone(), other.clone());
        let Ok((mut list, checked)) =
            tokio::task::spawn_blocking(move || judge_all(&proc, &task_known, task_other.as_ref()))
                .await
        else {
            return VmList::default();
        };
        if verify && other.is_none() {
            for mut c in checked {
                let k = &known[c.emulator];
                let Some(entry) = &k.entry else { continue };
                let vm = &mut list.vms[c.index];
                match self
                    .confirm(
                        &k.spec.name,
                        entry,
                        &c.request,
                        &mut c.verdict,
                        c.cpu.as_deref(),
                    )
                    .await
                {
                    Ok(()) => {
                        vm.verified = true;
                        (vm.verdict, vm.problems, vm.warnings) =
                            vms::outcome(&c.verdict, c.replaced);
                        vm.check = Some(c.verdict);
                    }
                    Err(why) => vm.warnings.push(format!("not verified: {why}")),
                }
            }
        }
        if other.is_none() {
            self.gauges(snap, &list);
            self.say_failing(&list);
        }
        list
    }

    /// QEMU's word on one VM's verdict (see [`check::confirm`]): the VM's
    /// own `-cpu`, as a restart would give it.
    async fn confirm(
        &self,
        key: &str,
        entry: &Arc<Entry>,
        req: &CheckRequest,
        v: &mut Verdict,
        cpu: Option<&str>,
    ) -> Result<(), String> {
        let qemu_args = check::verify_args(v, req, cpu, false);
        let (c, source) = self
            .emulators
            .verify(key, entry, qemu_args)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.record_verification(key, &c, source);
        check::confirm(v, &c);
        Ok(())
    }

    /// `qcapsd_vms{emulator,verdict}` (every configured emulator and
    /// verdict, zero where none) and `qcapsd_vms_unreadable`.
    fn gauges(&self, snap: &Snapshot, list: &VmList) {
        let mut counts: BTreeMap<(&str, VmVerdict), i64> = BTreeMap::new();
        for vm in &list.vms {
            *counts
                .entry((vm.emulator.as_str(), vm.verdict))
                .or_default() += 1;
        }
        for name in snap.view.table.keys() {
            for &v in VmVerdict::ALL {
                let n = counts.get(&(name.as_str(), v)).copied().unwrap_or(0);
                self.metrics.set_vms(name, v, n);
            }
        }
        self.metrics
            .vms_unreadable
            .set(i64::try_from(list.skipped.unreadable).unwrap_or(i64::MAX));
    }

    /// Logs each VM that starts failing (and each that no longer does),
    /// once.
    fn say_failing(&self, list: &VmList) {
        let now: BTreeMap<i32, String> = list
            .vms
            .iter()
            .filter(|v| v.verdict == VmVerdict::WouldFail)
            .map(|v| (v.pid, v.problems.first().cloned().unwrap_or_default()))
            .collect();
        let mut before = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        for (pid, problem) in &now {
            if before.get(pid) != Some(problem) {
                let vm = list.vms.iter().find(|v| v.pid == *pid);
                tracing::warn!(
                    pid,
                    vm = vm.and_then(|v| v.name.as_deref()).unwrap_or("-"),
                    emulator = vm.map(|v| v.emulator.as_str()).unwrap_or("-"),
                    problem = %problem,
                    "a running VM would not start again on the binary installed now"
                );
            }
        }
        for pid in before.keys().filter(|p| !now.contains_key(p)) {
            if list.vms.iter().any(|v| v.pid == *pid) {
                tracing::info!(pid, "a running VM would start again");
            }
        }
        *before = now;
    }
}

impl Feature for Vms {
    fn name(&self) -> &'static str {
        "running VMs"
    }

    fn after_pass(self: Arc<Self>, snapshot: Arc<Snapshot>) -> Option<Work> {
        Some(Box::pin(async move {
            self.list(&snapshot, None, false).await;
        }))
    }
}
