//! What `qcapsd query` asks the agent for, and its answers as aligned
//! tables for people (`--json` prints them as served).

use crate::agent::render::DeviceDoc;
use crate::api::bodies::EmulatorRow;
use crate::api::client::{QueryError, percent_encode};
use crate::api::routes::Id;
use crate::qemu::caps::{CpuModel, Emulator, Machine, ProbeInfo, QemuVersion};
use crate::verdicts::changes::Change;
use crate::verdicts::check::CheckRequest;
use crate::verdicts::vms::VmList;
use serde_json::Value;
use std::fmt::Write as _;

/// What to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Emulators,
    Document(String),
    Machines(String),
    CpuModels(String),
    Devices(String),
    Device(String, String),
    Commands(String),
    /// What re-probes found changed.
    Changes(String),
}

impl What {
    pub fn from_args(emulator: Option<String>, part: Option<String>) -> What {
        match (emulator, part) {
            (None, _) => What::Emulators,
            (Some(e), None) => What::Document(e),
            (Some(e), Some(p)) => match p.as_str() {
                "machines" => What::Machines(e),
                "cpu-models" => What::CpuModels(e),
                "devices" => What::Devices(e),
                "commands" => What::Commands(e),
                "changes" => What::Changes(e),
                _ => What::Device(e, p),
            },
        }
    }

    pub fn path(&self) -> String {
        match self {
            What::Emulators => Id::Emulators.path(&[]),
            What::Document(n) => Id::Emulator.path(&[n]),
            What::Machines(n) => Id::Machines.path(&[n]),
            What::CpuModels(n) => Id::CpuModels.path(&[n]),
            What::Devices(n) => Id::Devices.path(&[n]),
            What::Device(n, d) => Id::Device.path(&[n, d]),
            What::Commands(n) => Id::Commands.path(&[n]),
            What::Changes(n) => Id::Changes.path(&[n]),
        }
    }
}

/// The path of `GET /v1/check` for a question (`verify`: QEMU confirms
/// the verdict).
pub fn check_path(
    emulator: Option<&str>,
    arch: Option<&str>,
    req: &CheckRequest,
    verify: bool,
) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    let mut add = |k, v: Option<&str>| {
        if let Some(v) = v {
            pairs.push((k, percent_encode(v)));
        }
    };
    add("emulator", emulator);
    add("arch", arch);
    add("machine", req.machine.as_deref());
    add("cpu", req.cpu.as_deref());
    for d in &req.devices {
        add("device", Some(d));
    }
    add("accel", req.accel.map(|a| a.as_str()));
    let cpus = req.cpus.map(|n| n.to_string());
    add("cpus", cpus.as_deref());
    add("verify", verify.then_some("true"));
    with_query(Id::Check.path(&[]), &pairs)
}

/// `path?k=v&…` (values already encoded), or `path` alone.
fn with_query(path: String, pairs: &[(&str, String)]) -> String {
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// The path of `qcapsd vms`'s question: this host (`GET /v1/vms`) or
/// another host's document, named `label` (`POST /v1/vms/against`).
pub fn vms_path(against: Option<&str>, verify: bool) -> String {
    let mut pairs = Vec::new();
    if let Some(label) = against {
        pairs.push(("label", percent_encode(label)));
    }
    if verify {
        pairs.push(("verify", "true".to_owned()));
    }
    let id = if against.is_some() {
        Id::VmsAgainst
    } else {
        Id::Vms
    };
    with_query(id.path(&[]), &pairs)
}

/// The fields of the full document a summary shows (the document as
/// served also carries cache metadata).
#[derive(serde::Deserialize)]
struct DocSummary {
    emulator: Emulator,
    qemu: Option<QemuVersion>,
    arch: Option<String>,
    accel: String,
    machines: Vec<Machine>,
    cpu_models: Vec<CpuModel>,
    devices: Vec<String>,
    commands: Vec<String>,
    probe: ProbeInfo,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, QueryError> {
    serde_json::from_slice(body).map_err(|e| QueryError::Bad(e.to_string()))
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Renders an answer as text for people.
pub fn render(what: &What, body: &[u8]) -> Result<String, QueryError> {
    Ok(match what {
        What::Emulators => emulators_table(&parse::<Vec<EmulatorRow>>(body)?),
        What::Document(_) => {
            let d: DocSummary = parse(body)?;
            let usable = d
                .cpu_models
                .iter()
                .filter(|c| c.usable == Some(true))
                .count();
            let q = d.qemu.as_ref();
            table(
                &["FIELD", "VALUE"],
                vec![
                    vec!["name".into(), d.emulator.name],
                    vec!["path".into(), d.emulator.path],
                    vec!["version".into(), or_dash(q.map(|q| &q.version))],
                    vec!["package".into(), or_dash(q.map(|q| &q.package))],
                    vec!["arch".into(), or_dash(d.arch)],
                    vec!["accel".into(), d.accel],
                    vec!["machines".into(), d.machines.len().to_string()],
                    vec![
                        "cpu models".into(),
                        format!("{} ({usable} usable)", d.cpu_models.len()),
                    ],
                    vec!["devices".into(), d.devices.len().to_string()],
                    vec!["commands".into(), d.commands.len().to_string()],
                    vec!["probed at".into(), d.probe.started_at],
                ],
            )
        }
        What::Machines(_) => table(
            &["NAME", "ALIAS", "DEFAULT", "MAX CPUS", "DEPRECATED"],
            parse::<Vec<Machine>>(body)?
                .into_iter()
                .map(|m| {
                    vec![
                        m.name,
                        or_dash(m.alias),
                        yes_no(m.is_default),
                        m.cpu_max.to_string(),
                        yes_no(m.deprecated),
                    ]
                })
                .collect(),
        ),
        What::CpuModels(_) => table(
            &["NAME", "USABLE", "BLOCKERS"],
            parse::<Vec<CpuModel>>(body)?
                .into_iter()
                .map(|c| {
                    vec![
                        c.name,
                        or_dash(c.usable.map(yes_no)),
                        c.unavailable_features.join(" "),
                    ]
                })
                .collect(),
        ),
        What::Changes(_) => table(
            &["AT", "REASON", "BREAKING", "SUMMARY"],
            parse::<Vec<Change>>(body)?
                .into_iter()
                .map(|c| vec![c.at, c.reason, yes_no(c.breaking), c.summary])
                .collect(),
        ),
        What::Devices(_) | What::Commands(_) => parse::<Vec<String>>(body)?
            .into_iter()
            .map(|d| d + "\n")
            .collect(),
        What::Device(_, _) => {
            let d: DeviceDoc = parse(body)?;
            match d.properties {
                Some(props) => table(
                    &["PROPERTY", "TYPE", "DEFAULT"],
                    props
                        .into_iter()
                        .map(|p| {
                            let default = p.default_value.map(|v| match v {
                                Value::String(s) => s,
                                other => other.to_string(),
                            });
                            vec![p.name, p.type_, or_dash(default)]
                        })
                        .collect(),
                ),
                None => format!(
                    "{}: present; its properties are not among those read (device_properties in the config)\n",
                    d.name
                ),
            }
        }
    })
}

/// `qcapsd query`'s list of emulators.
pub fn emulators_table(rows: &[EmulatorRow]) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    table(
        &["NAME", "STATE", "VERSION", "ARCH", "PROBED AT", "PATH"],
        rows.iter()
            .map(|r| {
                let mut state = r.state.as_str().to_owned();
                if r.stale {
                    state.push_str(" (stale)");
                }
                vec![
                    r.name.clone(),
                    state,
                    dash(&r.version),
                    dash(&r.arch),
                    dash(&r.probed_at),
                    r.path.clone(),
                ]
            })
            .collect(),
    )
}

/// `qcapsd vms`: a line per VM, then what was left out.
pub fn vms_table(list: &VmList) -> String {
    let mut out = String::new();
    if let Some(a) = &list.against {
        let _ = writeln!(
            out,
            "against {} ({} {}, {})",
            a.label,
            a.emulator,
            a.qemu_version.as_deref().unwrap_or("?"),
            a.arch.as_deref().unwrap_or("?")
        );
    }
    if list.vms.is_empty() {
        out.push_str("no running VMs of the configured emulators\n");
    } else {
        out.push_str(&table(
            &[
                "VM", "PID", "EMULATOR", "MACHINE", "CPU", "VERDICT", "PROBLEM",
            ],
            list.vms
                .iter()
                .map(|v| {
                    let c = v.command.as_ref();
                    let mut verdict = v.verdict.as_str().to_owned();
                    if v.verified {
                        verdict.push_str(" (verified)");
                    }
                    vec![
                        or_dash(v.name.as_ref()),
                        v.pid.to_string(),
                        v.emulator.clone(),
                        or_dash(c.and_then(|c| c.machine.as_ref())),
                        or_dash(c.and_then(|c| c.cpu.as_ref())),
                        verdict,
                        v.problems
                            .first()
                            .or(v.warnings.first().filter(|_| v.binary_replaced))
                            .cloned()
                            .unwrap_or_default(),
                    ]
                })
                .collect(),
        ));
    }
    let s = &list.skipped;
    for (n, what) in [
        (
            s.unreadable,
            "process(es) named like an emulator could not be read (another user's: the agent needs root or CAP_SYS_PTRACE to see them)",
        ),
        (s.gone, "VM(s) exited while being read"),
        (
            s.not_vms,
            "QEMU process(es) with -machine none (probes, not VMs) left out",
        ),
        (
            s.other_arch,
            "VM(s) of another architecture than the document's left out",
        ),
    ] {
        if n > 0 {
            let _ = writeln!(out, "{n} {what}");
        }
    }
    if s.hidden {
        out.push_str("other users' processes are hidden from the agent (its /proc has hidepid, as systemd's ProtectProc=invisible sets): their VMs are not seen (see docs/vms.md: \"Seeing other users' VMs\")\n");
    }
    out
}

/// Left-aligned columns, two spaces apart, no trailing spaces.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for r in std::iter::once(&head).chain(rows.iter()) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "X"],
            vec![
                vec!["pc-i440fx-10.0".into(), "yes".into()],
                vec!["q35".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME            X\npc-i440fx-10.0  yes\nq35\n");
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(
            What::Device("x86_64".into(), "a/b c".into()).path(),
            "/v1/emulators/x86_64/devices/a%2Fb%20c"
        );
        assert_eq!(
            What::from_args(Some("e".into()), Some("virtio-blk-pci".into())),
            What::Device("e".into(), "virtio-blk-pci".into())
        );
    }
}
