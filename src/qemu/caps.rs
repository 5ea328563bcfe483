//! The capabilities document: what one probe of one emulator found.
//!
//! Its shape is a contract (`schema_version`, below; described in
//! docs/probe.md, its JSON Schema from `qcapsd probe --schema`). `qcapsd probe` prints
//! it, the cache stores it on disk and the API serves it. A field QEMU could
//! not answer is `None` or empty, never invented.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the document's shape. Bump it when a field changes meaning;
/// cached files of another version are discarded and re-probed.
///
/// 2: `devices` holds the user-creatable devices (what `-device` accepts),
/// with `devices_source`; commands come from `query-commands`; the
/// fingerprint gained CPUID, KVM nested and secure-guest facts.
/// 3: `other_accels`, CPU usability under the other configured
/// accelerators (config `accels`).
pub const SCHEMA_VERSION: u32 = 3;

/// Everything one probe learned about one emulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// The shape of this document (see `SCHEMA_VERSION`).
    pub schema_version: u32,
    /// Which configured emulator this is.
    pub emulator: Emulator,
    /// `None` when neither `query-version` nor the QMP greeting said.
    pub qemu: Option<QemuVersion>,
    /// From `query-target`.
    pub arch: Option<String>,
    /// The accelerator the probe ran under: `kvm` or `tcg`.
    pub accel: String,
    /// From `query-kvm`; `None` when QEMU did not answer it.
    pub kvm: Option<Kvm>,
    /// Machine types (`-machine`), the default first, without `none`.
    pub machines: Vec<Machine>,
    /// CPU models (`-cpu`) with their usability on this host under
    /// `accel`.
    pub cpu_models: Vec<CpuModel>,
    /// The devices `-device` accepts (user-creatable), sorted.
    pub devices: Vec<String>,
    /// Short names `-device` also accepts, each with the device it names
    /// (`virtio-blk` → `virtio-blk-pci`), from `device_add help`.
    #[serde(default)]
    pub device_aliases: BTreeMap<String, String>,
    /// Where `devices` came from: `device_add help` (exactly `-device
    /// help`'s list), or, for a QEMU that does not answer it over QMP,
    /// `qom-list-types`, which also holds devices `-device` refuses (e.g.
    /// `apic`). `None` when neither answered.
    pub devices_source: Option<DevicesSource>,
    /// The properties of the devices named in the config's
    /// `device_properties` that the emulator has.
    pub device_properties: BTreeMap<String, Vec<DeviceProperty>>,
    /// The QMP commands QEMU accepts, sorted.
    pub commands: Vec<String>,
    /// What is known under each configured accelerator (config `accels`)
    /// other than `accel`: CPU model usability from a further probe pass,
    /// or why there is none. An accelerator that is not a key here was not
    /// asked about, so nothing is known about it.
    #[serde(default)]
    pub other_accels: BTreeMap<String, AccelPass>,
    /// When and how the probe ran.
    pub probe: ProbeInfo,
}

/// How the device list was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DevicesSource {
    /// `human-monitor-command` `device_add help`: the user-creatable set.
    #[serde(rename = "device_add help")]
    DeviceAddHelp,
    /// `qom-list-types` (non-abstract devices): a superset.
    #[serde(rename = "qom-list-types")]
    QomListTypes,
}

/// The emulator a document describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Emulator {
    /// The configured name (the key in every URL).
    pub name: String,
    /// The binary's path as configured.
    pub path: String,
}

/// QEMU's version, from `query-version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QemuVersion {
    /// `major.minor.micro`.
    pub version: String,
    /// The three parts of `version`.
    pub major: u64,
    /// See `major`.
    pub minor: u64,
    /// See `major`.
    pub micro: u64,
    /// The distribution's package string (may be empty).
    pub package: String,
}

/// What `query-kvm` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kvm {
    /// KVM is available to this QEMU.
    pub present: bool,
    /// The probe ran under KVM.
    pub enabled: bool,
}

/// One machine type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// The canonical type name, e.g. `pc-q35-10.0`.
    pub name: String,
    /// The short name pointing at it, e.g. `q35`.
    pub alias: Option<String>,
    /// QEMU's default machine (there is at most one).
    pub is_default: bool,
    /// The most vCPUs a VM of this type can have.
    pub cpu_max: u64,
    /// QEMU will drop this type in a later release.
    pub deprecated: bool,
    /// Whether vCPUs can be hot-plugged; `None` where QEMU does not say.
    pub hotpluggable_cpus: Option<bool>,
    /// The QOM type of the CPU a VM of this type gets without `-cpu`.
    pub default_cpu_type: Option<String>,
}

/// One CPU model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuModel {
    /// The name `-cpu` takes.
    pub name: String,
    /// Its QOM type.
    pub typename: Option<String>,
    /// `None` where QEMU does not report usability for this accelerator.
    pub usable: Option<bool>,
    /// The features that block the model on this host (empty when usable).
    pub unavailable_features: Vec<String>,
    /// QEMU will drop this model in a later release.
    pub deprecated: bool,
    /// The model's features do not depend on the machine type or QEMU
    /// version.
    #[serde(rename = "static")]
    pub static_: bool,
    /// Whether a VM with this model can be migrated; `None` where QEMU does
    /// not say.
    pub migration_safe: Option<bool>,
}

/// CPU model usability under one more accelerator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccelPass {
    /// Why QEMU cannot run under this accelerator here (e.g. `/dev/kvm`
    /// is missing, or a build without TCG refused it); `None` when the pass
    /// answered.
    pub error: Option<String>,
    /// Each CPU model's usability under this accelerator (empty with an
    /// error).
    pub cpu_models: Vec<CpuUsability>,
}

/// One CPU model's usability under one accelerator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuUsability {
    /// The name `-cpu` takes.
    pub name: String,
    /// `None` where QEMU does not report usability.
    pub usable: Option<bool>,
    /// The features that block the model (empty when usable).
    pub unavailable_features: Vec<String>,
}

/// One property of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceProperty {
    /// The property, as `-device NAME,PROPERTY=...` takes it.
    pub name: String,
    /// QEMU's type of its value (`uint16`, `str`, `bool`, `on/off`, …).
    #[serde(rename = "type")]
    pub type_: String,
    /// Its default, where QEMU reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<serde_json::Value>,
    /// QEMU's description, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// When and how a probe ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeInfo {
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Wall time of the QEMU processes (every pass), spawn to reaped.
    pub duration_seconds: f64,
    /// QEMU processes started for this probe (counted by the exec sandbox):
    /// one, plus one per further accelerator pass.
    pub execs: u64,
}

/// A small document for unit tests.
#[cfg(test)]
pub(crate) mod sample {
    use super::*;

    pub fn doc() -> Capabilities {
        Capabilities {
            schema_version: SCHEMA_VERSION,
            emulator: Emulator {
                name: "q".into(),
                path: "/usr/bin/q".into(),
            },
            qemu: Some(QemuVersion {
                version: "9.1.0".into(),
                major: 9,
                minor: 1,
                micro: 0,
                package: "Debian 9.1".into(),
            }),
            arch: Some("x86_64".into()),
            accel: "kvm".into(),
            kvm: Some(Kvm {
                present: true,
                enabled: true,
            }),
            machines: vec![
                machine("pc-q35-9.1", Some("q35"), true, 4096),
                machine("pc-i440fx-9.1", Some("pc"), false, 255),
            ],
            cpu_models: vec![
                cpu("Haswell", Some(true), &[]),
                cpu("Skylake", Some(false), &["avx512f"]),
            ],
            devices: vec!["qxl".into(), "virtio-blk-pci".into()],
            device_aliases: BTreeMap::from([(
                "virtio-blk".to_owned(),
                "virtio-blk-pci".to_owned(),
            )]),
            devices_source: Some(DevicesSource::DeviceAddHelp),
            device_properties: BTreeMap::from([(
                "virtio-blk-pci".to_owned(),
                vec![prop("num-queues", "uint16", Some(65535))],
            )]),
            commands: vec!["query-kvm".into(), "quit".into()],
            other_accels: BTreeMap::new(),
            probe: ProbeInfo {
                started_at: "2026-11-28T00:00:00Z".into(),
                duration_seconds: 0.1,
                execs: 1,
            },
        }
    }

    pub fn machine(name: &str, alias: Option<&str>, default: bool, cpu_max: u64) -> Machine {
        Machine {
            name: name.into(),
            alias: alias.map(Into::into),
            is_default: default,
            cpu_max,
            deprecated: false,
            hotpluggable_cpus: None,
            default_cpu_type: None,
        }
    }

    pub fn cpu(name: &str, usable: Option<bool>, blockers: &[&str]) -> CpuModel {
        CpuModel {
            name: name.into(),
            typename: None,
            usable,
            unavailable_features: blockers.iter().map(|b| (*b).to_owned()).collect(),
            deprecated: false,
            static_: false,
            migration_safe: None,
        }
    }

    pub fn prop(name: &str, ty: &str, default: Option<u64>) -> DeviceProperty {
        DeviceProperty {
            name: name.into(),
            type_: ty.into(),
            default_value: default.map(Into::into),
            description: None,
        }
    }
}
