//! The running agent's state: the config in force, the emulator cache and
//! the metrics, built from a [`Config`] and rebuilt in place on reload.
//! The HTTP servers and the revalidator share one `Arc<Agent>`.

pub mod emulators;
pub mod files;
pub mod history;
pub mod memo;
pub mod metrics;
pub mod nfd;
pub mod render;
pub mod revalidate;
pub mod shims;
pub mod watch;

use crate::agent::emulators::{Emulators, ProbeSettings, Reporter};
use crate::agent::history::History;
use crate::agent::metrics::Metrics;
use crate::agent::watch::Versions;
use crate::cache::{Backoff, Cache, State, store::Store};
use crate::config::discovery::{self, DiscoveryError, EmulatorSpec, Resolved};
use crate::config::{Config, defaults};
use crate::qemu::fingerprint::Host;
use crate::support::shim_dir;
use metrics::{CapabilityPart, ShimResult};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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
    /// Serializes gauge refresh and encoding, so concurrent scrapes never
    /// see the per-emulator gauges half rebuilt.
    scrape: Mutex<()>,
    /// Set once the start-up pass (disk, probes, cache files written) is
    /// over; watched by the readiness notification.
    started: tokio::sync::watch::Sender<bool>,
    /// The config in force; replaced whole by [`Agent::reload`].
    config: RwLock<Arc<Config>>,
    /// The machine the agent runs on (read once).
    system: SystemFacts,
    /// What the last shim update could not make, so it is logged once.
    shims_skipped: Mutex<Vec<String>>,
    /// What the last node-label write said (skipped labels, or why it
    /// failed), so each is logged once, not at every pass.
    labels_said: Mutex<Vec<String>>,
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
            shims_skipped: Mutex::new(Vec::new()),
            labels_said: Mutex::new(Vec::new()),
        }))
    }

    /// Kills what an earlier instance of this agent (same cache directory)
    /// left running, found by the tag in its probes' environment.
    /// Blocking (reads `/proc`); call before the first probe.
    pub fn sweep_leftovers(&self) -> usize {
        crate::qemu::exec::sweep_tagged(self.cache.handler().probe_tag())
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
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
        self.write_node_labels().await;
        self.started.send_replace(true);
        tracing::info!(execs = self.cache.handler().counter.get(), "ready");
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
        let mut before: Vec<EmulatorSpec> = self
            .cache
            .handler()
            .view()
            .table
            .values()
            .cloned()
            .collect();
        before.sort();
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
    /// emulator now configured. A directory that cannot be written is
    /// logged: callers of a missing shim run QEMU as before.
    pub async fn sync_shims(&self) {
        let cfg = self.config();
        let Some(dir) = cfg.shim_dir.as_ref().map(|d| d.0.clone()) else {
            return;
        };
        let specs: Vec<EmulatorSpec> = self
            .cache
            .handler()
            .view()
            .table
            .values()
            .cloned()
            .collect();
        let timeout_ms = cfg.shim_timeout.as_millis() as u64;
        let (task_dir, binary) = (dir.clone(), cfg.shim_binary());
        let synced = tokio::task::spawn_blocking(move || {
            shims::sync(&task_dir, &specs, &binary, timeout_ms)
        })
        .await;
        match synced {
            Ok(Ok(done)) => {
                for (name, real) in &done.written {
                    tracing::info!(shim = %dir.join(name).display(), real = %real.display(), "shim in place");
                }
                for name in &done.removed {
                    tracing::info!(shim = %dir.join(name).display(), "shim removed");
                }
                let mut last = self.shims_skipped.lock().unwrap_or_else(|p| p.into_inner());
                if *last != done.skipped {
                    for s in &done.skipped {
                        tracing::warn!("shim not made: {s}");
                    }
                    *last = done.skipped;
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot keep the shim directory; callers of its shims run QEMU as before")
            }
            Err(error) => tracing::warn!(%error, "shim directory update did not complete"),
        }
    }

    /// Rewrites node-feature-discovery's feature file (config
    /// `nfd_features_file`) from what is in memory, with a fresh expiry:
    /// after the start-up pass and every revalidation pass. Skipped labels
    /// and a failed write are logged when they change.
    pub async fn write_node_labels(&self) {
        let cfg = self.config();
        let Some(file) = cfg.nfd_features_file.as_ref().map(|f| f.0.clone()) else {
            return;
        };
        let view = self.cache.handler().view();
        let entries: Vec<(String, String, Arc<emulators::Entry>)> = view
            .table
            .values()
            .filter_map(|spec| {
                let entry = self.cache.peek(&spec.name)?;
                let file_name = spec
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Some((spec.name.clone(), file_name, entry))
            })
            .collect();
        let sources: Vec<nfd::Source> = entries
            .iter()
            .map(|(name, file_name, e)| nfd::Source {
                name,
                file_name,
                caps: &e.caps,
            })
            .collect();
        let lists =
            |v: &[crate::config::LabelPart]| v.iter().map(|l| l.0.clone()).collect::<Vec<_>>();
        let (cpu_models, machine_types) =
            (lists(&cfg.nfd_cpu_models), lists(&cfg.nfd_machine_types));
        let ahead =
            (*cfg.revalidate_interval * defaults::NFD_EXPIRY_PASSES).max(defaults::NFD_EXPIRY_MIN);
        let rendered = nfd::render(
            &sources,
            nfd::Wanted {
                cpu_models: &cpu_models,
                machine_types: &machine_types,
            },
            std::time::SystemTime::now() + ahead,
        );
        self.metrics
            .node_labels(rendered.written, rendered.skipped.len());
        let (path, text) = (file.clone(), rendered.text);
        let written = tokio::task::spawn_blocking(move || nfd::write(&path, &text)).await;
        let mut said = rendered.skipped;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => said.push(format!(
                "cannot write {}: {e}; the labels are kept off the node (make its directory, NFD's features.d, writable by the agent's user, or unset nfd_features_file)",
                file.display()
            )),
            Err(e) => said.push(format!(
                "the write of {} did not complete: {e}",
                file.display()
            )),
        }
        let mut last = self.labels_said.lock().unwrap_or_else(|p| p.into_inner());
        if *last != said {
            for s in &said {
                tracing::warn!(file = %file.display(), "node labels: {s}");
            }
            if said.is_empty() && !last.is_empty() {
                tracing::info!(file = %file.display(), "node labels written again in full");
            }
            *last = said;
        }
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

    /// The /metrics text: per-emulator gauges refreshed from the cache's
    /// statuses (memory only), then every metric encoded.
    pub fn scrape(&self) -> Result<Vec<u8>, prometheus::Error> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let m = &self.metrics;
        let view = self.cache.handler().view();
        m.emulator_info.reset();
        for st in self.cache.statuses() {
            let caps = st.data.as_deref().map(|d| &d.caps);
            if let Some(caps) = caps {
                for &part in CapabilityPart::ALL {
                    m.capabilities
                        .with_label_values(&[&st.key, part.as_str()])
                        .set(part.count(caps) as i64);
                }
            }
            let path = view
                .table
                .get(&st.key)
                .map(|t| t.path.display().to_string())
                .unwrap_or_default();
            let version = caps
                .and_then(|c| c.qemu.as_ref())
                .map(|q| q.version.as_str());
            m.emulator_info
                .with_label_values(&[
                    st.key.as_str(),
                    &path,
                    caps.and_then(|c| c.arch.as_deref()).unwrap_or(""),
                    version.unwrap_or(""),
                ])
                .set(1);
            let up = st.state == State::Fresh || (st.state == State::Probing && version.is_some());
            m.emulator_up
                .with_label_values(&[&st.key])
                .set(i64::from(up));
        }
        self.read_shim_counts(&view);
        m.encode()
    }

    /// What the shims counted themselves (pass-throughs, fallbacks): the
    /// sizes of their count files, into `qcapsd_shim_requests_total`.
    fn read_shim_counts(&self, view: &emulators::View) {
        let cfg = self.config();
        let Some(dir) = cfg.shim_dir.as_ref() else {
            return;
        };
        let specs: Vec<EmulatorSpec> = view.table.values().cloned().collect();
        let (shims, _) = shims::wanted(&specs);
        for (shim, spec) in &shims {
            for (what, result) in [
                (shim_dir::RAN_QEMU, ShimResult::RanQemu),
                (shim_dir::FELL_BACK, ShimResult::FellBack),
            ] {
                if let Ok(m) = std::fs::metadata(shim_dir::count_file(dir, shim, what)) {
                    self.metrics.shim_count_file(&spec.name, result, m.len());
                }
            }
        }
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

/// CPU brand and count, memory and host name, read once at start: the
/// machine the agent itself runs on (not below `host_root`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct SystemFacts {
    /// The host name.
    pub hostname: Option<String>,
    /// The first CPU's brand string.
    pub cpu_brand: Option<String>,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory.
    pub memory_bytes: u64,
}

impl SystemFacts {
    pub fn read() -> SystemFacts {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        SystemFacts {
            hostname: System::host_name(),
            cpu_brand: sys
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_owned())
                .filter(|b| !b.is_empty()),
            cpus: sys.cpus().len(),
            memory_bytes: sys.total_memory(),
        }
    }
}
