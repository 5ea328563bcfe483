//! `GET /v1/check`: the admission check over HTTP. The query is parsed
//! strictly before anything else (a malformed one is a 400 and touches no
//! emulator), then the emulator's entry is looked up like on every other
//! route and [`crate::verdicts::check::check`] gives the verdict.

use super::Ctx;
use super::query::{self, QueryError};
use super::respond::{bad_query, json_error, json_value, lookup, printable};
use crate::cache::State as KeyState;
use crate::qemu::Accel;
use crate::verdicts::check::{self, CheckRequest};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

/// The parameters `GET /v1/check` takes.
pub const PARAMS: &str = "emulator|arch|machine|cpu|device|accel|cpus";

/// The most `device` parameters one check takes.
pub const MAX_DEVICES: usize = 64;

/// The longest name a parameter takes.
pub const MAX_NAME: usize = 128;

/// Which emulator a check is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Name(String),
    Arch(String),
    /// Neither given: the only configured emulator, if there is one.
    Only,
}

/// A parsed check query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckQuery {
    pub target: Target,
    pub request: CheckRequest,
}

/// Parses a check's query string; every refusal says which parameter.
pub fn parse(raw: Option<&str>) -> Result<CheckQuery, QueryError> {
    let pairs = query::parse(raw)?;
    let pairs = query::only(&pairs, PARAMS, &["device"])?;
    let name = |key: &'static str| -> Result<Option<String>, QueryError> {
        match query::value(pairs, key) {
            None => Ok(None),
            Some(v) => checked_name(key, v).map(Some),
        }
    };
    let target = match (name("emulator")?, name("arch")?) {
        (Some(_), Some(_)) => {
            return Err(QueryError::BadValue(
                "emulator",
                "give emulator or arch, not both".to_owned(),
            ));
        }
        (Some(e), None) => Target::Name(e),
        (None, Some(a)) => Target::Arch(a),
        (None, None) => Target::Only,
    };
    let devices = pairs
        .iter()
        .filter(|(k, _)| k == "device")
        .map(|(_, v)| checked_name("device", v))
        .collect::<Result<Vec<_>, _>>()?;
    if devices.len() > MAX_DEVICES {
        return Err(QueryError::BadValue(
            "device",
            format!("more than {MAX_DEVICES} devices"),
        ));
    }
    let accel = query::value(pairs, "accel")
        .map(Accel::concrete)
        .transpose()
        .map_err(|_| {
            QueryError::BadValue(
                "accel",
                format!(
                    "'{}' is not one of kvm, tcg",
                    printable(query::value(pairs, "accel").unwrap_or(""))
                ),
            )
        })?;
    let cpus = match query::value(pairs, "cpus") {
        None => None,
        Some(n) => match n.parse::<u64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(QueryError::BadValue(
                    "cpus",
                    format!(
                        "'{}' is not a whole number of vCPUs (1 or more)",
                        printable(n)
                    ),
                ));
            }
        },
    };
    Ok(CheckQuery {
        target,
        request: CheckRequest {
            machine: name("machine")?,
            cpu: name("cpu")?,
            devices,
            accel,
            cpus,
        },
    })
}

fn checked_name(key: &'static str, v: &str) -> Result<String, QueryError> {
    if v.is_empty() {
        Err(QueryError::BadValue(key, "empty".to_owned()))
    } else if v.len() > MAX_NAME {
        Err(QueryError::BadValue(
            key,
            format!("longer than {MAX_NAME} bytes"),
        ))
    } else if v.chars().any(char::is_control) {
        Err(QueryError::BadValue(
            key,
            "holds control characters".to_owned(),
        ))
    } else {
        Ok(v.to_owned())
    }
}

/// The configured emulator a target names, or the error to answer.
fn resolve(ctx: &Ctx, target: &Target) -> Result<String, (StatusCode, String)> {
    let statuses = ctx.agent.cache.statuses();
    let names = || {
        statuses
            .iter()
            .map(|s| s.key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match target {
        Target::Name(n) => Ok(n.clone()),
        Target::Only => match statuses.as_slice() {
            [only] => Ok(only.key.clone()),
            _ => Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "name the emulator (emulator=) or its architecture (arch=); configured: {}",
                    names()
                ),
            )),
        },
        Target::Arch(arch) => {
            let arch_of = |s: &crate::cache::Status<crate::agent::emulators::Entry>| {
                s.data.as_ref().and_then(|d| d.caps.arch.clone())
            };
            let matching: Vec<&str> = statuses
                .iter()
                .filter(|s| arch_of(s).as_deref() == Some(arch.as_str()))
                .map(|s| s.key.as_str())
                .collect();
            // Emulators still to answer (a failed or missing one is not
            // waited for).
            let unknown: Vec<&str> = statuses
                .iter()
                .filter(|s| {
                    s.data.is_none() && matches!(s.state, KeyState::Pending | KeyState::Probing)
                })
                .map(|s| s.key.as_str())
                .collect();
            match (matching.as_slice(), unknown.is_empty()) {
                ([one], true) => Ok((*one).to_owned()),
                ([], false) => Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no emulator known to be for {} yet; not probed yet: {}",
                        printable(arch),
                        unknown.join(", ")
                    ),
                )),
                ([], true) => Err((
                    StatusCode::NOT_FOUND,
                    format!(
                        "no emulator for architecture '{}'; configured: {}",
                        printable(arch),
                        names()
                    ),
                )),
                (many, _) if many.len() > 1 => Err((
                    StatusCode::BAD_REQUEST,
                    format!(
                        "more than one emulator is for {arch}: {}; name one with emulator=",
                        many.join(", ")
                    ),
                )),
                // One matches, but an emulator not probed yet might too.
                (_, _) => Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "cannot tell which emulator is for {arch} until {} is probed; retry shortly, or name one with emulator=",
                        unknown.join(", ")
                    ),
                )),
            }
        }
    }
}

pub async fn handler(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let parsed = match parse(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad_query(&e),
    };
    let name = match resolve(&ctx, &parsed.target) {
        Ok(n) => n,
        Err((status, msg)) => return json_error(status, &msg),
    };
    match lookup(&ctx, &name).await {
        Ok(a) => {
            let why = a
                .stale
                .then(|| ctx.agent.cache.status(&name).and_then(|s| s.error))
                .map(|e| e.map_or_else(|| "unknown error".to_owned(), |e| e.to_string()));
            let verdict = check::check(&a.data.caps, &parsed.request, why.as_deref());
            json_value(StatusCode::OK, &verdict)
        }
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_query_parses() {
        let q = parse(Some(
            "arch=x86_64&machine=q35&cpu=Haswell&device=virtio-blk-pci&device=qxl&accel=tcg&cpus=4",
        ))
        .unwrap();
        assert_eq!(q.target, Target::Arch("x86_64".into()));
        assert_eq!(
            q.request,
            CheckRequest {
                machine: Some("q35".into()),
                cpu: Some("Haswell".into()),
                devices: vec!["virtio-blk-pci".into(), "qxl".into()],
                accel: Some(Accel::Tcg),
                cpus: Some(4),
            }
        );
        assert_eq!(parse(None).unwrap().target, Target::Only);
    }

    #[test]
    fn malformed_queries_are_refused_with_the_parameter() {
        let says = |q: &str, what: &str| {
            let e = parse(Some(q)).unwrap_err().to_string();
            assert!(e.contains(what), "{q}: {e}");
        };
        says("cpu=a&cpu=b", "more than once");
        says("machine=q35&machine=pc", "more than once");
        says("emulator=a&arch=x86_64", "not both");
        says("accel=hvf", "accel");
        says("cpus=0", "cpus");
        says("cpus=-1", "cpus");
        says("cpus=four", "cpus");
        says("cpu=", "empty");
        says("cpu=%01x", "control");
        says("cpu=%FF", "UTF-8");
        says("cpuu=x", "unknown parameter");
        says(&format!("cpu={}", "x".repeat(200)), "longer than");
        says(&format!("cpu={}", "x".repeat(10_000)), "over 4096 bytes");
        let many: Vec<String> = (0..65).map(|i| format!("device=d{i}")).collect();
        says(&many.join("&"), "more than 64");
    }
}
