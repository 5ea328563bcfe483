//! The running VMs as a feature of the agent: every QEMU process of a
//! configured emulator ([`procs`]), its command line read
//! ([`crate::qemu::vm_args`]) and judged ([`crate::verdicts::vms`]) —
//! against the binary installed now (would it restart here?) or against
//! another host's document (would it start there?) — and, on request,
//! confirmed by QEMU once ([`crate::agent::verify`]).
//!
//! After every pass it lists them and sets `qcapsd_vms{emulator,verdict}`
//! (no per-VM labels) and `qcapsd_vms_unreadable`; `GET /v1/vms` lists
//! them anew. One listing runs at a time.

pub mod procs;

use super::emulators::{Emulators, Entry};
use super::metrics::Metrics;
use super::pass::{Feature, Snapshot, Work};
use crate::qemu::Capabilities;
use crate::qemu::vm_args;
use crate::verdicts::check;
use crate::verdicts::vms::{self, Against, Judge, Skipped, Vm, VmCommand, VmList, VmVerdict};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The process table read (not below `host_root`: the VMs that matter
/// are the ones beside the agent).
pub const PROC: &str = "/proc";

/// Another host's (or QEMU's) document, to judge the VMs against.
pub struct Other<'a> {
    /// Where it came from (a file name, a URL).
    pub label: &'a str,
    pub caps: &'a Capabilities,
}

pub struct Vms {
    metrics: Arc<Metrics>,
    emulators: Arc<Emulators>,
    proc: PathBuf,
    /// One listing at a time: a pass and requests take turns.
    listing: tokio::sync::Mutex<()>,
}

impl Vms {
    pub fn new(metrics: Arc<Metrics>, emulators: Arc<Emulators>) -> Vms {
        Vms {
            metrics,
            emulators,
            proc: PathBuf::from(PROC),
            listing: tokio::sync::Mutex::new(()),
        }
    }

    /// The running VMs of `snap`'s emulators with their verdicts: against
    /// the binaries installed now, or against `other`; confirmed by QEMU
    /// with `verify` (this host's emulators only). A list of this host
    /// also sets the gauges.
    pub async fn list(&self, snap: &Snapshot, other: Option<Other<'_>>, verify: bool) -> VmList {
        let _one = self.listing.lock().await;
        let specs = snap.specs();
        let proc = self.proc.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let ids = procs::identities(&specs);
            (procs::scan(&proc, &ids), ids)
        })
        .await;
        let Ok((scan, ids)) = scanned else {
            return VmList::default();
        };
        let mut list = VmList {
            against: other.as_ref().map(|o| Against {
                label: o.label.to_owned(),
                emulator: o.caps.emulator.name.clone(),
                arch: o.caps.arch.clone(),
                qemu_version: o.caps.qemu.as_ref().map(|q| q.version.clone()),
            }),
            vms: Vec::new(),
            skipped: Skipped {
                unreadable: scan.unreadable,
                gone: scan.gone,
                hidden: scan.hidden,
                ..Skipped::default()
            },
        };
        for found in scan.found {
            let id = &ids[found.emulator];
            let status = snap.statuses.iter().find(|s| s.key == id.name);
            let entry = status.and_then(|s| s.data.as_ref());
            let args = match &found.args {
                Ok(a) => vm_args::parse(&found.argv0, a),
                Err(max) => Err(vm_args::ArgsError::BadValue {
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
            let local = entry.map(|e| &e.caps);
            if let Some(o) = &other {
                let arch = vms::arch_of(local, &id.file_name);
                if arch.is_some() && o.caps.arch.is_some() && arch != o.caps.arch {
                    list.skipped.other_arch += 1;
                    continue;
                }
            }
            let missing = status.filter(|_| entry.is_none()).map(|s| match &s.error {
                Some(e) => format!("{} is {}: {e}", id.name, s.state.as_str()),
                None => format!("{} is {}", id.name, s.state.as_str()),
            });
            let stale = status.filter(|s| s.stale).map(|s| {
                s.error
                    .clone()
                    .unwrap_or_else(|| "unknown error".to_owned())
            });
            let judge = match &other {
                Some(o) => Judge {
                    caps: Some(o.caps),
                    missing: None,
                    stale: None,
                },
                None => Judge {
                    caps: local,
                    missing: missing.as_deref(),
                    stale: stale.as_deref(),
                },
            };
            // Against another host, the binary here is beside the point.
            let replaced = found.replaced && other.is_none();
            let vms::Judged {
                mut verdict,
                mut problems,
                mut warnings,
                checked,
            } = vms::judge(&args, replaced, &judge);
            let mut verified = false;
            let mut full = None;
            if let Some((req, mut v)) = checked {
                if verify && other.is_none() {
                    if let (Some(entry), Ok(a)) = (entry, &args) {
                        match self.confirm(&id.name, entry, &req, &mut v, a).await {
                            Ok(()) => {
                                verified = true;
                                (verdict, problems, warnings) = vms::outcome(&v, replaced);
                            }
                            Err(why) => warnings.push(format!("not verified: {why}")),
                        }
                    }
                }
                full = Some(v);
            }
            list.vms.push(Vm {
                pid: found.pid,
                name: args.as_ref().ok().and_then(|a| a.name.clone()),
                uuid: args.as_ref().ok().and_then(|a| a.uuid.clone()),
                emulator: id.name.clone(),
                binary: found.binary,
                binary_replaced: found.replaced,
                command: args.as_ref().ok().map(VmCommand::of),
                verdict,
                problems,
                warnings,
                verified,
                check: full,
            });
        }
        if other.is_none() {
            self.gauges(snap, &list);
        }
        list
    }

    /// QEMU's word on one VM's verdict (see [`check::confirm`]).
    async fn confirm(
        &self,
        key: &str,
        entry: &Arc<Entry>,
        req: &check::CheckRequest,
        v: &mut check::Verdict,
        args: &vm_args::VmArgs,
    ) -> Result<(), String> {
        // The VM's own -cpu, as a restart would give it.
        let cpu = args.cpu.as_ref().map(|c| c.value.as_str());
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
                self.metrics.set_vms(
                    name,
                    v,
                    counts.get(&(name.as_str(), v)).copied().unwrap_or(0),
                );
            }
        }
        self.metrics
            .vms_unreadable
            .set(list.skipped.unreadable as i64);
    }
}

impl Feature for Vms {
    fn name(&self) -> &'static str {
        "running VMs"
    }

    fn after_pass(self: Arc<Self>, snapshot: Arc<Snapshot>) -> Option<Work> {
        Some(Box::pin(async move {
            let list = self.list(&snapshot, None, false).await;
            let failing = list
                .vms
                .iter()
                .filter(|v| v.verdict == VmVerdict::WouldFail)
                .count();
            if failing > 0 {
                tracing::debug!(vms = list.vms.len(), failing, "running VMs listed");
            }
        }))
    }
}
