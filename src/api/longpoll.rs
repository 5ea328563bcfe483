//! Long-polls: `?wait=DURATION` with an `If-None-Match` naming the
//! current answer holds a request until the answer changes (200), the wait
//! ends or the agent stops (304). Capped by `http.max_wait`, jittered so a
//! fleet that started together does not come back together, woken only by
//! a change (see [`crate::agent::watch`]); no timer per waiter but its own
//! deadline.

use super::Ctx;
use super::etag_matches;
use super::query::{self, QueryError};
use super::respond::part_response;
use crate::agent::render::Part;
use axum::http::HeaderMap;
use axum::response::Response;
use std::time::Duration;
use tokio::sync::watch;

/// The `wait` parameter, the only one a capabilities route takes: how long
/// to hold the request (capped by `http.max_wait`), if at all.
pub(super) fn wait_param(ctx: &Ctx, raw: Option<&str>) -> Result<Option<Duration>, QueryError> {
    let pairs = query::parse(raw)?;
    let pairs = query::only(&pairs, "wait", &[])?;
    match query::value(pairs, "wait") {
        None => Ok(None),
        Some(w) => crate::config::parse_duration(w)
            .map(|d| Some(d.min(ctx.max_wait)))
            .map_err(|e| QueryError::BadValue("wait", e.to_string())),
    }
}

/// Answers with `part`: 200, or 304 when the client has it. A client that
/// has it and asked to wait is held until `current()` differs (200), the
/// wait ends or the agent stops (304). `rx` was subscribed before `part`
/// was read, if the client asked to wait ([`subscribe_if`]).
pub(super) async fn respond(
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
