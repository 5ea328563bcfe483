//! How the API answers: the middleware every request passes (request
//! metrics, the body limit), the response builders (JSON, errors,
//! pre-rendered parts with their ETag and 304), and lookups of an
//! emulator turned into answers or error responses.

use super::Ctx;
use super::bodies::{EmulatorState, ErrorBody};
use super::query::QueryError;
use crate::agent::emulators::{Emulators, Entry};
use crate::agent::render::Part;
use crate::cache::{Answer, Lookup, LookupError, LookupErrorOf};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Serialize;
use std::time::Instant;

/// Counts and times every request by route template and status code (the
/// series resolved once, [`crate::agent::metrics::HttpSeries`]), after reading its
/// body, if it has one, within the limits ([`limit_body`]).
pub(super) async fn observe(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let resp = if http_body::Body::is_end_stream(req.body()) {
        next.run(req).await
    } else {
        // The one route whose body is a document gets a document's room.
        let against = super::routes::Id::VmsAgainst.template();
        let max = match matched.as_ref().map(MatchedPath::as_str) {
            Some(p) if p == against => ctx.max_document_bytes,
            _ => ctx.max_body_bytes,
        };
        limit_body(&ctx, max, req, next).await
    };
    ctx.http.observe(
        matched.as_ref().map(MatchedPath::as_str),
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}

/// Reads a request body before any handler: at most `max` bytes whether
/// sent with a length or chunked (413), and within `body_timeout` (408).
/// Reading it here means the limit holds for every request, whether its
/// route takes a body or not.
async fn limit_body(ctx: &Ctx, max: usize, req: Request, next: Next) -> Response {
    let too_large = || {
        closing(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body over {max} bytes"),
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let read = http_body_util::Limited::new(body, max).collect();
    match tokio::time::timeout(ctx.body_timeout, read).await {
        Ok(Ok(collected)) => {
            next.run(Request::from_parts(parts, Body::from(collected.to_bytes())))
                .await
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => too_large(),
        Ok(Err(e)) => closing(json_error(
            StatusCode::BAD_REQUEST,
            &format!("bad request body: {e}"),
        )),
        Err(_) => closing(json_error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )),
    }
}

/// Marks a response as the connection's last (its request body was not
/// read to the end, so the connection cannot carry another request).
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// `{"error": ..., "status": N}`.
pub fn json_error(status: StatusCode, msg: &str) -> Response {
    error_with_state(status, msg, None)
}

pub(super) fn error_with_state(
    status: StatusCode,
    msg: &str,
    state: Option<crate::cache::State>,
) -> Response {
    let state = state.map(EmulatorState::from);
    json_value(
        status,
        &ErrorBody {
            error: msg.to_owned(),
            status: status.as_u16(),
            state,
        },
    )
}

pub(crate) fn json_value(status: StatusCode, v: &impl Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"error\":\"cannot encode the answer: {e}\",\"status\":500}}"),
        )
            .into_response(),
    }
}

/// Whether `If-None-Match` names `etag` (or `*`).
pub fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        })
}

/// A pre-rendered part: 304 when the client has it, else the bytes.
pub(super) fn part_response(
    part: &Part,
    headers: &HeaderMap,
    answer_kind: &'static str,
) -> Response {
    let mut resp = etagged(part, headers);
    resp.headers_mut()
        .insert("qcapsd-cache", HeaderValue::from_static(answer_kind));
    resp
}

/// `part` with its ETag: 304 when the client has it, else the bytes.
pub(super) fn etagged(part: &Part, headers: &HeaderMap) -> Response {
    // The tag is hex digits, a dash and quotes: always a valid value.
    let etag = HeaderValue::from_maybe_shared(part.etag.clone())
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    let mut resp = if etag_matches(headers, part.etag_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(part.body.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(super) fn bad_path(e: PathRejection) -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        &format!("bad path: {}", e.body_text()),
    )
}

pub(super) async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such route (see /)")
}

pub(super) async fn method_not_allowed() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

pub(crate) fn bad_query(e: &QueryError) -> Response {
    json_error(StatusCode::BAD_REQUEST, &e.to_string())
}

/// Looks up a configured emulator; every failure is a JSON error. Only a
/// lookup that must wait on a probe is bounded by `request_timeout` (the
/// probe itself goes on for the next caller).
pub(crate) async fn lookup(ctx: &Ctx, name: &str) -> Result<Answer<Entry>, Response> {
    let answer = match ctx.agent.cache.begin(name) {
        Ok(Lookup::Ready(a)) => Ok(a),
        Ok(Lookup::Waiting(w)) => match tokio::time::timeout(ctx.request_timeout, w.wait()).await {
            Ok(r) => r,
            Err(_) => {
                return Err(json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "emulator '{name}' is being probed and did not finish within {}s; retry shortly",
                        ctx.request_timeout.as_secs_f64()
                    ),
                ));
            }
        },
        Err(e) => Err(e),
    };
    answer.map_err(|e| lookup_error(ctx, name, &e))
}

pub(super) fn lookup_error(ctx: &Ctx, name: &str, e: &LookupErrorOf<Emulators>) -> Response {
    let unavailable = |msg: String| json_error(StatusCode::SERVICE_UNAVAILABLE, &msg);
    match e {
        LookupError::Unknown => json_error(
            StatusCode::NOT_FOUND,
            &format!(
                "no emulator named '{}' (see /v1/emulators)",
                printable(name)
            ),
        ),
        LookupError::Missing => {
            let path = ctx
                .agent
                .cache
                .handler()
                .view()
                .table
                .get(name)
                .map(|s| s.path.display().to_string())
                .unwrap_or_default();
            unavailable(format!("emulator '{name}': binary {path} is missing"))
        }
        LookupError::Inaccessible(why) => unavailable(format!("emulator '{name}': {why}")),
        LookupError::Failed(msg) => unavailable(format!("emulator '{name}': probe failed: {msg}")),
        LookupError::Cancelled => unavailable("shutting down".to_owned()),
    }
}

/// A name echoed in an error: bounded and without control characters.
pub(crate) fn printable(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

pub(super) fn answer_kind(a: &Answer<Entry>) -> &'static str {
    match (a.hit, a.stale) {
        (_, true) => "stale",
        (true, false) => "hit",
        (false, false) => "miss",
    }
}
