//! The API's client: GETs over HTTP/1.1 to a running agent, on TCP or its
//! unix socket, with a bounded wait; errors say whether the agent could not
//! be reached (exit 69 for the CLI) or answered with an error. Used by the
//! command line, `compare`'s agent URLs and the systemd watchdog.

use crate::api::bodies::ErrorBody;
use crate::config::Config;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
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

    /// Where an agent running under `cfg` answers queries: its TCP
    /// listener, else its unix socket (`None`: neither).
    pub fn for_config(cfg: &Config) -> Option<Target> {
        match (cfg.listen, &cfg.unix_socket) {
            (Some(addr), _) => Some(Target::Tcp {
                authority: addr.to_string(),
            }),
            (None, Some(path)) => Some(Target::Unix(path.0.clone())),
            (None, None) => None,
        }
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

pub use crate::api::routes::percent_encode;

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

/// POSTs `body` (JSON) to `path` within `timeout`; returns the body of a
/// 2xx answer.
pub async fn post(
    target: &Target,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, QueryError> {
    request(target, path, None, Some(body.into()), timeout)
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
    request(target, path, if_none_match, None, timeout).await
}

/// One request: a GET, or a POST of `body`.
async fn request(
    target: &Target,
    path: &str,
    if_none_match: Option<&str>,
    body: Option<Bytes>,
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
        let method = match body {
            Some(_) => hyper::Method::POST,
            None => hyper::Method::GET,
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("qcapsd-query/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(tag) = if_none_match {
            req = req.header(hyper::header::IF_NONE_MATCH, tag);
        }
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.clone().unwrap_or_default()))
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
) -> hyper::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Follows `path` as it changes: the answer, then each new one, holding
/// one long-poll (`?wait=`) at a time, each answer handed to `show`.
/// Returns at the first error, or when `show` fails.
pub async fn follow<E: From<QueryError>>(
    target: &Target,
    path: &str,
    mut show: impl FnMut(&Bytes) -> Result<(), E>,
) -> Result<(), E> {
    // As long as the agent holds one by default.
    const WAIT: Duration = crate::config::defaults::MAX_WAIT;
    let path = format!("{path}?wait={}s", WAIT.as_secs());
    let mut etag: Option<String> = None;
    loop {
        let fetched = fetch(
            target,
            &path,
            etag.as_deref(),
            WAIT + Duration::from_secs(60),
        )
        .await?;
        if fetched.status == 304 {
            continue;
        }
        etag = fetched.etag;
        show(&fetched.body)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_forms() {
        assert!(
            matches!(Target::from_addr("http://127.0.0.1:9733/").unwrap(), Target::Tcp { authority } if authority == "127.0.0.1:9733")
        );
        assert!(Target::from_addr("https://x:1").is_err());
        assert!(Target::from_addr("http://x:1/v1").is_err());
    }
}
