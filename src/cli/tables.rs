//! What `qcapsd query` asks the agent for, and its answers as aligned
//! tables for people (`--json` prints them as served).

use crate::agent::render::DeviceDoc;
use crate::api::bodies::EmulatorRow;
use crate::api::client::{QueryError, percent_encode};
use crate::qemu::caps::{CpuModel, Emulator, Machine, ProbeInfo, QemuVersion};
use crate::verdicts::changes::Change;
use crate::verdicts::check::CheckRequest;
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
        let e = |s: &str| percent_encode(s);
        match self {
            What::Emulators => "/v1/emulators".to_owned(),
            What::Document(n) => format!("/v1/emulators/{}", e(n)),
            What::Machines(n) => format!("/v1/emulators/{}/machines", e(n)),
            What::CpuModels(n) => format!("/v1/emulators/{}/cpu-models", e(n)),
            What::Devices(n) => format!("/v1/emulators/{}/devices", e(n)),
            What::Device(n, d) => format!("/v1/emulators/{}/devices/{}", e(n), e(d)),
            What::Commands(n) => format!("/v1/emulators/{}/commands", e(n)),
            What::Changes(n) => format!("/v1/emulators/{}/changes", e(n)),
        }
    }
}

/// The path of `GET /v1/check` for a question.
pub fn check_path(emulator: Option<&str>, arch: Option<&str>, req: &CheckRequest) -> String {
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
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if query.is_empty() {
        "/v1/check".to_owned()
    } else {
        format!("/v1/check?{}", query.join("&"))
    }
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
