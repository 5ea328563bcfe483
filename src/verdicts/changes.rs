//! What changed between two capabilities documents of one emulator: the
//! pure diff ([`diff`]), the change record a re-probe leaves ([`Change`]),
//! and the fixed set of change kinds ([`Kind`]) the metrics count.
//!
//! A change is breaking when something VMs may rely on went away: anything
//! removed, a CPU model that became unusable or a machine or CPU model that
//! became deprecated, or a machine whose `cpu_max` shrank.

use crate::qemu::caps::{Capabilities, CpuModel, DeviceProperty, Machine};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

crate::support::labelled! {
    /// The kinds of change, a fixed set (the `kind` label of
    /// `qcapsd_capability_changes_total`).
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
    )]
    pub enum Kind {
        VersionChanged = "version_changed",
        PackageChanged = "package_changed",
        AccelChanged = "accel_changed",
        KvmChanged = "kvm_changed",
        MachineAdded = "machine_added",
        MachineRemoved = "machine_removed",
        MachineDefaultChanged = "machine_default_changed",
        MachineAliasMoved = "machine_alias_moved",
        MachineAliasRemoved = "machine_alias_removed",
        MachineCpuMaxChanged = "machine_cpu_max_changed",
        MachineBecameDeprecated = "machine_became_deprecated",
        CpuModelAdded = "cpu_model_added",
        CpuModelRemoved = "cpu_model_removed",
        CpuModelBecameUsable = "cpu_model_became_usable",
        CpuModelBecameUnusable = "cpu_model_became_unusable",
        CpuModelBlockersChanged = "cpu_model_blockers_changed",
        CpuModelBecameDeprecated = "cpu_model_became_deprecated",
        DeviceAdded = "device_added",
        DeviceRemoved = "device_removed",
        DevicePropertyAdded = "device_property_added",
        DevicePropertyRemoved = "device_property_removed",
        DevicePropertyTypeChanged = "device_property_type_changed",
        DevicePropertyDefaultChanged = "device_property_default_changed",
        CommandAdded = "command_added",
        CommandRemoved = "command_removed",
    }
}

impl Kind {
    /// How a group of items of this kind reads in a summary: ("device",
    /// "removed") → "2 devices removed". (A match, so a new kind cannot
    /// compile without its wording.)
    fn phrase(self) -> (&'static str, &'static str) {
        match self {
            Kind::VersionChanged => ("version", "changed"),
            Kind::PackageChanged => ("package", "changed"),
            Kind::AccelChanged => ("accelerator", "changed"),
            Kind::KvmChanged => ("KVM state", "changed"),
            Kind::MachineAdded => ("machine", "added"),
            Kind::MachineRemoved => ("machine", "removed"),
            Kind::MachineDefaultChanged => ("default machine", "changed"),
            Kind::MachineAliasMoved => ("machine alias", "moved"),
            Kind::MachineAliasRemoved => ("machine alias", "removed"),
            Kind::MachineCpuMaxChanged => ("machine cpu_max", "changed"),
            Kind::MachineBecameDeprecated => ("machine", "deprecated"),
            Kind::CpuModelAdded => ("CPU model", "added"),
            Kind::CpuModelRemoved => ("CPU model", "removed"),
            Kind::CpuModelBecameUsable => ("CPU model", "usable now"),
            Kind::CpuModelBecameUnusable => ("CPU model", "unusable now"),
            Kind::CpuModelBlockersChanged => ("CPU model", "with other blockers"),
            Kind::CpuModelBecameDeprecated => ("CPU model", "deprecated"),
            Kind::DeviceAdded => ("device", "added"),
            Kind::DeviceRemoved => ("device", "removed"),
            Kind::DevicePropertyAdded => ("device property", "added"),
            Kind::DevicePropertyRemoved => ("device property", "removed"),
            Kind::DevicePropertyTypeChanged => ("device property", "retyped"),
            Kind::DevicePropertyDefaultChanged => ("device property default", "changed"),
            Kind::CommandAdded => ("command", "added"),
            Kind::CommandRemoved => ("command", "removed"),
        }
    }
}

/// One thing that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Item {
    pub kind: Kind,
    /// What changed: a machine, CPU model, device, `device.property` or
    /// command name; the version or accelerator for those kinds.
    pub name: String,
    /// More, where there is more to say: the old and new value, or the
    /// blockers of a CPU model that became unusable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Something VMs may rely on went away.
    pub breaking: bool,
}

/// One side of a change: what the emulator was before, or is after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Side {
    /// QEMU's version.
    pub version: Option<String>,
    /// The accelerator the probe ran under.
    pub accel: String,
    /// When it was probed (RFC 3339).
    pub probed_at: String,
    /// The binary's inode, size and mtime (ns), as the fingerprint had it.
    pub binary: String,
}

/// What a re-probe of one emulator found changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Change {
    pub emulator: String,
    /// When the change was recorded (RFC 3339, UTC).
    pub at: String,
    /// Why the emulator was re-probed: an invalidation reason
    /// (`binary_changed`, `modules_changed`, `kvm_changed`, …), `forced` or
    /// `retry`.
    pub reason: String,
    /// Whether anything VMs may rely on went away.
    pub breaking: bool,
    /// One line, e.g. `qemu-system-x86_64: 2 devices removed (qxl,
    /// qxl-vga) after modules_changed`.
    pub summary: String,
    pub before: Side,
    pub after: Side,
    /// Every item, grouped by kind.
    pub items: Vec<Item>,
}

impl Side {
    /// The side a document stands for; `binary` describes the file it
    /// was probed from.
    pub fn of(caps: &Capabilities, binary: String) -> Side {
        Side {
            version: caps.qemu.as_ref().map(|q| q.version.clone()),
            accel: caps.accel.clone(),
            probed_at: caps.probe.started_at.clone(),
            binary,
        }
    }
}

impl Change {
    /// The change a re-probe of `emulator` (run for `reason`) found at
    /// `at`, from `before` to `after`: `None` when nothing a caller can
    /// see changed.
    pub fn new(
        emulator: &str,
        reason: &str,
        at: std::time::SystemTime,
        (old, before): (&Capabilities, Side),
        (new, after): (&Capabilities, Side),
    ) -> Option<Change> {
        let items = diff(old, new);
        if items.is_empty() {
            return None;
        }
        Some(Change {
            emulator: emulator.to_owned(),
            at: crate::support::timefmt::rfc3339(at),
            reason: reason.to_owned(),
            breaking: items.iter().any(|i| i.breaking),
            summary: summarize(emulator, reason, &items),
            before,
            after,
            items,
        })
    }
}

fn item(kind: Kind, name: impl Into<String>, detail: Option<String>, breaking: bool) -> Item {
    Item {
        kind,
        name: name.into(),
        detail,
        breaking,
    }
}

fn names<T>(v: &[T], name: impl Fn(&T) -> &str) -> BTreeSet<&str> {
    v.iter().map(name).collect()
}

/// Adds `added` and `removed` items for two sets of names.
fn set_diff(
    out: &mut Vec<Item>,
    old: &BTreeSet<&str>,
    new: &BTreeSet<&str>,
    added: Kind,
    removed: Kind,
) {
    out.extend(new.difference(old).map(|n| item(added, *n, None, false)));
    out.extend(old.difference(new).map(|n| item(removed, *n, None, true)));
}

fn optional(v: &Option<impl ToString>) -> String {
    v.as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string)
}

/// Every difference between two documents of one emulator, grouped by
/// kind. Empty when nothing a caller can see changed (the probe's time and
/// duration do not count).
pub fn diff(old: &Capabilities, new: &Capabilities) -> Vec<Item> {
    let mut out = Vec::new();
    let (ov, nv) = (old.qemu.as_ref(), new.qemu.as_ref());
    let version = |q: Option<&crate::qemu::caps::QemuVersion>| q.map(|q| q.version.clone());
    if version(ov) != version(nv) {
        out.push(item(
            Kind::VersionChanged,
            optional(&version(nv)),
            Some(format!("was {}", optional(&version(ov)))),
            false,
        ));
    }
    let package = |q: Option<&crate::qemu::caps::QemuVersion>| q.map(|q| q.package.clone());
    if package(ov) != package(nv) {
        out.push(item(
            Kind::PackageChanged,
            optional(&package(nv)),
            Some(format!("was {}", optional(&package(ov)))),
            false,
        ));
    }
    if old.accel != new.accel {
        out.push(item(
            Kind::AccelChanged,
            new.accel.clone(),
            Some(format!("was {}", old.accel)),
            false,
        ));
    }
    if old.kvm != new.kvm {
        let show = |k: &Option<crate::qemu::caps::Kvm>| match k {
            Some(k) => format!("present {}, enabled {}", k.present, k.enabled),
            None => "unknown".to_owned(),
        };
        out.push(item(
            Kind::KvmChanged,
            show(&new.kvm),
            Some(format!("was {}", show(&old.kvm))),
            false,
        ));
    }
    machines(&mut out, &old.machines, &new.machines);
    cpu_models(&mut out, &old.cpu_models, &new.cpu_models);
    let (od, nd) = (names(&old.devices, |d| d), names(&new.devices, |d| d));
    set_diff(&mut out, &od, &nd, Kind::DeviceAdded, Kind::DeviceRemoved);
    device_properties(
        &mut out,
        &old.device_properties,
        &new.device_properties,
        &od,
        &nd,
    );
    let (oc, nc) = (names(&old.commands, |c| c), names(&new.commands, |c| c));
    set_diff(&mut out, &oc, &nc, Kind::CommandAdded, Kind::CommandRemoved);
    out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    out
}

fn machines(out: &mut Vec<Item>, old: &[Machine], new: &[Machine]) {
    let (on, nn) = (names(old, |m| &m.name), names(new, |m| &m.name));
    set_diff(out, &on, &nn, Kind::MachineAdded, Kind::MachineRemoved);
    let default = |ms: &[Machine]| ms.iter().find(|m| m.is_default).map(|m| m.name.clone());
    if default(old) != default(new) {
        out.push(item(
            Kind::MachineDefaultChanged,
            optional(&default(new)),
            Some(format!("was {}", optional(&default(old)))),
            false,
        ));
    }
    let aliases = |ms: &[Machine]| -> BTreeMap<String, String> {
        ms.iter()
            .filter_map(|m| Some((m.alias.clone()?, m.name.clone())))
            .collect()
    };
    let (oa, na) = (aliases(old), aliases(new));
    for (alias, target) in &oa {
        match na.get(alias) {
            Some(t) if t != target => out.push(item(
                Kind::MachineAliasMoved,
                alias.clone(),
                Some(format!("from {target} to {t}")),
                false,
            )),
            Some(_) => {}
            None => out.push(item(
                Kind::MachineAliasRemoved,
                alias.clone(),
                Some(format!("was {target}")),
                true,
            )),
        }
    }
    let by_name: BTreeMap<&str, &Machine> = old.iter().map(|m| (m.name.as_str(), m)).collect();
    for m in new {
        let Some(o) = by_name.get(m.name.as_str()) else {
            continue;
        };
        if o.cpu_max != m.cpu_max {
            out.push(item(
                Kind::MachineCpuMaxChanged,
                m.name.clone(),
                Some(format!("from {} to {}", o.cpu_max, m.cpu_max)),
                m.cpu_max < o.cpu_max,
            ));
        }
        if m.deprecated && !o.deprecated {
            out.push(item(
                Kind::MachineBecameDeprecated,
                m.name.clone(),
                None,
                true,
            ));
        }
    }
}

fn cpu_models(out: &mut Vec<Item>, old: &[CpuModel], new: &[CpuModel]) {
    let (on, nn) = (names(old, |c| &c.name), names(new, |c| &c.name));
    set_diff(out, &on, &nn, Kind::CpuModelAdded, Kind::CpuModelRemoved);
    let by_name: BTreeMap<&str, &CpuModel> = old.iter().map(|c| (c.name.as_str(), c)).collect();
    let blockers = |c: &CpuModel| {
        let mut b = c.unavailable_features.clone();
        b.sort();
        b
    };
    for c in new {
        let Some(o) = by_name.get(c.name.as_str()) else {
            continue;
        };
        match (o.usable, c.usable) {
            (Some(true), Some(false)) => out.push(item(
                Kind::CpuModelBecameUnusable,
                c.name.clone(),
                Some(format!("blockers: {}", blockers(c).join(", "))),
                true,
            )),
            (Some(false), Some(true)) => out.push(item(
                Kind::CpuModelBecameUsable,
                c.name.clone(),
                None,
                false,
            )),
            (Some(false), Some(false)) if blockers(o) != blockers(c) => out.push(item(
                Kind::CpuModelBlockersChanged,
                c.name.clone(),
                Some(format!(
                    "from {} to {}",
                    blockers(o).join(", "),
                    blockers(c).join(", ")
                )),
                false,
            )),
            _ => {}
        }
        if c.deprecated && !o.deprecated {
            out.push(item(
                Kind::CpuModelBecameDeprecated,
                c.name.clone(),
                None,
                true,
            ));
        }
    }
}

/// Property changes of devices present on both sides (a removed device is
/// one `device_removed`, not one item per property).
fn device_properties(
    out: &mut Vec<Item>,
    old: &BTreeMap<String, Vec<DeviceProperty>>,
    new: &BTreeMap<String, Vec<DeviceProperty>>,
    old_devices: &BTreeSet<&str>,
    new_devices: &BTreeSet<&str>,
) {
    for (device, new_props) in new {
        let Some(old_props) = old.get(device) else {
            continue;
        };
        if !old_devices.contains(device.as_str()) || !new_devices.contains(device.as_str()) {
            continue;
        }
        let index = |ps: &[DeviceProperty]| -> BTreeMap<String, DeviceProperty> {
            ps.iter().map(|p| (p.name.clone(), p.clone())).collect()
        };
        let (o, n) = (index(old_props), index(new_props));
        let full = |p: &str| format!("{device}.{p}");
        for name in n.keys().filter(|k| !o.contains_key(*k)) {
            out.push(item(Kind::DevicePropertyAdded, full(name), None, false));
        }
        for name in o.keys().filter(|k| !n.contains_key(*k)) {
            out.push(item(Kind::DevicePropertyRemoved, full(name), None, true));
        }
        for (name, np) in &n {
            let Some(op) = o.get(name) else { continue };
            if op.type_ != np.type_ {
                out.push(item(
                    Kind::DevicePropertyTypeChanged,
                    full(name),
                    Some(format!("from {} to {}", op.type_, np.type_)),
                    false,
                ));
            }
            if op.default_value != np.default_value {
                out.push(item(
                    Kind::DevicePropertyDefaultChanged,
                    full(name),
                    Some(format!(
                        "from {} to {}",
                        optional(&op.default_value),
                        optional(&np.default_value)
                    )),
                    false,
                ));
            }
        }
    }
}

/// The one-line summary: `EMULATOR: N things changed (a, b) after REASON`,
/// the groups joined by `; `, at most five names each.
pub fn summarize(emulator: &str, reason: &str, items: &[Item]) -> String {
    let mut groups: Vec<(Kind, Vec<&str>)> = Vec::new();
    for i in items {
        match groups.last_mut() {
            Some((k, names)) if *k == i.kind => names.push(&i.name),
            _ => groups.push((i.kind, vec![&i.name])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(kind, names)| {
            let (thing, what) = kind.phrase();
            let shown: Vec<&str> = names.iter().take(5).copied().collect();
            let more = if names.len() > 5 { ", …" } else { "" };
            let plural = if names.len() == 1 { "" } else { "s" };
            format!(
                "{} {thing}{plural} {what} ({}{more})",
                names.len(),
                shown.join(", ")
            )
        })
        .collect();
    format!("{emulator}: {} after {reason}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::caps::Kvm;
    use crate::qemu::caps::sample::{cpu, doc, machine, prop};

    /// The items of `diff(doc(), changed(doc()))`, as (kind, name, breaking).
    fn changes(change: impl Fn(&mut Capabilities)) -> Vec<(&'static str, String, bool)> {
        let old = doc();
        let mut new = doc();
        change(&mut new);
        diff(&old, &new)
            .into_iter()
            .map(|i| (i.kind.as_str(), i.name, i.breaking))
            .collect()
    }

    fn one(kind: &'static str, name: &str, breaking: bool) -> Vec<(&'static str, String, bool)> {
        vec![(kind, name.to_owned(), breaking)]
    }

    #[test]
    fn nothing_changed_is_no_item_even_with_a_new_probe_time() {
        assert!(changes(|d| d.probe.started_at = "2027-01-01T00:00:00Z".into()).is_empty());
    }

    #[test]
    fn every_kind_of_change() {
        type Case = (
            &'static str,
            fn(&mut Capabilities),
            Vec<(&'static str, String, bool)>,
        );
        let cases: Vec<Case> = vec![
            (
                "version",
                |d| d.qemu.as_mut().unwrap().version = "10.0.0".into(),
                one("version_changed", "10.0.0", false),
            ),
            (
                "package",
                |d| d.qemu.as_mut().unwrap().package = "Debian 10".into(),
                one("package_changed", "Debian 10", false),
            ),
            (
                "accel",
                |d| d.accel = "tcg".into(),
                one("accel_changed", "tcg", false),
            ),
            (
                "kvm",
                |d| {
                    d.kvm = Some(Kvm {
                        present: true,
                        enabled: false,
                    })
                },
                one("kvm_changed", "present true, enabled false", false),
            ),
            (
                "machine added",
                |d| d.machines.push(machine("pc-q35-10.0", None, false, 4096)),
                one("machine_added", "pc-q35-10.0", false),
            ),
            (
                "machine removed",
                |d| {
                    d.machines.pop();
                },
                vec![
                    ("machine_removed", "pc-i440fx-9.1".into(), true),
                    ("machine_alias_removed", "pc".into(), true),
                ],
            ),
            (
                "default changed",
                |d| {
                    d.machines[0].is_default = false;
                    d.machines[1].is_default = true;
                },
                one("machine_default_changed", "pc-i440fx-9.1", false),
            ),
            (
                "alias moved",
                |d| {
                    d.machines[0].alias = None;
                    d.machines
                        .push(machine("pc-q35-10.0", Some("q35"), false, 4096));
                },
                vec![
                    ("machine_added", "pc-q35-10.0".into(), false),
                    ("machine_alias_moved", "q35".into(), false),
                ],
            ),
            (
                "cpu_max grew",
                |d| d.machines[1].cpu_max = 288,
                one("machine_cpu_max_changed", "pc-i440fx-9.1", false),
            ),
            (
                "cpu_max shrank",
                |d| d.machines[1].cpu_max = 128,
                one("machine_cpu_max_changed", "pc-i440fx-9.1", true),
            ),
            (
                "machine deprecated",
                |d| d.machines[1].deprecated = true,
                one("machine_became_deprecated", "pc-i440fx-9.1", true),
            ),
            (
                "cpu added",
                |d| d.cpu_models.push(cpu("EPYC", Some(true), &[])),
                one("cpu_model_added", "EPYC", false),
            ),
            (
                "cpu removed",
                |d| {
                    d.cpu_models.remove(0);
                },
                one("cpu_model_removed", "Haswell", true),
            ),
            (
                "cpu usable",
                |d| d.cpu_models[1] = cpu("Skylake", Some(true), &[]),
                one("cpu_model_became_usable", "Skylake", false),
            ),
            (
                "cpu unusable",
                |d| d.cpu_models[0] = cpu("Haswell", Some(false), &["hle", "rtm"]),
                one("cpu_model_became_unusable", "Haswell", true),
            ),
            (
                "cpu blockers",
                |d| d.cpu_models[1] = cpu("Skylake", Some(false), &["avx512f", "pku"]),
                one("cpu_model_blockers_changed", "Skylake", false),
            ),
            (
                "cpu deprecated",
                |d| d.cpu_models[0].deprecated = true,
                one("cpu_model_became_deprecated", "Haswell", true),
            ),
            (
                "device added",
                |d| d.devices.push("qxl-vga".into()),
                one("device_added", "qxl-vga", false),
            ),
            (
                "device removed",
                |d| d.devices.retain(|x| x != "qxl"),
                one("device_removed", "qxl", true),
            ),
            (
                "property added",
                |d| {
                    d.device_properties
                        .get_mut("virtio-blk-pci")
                        .unwrap()
                        .push(prop("iothread", "link", None))
                },
                one("device_property_added", "virtio-blk-pci.iothread", false),
            ),
            (
                "property removed",
                |d| {
                    d.device_properties
                        .get_mut("virtio-blk-pci")
                        .unwrap()
                        .clear()
                },
                one("device_property_removed", "virtio-blk-pci.num-queues", true),
            ),
            (
                "property retyped",
                |d| {
                    d.device_properties.get_mut("virtio-blk-pci").unwrap()[0].type_ =
                        "uint32".into()
                },
                one(
                    "device_property_type_changed",
                    "virtio-blk-pci.num-queues",
                    false,
                ),
            ),
            (
                "property default",
                |d| {
                    d.device_properties.get_mut("virtio-blk-pci").unwrap()[0].default_value =
                        Some(4.into())
                },
                one(
                    "device_property_default_changed",
                    "virtio-blk-pci.num-queues",
                    false,
                ),
            ),
            (
                "a removed device's properties are not listed",
                |d| {
                    d.devices.retain(|x| x != "virtio-blk-pci");
                    d.device_properties.clear();
                },
                one("device_removed", "virtio-blk-pci", true),
            ),
            (
                "command added",
                |d| d.commands.push("query-x".into()),
                one("command_added", "query-x", false),
            ),
            (
                "command removed",
                |d| d.commands.retain(|c| c != "quit"),
                one("command_removed", "quit", true),
            ),
        ];
        for (what, change, want) in cases {
            assert_eq!(changes(change), want, "{what}");
        }
    }

    #[test]
    fn the_summary_groups_by_kind() {
        let items = vec![
            item(Kind::DeviceRemoved, "qxl", None, true),
            item(Kind::DeviceRemoved, "qxl-vga", None, true),
        ];
        assert_eq!(
            summarize("qemu-system-x86_64", "modules_changed", &items),
            "qemu-system-x86_64: 2 devices removed (qxl, qxl-vga) after modules_changed"
        );
        let many: Vec<Item> = (0..7)
            .map(|i| item(Kind::CommandAdded, format!("c{i}"), None, false))
            .chain([item(Kind::VersionChanged, "10.0.0", None, false)])
            .collect();
        assert_eq!(
            summarize("e", "binary_changed", &many),
            "e: 7 commands added (c0, c1, c2, c3, c4, …); 1 version changed (10.0.0) after binary_changed"
        );
    }

    #[test]
    fn every_kind_has_a_distinct_label() {
        let labels: BTreeSet<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), Kind::ALL.len());
        for k in Kind::ALL {
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
    }
}
