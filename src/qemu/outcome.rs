//! What an exec of QEMU comes to: its errors (with the bounded failure
//! reasons of metrics), how QEMU ended, what a query captured, and the
//! counter every exec bumps. [`super::exec`] makes these; the probe, the
//! memo and the agent read them.

use super::qmp::QmpError;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts QEMU processes started. Shared by everything that probes, so tests
/// and metrics see the true number of execs.
#[derive(Debug, Clone, Default)]
pub struct ExecCounter(Arc<AtomicU64>);

impl ExecCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub(super) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{}: no such file", .path.display())]
    NotFound { path: PathBuf },
    #[error("{}: not an executable file", .path.display())]
    NotExecutable { path: PathBuf },
    #[error(
        "{}: cannot start: the file is open for writing by another process (being replaced?); still busy after {}ms",
        .path.display(),
        .waited.as_millis()
    )]
    Busy { path: PathBuf, waited: Duration },
    #[error("{}: cannot start: {source}", .path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no answer within {}s, killed{}", .path.display(), .after.as_secs_f64(), stderr_suffix(.stderr))]
    Timeout {
        path: PathBuf,
        after: Duration,
        stderr: String,
    },
    #[error("{}: probe cancelled", .path.display())]
    Cancelled { path: PathBuf },
    #[error("{}: printed more than {limit} bytes", .path.display())]
    OutputTooLarge { path: PathBuf, limit: usize },
    #[error("{}: {source}{}{}", .path.display(), status_suffix(.status), stderr_suffix(.stderr))]
    Qmp {
        path: PathBuf,
        #[source]
        source: Box<QmpError>,
        /// How QEMU ended, if on its own (not killed by the agent).
        status: Option<Exit>,
        stderr: String,
    },
}

impl ExecError {
    /// Whether a process was started before the error (so there is an exec
    /// time to record).
    pub fn started(&self) -> bool {
        matches!(
            self,
            ExecError::Timeout { .. }
                | ExecError::Cancelled { .. }
                | ExecError::Qmp { .. }
                | ExecError::OutputTooLarge { .. }
        )
    }

    /// Whether QEMU ended the conversation by exiting on its own (it
    /// refused its command line, e.g. an accelerator it lacks), rather
    /// than by a timeout, a cancellation or a garbled conversation.
    pub fn exited_on_its_own(&self) -> bool {
        matches!(
            self,
            ExecError::Qmp {
                status: Some(_),
                ..
            }
        )
    }

    /// Whether QEMU refused its command line: it exited on its own with
    /// status 1, QEMU's exit on an error it reports (an accelerator it
    /// lacks, a KVM-only build with no usable /dev/kvm). The same binary,
    /// modules and host refuse the same command line the same way, so a
    /// retry before one of them changes repeats the exec for the same
    /// answer. Other ends may not recur: a signal (a crash, an OOM kill),
    /// or the loader's 126/127 (a library the package manager has not
    /// finished installing).
    pub fn refused(&self) -> bool {
        matches!(
            self,
            ExecError::Qmp {
                status: Some(Exit::Code(1)),
                ..
            }
        )
    }

    /// Why, as the bounded `reason` of metrics.
    pub fn reason(&self) -> FailureReason {
        match self {
            ExecError::NotFound { .. } => FailureReason::NotFound,
            ExecError::NotExecutable { .. } | ExecError::Busy { .. } | ExecError::Spawn { .. } => {
                FailureReason::Spawn
            }
            ExecError::Timeout { .. } => FailureReason::Timeout,
            ExecError::OutputTooLarge { .. } => FailureReason::Qmp,
            ExecError::Cancelled { .. } => FailureReason::Cancelled,
            ExecError::Qmp { .. } => FailureReason::Qmp,
        }
    }
}

crate::support::labelled! {
    /// Why a probe failed: the `reason` label of
    /// `qcapsd_probe_failures_total`, a fixed set.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    pub enum FailureReason {
        /// The binary is not there.
        NotFound = "not_found",
        /// It could not be started (not executable, busy, refused).
        Spawn = "spawn",
        /// No answer within the probe timeout.
        Timeout = "timeout",
        /// The QMP conversation broke (QEMU exited, or said something
        /// that is not QMP).
        Qmp = "qmp",
        /// A reply had not the shape its command promises.
        BadReply = "bad_reply",
        /// The agent stopped the probe (shutting down); not a failure of
        /// the emulator, so never counted.
        Cancelled = "cancelled",
    }
}

impl FailureReason {
    /// Whether failures for this reason are counted (all but
    /// cancellations).
    pub fn counted(self) -> bool {
        self != FailureReason::Cancelled
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

fn status_suffix(status: &Option<Exit>) -> String {
    status
        .as_ref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default()
}

/// How an exec went, for metrics and the probe record.
#[derive(Debug, Clone, Copy)]
pub struct ExecReport {
    /// Wall time from spawn to reaped.
    pub duration: Duration,
    /// Processes this session started (counted where they are spawned).
    pub execs: u64,
}

/// How QEMU ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub(super) fn of(s: ExitStatus) -> Exit {
        match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            // A reaped process has one or the other; a stopped one is not
            // reaped.
            _ => Exit::Signal(0),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// What QEMU printed for a query, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Exit,
    /// Wall time from spawn to reaped.
    pub duration: Duration,
}
