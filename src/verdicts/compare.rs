//! `qcapsd compare`: what several hosts' capabilities documents share, for
//! a migration pool, and where a given VM can run.
//!
//! - `shared`: the machine types, devices and CPU models every input has;
//!   for CPU models, usable on every input under its accelerator (the
//!   pool's baseline). Models QEMU calls not migration-safe (`host`,
//!   `max`) are left out of the baseline: they name a different CPU on
//!   each host. The baseline is in QEMU's own order of the first input,
//!   which puts the newest version of a model first (`Skylake-Server-v5`
//!   before `-v4`); QEMU does not rank different models against each other.
//! - per input: what only it has, and each CPU model usable elsewhere but
//!   not here, with the features that block it (or that this QEMU does not
//!   know the model).
//! - with a VM (`--machine/--cpu/--device`): [`crate::verdicts::check`]'s verdict on
//!   every input.
//!
//! Inputs must be of one architecture. Everything here is pure: the command
//! line reads the inputs (files, stdin, agent URLs).

use crate::qemu::Accel;
use crate::qemu::caps::{Capabilities, SCHEMA_VERSION};
use crate::verdicts::check::{self, CheckRequest, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One document to compare and where it came from.
#[derive(Debug, Clone)]
pub struct Input {
    /// The file, `-` or the URL, as given.
    pub label: String,
    pub caps: Capabilities,
}

/// Inputs of different architectures cannot be compared.
#[derive(Debug, thiserror::Error)]
#[error("inputs are of different architectures: {0}; compare documents of one architecture")]
pub struct MixedArch(pub String);

/// The oldest document shape `compare` reads (fields added since default
/// to empty).
pub const OLDEST_SCHEMA: u32 = 2;

/// Why bytes are not a capabilities document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("not a capabilities document (not a JSON object)")]
    NotObject,
    #[error("not a capabilities document (no schema_version)")]
    NoSchemaVersion,
    #[error("schema_version {0}; this qcapsd reads {OLDEST_SCHEMA} to {SCHEMA_VERSION}")]
    Schema(u64),
    #[error("not a capabilities document: {path}: {source}")]
    Shape {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A capabilities document from `qcapsd probe`, or as the API serves it
/// (its `cache` metadata is dropped).
pub fn parse(bytes: &[u8]) -> Result<Capabilities, DocumentError> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(DocumentError::NotJson)?;
    let o = v.as_object_mut().ok_or(DocumentError::NotObject)?;
    o.remove("cache");
    match o.get("schema_version").and_then(serde_json::Value::as_u64) {
        Some(n) if (u64::from(OLDEST_SCHEMA)..=u64::from(SCHEMA_VERSION)).contains(&n) => {}
        Some(n) => return Err(DocumentError::Schema(n)),
        None => return Err(DocumentError::NoSchemaVersion),
    }
    serde_path_to_error::deserialize(v).map_err(|e| DocumentError::Shape {
        path: e.path().to_string(),
        source: e.into_inner(),
    })
}

/// What `--accel` and `--machine/--cpu/--device/--cpus` ask of a
/// comparison: the accelerator applies to the comparison itself; the VM
/// is checked on every input only when something about it was asked.
pub fn question(mut vm: CheckRequest) -> (Option<Accel>, Option<CheckRequest>) {
    let accel = vm.accel.take();
    let asked =
        vm.machine.is_some() || vm.cpu.is_some() || !vm.devices.is_empty() || vm.cpus.is_some();
    (accel, asked.then_some(vm))
}

/// The answer of `qcapsd compare --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Comparison {
    /// The architecture every input is for.
    pub arch: String,
    /// What every input has.
    pub shared: Shared,
    /// Each input, in the order given.
    pub inputs: Vec<InputReport>,
    /// The VM asked about, on each input (in order); `None` without
    /// `--machine/--cpu/--device`.
    pub vm: Option<Vec<Verdict>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Shared {
    /// Machine types (canonical names) every input has.
    pub machines: Vec<String>,
    /// CPU models usable on every input: the pool's baseline, newest
    /// version of a model first.
    pub cpu_models: Vec<String>,
    /// Devices every input's `-device` accepts.
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputReport {
    /// The file, `-` or URL.
    pub label: String,
    pub emulator: String,
    pub qemu_version: Option<String>,
    /// The accelerator its CPU usability is read under.
    pub accel: String,
    /// Machine types no other input has.
    pub only_machines: Vec<String>,
    /// CPU models usable here and on no other input.
    pub only_cpu_models: Vec<String>,
    /// Devices no other input has.
    pub only_devices: Vec<String>,
    /// CPU models usable on another input but not here, and why.
    pub missing_cpu_models: Vec<Missing>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Missing {
    pub name: String,
    /// The features this host lacks for it (empty when unknown here, or
    /// QEMU did not say).
    pub blockers: Vec<String>,
    /// `blocked`, `unknown_model` (this QEMU does not have it), or
    /// `usability_unknown` (QEMU does not report it, or the accelerator
    /// was not probed here).
    pub reason: String,
}

/// Each CPU model's usability on one input under one accelerator:
/// `(name, usable, blockers)` in the document's order.
fn usability<'a>(
    caps: &'a Capabilities,
    accel: &str,
) -> Vec<(&'a str, Option<bool>, &'a [String])> {
    if accel == caps.accel {
        return caps
            .cpu_models
            .iter()
            .map(|m| (m.name.as_str(), m.usable, m.unavailable_features.as_slice()))
            .collect();
    }
    match caps.other_accels.get(accel) {
        Some(pass) if pass.error.is_none() => pass
            .cpu_models
            .iter()
            .map(|m| (m.name.as_str(), m.usable, m.unavailable_features.as_slice()))
            .collect(),
        _ => caps
            .cpu_models
            .iter()
            .map(|m| (m.name.as_str(), None, &[][..]))
            .collect(),
    }
}

/// Compares `inputs` (two or more). `accel` reads every input's CPU
/// usability under that accelerator instead of each one's own; `vm`, if
/// given, is checked on each.
pub fn compare(
    inputs: &[Input],
    accel: Option<Accel>,
    vm: Option<&CheckRequest>,
) -> Result<Comparison, MixedArch> {
    let arches: BTreeSet<Option<&str>> = inputs.iter().map(|i| i.caps.arch.as_deref()).collect();
    let arch = match arches.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(a)] => (*a).to_owned(),
        _ => {
            let each: Vec<String> = inputs
                .iter()
                .map(|i| {
                    format!(
                        "{} is {}",
                        i.label,
                        i.caps.arch.as_deref().unwrap_or("unknown")
                    )
                })
                .collect();
            return Err(MixedArch(each.join(", ")));
        }
    };
    let accel_of =
        |i: &Input| accel.map_or_else(|| i.caps.accel.clone(), |a| a.as_str().to_owned());
    let usable_sets: Vec<BTreeSet<&str>> = inputs
        .iter()
        .map(|i| {
            usability(&i.caps, &accel_of(i))
                .into_iter()
                .filter(|(_, u, _)| *u == Some(true))
                .map(|(n, _, _)| n)
                .collect()
        })
        .collect();
    let host_dependent: BTreeSet<&str> = inputs
        .iter()
        .flat_map(|i| &i.caps.cpu_models)
        .filter(|m| m.migration_safe == Some(false))
        .map(|m| m.name.as_str())
        .collect();
    let machine_sets: Vec<BTreeSet<&str>> = inputs
        .iter()
        .map(|i| i.caps.machines.iter().map(|m| m.name.as_str()).collect())
        .collect();
    let device_sets: Vec<BTreeSet<&str>> = inputs
        .iter()
        .map(|i| i.caps.devices.iter().map(String::as_str).collect())
        .collect();
    let first = &inputs[0].caps;
    let baseline: Vec<String> = first
        .cpu_models
        .iter()
        .map(|m| m.name.as_str())
        .filter(|n| usable_sets.iter().all(|s| s.contains(n)) && !host_dependent.contains(n))
        .map(str::to_owned)
        .collect();
    let shared = Shared {
        machines: natural_sorted(intersection(&machine_sets)),
        cpu_models: baseline,
        devices: intersection(&device_sets)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let reports = inputs
        .iter()
        .enumerate()
        .map(|(k, input)| {
            let others = |sets: &[BTreeSet<&str>], own: &BTreeSet<&str>| -> Vec<String> {
                own.iter()
                    .filter(|n| {
                        !sets
                            .iter()
                            .enumerate()
                            .any(|(j, s)| j != k && s.contains(*n))
                    })
                    .map(|n| (*n).to_owned())
                    .collect()
            };
            let here = usability(&input.caps, &accel_of(input));
            let elsewhere: BTreeSet<&str> = usable_sets
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .flat_map(|(_, s)| s.iter().copied())
                .collect();
            let missing = elsewhere
                .iter()
                .filter(|n| !usable_sets[k].contains(*n))
                .map(|n| match here.iter().find(|(m, _, _)| m == n) {
                    None => Missing {
                        name: (*n).to_owned(),
                        blockers: Vec::new(),
                        reason: "unknown_model".to_owned(),
                    },
                    Some((_, Some(false), b)) => Missing {
                        name: (*n).to_owned(),
                        blockers: b.to_vec(),
                        reason: "blocked".to_owned(),
                    },
                    Some(_) => Missing {
                        name: (*n).to_owned(),
                        blockers: Vec::new(),
                        reason: "usability_unknown".to_owned(),
                    },
                })
                .collect();
            InputReport {
                label: input.label.clone(),
                emulator: input.caps.emulator.name.clone(),
                qemu_version: input.caps.qemu.as_ref().map(|q| q.version.clone()),
                accel: accel_of(input),
                only_machines: natural_sorted(
                    others(&machine_sets, &machine_sets[k])
                        .iter()
                        .map(String::as_str)
                        .collect(),
                ),
                only_cpu_models: others(&usable_sets, &usable_sets[k]),
                only_devices: others(&device_sets, &device_sets[k]),
                missing_cpu_models: missing,
            }
        })
        .collect();
    let vm = vm.map(|req| {
        inputs
            .iter()
            .map(|i| {
                let mut req = req.clone();
                req.accel = accel.or_else(|| i.caps.accel.parse().ok());
                let mut v = check::check(&i.caps, &req, None);
                v.emulator = format!("{} ({})", i.caps.emulator.name, i.label);
                v
            })
            .collect()
    });
    Ok(Comparison {
        arch,
        shared,
        inputs: reports,
        vm,
    })
}

fn intersection<'a>(sets: &[BTreeSet<&'a str>]) -> BTreeSet<&'a str> {
    let mut it = sets.iter();
    let Some(first) = it.next() else {
        return BTreeSet::new();
    };
    it.fold(first.clone(), |acc, s| {
        acc.intersection(s).copied().collect()
    })
}

/// Names sorted newest first where they differ by a version number
/// (`pc-q35-10.0` before `pc-q35-9.2`), else alphabetically.
fn natural_sorted(names: BTreeSet<&str>) -> Vec<String> {
    let mut v: Vec<&str> = names.into_iter().collect();
    v.sort_by(|a, b| natural_key(a).cmp(&natural_key(b)).then_with(|| a.cmp(b)));
    v.into_iter().map(str::to_owned).collect()
}

/// The name split into text and numbers, numbers reversed so that a
/// higher one sorts first.
fn natural_key(s: &str) -> Vec<(String, std::cmp::Reverse<u64>)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = u64::from(c as u8 - b'0');
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(u64::from(d));
                chars.next();
            }
            out.push((std::mem::take(&mut text), std::cmp::Reverse(n)));
        } else {
            text.push(c);
        }
    }
    out.push((text, std::cmp::Reverse(0)));
    out
}

/// The comparison as text for people.
pub fn render(c: &Comparison) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let all = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_owned()
        } else {
            v.join(", ")
        }
    };
    // Long lists of names are cut for people; --json has them whole.
    let list = |v: &[String]| match v.len() {
        0 => "(none)".to_owned(),
        n if n > 12 => format!(
            "{}, … ({} more; --json lists all)",
            v[..10].join(", "),
            n - 10
        ),
        _ => v.join(", "),
    };
    let _ = writeln!(out, "{} inputs, all {}", c.inputs.len(), c.arch);
    for i in &c.inputs {
        let _ = writeln!(
            out,
            "  {}: {} (QEMU {}, {})",
            i.label,
            i.emulator,
            i.qemu_version.as_deref().unwrap_or("?"),
            i.accel
        );
    }
    let _ = writeln!(
        out,
        "\nbaseline CPU models, usable on every input ({}):\n  {}",
        c.shared.cpu_models.len(),
        all(&c.shared.cpu_models)
    );
    let _ = writeln!(
        out,
        "shared machine types ({}):\n  {}",
        c.shared.machines.len(),
        list(&c.shared.machines)
    );
    let _ = writeln!(out, "shared devices: {}", c.shared.devices.len());
    for i in &c.inputs {
        let _ = writeln!(out, "\n{}:", i.label);
        let _ = writeln!(out, "  only here, CPU models: {}", all(&i.only_cpu_models));
        let _ = writeln!(out, "  only here, machines: {}", list(&i.only_machines));
        let _ = writeln!(out, "  only here, devices: {}", list(&i.only_devices));
        if !i.missing_cpu_models.is_empty() {
            let _ = writeln!(out, "  not usable here but elsewhere:");
            for m in &i.missing_cpu_models {
                let why = match m.reason.as_str() {
                    "blocked" if !m.blockers.is_empty() => {
                        format!("missing {}", m.blockers.join(", "))
                    }
                    "unknown_model" => "this QEMU does not know it".to_owned(),
                    "usability_unknown" => "usability not reported".to_owned(),
                    _ => "not usable".to_owned(),
                };
                let _ = writeln!(out, "    {}: {why}", m.name);
            }
        }
    }
    if let Some(vm) = &c.vm {
        let _ = writeln!(out, "\nthe VM asked about:");
        for v in vm {
            for line in check::render(v).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::caps::sample::{cpu, doc, machine};

    fn input(label: &str, f: impl FnOnce(&mut Capabilities)) -> Input {
        let mut caps = doc();
        f(&mut caps);
        Input {
            label: label.into(),
            caps,
        }
    }

    #[test]
    fn baseline_is_what_every_input_can_run_in_qemu_order() {
        let a = input("a", |c| {
            c.cpu_models = vec![
                cpu("max", Some(true), &[]),
                cpu("Skylake-v2", Some(true), &[]),
                cpu("Skylake-v1", Some(true), &[]),
                cpu("Haswell", Some(true), &[]),
            ];
            c.cpu_models[0].migration_safe = Some(false);
        });
        let b = input("b", |c| {
            c.cpu_models = vec![
                cpu("max", Some(true), &[]),
                cpu("Skylake-v2", Some(false), &["avx512f"]),
                cpu("Skylake-v1", Some(true), &[]),
                cpu("Haswell", Some(true), &[]),
            ];
        });
        let c = compare(&[a, b], None, None).unwrap();
        assert_eq!(c.shared.cpu_models, ["Skylake-v1", "Haswell"]);
        assert_eq!(c.inputs[0].only_cpu_models, ["Skylake-v2"]);
        assert!(c.inputs[1].only_cpu_models.is_empty());
        assert_eq!(
            c.inputs[1].missing_cpu_models,
            [Missing {
                name: "Skylake-v2".into(),
                blockers: vec!["avx512f".into()],
                reason: "blocked".into(),
            }]
        );
        assert!(c.vm.is_none());
    }

    #[test]
    fn a_model_one_qemu_lacks_is_said_so() {
        let a = input("a", |c| {
            c.cpu_models.push(cpu("EPYC-Genoa", Some(true), &[]))
        });
        let b = input("b", |_| {});
        let c = compare(&[a, b], None, None).unwrap();
        assert_eq!(c.inputs[1].missing_cpu_models[0].reason, "unknown_model");
    }

    #[test]
    fn machines_and_devices_shared_and_only_here() {
        let a = input("a", |c| {
            c.machines
                .push(machine("pc-q35-10.0", Some("q35"), false, 4096));
            c.devices.push("nvme".into());
        });
        let b = input("b", |_| {});
        let c = compare(&[a, b], None, None).unwrap();
        assert_eq!(c.shared.machines, ["pc-i440fx-9.1", "pc-q35-9.1"]);
        assert_eq!(c.inputs[0].only_machines, ["pc-q35-10.0"]);
        assert_eq!(c.inputs[0].only_devices, ["nvme"]);
        assert_eq!(c.shared.devices, ["qxl", "virtio-blk-pci"]);
    }

    #[test]
    fn different_architectures_are_refused() {
        let a = input("a", |_| {});
        let b = input("b", |c| c.arch = Some("aarch64".into()));
        let e = compare(&[a, b], None, None).unwrap_err();
        assert!(e.to_string().contains("b is aarch64"), "{e}");
    }

    #[test]
    fn a_vm_is_checked_on_every_input() {
        let a = input("a", |_| {});
        let b = input("b", |c| c.cpu_models[0].usable = Some(false));
        let req = CheckRequest {
            cpu_flags: Vec::new(),
            cpu_lenient: false,
            cpu: Some("Haswell".into()),
            ..CheckRequest::default()
        };
        let c = compare(&[a, b], None, Some(&req)).unwrap();
        let vm = c.vm.unwrap();
        assert!(vm[0].ok);
        assert!(!vm[1].ok);
    }

    #[test]
    fn natural_order_puts_newer_versions_first() {
        let names = BTreeSet::from(["pc-q35-9.2", "pc-q35-10.0", "pc-q35-2.12", "microvm"]);
        assert_eq!(
            natural_sorted(names),
            ["microvm", "pc-q35-10.0", "pc-q35-9.2", "pc-q35-2.12"]
        );
    }

    #[test]
    fn documents_as_served_or_printed_parse_and_others_do_not() {
        let mut served = serde_json::to_value(doc()).unwrap();
        served["cache"] = serde_json::json!({"fingerprint": {}, "exec_seconds": 0.1});
        assert!(parse(served.to_string().as_bytes()).is_ok());
        assert!(
            parse(b"[]")
                .unwrap_err()
                .to_string()
                .contains("not a JSON object")
        );
        assert!(
            parse(b"{}")
                .unwrap_err()
                .to_string()
                .contains("no schema_version")
        );
        let mut future = serde_json::to_value(doc()).unwrap();
        future["schema_version"] = 99.into();
        assert!(
            parse(future.to_string().as_bytes())
                .unwrap_err()
                .to_string()
                .contains("99")
        );
        let mut broken = serde_json::to_value(doc()).unwrap();
        broken["machines"][0]["cpu_max"] = "many".into();
        let e = parse(broken.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("machines[0].cpu_max"), "{e}");
    }
}
