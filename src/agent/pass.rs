//! What the agent's passes hand to the features they drive: one
//! [`Snapshot`] of the config, the emulator table and every emulator's
//! cache status, taken once per pass (or scrape), and the [`Feature`]
//! contract each pass-driven feature (shims, node labels, gauges, running
//! VMs, the history's retries) implements in its own file.
//!
//! [`Features`] runs them: after a pass each feature's work runs in a task
//! of its own, so a feature stuck on a hung mount delays neither readiness
//! nor the next pass; while one run of a feature is still going, the next
//! pass skips that feature (said once) instead of piling up behind it.

use super::emulators::{Entry, View};
use crate::cache::Status;
use crate::config::Config;
use crate::config::discovery::EmulatorSpec;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The agent as one pass saw it: memory only, taken in one place
/// ([`crate::agent::Agent::snapshot`]).
pub struct Snapshot {
    /// The config in force.
    pub config: Arc<Config>,
    /// The emulator table, probe settings and host facts.
    pub view: Arc<View>,
    /// Every configured emulator's cache status, by name.
    pub statuses: Vec<Status<Entry>>,
}

impl Snapshot {
    /// The configured emulators, by name.
    pub fn specs(&self) -> Vec<EmulatorSpec> {
        self.view.specs()
    }

    /// `name`'s current capabilities, if it has any.
    pub fn entry(&self, name: &str) -> Option<&Arc<Entry>> {
        self.statuses
            .iter()
            .find(|s| s.key == name)
            .and_then(|s| s.data.as_ref())
    }

    /// Each emulator with capabilities: its spec and entry.
    pub fn probed(&self) -> impl Iterator<Item = (&EmulatorSpec, &Arc<Entry>)> {
        self.statuses.iter().filter_map(|s| {
            let spec = self.view.table.get(&s.key)?;
            Some((spec, s.data.as_ref()?))
        })
    }
}

/// A boxed future, as a feature's after-pass work returns it.
pub type Work = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A feature the agent's passes drive. It owns its state; the
/// coordinator only hands it snapshots.
pub trait Feature: Send + Sync + 'static {
    /// Its name, in logs.
    fn name(&self) -> &'static str;
    /// Its work after the start-up pass and after every revalidation
    /// pass, on the snapshot the pass ended with, if it has any. Runs in
    /// a task of its own.
    fn after_pass(self: Arc<Self>, _snapshot: Arc<Snapshot>) -> Option<Work> {
        None
    }
    /// Refreshes what it shows on `/metrics`, from memory only (called
    /// under the scrape lock, so scrapes never see it half done).
    fn on_scrape(&self, _snapshot: &Snapshot) {}
}

struct Registered {
    feature: Arc<dyn FeatureDyn>,
    /// Set while a run of its after-pass work is going.
    running: Arc<AtomicBool>,
    /// Whether "still running" was said since its last run ended.
    said_busy: AtomicBool,
}

/// [`Feature`] with the receiver erased, so features of different types
/// share one list.
trait FeatureDyn: Send + Sync {
    fn name(&self) -> &'static str;
    fn after_pass(self: Arc<Self>, snapshot: Arc<Snapshot>) -> Option<Work>;
    fn on_scrape(&self, snapshot: &Snapshot);
}

impl<F: Feature> FeatureDyn for F {
    fn name(&self) -> &'static str {
        Feature::name(self)
    }
    fn after_pass(self: Arc<Self>, snapshot: Arc<Snapshot>) -> Option<Work> {
        Feature::after_pass(self, snapshot)
    }
    fn on_scrape(&self, snapshot: &Snapshot) {
        Feature::on_scrape(self, snapshot);
    }
}

/// The pass-driven features, in the order they are run.
#[derive(Default)]
pub struct Features {
    list: Vec<Registered>,
}

/// Clears a feature's running flag however its task ends (finished,
/// panicked, or dropped with the runtime).
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Features {
    /// Adds `feature`; returns it for the caller to keep.
    pub fn add<F: Feature>(&mut self, feature: Arc<F>) -> Arc<F> {
        self.list.push(Registered {
            feature: Arc::clone(&feature) as Arc<dyn FeatureDyn>,
            running: Arc::new(AtomicBool::new(false)),
            said_busy: AtomicBool::new(false),
        });
        feature
    }

    /// Starts every feature's after-pass work on `snapshot`, each in a
    /// task of its own; a feature whose last run is still going is
    /// skipped (logged once until it ends). Returns the tasks started.
    pub fn after_pass(&self, snapshot: &Arc<Snapshot>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut started = Vec::new();
        for r in &self.list {
            if r.running.load(Ordering::Acquire) {
                if !r.said_busy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        feature = r.feature.name(),
                        "its work after the previous pass is still running (a hung file system?); skipping it this pass"
                    );
                }
                continue;
            }
            let Some(work) = Arc::clone(&r.feature).after_pass(Arc::clone(snapshot)) else {
                continue;
            };
            r.said_busy.store(false, Ordering::Relaxed);
            r.running.store(true, Ordering::Release);
            let guard = Running(Arc::clone(&r.running));
            started.push(tokio::spawn(async move {
                let _guard = guard;
                work.await;
            }));
        }
        started
    }

    /// Every feature's `/metrics` refresh.
    pub fn on_scrape(&self, snapshot: &Snapshot) {
        for r in &self.list {
            r.feature.on_scrape(snapshot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A feature whose work waits for a permit, and counts its runs.
    struct Slow {
        runs: AtomicUsize,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl Feature for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn after_pass(self: Arc<Self>, _snapshot: Arc<Snapshot>) -> Option<Work> {
            Some(Box::pin(async move {
                self.runs.fetch_add(1, Ordering::SeqCst);
                let _ = self.gate.acquire().await;
            }))
        }
    }

    fn empty() -> Arc<Snapshot> {
        use crate::agent::emulators::ProbeSettings;
        Arc::new(Snapshot {
            config: Arc::new(Config::default()),
            view: Arc::new(View {
                table: Default::default(),
                settings: ProbeSettings::new(
                    Vec::new(),
                    std::time::Duration::from_secs(1),
                    Vec::new(),
                    Vec::new(),
                ),
                host: Arc::new(crate::qemu::fingerprint::Host::new("/nonexistent").context()),
            }),
            statuses: Vec::new(),
        })
    }

    /// A feature stuck in its work (a hung mount) is skipped by the next
    /// passes, not stacked up; once it ends, the next pass runs it again.
    #[tokio::test]
    async fn a_stuck_feature_is_skipped_until_its_run_ends() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut features = Features::default();
        let slow = features.add(Arc::new(Slow {
            runs: AtomicUsize::new(0),
            gate: Arc::clone(&gate),
        }));
        let snap = empty();
        assert_eq!(features.after_pass(&snap).len(), 1);
        tokio::task::yield_now().await;
        for _ in 0..3 {
            assert!(features.after_pass(&snap).is_empty());
        }
        assert_eq!(slow.runs.load(Ordering::SeqCst), 1);
        gate.add_permits(1);
        while features.list[0].running.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        for t in features.after_pass(&snap) {
            t.await.unwrap();
        }
        assert_eq!(slow.runs.load(Ordering::SeqCst), 2);
    }
}
