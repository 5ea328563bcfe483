//! The running agent's state: the config in force, the emulator cache and
//! the metrics, built from a [`Config`] and rebuilt in place on reload.
//! The HTTP server and the revalidator share one `Arc<Agent>`.

use crate::cache::{Backoff, Cache, State, store::Store};
use crate::config::{Config, EmulatorSpec};
use crate::emulators::{Emulators, MetricsObserver, ProbeSettings};
use crate::metrics::Metrics;
use crate::qemu::exec::Accel;
use crate::qemu::fingerprint::Host;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub struct Agent {
    pub cache: Arc<Cache<Emulators>>,
    pub metrics: Arc<Metrics>,
    /// Serializes gauge refresh and encoding, so concurrent scrapes never
    /// see the per-emulator gauges half rebuilt.
    scrape: std::sync::Mutex<()>,
    /// Set once the start-up pass (disk, probes, cache files written) is
    /// over.
    started: std::sync::atomic::AtomicBool,
    /// The config in force; replaced whole by [`Agent::reload`].
    config: RwLock<Arc<Config>>,
}

fn settings(cfg: &Config) -> ProbeSettings {
    ProbeSettings::new(
        Accel::Auto,
        *cfg.probe_timeout,
        cfg.device_properties.clone(),
        cfg.module_dirs(),
    )
}

impl Agent {
    /// Builds the agent (no probe yet). Errors are config errors.
    pub fn new(cfg: Config) -> Result<Arc<Agent>, String> {
        let specs = cfg.emulators()?;
        let metrics = Arc::new(Metrics::register().map_err(|e| format!("metrics: {e}"))?);
        let handler = Arc::new(Emulators::new(
            Host::new(&cfg.host_root.0),
            &specs,
            settings(&cfg),
            Arc::clone(&metrics),
        ));
        let cache = Cache::new(
            handler,
            Store::new(&cfg.cache_dir.0),
            cfg.probe_concurrency.get(),
            Backoff::default(),
            Arc::new(MetricsObserver(Arc::clone(&metrics))),
        );
        cache.set_keys(&names(&specs));
        Ok(Arc::new(Agent {
            cache,
            metrics,
            scrape: std::sync::Mutex::new(()),
            started: std::sync::atomic::AtomicBool::new(false),
            config: RwLock::new(Arc::new(cfg)),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Serves what the disk cache still holds validly, then probes the rest
    /// in parallel (bounded by `probe_concurrency`). Returns once every
    /// emulator has an answer.
    pub async fn start(&self) {
        let swept = self.cache.store().sweep_temp_files();
        if swept > 0 {
            tracing::warn!(files = swept, dir = %self.cache.store().dir().display(), "removed temporary files left by a crash");
        }
        let mut from_disk = 0;
        for key in self.cache.keys() {
            if self.cache.load_from_disk(&key) {
                from_disk += 1;
            }
        }
        let total = self.cache.keys().len();
        tracing::info!(
            emulators = total,
            from_disk,
            "starting: probing {} emulator(s)",
            total - from_disk
        );
        self.cache.revalidate_all().await;
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(execs = self.cache.handler().counter.get(), "ready");
    }

    /// Applies a new config: the emulator set (added, removed, changed),
    /// probe settings and the cache directory stay consistent. Listen
    /// addresses need a restart (logged).
    pub fn reload(&self, cfg: Config) -> Result<(), String> {
        let specs = cfg.emulators()?;
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
        let handler = self.cache.handler();
        let old = handler.view();
        handler.configure(&specs, settings(&cfg));
        for s in &specs {
            if old.table.get(&s.name).is_some_and(|o| o.path != s.path) {
                tracing::info!(emulator = %s.name, path = %s.path.display(), "emulator path changed");
                self.cache.reset(&s.name);
            }
        }
        let added = self.cache.set_keys(&names(&specs));
        tracing::info!(
            emulators = specs.len(),
            added = added.len(),
            "config reloaded"
        );
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
        Ok(())
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
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Ready once start-up is over and every emulator has an answer
    /// (capabilities, a failure, or a missing binary).
    pub fn ready(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire) && self.cache.ready()
    }

    /// The /metrics text: per-emulator gauges refreshed from the cache
    /// (memory only), then every metric encoded.
    pub fn scrape(&self) -> Result<Vec<u8>, prometheus::Error> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.update_gauges();
        self.metrics.encode()
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.emulator_info.reset();
        let view = self.cache.handler().view();
        for st in self.cache.statuses() {
            let path = view
                .table
                .get(&st.key)
                .map(|s| s.path.display().to_string())
                .unwrap_or_default();
            let (arch, version) = st
                .data
                .as_ref()
                .map(|d| {
                    (
                        d.caps.arch.clone().unwrap_or_default(),
                        d.caps
                            .qemu
                            .as_ref()
                            .map(|q| q.version.clone())
                            .unwrap_or_default(),
                    )
                })
                .unwrap_or_default();
            m.emulator_info
                .with_label_values(&[&st.key, &path, &arch, &version])
                .set(1);
            m.emulator_up.with_label_values(&[&st.key]).set(i64::from(
                st.state == State::Fresh || (st.state == State::Probing && st.data.is_some()),
            ));
        }
    }

    /// Stops in-flight probes (killed and reaped) within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.cache.shutdown(grace).await;
    }
}

fn names(specs: &[EmulatorSpec]) -> Vec<String> {
    specs.iter().map(|s| s.name.clone()).collect()
}
