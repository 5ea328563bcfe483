//! One probe: one QEMU process, a few batched QMP round trips, one
//! capabilities document.
//!
//! The conversation is collected raw inside the exec session (QEMU lives only
//! as long as it must), then parsed by the pure functions of `parse`. A
//! command that an older or foreign QEMU lacks or refuses leaves its field
//! empty; a broken conversation or a reply of the wrong shape fails the probe
//! with an error that names the command.

use super::caps::{Capabilities, Emulator, ProbeInfo, SCHEMA_VERSION};
use super::exec::{Accel, ExecCounter, ExecError, ExecReport, ExecSpec, with_qemu};
use super::parse::{self, ParseError};
use super::qmp::QmpError;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The devices whose properties are read by default: those libvirt inspects,
/// with their -ccw and -device variants for s390x and virtio-mmio targets.
pub const DEFAULT_DEVICES: &[&str] = &[
    "virtio-blk-pci",
    "virtio-net-pci",
    "virtio-scsi-pci",
    "vfio-pci",
    "scsi-hd",
    "ide-hd",
    "usb-storage",
    "usb-host",
    "VGA",
    "qxl",
    "virtio-gpu-pci",
    "virtio-balloon-pci",
    "intel-iommu",
    "nvdimm",
    "pcie-root-port",
    "virtio-mem-pci",
    "virtio-iommu-pci",
    "virtio-blk-ccw",
    "virtio-net-ccw",
    "virtio-scsi-ccw",
    "virtio-balloon-ccw",
    "virtio-gpu-ccw",
    "vfio-ccw",
    "virtio-blk-device",
    "virtio-net-device",
    "virtio-scsi-device",
    "virtio-balloon-device",
    "virtio-gpu-device",
];

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    /// The emulator's configured name.
    pub name: String,
    pub accel: Accel,
    pub timeout: Duration,
    /// Devices whose properties are read (those the emulator has).
    pub devices: Vec<String>,
    /// Tag in QEMU's environment naming the agent (see `exec::TAG_VAR`).
    pub tag: Option<String>,
}

impl ProbeRequest {
    pub fn new(name: impl Into<String>) -> Self {
        ProbeRequest {
            name: name.into(),
            accel: Accel::Auto,
            timeout: Duration::from_secs(30),
            devices: DEFAULT_DEVICES.iter().map(|s| (*s).to_owned()).collect(),
            tag: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{path}: unexpected reply: {source}")]
    Parse {
        path: String,
        #[source]
        source: ParseError,
    },
}

impl ProbeError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Exec(e) => e.reason(),
            ProbeError::Parse { .. } => "bad_reply",
        }
    }
}

/// Everything QEMU said, before parsing. `None` is a command QEMU refused.
#[derive(Default)]
struct Raw {
    greeting: Value,
    version: Option<Value>,
    target: Option<Value>,
    kvm: Option<Value>,
    machines: Option<Value>,
    cpus: Option<Value>,
    types: Option<Value>,
    schema: Option<Value>,
    commands: Option<Value>,
    props: Vec<(String, Value)>,
}

/// Probes the emulator at `path` in one exec.
pub async fn probe(
    path: &Path,
    req: &ProbeRequest,
    counter: &ExecCounter,
    cancel: &CancellationToken,
) -> Result<(Capabilities, ExecReport), ProbeError> {
    let started_at = SystemTime::now();
    let spec = ExecSpec {
        tag: req.tag.clone(),
        ..ExecSpec::new(path, req.accel, req.timeout)
    };
    let (raw, report) = with_qemu(&spec, counter, cancel, async |qmp| {
        let mut raw = Raw {
            greeting: qmp.handshake().await?,
            ..Raw::default()
        };
        let first = qmp
            .execute_batch(&[
                ("query-version", None),
                ("query-target", None),
                ("query-kvm", None),
                ("query-machines", None),
                ("query-cpu-definitions", None),
                (
                    "qom-list-types",
                    Some(json!({"implements": "device", "abstract": false})),
                ),
                ("query-qmp-schema", None),
            ])
            .await?;
        let mut it = first.into_iter().map(answered);
        let mut next = || it.next().flatten();
        raw.version = next();
        raw.target = next();
        raw.kvm = next();
        raw.machines = next();
        raw.cpus = next();
        raw.types = next();
        raw.schema = next();

        // Ask only for devices the emulator has (all of them if it would not
        // list its devices); a DeviceNotFound just leaves the device out.
        let known: Option<Vec<String>> = raw.types.as_ref().and_then(|t| parse::type_names(t).ok());
        let wanted: Vec<&String> = req
            .devices
            .iter()
            .filter(|d| known.as_ref().is_none_or(|k| k.binary_search(d).is_ok()))
            .collect();
        let mut second: Vec<(&str, Option<Value>)> = wanted
            .iter()
            .map(|d| ("device-list-properties", Some(json!({"typename": d}))))
            .collect();
        if raw.schema.is_none() {
            second.push(("query-commands", None));
        }
        let mut replies = qmp.execute_batch(&second).await?.into_iter();
        for d in &wanted {
            if let Some(v) = replies.next().and_then(answered) {
                raw.props.push(((*d).clone(), v));
            }
        }
        raw.commands = replies.next().and_then(answered);
        Ok(raw)
    })
    .await?;
    let caps =
        build(path, req, raw, started_at, report.duration, report.execs).map_err(|source| {
            ProbeError::Parse {
                path: path.display().to_string(),
                source,
            }
        })?;
    Ok((caps, report))
}

/// A command's answer, or `None` when QEMU answered with an error.
fn answered(r: Result<Value, QmpError>) -> Option<Value> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::debug!(error = %e, "command not answered");
            None
        }
    }
}

fn build(
    path: &Path,
    req: &ProbeRequest,
    raw: Raw,
    started_at: SystemTime,
    duration: Duration,
    execs: u64,
) -> Result<Capabilities, ParseError> {
    let qemu = match (&raw.version, raw.greeting.get("version")) {
        (Some(v), _) | (None, Some(v)) => Some(parse::version(v)?),
        (None, None) => None,
    };
    let kvm = raw.kvm.as_ref().map(parse::kvm).transpose()?;
    let accel = match (kvm, req.accel) {
        (Some(k), _) if k.enabled => "kvm",
        (None, Accel::Kvm) => "kvm",
        _ => "tcg",
    };
    let commands = match (&raw.schema, &raw.commands) {
        (Some(s), _) => parse::schema_commands(s)?,
        (None, Some(c)) => parse::commands(c)?,
        (None, None) => Vec::new(),
    };
    let device_properties = raw
        .props
        .iter()
        .map(|(d, v)| Ok((d.clone(), parse::device_properties(v)?)))
        .collect::<Result<BTreeMap<_, _>, ParseError>>()?;
    Ok(Capabilities {
        schema_version: SCHEMA_VERSION,
        emulator: Emulator {
            name: req.name.clone(),
            path: path.display().to_string(),
        },
        qemu,
        arch: raw.target.as_ref().map(parse::target).transpose()?,
        accel: accel.to_owned(),
        kvm,
        machines: raw
            .machines
            .as_ref()
            .map(parse::machines)
            .transpose()?
            .unwrap_or_default(),
        cpu_models: raw
            .cpus
            .as_ref()
            .map(parse::cpu_models)
            .transpose()?
            .unwrap_or_default(),
        devices: raw
            .types
            .as_ref()
            .map(parse::type_names)
            .transpose()?
            .unwrap_or_default(),
        device_properties,
        commands,
        probe: ProbeInfo {
            started_at: crate::timefmt::rfc3339(started_at),
            duration_seconds: duration.as_secs_f64(),
            execs,
        },
    })
}
