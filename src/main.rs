//! The `qcapsd` binary: wiring only. Run under an emulator's name it is a
//! shim ([`qcapsd::shim`]); otherwise it parses the command line, starts the
//! async runtime and logging, and hands each command to the library
//! ([`qcapsd::daemon`] for `run`, [`qcapsd::cli::commands`] for the rest),
//! which returns the exit code.

#![forbid(unsafe_code)]

use clap::Parser;
use qcapsd::cli::commands::{self, Exit};
use qcapsd::cli::tables::What;
use qcapsd::cli::{Cli, Command, LogFormat};
use qcapsd::config::Config;
use qcapsd::daemon;
use std::io::IsTerminal;

/// The static build (musl) allocates with mimalloc: musl's allocator
/// halves its query throughput (docs/performance.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Run under an emulator's name: a shim, before anything else (no
    // parser, no runtime; a VM start pays only this check and an exec).
    if let Some(code) = qcapsd::shim::run_if_shim() {
        return code;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qcapsd: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let command = cli.command.unwrap_or(Command::Run {
        config: None,
        log_format: LogFormat::Human,
    });
    let code = match command {
        Command::Run { config, log_format } => run(&runtime, config, log_format),
        Command::Probe { schema: true, .. } => {
            commands::print_json(&qcapsd::api::openapi::document_schema())
        }
        Command::Probe {
            path: Some(path),
            accel,
            timeout,
            ..
        } => runtime.block_on(commands::probe(&path, accel, timeout)),
        Command::Probe { path: None, .. } => {
            eprintln!("qcapsd: probe needs the path of a QEMU binary");
            Exit::Usage.into()
        }
        Command::Check {
            addr,
            socket,
            emulator,
            arch,
            vm,
            verify,
            json,
        } => match commands::target_of(addr, socket) {
            Ok(target) => runtime.block_on(commands::check(
                target,
                emulator,
                arch,
                vm.request(),
                verify,
                json,
            )),
            Err(code) => code,
        },
        Command::Vms {
            addr,
            socket,
            against,
            verify,
            json,
        } => match commands::target_of(addr, socket) {
            Ok(target) => runtime.block_on(commands::vms(target, against, verify, json)),
            Err(code) => code,
        },
        Command::Compare { inputs, vm, json } => {
            runtime.block_on(commands::compare(inputs, vm.request(), json))
        }
        Command::Query {
            addr,
            socket,
            emulator,
            part,
            json,
            watch,
        } => match commands::target_of(addr, socket) {
            Ok(target) => runtime.block_on(commands::query(
                target,
                What::from_args(emulator, part),
                json,
                watch,
            )),
            Err(code) => code,
        },
        Command::CheckConfig { file } => commands::check_config(&file),
        Command::Shim { config, dir, sync } => commands::shim(config, dir, sync),
    };
    // A blocking task stuck on a hung file system (a feature file on a
    // dead mount) must not keep the process from exiting.
    runtime.shutdown_timeout(EXIT_GRACE);
    code
}

/// How long blocking work still running gets once a command is done.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

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

/// `qcapsd run`: the agent until SIGTERM.
fn run(runtime: &tokio::runtime::Runtime, config: Option<PathBuf>, format: LogFormat) -> ExitCode {
    init_logging(format);
    commands::become_subreaper();
    let cfg = match &config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("qcapsd: {e}");
                return Exit::Usage.into();
            }
        },
        None => Config::default(),
    };
    match runtime.block_on(daemon::run(cfg, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qcapsd: {e}");
            if e.is_config() {
                Exit::Usage
            } else {
                Exit::Failure
            }
            .into()
        }
    }
}
