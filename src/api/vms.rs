//! `GET /v1/vms` and `POST /v1/vms/against`: the running VMs with their
//! verdicts ([`crate::agent::vms`]), listed anew on each request, with an
//! ETag of the content. `?verify=true` has QEMU confirm each verdict once
//! (memoized: asking again costs no exec). Against another host's
//! document (the body, as `qcapsd probe` prints it or `/v1/emulators/NAME`
//! serves it), nothing is executed: a document of another host cannot be
//! verified here.

use super::Ctx;
use super::query::{self, QueryError};
use super::respond::{bad_query, etagged, json_error};
use crate::agent::render::Part;
use crate::agent::vms::Other;
use crate::verdicts::compare;
use crate::verdicts::vms::VmList;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

/// The parameters `GET /v1/vms` takes.
pub const PARAMS: &str = "verify";
/// The parameters `POST /v1/vms/against` takes.
pub const AGAINST_PARAMS: &str = "label|verify";

fn answer(list: &VmList, headers: &HeaderMap) -> Response {
    match Part::json(list) {
        Ok(part) => etagged(&part, headers),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the list: {e}"),
        ),
    }
}

pub(super) async fn list(
    State(ctx): State<Ctx>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let verify = match query::parse(q.as_deref())
        .and_then(|p| query::only(&p, PARAMS, &[]).and_then(|p| query::flag(p, "verify")))
    {
        Ok(v) => v,
        Err(e) => return bad_query(&e),
    };
    let snap = ctx.agent.snapshot();
    answer(&ctx.agent.vms.list(&snap, None, verify).await, &headers)
}

/// Where the document came from, as the caller names it (`label=`).
fn label_of(pairs: &[(String, String)]) -> Result<String, QueryError> {
    match query::value(pairs, "label") {
        None => Ok("request body".to_owned()),
        Some(l) if l.is_empty() || l.len() > 256 || l.chars().any(char::is_control) => Err(
            QueryError::BadValue("label", "1 to 256 bytes, no control characters".to_owned()),
        ),
        Some(l) => Ok(l.to_owned()),
    }
}

pub(super) async fn against(
    State(ctx): State<Ctx>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = query::parse(q.as_deref()).and_then(|p| {
        let p = query::only(&p, AGAINST_PARAMS, &[])?;
        Ok((label_of(p)?, query::flag(p, "verify")?))
    });
    let label = match parsed {
        Ok((_, true)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "verify starts this host's emulators: a document of another host or QEMU cannot be verified here (verify there, or drop verify=true)",
            );
        }
        Ok((label, false)) => label,
        Err(e) => return bad_query(&e),
    };
    let caps = match compare::parse(&body) {
        Ok(c) => c,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body is no capabilities document: {}",
                    e.to_string()
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(400)
                        .collect::<String>()
                ),
            );
        }
    };
    let snap = ctx.agent.snapshot();
    let other = Other {
        label,
        caps: std::sync::Arc::new(caps),
    };
    answer(
        &ctx.agent.vms.list(&snap, Some(other), false).await,
        &headers,
    )
}
