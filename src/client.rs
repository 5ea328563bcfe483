//! `qcapsd query`: asks a running agent over HTTP (TCP or its unix socket)
//! and prints aligned tables for people or the raw JSON for scripts.

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

impl Target {
    /// Parses `--addr`: `http://127.0.0.1:9733`, or a bare `host:port`.
    pub fn from_addr(addr: &str) -> Result<Target, String> {
        let rest = addr.strip_prefix("http://").unwrap_or(addr);
        if addr.starts_with("https://") {
            return Err(format!(
                "--addr {addr}: the agent speaks plain HTTP on a local address"
            ));
        }
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("--addr {addr}: expected http://HOST:PORT"));
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

/// GETs `path` from the agent; returns the body of a 2xx answer.
pub async fn get(target: &Target, path: &str) -> Result<Bytes, QueryError> {
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
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("qcapsd-query/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| QueryError::Bad(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            Err(QueryError::Http {
                status: status.as_u16(),
                message,
            })
        }
    };
    tokio::time::timeout(QUERY_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(unreachable(format!(
                "no answer within {}s",
                QUERY_TIMEOUT.as_secs()
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

/// Renders an answer as text for people.
pub fn render(what: &What, body: &[u8]) -> Result<String, QueryError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| QueryError::Bad(e.to_string()))?;
    let s = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        other => other.to_string(),
    };
    let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
    Ok(match what {
        What::Emulators => table(
            &["NAME", "STATE", "VERSION", "ARCH", "PROBED AT", "PATH"],
            arr(&v)
                .iter()
                .map(|e| {
                    let mut state = s(&e["state"]);
                    if e["stale"] == Value::Bool(true) {
                        state.push_str(" (stale)");
                    }
                    vec![
                        s(&e["name"]),
                        state,
                        s(&e["version"]),
                        s(&e["arch"]),
                        s(&e["probed_at"]),
                        s(&e["path"]),
                    ]
                })
                .collect(),
        ),
        What::Document(_) => {
            let count = |k: &str| v[k].as_array().map_or(0, Vec::len).to_string();
            let usable = v["cpu_models"].as_array().map_or(0, |a| {
                a.iter()
                    .filter(|c| c["usable"] == Value::Bool(true))
                    .count()
            });
            table(
                &["FIELD", "VALUE"],
                vec![
                    vec!["name".into(), s(&v["emulator"]["name"])],
                    vec!["path".into(), s(&v["emulator"]["path"])],
                    vec!["version".into(), s(&v["qemu"]["version"])],
                    vec!["package".into(), s(&v["qemu"]["package"])],
                    vec!["arch".into(), s(&v["arch"])],
                    vec!["accel".into(), s(&v["accel"])],
                    vec!["machines".into(), count("machines")],
                    vec![
                        "cpu models".into(),
                        format!("{} ({usable} usable)", count("cpu_models")),
                    ],
                    vec!["devices".into(), count("devices")],
                    vec!["commands".into(), count("commands")],
                    vec!["probed at".into(), s(&v["probe"]["started_at"])],
                ],
            )
        }
        What::Machines(_) => table(
            &["NAME", "ALIAS", "DEFAULT", "MAX CPUS", "DEPRECATED"],
            arr(&v)
                .iter()
                .map(|m| {
                    vec![
                        s(&m["name"]),
                        s(&m["alias"]),
                        s(&m["is_default"]),
                        s(&m["cpu_max"]),
                        s(&m["deprecated"]),
                    ]
                })
                .collect(),
        ),
        What::CpuModels(_) => table(
            &["NAME", "USABLE", "BLOCKERS"],
            arr(&v)
                .iter()
                .map(|c| {
                    let blockers: Vec<String> =
                        arr(&c["unavailable_features"]).iter().map(s).collect();
                    vec![s(&c["name"]), s(&c["usable"]), blockers.join(" ")]
                })
                .collect(),
        ),
        What::Devices(_) | What::Commands(_) => arr(&v).iter().map(|d| s(d) + "\n").collect(),
        What::Device(_, _) => match v["properties"].as_array() {
            Some(props) => table(
                &["PROPERTY", "TYPE", "DEFAULT"],
                props
                    .iter()
                    .map(|p| vec![s(&p["name"]), s(&p["type"]), s(&p["default_value"])])
                    .collect(),
            ),
            None => format!(
                "{}: present; its properties are not among those read (device_properties in the config)\n",
                s(&v["name"])
            ),
        },
    })
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
