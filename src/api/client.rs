//! `qcapsd query`: asks a running agent over HTTP (TCP or its unix socket)
//! and prints aligned tables for people or the raw JSON for scripts.

use crate::agent::render::DeviceDoc;
use crate::api::bodies::{EmulatorRow, ErrorBody};
use crate::qemu::caps::{CpuModel, Emulator, Machine, ProbeInfo, QemuVersion};
use crate::verdicts::changes::Change;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// How long a query may take (the first one after a change waits on a
/// probe).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the agent is.
#[derive(Debug, Clone)]
pub enum Target {
    /// `http://host:port`
    Tcp {
        authority: String,
    },
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("--addr {0}: the agent speaks plain HTTP on a local address")]
    Https(String),
    #[error("--addr {0}: expected http://HOST:PORT")]
    Malformed(String),
}

impl Target {
    /// Parses `--addr`: `http://127.0.0.1:9733`, or a bare `host:port`.
    pub fn from_addr(addr: &str) -> Result<Target, AddrError> {
        let rest = addr.strip_prefix("http://").unwrap_or(addr);
        if addr.starts_with("https://") {
            return Err(AddrError::Https(addr.to_owned()));
        }
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(AddrError::Malformed(addr.to_owned()));
        }
        Ok(Target::Tcp {
            authority: authority.to_owned(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Tcp { authority } => format!("http://{authority}"),
            Target::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Exit 69.
    #[error("cannot reach the agent at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    /// The agent answered with an error.
    #[error("{message} (HTTP {status})")]
    Http { status: u16, message: String },
    #[error("bad answer from the agent: {0}")]
    Bad(String),
}

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

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The path of `GET /v1/check` for a question.
pub fn check_path(
    emulator: Option<&str>,
    arch: Option<&str>,
    req: &crate::verdicts::check::CheckRequest,
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
    add("accel", req.accel.as_deref());
    let cpus = req.cpus.map(|n| n.to_string());
    add("cpus", cpus.as_deref());
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if query.is_empty() {
        "/v1/check".to_owned()
    } else {
        format!("/v1/check?{}", query.join("&"))
    }
}

/// A verdict as text: the answer, what it is about, then each problem and
/// warning on its own line.
pub fn render_verdict(v: &crate::verdicts::check::Verdict) -> String {
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
    for p in &v.problems {
        let _ = writeln!(out, "  problem: {p}");
    }
    for w in &v.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    out
}

/// An answer as the client got it.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Bytes,
}

/// GETs `path` from the agent; returns the body of a 2xx answer.
pub async fn get(target: &Target, path: &str) -> Result<Bytes, QueryError> {
    fetch(target, path, None, QUERY_TIMEOUT)
        .await
        .map(|f| f.body)
}

/// GETs `path`, with `If-None-Match: if_none_match` when given, within
/// `timeout`. A 2xx or 304 answer is returned; others are errors.
pub async fn fetch(
    target: &Target,
    path: &str,
    if_none_match: Option<&str>,
    timeout: Duration,
) -> Result<Fetched, QueryError> {
    let unreachable = |reason: String| QueryError::Unreachable {
        target: target.describe(),
        reason,
    };
    let fut = async {
        let (host, send) = match target {
            Target::Tcp { authority } => {
                let s = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                (
                    authority.clone(),
                    handshake(s).await.map_err(|e| unreachable(e.to_string()))?,
                )
            }
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                (
                    "localhost".to_owned(),
                    handshake(s).await.map_err(|e| unreachable(e.to_string()))?,
                )
            }
        };
        let mut send = send;
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("qcapsd-query/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(tag) = if_none_match {
            req = req.header(hyper::header::IF_NONE_MATCH, tag);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| QueryError::Bad(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(hyper::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if status.is_success() || status == hyper::StatusCode::NOT_MODIFIED {
            Ok(Fetched {
                status: status.as_u16(),
                etag,
                body,
            })
        } else {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            Err(QueryError::Http {
                status: status.as_u16(),
                message,
            })
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(unreachable(format!(
                "no answer within {}s",
                timeout.as_secs()
            )))
        })
}

async fn handshake<S>(
    stream: S,
) -> hyper::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
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

    #[test]
    fn addr_forms() {
        assert!(
            matches!(Target::from_addr("http://127.0.0.1:9733/").unwrap(), Target::Tcp { authority } if authority == "127.0.0.1:9733")
        );
        assert!(Target::from_addr("https://x:1").is_err());
        assert!(Target::from_addr("http://x:1/v1").is_err());
    }
}
