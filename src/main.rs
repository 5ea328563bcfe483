//! The `qcapsd` binary: wiring only. Parses the command line, builds what the
//! command needs from the library, runs it, and maps errors to exit codes
//! (0 ok, 64 usage or config, 69 service unavailable, 1 other).

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use qcapsd::qemu::{self, Accel, ExecCounter, ProbeRequest};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "qcapsd",
    version,
    about = "QEMU capabilities agent: probe once, answer from cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Probe one emulator once and print its capabilities JSON on stdout.
    Probe {
        /// Path of the QEMU binary.
        path: PathBuf,
        /// Accelerator to probe under.
        #[arg(long, value_enum, default_value_t = Accel::Auto)]
        accel: Accel,
        /// Give up (and kill QEMU) after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

const EXIT_USAGE: u8 = 64;

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
    match cli.command {
        Some(Command::Probe {
            path,
            accel,
            timeout,
        }) => runtime.block_on(probe(path, accel, timeout)),
        None => {
            eprintln!("qcapsd: the agent is not built yet; use `qcapsd probe PATH`");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

async fn probe(path: PathBuf, accel: Accel, timeout: u64) -> ExitCode {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let mut req = ProbeRequest::new(name);
    req.accel = accel;
    req.timeout = Duration::from_secs(timeout);
    let cancel = CancellationToken::new();
    match qemu::probe(&path, &req, &ExecCounter::default(), &cancel).await {
        Ok((caps, _)) => print_json(&caps),
        Err(e) => {
            eprintln!("qcapsd: probe failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints `value` as pretty JSON on stdout. A closed pipe (`| head`) ends
/// quietly; other write errors are reported.
fn print_json(value: &impl serde::Serialize) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qcapsd: writing stdout: {e}");
            ExitCode::from(1)
        }
    }
}
