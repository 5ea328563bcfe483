//! The QEMU meaning of the generic cache: the table of configured
//! emulators, their fingerprint as the cache's stamp, a probe as new data,
//! and the cache file format.
//!
//! An [`Entry`] is immutable: a probe or a load makes a new one, with its
//! responses already rendered ([`crate::agent::render`]). A cache file carries a
//! checksum of its content bound to the emulator's name and path, so a file
//! changed after it was written (a bit flip, an edit), or written for
//! another emulator, is discarded and re-probed, never served.

use super::files::{self, CacheFileError};
use super::memo::{Answer, Limits, Memo, MemoError, OnChange, QueryKey, Source};
use crate::agent::history::History;
use crate::agent::metrics::Metrics;
use crate::agent::render::Rendered;
use crate::agent::watch::Versions;
use crate::cache::store::Store;
use crate::cache::{self, Absent, Handler};
use crate::config::discovery::EmulatorSpec;
use crate::qemu::caps::{Capabilities, SCHEMA_VERSION};
use crate::qemu::exec::{QuerySpec, run_query};
use crate::qemu::fingerprint::{Fingerprint, Host, HostContext};
use crate::qemu::probe::{ProbeError, ProbeRequest, probe};
use crate::qemu::{Accel, ExecCounter, FailureReason};
use crate::verdicts::changes::{Change, Side};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// One emulator's cached capabilities.
#[derive(Debug)]
pub struct Entry {
    pub caps: Capabilities,
    pub fingerprint: Fingerprint,
    /// Wall time of the exec that produced `caps`: what each hit saves.
    pub exec_seconds: f64,
    /// Each QEMU process the probe started, timed (empty for an entry read
    /// from disk: nothing ran).
    pub execs: Vec<Duration>,
    pub rendered: Rendered,
    /// QEMU's answers to pure queries under this entry's fingerprint.
    pub memo: Arc<Memo>,
    /// QEMU's word on the VMs it was started with (`verify`), under this
    /// entry's fingerprint (see [`crate::agent::verify`]).
    pub verified: Arc<Memo>,
}

impl Entry {
    pub fn new(
        caps: Capabilities,
        fingerprint: Fingerprint,
        exec_seconds: f64,
        execs: Vec<Duration>,
        (memo, verified): (Memo, Memo),
    ) -> Result<Entry, serde_json::Error> {
        let rendered = Rendered::new(&caps, &fingerprint, exec_seconds)?;
        Ok(Entry {
            caps,
            fingerprint,
            exec_seconds,
            execs,
            rendered,
            memo: Arc::new(memo),
            verified: Arc::new(verified),
        })
    }
}

/// The memos an entry keeps, each in a directory of its own beside the
/// cache files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoKind {
    /// QEMU's answers to pure queries (`cache_dir/memo`).
    Queries,
    /// QEMU's word on VMs it was started with (`cache_dir/verify`).
    Verdicts,
}

/// What a failure file holds besides its header.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredFailure {
    fingerprint: Fingerprint,
    error: String,
    reason: FailureReason,
}

/// What a cache file holds besides its header.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    fingerprint: Fingerprint,
    exec_seconds: f64,
    capabilities: Capabilities,
}

/// How probes are run; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The accelerators probed, in order of preference (config `accels`).
    pub accels: Vec<Accel>,
    /// A probe taking longer is killed.
    pub timeout: Duration,
    /// Devices whose properties are read.
    pub devices: Vec<String>,
    /// Where QEMU modules may live (from the config).
    pub module_dir_candidates: Vec<PathBuf>,
    /// Those of them that exist: the ones a lookup stats. Re-derived on
    /// each revalidation pass, so a module directory that appears later is
    /// noticed (and changes every fingerprint) without a stat per lookup
    /// of directories that are not there.
    pub module_dirs: Vec<PathBuf>,
    /// The memo's bounds.
    pub memo_limits: Limits,
    /// The bounds of the verifications' memo.
    pub verify_limits: Limits,
    /// Queries recorded right after each probe (none without shims).
    pub prewarm: Vec<Vec<String>>,
}

impl ProbeSettings {
    pub fn new(
        accels: Vec<Accel>,
        timeout: Duration,
        devices: Vec<String>,
        candidates: Vec<PathBuf>,
    ) -> Self {
        ProbeSettings {
            accels,
            timeout,
            devices,
            module_dirs: existing(&candidates),
            module_dir_candidates: candidates,
            memo_limits: Limits {
                max_queries: crate::config::defaults::SHIM_MEMO_MAX_QUERIES as usize,
                max_bytes: crate::config::defaults::SHIM_MEMO_MAX_BYTES as usize,
            },
            verify_limits: Limits {
                max_queries: crate::config::defaults::VERIFY_MAX as usize,
                max_bytes: crate::config::defaults::VERIFY_MAX_BYTES,
            },
            prewarm: Vec::new(),
        }
    }

    /// With the memo's bounds and the queries to record after each probe.
    pub fn with_memo(mut self, limits: Limits, prewarm: Vec<Vec<String>>) -> Self {
        self.memo_limits = limits;
        self.prewarm = prewarm;
        self
    }

    /// With the verifications' memo's bounds.
    pub fn with_verify(mut self, limits: Limits) -> Self {
        self.verify_limits = limits;
        self
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
    /// Host facts: re-read by the revalidator, not per lookup.
    pub host: Arc<HostContext>,
}

impl View {
    /// The configured emulators, by name.
    pub fn specs(&self) -> Vec<EmulatorSpec> {
        self.table.values().cloned().collect()
    }
}

/// The cache handler for QEMU emulators.
pub struct Emulators {
    view: RwLock<Arc<View>>,
    host: Host,
    pub counter: ExecCounter,
    /// Where each emulator's memo is kept (`cache_dir/memo`).
    memo_store: Store,
    /// Where each emulator's verifications are kept (`cache_dir/verify`).
    verify_store: Store,
    /// Tag put in every probe's environment, so that processes left by an
    /// earlier instance of this agent can be found (see
    /// [`crate::qemu::exec::sweep_tagged`]).
    probe_tag: String,
}

impl Emulators {
    pub fn new(
        host: Host,
        specs: &[EmulatorSpec],
        settings: ProbeSettings,
        probe_tag: String,
        memo_store: Store,
        verify_store: Store,
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
            memo_store,
            verify_store,
            probe_tag,
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

    pub fn probe_tag(&self) -> &str {
        &self.probe_tag
    }

    /// Re-reads the host facts and which module directories exist; swaps
    /// the snapshot only if one changed.
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
            tracing::info!(
                reason = HostContext::why_changed(&view.host, &ctx).as_str(),
                "host context changed"
            );
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

impl Emulators {
    fn store(&self, kind: MemoKind) -> &Store {
        match kind {
            MemoKind::Queries => &self.memo_store,
            MemoKind::Verdicts => &self.verify_store,
        }
    }

    /// Both memos of `key`'s entry under `fingerprint`, read back from
    /// their files (`read`) or empty. Blocking when reading.
    fn memos(&self, key: &str, path: &Path, fingerprint: &Fingerprint, read: bool) -> (Memo, Memo) {
        let settings = self.view().settings.clone();
        let one = |kind: MemoKind, limits: &Limits| {
            let answers = if read {
                self.read_memo(kind, key, path, fingerprint)
            } else {
                Vec::new()
            };
            self.memo(kind, key, path, fingerprint, limits, answers)
        };
        (
            one(MemoKind::Queries, &settings.memo_limits),
            one(MemoKind::Verdicts, &settings.verify_limits),
        )
    }

    /// A memo for `key`'s entry under `fingerprint`, holding `answers`,
    /// that writes itself to its directory (`cache_dir/memo/KEY.json`,
    /// `cache_dir/verify/KEY.json`) after each new answer (on the blocking
    /// pool, one write at a time; a write that fails is left to the next
    /// answer: the memo keeps serving).
    fn memo(
        &self,
        kind: MemoKind,
        key: &str,
        path: &Path,
        fingerprint: &Fingerprint,
        limits: &Limits,
        answers: Vec<(QueryKey, Answer)>,
    ) -> Memo {
        let (store, key, path, fingerprint) = (
            self.store(kind).clone(),
            key.to_owned(),
            path.to_owned(),
            fingerprint.clone(),
        );
        let written = Arc::new(std::sync::Mutex::new(answers.len()));
        let on_change: OnChange = Box::new(move |memo: &Memo| {
            let snapshot = memo.snapshot();
            let (store, key, path, fingerprint, written) = (
                store.clone(),
                key.clone(),
                path.clone(),
                fingerprint.clone(),
                Arc::clone(&written),
            );
            let write = move || {
                let mut last = written.lock().unwrap_or_else(|p| p.into_inner());
                if snapshot.len() <= *last {
                    return; // a newer snapshot is on disk already
                }
                let result = files::memo_file(&key, &path, &fingerprint, &snapshot)
                    .map_err(|e| e.to_string())
                    .and_then(|b| store.write(&key, &b).map_err(|e| e.to_string()));
                match result {
                    Ok(()) => *last = snapshot.len(),
                    Err(error) => {
                        tracing::debug!(key, %error, "cannot write the memo file; will retry")
                    }
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(write)),
                Err(_) => write(),
            }
        });
        Memo::new(*limits, answers, on_change)
    }

    /// The answers `key`'s memo file holds for the entry of `fingerprint`;
    /// a file that is unsound or belongs to another entry is removed.
    /// Blocking.
    fn read_memo(
        &self,
        kind: MemoKind,
        key: &str,
        path: &Path,
        fingerprint: &Fingerprint,
    ) -> Vec<(QueryKey, Answer)> {
        let store = self.store(kind);
        let bytes = match store.read(key) {
            Ok(Some(b)) => b,
            Ok(None) => return Vec::new(),
            Err(error) => {
                tracing::warn!(key, ?kind, %error, "cannot read the memo file; discarding it");
                store.remove(key);
                return Vec::new();
            }
        };
        match files::read_memo_file(&bytes, key, path, fingerprint) {
            Ok(answers) => answers,
            Err(error) => {
                tracing::info!(key, ?kind, %error, "discarding the memo file");
                store.remove(key);
                Vec::new()
            }
        }
    }

    /// Removes `key`'s memo files (the emulator is no longer configured).
    pub fn remove_memo(&self, key: &str) {
        self.memo_store.remove(key);
        self.verify_store.remove(key);
    }

    /// The view and the binary of emulator `key` (no longer configured: the
    /// work it asked for stops).
    pub(super) fn configured(&self, key: &str) -> Result<(Arc<View>, PathBuf), MemoError> {
        let view = self.view();
        let path = view
            .table
            .get(key)
            .map(|s| s.path.clone())
            .ok_or(MemoError::Stopped)?;
        Ok((view, path))
    }

    /// QEMU's answer to a pure query of emulator `key`, from `memo` or
    /// recorded now in the sandbox (see [`Memo::answer`]).
    pub async fn answer(
        &self,
        key: &str,
        memo: &Arc<Memo>,
        query: QueryKey,
    ) -> Result<(Arc<Answer>, Source), MemoError> {
        let (view, path) = self.configured(key)?;
        let spec = QuerySpec {
            path,
            argv0: query.argv0.clone(),
            args: query.args.clone(),
            timeout: view.settings.timeout,
            max_output: memo.limits().max_bytes,
            tag: Some(self.probe_tag.clone()),
        };
        let counter = self.counter.clone();
        memo.answer(query, move || async move {
            run_query(&spec, &counter, &CancellationToken::new()).await
        })
        .await
    }

    /// Records the prewarm queries (config `shim_prewarm`, with shims) of
    /// `key`'s new entry, each in a task of its own, under the name of the
    /// emulator's binary; each recording is reported to `recorded`.
    pub fn prewarm(
        self: &Arc<Self>,
        key: &str,
        memo: &Arc<Memo>,
        recorded: impl Fn(&str, &Result<(Arc<Answer>, Source), MemoError>) + Clone + Send + 'static,
    ) {
        let view = self.view();
        let Some(spec) = view.table.get(key) else {
            return;
        };
        let argv0 = spec
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for args in &view.settings.prewarm {
            let query = QueryKey {
                argv0: argv0.clone(),
                args: args.clone(),
            };
            let (handler, memo, key, recorded) = (
                Arc::clone(self),
                Arc::clone(memo),
                key.to_owned(),
                recorded.clone(),
            );
            tokio::spawn(async move {
                let result = handler.answer(&key, &memo, query).await;
                recorded(&key, &result);
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("emulator no longer configured")]
    Unconfigured,
    /// The probe failed; `ran_for` is how long QEMU ran, if it started.
    #[error("{source}")]
    Probe {
        #[source]
        source: ProbeError,
        ran_for: Option<Duration>,
    },
    #[error("cannot render the document: {0}")]
    Render(#[from] serde_json::Error),
    /// A refusal kept on disk from before a restart (the fingerprint has
    /// not changed since).
    #[error("{message}")]
    Settled {
        message: String,
        reason: FailureReason,
    },
}

impl RefreshError {
    /// The probe's failure reason, where there was a probe.
    pub fn reason(&self) -> Option<FailureReason> {
        match self {
            RefreshError::Probe { source, .. } => Some(source.reason()),
            RefreshError::Settled { reason, .. } => Some(*reason),
            RefreshError::Unconfigured | RefreshError::Render(_) => None,
        }
    }

    /// See [`ProbeError::settled`].
    pub fn settled(&self) -> bool {
        match self {
            RefreshError::Probe { source, .. } => source.settled(),
            RefreshError::Settled { .. } => true,
            RefreshError::Unconfigured | RefreshError::Render(_) => false,
        }
    }
}

impl Handler for Emulators {
    type Data = Entry;
    type Stamp = Fingerprint;
    type Error = RefreshError;
    type FileError = CacheFileError;

    fn stamp(&self, key: &str) -> Result<Fingerprint, Absent> {
        let view = self.view();
        let path = &view.table.get(key).ok_or(Absent::Missing)?.path;
        let s = &view.settings;
        self.host
            .fingerprint(path, &s.module_dirs, &s.accels, &view.host)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Absent::Missing,
                _ => {
                    Absent::Inaccessible(Arc::from(format!("cannot stat {}: {e}", path.display())))
                }
            })
    }

    fn data_stamp<'a>(&self, data: &'a Entry) -> &'a Fingerprint {
        &data.fingerprint
    }

    fn why_changed(&self, old: &Fingerprint, new: &Fingerprint) -> &'static str {
        Fingerprint::why_changed(old, new).as_str()
    }

    fn settled(&self, error: &RefreshError) -> bool {
        error.settled()
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
        // A host whose /dev/kvm the agent cannot use gets a TCG probe, and
        // TCG's answers (CPU usability under TCG).
        let req = ProbeRequest {
            tag: Some(self.probe_tag.clone()),
            ..ProbeRequest::new(
                spec.name.clone(),
                settings.timeout,
                settings.devices.clone(),
            )
        }
        .accels(&settings.accels, stamp.kvm_usable);
        let started = Instant::now();
        match probe(&spec.path, &req, &self.counter, &cancel).await {
            Ok((caps, report)) => {
                tracing::info!(emulator = key, path = %spec.path.display(), seconds = caps.probe.duration_seconds,
                               execs = caps.probe.execs,
                               version = caps.qemu.as_ref().map(|q| q.version.as_str()).unwrap_or("?"), "probed");
                let seconds = caps.probe.duration_seconds;
                let execs = std::iter::once(&report.exec)
                    .chain(&report.passes)
                    .map(|e| e.duration)
                    .collect();
                let memos = self.memos(key, &spec.path, &stamp, false);
                Ok(Entry::new(caps, stamp, seconds, execs, memos)?)
            }
            Err(source) => {
                // A QEMU that started is timed, failed ones too.
                let ran_for = match &source {
                    ProbeError::Exec(e) if !e.started() => None,
                    _ => Some(started.elapsed()),
                };
                Err(RefreshError::Probe { source, ran_for })
            }
        }
    }

    fn load_file(&self, key: &str, bytes: &[u8]) -> Result<Entry, CacheFileError> {
        let view = self.view();
        let configured = &view
            .table
            .get(key)
            .ok_or(CacheFileError::Unconfigured)?
            .path;
        let entry = files::open(bytes, files::CACHE_FORMAT, key, configured)?;
        let s: Stored = serde_json::from_str(entry.get()).map_err(CacheFileError::Syntax)?;
        let doc = &s.capabilities;
        if s.capabilities.schema_version != SCHEMA_VERSION {
            return Err(CacheFileError::Schema(doc.schema_version));
        }
        if doc.emulator.name != key || Path::new(&doc.emulator.path) != configured {
            return Err(CacheFileError::Document {
                found: format!("{} at {}", doc.emulator.name, doc.emulator.path),
            });
        }
        if !s.exec_seconds.is_finite() || s.exec_seconds < 0.0 {
            return Err(CacheFileError::ExecSeconds);
        }
        let memos = self.memos(key, configured, &s.fingerprint, true);
        Entry::new(
            s.capabilities,
            s.fingerprint,
            s.exec_seconds,
            Vec::new(),
            memos,
        )
        .map_err(CacheFileError::Syntax)
    }

    fn save_failure(
        &self,
        key: &str,
        stamp: &Fingerprint,
        error: &RefreshError,
    ) -> Option<Vec<u8>> {
        let path = self.view().table.get(key)?.path.clone();
        let stored = StoredFailure {
            fingerprint: stamp.clone(),
            error: error.to_string(),
            reason: error.reason()?,
        };
        files::seal(files::FAILURE_FORMAT, key, &path, &stored).ok()
    }

    fn load_failure(&self, key: &str, bytes: &[u8]) -> Option<(Fingerprint, RefreshError)> {
        let view = self.view();
        let configured = &view.table.get(key)?.path;
        let entry = files::open(bytes, files::FAILURE_FORMAT, key, configured).ok()?;
        let s: StoredFailure = serde_json::from_str(entry.get()).ok()?;
        Some((
            s.fingerprint,
            RefreshError::Settled {
                message: s.error,
                reason: s.reason,
            },
        ))
    }

    fn save_file(&self, key: &str, e: &Entry) -> Result<Vec<u8>, CacheFileError> {
        let stored = Stored {
            fingerprint: e.fingerprint.clone(),
            exec_seconds: e.exec_seconds,
            capabilities: e.caps.clone(),
        };
        files::seal(
            files::CACHE_FORMAT,
            key,
            Path::new(&e.caps.emulator.path),
            &stored,
        )
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Cache events into metrics, logs, the change history and the versions
/// long-polls wait on.
pub struct Reporter {
    pub metrics: Arc<Metrics>,
    pub history: Arc<History>,
    pub versions: Arc<Versions>,
    /// Whether the cache directory took the last write (`None`: not tried
    /// yet): a change is logged once, not every write.
    pub cache_dir_writable: std::sync::Mutex<Option<bool>>,
    /// The handler, for prewarming a new entry's memo and removing the
    /// memo files of emulators no longer configured.
    pub emulators: Arc<Emulators>,
}

/// The side of a change an entry stands for.
fn side(e: &Entry) -> (&Capabilities, Side) {
    let b = &e.fingerprint.binary;
    let binary = format!("ino {} size {} mtime_ns {}", b.ino, b.size, b.mtime_ns);
    (&e.caps, Side::of(&e.caps, binary))
}

impl cache::Observer<Emulators> for Reporter {
    fn refreshing(&self, key: &str) {
        self.metrics.probe_started(key);
    }
    fn produced(&self, key: &str, data: &Entry) {
        for took in &data.execs {
            self.metrics.observe_exec(key, *took);
        }
        self.metrics.probe_succeeded(key, unix_now());
    }
    fn failed(&self, key: &str, error: &RefreshError) {
        if let RefreshError::Probe {
            ran_for: Some(took),
            ..
        } = error
        {
            self.metrics.observe_exec(key, *took);
        }
        if let Some(reason) = error.reason().filter(|r| r.counted()) {
            self.metrics.probe_failed(key, reason, unix_now());
        }
    }
    fn hit(&self, key: &str, data: &Entry) {
        self.metrics.record_hit(key, data.exec_seconds);
    }
    fn miss(&self, key: &str, reason: &'static str) {
        self.metrics.record_miss(key, reason, unix_now());
    }
    fn invalidated(&self, key: &str, reason: &'static str) {
        tracing::info!(emulator = key, reason, "cache entry invalidated");
        self.metrics.record_invalidation(key, reason);
    }
    /// A re-probe replaced an entry: what changed is logged, counted and
    /// recorded. The first probe of an emulator is no change, nor is a
    /// re-probe that found everything as it was.
    fn replaced(&self, key: &str, previous: Option<&Entry>, new: &Entry, reason: &'static str) {
        let metrics = Arc::clone(&self.metrics);
        self.emulators.prewarm(key, &new.memo, move |key, result| {
            metrics.record_shim(key, result);
        });
        let Some(previous) = previous else { return };
        let now = SystemTime::now();
        let Some(change) = Change::new(key, reason, now, side(previous), side(new)) else {
            return;
        };
        if change.breaking {
            tracing::warn!(emulator = key, reason, summary = %change.summary, "capabilities lost");
        } else {
            tracing::info!(emulator = key, reason, summary = %change.summary, "capabilities changed");
        }
        let at = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics.record_change(key, &change.items, at);
        self.history.record(change);
    }
    fn store_writable(&self, dir: &Path, result: Result<(), &std::io::Error>) {
        let now = result.is_ok();
        let before = self
            .cache_dir_writable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(now);
        self.metrics.cache_dir_writable.set(i64::from(now));
        match result {
            Err(error) if before != Some(false) => tracing::warn!(
                dir = %dir.display(),
                %error,
                "the cache directory cannot be written: serving from memory; the cache files are written once it can be (set `cache_dir` to a writable directory)"
            ),
            Ok(()) if before == Some(false) => tracing::info!(
                dir = %dir.display(),
                "the cache directory can be written again: writing the cache files"
            ),
            _ => {}
        }
    }
    fn revalidation(&self) {
        self.metrics.revalidations.inc();
    }
    fn added(&self, key: &str) {
        self.metrics.add_emulator(key);
        // The list gains a row.
        self.versions.bump(key);
    }
    fn removed(&self, key: &str) {
        self.emulators.remove_memo(key);
        self.metrics.remove_emulator(key);
        self.history.remove(key);
        self.versions.remove(key);
    }
    fn changed(&self, key: &str) {
        self.versions.bump(key);
    }
}
