//! One probe: one QEMU process, two batches of QMP commands (the second
//! reads the properties of the configured devices the emulator has; a
//! QEMU that cannot list its devices the modern way costs one round trip
//! more), one capabilities document. [`COMMANDS_USED`] lists every command
//! sent and the field it feeds: nothing is asked that the document does not
//! use. The monitor runs in out-of-band mode where QEMU offers it, so a
//! batch runs back to back (see `qmp`).
//!
//! The conversation is collected raw inside the exec session (QEMU lives only
//! as long as it must), then parsed by the pure functions of `parse`. A
//! command that an older or foreign QEMU lacks or refuses leaves its field
//! empty; a broken conversation or a reply of the wrong shape fails the probe
//! with an error that names the command.

use super::accel::Accel;
use super::caps::{
    AccelPass, Capabilities, CpuUsability, DevicesSource, Emulator, ProbeInfo, SCHEMA_VERSION,
};
use super::exec::{ExecSpec, with_qemu};
use super::outcome::{ExecCounter, ExecError, ExecReport, FailureReason};
use super::parse::{self, ParseError};
use super::qmp::{CommandTime, QmpError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    /// The emulator's configured name.
    pub name: String,
    /// The accelerator of the main pass (the document's `accel`).
    pub accel: Accel,
    /// Further accelerators whose CPU usability is learnt, each by a pass
    /// of its own (one exec: `query-cpu-definitions` only). One the main
    /// pass ended up under is skipped. See [`ProbeRequest::accels`].
    pub also: Vec<Accel>,
    /// Whether `/dev/kvm` is usable: a KVM pass is not tried otherwise.
    pub kvm_usable: bool,
    pub timeout: Duration,
    /// Devices whose properties are read (those the emulator has).
    pub devices: Vec<String>,
    /// Tag in QEMU's environment naming the agent (see `exec::TAG_VAR`).
    pub tag: Option<String>,
}

impl ProbeRequest {
    /// A main pass under KVM falling back to TCG (`accel=kvm:tcg`), no
    /// further pass; the caller picks the limits (the agent's come from
    /// its config, `qcapsd probe`'s from its flags and
    /// `config::defaults`).
    pub fn new(name: impl Into<String>, timeout: Duration, devices: Vec<String>) -> Self {
        ProbeRequest {
            name: name.into(),
            accel: Accel::Auto,
            also: Vec::new(),
            kvm_usable: true,
            timeout,
            devices,
            tag: None,
        }
    }

    /// The passes for the configured `accels` (`kvm` and/or `tcg`, in
    /// order of preference): the main pass runs under the first that can
    /// work (KVM falling back to TCG, as QEMU's `accel=kvm:tcg` does, for
    /// an emulator KVM cannot run), every other one gets a pass of its own.
    pub fn accels(mut self, accels: &[Accel], kvm_usable: bool) -> Self {
        let first = accels.first().copied().unwrap_or(Accel::Kvm);
        self.accel = match first {
            Accel::Tcg => Accel::Tcg,
            Accel::Kvm | Accel::Auto if kvm_usable => Accel::Auto,
            Accel::Kvm | Accel::Auto => Accel::Tcg,
        };
        self.also = accels
            .iter()
            .copied()
            .filter(|a| *a != Accel::Auto)
            .collect();
        self.kvm_usable = kvm_usable;
        self
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
    /// Why, as the bounded `reason` of metrics.
    pub fn reason(&self) -> FailureReason {
        match self {
            ProbeError::Exec(e) => e.reason(),
            ProbeError::Parse { .. } => FailureReason::BadReply,
        }
    }

    /// Whether probing the same binary on the same host again would fail
    /// the same way: QEMU refused its command line
    /// ([`ExecError::refused`]), or answered in a shape the parser does
    /// not take (the same binary answers the same). Timeouts, crashes,
    /// kills and spawn errors may not recur.
    pub fn settled(&self) -> bool {
        match self {
            ProbeError::Exec(e) => e.refused(),
            ProbeError::Parse { .. } => true,
        }
    }
}

/// Every command the probe sends, with the document field its answer
/// feeds. The probe asks nothing else: a test holds it to this list.
pub const COMMANDS_USED: &[(&str, &str)] = &[
    ("qmp_capabilities", "(enters command mode)"),
    ("query-version", "qemu"),
    ("query-target", "arch"),
    ("query-kvm", "kvm, accel"),
    ("query-machines", "machines"),
    ("query-cpu-definitions", "cpu_models"),
    ("human-monitor-command", "devices (device_add help)"),
    ("query-commands", "commands"),
    ("device-list-properties", "device_properties"),
    (
        "qom-list-types",
        "cpu_models (only where query-cpu-definitions is not answered); devices (only where device_add help is not answered)",
    ),
];

/// How a probe went.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The main pass.
    pub exec: ExecReport,
    /// Each further accelerator pass that started QEMU.
    pub passes: Vec<ExecReport>,
    /// From QEMU's start to its greeting.
    pub startup: Duration,
    /// Each command in order.
    pub commands: Vec<CommandTime>,
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
    /// `device_add help`, parsed (in the session: it decides which
    /// properties to read); `None` when not answered or listing nothing.
    device_help: Option<parse::DeviceHelp>,
    types: Option<Value>,
    /// The CPU types, where `query-cpu-definitions` is not answered.
    cpu_types: Option<Value>,
    commands: Option<Value>,
    props: Vec<(String, Value)>,
    startup: Duration,
    times: Vec<CommandTime>,
}

/// Probes the emulator at `path`: the main pass (one exec), then one exec
/// per further accelerator in `req.also` (see [`ProbeRequest::accels`]).
/// A relative `path` is resolved against the caller's directory first
/// (QEMU runs in `/`), and the document names the binary actually run.
pub async fn probe(
    path: &Path,
    req: &ProbeRequest,
    counter: &ExecCounter,
    cancel: &CancellationToken,
) -> Result<(Capabilities, ProbeReport), ProbeError> {
    let path = &super::exec::absolute(path)?;
    let (mut caps, mut report) = main_pass(path, req, counter, cancel).await?;
    for &accel in &req.also {
        if accel.as_str() == caps.accel || caps.other_accels.contains_key(accel.as_str()) {
            continue;
        }
        let pass = match accel {
            Accel::Kvm if !req.kvm_usable => {
                refused("/dev/kvm is missing, or the agent's user cannot open it")
            }
            // The main pass asked for KVM and QEMU fell back to TCG.
            Accel::Kvm if req.accel == Accel::Auto => {
                refused("KVM does not start for this emulator (QEMU fell back to TCG)")
            }
            _ => {
                let (pass, exec) = cpu_pass(path, req, accel, counter, cancel).await?;
                if let Some(exec) = exec {
                    caps.probe.execs += exec.execs;
                    caps.probe.duration_seconds += exec.duration.as_secs_f64();
                    report.passes.push(exec);
                }
                pass
            }
        };
        caps.other_accels.insert(accel.as_str().to_owned(), pass);
    }
    Ok((caps, report))
}

fn refused(why: &str) -> AccelPass {
    AccelPass {
        error: Some(why.to_owned()),
        cpu_models: Vec::new(),
    }
}

/// A pass under `accel` for CPU usability only. QEMU refusing to start
/// under it (exiting on its own, e.g. a build without TCG) is an answer,
/// recorded as the pass's error; a timeout or a broken conversation fails
/// the probe, as in the main pass.
async fn cpu_pass(
    path: &Path,
    req: &ProbeRequest,
    accel: Accel,
    counter: &ExecCounter,
    cancel: &CancellationToken,
) -> Result<(AccelPass, Option<ExecReport>), ProbeError> {
    let spec = ExecSpec {
        tag: req.tag.clone(),
        ..ExecSpec::new(path, accel, req.timeout)
    };
    let started = Instant::now();
    let result = with_qemu(&spec, counter, cancel, async |qmp| {
        qmp.handshake().await?;
        let mut replies = qmp
            .execute_batch(&[("query-cpu-definitions", None)])
            .await?;
        Ok(replies.pop().and_then(answered))
    })
    .await;
    match result {
        Ok((reply, exec)) => {
            let pass = match reply {
                Some(v) => AccelPass {
                    error: None,
                    cpu_models: parse::cpu_models(&v)
                        .map_err(|source| ProbeError::Parse {
                            path: path.display().to_string(),
                            source,
                        })?
                        .into_iter()
                        .map(|m| CpuUsability {
                            name: m.name,
                            usable: m.usable,
                            unavailable_features: m.unavailable_features,
                        })
                        .collect(),
                },
                None => refused("query-cpu-definitions was not answered"),
            };
            Ok((pass, Some(exec)))
        }
        Err(e) if e.exited_on_its_own() => {
            let exec = ExecReport {
                duration: started.elapsed(),
                execs: 1,
            };
            Ok((refused(&e.to_string()), Some(exec)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The main pass, in one exec: one batch of commands, one more round trip
/// only for a QEMU that does not answer `device_add help` (then its devices
/// come from `qom-list-types`), then the device properties.
async fn main_pass(
    path: &Path,
    req: &ProbeRequest,
    counter: &ExecCounter,
    cancel: &CancellationToken,
) -> Result<(Capabilities, ProbeReport), ProbeError> {
    let started_at = SystemTime::now();
    let spec = ExecSpec {
        tag: req.tag.clone(),
        ..ExecSpec::new(path, req.accel, req.timeout)
    };
    let (raw, exec) = with_qemu(&spec, counter, cancel, async |qmp| {
        let spawned = Instant::now();
        let greeting = qmp.handshake().await?;
        let mut raw = Raw {
            greeting,
            startup: spawned.elapsed(),
            ..Raw::default()
        };
        let batch: [(&str, Option<Value>); 7] = [
            ("query-version", None),
            ("query-target", None),
            ("query-kvm", None),
            ("query-machines", None),
            ("query-cpu-definitions", None),
            (
                "human-monitor-command",
                Some(json!({"command-line": "device_add help"})),
            ),
            ("query-commands", None),
        ];
        let (replies, times) = qmp.execute_batch_timed(&batch).await?;
        raw.times = times;
        let mut it = replies.into_iter().map(answered);
        let mut next = || it.next().flatten();
        raw.version = next();
        raw.target = next();
        raw.kvm = next();
        raw.machines = next();
        raw.cpus = next();
        raw.device_help = next()
            .as_ref()
            .and_then(Value::as_str)
            .map(parse::device_help)
            .filter(|d| !d.names.is_empty());
        raw.commands = next();
        // What the first batch could not say, the QOM types do, in one
        // more round trip: the devices without a device_add help list, the
        // CPU models without query-cpu-definitions (half of QEMU's targets:
        // sparc, m68k, sh4, …), abstract types included so that the
        // target's own CPU type is known.
        let mut fallback: Vec<(&str, Option<Value>)> = Vec::new();
        if raw.device_help.is_none() {
            fallback.push((
                "qom-list-types",
                Some(json!({"implements": "device", "abstract": false})),
            ));
        }
        if raw.cpus.is_none() {
            fallback.push((
                "qom-list-types",
                Some(json!({"implements": "cpu", "abstract": true})),
            ));
        }
        let mut types: Option<Vec<String>> = None;
        if !fallback.is_empty() {
            let (replies, times) = qmp.execute_batch_timed(&fallback).await?;
            raw.times.extend(times);
            let mut replies = replies.into_iter().map(answered);
            if raw.device_help.is_none() {
                raw.types = replies.next().flatten();
                types = raw.types.as_ref().and_then(|t| parse::type_names(t).ok());
            }
            if raw.cpus.is_none() {
                raw.cpu_types = replies.next().flatten();
            }
        }
        // Both lists are sorted.
        let known: Option<&[String]> = raw
            .device_help
            .as_ref()
            .map(|d| d.names.as_slice())
            .or(types.as_deref());
        // Properties of the configured devices the emulator has (all of
        // them when it could not list its devices): asking for one it
        // lacks costs QEMU as much as a real answer.
        let asked: Vec<&String> = req
            .devices
            .iter()
            .filter(|d| known.is_none_or(|k| k.binary_search(d).is_ok()))
            .collect();
        if !asked.is_empty() {
            let batch: Vec<(&str, Option<Value>)> = asked
                .iter()
                .map(|d| ("device-list-properties", Some(json!({"typename": d}))))
                .collect();
            let (replies, times) = qmp.execute_batch_timed(&batch).await?;
            raw.times.extend(times);
            // One the emulator refuses all the same is left out.
            raw.props = asked
                .into_iter()
                .zip(replies)
                .filter_map(|(d, r)| Some((d.clone(), answered(r)?)))
                .collect();
        }
        Ok(raw)
    })
    .await?;
    let report = ProbeReport {
        exec,
        passes: Vec::new(),
        startup: raw.startup,
        commands: raw.times.clone(),
    };
    let caps = build(path, req, raw, started_at, exec.duration, exec.execs).map_err(|source| {
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
    let (devices, device_aliases, devices_source) = match (raw.device_help, &raw.types) {
        (Some(d), _) => (d.names, d.aliases, Some(DevicesSource::DeviceAddHelp)),
        (None, Some(t)) => (
            parse::type_names(t)?,
            BTreeMap::new(),
            Some(DevicesSource::QomListTypes),
        ),
        (None, None) => (Vec::new(), BTreeMap::new(), None),
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
        cpu_models: match (&raw.cpus, &raw.cpu_types) {
            (Some(defs), _) => parse::cpu_models(defs)?,
            (None, Some(types)) => parse::cpu_types(types)?,
            (None, None) => Vec::new(),
        },
        devices,
        device_aliases,
        devices_source,
        device_properties,
        commands: raw
            .commands
            .as_ref()
            .map(parse::commands)
            .transpose()?
            .unwrap_or_default(),
        other_accels: BTreeMap::new(),
        probe: ProbeInfo {
            started_at: crate::support::timefmt::rfc3339(started_at),
            duration_seconds: duration.as_secs_f64(),
            execs,
        },
    })
}
