//! The revalidator: re-checks every emulator every `revalidate_interval`,
//! and at once when inotify reports a change in a watched directory (the
//! binaries' directories and QEMU's module directories — package upgrades
//! rename new files in, so directories are watched, not files). Each pass is
//! stat-only; only what changed is re-probed, under `probe_concurrency`.
//! It also wakes when a failed emulator's backoff ends.

use crate::agent::Agent;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events are gathered for this long before a pass (an upgrade touches many
/// files at once).
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// The shortest time between two passes woken by a retry.
pub const MIN_PASS_GAP: Duration = Duration::from_millis(200);

/// Watches `dirs` (those that exist); each event sends a wake-up. The
/// watcher stops when dropped.
pub fn watch(dirs: &[PathBuf], wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = wake.try_send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; revalidating on the timer only");
            return None;
        }
    };
    for d in dirs.iter().filter(|d| d.is_dir()) {
        if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
        }
    }
    Some(w)
}

/// The revalidator: its watches and the wake-ups they send.
pub struct Revalidator {
    wake_tx: mpsc::Sender<()>,
    wake: mpsc::Receiver<()>,
    dirs: Vec<PathBuf>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Revalidator {
    /// Installs the watches on `agent`'s directories. Do this before the
    /// agent's start-up pass, so a change made while it runs is not missed.
    pub fn watching(agent: &Agent) -> Revalidator {
        let (wake_tx, wake) = mpsc::channel(64);
        let dirs = agent.watch_dirs();
        let watcher = watch(&dirs, wake_tx.clone());
        Revalidator {
            wake_tx,
            wake,
            dirs,
            _watcher: watcher,
        }
    }

    /// Runs passes until `shutdown`: on the timer, an inotify event, a
    /// failed emulator's retry time, or `reloaded` (the config changed: new
    /// directories to watch, maybe a new interval).
    pub async fn run(
        mut self,
        agent: Arc<Agent>,
        mut reloaded: mpsc::Receiver<()>,
        shutdown: CancellationToken,
    ) {
        loop {
            let interval = *agent.config().revalidate_interval;
            // Never sooner than MIN_PASS_GAP: whatever the retry times say,
            // the revalidator cannot spin.
            let retry = agent
                .cache
                .next_retry()
                .map(|t| t.max(tokio::time::Instant::now() + MIN_PASS_GAP));
            let retry_sleep = async {
                match retry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
                () = retry_sleep => {}
                Some(()) = self.wake.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while self.wake.try_recv().is_ok() {}
                }
                Some(()) = reloaded.recv() => {
                    let now = agent.watch_dirs();
                    if now != self.dirs {
                        self.dirs = now;
                        self._watcher = watch(&self.dirs, self.wake_tx.clone());
                    }
                }
            }
            agent.rediscover().await;
            agent.cache.handler().refresh_host_context();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = agent.cache.revalidate_all() => {}
            }
            agent.after_pass();
        }
    }
}
