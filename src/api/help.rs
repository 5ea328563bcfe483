//! `GET /v1/emulators/{name}/help?argv0=NAME&arg=A&arg=B…`: QEMU's own
//! answer to a pure query (a help or version request,
//! [`crate::qemu::cmdline`]), as the shims ask for it: stdout and stderr
//! byte for byte (base64) and the exit status, recorded once per argument
//! list under the emulator's current fingerprint ([`crate::agent::memo`]).
//!
//! The query is checked before anything else: an argument list that is
//! not a pure query, or an `argv0` that is not a plain name, is a 400 and
//! reaches neither QEMU nor the memo. Past the memo's bounds the answer is
//! 507 (the caller runs QEMU itself); a recording that failed is 502.

use super::Ctx;
use super::bodies::HelpAnswer;
use super::handlers::EmulatorPath;
use super::query::{self, QueryError};
use super::respond::{bad_query, json_error, json_value, lookup, printable};
use crate::agent::memo::{Answer, MemoError, QueryKey, Source};
use crate::qemu::cmdline;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The parameters the route takes.
pub const PARAMS: &str = "argv0|arg";

/// The answer past the memo's bounds: the caller runs QEMU itself (the
/// shim knows it by this status).
pub const NOT_KEPT: StatusCode = StatusCode::INSUFFICIENT_STORAGE;

/// The most arguments one query has.
pub const MAX_ARGS: usize = 32;

/// A query's argv[0] and arguments, if they are a pure query.
pub fn parse(raw: Option<&str>) -> Result<QueryKey, QueryError> {
    let pairs = query::parse(raw)?;
    let pairs = query::only(&pairs, PARAMS, &["arg"])?;
    let argv0 = match query::value(pairs, "argv0") {
        Some(a) if cmdline::is_plain_name(a) => a.to_owned(),
        Some(a) => {
            return Err(QueryError::BadValue(
                "argv0",
                format!("'{}' is not a plain name", printable(a)),
            ));
        }
        None => return Err(QueryError::BadValue("argv0", "missing".to_owned())),
    };
    let args: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "arg")
        .map(|(_, v)| v.clone())
        .collect();
    if args.len() > MAX_ARGS {
        return Err(QueryError::BadValue("arg", format!("more than {MAX_ARGS}")));
    }
    if !cmdline::is_pure_query(&args) {
        return Err(QueryError::BadValue(
            "arg",
            "not a pure query: only help and version requests are answered (see docs/shims.md)"
                .to_owned(),
        ));
    }
    Ok(QueryKey { argv0, args })
}

/// The request header with which a caller asks to be acknowledged at
/// once: the answer is then `200` with this header, sent before any work,
/// and its body, once ready, is the answer or the error body (whose
/// `status` is the status it would have had). The shims ask so: a frozen
/// agent (stopped, a debugger, a stalled host) still accepts connections
/// but sends nothing, which a shim tells apart from a recording that takes
/// its time.
pub const ACK_HEADER: &str = "qcapsd-ack";

pub(super) async fn handler(
    State(ctx): State<Ctx>,
    EmulatorPath { name, .. }: EmulatorPath,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let key = match parse(q.as_deref()) {
        Ok(k) => k,
        Err(e) => return bad_query(&e),
    };
    if !headers.contains_key(ACK_HEADER) {
        return answer(&ctx, &name, key).await;
    }
    // Acknowledged: an answer that is ready now (from the memo) goes out
    // whole, at once; one that waits (a probe, a recording) gets its head
    // now and its body when ready.
    let mut work = Box::pin(async move { answer(&ctx, &name, key).await });
    let waker = std::task::Waker::noop();
    if let std::task::Poll::Ready(mut resp) =
        std::future::Future::poll(work.as_mut(), &mut std::task::Context::from_waker(waker))
    {
        resp.headers_mut()
            .insert(ACK_HEADER, HeaderValue::from_static("1"));
        return resp;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let resp = work.await;
        if let Ok(body) = axum::body::to_bytes(resp.into_body(), usize::MAX).await {
            let _ = tx.send(body);
        }
    });
    let mut resp = Response::new(Body::new(Later(Some(rx))));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(ACK_HEADER, HeaderValue::from_static("1"));
    resp
}

/// A body that is one chunk, sent when it is ready (an answer computed
/// after its head went out); empty if it never comes (the agent stops).
struct Later(Option<tokio::sync::oneshot::Receiver<Bytes>>);

impl http_body::Body for Later {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        let Some(rx) = self.0.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        match std::pin::Pin::new(rx).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(r) => {
                self.0 = None;
                std::task::Poll::Ready(r.ok().map(|b| Ok(http_body::Frame::data(b))))
            }
        }
    }
}

/// QEMU's answer to `key` of emulator `name`, or an error response.
async fn answer(ctx: &Ctx, name: &str, key: QueryKey) -> Response {
    let entry = match lookup(ctx, name).await {
        Ok(a) => a.data,
        Err(r) => return r,
    };
    let result = ctx
        .agent
        .cache
        .handler()
        .answer(name, &entry.memo, key.clone())
        .await;
    ctx.agent.metrics.record_shim(name, &result);
    let body = |answer: &Answer, source: Source| HelpAnswer {
        argv0: key.argv0.clone(),
        args: key.args.clone(),
        stdout: answer.encoded.0.clone(),
        stderr: answer.encoded.1.clone(),
        exit_code: answer.exit_code,
        source: match source {
            Source::Memo => "memo",
            Source::Recorded => "recorded",
        }
        .to_owned(),
        exec_seconds: answer.exec_seconds,
    };
    match result {
        // A replay sends the bytes rendered at the first one.
        Ok((answer, Source::Memo)) => {
            let bytes = answer.replayed.get_or_init(|| {
                serde_json::to_vec(&body(&answer, Source::Memo))
                    .map(Bytes::from)
                    .unwrap_or_default()
            });
            ([(header::CONTENT_TYPE, "application/json")], bytes.clone()).into_response()
        }
        Ok((answer, source)) => json_value(StatusCode::OK, &body(&answer, source)),
        Err(e @ (MemoError::Full(_) | MemoError::TooLarge(_))) => json_error(
            NOT_KEPT,
            &format!("emulator '{name}': not kept: {e}; run QEMU"),
        ),
        Err(e) => json_error(
            StatusCode::BAD_GATEWAY,
            &format!("emulator '{name}': cannot record: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pure_queries_under_a_plain_name_are_taken() {
        let k = parse(Some("argv0=kvm&arg=-enable-kvm&arg=--help")).unwrap();
        assert_eq!(
            (k.argv0.as_str(), k.args.as_slice()),
            ("kvm", &["-enable-kvm".to_owned(), "--help".to_owned()][..])
        );
        let k = parse(Some(
            "argv0=qemu-system-x86_64&arg=-device&arg=virtio-net-pci%2Chelp",
        ))
        .unwrap();
        assert_eq!(k.args[1], "virtio-net-pci,help");
        for bad in [
            "arg=-help",
            "argv0=&arg=-help",
            "argv0=..%2Fsh&arg=-help",
            "argv0=q&arg=-m&arg=1024",
            "argv0=q",
            "argv0=q&arg=-cpu&arg=help&arg=-qmp&arg=unix%3A%2Ftmp%2Fs",
            "argv0=q&arg=-help%00",
            "argv0=q&arg=-help&x=1",
            "argv0=q&argv0=r&arg=-help",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..40).map(|_| "arg=-S".to_owned()).collect();
        assert!(parse(Some(&format!("argv0=q&arg=-help&{}", many.join("&")))).is_err());
    }
}
