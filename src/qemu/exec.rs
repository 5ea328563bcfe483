//! The exec sandbox: the only place in qcapsd that starts a process.
//!
//! QEMU runs paused (`-S`) with no user config, no default devices, no
//! display and `-machine none`, with QMP on its stdio. The environment is
//! empty except `PATH`, `LC_ALL=C` and a tag naming the agent, the process
//! leads its own process group, stderr is captured up to a cap, and the
//! session has one deadline. Whatever the outcome (success, QMP error,
//! timeout, cancellation, a dropped future) the whole group is killed and
//! the leader reaped: no zombie, no orphan. QMP goes over pipes, so no
//! temporary file exists.
//!
//! Nothing a probe starts outlives the agent:
//! - QEMU gets `SIGKILL` when the agent dies, however it dies (the
//!   parent-death signal, set in the child before exec). That signal fires
//!   when the *thread* that forked exits, so every QEMU is forked by one
//!   thread that lives as long as the process.
//! - Helpers that leave QEMU's process group (a wrapper's child calling
//!   `setsid()`) are re-parented to the agent when their parent dies, as the
//!   agent is a child subreaper ([`super::reaper::become_subreaper`]); after each probe they
//!   are killed and reaped ([`super::reaper::reap_orphans`]).
//! - At start, processes an earlier instance left (found by their tag) are
//!   killed ([`super::reaper::sweep_tagged`]).

use super::accel::Accel;
pub use super::outcome::{Captured, ExecCounter, ExecError, ExecReport, Exit};
use super::qmp::{DEFAULT_MAX_MESSAGE, Qmp, QmpError};
use super::reaper::{SUBREAPER, reap_orphans};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

/// The environment variable that tags every probe process (and whatever it
/// starts, as they inherit it) with the agent it belongs to.
pub const TAG_VAR: &str = "QCAPSD_PROBE";

/// How much of QEMU's stderr is kept for error messages.
pub const STDERR_CAP: usize = 32 << 10;
/// How much of it an error message shows: its last lines.
const STDERR_SHOWN: usize = 2000;
/// PATH given to QEMU when the agent itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After QMP breaks, how long QEMU gets to exit by itself so that its own
/// exit status (and last stderr words) make it into the error.
const EXIT_GRACE: Duration = Duration::from_millis(300);
/// Waits before retrying an exec refused with `ETXTBSY` (the file is open
/// for writing somewhere). That happens when an installer writes the binary
/// in place, and, briefly, when any process forks while another thread of
/// it holds the file open for writing: the child keeps that descriptor
/// until its own exec. Both pass; the retries cover about 1.3 s.
const BUSY_RETRIES: [Duration; 6] = [
    Duration::from_millis(10),
    Duration::from_millis(30),
    Duration::from_millis(60),
    Duration::from_millis(150),
    Duration::from_millis(350),
    Duration::from_millis(700),
];

/// What to start and under which limits.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub path: PathBuf,
    pub accel: Accel,
    pub timeout: Duration,
    pub max_message: usize,
    /// Value of [`TAG_VAR`] in QEMU's environment.
    pub tag: Option<String>,
    /// `Some`: a VM's machine, accelerator, CPU and devices (see
    /// [`super::verify`]) instead of a probe's `-machine none` under
    /// `accel`; still stopped (`-S`), with no default devices, no user
    /// config, no display, no disk and no network.
    pub vm: Option<Vec<String>>,
}

impl ExecSpec {
    pub fn new(path: impl Into<PathBuf>, accel: Accel, timeout: Duration) -> Self {
        ExecSpec {
            path: path.into(),
            accel,
            timeout,
            max_message: DEFAULT_MAX_MESSAGE,
            tag: None,
            vm: None,
        }
    }
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
    let resolved;
    let spec = if spec.path.is_absolute() {
        spec
    } else {
        resolved = ExecSpec {
            path: absolute(&spec.path)?,
            ..spec.clone()
        };
        &resolved
    };
    check_executable(&spec.path)?;
    let started = Instant::now();
    let mut proc = Running::spawn(spec).await?;
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
    if SUBREAPER.load(Ordering::Relaxed) {
        let _ = tokio::task::spawn_blocking(reap_orphans).await;
    }
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
            status: status.filter(|_| !proc.killed_by_us).map(Exit::of),
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

/// `path` made absolute against the current directory (QEMU is started
/// in `/`, where a relative path would name another file).
pub fn absolute(path: &Path) -> Result<PathBuf, ExecError> {
    std::path::absolute(path).map_err(|source| ExecError::Spawn {
        path: path.to_owned(),
        source,
    })
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
    async fn spawn(spec: &ExecSpec) -> Result<Self, ExecError> {
        let child = spawn_child(&spec.path, || {
            let mut cmd = sandboxed(&spec.path, spec.tag.as_deref());
            cmd.args(["-S", "-no-user-config", "-nodefaults"]);
            match &spec.vm {
                None => cmd.args(["-nographic", "-machine", spec.accel.machine_arg()]),
                Some(vm) => cmd.args(["-display", "none"]).args(vm),
            };
            cmd.args(["-qmp", "stdio"]).stdin(Stdio::piped());
            cmd
        })
        .await?;
        Ok(Self::started(child, spec.max_message))
    }
}

/// Starts `make()` on the spawner thread, retrying while the binary is
/// open for writing (`ETXTBSY`, see [`BUSY_RETRIES`]).
async fn spawn_child(path: &Path, make: impl Fn() -> Command) -> Result<Child, ExecError> {
    let mut waited = Duration::ZERO;
    let mut retries = BUSY_RETRIES.iter();
    loop {
        match spawn_on_spawner(make()).await {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()) => {
                let Some(&pause) = retries.next() else {
                    return Err(ExecError::Busy {
                        path: path.to_owned(),
                        waited,
                    });
                };
                tracing::debug!(path = %path.display(), "binary busy (open for writing); retrying");
                tokio::time::sleep(pause).await;
                waited += pause;
            }
            Err(e) => {
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => ExecError::NotFound {
                        path: path.to_owned(),
                    },
                    std::io::ErrorKind::PermissionDenied => ExecError::NotExecutable {
                        path: path.to_owned(),
                    },
                    _ => ExecError::Spawn {
                        path: path.to_owned(),
                        source: e,
                    },
                });
            }
        }
    }
}

/// QEMU in the sandbox every exec of the agent gets: an empty environment
/// but `PATH`, `LC_ALL=C` and the agent's tag, `/` as its directory, its
/// own process group, killed with the agent (and on drop), stdout and
/// stderr piped. The caller adds the arguments and stdin.
fn sandboxed(path: &Path, tag: Option<&str>) -> Command {
    let path_env = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    // The one place qcapsd starts a process (clippy.toml forbids it
    // everywhere else).
    #[allow(clippy::disallowed_methods)]
    let mut cmd = Command::new(path);
    cmd.env_clear()
        .env("PATH", path_env)
        .env("LC_ALL", "C")
        .envs(tag.map(|t| (TAG_VAR, t)))
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd
}

// ---- pure queries: recorded, and run in place --------------------------

/// A pure query (see [`super::cmdline`]) to record: QEMU run with `args`,
/// under the name `argv0` (QEMU prefixes its messages with it).
#[derive(Debug, Clone)]
pub struct QuerySpec {
    pub path: PathBuf,
    pub argv0: String,
    pub args: Vec<String>,
    pub timeout: Duration,
    /// The most bytes kept of stdout, and of stderr: more is an error.
    pub max_output: usize,
    /// Value of [`TAG_VAR`] in QEMU's environment.
    pub tag: Option<String>,
}

/// Kills a process group when dropped (a cancelled or timed-out query).
struct Group(Option<Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
            leaders().remove(&pgid.as_raw_nonzero().get());
        }
    }
}

/// Runs a pure query once in the sandbox (stdin empty) and captures what
/// QEMU prints. Output over `max_output` on either stream fails the
/// query (the process is killed); so do the timeout and cancellation.
/// The process group is killed and the leader reaped in every case.
pub async fn run_query(
    spec: &QuerySpec,
    counter: &ExecCounter,
    cancel: &CancellationToken,
) -> Result<Captured, ExecError> {
    let path = absolute(&spec.path)?;
    check_executable(&path)?;
    let started = Instant::now();
    let mut child = spawn_child(&path, || {
        let mut cmd = sandboxed(&path, spec.tag.as_deref());
        cmd.arg0(&spec.argv0).args(&spec.args).stdin(Stdio::null());
        cmd
    })
    .await?;
    counter.bump();
    let group = Group(child.id().and_then(|id| Pid::from_raw(id as i32)));
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let limit = spec.max_output as u64 + 1;
    let run = async {
        let read = |pipe: Option<tokio::process::ChildStdout>| async move {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                p.take(limit).read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(p) = err {
                p.take(limit).read_to_end(&mut buf).await?;
            }
            Ok::<_, std::io::Error>(buf)
        };
        let (stdout, stderr) = tokio::try_join!(read(out), read_err)?;
        if stdout.len() as u64 >= limit || stderr.len() as u64 >= limit {
            return Ok(None);
        }
        let status = child.wait().await?;
        Ok::<_, std::io::Error>(Some((stdout, stderr, status)))
    };
    let outcome = tokio::select! {
        r = run => Some(r),
        () = tokio::time::sleep(spec.timeout) => None,
        () = cancel.cancelled() => {
            drop(group);
            return Err(ExecError::Cancelled { path });
        }
    };
    drop(group);
    if SUBREAPER.load(Ordering::Relaxed) {
        let _ = tokio::task::spawn_blocking(reap_orphans).await;
    }
    match outcome {
        None => Err(ExecError::Timeout {
            path,
            after: spec.timeout,
            stderr: String::new(),
        }),
        Some(Err(source)) => Err(ExecError::Spawn { path, source }),
        Some(Ok(None)) => Err(ExecError::OutputTooLarge {
            path,
            limit: spec.max_output,
        }),
        Some(Ok(Some((stdout, stderr, status)))) => Ok(Captured {
            stdout,
            stderr,
            exit: Exit::of(status),
            duration: started.elapsed(),
        }),
    }
}

/// Replaces this process with QEMU at `path`, given `argv0` and `args`:
/// the same pid, environment, descriptors and directory, so the caller's
/// child *is* QEMU. Returns only if the exec failed. (Rust's `exec`
/// resets the signal mask, and SIGPIPE to its default, as any exec from
/// a Rust program does.)
pub fn replace_process(
    path: &Path,
    argv0: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    #[allow(clippy::disallowed_methods)]
    std::process::Command::new(path)
        .arg0(argv0)
        .args(args)
        .exec()
}

impl Running {
    fn started(mut child: Child, max_message: usize) -> Self {
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
            (Some(out), Some(inp)) => Some(Qmp::new(out, inp, max_message)),
            _ => None,
        };
        Running {
            child: Some(child),
            pgid,
            qmp,
            stderr,
            stderr_task,
            killed_by_us: false,
        }
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
        if let Some(pid) = self.pgid {
            leaders().remove(&pid.as_raw_nonzero().get());
        }
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
        // QEMU's error comes last (after its warnings): keep the last
        // lines whole, up to STDERR_SHOWN bytes.
        let mut kept_lines = Vec::new();
        let mut len = 0;
        for l in lines.iter().rev() {
            if len + l.len() + 3 > STDERR_SHOWN && !kept_lines.is_empty() {
                kept_lines.push("…");
                break;
            }
            len += l.len() + 3;
            kept_lines.push(l);
        }
        kept_lines.reverse();
        let mut one = kept_lines.join(" | ");
        if one.len() > STDERR_SHOWN {
            let cut = (0..=STDERR_SHOWN)
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
            let pid = self.pgid.map(|p| p.as_raw_nonzero().get());
            rt.spawn(async move {
                let _ = child.wait().await;
                if let Some(pid) = pid {
                    leaders().remove(&pid);
                }
            });
        }
    }
}

// ---- processes that must not outlive the agent ---------------------------

/// Sets the parent-death signal in the child: QEMU is killed when the
/// thread that forked it (the spawner thread, which lives as long as the
/// process) exits, that is when the agent dies, even by `SIGKILL`.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes two system calls
    // (prctl and getppid) through rustix's direct syscall wrappers and, on
    // failure, builds an io::Error from a raw errno: no allocation, no
    // lock, nothing shared with the parent's threads.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before the signal was set.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            Ok(())
        });
    }
}

/// A spawn handed to the spawner thread.
struct SpawnJob {
    cmd: Command,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Child>>,
}

/// The thread every QEMU is forked from. It never exits, so the
/// parent-death signal fires only when the process does.
fn spawner() -> Option<&'static std::sync::mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Option<std::sync::mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
            let started = std::thread::Builder::new()
                .name("qcapsd-spawner".into())
                .spawn(move || {
                    for mut job in rx {
                        // tokio registers the child with the runtime that
                        // will reap it.
                        let _in_runtime = job.runtime.enter();
                        let mut live = leaders();
                        let result = job.cmd.spawn();
                        if let Ok(c) = &result {
                            live.extend(c.id().and_then(|id| i32::try_from(id).ok()));
                        }
                        drop(live);
                        let _ = job.reply.send(result);
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the spawner thread; QEMU is forked from runtime threads");
                    None
                }
            }
        })
        .as_ref()
}

async fn spawn_on_spawner(mut cmd: Command) -> std::io::Result<Child> {
    let Some(spawner) = spawner() else {
        let mut live = leaders();
        let child = cmd.spawn()?;
        live.extend(child.id().and_then(|id| i32::try_from(id).ok()));
        return Ok(child);
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    spawner
        .send(SpawnJob {
            cmd,
            runtime: tokio::runtime::Handle::current(),
            reply,
        })
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawner thread is gone")))
}

/// Pids of the QEMU processes the sandbox started and has not reaped yet.
/// Held while forking, so an orphan sweep never takes a new QEMU for an
/// orphan.
pub(super) fn leaders() -> MutexGuard<'static, HashSet<i32>> {
    static LEADERS: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    LEADERS
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Whether `pid` has exited, checked without reaping it (so its pid, and
/// the group id, cannot be reused yet).
fn exited_unreaped(pid: Pid) -> bool {
    let opts = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
    matches!(rustix::process::waitid(WaitId::Pid(pid), opts), Ok(Some(_)))
}
