//! The route handlers: each reads its request, asks the agent, and
//! answers through [`super::respond`] (and [`super::longpoll`] where a
//! request may wait for a change).

use super::bodies::{self, Health, Revalidating};
use super::longpoll::{respond, wait_param};
use super::respond::{
    answer_kind, bad_path, bad_query, error_with_state, json_error, json_value, lookup,
    lookup_error, part_response, printable,
};
use super::{Ctx, query};
use crate::agent::render::{Part, Rendered};
use crate::cache::LookupError;
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};

/// `GET /`: every route of the table with its summary, rendered once;
/// routes without parameters are links.
pub(super) async fn index() -> Response {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let page = PAGE.get_or_init(|| {
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>qcapsd</title></head><body><h1>qcapsd {}</h1><p>QEMU capabilities, probed once and served from cache.</p><ul>",
            env!("CARGO_PKG_VERSION")
        );
        for r in super::routes::ROUTES.iter().filter(|r| r.path != "/") {
            let path = escape(r.path);
            let shown = if r.path.contains('{') || r.method != super::routes::Method::Get {
                format!("{} {path}", r.method.as_str().to_uppercase())
            } else {
                format!("<a href=\"{path}\">{path}</a>")
            };
            page += &format!(
                "<li>{shown}: {}</li>",
                escape(super::openapi::summary(r.id))
            );
        }
        page + "</ul></body></html>"
    });
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.as_str(),
    )
        .into_response()
}

/// The body of `GET /v1/emulators`, rendered once per version of the list
/// (the version is read before the rows, so a change made while they are
/// rendered makes the next request render again).
pub(super) fn rows_part(ctx: &Ctx) -> Option<Part> {
    let version = ctx.agent.versions.all_version();
    if let Some((v, part)) = &*ctx.rows.lock().unwrap_or_else(|p| p.into_inner()) {
        if *v == version {
            return Some(part.clone());
        }
    }
    let part = Part::json(&bodies::rows(&ctx.agent)).ok()?;
    *ctx.rows.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, part.clone()));
    Some(part)
}

pub(super) async fn list(
    State(ctx): State<Ctx>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
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

/// The `{name}` of an emulator route, and its `{device}` where the route
/// has one. A path that does not decode is a 400 before any handler runs.
pub(super) struct EmulatorPath {
    pub name: String,
    pub device: Option<String>,
}

impl FromRequestParts<Ctx> for EmulatorPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, Response> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, ctx)
            .await
            .map_err(bad_path)?;
        let param = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        Ok(EmulatorPath {
            name: param("name").unwrap_or_default(),
            device: param("device"),
        })
    }
}

/// One pre-rendered part of an emulator's entry, picked by `pick`
/// (`None`: the entry has no such part, answered by `missing`); long-polls
/// wait for the part to change. The request is read in place: its headers
/// and query are not copied.
pub(super) async fn serve_part(
    ctx: &Ctx,
    name: &str,
    req: &Parts,
    pick: impl Fn(&Rendered) -> Option<&Part>,
    missing: impl FnOnce() -> Response,
) -> Response {
    let wait = match wait_param(ctx, req.uri.query()) {
        Ok(w) => w,
        Err(e) => return bad_query(&e),
    };
    let rx = wait.map(|_| ctx.agent.versions.subscribe(name));
    let a = match lookup(ctx, name).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(part) = pick(&a.data.rendered).cloned() else {
        return missing();
    };
    let current = || {
        let d = ctx.agent.cache.peek(name)?;
        pick(&d.rendered).cloned()
    };
    respond(ctx, part, &req.headers, answer_kind(&a), wait, rx, current).await
}

/// The GET route of one part every entry has.
pub(super) fn part_route(m: MethodFilter, pick: fn(&Rendered) -> &Part) -> MethodRouter<Ctx> {
    on(
        m,
        move |State(ctx): State<Ctx>, e: EmulatorPath, req: Request| async move {
            let (parts, _) = req.into_parts();
            serve_part(
                &ctx,
                &e.name,
                &parts,
                |r| Some(pick(r)),
                || json_error(StatusCode::INTERNAL_SERVER_ERROR, "no such part"),
            )
            .await
        },
    )
}

/// `GET /v1/emulators/{name}/devices/{device}`.
pub(super) fn device_route(m: MethodFilter) -> MethodRouter<Ctx> {
    on(
        m,
        |State(ctx): State<Ctx>, e: EmulatorPath, req: Request| async move {
            let (parts, _) = req.into_parts();
            let dev = e.device.unwrap_or_default();
            serve_part(
                &ctx,
                &e.name,
                &parts,
                |r| r.device.get(&dev),
                || {
                    json_error(
                        StatusCode::NOT_FOUND,
                        &format!("emulator '{}' has no device '{}'", e.name, printable(&dev)),
                    )
                },
            )
            .await
        },
    )
}

pub(super) async fn revalidate(
    State(ctx): State<Ctx>,
    EmulatorPath { name, .. }: EmulatorPath,
) -> Response {
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

pub(super) async fn emulator_changes(
    State(ctx): State<Ctx>,
    EmulatorPath { name, .. }: EmulatorPath,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(e) = query::parse(q.as_deref()).and_then(|p| query::only(&p, "", &[]).map(|_| ())) {
        return json_error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    if ctx.agent.cache.status(&name).is_none() {
        return lookup_error(&ctx, &name, &LookupError::Unknown);
    }
    json_value(StatusCode::OK, &ctx.agent.history.of(&name))
}

pub(super) async fn all_changes(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
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
pub(super) async fn openapi() -> Response {
    static BODY: std::sync::OnceLock<Result<Part, serde_json::Error>> = std::sync::OnceLock::new();
    match BODY.get_or_init(|| Part::json(&crate::api::openapi::document())) {
        Ok(p) => part_response(p, &HeaderMap::new(), "hit"),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

pub(super) async fn host(State(ctx): State<Ctx>) -> Response {
    json_value(StatusCode::OK, &bodies::host_doc(&ctx.agent))
}

/// Liveness: answers from the serving path and takes the cache's lock, so
/// a wedged agent does not answer (and the watchdog restarts it).
pub(super) async fn healthz(State(ctx): State<Ctx>) -> Response {
    let _ = ctx.agent.cache.ready();
    json_value(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    )
}

pub(super) async fn readyz(State(ctx): State<Ctx>) -> Response {
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

pub(super) async fn metrics(State(ctx): State<Ctx>) -> Response {
    match ctx.agent.scrape() {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
