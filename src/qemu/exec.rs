//! The exec sandbox: the only place in qcapsd that starts a process.
//!
//! QEMU runs paused (`-S`) with no user config, no default devices, no
//! display and `-machine none`, with QMP on its stdio. The environment is
//! empty except `PATH` and `LC_ALL=C`, the process leads its own process
//! group, stderr is captured up to a cap, and the session has one deadline.
//! Whatever the outcome (success, QMP error, timeout, cancellation, a
//! dropped future) the whole group is killed and the leader reaped: no
//! zombie, no orphan. QMP goes over pipes, so no temporary file exists.

use super::qmp::{DEFAULT_MAX_MESSAGE, Qmp, QmpError};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

/// How much of QEMU's stderr is kept for error messages.
pub const STDERR_CAP: usize = 32 << 10;
/// PATH given to QEMU when the agent itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After QMP breaks, how long QEMU gets to exit by itself so that its own
/// exit status (and last stderr words) make it into the error.
const EXIT_GRACE: Duration = Duration::from_millis(300);

/// Which accelerator QEMU is asked for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where it works, TCG otherwise (`accel=kvm:tcg`).
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    fn machine_arg(self) -> &'static str {
        match self {
            Accel::Auto => "none,accel=kvm:tcg",
            Accel::Kvm => "none,accel=kvm",
            Accel::Tcg => "none,accel=tcg",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Counts QEMU processes started. Shared by everything that probes, so tests
/// and metrics see the true number of execs.
#[derive(Debug, Clone, Default)]
pub struct ExecCounter(Arc<AtomicU64>);

impl ExecCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What to start and under which limits.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub path: PathBuf,
    pub accel: Accel,
    pub timeout: Duration,
    pub max_message: usize,
}

impl ExecSpec {
    pub fn new(path: impl Into<PathBuf>, accel: Accel, timeout: Duration) -> Self {
        ExecSpec {
            path: path.into(),
            accel,
            timeout,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{}: no such file", .path.display())]
    NotFound { path: PathBuf },
    #[error("{}: not an executable file", .path.display())]
    NotExecutable { path: PathBuf },
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
    #[error("{}: {source}{}{}", .path.display(), status_suffix(.status), stderr_suffix(.stderr))]
    Qmp {
        path: PathBuf,
        #[source]
        source: Box<QmpError>,
        status: Option<String>,
        stderr: String,
    },
}

impl ExecError {
    /// Whether a process was started before the error (so there is an exec
    /// time to record).
    pub fn started(&self) -> bool {
        matches!(
            self,
            ExecError::Timeout { .. } | ExecError::Cancelled { .. } | ExecError::Qmp { .. }
        )
    }

    /// A short, bounded label for metrics (`reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            ExecError::NotFound { .. } => "not_found",
            ExecError::NotExecutable { .. } | ExecError::Spawn { .. } => "spawn",
            ExecError::Timeout { .. } => "timeout",
            ExecError::Cancelled { .. } => "cancelled",
            ExecError::Qmp { .. } => "qmp",
        }
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

fn status_suffix(status: &Option<String>) -> String {
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

type Session = Qmp<ChildStdout, ChildStdin>;

/// Starts QEMU, runs `work` against its QMP monitor, then kills and reaps
/// the process group. The deadline covers start-up, greeting and `work`.
pub async fn with_qemu<T>(
    spec: &ExecSpec,
    counter: &ExecCounter,
    cancel: &CancellationToken,
    work: impl AsyncFnOnce(&mut Session) -> Result<T, QmpError>,
) -> Result<(T, ExecReport), ExecError> {
    check_executable(&spec.path)?;
    let started = Instant::now();
    let mut proc = Running::spawn(spec)?;
    counter.bump();
    let Some(mut qmp) = proc.qmp.take() else {
        return Err(ExecError::Spawn {
            path: spec.path.clone(),
            source: std::io::Error::other("stdio pipes missing"),
        });
    };
    let outcome = tokio::select! {
        r = work(&mut qmp) => Outcome::Done(r),
        () = tokio::time::sleep(spec.timeout) => Outcome::TimedOut,
        () = cancel.cancelled() => Outcome::Cancelled,
    };
    drop(qmp);
    if matches!(outcome, Outcome::Done(Err(_))) {
        proc.grace_for_exit(EXIT_GRACE).await;
    }
    let status = proc.kill_and_reap().await;
    let stderr = proc.stderr_text();
    let report = ExecReport {
        duration: started.elapsed(),
        execs: 1,
    };
    let path = spec.path.clone();
    match outcome {
        Outcome::Done(Ok(v)) => Ok((v, report)),
        Outcome::Done(Err(source)) => Err(ExecError::Qmp {
            path,
            source: Box::new(source),
            // QEMU's own exit status, not the SIGKILL we sent.
            status: status.filter(|_| !proc.killed_by_us).map(describe_status),
            stderr,
        }),
        Outcome::TimedOut => Err(ExecError::Timeout {
            path,
            after: spec.timeout,
            stderr,
        }),
        Outcome::Cancelled => Err(ExecError::Cancelled { path }),
    }
}

enum Outcome<T> {
    Done(Result<T, QmpError>),
    TimedOut,
    Cancelled,
}

fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// Refuses paths that are obviously not runnable, with a clear error,
/// before anything is started.
fn check_executable(path: &Path) -> Result<(), ExecError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ExecError::NotFound {
            path: path.to_owned(),
        },
        _ => ExecError::Spawn {
            path: path.to_owned(),
            source: e,
        },
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(ExecError::NotExecutable {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// A started QEMU. Dropping it kills the whole process group, so a cancelled
/// future cannot leak a process, and hands the leader to a task that reaps
/// it.
struct Running {
    /// `None` once reaped (or handed to the reaper task on drop).
    child: Option<Child>,
    pgid: Option<Pid>,
    qmp: Option<Session>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_task: tokio::task::JoinHandle<()>,
    killed_by_us: bool,
}

impl Running {
    fn spawn(spec: &ExecSpec) -> Result<Self, ExecError> {
        let path_env = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        // The one place qcapsd starts a process (clippy.toml forbids it
        // everywhere else).
        #[allow(clippy::disallowed_methods)]
        let mut cmd = Command::new(&spec.path);
        cmd.args([
            "-S",
            "-no-user-config",
            "-nodefaults",
            "-nographic",
            "-machine",
            spec.accel.machine_arg(),
            "-qmp",
            "stdio",
        ])
        .env_clear()
        .env("PATH", path_env)
        .env("LC_ALL", "C")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ExecError::NotFound {
                path: spec.path.clone(),
            },
            std::io::ErrorKind::PermissionDenied => ExecError::NotExecutable {
                path: spec.path.clone(),
            },
            _ => ExecError::Spawn {
                path: spec.path.clone(),
                source: e,
            },
        })?;
        let pgid = child.id().and_then(|id| Pid::from_raw(id as i32));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_task = match child.stderr.take() {
            Some(mut pipe) => {
                let sink = Arc::clone(&stderr);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    while let Ok(n) = pipe.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // Keep the first STDERR_CAP bytes, drain the rest so
                        // QEMU never blocks on a full pipe.
                        if let Ok(mut kept) = sink.lock() {
                            let room = STDERR_CAP.saturating_sub(kept.len());
                            kept.extend_from_slice(&buf[..n.min(room)]);
                        }
                    }
                })
            }
            None => tokio::spawn(async {}),
        };
        let qmp = match (child.stdout.take(), child.stdin.take()) {
            (Some(out), Some(inp)) => Some(Qmp::new(out, inp, spec.max_message)),
            _ => None,
        };
        Ok(Running {
            child: Some(child),
            pgid,
            qmp,
            stderr,
            stderr_task,
            killed_by_us: false,
        })
    }

    /// Waits up to `grace` for the leader to exit on its own, without
    /// reaping it.
    async fn grace_for_exit(&self, grace: Duration) {
        let Some(pid) = self.pgid else { return };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !exited_unreaped(pid) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills every process in the group, then reaps the leader. The leader is
    /// not reaped before the kill, so the group id still names our group.
    async fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let exited_alone = self.pgid.is_some_and(exited_unreaped);
        self.kill_group();
        self.killed_by_us = !exited_alone;
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        self.pgid = None;
        // The pipe closes once every holder is dead; don't wait on it.
        let _ = tokio::time::timeout(Duration::from_millis(200), &mut self.stderr_task).await;
        status
    }

    fn kill_group(&self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (already gone) is fine.
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
    }

    fn stderr_text(&self) -> String {
        let kept = self.stderr.lock().map(|v| v.clone()).unwrap_or_default();
        let text = String::from_utf8_lossy(&kept);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut one = lines.join(" | ");
        if one.len() > 2000 {
            let cut = (0..=2000)
                .rev()
                .find(|&i| one.is_char_boundary(i))
                .unwrap_or(0);
            one.truncate(cut);
            one.push('…');
        }
        one
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group();
        self.stderr_task.abort();
        // Reap the leader now rather than leave it to tokio's best-effort
        // orphan queue (outside a runtime, kill_on_drop and that queue
        // remain the fallback).
        if let (Some(mut child), Ok(rt)) =
            (self.child.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

/// Whether `pid` has exited, checked without reaping it (so its pid, and
/// the group id, cannot be reused yet).
fn exited_unreaped(pid: Pid) -> bool {
    let opts = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
    matches!(rustix::process::waitid(WaitId::Pid(pid), opts), Ok(Some(_)))
}
