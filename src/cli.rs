//! The `qcapsd` command line, defined once: the binary parses it, and the
//! man page is generated from it (`cargo run --example man`).

use crate::qemu::Accel;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Exit codes: 0 ok, 64 bad usage or config, 69 service unavailable, 1 other.
#[derive(Parser)]
#[command(
    name = "qcapsd",
    version,
    about = "QEMU capabilities agent: probe once, answer from cache",
    long_about = "qcapsd keeps the capabilities of every QEMU emulator on a host (version, machine types, CPU models and their usability, devices, QMP commands) probed once, cached in memory and on disk, validated with a few stats, and served over a local HTTP/JSON API, so that no caller pays for an exec of QEMU.\n\nExit codes: 0 ok, 64 bad usage or config, 69 service unavailable, 1 other.",
    after_help = "Files: /etc/qcapsd/config.yaml (config), /var/cache/qcapsd (cache), /run/qcapsd/qcapsd.sock (socket). See /usr/share/doc/qcapsd/README.md."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent (the default command).
    Run {
        /// YAML config; without it, the embedded default (discovery).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format on stderr. RUST_LOG sets the level (default info).
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
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
    /// Ask a running agent.
    Query {
        /// Agent address (default http://127.0.0.1:9733, or $QCAPSD_ADDR).
        #[arg(long, conflicts_with = "socket")]
        addr: Option<String>,
        /// The agent's unix socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// An emulator name (see `qcapsd query`).
        emulator: Option<String>,
        /// machines | cpu-models | devices | commands | changes | DEVICE
        part: Option<String>,
        /// Print the JSON as served.
        #[arg(long)]
        json: bool,
        /// Print the answer, then each new one as it changes (long-poll).
        #[arg(long)]
        watch: bool,
    },
    /// Validate a config file and say what it would do.
    CheckConfig { file: PathBuf },
}
