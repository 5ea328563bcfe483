//! The commands of the `qcapsd` binary other than `run`: each takes its
//! parsed arguments, does its work, prints, and returns the exit code (0
//! ok, 64 bad usage or config, 69 service unavailable, 1 other; see
//! [`Exit`]). Errors are one line on stderr naming what is at fault.

use crate::api::client::{self, QueryError, Target};
use crate::cli::tables::{self, What};
use crate::config::{Config, defaults, discovery};
use crate::qemu::{self, Accel, ExecCounter};
use crate::verdicts::check::{self, CheckRequest, Verdict};
use crate::verdicts::compare::{self, DocumentError, Input};
use crate::verdicts::vms::{VmList, VmVerdict};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Something else went wrong (or the VM asked about cannot run).
    Failure = 1,
    /// Bad usage or config.
    Usage = 64,
    /// No agent answers.
    Unavailable = 69,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

fn fail(e: impl std::fmt::Display, code: Exit) -> ExitCode {
    eprintln!("qcapsd: {e}");
    code.into()
}

/// Orphaned helpers of a probe are re-parented to this process, which
/// kills them (see `qemu::exec`).
pub fn become_subreaper() {
    if let Err(e) = qemu::reaper::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a subreaper; helpers that leave a probe's process group may outlive it");
    }
}

/// `qcapsd probe PATH`: one probe, the document on stdout, no cache. A
/// relative path is resolved against the current directory first.
pub async fn probe(path: &Path, accel: Accel, timeout: u64) -> ExitCode {
    become_subreaper();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let mut req = defaults::probe_request(name);
    if accel == Accel::Auto {
        // As the agent does with its default `accels`.
        let kvm_usable = qemu::fingerprint::Host::new("/").kvm_usable();
        req = req.accels(defaults::ACCELS, kvm_usable);
    } else {
        req.accel = accel;
    }
    req.timeout = Duration::from_secs(timeout.max(1));
    let cancel = CancellationToken::new();
    match qemu::probe(path, &req, &ExecCounter::default(), &cancel).await {
        Ok((caps, _)) => print_json(&caps),
        Err(e) => fail(format_args!("probe failed: {e}"), Exit::Failure),
    }
}

/// Where the agent is: `--socket`, `--addr`, `$QCAPSD_ADDR`, or where an
/// agent with the default config listens.
pub fn target_of(addr: Option<String>, socket: Option<PathBuf>) -> Result<Target, ExitCode> {
    match (socket, addr.or_else(|| std::env::var("QCAPSD_ADDR").ok())) {
        (Some(s), _) => Ok(Target::Unix(s)),
        (None, Some(a)) => Target::from_addr(&a).map_err(|e| fail(e, Exit::Usage)),
        (None, None) => Target::for_config(&Config::default())
            .ok_or_else(|| fail("the default config has no query address", Exit::Usage)),
    }
}

/// The exit code for an answer the agent did not give.
fn query_exit(e: &QueryError) -> Exit {
    match e {
        QueryError::Unreachable { .. } | QueryError::Http { status: 503, .. } => Exit::Unavailable,
        QueryError::Http {
            status: 400 | 404, ..
        } => Exit::Usage,
        _ => Exit::Failure,
    }
}

/// `qcapsd check`: 0 the VM can run, 1 it cannot, 64 a bad question
/// (400, or an unknown emulator), 69 no agent answers (or it has no
/// answer yet).
pub async fn check(
    target: Target,
    emulator: Option<String>,
    arch: Option<String>,
    req: CheckRequest,
    verify: bool,
    json: bool,
) -> ExitCode {
    let path = tables::check_path(emulator.as_deref(), arch.as_deref(), &req, verify);
    let answer = client::fetch(&target, &path, None, timeout_for(verify))
        .await
        .map(|f| f.body);
    let (body, verdict): (_, Verdict) = match read_answer(answer) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let printed = if json {
        print_bytes(&body)
    } else {
        print_bytes(check::render(&verdict).as_bytes())
    };
    if printed != ExitCode::SUCCESS || verdict.ok {
        printed
    } else {
        Exit::Failure.into()
    }
}

/// How long a question that has QEMU confirm verdicts may take (each
/// VM configuration not yet verified starts QEMU once or more).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(600);

fn timeout_for(verify: bool) -> Duration {
    if verify {
        VERIFY_TIMEOUT
    } else {
        client::QUERY_TIMEOUT
    }
}

/// The agent's answer and what it says, or the exit code of a failure
/// (said on stderr).
fn read_answer<T: serde::de::DeserializeOwned>(
    answer: Result<Bytes, QueryError>,
) -> Result<(Bytes, T), ExitCode> {
    let body = answer.map_err(|e| {
        let code = query_exit(&e);
        fail(e, code)
    })?;
    let value = serde_json::from_slice(&body).map_err(|e| {
        fail(
            format_args!("bad answer from the agent: {e}"),
            Exit::Failure,
        )
    })?;
    Ok((body, value))
}

/// `qcapsd vms`: 0 every VM would start again, 1 one would not or cannot
/// be judged, 64 a bad question, 69 no agent answers.
pub async fn vms(target: Target, against: Option<String>, verify: bool, json: bool) -> ExitCode {
    let answer = match &against {
        None => client::fetch(
            &target,
            &tables::vms_path(None, verify),
            None,
            timeout_for(verify),
        )
        .await
        .map(|f| f.body),
        Some(input) => {
            let doc = match load(input).await {
                Ok(i) => i,
                Err(e) => {
                    let code = e.exit();
                    return fail(e, code);
                }
            };
            let body = match serde_json::to_vec(&doc.caps) {
                Ok(b) => b,
                Err(e) => return fail(format_args!("{input}: {e}"), Exit::Failure),
            };
            let path = tables::vms_path(Some(&doc.label), false);
            client::post(&target, &path, body, client::QUERY_TIMEOUT).await
        }
    };
    let (body, list): (_, VmList) = match read_answer(answer) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let printed = if json {
        print_bytes(&body)
    } else {
        print_bytes(tables::vms_table(&list).as_bytes())
    };
    let all_start = list
        .vms
        .iter()
        .all(|v| matches!(v.verdict, VmVerdict::Ok | VmVerdict::BinaryReplaced));
    if printed != ExitCode::SUCCESS || all_start {
        printed
    } else {
        Exit::Failure.into()
    }
}

/// Why an input of `qcapsd compare` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Exit 64.
    #[error("{label}: cannot read: {source}")]
    Read {
        label: String,
        #[source]
        source: std::io::Error,
    },
    /// Exit 64.
    #[error("{label}: expected http://HOST:PORT/v1/emulators/NAME")]
    Url { label: String },
    /// Exit 64.
    #[error("{label}: the agent speaks plain HTTP on a local address")]
    Https { label: String },
    /// Exit 64 (69 when the agent is unreachable).
    #[error("{label}: {source}")]
    Query {
        label: String,
        #[source]
        source: QueryError,
    },
    /// Exit 64.
    #[error("{label}: {source}")]
    Document {
        label: String,
        #[source]
        source: DocumentError,
    },
}

impl InputError {
    fn exit(&self) -> Exit {
        match self {
            InputError::Query {
                source: QueryError::Unreachable { .. },
                ..
            } => Exit::Unavailable,
            _ => Exit::Usage,
        }
    }
}

/// Reads one input of `qcapsd compare`: a file, `-` for stdin, or
/// `http://HOST:PORT/PATH` (a running agent).
pub async fn load(input: &str) -> Result<Input, InputError> {
    let label = || input.to_owned();
    let bytes = if input == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b).map_err(|source| {
            InputError::Read {
                label: label(),
                source,
            }
        })?;
        b
    } else if let Some(rest) = input.strip_prefix("http://") {
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| InputError::Url { label: label() })?;
        let target =
            Target::from_addr(authority).map_err(|_| InputError::Url { label: label() })?;
        client::get(&target, &format!("/{path}"))
            .await
            .map_err(|source| InputError::Query {
                label: label(),
                source,
            })?
            .to_vec()
    } else if input.starts_with("https://") {
        return Err(InputError::Https { label: label() });
    } else {
        std::fs::read(input).map_err(|source| InputError::Read {
            label: label(),
            source,
        })?
    };
    compare::parse(&bytes)
        .map(|caps| Input {
            label: label(),
            caps,
        })
        .map_err(|source| InputError::Document {
            label: label(),
            source,
        })
}

/// `qcapsd compare`: 0, or 1 when a VM was asked about and some input
/// cannot run it; 64 for bad or mixed inputs, 69 for an agent URL that
/// does not answer.
pub async fn compare(inputs: Vec<String>, vm: CheckRequest, json: bool) -> ExitCode {
    if inputs.iter().filter(|i| *i == "-").count() > 1 {
        return fail("'-' (stdin) can be given once", Exit::Usage);
    }
    let (accel, vm) = compare::question(vm);
    let mut loaded = Vec::with_capacity(inputs.len());
    for i in &inputs {
        match load(i).await {
            Ok(input) => loaded.push(input),
            Err(e) => {
                let code = e.exit();
                return fail(e, code);
            }
        }
    }
    let c = match compare::compare(&loaded, accel, vm.as_ref()) {
        Ok(c) => c,
        Err(e) => return fail(e, Exit::Usage),
    };
    let printed = if json {
        print_json(&c)
    } else {
        print_bytes(compare::render(&c).as_bytes())
    };
    let all_can_run = c.vm.iter().flatten().all(|v| v.ok);
    if printed != ExitCode::SUCCESS || all_can_run {
        printed
    } else {
        Exit::Failure.into()
    }
}

/// `qcapsd query`: one answer, or (`--watch`) each new one until
/// interrupted.
pub async fn query(target: Target, what: What, json: bool, watch: bool) -> ExitCode {
    let show = |body: &[u8]| -> Result<(), ShowError> {
        let out = if json {
            let mut out = body.to_vec();
            if !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            out
        } else {
            tables::render(&what, body)?.into_bytes()
        };
        match print_bytes(&out) {
            code if code == ExitCode::SUCCESS => Ok(()),
            code => Err(ShowError::Printed(code)),
        }
    };
    let result = if watch {
        client::follow(&target, &what.path(), |b| show(b)).await
    } else {
        match client::get(&target, &what.path()).await {
            Ok(body) => show(&body),
            Err(e) => Err(e.into()),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(ShowError::Printed(code)) => code,
        Err(ShowError::Query(e)) => {
            let code = match e {
                QueryError::Unreachable { .. } => Exit::Unavailable,
                _ => Exit::Failure,
            };
            fail(e, code)
        }
    }
}

/// Why `query` stopped showing answers.
enum ShowError {
    Query(QueryError),
    /// Stdout failed; the code says how.
    Printed(ExitCode),
}

impl From<QueryError> for ShowError {
    fn from(e: QueryError) -> Self {
        ShowError::Query(e)
    }
}

/// `qcapsd check-config FILE`: the config's errors, or what it would do.
pub fn check_config(file: &Path) -> ExitCode {
    let cfg = match Config::load(file) {
        Ok(c) => c,
        Err(e) => return fail(e, Exit::Usage),
    };
    match discovery::resolve(&cfg) {
        Ok(resolved) => print_bytes(cfg.describe(file, &resolved).as_bytes()),
        Err(e) => fail(format_args!("{}: {e}", file.display()), Exit::Usage),
    }
}

/// Pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => print_bytes(&b),
        Err(e) => fail(format_args!("cannot encode JSON: {e}"), Exit::Failure),
    }
}

/// Writes to stdout. A closed pipe (`| head`) ends quietly; other write
/// errors are reported.
pub fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut written = out.write_all(bytes);
    if written.is_ok() && !bytes.ends_with(b"\n") {
        written = out.write_all(b"\n");
    }
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(format_args!("writing stdout: {e}"), Exit::Failure),
    }
}

/// The config `qcapsd shim` reads without --config: the package's.
pub const PACKAGE_CONFIG: &str = "/etc/qcapsd/config.yaml";

/// `qcapsd shim`: the shims in the directory and what each fronts, and
/// whether the agent answers on their socket; with `sync`, first makes
/// them match the emulators the config finds.
pub fn shim(config: Option<PathBuf>, dir: Option<PathBuf>, sync: bool) -> ExitCode {
    let dir = match dir {
        Some(d) => d,
        None => {
            let file = config.unwrap_or_else(|| PathBuf::from(PACKAGE_CONFIG));
            let cfg = match Config::load(&file) {
                Ok(c) => c,
                Err(e) => return fail(e, Exit::Usage),
            };
            let Some(dir) = cfg.shim_dir.as_ref().map(|d| d.0.clone()) else {
                return fail(
                    format_args!(
                        "{}: no `shim_dir`: the agent keeps no shims",
                        file.display()
                    ),
                    Exit::Usage,
                );
            };
            if sync {
                let resolved = match discovery::resolve(&cfg) {
                    Ok(r) => r,
                    Err(e) => return fail(format_args!("{}: {e}", file.display()), Exit::Usage),
                };
                let timeout_ms = cfg.shim_timeout.as_millis() as u64;
                match crate::agent::shims::sync(
                    &dir,
                    &resolved.emulators,
                    &cfg.shim_binary(),
                    timeout_ms,
                ) {
                    Ok(done) => {
                        for s in &done.skipped {
                            eprintln!("qcapsd: shim not made: {s}");
                        }
                    }
                    Err(e) => return fail(format_args!("{}: {e}", dir.display()), Exit::Failure),
                }
            }
            dir
        }
    };
    let shims = match crate::agent::shims::list(&dir) {
        Ok(s) => s,
        Err(e) => return fail(format_args!("{}: {e}", dir.display()), Exit::Failure),
    };
    let socket = crate::support::shim_dir::socket(&dir);
    let answering = std::os::unix::net::UnixStream::connect(&socket).is_ok();
    let mut out = format!(
        "{}: {} shim(s); the agent {}\n",
        dir.display(),
        shims.len(),
        if answering {
            "answers their pure queries"
        } else {
            "does not answer (the shims run QEMU themselves)"
        }
    );
    out += &tables::table(
        &["SHIM", "EMULATOR", "FRONTS"],
        shims
            .into_iter()
            .map(|s| {
                let fronts = if s.linked {
                    s.real
                } else {
                    format!("{} (link missing)", s.real)
                };
                vec![dir.join(&s.name).display().to_string(), s.emulator, fronts]
            })
            .collect(),
    );
    print_bytes(out.as_bytes())
}
