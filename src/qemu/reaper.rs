//! Processes that must not outlive the agent: as a child subreaper it
//! kills and reaps the helpers a probe left behind ([`reap_orphans`]),
//! and at start it kills what an earlier instance left running
//! ([`sweep_tagged`]). Nothing here starts a process.

use super::exec::{TAG_VAR, leaders};
use rustix::process::{Pid, Signal};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the process is a subreaper (then orphans are ours to reap).
pub(super) static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// Makes this process the reaper of its orphaned descendants, so a helper
/// that leaves QEMU's process group is re-parented here when its parent
/// dies, and is killed after its probe. For the `qcapsd` binary only: a
/// library user (a test process) has children of its own that are not
/// probes.
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    SUBREAPER.store(true, Ordering::Relaxed);
    Ok(())
}

/// Children of this process that are not a live QEMU leader: helpers a
/// probe left behind, re-parented here (as subreaper) when their parent
/// was killed.
fn orphans() -> Vec<Pid> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let live = leaders();
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !live.contains(pid))
        .filter(|&pid| parent_of(pid) == Some(me))
        .filter_map(Pid::from_raw)
        .collect()
}

/// The parent pid in `/proc/PID/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces and parentheses):
    // state, then ppid.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Kills and reaps every orphan re-parented to this process, again until
/// none is left (killing one re-parents its own children here). Their pids
/// cannot be reused meanwhile: only their parent, this process, can reap
/// them. Blocking; returns how many were killed.
pub fn reap_orphans() -> usize {
    let mut killed = 0;
    for _ in 0..64 {
        let found = orphans();
        if found.is_empty() {
            break;
        }
        for pid in found {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            killed += 1;
        }
    }
    if killed > 0 {
        tracing::warn!(processes = killed, "killed processes a probe left behind");
    }
    killed
}

/// Kills every process whose environment carries `TAG_VAR=tag`: what an
/// earlier instance of this agent (same cache directory) left running if
/// it died without cleaning up. Call before the first probe. Returns how
/// many were killed.
pub fn sweep_tagged(tag: &str) -> usize {
    let needle = format!("{TAG_VAR}={tag}");
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for pid in rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
    {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            if let Some(p) = Pid::from_raw(pid) {
                if rustix::process::kill_process(p, Signal::KILL).is_ok() {
                    killed += 1;
                }
            }
        }
    }
    if killed > 0 {
        tracing::warn!(
            processes = killed,
            "killed probe processes an earlier instance left running"
        );
    }
    killed
}
