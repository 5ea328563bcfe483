//! The capabilities document: what one probe of one emulator found.
//!
//! This is the `schema_version` 2 contract of DESIGN.md. `qcapsd probe` prints
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
pub const SCHEMA_VERSION: u32 = 2;

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
    /// Wall time of the QEMU process, spawn to reaped.
    pub duration_seconds: f64,
    /// QEMU processes started for this probe (counted by the exec sandbox).
    pub execs: u64,
}
