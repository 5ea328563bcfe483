//! A generic validated cache that knows nothing of QEMU.
//!
//! The contract is libvirt's `virfilecache` handler table, split so that no
//! lock is ever held across I/O: [`Handler::stamp`] says what the source
//! looks like now (stat-only), [`Handler::data_stamp`] what it looked like
//! when the data was made, [`Handler::new_data`] makes new data (a probe),
//! [`Handler::load_file`] / [`Handler::save_file`] convert to and from disk.
//!
//! State: one `Slot` per key in a `std::sync::Mutex<HashMap>`. The lock is
//! taken only to read or swap a slot, never across a stat, a probe or a
//! write. Single flight: a slot holds at most one in-flight refresh (a task,
//! so a caller that goes away does not cancel it for the others); lookups
//! that need it wait on a `watch` channel. Probes of different keys run in
//! parallel, bounded by one semaphore (`probe_concurrency`).

pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use store::Store;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the cache needs from the thing it caches.
pub trait Handler: Send + Sync + 'static {
    type Data: Send + Sync + 'static;
    type Stamp: Clone + PartialEq + Send + Sync + 'static;
    type Error: std::fmt::Display + Send + Sync + 'static;

    /// The source of `key` as it is now, cheaply (no exec). `None`: the
    /// source is missing.
    fn stamp(&self, key: &str) -> Option<Self::Stamp>;
    /// The stamp `data` was made under.
    fn data_stamp<'a>(&self, data: &'a Self::Data) -> &'a Self::Stamp;
    /// A short, bounded reason for the difference between two stamps.
    fn why_changed(&self, old: &Self::Stamp, new: &Self::Stamp) -> &'static str;
    /// Makes fresh data for `key`; `stamp` was taken just before.
    fn new_data(
        &self,
        key: &str,
        stamp: Self::Stamp,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Self::Data, Self::Error>> + Send;
    /// Decodes a cache file (an error means corrupt or foreign).
    fn load_file(&self, key: &str, bytes: &[u8]) -> Result<Self::Data, String>;
    /// Encodes data for its cache file.
    fn save_file(&self, key: &str, data: &Self::Data) -> Result<Vec<u8>, String>;
}

/// Hooks for metrics and logs. Every method has a no-op default.
pub trait Observer<D>: Send + Sync {
    /// A lookup answered from a valid entry.
    fn hit(&self, _key: &str, _data: &D) {}
    /// A lookup that needed a refresh or waited on one.
    fn miss(&self, _key: &str, _reason: &'static str) {}
    /// An entry found invalid (by a lookup or the revalidator).
    fn invalidated(&self, _key: &str, _reason: &'static str) {}
    /// A refresh ended; `Err` carries the error text.
    fn refreshed(&self, _key: &str, _result: Result<&D, &str>) {}
    /// A pass of [`Cache::revalidate_all`].
    fn revalidation(&self) {}
    /// A key was removed from the cache (config reload).
    fn removed(&self, _key: &str) {}
}

/// An observer that does nothing.
pub struct NoObserver;
impl<D> Observer<D> for NoObserver {}

/// The state of one key, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not probed yet.
    Pending,
    Fresh,
    Probing,
    Failed,
    Missing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Fresh => "fresh",
            State::Probing => "probing",
            State::Failed => "failed",
            State::Missing => "missing",
        }
    }
}

/// A lookup's answer.
#[derive(Debug)]
pub struct Answer<D> {
    pub data: Arc<D>,
    /// Served from a valid entry without a refresh.
    pub hit: bool,
    /// The last good data of a key whose refresh failed.
    pub stale: bool,
}

/// What [`Cache::begin`] found.
pub enum Lookup<D> {
    /// Answered now (a hit, or stale data while backing off).
    Ready(Answer<D>),
    /// A refresh is under way; its outcome will answer.
    Waiting(Waiter<D>),
}

/// A lookup waiting on a refresh.
pub struct Waiter<D> {
    rx: FlightRx<D>,
}

impl<D> Waiter<D> {
    pub async fn wait(mut self) -> Result<Answer<D>, LookupError> {
        wait(&mut self.rx).await.map(|data| Answer {
            data,
            hit: false,
            stale: false,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("unknown key")]
    Unknown,
    #[error("source missing")]
    Missing,
    #[error("{0}")]
    Failed(Arc<str>),
    #[error("shutting down")]
    Cancelled,
}

/// A key's state for listings.
#[derive(Debug, Clone)]
pub struct Status<D> {
    pub key: String,
    pub state: State,
    pub data: Option<Arc<D>>,
    pub error: Option<Arc<str>>,
    pub failures: u32,
    pub last_failure: Option<SystemTime>,
}

/// Retry delays after failures: `initial`, doubling, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

type Outcome<D> = Result<Arc<D>, LookupError>;
/// The receiving end of a refresh's outcome.
type FlightRx<D> = watch::Receiver<Option<Outcome<D>>>;

/// How long a cancelled refresh may take to stop by itself.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

struct Failure<S> {
    error: Arc<str>,
    /// The stamp the failing refresh ran under: while the source still looks
    /// like this, a lookup does not retry before `retry_at`.
    stamp: S,
    attempts: u32,
    retry_at: Instant,
    at: SystemTime,
}

struct Slot<H: Handler> {
    /// The last good data (stale while `failure` is set).
    data: Option<Arc<H::Data>>,
    /// The in-flight refresh (its outcome channel and reason), if any.
    flight: Option<(FlightRx<H::Data>, &'static str)>,
    failure: Option<Failure<H::Stamp>>,
    missing: bool,
    /// The last write of `data` to disk failed; the revalidator retries it.
    unsaved: bool,
}

impl<H: Handler> Slot<H> {
    fn new() -> Self {
        Slot {
            data: None,
            flight: None,
            failure: None,
            missing: false,
            unsaved: false,
        }
    }

    fn state(&self) -> State {
        if self.flight.is_some() {
            State::Probing
        } else if self.missing {
            State::Missing
        } else if self.failure.is_some() {
            State::Failed
        } else if self.data.is_some() {
            State::Fresh
        } else {
            State::Pending
        }
    }
}

/// The cache. Share it as `Arc<Cache<H>>`.
pub struct Cache<H: Handler> {
    handler: Arc<H>,
    store: Store,
    /// Guards every slot; never held across I/O or `.await`.
    slots: Mutex<HashMap<String, Slot<H>>>,
    /// Bounds concurrent refreshes across all keys.
    permits: Arc<Semaphore>,
    observer: Arc<dyn Observer<H::Data>>,
    backoff: Backoff,
    /// Cancelled at shutdown: in-flight refreshes stop and are awaited.
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// What the revalidator decided for one key.
enum Decision {
    Keep,
    Refresh(&'static str),
}

impl<H: Handler> Cache<H> {
    pub fn new(
        handler: Arc<H>,
        store: Store,
        concurrency: usize,
        backoff: Backoff,
        observer: Arc<dyn Observer<H::Data>>,
    ) -> Arc<Self> {
        Arc::new(Cache {
            handler,
            store,
            slots: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            observer,
            backoff,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    pub fn handler(&self) -> &Arc<H> {
        &self.handler
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot<H>>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the key set exactly `keys`: new keys start pending, removed
    /// keys are dropped with their files. Returns the keys added.
    pub fn set_keys(&self, keys: &[String]) -> Vec<String> {
        let mut added = Vec::new();
        let removed: Vec<String> = {
            let mut slots = self.lock();
            for k in keys {
                if !slots.contains_key(k) {
                    slots.insert(k.clone(), Slot::new());
                    added.push(k.clone());
                }
            }
            let gone: Vec<String> = slots
                .keys()
                .filter(|k| !keys.contains(k))
                .cloned()
                .collect();
            for k in &gone {
                slots.remove(k);
            }
            gone
        };
        for k in &removed {
            self.store.remove(k);
            self.observer.removed(k);
        }
        added
    }

    /// Forgets `key`'s data so that the next lookup or pass refreshes it
    /// (used when a key's definition changed on reload).
    pub fn reset(&self, key: &str) {
        if let Some(slot) = self.lock().get_mut(key) {
            if slot.flight.is_none() {
                *slot = Slot::new();
            }
        }
        self.store.remove(key);
    }

    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.lock().keys().cloned().collect();
        k.sort();
        k
    }

    /// Serves `key` from its file when the file is sound and still valid.
    /// A corrupt, foreign or outdated file is removed (and logged). Returns
    /// whether the key is now served from disk.
    pub fn load_from_disk(&self, key: &str) -> bool {
        let bytes = match self.store.read(key) {
            Ok(Some(b)) => b,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(key, file = %self.store.path(key).display(), error = %e, "cannot read cache file; it will be re-probed");
                self.store.remove(key);
                return false;
            }
        };
        let data = match self.handler.load_file(key, &bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(key, file = %self.store.path(key).display(), error = %e, "discarding corrupt cache file");
                self.store.remove(key);
                return false;
            }
        };
        let now = self.handler.stamp(key);
        if now.as_ref() != Some(self.handler.data_stamp(&data)) {
            let why = match &now {
                Some(n) => self.handler.why_changed(self.handler.data_stamp(&data), n),
                None => "missing",
            };
            tracing::info!(key, reason = why, "discarding outdated cache file");
            self.store.remove(key);
            return false;
        }
        let mut slots = self.lock();
        match slots.get_mut(key) {
            Some(slot) if slot.data.is_none() && slot.flight.is_none() => {
                slot.data = Some(Arc::new(data));
                true
            }
            _ => false,
        }
    }

    /// Answers `key`: from memory when its stamp still matches (a hit),
    /// otherwise after one refresh shared with every concurrent caller.
    pub async fn lookup(self: &Arc<Self>, key: &str) -> Result<Answer<H::Data>, LookupError> {
        match self.begin(key)? {
            Lookup::Ready(a) => Ok(a),
            Lookup::Waiting(w) => w.wait().await,
        }
    }

    /// The synchronous half of [`Cache::lookup`]: the answer when there is
    /// one now (no timer, no await on the hot path), or the refresh to wait
    /// for (so a caller can bound the wait).
    pub fn begin(self: &Arc<Self>, key: &str) -> Result<Lookup<H::Data>, LookupError> {
        // Stat before taking the lock: no I/O under it.
        let now = self.handler.stamp(key);
        let rx = {
            let mut slots = self.lock();
            let slot = slots.get_mut(key).ok_or(LookupError::Unknown)?;
            let Some(now) = now else {
                if !slot.missing {
                    slot.missing = true;
                    self.observer.invalidated(key, "missing");
                }
                self.observer.miss(key, "missing");
                return Err(LookupError::Missing);
            };
            slot.missing = false;
            if let Some(data) = &slot.data {
                if self.handler.data_stamp(data) == &now {
                    let stale = slot.failure.is_some();
                    self.observer.hit(key, data);
                    return Ok(Lookup::Ready(Answer {
                        data: Arc::clone(data),
                        hit: true,
                        stale,
                    }));
                }
            }
            match &slot.flight {
                Some((rx, reason)) => {
                    self.observer.miss(key, reason);
                    rx.clone()
                }
                None => {
                    if let Some(f) = &slot.failure {
                        if f.stamp == now && Instant::now() < f.retry_at {
                            // Same source, still backing off: no new exec,
                            // and no valid entry either.
                            self.observer.miss(key, "failed");
                            return match &slot.data {
                                Some(d) => Ok(Lookup::Ready(Answer {
                                    data: Arc::clone(d),
                                    hit: false,
                                    stale: true,
                                })),
                                None => Err(LookupError::Failed(Arc::clone(&f.error))),
                            };
                        }
                    }
                    let reason = self.reason(slot, &now);
                    self.observer.miss(key, reason);
                    if slot.data.is_some() {
                        self.observer.invalidated(key, reason);
                    }
                    self.start_flight(key, slot, now, reason)
                }
            }
        };
        Ok(Lookup::Waiting(Waiter { rx }))
    }

    /// Why `slot` needs a refresh given the source's stamp `now`.
    fn reason(&self, slot: &Slot<H>, now: &H::Stamp) -> &'static str {
        match (&slot.data, &slot.failure) {
            (_, Some(f)) if &f.stamp != now => self.handler.why_changed(&f.stamp, now),
            (_, Some(_)) => "retry",
            (Some(d), None) => self.handler.why_changed(self.handler.data_stamp(d), now),
            (None, None) => "cold",
        }
    }

    /// Starts the one refresh of `key` (caller holds the lock and has checked
    /// there is none). Returns the channel its outcome arrives on.
    fn start_flight(
        self: &Arc<Self>,
        key: &str,
        slot: &mut Slot<H>,
        stamp: H::Stamp,
        reason: &'static str,
    ) -> FlightRx<H::Data> {
        let (tx, rx) = watch::channel(None);
        slot.flight = Some((rx.clone(), reason));
        let cache = Arc::clone(self);
        let key = key.to_owned();
        tracing::debug!(key, reason, "refresh started");
        self.tasks.spawn(async move {
            let outcome = cache.refresh(&key, stamp).await;
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    async fn refresh(self: &Arc<Self>, key: &str, stamp: H::Stamp) -> Outcome<H::Data> {
        let probe_stamp = stamp.clone();
        let work = async move {
            let _permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|_| Arc::<str>::from("shutting down"))?;
            self.handler
                .new_data(key, probe_stamp, self.cancel.child_token())
                .await
                .map_err(|e| Arc::<str>::from(e.to_string()))
        };
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            () = self.cancel.cancelled() => {
                // The handler sees the cancellation too; give it a moment to
                // stop cleanly (kill and reap) before the future is dropped.
                tokio::time::timeout(CANCEL_GRACE, &mut work)
                    .await
                    .unwrap_or_else(|_| Err(Arc::from("shutting down")))
            }
        };
        if self.cancel.is_cancelled() {
            if let Some(slot) = self.lock().get_mut(key) {
                slot.flight = None;
            }
            return Err(LookupError::Cancelled);
        }
        let outcome = {
            let mut slots = self.lock();
            let Some(slot) = slots.get_mut(key) else {
                return Err(LookupError::Unknown);
            };
            slot.flight = None;
            match result {
                Ok(data) => {
                    let data = Arc::new(data);
                    slot.data = Some(Arc::clone(&data));
                    slot.failure = None;
                    slot.unsaved = true;
                    self.observer.refreshed(key, Ok(&data));
                    Ok(data)
                }
                Err(error) => {
                    let attempts = slot.failure.as_ref().map_or(0, |f| f.attempts) + 1;
                    let delay = self.backoff.delay(attempts);
                    tracing::warn!(key, %error, attempts, retry_in = ?delay, "refresh failed");
                    self.observer.refreshed(key, Err(&error));
                    slot.failure = Some(Failure {
                        error: Arc::clone(&error),
                        stamp,
                        attempts,
                        retry_at: Instant::now() + delay,
                        at: SystemTime::now(),
                    });
                    Err(LookupError::Failed(error))
                }
            }
        };
        if outcome.is_ok() {
            self.save(key).await;
        }
        outcome
    }

    /// Writes `key`'s data to disk if it has not been written yet, on the
    /// blocking pool (the write ends with two fsyncs, which must not stall a
    /// runtime worker that is answering queries). A failure is logged and
    /// retried by the next revalidation; memory keeps serving.
    async fn save(&self, key: &str) {
        let data = {
            let slots = self.lock();
            match slots.get(key) {
                Some(s) if s.unsaved => s.data.clone(),
                _ => None,
            }
        };
        let Some(data) = data else { return };
        let written = match self.handler.save_file(key, &data) {
            Ok(bytes) => {
                let (store, k) = (self.store.clone(), key.to_owned());
                tokio::task::spawn_blocking(move || store.write(&k, &bytes))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                if let Some(slot) = self.lock().get_mut(key) {
                    if slot.data.as_ref().is_some_and(|d| Arc::ptr_eq(d, &data)) {
                        slot.unsaved = false;
                    }
                }
            }
            Err(e) => tracing::warn!(
                key,
                dir = %self.store.dir().display(),
                error = %e,
                "cannot write cache file; serving from memory, will retry"
            ),
        }
    }

    /// Forces one refresh of `key`, joining one already running. Returns
    /// the state right after (probing) without waiting for the outcome.
    pub fn force(self: &Arc<Self>, key: &str) -> Result<State, LookupError> {
        let now = self.handler.stamp(key);
        let mut slots = self.lock();
        let slot = slots.get_mut(key).ok_or(LookupError::Unknown)?;
        if slot.flight.is_none() {
            let Some(now) = now else {
                slot.missing = true;
                return Ok(State::Missing);
            };
            slot.missing = false;
            self.observer.invalidated(key, "forced");
            self.start_flight(key, slot, now, "forced");
        }
        Ok(slot.state())
    }

    /// Waits for `key`'s in-flight refresh, if any.
    pub async fn settle(&self, key: &str) {
        let rx = self
            .lock()
            .get(key)
            .and_then(|s| s.flight.as_ref().map(|f| f.0.clone()));
        if let Some(mut rx) = rx {
            let _ = wait(&mut rx).await;
        }
    }

    /// Re-checks every key: refreshes those whose source changed, that were
    /// never probed, or whose backoff is over; marks missing ones; retries
    /// unsaved files. Waits for the refreshes it started.
    pub async fn revalidate_all(self: &Arc<Self>) {
        self.observer.revalidation();
        let keys = self.keys();
        let mut waiting = Vec::new();
        for key in keys {
            let now = self.handler.stamp(&key);
            let rx = {
                let mut slots = self.lock();
                let Some(slot) = slots.get_mut(&key) else {
                    continue;
                };
                if slot.flight.is_some() {
                    slot.flight.as_ref().map(|f| f.0.clone())
                } else {
                    match self.decide(&key, slot, now) {
                        (Decision::Keep, _) => None,
                        (Decision::Refresh(reason), Some(now)) => {
                            if slot.data.is_some() && slot.failure.is_none() {
                                self.observer.invalidated(&key, reason);
                            }
                            Some(self.start_flight(&key, slot, now, reason))
                        }
                        (Decision::Refresh(_), None) => None,
                    }
                }
            };
            if let Some(rx) = rx {
                waiting.push(rx);
            }
            self.save(&key).await;
        }
        for mut rx in waiting {
            let _ = wait(&mut rx).await;
        }
    }

    fn decide(
        &self,
        key: &str,
        slot: &mut Slot<H>,
        now: Option<H::Stamp>,
    ) -> (Decision, Option<H::Stamp>) {
        let Some(now) = now else {
            if !slot.missing {
                slot.missing = true;
                tracing::warn!(key, "binary missing");
                self.observer.invalidated(key, "missing");
            }
            return (Decision::Keep, None);
        };
        let came_back = std::mem::replace(&mut slot.missing, false);
        let decision = match (&slot.data, &slot.failure) {
            (_, Some(f)) if f.stamp == now && Instant::now() < f.retry_at => Decision::Keep,
            (_, Some(_)) => Decision::Refresh(self.reason(slot, &now)),
            (Some(d), None) if self.handler.data_stamp(d) == &now => Decision::Keep,
            (Some(_), None) => Decision::Refresh(self.reason(slot, &now)),
            (None, None) => Decision::Refresh(if came_back { "reappeared" } else { "cold" }),
        };
        (decision, Some(now))
    }

    /// The earliest time a failed key may be retried, if any. Keys that are
    /// missing or already refreshing have nothing to retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.lock()
            .values()
            .filter(|s| !s.missing && s.flight.is_none())
            .filter_map(|s| s.failure.as_ref().map(|f| f.retry_at))
            .min()
    }

    /// Whether every key has an answer: data, a failure, or missing.
    pub fn ready(&self) -> bool {
        self.lock()
            .values()
            .all(|s| s.data.is_some() || s.failure.is_some() || s.missing)
    }

    /// Every key's state, sorted by key. Takes no stat: it shows what the
    /// cache knows, as of the last lookup or pass.
    pub fn statuses(&self) -> Vec<Status<H::Data>> {
        let slots = self.lock();
        let mut v: Vec<Status<H::Data>> = slots
            .iter()
            .map(|(k, s)| Status {
                key: k.clone(),
                state: s.state(),
                data: s.data.clone(),
                error: s.failure.as_ref().map(|f| Arc::clone(&f.error)),
                failures: s.failure.as_ref().map_or(0, |f| f.attempts),
                last_failure: s.failure.as_ref().map(|f| f.at),
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    pub fn status(&self, key: &str) -> Option<Status<H::Data>> {
        self.statuses().into_iter().find(|s| s.key == key)
    }

    /// Cancels in-flight refreshes (their processes are killed and reaped)
    /// and waits for them, at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("in-flight probes did not stop within {grace:?}");
        }
    }
}

async fn wait<D>(rx: &mut FlightRx<D>) -> Outcome<D> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or(Err(LookupError::Cancelled)),
        Err(_) => Err(LookupError::Cancelled),
    }
}

#[cfg(test)]
mod tests;
