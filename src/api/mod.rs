//! The local query API (HTTP/1.1, JSON), served on loopback TCP, an
//! optional unix socket, and an optional metrics-only address.
//!
//! Endpoints:
//! - `GET /` — a small HTML page linking the rest
//! - `GET /v1/emulators` — every emulator and its state
//! - `GET /v1/emulators/{name}` — the capabilities document with cache metadata
//! - `GET /v1/emulators/{name}/machines`, `/cpu-models`, `/devices`,
//!   `/devices/{device}`, `/commands` — one part of it
//! - `POST /v1/emulators/{name}/revalidate` — forces one re-probe (202),
//!   at most one per `forced_probe_interval` (else 429 with Retry-After)
//! - `GET /v1/emulators/{name}/changes` — what re-probes found changed,
//!   newest first; `GET /v1/changes?since=RFC3339` — every emulator's
//! - `GET /v1/check?emulator=|arch=&machine=&cpu=&device=…&accel=&cpus=` —
//!   can this host run such a VM? a verdict with problems and warnings
//!   ([`check`], [`crate::verdicts::check`])
//! - `GET /v1/host` — the host facts the fingerprint uses, and the machine
//! - `GET /v1/openapi.json` — the OpenAPI 3.1 description of all of this
//!   ([`crate::api::openapi`])
//! - `GET /healthz`, `GET /readyz` — liveness, readiness
//! - `GET /metrics` — Prometheus text format
//!
//! Capabilities responses are bytes rendered once per cache entry, with a
//! content-hash `ETag` (`If-None-Match` → 304) and `Cache-Control: no-cache`.
//! With `?wait=DURATION` and an `If-None-Match` naming the current answer,
//! the request is held until the answer changes (200) or the wait ends
//! (304): long-poll, capped by `http.max_wait`, jittered, woken only by a
//! change (see [`crate::agent::watch`]), answered at once when the agent stops.
//! Errors are `{"error": "...", "status": N}`. A name in a request is only
//! ever a key into the configured emulator table: nothing a request says is
//! opened as a path or executed. [`serve`] holds the connection loop and
//! its limits.

pub mod bodies;
pub mod check;
pub mod client;
pub mod openapi;
pub mod query;
pub mod serve;

use crate::agent::Agent;
use crate::agent::emulators::{Emulators, Entry};
use crate::agent::render::{Part, Rendered};
use crate::api::bodies::{ErrorBody, Health, Revalidating};
use crate::cache::{Answer, Lookup, LookupError, LookupErrorOf};
use crate::config::HttpLimits;
use axum::Router;
use axum::body::Body;
use axum::extract::RawQuery;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use http_body_util::BodyExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use serve::{BindError, Listener, bind_unix, serve};

/// What a route handler needs. Cloned for every request (axum's state), so
/// it is one shared allocation: a clone is one atomic increment.
#[derive(Clone)]
pub struct Ctx(Arc<CtxInner>);

impl std::ops::Deref for Ctx {
    type Target = CtxInner;
    fn deref(&self) -> &CtxInner {
        &self.0
    }
}

/// The fields of a [`Ctx`].
pub struct CtxInner {
    pub agent: Arc<Agent>,
    /// How long a request may wait on a probe (`http.request_timeout`).
    /// Answers from memory take no timer at all.
    pub request_timeout: Duration,
    /// At most one forced probe of an emulator per this interval.
    pub forced_probe_interval: Duration,
    /// Request bodies: at most this many bytes, arriving within
    /// `body_timeout`.
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// The longest a long-poll is held.
    pub max_wait: Duration,
    /// Cancelled when the agent stops: held requests answer at once.
    pub shutdown: CancellationToken,
    /// Request counters and timings, resolved once per route and code.
    http: crate::agent::metrics::HttpSeries,
}

impl Ctx {
    pub fn new(agent: Arc<Agent>, shutdown: CancellationToken) -> Ctx {
        let cfg = agent.config();
        Ctx(Arc::new(CtxInner {
            request_timeout: *cfg.http.request_timeout,
            forced_probe_interval: *cfg.forced_probe_interval,
            max_body_bytes: cfg.http.max_body_bytes.get() as usize,
            body_timeout: *cfg.http.header_read_timeout,
            max_wait: cfg.http.max_wait.0,
            shutdown,
            http: agent.metrics.http_series(&route_templates()),
            agent,
        }))
    }
}

/// Every route template the routers serve (the OpenAPI description lists
/// exactly those; a test holds the two together).
fn route_templates() -> Vec<&'static str> {
    crate::api::openapi::operations()
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

/// The full query API.
pub fn router(ctx: Ctx, _limits: &HttpLimits) -> Router {
    let routes = Router::new()
        .route("/", get(index))
        .route("/v1/emulators", get(list))
        .route("/v1/emulators/{name}", part_route(|r| &r.full))
        .route("/v1/emulators/{name}/machines", part_route(|r| &r.machines))
        .route(
            "/v1/emulators/{name}/cpu-models",
            part_route(|r| &r.cpu_models),
        )
        .route("/v1/emulators/{name}/devices", part_route(|r| &r.devices))
        .route("/v1/emulators/{name}/devices/{device}", get(device))
        .route("/v1/emulators/{name}/commands", part_route(|r| &r.commands))
        .route("/v1/emulators/{name}/revalidate", post(revalidate))
        .route("/v1/emulators/{name}/changes", get(emulator_changes))
        .route("/v1/changes", get(all_changes))
        .route("/v1/check", get(check::handler))
        .route("/v1/host", get(host))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    finish(routes, ctx)
}

/// Only `/metrics` and the health checks, for `metrics_listen`.
pub fn metrics_router(ctx: Ctx) -> Router {
    let routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    finish(routes, ctx)
}

/// What every router shares: JSON 404 and 405, the body limit, request
/// metrics (one middleware: each costs a clone of the route per request).
fn finish(routes: Router<Ctx>, ctx: Ctx) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .with_state(ctx)
}

/// Counts and times every request by route template and status code (the
/// series resolved once, [`crate::agent::metrics::HttpSeries`]), after reading its
/// body, if it has one, within the limits ([`limit_body`]).
async fn observe(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let resp = if http_body::Body::is_end_stream(req.body()) {
        next.run(req).await
    } else {
        limit_body(&ctx, req, next).await
    };
    ctx.http.observe(
        matched.as_ref().map(MatchedPath::as_str),
        resp.status(),
        start.elapsed(),
    );
    resp
}

/// Reads a request body before any handler: at most `max_body_bytes`
/// whether sent with a length or chunked (413), and within `body_timeout`
/// (408). No route takes a body, but reading it here means the limit holds
/// for every request.
async fn limit_body(ctx: &Ctx, req: Request, next: Next) -> Response {
    let max = ctx.max_body_bytes;
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

// ---- response builders -------------------------------------------------

/// `{"error": ..., "status": N}`.
pub fn json_error(status: StatusCode, msg: &str) -> Response {
    error_with_state(status, msg, None)
}

fn error_with_state(status: StatusCode, msg: &str, state: Option<crate::cache::State>) -> Response {
    let state = state.map(bodies::EmulatorState::from);
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
fn part_response(part: &Part, headers: &HeaderMap, answer_kind: &'static str) -> Response {
    let etag = part.etag.clone();
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
    h.insert("qcapsd-cache", HeaderValue::from_static(answer_kind));
    resp
}

fn bad_path(e: PathRejection) -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        &format!("bad path: {}", e.body_text()),
    )
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such route (see /)")
}

async fn method_not_allowed() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

// ---- handlers ------------------------------------------------------------

async fn index() -> Response {
    const PAGE: &str = concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>qcapsd</title></head><body>",
        "<h1>qcapsd ",
        env!("CARGO_PKG_VERSION"),
        "</h1><p>QEMU capabilities, probed once and served from cache.</p><ul>",
        "<li><a href=\"/v1/emulators\">/v1/emulators</a>: every emulator and its state</li>",
        "<li>/v1/emulators/{name}: the capabilities document; ",
        "/machines, /cpu-models, /devices, /devices/{device}, /commands: its parts</li>",
        "<li><a href=\"/v1/changes\">/v1/changes</a>: what re-probes found changed; ",
        "/v1/emulators/{name}/changes: one emulator's</li>",
        "<li>/v1/check?emulator=NAME&amp;machine=M&amp;cpu=C&amp;device=D&amp;accel=kvm&amp;cpus=N: ",
        "can this host run such a VM?</li>",
        "<li><a href=\"/v1/host\">/v1/host</a>: kernel, CPU, KVM</li>",
        "<li><a href=\"/v1/openapi.json\">/v1/openapi.json</a>: this API in OpenAPI 3.1</li>",
        "<li><a href=\"/healthz\">/healthz</a>, <a href=\"/readyz\">/readyz</a></li>",
        "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>",
        "</ul></body></html>"
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

fn rows_part(ctx: &Ctx) -> Option<Part> {
    Part::json(&bodies::rows(&ctx.agent)).ok()
}

async fn list(State(ctx): State<Ctx>, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let wait = match wait_param(&ctx, q.as_deref()) {
        Ok(w) => w,
        Err(e) => return bad_query(&e),
    };
    // Subscribe before reading, so no change is missed.
    let rx = wait.map(|_| ctx.agent.versions.subscribe_all());
    let Some(part) = rows_part(&ctx) else {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the list");
    };
    respond(&ctx, part, &headers, "hit", wait, rx, || rows_part(&ctx)).await
}

/// The `wait` parameter, the only one a capabilities route takes: how long
/// to hold the request (capped by `http.max_wait`), if at all.
fn wait_param(ctx: &Ctx, raw: Option<&str>) -> Result<Option<Duration>, query::QueryError> {
    let pairs = query::parse(raw)?;
    let pairs = query::only(&pairs, "wait", &[])?;
    match query::value(pairs, "wait") {
        None => Ok(None),
        Some(w) => crate::config::parse_duration(w)
            .map(|d| Some(d.min(ctx.max_wait)))
            .map_err(|e| query::QueryError::BadValue("wait", e.to_string())),
    }
}

pub(crate) fn bad_query(e: &query::QueryError) -> Response {
    json_error(StatusCode::BAD_REQUEST, &e.to_string())
}

/// Answers with `part`: 200, or 304 when the client has it. A client that
/// has it and asked to wait is held until `current()` differs (200), the
/// wait ends or the agent stops (304). `rx` was subscribed before `part`
/// was read, if the client asked to wait ([`subscribe_if`]).
async fn respond(
    ctx: &Ctx,
    part: Part,
    headers: &HeaderMap,
    kind: &'static str,
    wait: Option<Duration>,
    rx: Option<watch::Receiver<u64>>,
    current: impl Fn() -> Option<Part>,
) -> Response {
    let (Some(wait), Some(mut rx)) = (wait.filter(|_| etag_matches(headers, part.etag_str())), rx)
    else {
        return part_response(&part, headers, kind);
    };
    let deadline = tokio::time::sleep(with_jitter(wait));
    tokio::pin!(deadline);
    let _held = Held::new(&ctx.agent.metrics.http_waiting);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            () = ctx.shutdown.cancelled() => break,
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
                if let Some(now) = current() {
                    if !etag_matches(headers, now.etag_str()) {
                        return part_response(&now, headers, "hit");
                    }
                }
            }
        }
    }
    part_response(&part, headers, kind)
}

/// Counts a held request while it lives.
struct Held<'a>(&'a prometheus::IntGauge);

impl<'a> Held<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        Held(g)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `wait` plus up to a tenth more (at most 5 s), so that a fleet of
/// callers that started together does not come back together.
fn with_jitter(wait: Duration) -> Duration {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut h = crate::support::digest::Fnv64::default();
    h.update(&nanos.to_le_bytes())
        .update(&SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let spread = (wait / 10).min(Duration::from_secs(5));
    let fraction = (h.finish() % 1000) as u32;
    wait + spread * fraction / 1000
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

fn lookup_error(ctx: &Ctx, name: &str, e: &LookupErrorOf<Emulators>) -> Response {
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

async fn serve_part(
    ctx: &Ctx,
    name: Result<Path<String>, PathRejection>,
    req: &axum::http::request::Parts,
    pick: impl Fn(&Rendered) -> &Part,
) -> Response {
    let Path(name) = match name {
        Ok(n) => n,
        Err(e) => return bad_path(e),
    };
    let wait = match wait_param(ctx, req.uri.query()) {
        Ok(w) => w,
        Err(e) => return bad_query(&e),
    };
    let headers = &req.headers;
    let rx = wait.map(|_| ctx.agent.versions.subscribe(&name));
    match lookup(ctx, &name).await {
        Ok(a) => {
            let part = pick(&a.data.rendered).clone();
            let current = || {
                ctx.agent
                    .cache
                    .peek(&name)
                    .map(|d| pick(&d.rendered).clone())
            };
            respond(ctx, part, headers, answer_kind(&a), wait, rx, current).await
        }
        Err(r) => r,
    }
}

fn answer_kind(a: &Answer<Entry>) -> &'static str {
    match (a.hit, a.stale) {
        (_, true) => "stale",
        (true, false) => "hit",
        (false, false) => "miss",
    }
}

/// The GET route of one pre-rendered part of an emulator's entry. It takes
/// the request whole: its headers and query are read in place, not copied.
fn part_route(pick: fn(&Rendered) -> &Part) -> MethodRouter<Ctx> {
    get(
        move |State(ctx): State<Ctx>, name: Result<Path<String>, PathRejection>, req: Request| async move {
            // The parts only: the body is not shared across awaits.
            let (parts, _) = req.into_parts();
            serve_part(&ctx, name, &parts, pick).await
        },
    )
}

async fn device(
    State(ctx): State<Ctx>,
    p: Result<Path<(String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Response {
    let Path((name, dev)) = match p {
        Ok(p) => p,
        Err(e) => return bad_path(e),
    };
    let wait = match wait_param(&ctx, q.as_deref()) {
        Ok(w) => w,
        Err(e) => return bad_query(&e),
    };
    let rx = wait.map(|_| ctx.agent.versions.subscribe(&name));
    match lookup(&ctx, &name).await {
        Ok(a) => match a.data.rendered.device.get(&dev) {
            Some(part) => {
                let current = || {
                    let d = ctx.agent.cache.peek(&name)?;
                    d.rendered.device.get(&dev).cloned()
                };
                respond(&ctx, part.clone(), &h, answer_kind(&a), wait, rx, current).await
            }
            None => json_error(
                StatusCode::NOT_FOUND,
                &format!("emulator '{name}' has no device '{}'", printable(&dev)),
            ),
        },
        Err(r) => r,
    }
}

async fn revalidate(State(ctx): State<Ctx>, name: Result<Path<String>, PathRejection>) -> Response {
    let Path(name) = match name {
        Ok(n) => n,
        Err(e) => return bad_path(e),
    };
    match ctx.agent.cache.force(&name, ctx.forced_probe_interval) {
        Ok(f) => match f.retry_after {
            None => json_value(
                StatusCode::ACCEPTED,
                &Revalidating {
                    name,
                    state: f.state.into(),
                },
            ),
            Some(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut r = error_with_state(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!(
                        "emulator '{name}' was force-probed less than {}s ago; retry after {secs}s",
                        ctx.forced_probe_interval.as_secs_f64()
                    ),
                    Some(f.state),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
        },
        Err(e) => lookup_error(&ctx, &name, &e),
    }
}

async fn emulator_changes(
    State(ctx): State<Ctx>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Response {
    let Path(name) = match name {
        Ok(n) => n,
        Err(e) => return bad_path(e),
    };
    if let Err(e) = query::parse(q.as_deref()).and_then(|p| query::only(&p, "", &[]).map(|_| ())) {
        return json_error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    if ctx.agent.cache.status(&name).is_none() {
        return lookup_error(&ctx, &name, &LookupError::Unknown);
    }
    json_value(StatusCode::OK, &ctx.agent.history.of(&name))
}

async fn all_changes(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let bad = |msg: String| json_error(StatusCode::BAD_REQUEST, &msg);
    let pairs = match query::parse(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad(e.to_string()),
    };
    if let Err(e) = query::only(&pairs, "since", &[]) {
        return bad(e.to_string());
    }
    let since = match query::value(&pairs, "since") {
        None => None,
        Some(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t),
            Err(_) => {
                return bad(format!(
                    "since: '{}' is not an RFC 3339 time, e.g. 2026-11-28T12:00:00Z",
                    printable(s)
                ));
            }
        },
    };
    json_value(StatusCode::OK, &ctx.agent.history.since(since))
}

/// The OpenAPI description, generated once.
async fn openapi() -> Response {
    static BODY: std::sync::OnceLock<Result<Part, String>> = std::sync::OnceLock::new();
    let part = BODY
        .get_or_init(|| Part::json(&crate::api::openapi::document()).map_err(|e| e.to_string()));
    match part {
        Ok(p) => part_response(p, &HeaderMap::new(), "hit"),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn host(State(ctx): State<Ctx>) -> Response {
    json_value(StatusCode::OK, &bodies::host_doc(&ctx.agent))
}

/// Liveness: answers from the serving path and takes the cache's lock, so
/// a wedged agent does not answer (and the watchdog restarts it).
async fn healthz(State(ctx): State<Ctx>) -> Response {
    let _ = ctx.agent.cache.ready();
    json_value(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    )
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    if ctx.agent.ready() {
        json_value(
            StatusCode::OK,
            &Health {
                status: "ready".into(),
            },
        )
    } else {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: some emulators have no answer yet",
        )
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    match ctx.agent.scrape() {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
