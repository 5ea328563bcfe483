//! The `qcapsd` command line, defined once: the binary parses it, and the
//! man page is generated from it (`cargo run --example man`). What each
//! command does is in [`commands`]; [`tables`] renders answers for people.

pub mod commands;
pub mod tables;

use crate::qemu::Accel;
use clap::builder::TypedValueParser as _;
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
        #[arg(required_unless_present = "schema")]
        path: Option<PathBuf>,
        /// `auto`: as the agent does by default (KVM where it works, plus a
        /// TCG pass for CPU usability under TCG); `kvm` or `tcg`: one pass
        /// under that accelerator only.
        #[arg(long, default_value = "auto", value_parser = accel_parser())]
        accel: Accel,
        /// Give up (and kill QEMU) after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Print the JSON Schema of the capabilities document instead.
        #[arg(long, conflicts_with_all = ["path", "accel", "timeout"])]
        schema: bool,
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
    /// Can this host run such a VM? Asks a running agent; exits 0 if yes,
    /// 1 if not, 69 if no agent answers, 64 for a bad question.
    Check {
        /// Agent address (default http://127.0.0.1:9733, or $QCAPSD_ADDR).
        #[arg(long, conflicts_with = "socket")]
        addr: Option<String>,
        /// The agent's unix socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The emulator (see `qcapsd query`); or --arch.
        #[arg(conflicts_with = "arch")]
        emulator: Option<String>,
        /// The guest architecture: picks the emulator for it.
        #[arg(long)]
        arch: Option<String>,
        #[command(flatten)]
        vm: VmArgs,
        /// Have QEMU confirm the verdict: the agent starts the emulator
        /// once with this VM (stopped, no disk, no network) and keeps the
        /// answer for as long as the binary and host stay the same.
        #[arg(long)]
        verify: bool,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The running VMs (QEMU processes of the agent's emulators) and
    /// whether each would start again: on the binary installed now, or on
    /// another host or QEMU (--against). Exits 0 if every VM would, 1 if
    /// one would not or cannot be judged, 69 if no agent answers.
    Vms {
        /// Agent address (default http://127.0.0.1:9733, or $QCAPSD_ADDR).
        #[arg(long, conflicts_with = "socket")]
        addr: Option<String>,
        /// The agent's unix socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Judge the VMs against this capabilities document instead (a
        /// file from `qcapsd probe`, `-` for stdin, or an agent URL
        /// http://HOST:PORT/v1/emulators/NAME): would they start there?
        #[arg(long, value_name = "INPUT", conflicts_with = "verify")]
        against: Option<String>,
        /// Have QEMU confirm each verdict (once per VM configuration).
        #[arg(long)]
        verify: bool,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What several hosts' capabilities share (a pool's baseline) and where
    /// a VM can run. Each INPUT is a document written by `qcapsd probe`, a
    /// saved `GET /v1/emulators/NAME`, `-` (stdin) or an agent URL
    /// http://HOST:PORT/v1/emulators/NAME.
    Compare {
        /// Two or more documents of the same architecture.
        #[arg(required = true, num_args = 2..)]
        inputs: Vec<String>,
        /// The VM checked on every input.
        #[command(flatten)]
        vm: VmArgs,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file and say what it would do.
    CheckConfig { file: PathBuf },
    /// List the shims (config `shim_dir`) and what each fronts, and whether
    /// the agent answers them; with --sync, make them match the emulators
    /// the config finds (what the agent does at start; the package runs it
    /// at install).
    Shim {
        /// The config naming `shim_dir` (default: /etc/qcapsd/config.yaml).
        #[arg(long, short, conflicts_with = "dir")]
        config: Option<PathBuf>,
        /// The shim directory itself (listing only).
        #[arg(long, conflicts_with = "sync")]
        dir: Option<PathBuf>,
        /// Create, update and remove shims to match the config's emulators.
        #[arg(long)]
        sync: bool,
    },
}

/// The VM `check` and `compare` ask about.
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Machine type or alias (check: default QEMU's default machine).
    #[arg(long)]
    pub machine: Option<String>,
    /// CPU model.
    #[arg(long)]
    pub cpu: Option<String>,
    /// A device type or alias; repeat for more.
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// kvm or tcg: CPU usability under it (default: the accelerator each
    /// document was probed under).
    #[arg(long, value_parser = Accel::concrete)]
    pub accel: Option<Accel>,
    /// Number of vCPUs, checked against the machine's limit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub cpus: Option<u64>,
}

/// `--accel` of `qcapsd probe`: one of QEMU's accelerators or `auto`,
/// listed in `--help`.
fn accel_parser() -> impl clap::builder::TypedValueParser<Value = Accel> {
    clap::builder::PossibleValuesParser::new(["auto", "kvm", "tcg"])
        .map(|s| s.parse::<Accel>().unwrap_or_default())
}

impl VmArgs {
    /// The check request, accelerator included.
    pub fn request(self) -> crate::verdicts::check::CheckRequest {
        crate::verdicts::check::CheckRequest {
            cpu_flags: Vec::new(),
            cpu_lenient: false,
            machine: self.machine,
            cpu: self.cpu,
            devices: self.devices,
            accel: self.accel,
            cpus: self.cpus,
        }
    }
}
