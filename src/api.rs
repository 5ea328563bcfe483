//! The local query API (HTTP/1.1, JSON), served on loopback TCP, an
//! optional unix socket, and an optional metrics-only address.
//!
//! Endpoints:
//! - `GET /` — a small HTML page linking the rest
//! - `GET /v1/emulators` — every emulator and its state
//! - `GET /v1/emulators/{name}` — the capabilities document with cache metadata
//! - `GET /v1/emulators/{name}/machines`, `/cpu-models`, `/devices`,
//!   `/devices/{device}`, `/commands` — one part of it
//! - `POST /v1/emulators/{name}/revalidate` — forces one re-probe (202)
//! - `GET /v1/host` — host context: kernel, CPU, KVM
//! - `GET /healthz`, `GET /readyz` — liveness, readiness
//! - `GET /metrics` — Prometheus text format
//!
//! Capabilities responses are bytes rendered once per cache entry, with a
//! content-hash `ETag` (`If-None-Match` → 304) and `Cache-Control: no-cache`.
//! Errors are `{"error": "...", "status": N}`. A name in a request is only
//! ever a key into the configured emulator table: nothing a request says is
//! opened as a path or executed.

use crate::agent::Agent;
use crate::cache::{Answer, Lookup, LookupError, State as CacheState};
use crate::config::HttpLimits;
use crate::emulators::{Entry, Part, Rendered};
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What a route handler needs.
#[derive(Clone)]
pub struct Ctx {
    pub agent: Arc<Agent>,
    /// Host facts that never change while the agent runs (sysinfo).
    pub static_host: Arc<StaticHost>,
    /// How long a request may wait on a probe (`http.request_timeout`).
    /// Answers from memory take no timer at all.
    pub request_timeout: Duration,
}

/// CPU brand and count, memory and host name, read once at start.
#[derive(Debug, Clone, Serialize)]
pub struct StaticHost {
    pub hostname: Option<String>,
    pub cpu_brand: Option<String>,
    pub cpus: usize,
    pub memory_bytes: u64,
}

impl StaticHost {
    pub fn read() -> StaticHost {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        StaticHost {
            hostname: System::host_name(),
            cpu_brand: sys
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_owned())
                .filter(|b| !b.is_empty()),
            cpus: sys.cpus().len(),
            memory_bytes: sys.total_memory(),
        }
    }
}

/// The full query API.
pub fn router(ctx: Ctx, limits: &HttpLimits) -> Router {
    Router::new()
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
        .route("/v1/host", get(host))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.max_body_bytes,
        ))
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .with_state(ctx)
}

/// Only `/metrics` and the health checks, for `metrics_listen`.
pub fn metrics_router(ctx: Ctx) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(ctx.clone(), observe))
        .with_state(ctx)
}

/// Counts and times every request by route template and status code
/// (no allocation: the matched route is shared, the code a static string).
async fn observe(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = resp.status();
    let labels = [route, status.as_str()];
    let m = &ctx.agent.metrics;
    m.http_requests.with_label_values(&labels).inc();
    m.http_duration
        .with_label_values(&labels)
        .observe(start.elapsed().as_secs_f64());
    resp
}

// ---- response builders -------------------------------------------------

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    status: u16,
}

/// `{"error": ..., "status": N}`.
pub fn json_error(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody {
        error: msg,
        status: status.as_u16(),
    })
    .unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_value(status: StatusCode, v: &impl Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A pre-rendered part: 304 when the client has it, else the bytes.
fn part_response(part: &Part, headers: &HeaderMap, answer_kind: &'static str) -> Response {
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == part.etag
        });
    let etag = HeaderValue::from_str(&part.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let mut resp = if matches {
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
        "<li><a href=\"/v1/host\">/v1/host</a>: kernel, CPU, KVM</li>",
        "<li><a href=\"/healthz\">/healthz</a>, <a href=\"/readyz\">/readyz</a></li>",
        "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>",
        "</ul></body></html>"
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

#[derive(Serialize)]
struct EmulatorRow {
    name: String,
    path: String,
    arch: Option<String>,
    version: Option<String>,
    state: &'static str,
    probed_at: Option<String>,
    /// The capabilities shown are the last good ones; a later probe failed.
    stale: bool,
    error: Option<String>,
    failures: u32,
}

async fn list(State(ctx): State<Ctx>) -> Response {
    let view = ctx.agent.cache.handler().view();
    let rows: Vec<EmulatorRow> = ctx
        .agent
        .cache
        .statuses()
        .into_iter()
        .map(|s| {
            let d = s.data.as_deref();
            EmulatorRow {
                path: view
                    .table
                    .get(&s.key)
                    .map(|t| t.path.display().to_string())
                    .unwrap_or_default(),
                arch: d.and_then(|d| d.caps.arch.clone()),
                version: d.and_then(|d| d.caps.qemu.as_ref().map(|q| q.version.clone())),
                state: s.state.as_str(),
                probed_at: d.map(|d| d.caps.probe.started_at.clone()),
                stale: d.is_some() && s.error.is_some(),
                error: s.error.map(|e| e.to_string()),
                failures: s.failures,
                name: s.key,
            }
        })
        .collect();
    json_value(StatusCode::OK, &rows)
}

/// Looks up a configured emulator; every failure is a JSON error. Only a
/// lookup that must wait on a probe is bounded by `request_timeout` (the
/// probe itself goes on for the next caller).
async fn lookup(ctx: &Ctx, name: &str) -> Result<Answer<Entry>, Response> {
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

fn lookup_error(ctx: &Ctx, name: &str, e: &LookupError) -> Response {
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
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("emulator '{name}': binary {path} is missing"),
            )
        }
        LookupError::Failed(msg) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("emulator '{name}': probe failed: {msg}"),
        ),
        LookupError::Cancelled => json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

/// A name echoed in an error: bounded and without control characters.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

async fn serve_part(
    ctx: &Ctx,
    name: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    pick: impl Fn(&Rendered) -> &Part,
) -> Response {
    let Path(name) = match name {
        Ok(n) => n,
        Err(e) => return bad_path(e),
    };
    match lookup(ctx, &name).await {
        Ok(a) => part_response(pick(&a.data.rendered), headers, answer_kind(&a)),
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

/// The GET route of one pre-rendered part of an emulator's entry.
fn part_route(pick: fn(&Rendered) -> &Part) -> MethodRouter<Ctx> {
    get(
        move |State(ctx): State<Ctx>, name: Result<Path<String>, PathRejection>, h: HeaderMap| async move {
            serve_part(&ctx, name, &h, pick).await
        },
    )
}

async fn device(
    State(ctx): State<Ctx>,
    p: Result<Path<(String, String)>, PathRejection>,
    h: HeaderMap,
) -> Response {
    let Path((name, dev)) = match p {
        Ok(p) => p,
        Err(e) => return bad_path(e),
    };
    match lookup(&ctx, &name).await {
        Ok(a) => match a.data.rendered.device.get(&dev) {
            Some(part) => part_response(part, &h, answer_kind(&a)),
            None => json_error(
                StatusCode::NOT_FOUND,
                &format!("emulator '{name}' has no device '{}'", printable(&dev)),
            ),
        },
        Err(r) => r,
    }
}

#[derive(Serialize)]
struct Revalidating<'a> {
    name: &'a str,
    state: &'static str,
}

async fn revalidate(State(ctx): State<Ctx>, name: Result<Path<String>, PathRejection>) -> Response {
    let Path(name) = match name {
        Ok(n) => n,
        Err(e) => return bad_path(e),
    };
    match ctx.agent.cache.force(&name) {
        Ok(CacheState::Missing) => lookup_error(&ctx, &name, &LookupError::Missing),
        Ok(state) => json_value(
            StatusCode::ACCEPTED,
            &Revalidating {
                name: &name,
                state: state.as_str(),
            },
        ),
        Err(e) => lookup_error(&ctx, &name, &e),
    }
}

#[derive(Serialize)]
struct HostDoc<'a> {
    kernel_release: String,
    cpu_signature: String,
    microcode: Option<String>,
    kvm: KvmDoc,
    #[serde(flatten)]
    static_host: &'a StaticHost,
}

#[derive(Serialize)]
struct KvmDoc {
    device: String,
    usable: bool,
}

async fn host(State(ctx): State<Ctx>) -> Response {
    let handler = ctx.agent.cache.handler();
    let c = Arc::clone(&handler.view().host);
    let root = &ctx.agent.config().host_root.0;
    json_value(
        StatusCode::OK,
        &HostDoc {
            kernel_release: c.kernel_release.clone(),
            cpu_signature: c.cpu_signature.clone(),
            microcode: c.microcode.clone(),
            kvm: KvmDoc {
                device: root.join("dev/kvm").display().to_string(),
                usable: handler.host().kvm_usable(),
            },
            static_host: &ctx.static_host,
        },
    )
}

async fn healthz() -> Response {
    json_value(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    if ctx.agent.ready() {
        json_value(StatusCode::OK, &serde_json::json!({"status": "ready"}))
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

// ---- serving -------------------------------------------------------------

/// A listener the server can accept byte streams from.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// connections finish for up to `grace`. Connections beyond
/// `max_connections` wait in the kernel's backlog; a client that does not
/// send its headers within `header_read_timeout` is dropped; request heads
/// larger than `max_header_bytes` are refused.
pub async fn serve(
    listener: Listener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.get()));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(*limits.header_read_timeout)
        // hyper's minimum buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.get().max(8192))
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            s = listener.accept() => match s {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        match stream {
            Stream::Tcp(s) => spawn_connection(&builder, &graceful, s, svc, permit),
            Stream::Unix(s) => spawn_connection(&builder, &graceful, s, svc, permit),
        }
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}

/// Serves one connection in its own task; the permit is its slot under
/// `max_connections`.
fn spawn_connection<S>(
    builder: &hyper::server::conn::http1::Builder,
    graceful: &GracefulShutdown,
    stream: S,
    svc: hyper_util::service::TowerToHyperService<Router>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
    tokio::spawn(async move {
        let _ = conn.await;
        drop(permit);
    });
}

/// Binds the unix socket at `path`: a stale socket file is replaced (any
/// other kind of file is an error), and the socket is made mode 0660.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}
