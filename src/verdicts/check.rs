//! "Can this host run this VM?": a verdict with reasons, computed from one
//! capabilities document and nothing else (no exec, no I/O), so that the
//! API, the CLI and `compare` give the same answer for the same data.
//!
//! The rules, in the order a VM start would hit them:
//! - the accelerator: the document's own (`accel`) by default; another one
//!   is answered from its probe pass (`other_accels`). A pass that could
//!   not run (no `/dev/kvm`, a build without TCG) is a problem. One that was
//!   never asked (config `accels`) leaves CPU usability unknown: a warning,
//!   never a guess.
//! - the machine: a name or an alias (`q35` resolves to `pc-q35-10.0`);
//!   unknown is a problem with the closest names; deprecated is a warning.
//!   No machine means QEMU's default one (a problem where there is none).
//! - `cpus` above the machine's `cpu_max` is a problem.
//! - the CPU model: unknown is a problem; not usable under the accelerator
//!   is a problem naming its blockers; usability QEMU does not report
//!   (most non-x86 targets) and a deprecated model are warnings.
//! - each device: a type or alias `-device` accepts, else a problem. Where
//!   the device list came from `qom-list-types` (a QEMU without `device_add
//!   help`), it may hold devices `-device` refuses: a warning says so.
//!
//! Not modelled: whether the machine has the bus a device plugs into (the
//! document has no bus topology; `-device virtio-net-pci` on `isapc`
//! fails), memory, and KVM's own vCPU limit.

use crate::qemu::Accel;
use crate::qemu::caps::{Capabilities, CpuUsability, DevicesSource, Machine};
use crate::qemu::vm_args::CpuFlag;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a caller asks about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckRequest {
    pub machine: Option<String>,
    pub cpu: Option<String>,
    /// Explicit feature flags on the CPU model (a running VM's `-cpu
    /// MODEL,-hle,+vmx`): a flag turned off is no longer a blocker.
    pub cpu_flags: Vec<CpuFlag>,
    /// The features a CPU model lacks here are dropped, not refused: what
    /// x86 QEMU does with a `-cpu` without `enforce` (a running VM's own
    /// command line). Then a model that is not usable is a warning (the
    /// guest would see less than asked), not a problem. `false` (the
    /// check's own question): not usable is a problem, as libvirt and
    /// `enforce` have it.
    pub cpu_lenient: bool,
    pub devices: Vec<String>,
    /// `kvm` or `tcg`; `None`: what the probe ran under.
    pub accel: Option<Accel>,
    pub cpus: Option<u64>,
}

/// The answer of `GET /v1/check` and `qcapsd check --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Verdict {
    /// No problems: QEMU would start such a VM here.
    pub ok: bool,
    /// The emulator the verdict is about.
    pub emulator: String,
    /// Why this emulator, when the question named an architecture that
    /// several emulators are for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picked: Option<String>,
    /// The accelerator the verdict is for.
    pub accel: String,
    /// The machine type, when one was asked for or QEMU has a default.
    pub machine: Option<MachineVerdict>,
    /// The CPU model, when one was asked for.
    pub cpu: Option<CpuVerdict>,
    /// Each device asked for, in order.
    pub devices: Vec<DeviceVerdict>,
    /// Why QEMU would refuse the VM; empty when `ok`.
    pub problems: Vec<String>,
    /// What the caller should know but does not stop the VM (deprecated
    /// names, usability QEMU does not report, stale data).
    pub warnings: Vec<String>,
    /// When the capabilities the verdict is based on were probed.
    pub probed_at: String,
    /// QEMU itself confirmed the verdict: it was started once with this
    /// machine, accelerator, CPU and devices (`verify`), and `ok` is its
    /// answer.
    #[serde(default)]
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MachineVerdict {
    /// The name asked for; `None` when QEMU's default machine was taken.
    pub requested: Option<String>,
    /// The canonical machine type it names; `None` when unknown.
    pub resolved: Option<String>,
    pub ok: bool,
    pub deprecated: bool,
    /// The most vCPUs this machine type takes.
    pub cpu_max: Option<u64>,
    /// The closest known names, for an unknown one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CpuVerdict {
    pub requested: String,
    pub ok: bool,
    /// QEMU's word on the model under `accel`; `None` where it does not
    /// report usability, or the accelerator was not probed.
    pub usable: Option<bool>,
    /// The host features the model needs and does not get under `accel`.
    pub blockers: Vec<String>,
    pub deprecated: bool,
    /// The closest known names, for an unknown one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceVerdict {
    /// The name asked for.
    pub name: String,
    pub ok: bool,
    /// The device type an alias names (`virtio-blk` → `virtio-blk-pci`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<String>,
    /// The closest known names, for an unknown one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<String>,
}

/// The verdict for `req` on `caps`. `stale` is the reason the data is
/// the last good one rather than current, if it is.
pub fn check(caps: &Capabilities, req: &CheckRequest, stale: Option<&str>) -> Verdict {
    let mut v = Verdict {
        ok: false,
        emulator: caps.emulator.name.clone(),
        picked: None,
        accel: req
            .accel
            .map_or_else(|| caps.accel.clone(), |a| a.as_str().to_owned()),
        machine: None,
        cpu: None,
        devices: Vec::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
        probed_at: caps.probe.started_at.clone(),
        verified: false,
    };
    if let Some(why) = stale {
        v.warnings.push(format!(
            "stale: the capabilities are from the probe of {}; the latest probe failed: {why}",
            caps.probe.started_at
        ));
    }
    let usability = usability_under(caps, &v.accel, &mut v.problems, &mut v.warnings);
    let machine = check_machine(caps, req, &mut v);
    if let (Some(n), Some(m)) = (req.cpus, machine) {
        if n > m.cpu_max {
            v.problems.push(format!(
                "{n} vCPUs is more than machine {} takes ({})",
                m.name, m.cpu_max
            ));
        }
    }
    if let Some(cpu) = &req.cpu {
        let accel = v.accel.clone();
        v.cpu = Some(check_cpu(
            caps,
            cpu,
            &req.cpu_flags,
            req.cpu_lenient,
            &accel,
            usability,
            &mut v,
        ));
    }
    v.devices = req
        .devices
        .iter()
        .map(|d| check_device(caps, d, &mut v.problems))
        .collect();
    if !req.devices.is_empty() && caps.devices_source == Some(DevicesSource::QomListTypes) {
        v.warnings.push(
            "this QEMU does not list its user-creatable devices; the device list comes from qom-list-types and may hold devices -device refuses".to_owned(),
        );
    }
    v.ok = v.problems.is_empty();
    v
}

/// A verdict as text: the answer, what it is about, then each problem and
/// warning on its own line.
pub fn render(v: &Verdict) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let about: Vec<String> = [
        v.machine
            .as_ref()
            .map(|m| match (&m.requested, &m.resolved) {
                (Some(r), Some(c)) if r != c => format!("machine {r} ({c})"),
                (_, Some(c)) => format!("machine {c}"),
                (Some(r), None) => format!("machine {r}"),
                (None, None) => String::new(),
            }),
        v.cpu.as_ref().map(|c| format!("cpu {}", c.requested)),
        (!v.devices.is_empty()).then(|| {
            let names: Vec<&str> = v.devices.iter().map(|d| d.name.as_str()).collect();
            format!("devices {}", names.join(", "))
        }),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect();
    let _ = writeln!(
        out,
        "{}: {} {} under {}{}",
        if v.ok { "ok" } else { "NO" },
        v.emulator,
        if v.ok { "can run" } else { "cannot run" },
        v.accel,
        if about.is_empty() {
            String::new()
        } else {
            format!(": {}", about.join("; "))
        }
    );
    if let Some(why) = &v.picked {
        let _ = writeln!(out, "  picked: {why}");
    }
    for p in &v.problems {
        let _ = writeln!(out, "  problem: {p}");
    }
    for w in &v.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    out
}

/// Where CPU usability under `accel` comes from.
enum Usability<'a> {
    /// The document's own `cpu_models`.
    Main,
    /// A further pass.
    Pass(&'a [CpuUsability]),
    /// Not known (the reason is already a problem or a warning).
    Unknown,
}

fn usability_under<'a>(
    caps: &'a Capabilities,
    accel: &str,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Usability<'a> {
    if accel == caps.accel {
        return Usability::Main;
    }
    match caps.other_accels.get(accel) {
        Some(pass) => match &pass.error {
            Some(e) => {
                problems.push(format!("QEMU cannot run under {accel} here: {e}"));
                Usability::Unknown
            }
            None => Usability::Pass(&pass.cpu_models),
        },
        None => {
            warnings.push(format!(
                "{accel} was not probed (config `accels`), so whether QEMU runs under it, and which CPU models it can run, is unknown"
            ));
            Usability::Unknown
        }
    }
}

fn check_machine<'a>(
    caps: &'a Capabilities,
    req: &CheckRequest,
    v: &mut Verdict,
) -> Option<&'a Machine> {
    let found = match &req.machine {
        Some(name) => caps.machines.iter().find(|m| m.name == *name).or_else(|| {
            caps.machines
                .iter()
                .find(|m| m.alias.as_deref() == Some(name))
        }),
        None => caps.machines.iter().find(|m| m.is_default),
    };
    match (found, &req.machine) {
        (Some(m), requested) => {
            if m.deprecated {
                v.warnings.push(format!(
                    "machine {} is deprecated: a later QEMU will drop it",
                    m.name
                ));
            }
            v.machine = Some(MachineVerdict {
                requested: requested.clone(),
                resolved: Some(m.name.clone()),
                ok: true,
                deprecated: m.deprecated,
                cpu_max: Some(m.cpu_max),
                suggestions: Vec::new(),
            });
            Some(m)
        }
        (None, Some(name)) => {
            let known = caps
                .machines
                .iter()
                .flat_map(|m| std::iter::once(m.name.as_str()).chain(m.alias.as_deref()));
            let suggestions = closest(name, known);
            v.problems.push(unknown(
                &format!(
                    "{} has no machine type '{}'",
                    caps.emulator.name,
                    shown(name)
                ),
                &suggestions,
            ));
            v.machine = Some(MachineVerdict {
                requested: Some(name.clone()),
                resolved: None,
                ok: false,
                deprecated: false,
                cpu_max: None,
                suggestions,
            });
            None
        }
        (None, None) => {
            if !caps.machines.is_empty() {
                v.problems.push(format!(
                    "no machine given and {} has no default machine: name one",
                    caps.emulator.name
                ));
            }
            None
        }
    }
}

/// A CPU feature's name as QEMU compares them (`_` and `-` are one).
fn feature_key(name: &str) -> String {
    name.replace('_', "-")
}

fn check_cpu(
    caps: &Capabilities,
    name: &str,
    flags: &[CpuFlag],
    lenient: bool,
    accel: &str,
    usability: Usability,
    v: &mut Verdict,
) -> CpuVerdict {
    let Some(model) = caps.cpu_models.iter().find(|m| m.name == name) else {
        let suggestions = closest(name, caps.cpu_models.iter().map(|m| m.name.as_str()));
        v.problems.push(unknown(
            &format!("{} has no CPU model '{}'", caps.emulator.name, shown(name)),
            &suggestions,
        ));
        return CpuVerdict {
            requested: name.to_owned(),
            ok: false,
            usable: None,
            blockers: Vec::new(),
            deprecated: false,
            suggestions,
        };
    };
    if model.deprecated {
        v.warnings.push(format!(
            "cpu model {name} is deprecated: a later QEMU will drop it"
        ));
    }
    let (usable, blockers) = match usability {
        Usability::Main => (model.usable, model.unavailable_features.clone()),
        Usability::Pass(models) => match models.iter().find(|m| m.name == name) {
            Some(m) => (m.usable, m.unavailable_features.clone()),
            None => (None, Vec::new()),
        },
        Usability::Unknown => return cpu_verdict(name, true, None, Vec::new(), model.deprecated),
    };
    let (usable, blockers) = with_flags(usable, blockers, flags, name, accel, &mut v.warnings);
    let x86 = matches!(caps.arch.as_deref(), Some("x86_64" | "i386"));
    if usable == Some(false) && lenient && x86 {
        v.warnings.push(format!(
            "cpu {name} lacks {} under {accel} here: QEMU starts it without them (no `enforce`), so the guest sees less than the model",
            if blockers.is_empty() { "features".to_owned() } else { blockers.join(", ") }
        ));
        return cpu_verdict(name, true, usable, blockers, model.deprecated);
    }
    match usable {
        Some(true) => cpu_verdict(name, true, usable, blockers, model.deprecated),
        Some(false) => {
            v.problems.push(if blockers.is_empty() {
                format!("cpu {name} is not usable under {accel} on this host")
            } else {
                format!(
                    "cpu {name} is not usable under {accel} on this host: missing {}",
                    blockers.join(", ")
                )
            });
            cpu_verdict(name, false, usable, blockers, model.deprecated)
        }
        None => {
            v.warnings.push(format!(
                "QEMU does not report whether cpu {name} is usable under {accel}, nor which CPU models each machine type takes{HEDGE}"
            ));
            cpu_verdict(name, true, None, blockers, model.deprecated)
        }
    }
}

/// Usability and blockers with the explicit flags applied: a blocker
/// turned off is gone (`Haswell,-hle,-rtm` runs where only HLE and RTM
/// are missing); a flag turned on that the document does not report as
/// missing is not known to be there, which a warning says.
fn with_flags(
    usable: Option<bool>,
    blockers: Vec<String>,
    flags: &[CpuFlag],
    name: &str,
    accel: &str,
    warnings: &mut Vec<String>,
) -> (Option<bool>, Vec<String>) {
    if flags.is_empty() {
        return (usable, blockers);
    }
    let off: Vec<String> = flags
        .iter()
        .filter(|f| !f.on)
        .map(|f| feature_key(&f.name))
        .collect();
    let before = blockers.len();
    let blockers: Vec<String> = blockers
        .into_iter()
        .filter(|b| !off.contains(&feature_key(b)))
        .collect();
    let usable = match usable {
        Some(false) if blockers.is_empty() && before > 0 => Some(true),
        u => u,
    };
    let unknown: Vec<String> = flags
        .iter()
        .filter(|f| {
            f.on && !blockers
                .iter()
                .any(|b| feature_key(b) == feature_key(&f.name))
        })
        .map(|f| shown(&f.name))
        .collect();
    if !unknown.is_empty() {
        let mut list: Vec<&str> = unknown.iter().take(8).map(String::as_str).collect();
        if unknown.len() > 8 {
            list.push("…");
        }
        warnings.push(format!(
            "cpu {name} asks for {} more feature(s) ({}): the document does not say whether the host has them under {accel} (verify asks QEMU)",
            unknown.len(),
            list.join(", ")
        ));
    }
    (usable, blockers)
}

fn cpu_verdict(
    name: &str,
    ok: bool,
    usable: Option<bool>,
    blockers: Vec<String>,
    deprecated: bool,
) -> CpuVerdict {
    CpuVerdict {
        requested: name.to_owned(),
        ok,
        usable,
        blockers,
        deprecated,
        suggestions: Vec::new(),
    }
}

fn check_device(caps: &Capabilities, name: &str, problems: &mut Vec<String>) -> DeviceVerdict {
    if caps.devices.iter().any(|d| d == name) {
        return DeviceVerdict {
            name: name.to_owned(),
            ok: true,
            resolved: None,
            suggestions: Vec::new(),
        };
    }
    if let Some(target) = caps.device_aliases.get(name) {
        return DeviceVerdict {
            name: name.to_owned(),
            ok: true,
            resolved: Some(target.clone()),
            suggestions: Vec::new(),
        };
    }
    let known = caps
        .devices
        .iter()
        .chain(caps.device_aliases.keys())
        .map(String::as_str);
    let suggestions = closest(name, known);
    problems.push(unknown(
        &format!(
            "{}'s -device accepts no device '{}'",
            caps.emulator.name,
            shown(name)
        ),
        &suggestions,
    ));
    DeviceVerdict {
        name: name.to_owned(),
        ok: false,
        resolved: None,
        suggestions,
    }
}

/// How a warning ends that says QEMU may refuse what the document cannot
/// tell (verify asks QEMU).
const HEDGE: &str = ": it may still refuse this one (verify asks QEMU)";

/// What QEMU said when started with a verdict's VM (`verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// QEMU started the VM (paused) and answered on its monitor.
    pub started: bool,
    /// QEMU's own error line, when it refused.
    pub message: Option<String>,
    /// Devices QEMU cannot be asked about without their backends (a disk
    /// without its drive), with QEMU's words: their verdict stays the
    /// document's.
    pub unverified: Vec<(String, String)>,
}

/// `v` with QEMU's word on it: QEMU's refusal is the first problem; a VM
/// QEMU started is ok, whatever the document said (said as warnings).
pub fn confirm(v: &mut Verdict, c: &Confirmation) {
    v.verified = true;
    // QEMU answered what the document could not.
    v.warnings.retain(|w| !w.ends_with(HEDGE));
    if c.started {
        for p in std::mem::take(&mut v.problems) {
            v.warnings
                .push(format!("QEMU started it all the same, though: {p}"));
        }
    } else {
        let said = c
            .message
            .as_deref()
            .unwrap_or("it exited without a message");
        v.problems.insert(0, format!("QEMU refuses it: {said}"));
    }
    for (device, why) in &c.unverified {
        v.warnings.push(format!(
            "device {device} was not started by the verification, as it needs its backend ({why}); its verdict is the document's"
        ));
    }
    v.ok = v.problems.is_empty();
}

/// The arguments that start the VM `v` judged (after QEMU's fixed
/// `-S -nodefaults …`): its machine, accelerator, CPU (`cpu_value`, a
/// running VM's whole `-cpu` value, as it is), vCPUs and devices. With
/// `enforce` (x86, the check's own question) the CPU gets `enforce`, so
/// QEMU refuses a model it would otherwise run with features dropped:
/// what the check calls not usable.
pub fn verify_args(
    v: &Verdict,
    req: &CheckRequest,
    cpu_value: Option<&str>,
    enforce: bool,
) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(m) = &v.machine {
        if let Some(name) = m.resolved.as_ref().or(m.requested.as_ref()) {
            args.extend(["-machine".to_owned(), name.clone()]);
        }
    }
    args.extend(["-accel".to_owned(), v.accel.clone()]);
    if let Some(cpu) = cpu_value.or(req.cpu.as_deref()) {
        let enforced = crate::qemu::vm_args::keyval(cpu)
            .iter()
            .skip(1)
            .any(|i| i == "enforce" || i.starts_with("enforce=") || i.starts_with("check="));
        let cpu = if enforce && !enforced {
            format!("{cpu},enforce")
        } else {
            cpu.to_owned()
        };
        args.extend(["-cpu".to_owned(), cpu]);
    }
    if let Some(n) = req.cpus {
        args.extend(["-smp".to_owned(), n.to_string()]);
    }
    for d in &req.devices {
        args.extend(["-device".to_owned(), d.clone()]);
    }
    args
}

/// `problem`, and the closest names if there are any.
fn unknown(problem: &str, suggestions: &[String]) -> String {
    let mut s = problem.to_owned();
    if !suggestions.is_empty() {
        s.push_str(&format!("; closest: {}", suggestions.join(", ")));
    }
    s
}

/// A name echoed in a message: without control characters, bounded.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// Up to three known names closest to `name`: a case-insensitive match
/// first, then by edit distance (at most a third of the name, at least 2),
/// ties in the order given.
pub fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Vec<String> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = known
        .filter_map(|k| {
            let d = if k.to_lowercase() == lower {
                0
            } else {
                edit_distance(&lower, &k.to_lowercase())
            };
            (d <= limit).then_some((d, k))
        })
        .collect();
    scored.sort_by_key(|(d, _)| *d);
    let mut out: Vec<String> = Vec::new();
    for (_, k) in scored {
        if !out.iter().any(|o| o == k) {
            out.push(k.to_owned());
        }
        if out.len() == 3 {
            break;
        }
    }
    out
}

/// Levenshtein distance over chars (names are short: one row of memory).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diag
            } else {
                1 + diag.min(above).min(row[j])
            };
            diag = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
