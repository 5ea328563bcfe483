//! `GET /v1/check`: the admission check over HTTP. The query is parsed
//! strictly before anything else (a malformed one is a 400 and touches no
//! emulator), then the emulator's entry is looked up like on every other
//! route and [`crate::verdicts::check::check`] gives the verdict. With
//! `verify=true`, QEMU confirms it ([`crate::agent::verify`]: one exec
//! the first time, none after).

use super::Ctx;
use super::query::{self, QueryError};
use super::respond::{bad_query, json_error, json_value, lookup, printable};
use crate::cache::State as KeyState;
use crate::qemu::{Accel, named_for_arch};
use crate::verdicts::check::{self, CheckRequest};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

/// The parameters `GET /v1/check` takes.
pub const PARAMS: &str = "emulator|arch|machine|cpu|device|accel|cpus|verify";

/// The most `device` parameters one check takes.
pub const MAX_DEVICES: usize = 64;

/// The longest name a parameter takes.
pub const MAX_NAME: usize = crate::qemu::cmdline::MAX_NAME;

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
    /// QEMU confirms the verdict.
    pub verify: bool,
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
        verify: query::flag(pairs, "verify")?,
        request: CheckRequest {
            cpu_flags: Vec::new(),
            cpu_lenient: false,
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

/// What the choice of emulator knows of one configured emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The configured name.
    pub name: String,
    /// Its binary's file name (`qemu-system-x86_64`).
    pub file_name: String,
    /// The guest architecture, once probed.
    pub arch: Option<String>,
    /// Not probed yet (pending or probing, with no data).
    pub waiting: bool,
}

/// The emulator a check is about, and why, when several were for the
/// architecture asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub name: String,
    pub note: Option<String>,
}

/// Why no emulator could be picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("name the emulator (emulator=) or its architecture (arch=); configured: {configured}")]
    NotNamed { configured: String },
    #[error("no emulator known to be for {arch} yet; not probed yet: {waiting}")]
    NotProbedYet { arch: String, waiting: String },
    #[error("no emulator for architecture '{arch}'; configured: {configured}")]
    NoneFor { arch: String, configured: String },
    #[error("more than one emulator is for {arch}: {names}; name one with emulator=")]
    Tie { arch: String, names: String },
    #[error(
        "cannot tell which emulator is for {arch} until {waiting} is probed; retry shortly, or name one with emulator="
    )]
    Undecided { arch: String, waiting: String },
}

impl PickError {
    pub fn status(&self) -> StatusCode {
        match self {
            PickError::NotNamed { .. } | PickError::Tie { .. } => StatusCode::BAD_REQUEST,
            PickError::NoneFor { .. } => StatusCode::NOT_FOUND,
            PickError::NotProbedYet { .. } | PickError::Undecided { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// The configured emulator `target` names, among `all` (sorted by name).
/// For an architecture, several may match (Debian ships
/// `qemu-system-x86_64-microvm` beside `qemu-system-x86_64`): the one
/// whose name or file name is `qemu-system-<arch>` is picked, and the note
/// says so; a real tie is an error.
pub fn pick(target: &Target, all: &[Candidate]) -> Result<Picked, PickError> {
    let plain = |name: &str| Picked {
        name: name.to_owned(),
        note: None,
    };
    let list = |v: &[&Candidate]| {
        v.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let configured = || list(&all.iter().collect::<Vec<_>>());
    let arch = match target {
        Target::Name(n) => return Ok(plain(n)),
        Target::Only => {
            return match all {
                [only] => Ok(plain(&only.name)),
                _ => Err(PickError::NotNamed {
                    configured: configured(),
                }),
            };
        }
        Target::Arch(arch) => arch,
    };
    let shown = printable(arch);
    let matching: Vec<&Candidate> = all
        .iter()
        .filter(|c| c.arch.as_deref() == Some(arch.as_str()))
        .collect();
    // Emulators still to answer (a failed or missing one is not waited
    // for).
    let waiting: Vec<&Candidate> = all.iter().filter(|c| c.waiting).collect();
    let preferred: Vec<&&Candidate> = matching
        .iter()
        .filter(|c| named_for_arch(&c.name, arch) || named_for_arch(&c.file_name, arch))
        .collect();
    match (matching.as_slice(), preferred.as_slice()) {
        ([one], _) if waiting.is_empty() => Ok(plain(&one.name)),
        // The one named for the architecture wins, even over emulators
        // not probed yet (none of them can be named so too).
        (many, [one]) => Ok(Picked {
            name: one.name.clone(),
            note: (many.len() > 1).then(|| {
                format!(
                    "{} emulators are for {shown} ({}); {} is picked, as it is named qemu-system-{shown} (name another with emulator=)",
                    many.len(),
                    list(many),
                    one.name
                )
            }),
        }),
        ([], _) if !waiting.is_empty() => Err(PickError::NotProbedYet {
            arch: shown,
            waiting: list(&waiting),
        }),
        ([], _) => Err(PickError::NoneFor {
            arch: shown,
            configured: configured(),
        }),
        (many, _) if many.len() > 1 => Err(PickError::Tie {
            arch: shown,
            names: list(many),
        }),
        // One matches, but an emulator not probed yet might too.
        _ => Err(PickError::Undecided {
            arch: shown,
            waiting: list(&waiting),
        }),
    }
}

/// What the choice needs to know of every configured emulator (memory
/// only).
fn candidates(ctx: &Ctx) -> Vec<Candidate> {
    let view = ctx.agent.cache.handler().view();
    ctx.agent
        .cache
        .statuses()
        .into_iter()
        .map(|s| Candidate {
            file_name: view
                .table
                .get(&s.key)
                .and_then(|t| t.path.file_name())
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            arch: s.data.as_ref().and_then(|d| d.caps.arch.clone()),
            waiting: s.data.is_none() && matches!(s.state, KeyState::Pending | KeyState::Probing),
            name: s.key,
        })
        .collect()
}

pub async fn handler(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let parsed = match parse(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad_query(&e),
    };
    let picked = match pick(&parsed.target, &candidates(&ctx)) {
        Ok(p) => p,
        Err(e) => return json_error(e.status(), &e.to_string()),
    };
    let name = &picked.name;
    match lookup(&ctx, name).await {
        Ok(a) => {
            let why = a
                .stale
                .then(|| ctx.agent.cache.status(name).and_then(|s| s.error))
                .map(|e| e.unwrap_or_else(|| "unknown error".to_owned()));
            let mut verdict = check::check(&a.data.caps, &parsed.request, why.as_deref());
            verdict.picked = picked.note;
            if parsed.verify {
                let x86 = matches!(a.data.caps.arch.as_deref(), Some("x86_64" | "i386"));
                let args = check::verify_args(&verdict, &parsed.request, None, x86);
                match ctx.agent.cache.handler().verify(name, &a.data, args).await {
                    Ok((c, source)) => {
                        ctx.agent.metrics.record_verification(name, &c, source);
                        check::confirm(&mut verdict, &c);
                    }
                    Err(e) => verdict.warnings.push(format!("not verified: {e}")),
                }
            }
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
                cpu_flags: Vec::new(),
                cpu_lenient: false,
                machine: Some("q35".into()),
                cpu: Some("Haswell".into()),
                devices: vec!["virtio-blk-pci".into(), "qxl".into()],
                accel: Some(Accel::Tcg),
                cpus: Some(4),
            }
        );
        assert!(!q.verify);
        assert!(parse(Some("verify=true")).unwrap().verify);
        assert_eq!(parse(None).unwrap().target, Target::Only);
    }

    fn candidate(name: &str, arch: Option<&str>, waiting: bool) -> Candidate {
        Candidate {
            name: name.to_owned(),
            file_name: name.to_owned(),
            arch: arch.map(str::to_owned),
            waiting,
        }
    }

    /// Debian's qemu-system-x86 ships two emulators for x86_64: the one
    /// named for the architecture is picked, and the answer says so.
    #[test]
    fn the_emulator_named_for_the_architecture_is_picked_over_others() {
        let x86 = |arch: &str| Target::Arch(arch.to_owned());
        let debian = [
            candidate("qemu-system-aarch64", Some("aarch64"), false),
            candidate("qemu-system-x86_64", Some("x86_64"), false),
            candidate("qemu-system-x86_64-microvm", Some("x86_64"), false),
        ];
        let p = pick(&x86("x86_64"), &debian).unwrap();
        assert_eq!(p.name, "qemu-system-x86_64");
        let note = p.note.unwrap();
        assert!(
            note.contains("qemu-system-x86_64-microvm") && note.contains("picked"),
            "{note}"
        );
        assert_eq!(pick(&x86("aarch64"), &debian).unwrap().note, None);
        // A configured name of its own: the binary's file name counts.
        let mut renamed = debian.clone();
        renamed[1].name = "pc".to_owned();
        assert_eq!(pick(&x86("x86_64"), &renamed).unwrap().name, "pc");
        // A real tie stays an error, naming both.
        let tie = [
            candidate("a", Some("x86_64"), false),
            candidate("b", Some("x86_64"), false),
        ];
        let e = pick(&x86("x86_64"), &tie).unwrap_err();
        assert!(
            matches!(&e, PickError::Tie { names, .. } if names == "a, b"),
            "{e}"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        // The named one is picked even while another is still probing;
        // any other waits for the rest to be probed.
        let waiting = [
            candidate("qemu-system-x86_64", Some("x86_64"), false),
            candidate("other", None, true),
        ];
        assert_eq!(
            pick(&x86("x86_64"), &waiting).unwrap(),
            Picked {
                name: "qemu-system-x86_64".into(),
                note: None
            }
        );
        let undecided = [
            candidate("pc", Some("x86_64"), false),
            candidate("other", None, true),
        ];
        assert_eq!(
            pick(&x86("x86_64"), &undecided).unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let mut with_micro = debian.to_vec();
        with_micro.push(candidate("later", None, true));
        assert_eq!(
            pick(&x86("x86_64"), &with_micro).unwrap().name,
            "qemu-system-x86_64"
        );
        assert!(matches!(
            pick(&x86("s390x"), &debian),
            Err(PickError::NoneFor { .. })
        ));
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
        says("verify=yes", "not true or false");
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
