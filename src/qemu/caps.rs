//! The capabilities document: what one probe of one emulator found.
//!
//! This is the `schema_version` 1 contract of DESIGN.md. `qcapsd probe` prints
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
    pub schema_version: u32,
    pub emulator: Emulator,
    /// `None` when neither `query-version` nor the QMP greeting said.
    pub qemu: Option<QemuVersion>,
    /// From `query-target`.
    pub arch: Option<String>,
    /// The accelerator the probe ran under: `kvm` or `tcg`.
    pub accel: String,
    pub kvm: Option<Kvm>,
    pub machines: Vec<Machine>,
    pub cpu_models: Vec<CpuModel>,
    /// The devices `-device` accepts (user-creatable), sorted.
    pub devices: Vec<String>,
    /// Where `devices` came from: `device_add help` (exactly `-device
    /// help`'s list), or, for a QEMU that does not answer it over QMP,
    /// `qom-list-types`, which also holds devices `-device` refuses (e.g.
    /// `apic`). `None` when neither answered.
    pub devices_source: Option<DevicesSource>,
    pub device_properties: BTreeMap<String, Vec<DeviceProperty>>,
    pub commands: Vec<String>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Emulator {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QemuVersion {
    /// `major.minor.micro`.
    pub version: String,
    pub major: u64,
    pub minor: u64,
    pub micro: u64,
    /// The distribution's package string (may be empty).
    pub package: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kvm {
    pub present: bool,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub name: String,
    pub alias: Option<String>,
    pub is_default: bool,
    pub cpu_max: u64,
    pub deprecated: bool,
    pub hotpluggable_cpus: Option<bool>,
    pub default_cpu_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuModel {
    pub name: String,
    pub typename: Option<String>,
    /// `None` where QEMU does not report usability for this accelerator.
    pub usable: Option<bool>,
    /// The features that block the model on this host (empty when usable).
    pub unavailable_features: Vec<String>,
    pub deprecated: bool,
    #[serde(rename = "static")]
    pub static_: bool,
    pub migration_safe: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceProperty {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeInfo {
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_seconds: f64,
    /// QEMU processes started for this probe (counted by the exec sandbox).
    pub execs: u64,
}
