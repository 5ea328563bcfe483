//! The `qcapsd` binary: wiring only. Parses the command line, builds what the
//! command needs from the library, runs it, and maps errors to exit codes
//! (0 ok, 64 usage or config, 69 service unavailable, 1 other).

#![forbid(unsafe_code)]

use clap::Parser;
use qcapsd::cli::{Cli, Command, LogFormat};
use qcapsd::client::{self, QueryError, Target, What};
use qcapsd::config::Config;
use qcapsd::qemu::{self, Accel, ExecCounter, ProbeRequest};
use qcapsd::{daemon, discovery};
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
        Command::Probe {
            path,
            accel,
            timeout,
        } => runtime.block_on(probe(path, accel, timeout)),
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
    let mut req = ProbeRequest::new(name);
    req.accel = accel;
    req.timeout = Duration::from_secs(timeout.max(1));
    let cancel = CancellationToken::new();
    match qemu::probe(&path, &req, &ExecCounter::default(), &cancel).await {
        Ok((caps, _)) => print_bytes(&match serde_json::to_vec_pretty(&caps) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("qcapsd: cannot serialize the capabilities: {e}");
                return ExitCode::from(1);
            }
        }),
        Err(e) => {
            eprintln!("qcapsd: probe failed: {e}");
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
    let target = match (socket, addr.or_else(|| std::env::var("QCAPSD_ADDR").ok())) {
        (Some(s), _) => Target::Unix(s),
        (None, Some(a)) => match Target::from_addr(&a) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("qcapsd: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, None) => Target::Tcp {
            authority: qcapsd::config::defaults::LISTEN.to_owned(),
        },
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
