//! The running agent, a coordinator: the config in force, the emulator
//! cache with its metrics, history and long-poll versions, and the
//! pass-driven features ([`pass::Feature`]: gauges, shims, node labels,
//! the history's retries, the running VMs), each in its own file with its
//! own state. It
//! resolves the emulator set (start, reload, discovery), runs the
//! start-up pass, takes the one [`pass::Snapshot`] a pass or a scrape
//! hands the features, and starts their after-pass work. The HTTP
//! servers and the revalidator share one `Arc<Agent>`.

pub mod emulators;
pub mod files;
pub mod gauges;
pub mod history;
pub mod memo;
pub mod metrics;
pub mod nfd;
pub mod pass;
pub mod render;
pub mod revalidate;
pub mod shims;
pub mod system;
pub mod verify;
pub mod vms;
pub mod watch;

use crate::agent::emulators::{Emulators, ProbeSettings, Reporter};
use crate::agent::history::History;
use crate::agent::metrics::Metrics;
use crate::agent::watch::Versions;
use crate::cache::{Backoff, Cache, State, store::Store};
use crate::config::discovery::{self, DiscoveryError, EmulatorSpec, Resolved};
use crate::config::{Config, defaults};
use crate::qemu::fingerprint::Host;
use pass::{Features, Snapshot};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
pub use system::SystemFacts;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The emulator set cannot be resolved (a config problem).
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Not a config problem: a bug or a resource failure.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub struct Agent {
    pub cache: Arc<Cache<Emulators>>,
    pub metrics: Arc<Metrics>,
    /// What re-probes found changed.
    pub history: Arc<History>,
    /// What long-polls wait on.
    pub versions: Arc<Versions>,
    /// The history's writer task's input, taken by `start`.
    history_writes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    /// Serializes the features' gauge refresh and encoding, so
    /// concurrent scrapes never see the gauges half rebuilt.
    scrape: Mutex<()>,
    /// Set once the start-up pass (disk, probes, cache files written) is
    /// over; watched by the readiness notification.
    started: tokio::sync::watch::Sender<bool>,
    /// The config in force; replaced whole by [`Agent::reload`].
    config: RwLock<Arc<Config>>,
    /// The machine the agent runs on (read once).
    system: SystemFacts,
    /// The shim directory (also among `features`).
    shims: Arc<shims::Shims>,
    /// The running VMs and their verdicts (also among `features`).
    pub vms: Arc<vms::Vms>,
    /// Everything a pass drives, in order.
    features: Features,
}

fn settings(cfg: &Config) -> ProbeSettings {
    // Prewarming serves shims: without them, nothing is recorded unasked.
    let prewarm = match cfg.shim_dir {
        Some(_) => cfg.shim_prewarm.iter().map(|q| q.0.clone()).collect(),
        None => Vec::new(),
    };
    ProbeSettings::new(
        cfg.accels.0.clone(),
        *cfg.probe_timeout,
        cfg.device_properties(),
        cfg.module_dirs(),
    )
    .with_memo(
        memo::Limits {
            max_queries: cfg.shim_memo_max_queries.get() as usize,
            max_bytes: cfg.shim_memo_max_bytes.get() as usize,
        },
        prewarm,
    )
    .with_verify(memo::Limits {
        max_queries: cfg.verify_max.get() as usize,
        max_bytes: defaults::VERIFY_MAX_BYTES,
    })
}

/// The tag in every probe's environment: names this agent's cache, so a
/// later instance with the same cache directory finds what an earlier one
/// left running.
pub fn probe_tag(cache_dir: &std::path::Path) -> String {
    format!("cache_dir={}", cache_dir.display())
}

/// Logs what discovery skipped, and warns (and counts) when it found
/// nothing at all: an agent with nothing to serve is ready, not failed,
/// but the operator must hear of it.
fn report_discovery(resolved: &Resolved, metrics: &Metrics) {
    for s in &resolved.skipped {
        tracing::warn!("discovery skipped {s}");
    }
    if let Some(warning) = resolved.nothing_found() {
        tracing::warn!("{warning}");
        metrics.discovery_empty.inc();
    }
}

impl Agent {
    /// Builds the agent (no probe yet).
    pub fn new(cfg: Config) -> Result<Arc<Agent>, AgentError> {
        let resolved = discovery::resolve(&cfg)?;
        let metrics = Arc::new(Metrics::register()?);
        report_discovery(&resolved, &metrics);
        let specs = resolved.emulators;
        let store = Store::new(&cfg.cache_dir.0);
        let handler = Arc::new(Emulators::new(
            Host::new(&cfg.host_root.0),
            &specs,
            settings(&cfg),
            probe_tag(&cfg.cache_dir),
            store.subdir("memo"),
            store.subdir("verify"),
        ));
        let (history, history_writes) =
            History::new(store.subdir("history"), cfg.change_history.get() as usize);
        let versions = Arc::new(Versions::default());
        let cache = Cache::new(
            Arc::clone(&handler),
            store,
            cfg.probe_concurrency(),
            Backoff {
                initial: defaults::BACKOFF_INITIAL,
                max: defaults::BACKOFF_MAX,
            },
            Arc::new(Reporter {
                metrics: Arc::clone(&metrics),
                history: Arc::clone(&history),
                versions: Arc::clone(&versions),
                cache_dir_writable: Mutex::new(None),
                emulators: handler,
            }),
        );
        cache.set_keys(&names(&specs));
        let mut features = Features::default();
        features.add(Arc::new(gauges::Gauges::new(Arc::clone(&metrics))));
        let shims = features.add(Arc::new(shims::Shims::new(Arc::clone(&metrics))));
        features.add(Arc::new(nfd::NodeLabels::new(Arc::clone(&metrics))));
        features.add(Arc::clone(&history));
        let vms = features.add(Arc::new(vms::Vms::new(
            Arc::clone(&metrics),
            Arc::clone(cache.handler()),
        )));
        Ok(Arc::new(Agent {
            cache,
            metrics,
            history,
            versions,
            history_writes: Mutex::new(Some(history_writes)),
            scrape: Mutex::new(()),
            started: tokio::sync::watch::Sender::new(false),
            config: RwLock::new(Arc::new(cfg)),
            system: SystemFacts::read(),
            shims,
            vms,
            features,
        }))
    }

    /// Kills what an earlier instance of this agent (same cache directory)
    /// left running, found by the tag in its probes' environment.
    /// Blocking (reads `/proc`); call before the first probe.
    pub fn sweep_leftovers(&self) -> usize {
        crate::qemu::reaper::sweep_tagged(self.cache.handler().probe_tag())
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The agent as it is now, for the features: the config, the
    /// emulator table and every emulator's status (memory only).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.config(),
            view: self.cache.handler().view(),
            statuses: self.cache.statuses(),
        }
    }

    /// Starts every feature's after-pass work on a snapshot taken now,
    /// each in a task of its own (see [`pass::Features`]); returns the
    /// tasks, which nothing needs to wait for.
    pub fn after_pass(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.features.after_pass(&Arc::new(self.snapshot()))
    }

    /// Serves what the disk cache still holds validly, then probes the rest
    /// in parallel (bounded by `probe_concurrency`). Returns once every
    /// emulator has an answer and every new cache file is written. Disk
    /// reads run on the blocking pool: nothing on disk can stall a runtime
    /// worker (or, through it, shutdown).
    pub async fn start(&self) {
        let writes = self
            .history_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = writes {
            tokio::spawn(Arc::clone(&self.history).write_files(rx));
        }
        let (cache, history) = (Arc::clone(&self.cache), Arc::clone(&self.history));
        let loaded = tokio::task::spawn_blocking(move || {
            cache.check_store();
            let swept = cache.store().sweep_temp_files();
            if swept > 0 {
                tracing::warn!(files = swept, dir = %cache.store().dir().display(), "removed temporary files left by a crash");
            }
            let keys = cache.keys();
            for k in &keys {
                history.load(k);
            }
            keys.iter().filter(|k| cache.load_from_disk(k)).count()
        })
        .await
        .unwrap_or(0);
        for key in self.cache.keys() {
            if let Some(at) = self.history.newest_breaking(&key) {
                self.metrics.breaking_change_at(&key, at);
            }
        }
        let total = self.cache.keys().len();
        tracing::info!(
            emulators = total,
            from_disk = loaded,
            "starting: probing {} emulator(s)",
            total - loaded
        );
        self.cache.revalidate_all().await;
        // Ready first: what the features write (a feature file on a hung
        // mount) must not delay the answers.
        self.started.send_replace(true);
        tracing::info!(execs = self.cache.handler().counter.get(), "ready");
        self.after_pass();
    }

    /// Applies a new config: the emulator set (added, removed, changed) and
    /// probe settings. Listen addresses, the cache directory and the host
    /// root need a restart (logged). A refused config changes nothing.
    pub fn reload(&self, cfg: Config) -> Result<(), AgentError> {
        let resolved = match discovery::resolve(&cfg) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.record_reload(false);
                return Err(e.into());
            }
        };
        report_discovery(&resolved, &self.metrics);
        let specs = resolved.emulators;
        let old = self.config();
        if cfg.listen != old.listen
            || cfg.unix_socket != old.unix_socket
            || cfg.metrics_listen != old.metrics_listen
        {
            tracing::warn!("listen addresses change only on restart");
        }
        if cfg.cache_dir != old.cache_dir || cfg.host_root != old.host_root {
            tracing::warn!("cache_dir and host_root change only on restart");
        }
        if cfg.shim_dir != old.shim_dir {
            tracing::warn!("shim_dir changes only on restart");
        }
        let added = self.apply(&specs, settings(&cfg));
        self.history.set_limit(cfg.change_history.get() as usize);
        tracing::info!(
            emulators = specs.len(),
            added = added.len(),
            "config reloaded"
        );
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
        self.metrics.record_reload(true);
        Ok(())
    }

    /// Makes the emulator set `specs`, probed with `settings`: an emulator
    /// whose path changed starts over, removed ones are dropped with their
    /// files, added ones are pending. Returns the names added.
    fn apply(&self, specs: &[EmulatorSpec], settings: ProbeSettings) -> Vec<String> {
        let handler = self.cache.handler();
        let old = handler.view();
        handler.configure(specs, settings);
        for s in specs {
            if old.table.get(&s.name).is_some_and(|o| o.path != s.path) {
                tracing::info!(emulator = %s.name, path = %s.path.display(), "emulator path changed");
                self.cache.reset(&s.name);
            }
        }
        self.cache.set_keys(&names(specs))
    }

    /// Runs discovery again (globs and the default discovery; listed paths
    /// change only on reload): a binary installed or removed since joins or
    /// leaves the emulator set, and the shims follow. Returns whether the
    /// set changed. Reads directories: call it off the serving path (the
    /// revalidator does, each pass).
    pub async fn rediscover(&self) -> bool {
        let cfg = self.config();
        if !discovery::searches(&cfg) {
            return false;
        }
        let resolve = Arc::clone(&cfg);
        let Ok(Ok(resolved)) =
            tokio::task::spawn_blocking(move || discovery::resolve(&resolve)).await
        else {
            return false;
        };
        let mut now = resolved.emulators.clone();
        now.sort();
        let before = self.cache.handler().view().specs();
        if now == before {
            return false;
        }
        let added: Vec<&str> = now
            .iter()
            .filter(|s| !before.contains(s))
            .map(|s| s.name.as_str())
            .collect();
        let removed: Vec<&str> = before
            .iter()
            .filter(|s| !now.contains(s))
            .map(|s| s.name.as_str())
            .collect();
        tracing::info!(?added, ?removed, "discovery found the emulators changed");
        report_discovery(&resolved, &self.metrics);
        self.apply(&resolved.emulators, settings(&cfg));
        self.sync_shims().await;
        true
    }

    /// Makes the shim directory (config `shim_dir`) hold one shim per
    /// emulator now configured (see [`shims::Shims::sync`]).
    pub async fn sync_shims(&self) {
        self.shims.sync(&self.snapshot()).await;
    }

    /// Records a reload refused before it reached the agent (unreadable or
    /// invalid file).
    pub fn reload_refused(&self) {
        self.metrics.record_reload(false);
    }

    /// Directories to watch for package upgrades: each binary's directory
    /// and the module directories.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let view = self.cache.handler().view();
        let mut dirs: Vec<PathBuf> = view
            .table
            .values()
            .filter_map(|s| s.path.parent().map(PathBuf::from))
            .collect();
        dirs.extend(view.settings.module_dir_candidates.iter().cloned());
        // Where a search looks, so a binary installed there is found.
        dirs.extend(discovery::searched_dirs(&self.config()));
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Ready once start-up is over and every emulator has an answer
    /// (capabilities, a failure, or a missing binary).
    pub fn ready(&self) -> bool {
        *self.started.borrow() && self.cache.ready()
    }

    /// Returns once the start-up pass is over.
    pub async fn started(&self) {
        let _ = self.started.subscribe().wait_for(|s| *s).await;
    }

    /// The machine the agent runs on (read once at start).
    pub fn system(&self) -> &SystemFacts {
        &self.system
    }

    /// The /metrics text: every feature's gauges refreshed from one
    /// snapshot (memory only), then every metric encoded.
    pub fn scrape(&self) -> Result<Vec<u8>, prometheus::Error> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.features.on_scrape(&self.snapshot());
        self.metrics.encode()
    }

    /// A one-line summary for the service manager: `2 emulators: 2 fresh,
    /// 0 failed`.
    pub fn summary(&self) -> String {
        let states: Vec<State> = self.cache.statuses().iter().map(|s| s.state).collect();
        let count = |s: State| states.iter().filter(|&&t| t == s).count();
        let mut line = format!(
            "{} emulator{}: {} fresh, {} failed",
            states.len(),
            if states.len() == 1 { "" } else { "s" },
            count(State::Fresh),
            count(State::Failed)
        );
        for state in [State::Missing, State::Probing, State::Pending] {
            let n = count(state);
            if n > 0 {
                line += &format!(", {n} {}", state.as_str());
            }
        }
        line
    }

    /// Stops in-flight probes (killed and reaped) within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.cache.shutdown(grace).await;
    }
}

fn names(specs: &[EmulatorSpec]) -> Vec<String> {
    specs.iter().map(|s| s.name.clone()).collect()
}
