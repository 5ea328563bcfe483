//! Pure parsers from QMP replies (`serde_json::Value`) to the capabilities
//! model. No I/O here: each function takes the `return` value of one command
//! and is unit tested on recorded replies.
//!
//! Parsers are strict about the shape of what they rely on (a name must be a
//! string) and lenient about optional members that older or foreign QEMUs
//! omit: those become `None`, `false` or empty, never an invented value.

use super::caps::{CpuModel, DeviceProperty, Kvm, Machine, QemuVersion};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A reply did not have the shape its command promises.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{command}: {problem}")]
pub struct ParseError {
    pub command: &'static str,
    pub problem: String,
}

fn err(command: &'static str, problem: impl Into<String>) -> ParseError {
    ParseError {
        command,
        problem: problem.into(),
    }
}

fn as_object<'a>(
    command: &'static str,
    v: &'a Value,
) -> Result<&'a Map<String, Value>, ParseError> {
    v.as_object()
        .ok_or_else(|| err(command, format!("expected an object, got {}", kind(v))))
}

fn as_array<'a>(command: &'static str, v: &'a Value) -> Result<&'a Vec<Value>, ParseError> {
    v.as_array()
        .ok_or_else(|| err(command, format!("expected an array, got {}", kind(v))))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn req_str(command: &'static str, o: &Map<String, Value>, key: &str) -> Result<String, ParseError> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(err(
            command,
            format!("member '{key}' is {}, not a string", kind(other)),
        )),
        None => Err(err(command, format!("an entry has no '{key}'"))),
    }
}

fn opt_str(o: &Map<String, Value>, key: &str) -> Option<String> {
    o.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn opt_bool(o: &Map<String, Value>, key: &str) -> Option<bool> {
    o.get(key).and_then(Value::as_bool)
}

/// `query-version`, or the `version` member of the QMP greeting (same shape).
pub fn version(v: &Value) -> Result<QemuVersion, ParseError> {
    const C: &str = "query-version";
    let o = as_object(C, v)?;
    let q = as_object(C, o.get("qemu").ok_or_else(|| err(C, "no 'qemu' member"))?)?;
    let num = |k: &str| {
        q.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| err(C, format!("'qemu.{k}' is not a non-negative integer")))
    };
    let (major, minor, micro) = (num("major")?, num("minor")?, num("micro")?);
    Ok(QemuVersion {
        version: format!("{major}.{minor}.{micro}"),
        major,
        minor,
        micro,
        package: opt_str(o, "package").unwrap_or_default().trim().to_owned(),
    })
}

/// `query-target`: the guest architecture.
pub fn target(v: &Value) -> Result<String, ParseError> {
    req_str("query-target", as_object("query-target", v)?, "arch")
}

/// `query-kvm`.
pub fn kvm(v: &Value) -> Result<Kvm, ParseError> {
    const C: &str = "query-kvm";
    let o = as_object(C, v)?;
    let flag = |k: &str| {
        opt_bool(o, k).ok_or_else(|| err(C, format!("'{k}' is missing or not a boolean")))
    };
    Ok(Kvm {
        present: flag("present")?,
        enabled: flag("enabled")?,
    })
}

/// `query-machines`, without the placeholder machine `none`. The default
/// machine comes first, then the rest in QEMU's order.
pub fn machines(v: &Value) -> Result<Vec<Machine>, ParseError> {
    const C: &str = "query-machines";
    let mut out = Vec::new();
    for entry in as_array(C, v)? {
        let o = as_object(C, entry)?;
        let name = req_str(C, o, "name")?;
        if name == "none" {
            continue;
        }
        out.push(Machine {
            name,
            alias: opt_str(o, "alias"),
            is_default: opt_bool(o, "is-default").unwrap_or(false),
            cpu_max: o
                .get("cpu-max")
                .and_then(Value::as_u64)
                .ok_or_else(|| err(C, "an entry has no integer 'cpu-max'"))?,
            deprecated: opt_bool(o, "deprecated").unwrap_or(false),
            hotpluggable_cpus: opt_bool(o, "hotpluggable-cpus"),
            default_cpu_type: opt_str(o, "default-cpu-type"),
        });
    }
    out.sort_by_key(|m| !m.is_default);
    Ok(out)
}

/// `query-cpu-definitions`. `usable` is known only where QEMU reports
/// `unavailable-features` (it does for the accelerator it runs under on x86,
/// s390x and a few others); elsewhere it stays `None`.
pub fn cpu_models(v: &Value) -> Result<Vec<CpuModel>, ParseError> {
    const C: &str = "query-cpu-definitions";
    let mut out = Vec::new();
    for entry in as_array(C, v)? {
        let o = as_object(C, entry)?;
        let blockers = match o.get("unavailable-features") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|f| {
                        f.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| err(C, "'unavailable-features' holds a non-string"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => {
                return Err(err(
                    C,
                    format!("'unavailable-features' is {}, not an array", kind(other)),
                ));
            }
        };
        out.push(CpuModel {
            name: req_str(C, o, "name")?,
            typename: opt_str(o, "typename"),
            usable: blockers.as_ref().map(Vec::is_empty),
            unavailable_features: blockers.unwrap_or_default(),
            deprecated: opt_bool(o, "deprecated").unwrap_or(false),
            static_: opt_bool(o, "static").unwrap_or(false),
            migration_safe: opt_bool(o, "migration-safe"),
        });
    }
    Ok(out)
}

/// `qom-list-types` with `implements: cpu` and `abstract: true`: the CPU
/// models of a target that has no `query-cpu-definitions`, named as its
/// `-cpu help` names them. The target's own CPU type is the one whose
/// parent is `cpu` (`sparc-cpu`); each concrete type below it is a model,
/// its name without that type's suffix (`TI-SuperSparc-II-sparc-cpu` →
/// `TI-SuperSparc-II`), or whole where it has none (hppa's `hppa-cpu` and
/// `hppa64-cpu`). QEMU says nothing of usability here: `None`.
pub fn cpu_types(v: &Value) -> Result<Vec<CpuModel>, ParseError> {
    const C: &str = "qom-list-types";
    let mut types = Vec::new();
    for entry in as_array(C, v)? {
        let o = as_object(C, entry)?;
        types.push((
            req_str(C, o, "name")?,
            opt_str(o, "parent"),
            opt_bool(o, "abstract").unwrap_or(false),
        ));
    }
    let base = types
        .iter()
        .find(|(_, parent, _)| parent.as_deref() == Some("cpu"))
        .map(|(name, _, _)| format!("-{name}"));
    let mut models: Vec<CpuModel> = types
        .into_iter()
        .filter(|(name, _, is_abstract)| !is_abstract && name != "cpu")
        .map(|(typename, _, _)| {
            let name = base
                .as_deref()
                .and_then(|suffix| typename.strip_suffix(suffix))
                .filter(|n| !n.is_empty())
                .unwrap_or(&typename)
                .to_owned();
            CpuModel {
                name,
                typename: Some(typename),
                usable: None,
                unavailable_features: Vec::new(),
                deprecated: false,
                static_: false,
                migration_safe: None,
            }
        })
        .collect();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models.dedup_by(|a, b| a.name == b.name);
    Ok(models)
}

/// The `name` members of a list of objects, sorted and without
/// duplicates (the shape of `qom-list-types` and `query-commands`).
fn names(command: &'static str, v: &Value) -> Result<Vec<String>, ParseError> {
    let mut names = BTreeSet::new();
    for entry in as_array(command, v)? {
        names.insert(req_str(command, as_object(command, entry)?, "name")?);
    }
    Ok(names.into_iter().collect())
}

/// `qom-list-types`: the type names, sorted and without duplicates.
pub fn type_names(v: &Value) -> Result<Vec<String>, ParseError> {
    names("qom-list-types", v)
}

/// `device-list-properties` for one device.
pub fn device_properties(v: &Value) -> Result<Vec<DeviceProperty>, ParseError> {
    const C: &str = "device-list-properties";
    as_array(C, v)?
        .iter()
        .map(|entry| {
            let o = as_object(C, entry)?;
            Ok(DeviceProperty {
                name: req_str(C, o, "name")?,
                type_: req_str(C, o, "type")?,
                default_value: o.get("default-value").cloned(),
                description: opt_str(o, "description"),
            })
        })
        .collect()
}

/// The text of `device_add help` (the same as `-device help`): the device
/// names of its `name "..."` lines, sorted and without duplicates. Category
/// headers, blank lines and anything else are skipped; a text with no such
/// line (an error message) gives an empty list.
pub fn device_help(text: &str) -> DeviceHelp {
    let mut names = BTreeSet::new();
    let mut aliases = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("name ") else {
            continue;
        };
        let Some((name, rest)) = quoted(rest) else {
            continue;
        };
        names.insert(name.to_owned());
        // `, bus PCI, alias "virtio-blk", desc "..."`: the alias, if any.
        let alias = rest
            .split_once(", alias ")
            .and_then(|(_, a)| quoted(a))
            .map(|(a, _)| a);
        if let Some(a) = alias {
            aliases.insert(a.to_owned(), name.to_owned());
        }
    }
    DeviceHelp {
        names: names.into_iter().collect(),
        aliases,
    }
}

/// What `device_add help` lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceHelp {
    /// Device type names, sorted.
    pub names: Vec<String>,
    /// Alias → the device type it names (`-device virtio-blk` is
    /// `virtio-blk-pci` on x86).
    pub aliases: BTreeMap<String, String>,
}

/// A non-empty `"..."` at the start of `s`, and what follows it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let inner = s.strip_prefix('"')?;
    let end = inner.find('"')?;
    (end > 0).then(|| (&inner[..end], &inner[end + 1..]))
}

/// `query-commands`: the names of the commands QEMU accepts.
pub fn commands(v: &Value) -> Result<Vec<String>, ParseError> {
    names("query-commands", v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn version_reads_numbers_and_package() {
        let v = version(&json!({"qemu": {"major": 10, "minor": 0, "micro": 2},
                                "package": "Debian 1:10.0.2 "}))
        .unwrap();
        assert_eq!(v.version, "10.0.2");
        assert_eq!((v.major, v.minor, v.micro), (10, 0, 2));
        assert_eq!(v.package, "Debian 1:10.0.2");
    }

    #[test]
    fn version_without_package_is_empty_package() {
        let v = version(&json!({"qemu": {"major": 6, "minor": 2, "micro": 0}})).unwrap();
        assert_eq!(v.package, "");
    }

    #[test]
    fn version_rejects_a_string_major() {
        let e = version(&json!({"qemu": {"major": "10", "minor": 0, "micro": 0}})).unwrap_err();
        assert_eq!(e.command, "query-version");
        assert!(e.problem.contains("qemu.major"), "{e}");
    }

    #[test]
    fn target_needs_arch() {
        assert_eq!(target(&json!({"arch": "s390x"})).unwrap(), "s390x");
        assert!(target(&json!({})).is_err());
        assert!(target(&json!("x86_64")).is_err());
    }

    #[test]
    fn kvm_reads_both_flags() {
        assert_eq!(
            kvm(&json!({"enabled": false, "present": true})).unwrap(),
            Kvm {
                present: true,
                enabled: false
            }
        );
        assert!(kvm(&json!({"enabled": 1, "present": true})).is_err());
    }

    #[test]
    fn machines_drop_none_and_put_default_first() {
        let m = machines(&json!([
            {"name": "none", "cpu-max": 1, "hotpluggable-cpus": false},
            {"name": "pc-q35-10.0", "alias": "q35", "cpu-max": 4096, "deprecated": false},
            {"name": "pc-i440fx-10.0", "alias": "pc", "is-default": true, "cpu-max": 255,
             "hotpluggable-cpus": true, "default-cpu-type": "qemu64-x86_64-cpu"},
            {"name": "pc-i440fx-2.12", "cpu-max": 255, "deprecated": true}
        ]))
        .unwrap();
        let names: Vec<_> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["pc-i440fx-10.0", "pc-q35-10.0", "pc-i440fx-2.12"]);
        assert!(m[0].is_default && !m[1].is_default);
        assert_eq!(m[0].alias.as_deref(), Some("pc"));
        assert_eq!(m[0].default_cpu_type.as_deref(), Some("qemu64-x86_64-cpu"));
        assert_eq!(m[1].hotpluggable_cpus, None);
        assert!(m[2].deprecated);
    }

    #[test]
    fn machines_reject_a_missing_cpu_max() {
        let e = machines(&json!([{"name": "virt"}])).unwrap_err();
        assert!(e.problem.contains("cpu-max"), "{e}");
    }

    #[test]
    fn cpu_usability_comes_from_unavailable_features() {
        let c = cpu_models(&json!([
            {"name": "Haswell", "typename": "Haswell-x86_64-cpu",
             "unavailable-features": ["hle", "rtm"], "static": false,
             "migration-safe": true, "deprecated": false},
            {"name": "qemu64", "unavailable-features": [], "static": false},
            {"name": "cortex-a57", "typename": "cortex-a57-arm-cpu"}
        ]))
        .unwrap();
        assert_eq!(c[0].usable, Some(false));
        assert_eq!(c[0].unavailable_features, ["hle", "rtm"]);
        assert_eq!(c[0].migration_safe, Some(true));
        assert_eq!(c[1].usable, Some(true));
        assert_eq!(c[2].usable, None, "no report means unknown, not usable");
        assert!(c[2].unavailable_features.is_empty());
    }

    #[test]
    fn cpu_models_reject_non_string_blockers() {
        assert!(cpu_models(&json!([{"name": "x", "unavailable-features": [1]}])).is_err());
        assert!(cpu_models(&json!([{"name": "x", "unavailable-features": "hle"}])).is_err());
    }

    /// As QEMU 10.0.2's sparc, hppa and m68k answer (abstract types
    /// included): names as their `-cpu help` prints them.
    #[test]
    fn cpu_models_from_the_cpu_types_of_targets_without_cpu_definitions() {
        let names = |v: Value| -> Vec<String> {
            cpu_types(&v).unwrap().into_iter().map(|m| m.name).collect()
        };
        let sparc = json!([
            {"name": "TI-SuperSparc-II-sparc-cpu", "parent": "sparc-cpu"},
            {"name": "cpu", "abstract": true, "parent": "device"},
            {"name": "LEON3-sparc-cpu", "parent": "sparc-cpu"},
            {"name": "sparc-cpu", "abstract": true, "parent": "cpu"}
        ]);
        assert_eq!(names(sparc.clone()), ["LEON3", "TI-SuperSparc-II"]);
        let m = &cpu_types(&sparc).unwrap()[1];
        assert_eq!(m.typename.as_deref(), Some("TI-SuperSparc-II-sparc-cpu"));
        assert_eq!(m.usable, None, "QEMU does not say");
        let hppa = json!([
            {"name": "cpu", "abstract": true, "parent": "device"},
            {"name": "hppa-cpu", "parent": "cpu"},
            {"name": "hppa64-cpu", "parent": "hppa-cpu"}
        ]);
        assert_eq!(names(hppa), ["hppa-cpu", "hppa64-cpu"]);
        let m68k = json!([
            {"name": "any-m68k-cpu", "parent": "m68k-cpu"},
            {"name": "m68k-cpu", "abstract": true, "parent": "cpu"},
            {"name": "m68040-m68k-cpu", "parent": "m68k-cpu"}
        ]);
        assert_eq!(names(m68k), ["any", "m68040"]);
        assert!(cpu_types(&json!([{"parent": "cpu"}])).is_err());
        assert_eq!(names(json!([])), Vec::<String>::new());
    }

    #[test]
    fn type_names_are_sorted_and_unique() {
        let t = type_names(&json!([{"name": "virtio-net-pci", "parent": "x"},
                                   {"name": "VGA"}, {"name": "VGA"}]))
        .unwrap();
        assert_eq!(t, ["VGA", "virtio-net-pci"]);
    }

    #[test]
    fn device_properties_keep_defaults_and_descriptions() {
        let p = device_properties(&json!([
            {"name": "num-queues", "type": "uint16", "default-value": 65535},
            {"name": "drive", "type": "str", "description": "Node name or ID"}
        ]))
        .unwrap();
        assert_eq!(p[0].default_value, Some(json!(65535)));
        assert_eq!(p[1].default_value, None);
        assert_eq!(p[1].description.as_deref(), Some("Node name or ID"));
        assert!(device_properties(&json!([{"name": "x"}])).is_err());
    }

    #[test]
    fn device_help_lists_names_and_aliases() {
        let text = "Controller/Bridge/Hub devices:\n\
                    name \"pci-bridge\", bus PCI, desc \"Standard PCI Bridge\"\n\
                    name \"usb-hub\", bus usb-bus\n\n\
                    Network devices:\n\
                    name \"e1000\", bus PCI, alias \"e1000-82540em\", desc \"Intel Gigabit Ethernet\"\n\
                    name \"usb-hub\", bus usb-bus\n";
        let h = device_help(text);
        assert_eq!(h.names, ["e1000", "pci-bridge", "usb-hub"]);
        assert_eq!(
            h.aliases.into_iter().collect::<Vec<_>>(),
            [("e1000-82540em".to_owned(), "e1000".to_owned())]
        );
        assert_eq!(
            device_help("Error: unknown command\n"),
            DeviceHelp::default()
        );
        assert_eq!(
            device_help("name \"\", bus x\nname \"unterminated"),
            DeviceHelp::default()
        );
    }

    /// `device_add help` as QEMU 10.0.2 (Debian's bookworm-backports
    /// build) answers it over QMP: 436 devices, the count `-device help`
    /// prints, 20 of them with an alias.
    #[test]
    fn device_help_reads_qemu_10_0_2() {
        let text = include_str!("../../tests/fixtures/device-add-help-qemu-10.0.2.txt");
        let h = device_help(text);
        assert_eq!(h.names.len(), 436);
        assert_eq!(h.aliases.len(), 20);
        assert_eq!(h.aliases["virtio-blk"], "virtio-blk-pci");
        for d in [
            "virtio-net-pci",
            "virtio-rng-pci",
            "qxl-vga",
            "usb-tablet",
            "nvme",
        ] {
            assert!(h.names.binary_search(&d.to_owned()).is_ok(), "{d}");
        }
        for not_creatable in ["apic", "PIIX3", "ICH9-LPC", "kvm-apic"] {
            assert!(
                !h.names.iter().any(|n| n == not_creatable),
                "{not_creatable}"
            );
        }
        // Category headings and descriptions are not names.
        assert!(!h.names.iter().any(|n| n.contains(' ')));
    }

    #[test]
    fn commands_lists_names() {
        assert_eq!(
            commands(&json!([{"name": "quit"}, {"name": "cont"}])).unwrap(),
            ["cont", "quit"]
        );
        assert!(commands(&json!({"name": "quit"})).is_err());
    }
}
