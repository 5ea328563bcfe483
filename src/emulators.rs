//! The QEMU meaning of the generic cache: the table of configured
//! emulators, their fingerprint as the cache's stamp, a probe as new data,
//! the cache file format, and each entry's responses rendered once.
//!
//! An [`Entry`] is immutable: a probe or a load makes a new one, with the
//! full document and each of its parts already serialized and hashed for
//! the API (the full document is 150–250 KB; rendering it per request would
//! cost more than everything else a query does).

use crate::cache::{self, Handler};
use crate::config::EmulatorSpec;
use crate::metrics::Metrics;
use crate::qemu::caps::{Capabilities, SCHEMA_VERSION};
use crate::qemu::exec::{Accel, ExecCounter, ExecError};
use crate::qemu::fingerprint::{Fingerprint, Host, HostContext};
use crate::qemu::probe::{ProbeError, ProbeRequest, probe};
use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Tag of cache files, so a foreign JSON file is never taken for ours.
const FILE_FORMAT: &str = "qcapsd-cache";

/// One serialized response and its ETag.
#[derive(Debug, Clone)]
pub struct Part {
    pub body: Bytes,
    pub etag: String,
}

impl Part {
    pub fn json(value: &impl Serialize) -> Result<Part, serde_json::Error> {
        let body = Bytes::from(serde_json::to_vec(value)?);
        Ok(Part {
            etag: etag(&body),
            body,
        })
    }
}

/// A strong ETag from the content: 64-bit SipHash and the length.
pub fn etag(body: &[u8]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:016x}-{:x}\"", h.finish(), body.len())
}

/// The responses of one entry, serialized once.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub full: Part,
    pub machines: Part,
    pub cpu_models: Part,
    pub devices: Part,
    pub commands: Part,
    /// `/devices/{device}` for every device the emulator has.
    pub device: HashMap<String, Part>,
}

#[derive(Serialize)]
struct DeviceDoc<'a> {
    name: &'a str,
    /// `None` when the device's properties were not among those read.
    properties: Option<&'a [crate::qemu::caps::DeviceProperty]>,
}

#[derive(Serialize)]
struct FullDoc<'a> {
    #[serde(flatten)]
    caps: &'a Capabilities,
    cache: CacheMeta<'a>,
}

#[derive(Serialize)]
struct CacheMeta<'a> {
    fingerprint: &'a Fingerprint,
    exec_seconds: f64,
}

/// One emulator's cached capabilities.
#[derive(Debug)]
pub struct Entry {
    pub caps: Capabilities,
    pub fingerprint: Fingerprint,
    /// Wall time of the exec that produced `caps`: what each hit saves.
    pub exec_seconds: f64,
    pub rendered: Rendered,
}

impl Entry {
    pub fn new(
        caps: Capabilities,
        fingerprint: Fingerprint,
        exec_seconds: f64,
    ) -> Result<Entry, serde_json::Error> {
        let device = caps
            .devices
            .iter()
            .map(|d| {
                let doc = DeviceDoc {
                    name: d,
                    properties: caps.device_properties.get(d).map(Vec::as_slice),
                };
                Ok((d.clone(), Part::json(&doc)?))
            })
            .collect::<Result<HashMap<_, _>, serde_json::Error>>()?;
        let rendered = Rendered {
            full: Part::json(&FullDoc {
                caps: &caps,
                cache: CacheMeta {
                    fingerprint: &fingerprint,
                    exec_seconds,
                },
            })?,
            machines: Part::json(&caps.machines)?,
            cpu_models: Part::json(&caps.cpu_models)?,
            devices: Part::json(&caps.devices)?,
            commands: Part::json(&caps.commands)?,
            device,
        };
        Ok(Entry {
            caps,
            fingerprint,
            exec_seconds,
            rendered,
        })
    }
}

/// The cache file: the document plus what validates it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    format: String,
    schema_version: u32,
    path: PathBuf,
    fingerprint: Fingerprint,
    exec_seconds: f64,
    capabilities: Capabilities,
}

/// How probes are run; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub accel: Accel,
    pub timeout: Duration,
    pub devices: Vec<String>,
    /// Where QEMU modules may live (from the config).
    pub module_dir_candidates: Vec<PathBuf>,
    /// Those of them that exist: the ones a lookup stats. Re-derived on
    /// each revalidation pass, so a module directory that appears later is
    /// noticed (and changes every fingerprint) without a stat per lookup
    /// of directories that are not there.
    pub module_dirs: Vec<PathBuf>,
}

impl ProbeSettings {
    pub fn new(
        accel: Accel,
        timeout: Duration,
        devices: Vec<String>,
        candidates: Vec<PathBuf>,
    ) -> Self {
        ProbeSettings {
            accel,
            timeout,
            devices,
            module_dirs: existing(&candidates),
            module_dir_candidates: candidates,
        }
    }
}

fn existing(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter().filter(|d| d.is_dir()).cloned().collect()
}

fn table_of(specs: &[EmulatorSpec]) -> BTreeMap<String, EmulatorSpec> {
    specs.iter().map(|s| (s.name.clone(), s.clone())).collect()
}

/// Everything a lookup reads, swapped whole (on reload, and when a
/// revalidation pass finds the host changed) so a lookup takes one read
/// lock.
#[derive(Debug, Clone)]
pub struct View {
    /// Configured name → spec.
    pub table: BTreeMap<String, EmulatorSpec>,
    pub settings: ProbeSettings,
    /// Kernel, CPU, microcode: re-read by the revalidator, not per lookup.
    pub host: Arc<HostContext>,
}

/// The cache handler for QEMU emulators.
pub struct Emulators {
    view: RwLock<Arc<View>>,
    host: Host,
    pub counter: ExecCounter,
    metrics: Arc<Metrics>,
}

impl Emulators {
    pub fn new(
        host: Host,
        specs: &[EmulatorSpec],
        settings: ProbeSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let view = View {
            table: table_of(specs),
            settings,
            host: Arc::new(host.context()),
        };
        Emulators {
            view: RwLock::new(Arc::new(view)),
            host,
            counter: ExecCounter::default(),
            metrics,
        }
    }

    /// The current snapshot.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the snapshot with `change` applied to a copy of it.
    fn update(&self, change: impl FnOnce(&mut View)) {
        let mut guard = self.view.write().unwrap_or_else(|p| p.into_inner());
        let mut v = (**guard).clone();
        change(&mut v);
        *guard = Arc::new(v);
    }

    /// Applies a (re)loaded config: the emulator table and probe settings.
    pub fn configure(&self, specs: &[EmulatorSpec], settings: ProbeSettings) {
        let table = table_of(specs);
        self.update(|v| {
            v.table = table;
            v.settings = settings;
        });
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Re-reads kernel release, CPU signature and microcode, and which
    /// module directories exist; swaps the snapshot only if one changed.
    pub fn refresh_host_context(&self) {
        let view = self.view();
        let dirs = existing(&view.settings.module_dir_candidates);
        let ctx = self.host.context();
        let dirs_changed = dirs != view.settings.module_dirs;
        let host_changed = ctx != *view.host;
        if dirs_changed {
            tracing::info!(?dirs, "QEMU module directories changed");
        }
        if host_changed {
            tracing::info!(old = ?view.host, new = ?ctx, "host context changed");
        }
        if dirs_changed || host_changed {
            self.update(|v| {
                v.settings.module_dirs = dirs;
                if host_changed {
                    v.host = Arc::new(ctx);
                }
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("emulator no longer configured")]
    Unconfigured,
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot render the document: {0}")]
    Render(#[from] serde_json::Error),
}

impl Handler for Emulators {
    type Data = Entry;
    type Stamp = Fingerprint;
    type Error = RefreshError;

    fn stamp(&self, key: &str) -> Option<Fingerprint> {
        let view = self.view();
        let path = &view.table.get(key)?.path;
        let s = &view.settings;
        self.host
            .fingerprint(path, &s.module_dirs, s.accel, &view.host)
            .ok()
    }

    fn data_stamp<'a>(&self, data: &'a Entry) -> &'a Fingerprint {
        &data.fingerprint
    }

    fn why_changed(&self, old: &Fingerprint, new: &Fingerprint) -> &'static str {
        Fingerprint::why_changed(old, new)
    }

    async fn new_data(
        &self,
        key: &str,
        stamp: Fingerprint,
        cancel: CancellationToken,
    ) -> Result<Entry, RefreshError> {
        let view = self.view();
        let spec = view.table.get(key).ok_or(RefreshError::Unconfigured)?;
        let settings = &view.settings;
        let req = ProbeRequest {
            name: spec.name.clone(),
            accel: settings.accel,
            timeout: settings.timeout,
            devices: settings.devices.clone(),
        };
        self.metrics.probes.with_label_values(&[key]).inc();
        let started = Instant::now();
        let result = probe(&spec.path, &req, &self.counter, &cancel).await;
        // Every QEMU process that was started is timed, failed ones too.
        let exec_time = match &result {
            Ok((_, report)) => Some(report.duration),
            Err(ProbeError::Exec(e)) if !e.started() => None,
            Err(_) => Some(started.elapsed()),
        };
        if let Some(t) = exec_time {
            self.metrics
                .exec_duration
                .with_label_values(&[key])
                .observe(t.as_secs_f64());
        }
        match result {
            Ok((caps, report)) => {
                self.metrics
                    .last_success
                    .with_label_values(&[key])
                    .set(unix_now());
                tracing::info!(emulator = key, path = %spec.path.display(), seconds = report.duration.as_secs_f64(),
                               version = caps.qemu.as_ref().map(|q| q.version.as_str()).unwrap_or("?"), "probed");
                Ok(Entry::new(caps, stamp, report.duration.as_secs_f64())?)
            }
            Err(e) => {
                if !matches!(e, ProbeError::Exec(ExecError::Cancelled { .. })) {
                    self.metrics.record_probe_failure(key, e.reason());
                }
                Err(e.into())
            }
        }
    }

    fn load_file(&self, key: &str, bytes: &[u8]) -> Result<Entry, String> {
        let view = self.view();
        let path = &view
            .table
            .get(key)
            .ok_or("emulator no longer configured")?
            .path;
        let f: CacheFile =
            serde_json::from_slice(bytes).map_err(|e| format!("not a qcapsd cache file: {e}"))?;
        if f.format != FILE_FORMAT {
            return Err(format!("format '{}', expected '{FILE_FORMAT}'", f.format));
        }
        if f.schema_version != SCHEMA_VERSION || f.capabilities.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema version {}, this agent writes {SCHEMA_VERSION}",
                f.schema_version
            ));
        }
        if f.path != *path {
            return Err(format!(
                "probed {}, configured {}",
                f.path.display(),
                path.display()
            ));
        }
        if !f.exec_seconds.is_finite() || f.exec_seconds < 0.0 {
            return Err("bad exec_seconds".into());
        }
        Entry::new(f.capabilities, f.fingerprint, f.exec_seconds).map_err(|e| e.to_string())
    }

    fn save_file(&self, _key: &str, e: &Entry) -> Result<Vec<u8>, String> {
        let f = CacheFile {
            format: FILE_FORMAT.to_owned(),
            schema_version: SCHEMA_VERSION,
            path: PathBuf::from(&e.caps.emulator.path),
            fingerprint: e.fingerprint.clone(),
            exec_seconds: e.exec_seconds,
            capabilities: e.caps.clone(),
        };
        serde_json::to_vec(&f).map_err(|e| e.to_string())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Cache events into metrics and logs.
pub struct MetricsObserver(pub Arc<Metrics>);

impl cache::Observer<Entry> for MetricsObserver {
    fn hit(&self, key: &str, data: &Entry) {
        self.0.record_hit(key, data.exec_seconds);
    }
    fn miss(&self, key: &str, reason: &'static str) {
        self.0.record_miss(key, reason);
    }
    fn invalidated(&self, key: &str, reason: &'static str) {
        tracing::info!(emulator = key, reason, "cache entry invalidated");
        self.0.record_invalidation(key, reason);
    }
    fn revalidation(&self) {
        self.0.revalidations.inc();
    }
    fn removed(&self, key: &str) {
        self.0.remove_emulator(key);
    }
}
