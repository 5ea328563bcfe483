//! The `qcapsd` binary: wiring only. Parses the command line, builds what the
//! command needs from the library, runs it, and maps errors to exit codes
//! (0 ok, 64 usage or config, 69 service unavailable, 1 other).

#![forbid(unsafe_code)]

use clap::Parser;
use qcapsd::api::client::{self, QueryError, Target, What};
use qcapsd::cli::{Cli, Command, LogFormat};
use qcapsd::config::Config;
use qcapsd::config::discovery;
use qcapsd::daemon;
use qcapsd::qemu::{self, Accel, ExecCounter};
use qcapsd::verdicts::check::{CheckRequest, Verdict};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const EXIT_USAGE: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qcapsd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let command = cli.command.unwrap_or(Command::Run {
        config: None,
        log_format: LogFormat::Human,
    });
    match command {
        Command::Run { config, log_format } => run(&runtime, config, log_format),
        Command::Probe { schema: true, .. } => print_json(&qcapsd::api::openapi::document_schema()),
        Command::Probe {
            path: Some(path),
            accel,
            timeout,
            ..
        } => runtime.block_on(probe(path, accel, timeout)),
        Command::Probe { path: None, .. } => {
            eprintln!("qcapsd: probe needs the path of a QEMU binary");
            ExitCode::from(EXIT_USAGE)
        }
        Command::Check {
            addr,
            socket,
            emulator,
            arch,
            vm,
            json,
        } => {
            let target = match target_of(addr, socket) {
                Ok(t) => t,
                Err(code) => return code,
            };
            runtime.block_on(check(target, emulator, arch, vm.request(), json))
        }
        Command::Compare { inputs, vm, json } => {
            // The accelerator applies to the comparison; the VM is checked
            // only when something about it was asked.
            let accel = vm.accel.clone();
            let mut req = vm.request();
            req.accel = None;
            let asked = req.machine.is_some()
                || req.cpu.is_some()
                || !req.devices.is_empty()
                || req.cpus.is_some();
            runtime.block_on(compare(inputs, accel, asked.then_some(req), json))
        }
        Command::Query {
            addr,
            socket,
            emulator,
            part,
            json,
            watch,
        } => runtime.block_on(query(
            addr,
            socket,
            What::from_args(emulator, part),
            json,
            watch,
        )),
        Command::CheckConfig { file } => check_config(&file),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a journal, a file or a pipe
    // gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Orphaned helpers of a probe are re-parented to this process, which
/// kills them (see `qemu::exec`).
fn become_subreaper() {
    if let Err(e) = qemu::exec::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a subreaper; helpers that leave a probe's process group may outlive it");
    }
}

fn run(runtime: &tokio::runtime::Runtime, config: Option<PathBuf>, format: LogFormat) -> ExitCode {
    init_logging(format);
    become_subreaper();
    let cfg = match &config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("qcapsd: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => Config::default(),
    };
    match runtime.block_on(daemon::run(cfg, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qcapsd: {e}");
            ExitCode::from(if e.is_config() { EXIT_USAGE } else { 1 })
        }
    }
}

async fn probe(path: PathBuf, accel: Accel, timeout: u64) -> ExitCode {
    become_subreaper();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let mut req = qcapsd::config::defaults::probe_request(name);
    if accel == Accel::Auto {
        // As the agent does with its default `accels`.
        let kvm_usable = qemu::fingerprint::Host::new("/").kvm_usable();
        req = req.accels(qcapsd::config::defaults::ACCELS, kvm_usable);
    } else {
        req.accel = accel;
    }
    req.timeout = Duration::from_secs(timeout.max(1));
    let cancel = CancellationToken::new();
    match qemu::probe(&path, &req, &ExecCounter::default(), &cancel).await {
        Ok((caps, _)) => print_json(&caps),
        Err(e) => {
            eprintln!("qcapsd: probe failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Where the agent is: `--socket`, `--addr`, `$QCAPSD_ADDR`, or the
/// default address.
fn target_of(addr: Option<String>, socket: Option<PathBuf>) -> Result<Target, ExitCode> {
    match (socket, addr.or_else(|| std::env::var("QCAPSD_ADDR").ok())) {
        (Some(s), _) => Ok(Target::Unix(s)),
        (None, Some(a)) => Target::from_addr(&a).map_err(|e| {
            eprintln!("qcapsd: {e}");
            ExitCode::from(EXIT_USAGE)
        }),
        (None, None) => Ok(Target::Tcp {
            authority: qcapsd::config::defaults::LISTEN.to_owned(),
        }),
    }
}

/// `qcapsd check`: 0 the VM can run, 1 it cannot, 64 a bad question
/// (400, or an unknown emulator), 69 no agent answers (or it has no
/// answer yet).
async fn check(
    target: Target,
    emulator: Option<String>,
    arch: Option<String>,
    req: CheckRequest,
    json: bool,
) -> ExitCode {
    let path = client::check_path(emulator.as_deref(), arch.as_deref(), &req);
    let body = match client::get(&target, &path).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("qcapsd: {e}");
            return ExitCode::from(match e {
                QueryError::Unreachable { .. } | QueryError::Http { status: 503, .. } => {
                    EXIT_UNAVAILABLE
                }
                QueryError::Http {
                    status: 400 | 404, ..
                } => EXIT_USAGE,
                _ => 1,
            });
        }
    };
    let verdict: Verdict = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("qcapsd: bad answer from the agent: {e}");
            return ExitCode::from(1);
        }
    };
    let printed = if json {
        print_bytes(&body)
    } else {
        print_bytes(client::render_verdict(&verdict).as_bytes())
    };
    if printed != ExitCode::SUCCESS {
        return printed;
    }
    if verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `qcapsd compare`: 0, or 1 when a VM was asked about and some input
/// cannot run it; 64 for bad or mixed inputs, 69 for an agent URL that
/// does not answer.
async fn compare(
    inputs: Vec<String>,
    accel: Option<String>,
    vm: Option<CheckRequest>,
    json: bool,
) -> ExitCode {
    if inputs.iter().filter(|i| *i == "-").count() > 1 {
        eprintln!("qcapsd: '-' (stdin) can be given once");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut loaded = Vec::with_capacity(inputs.len());
    for i in &inputs {
        match qcapsd::verdicts::compare::load(i).await {
            Ok(input) => loaded.push(input),
            Err(e) => {
                eprintln!("qcapsd: {e}");
                return ExitCode::from(e.exit_code());
            }
        }
    }
    let c = match qcapsd::verdicts::compare::compare(&loaded, accel.as_deref(), vm.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qcapsd: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let printed = if json {
        print_json(&c)
    } else {
        print_bytes(qcapsd::verdicts::compare::render(&c).as_bytes())
    };
    let all_can_run = c.vm.iter().flatten().all(|v| v.ok);
    if printed != ExitCode::SUCCESS || all_can_run {
        printed
    } else {
        ExitCode::from(1)
    }
}

/// Pretty JSON on stdout.
fn print_json(v: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => print_bytes(&b),
        Err(e) => {
            eprintln!("qcapsd: cannot encode JSON: {e}");
            ExitCode::from(1)
        }
    }
}

async fn query(
    addr: Option<String>,
    socket: Option<PathBuf>,
    what: What,
    json: bool,
    watch: bool,
) -> ExitCode {
    let target = match target_of(addr, socket) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if watch {
        return watch_answers(&target, &what, json).await;
    }
    let result = match client::get(&target, &what.path()).await {
        Ok(body) => show(&what, &body, json),
        Err(e) => Err(e),
    };
    match result {
        Ok(out) => print_bytes(&out),
        Err(e) => query_failed(&e),
    }
}

/// An answer as `qcapsd query` prints it: the JSON, or a table.
fn show(what: &What, body: &[u8], json: bool) -> Result<Vec<u8>, QueryError> {
    if json {
        let mut out = body.to_vec();
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        Ok(out)
    } else {
        client::render(what, body).map(String::into_bytes)
    }
}

fn query_failed(e: &QueryError) -> ExitCode {
    eprintln!("qcapsd: {e}");
    match e {
        QueryError::Unreachable { .. } => ExitCode::from(EXIT_UNAVAILABLE),
        _ => ExitCode::from(1),
    }
}

/// `qcapsd query --watch`: prints the answer, then each new one, holding a
/// long-poll (`?wait=`) at a time; runs until interrupted or an error.
async fn watch_answers(target: &Target, what: &What, json: bool) -> ExitCode {
    const WAIT: Duration = Duration::from_secs(300);
    let path = format!("{}?wait={}s", what.path(), WAIT.as_secs());
    let mut etag: Option<String> = None;
    loop {
        let timeout = WAIT + Duration::from_secs(60);
        let fetched = match client::fetch(target, &path, etag.as_deref(), timeout).await {
            Ok(f) => f,
            Err(e) => return query_failed(&e),
        };
        if fetched.status == 304 {
            continue;
        }
        etag = fetched.etag;
        match show(what, &fetched.body, json) {
            Ok(out) => {
                let code = print_bytes(&out);
                if code != ExitCode::SUCCESS {
                    return code;
                }
            }
            Err(e) => return query_failed(&e),
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let cfg = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qcapsd: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let resolved = match discovery::resolve(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qcapsd: {}: {e}", file.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let emulators = resolved.emulators;
    let mut out = format!("{}: ok\n", file.display());
    match cfg.listen {
        Some(l) => out += &format!("listen: {l}\n"),
        None => out += "listen: none (query API on the unix socket only)\n",
    }
    if let Some(m) = cfg.metrics_listen {
        out += &format!("metrics_listen: {m}\n");
    }
    if let Some(s) = &cfg.unix_socket {
        out += &format!("unix_socket: {} (mode 0660)\n", s.display());
    }
    out += &format!("cache_dir: {}\n", cfg.cache_dir.display());
    out += &format!(
        "revalidate every {:?}, probe timeout {:?}, at most {} probe(s) at once\n",
        *cfg.revalidate_interval,
        *cfg.probe_timeout,
        cfg.probe_concurrency()
    );
    let accels: Vec<&str> = cfg.accels.0.iter().map(|a| a.as_str()).collect();
    out += &format!(
        "accelerators probed: {} (the first that works is each document's accel)\n",
        accels.join(", ")
    );
    out += &format!(
        "device properties read for {} device type(s)\n",
        cfg.device_properties.len()
    );
    out += &format!("{} emulator(s):\n", emulators.len());
    for e in &emulators {
        let note = if e.path.exists() {
            ""
        } else {
            "  (missing now)"
        };
        out += &format!("  {}  {}{note}\n", e.name, e.path.display());
    }
    for s in &resolved.skipped {
        out += &format!("skipped {s}\n");
    }
    print_bytes(out.as_bytes())
}

/// Writes to stdout. A closed pipe (`| head`) ends quietly; other write
/// errors are reported.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut written = out.write_all(bytes);
    if written.is_ok() && !bytes.ends_with(b"\n") {
        written = out.write_all(b"\n");
    }
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qcapsd: writing stdout: {e}");
            ExitCode::from(1)
        }
    }
}
