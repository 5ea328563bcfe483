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
//! - `GET /v1/vms[?verify=true]` — the running VMs, each with its verdict on
//!   a restart here; `POST /v1/vms/against` — the same against another
//!   host's document (the body) ([`vms`], [`crate::agent::vms`])
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
mod handlers;
pub mod help;
mod longpoll;
pub mod openapi;
pub mod query;
mod respond;
pub mod routes;
pub mod serve;
pub mod vms;

use crate::agent::Agent;
use axum::Router;
use axum::middleware;
use axum::routing::{MethodFilter, MethodRouter, on};
use handlers::*;
use routes::{Id, Method, On, Route};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use respond::{etag_matches, json_error};
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
    /// A document in a request body (`POST /v1/vms/against`): at most this.
    pub max_document_bytes: usize,
    pub body_timeout: Duration,
    /// The longest a long-poll is held.
    pub max_wait: Duration,
    /// Cancelled when the agent stops: held requests answer at once.
    pub shutdown: CancellationToken,
    /// Request counters and timings, resolved once per route and code.
    http: crate::agent::metrics::HttpSeries,
    /// `GET /v1/emulators`'s body and the list version it was rendered
    /// at (see [`handlers::rows_part`]).
    rows: std::sync::Mutex<Option<(u64, crate::agent::render::Part)>>,
}

impl Ctx {
    pub fn new(agent: Arc<Agent>, shutdown: CancellationToken) -> Ctx {
        let cfg = agent.config();
        Ctx(Arc::new(CtxInner {
            request_timeout: *cfg.http.request_timeout,
            forced_probe_interval: *cfg.forced_probe_interval,
            max_body_bytes: cfg.http.max_body_bytes.get() as usize,
            max_document_bytes: cfg.http.max_document_bytes.get() as usize,
            body_timeout: *cfg.http.header_read_timeout,
            max_wait: cfg.http.max_wait.0,
            shutdown,
            http: agent.metrics.http_series(&route_templates()),
            rows: std::sync::Mutex::new(None),
            agent,
        }))
    }
}

/// Every route template of the query API (for the request metrics).
fn route_templates() -> Vec<&'static str> {
    routes::ROUTES.iter().map(|r| r.path).collect()
}

/// The handler of route `r`, under the table's method.
fn handler(r: &Route) -> MethodRouter<Ctx> {
    let m = match r.method {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
    };
    match r.id {
        Id::Index => on(m, index),
        Id::Emulators => on(m, list),
        Id::Emulator => part_route(m, |r| &r.full),
        Id::Machines => part_route(m, |r| &r.machines),
        Id::CpuModels => part_route(m, |r| &r.cpu_models),
        Id::Devices => part_route(m, |r| &r.devices),
        Id::Device => device_route(m),
        Id::Commands => part_route(m, |r| &r.commands),
        Id::Revalidate => on(m, revalidate),
        Id::Changes => on(m, emulator_changes),
        Id::Help => on(m, help::handler),
        Id::AllChanges => on(m, all_changes),
        Id::Check => on(m, check::handler),
        Id::Vms => on(m, vms::list),
        Id::VmsAgainst => on(m, vms::against),
        Id::Host => on(m, host),
        Id::OpenApi => on(m, openapi),
        Id::Healthz => on(m, healthz),
        Id::Readyz => on(m, readyz),
        Id::Metrics => on(m, metrics),
    }
}

/// The router of `listener`: the routes the table puts on it.
fn router_of(listener: On, ctx: Ctx) -> Router {
    let routes = routes::ROUTES
        .iter()
        .filter(|r| r.on.contains(&listener))
        .fold(Router::new(), |router, r| router.route(r.path, handler(r)));
    finish(routes, ctx)
}

/// The full query API.
pub fn router(ctx: Ctx) -> Router {
    router_of(On::Query, ctx)
}

/// Only the shims' route and `/healthz`, for the socket in the shim
/// directory (which any caller of a shim may reach).
pub fn shim_router(ctx: Ctx) -> Router {
    router_of(On::Shims, ctx)
}

/// Only `/metrics` and the health checks, for `metrics_listen`.
pub fn metrics_router(ctx: Ctx) -> Router {
    router_of(On::Metrics, ctx)
}

/// What every router shares: JSON 404 and 405, the body limit, request
/// metrics (one middleware: each costs a clone of the route per request).
fn finish(routes: Router<Ctx>, ctx: Ctx) -> Router {
    routes
        .fallback(respond::not_found)
        .method_not_allowed_fallback(respond::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            respond::observe,
        ))
        .with_state(ctx)
}
