//! A generic validated cache that knows nothing of QEMU.
//!
//! - [`handler`]: the contract with the thing cached (libvirt's
//!   `virfilecache` handler table) and the observer hooks.
//! - [`slot`]: one key's state and the one decision made about it, shared
//!   by lookups and the revalidator.
//! - [`flight`]: a refresh in flight and the channel its outcome arrives on.
//! - [`store`]: the atomic on-disk store.
//!
//! State: one slot per key in a `std::sync::Mutex<HashMap>`. The lock is
//! taken only to read or change slots, never across a stat, a probe, a file
//! write or an `.await`. Single flight: a slot has at most one current
//! refresh; lookups that see the same source join it, a lookup that sees a
//! changed source starts a new one that supersedes it. Refreshes of
//! different keys run in parallel, bounded by one semaphore.

pub mod flight;
pub mod handler;
pub mod slot;
pub mod store;

use flight::{Flight, FlightRx, FlightTx, Outcome};
pub use handler::{Absent, Handler, NoObserver, Observer, Reason};
use slot::{Failure, Slot, Verdict};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use store::Store;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The state of one key, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub enum Lookup<D, E> {
    /// Answered now (a hit, or stale data while backing off).
    Ready(Answer<D>),
    /// A refresh is under way; its outcome will answer.
    Waiting(Waiter<D, E>),
}

/// A lookup waiting on a refresh.
pub struct Waiter<D, E> {
    rx: FlightRx<D, E>,
}

impl<D, E> Waiter<D, E> {
    pub async fn wait(mut self) -> Result<Answer<D>, LookupError<E>> {
        flight::outcome(&mut self.rx).await.map(|data| Answer {
            data,
            hit: false,
            stale: false,
        })
    }
}

/// Why a lookup has no answer. `E` is the handler's error: a failed
/// refresh's own error, typed (its reason is never re-parsed from text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError<E> {
    #[error("unknown key")]
    Unknown,
    #[error("source missing")]
    Missing,
    #[error("{0}")]
    Inaccessible(Arc<str>),
    #[error("{0}")]
    Failed(Arc<E>),
    #[error("shutting down")]
    Cancelled,
}

impl<E> Clone for LookupError<E> {
    fn clone(&self) -> Self {
        match self {
            LookupError::Unknown => LookupError::Unknown,
            LookupError::Missing => LookupError::Missing,
            LookupError::Inaccessible(w) => LookupError::Inaccessible(Arc::clone(w)),
            LookupError::Failed(e) => LookupError::Failed(Arc::clone(e)),
            LookupError::Cancelled => LookupError::Cancelled,
        }
    }
}

/// The lookup error of a handler's cache.
pub type LookupErrorOf<H> = LookupError<<H as Handler>::Error>;

impl<E> From<Absent> for LookupError<E> {
    fn from(a: Absent) -> Self {
        match a {
            Absent::Missing => LookupError::Missing,
            Absent::Inaccessible(why) => LookupError::Inaccessible(why),
        }
    }
}

/// A key's state for listings.
#[derive(Debug, Clone)]
pub struct Status<D> {
    pub key: String,
    pub state: State,
    pub data: Option<Arc<D>>,
    /// Why the key has no current data: the last refresh's error, or why
    /// the source cannot be examined.
    pub error: Option<String>,
    /// `data` is the last good data, and the latest refresh failed (or the
    /// source cannot be examined now).
    pub stale: bool,
    pub failures: u32,
    pub last_failure: Option<SystemTime>,
}

/// What [`Cache::force`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forced {
    /// The key's state right after.
    pub state: State,
    /// Set when the refresh was refused because the last forced one started
    /// less than the minimum interval ago: how long until one is allowed.
    pub retry_after: Option<Duration>,
}

/// Retry delays after failures: `initial`, doubling, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How a refresh ended without data.
enum Produce<E> {
    /// The handler's own error.
    Failed(E),
    /// Stopped by shutdown before or while it ran.
    ShuttingDown,
}

/// How long a cancelled refresh may take to stop by itself.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

type SlotOf<H> = Slot<<H as Handler>::Data, <H as Handler>::Stamp, <H as Handler>::Error>;
type RxOf<H> = FlightRx<<H as Handler>::Data, <H as Handler>::Error>;

/// What one step of the decision did to a slot, for the caller to report.
enum Step<H: Handler> {
    Hit(Arc<H::Data>),
    Wait(RxOf<H>, &'static str),
    /// Same source, still backing off: the last good data if any, and the
    /// failure (none only in states the decision rules out).
    BackingOff(Option<Arc<H::Data>>, Option<Arc<H::Error>>),
    Absent(Absent),
}

/// The cache. Share it as `Arc<Cache<H>>`.
pub struct Cache<H: Handler> {
    handler: Arc<H>,
    store: Store,
    /// Settled failures, one file per key (`failed/` beside the data), so
    /// a restart does not retry what would fail the same way.
    failures: Store,
    /// Guards every slot; never held across I/O or `.await`.
    slots: Mutex<HashMap<String, SlotOf<H>>>,
    /// Bounds concurrent refreshes across all keys.
    permits: Arc<Semaphore>,
    observer: Arc<dyn Observer<H>>,
    backoff: Backoff,
    /// Ids of flights, so a superseded one knows it is.
    next_flight: AtomicU64,
    /// Cancelled at shutdown: in-flight refreshes stop and are awaited.
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl<H: Handler> Cache<H> {
    pub fn new(
        handler: Arc<H>,
        store: Store,
        concurrency: usize,
        backoff: Backoff,
        observer: Arc<dyn Observer<H>>,
    ) -> Arc<Self> {
        Arc::new(Cache {
            handler,
            failures: store.subdir("failed"),
            store,
            slots: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            observer,
            backoff,
            next_flight: AtomicU64::new(1),
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

    fn lock(&self) -> MutexGuard<'_, HashMap<String, SlotOf<H>>> {
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
        for k in &added {
            self.observer.added(k);
        }
        for k in &removed {
            self.store.remove(k);
            self.failures.remove(k);
            self.observer.removed(k);
        }
        added
    }

    /// Forgets `key`'s data so that the next lookup or pass refreshes it
    /// (used when a key's definition changed on reload).
    pub fn reset(&self, key: &str) {
        if let Some(slot) = self.lock().get_mut(key) {
            *slot = Slot::new();
            self.observer.changed(key);
        }
        self.store.remove(key);
        self.failures.remove(key);
    }

    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.lock().keys().cloned().collect();
        k.sort();
        k
    }

    /// Checks that the store's directory takes files now, and reports it
    /// ([`Observer::store_writable`]). Blocking (file I/O).
    pub fn check_store(&self) {
        let result = self.store.check_writable();
        self.observer
            .store_writable(self.store.dir(), result.as_ref().map(|_| ()));
    }

    /// Serves `key` from its file when the file is sound and still valid.
    /// A corrupt, foreign or outdated file is removed (and logged). Returns
    /// whether the key is now served from disk. Blocking (file I/O): call it
    /// on a blocking thread.
    pub fn load_from_disk(&self, key: &str) -> bool {
        self.load_data(key) || self.load_failure(key)
    }

    /// A settled failure kept on disk, if the source is still as it was
    /// when it failed: the key is failed again, not retried. Blocking.
    fn load_failure(&self, key: &str) -> bool {
        let bytes = match self.failures.read(key) {
            Ok(Some(b)) => b,
            Ok(None) => return false,
            Err(_) => {
                self.failures.remove(key);
                return false;
            }
        };
        let Some((then, error)) = self.handler.load_failure(key, &bytes) else {
            tracing::info!(key, "discarding an unreadable failure file");
            self.failures.remove(key);
            return false;
        };
        if self.handler.stamp(key).as_ref() != Ok(&then) {
            self.failures.remove(key);
            return false;
        }
        let mut slots = self.lock();
        match slots.get_mut(key) {
            Some(slot)
                if slot.data.is_none() && slot.flight.is_none() && slot.failure.is_none() =>
            {
                tracing::info!(key, %error, "failed the same way before the restart, and nothing has changed since: not retried until it does");
                slot.failure = Some(Failure {
                    error: Arc::new(error),
                    stamp: then,
                    attempts: 1,
                    retry_at: None,
                    at: SystemTime::now(),
                });
                self.observer.changed(key);
                true
            }
            _ => false,
        }
    }

    /// The data file of `key`, if valid for the source as it is. Blocking.
    fn load_data(&self, key: &str) -> bool {
        let file = self.store.path(key);
        let bytes = match self.store.read(key) {
            Ok(Some(b)) => b,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(key, file = %file.display(), error = %e, "cannot read cache file; it will be re-probed");
                self.store.remove(key);
                return false;
            }
        };
        let data = match self.handler.load_file(key, &bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(key, file = %file.display(), error = %e, "discarding corrupt cache file");
                self.store.remove(key);
                return false;
            }
        };
        let then = self.handler.data_stamp(&data);
        match self.handler.stamp(key) {
            Ok(now) if &now == then => {}
            now => {
                let reason = match &now {
                    Ok(n) => self.handler.why_changed(then, n),
                    Err(a) => a.reason(),
                };
                tracing::info!(key, reason, "discarding outdated cache file");
                self.store.remove(key);
                return false;
            }
        }
        let mut slots = self.lock();
        match slots.get_mut(key) {
            Some(slot) if slot.data.is_none() && slot.flight.is_none() => {
                slot.data = Some(Arc::new(data));
                self.observer.changed(key);
                true
            }
            _ => false,
        }
    }

    /// Answers `key`: from memory when its stamp still matches (a hit),
    /// otherwise after one refresh shared with every concurrent caller.
    pub async fn lookup(self: &Arc<Self>, key: &str) -> Result<Answer<H::Data>, LookupErrorOf<H>> {
        match self.begin(key)? {
            Lookup::Ready(a) => Ok(a),
            Lookup::Waiting(w) => w.wait().await,
        }
    }

    /// The synchronous half of [`Cache::lookup`]: the answer when there is
    /// one now (no timer, no await on the hot path), or the refresh to wait
    /// for (so a caller can bound the wait).
    #[allow(clippy::type_complexity)]
    pub fn begin(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<Lookup<H::Data, H::Error>, LookupErrorOf<H>> {
        // Stat before taking the lock: no I/O under it.
        let now = self.handler.stamp(key);
        let mut slots = self.lock();
        let slot = slots.get_mut(key).ok_or(LookupError::Unknown)?;
        match self.step(key, slot, now) {
            Step::Hit(data) => {
                self.observer.hit(key, &data);
                Ok(Lookup::Ready(Answer {
                    data,
                    hit: true,
                    stale: false,
                }))
            }
            Step::Wait(rx, reason) => {
                self.observer.miss(key, reason);
                Ok(Lookup::Waiting(Waiter { rx }))
            }
            Step::BackingOff(data, error) => {
                // Same source, still backing off: no new exec, and no valid
                // entry either.
                self.observer.miss(key, Reason::Failed.as_str());
                match (data, error) {
                    (Some(data), _) => Ok(Lookup::Ready(Answer {
                        data,
                        hit: false,
                        stale: true,
                    })),
                    (None, Some(error)) => Err(LookupError::Failed(error)),
                    (None, None) => Err(LookupError::Cancelled),
                }
            }
            Step::Absent(a) => {
                self.observer.miss(key, a.reason());
                Err(a.into())
            }
        }
    }

    /// The decision ([`Slot::classify`]) and what follows from it, for both
    /// the lookup and the revalidator: marks absence, forgets an obsolete
    /// failure, counts invalidations, starts refreshes. Caller holds the
    /// lock.
    fn step(
        self: &Arc<Self>,
        key: &str,
        slot: &mut SlotOf<H>,
        now: Result<H::Stamp, Absent>,
    ) -> Step<H> {
        let verdict = self.classify(slot, now.as_ref(), false);
        let now = match self.note_absence(key, slot, verdict, now) {
            Ok(now) => now,
            Err(absent) => return Step::Absent(absent),
        };
        match verdict {
            Verdict::Hit => {
                if slot.failure.take().is_some() {
                    self.observer.changed(key);
                }
                match &slot.data {
                    Some(d) => Step::Hit(Arc::clone(d)),
                    None => Step::BackingOff(None, None),
                }
            }
            Verdict::Join => match &slot.flight {
                Some(f) => Step::Wait(f.rx.clone(), f.reason),
                None => Step::BackingOff(slot.data.clone(), None),
            },
            Verdict::BackingOff => Step::BackingOff(
                slot.data.clone(),
                slot.failure.as_ref().map(|f| Arc::clone(&f.error)),
            ),
            Verdict::Refresh {
                reason,
                invalidated,
            } => {
                if invalidated {
                    self.observer.invalidated(key, reason);
                }
                Step::Wait(self.start_flight(key, slot, now, reason), reason)
            }
            Verdict::Absent { .. } => Step::BackingOff(slot.data.clone(), None),
        }
    }

    /// [`Slot::classify`] with this cache's handler and clock.
    fn classify(&self, slot: &SlotOf<H>, now: Result<&H::Stamp, &Absent>, forced: bool) -> Verdict {
        let h = &self.handler;
        slot.classify(
            now,
            Instant::now(),
            forced,
            |d| h.data_stamp(d),
            |a, b| h.why_changed(a, b),
        )
    }

    /// What follows from the source's presence, whatever else is decided:
    /// a source newly gone is marked absent (an invalidation); one that is
    /// back is no longer. Returns the stamp, or why there is none. Caller
    /// holds the lock.
    fn note_absence(
        &self,
        key: &str,
        slot: &mut SlotOf<H>,
        verdict: Verdict,
        now: Result<H::Stamp, Absent>,
    ) -> Result<H::Stamp, Absent> {
        match (verdict, now) {
            (Verdict::Absent { newly }, Err(absent)) => {
                if newly {
                    tracing::warn!(key, reason = absent.reason(), "source gone or unreadable");
                    self.observer.invalidated(key, absent.reason());
                    slot.absent = Some(absent.clone());
                    self.observer.changed(key);
                }
                Err(absent)
            }
            (_, Err(absent)) => Err(absent),
            (_, Ok(now)) => {
                if slot.absent.take().is_some() {
                    self.observer.changed(key);
                }
                Ok(now)
            }
        }
    }

    /// Starts a refresh of `key` under `stamp`; it becomes the slot's
    /// current flight (superseding one started under another stamp).
    /// Caller holds the lock. Returns the channel its outcome arrives on.
    fn start_flight(
        self: &Arc<Self>,
        key: &str,
        slot: &mut SlotOf<H>,
        stamp: H::Stamp,
        reason: &'static str,
    ) -> RxOf<H> {
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (flight, tx) = Flight::new(id, stamp.clone(), reason);
        let rx = flight.rx.clone();
        slot.latest = Some(rx.clone());
        slot.flight = Some(flight);
        self.observer.changed(key);
        let cache = Arc::clone(self);
        let key = key.to_owned();
        tracing::debug!(key, reason, "refresh started");
        self.tasks
            .spawn(async move { cache.run_flight(key, id, stamp, reason, tx).await });
        rx
    }

    /// One refresh: makes the data, installs it (if this flight is still
    /// the slot's current one), publishes the outcome, then writes the file.
    async fn run_flight(
        self: Arc<Self>,
        key: String,
        id: u64,
        stamp: H::Stamp,
        reason: &'static str,
        tx: FlightTx<H::Data, H::Error>,
    ) {
        let result = self.produce(&key, stamp.clone()).await;
        let mut previous = None;
        let mut current = false;
        let outcome: Outcome<H::Data, H::Error> = {
            let mut slots = self.lock();
            match slots.get_mut(&key) {
                None => Err(LookupError::Unknown),
                Some(slot) => {
                    current = slot.flight.as_ref().is_some_and(|f| f.id == id);
                    if current {
                        slot.flight = None;
                        self.observer.changed(&key);
                    }
                    match result {
                        Err(Produce::Failed(e)) if self.cancel.is_cancelled() => {
                            tracing::debug!(key, error = %e, "refresh cancelled");
                            Err(LookupError::Cancelled)
                        }
                        Err(Produce::ShuttingDown) => Err(LookupError::Cancelled),
                        Ok(data) => {
                            let data = Arc::new(data);
                            if current {
                                previous = slot.data.replace(Arc::clone(&data));
                                slot.failure = None;
                                slot.unsaved = true;
                            }
                            Ok(data)
                        }
                        Err(Produce::Failed(error)) => {
                            let error = Arc::new(error);
                            if current {
                                self.record_failure(&key, slot, stamp.clone(), &error);
                            }
                            Err(LookupError::Failed(error))
                        }
                    }
                }
            }
        };
        // What changed is recorded first, so a caller that gets the new
        // data also finds its change; waiters then get the answer before
        // the file's two fsyncs.
        match &outcome {
            Ok(data) => {
                self.observer.produced(&key, data);
                if current {
                    self.observer
                        .replaced(&key, previous.as_deref(), data, reason);
                } else {
                    tracing::debug!(key, "superseded refresh ended; its data is not kept");
                }
            }
            Err(LookupError::Failed(e)) => self.observer.failed(&key, e),
            Err(_) => {}
        }
        tx.send_modify(|p| p.outcome = Some(outcome.clone()));
        if current {
            self.keep_failure(&key, &stamp, &outcome).await;
        }
        if current && outcome.is_ok() {
            self.save(&key).await;
        }
        tx.send_modify(|p| p.settled = true);
    }

    /// Keeps a settled failure on disk (see [`Handler::save_failure`]), and
    /// drops the file of one that no longer holds. On the blocking pool;
    /// a write that fails leaves the failure to memory.
    async fn keep_failure(
        &self,
        key: &str,
        stamp: &H::Stamp,
        outcome: &Outcome<H::Data, H::Error>,
    ) {
        let bytes = match outcome {
            Err(LookupError::Failed(e)) if self.handler.settled(e) => {
                self.handler.save_failure(key, stamp, e)
            }
            Err(LookupError::Cancelled) => return,
            _ => None,
        };
        let (store, k) = (self.failures.clone(), key.to_owned());
        let _ = tokio::task::spawn_blocking(move || match bytes {
            Some(b) => {
                if let Err(error) = store.write(&k, &b) {
                    tracing::debug!(key = k, %error, "cannot keep the failure on disk");
                }
            }
            None => store.remove(&k),
        })
        .await;
    }

    /// Runs the handler under a permit; at shutdown gives it a moment to
    /// stop cleanly (kill and reap) before the future is dropped.
    async fn produce(&self, key: &str, stamp: H::Stamp) -> Result<H::Data, Produce<H::Error>> {
        let work = async {
            let _permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|_| Produce::ShuttingDown)?;
            self.observer.refreshing(key);
            self.handler
                .new_data(key, stamp, self.cancel.child_token())
                .await
                .map_err(Produce::Failed)
        };
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            () = self.cancel.cancelled() => {
                tokio::time::timeout(CANCEL_GRACE, &mut work)
                    .await
                    .unwrap_or(Err(Produce::ShuttingDown))
            }
        }
    }

    fn record_failure(
        &self,
        key: &str,
        slot: &mut SlotOf<H>,
        stamp: H::Stamp,
        error: &Arc<H::Error>,
    ) {
        // Retries of the same source back off further; a changed source
        // starts over.
        let attempts = match &slot.failure {
            Some(f) if f.stamp == stamp => f.attempts + 1,
            _ => 1,
        };
        // A settled failure would recur under this stamp: no retry until
        // the source changes.
        let retry_at = if self.handler.settled(error) {
            tracing::warn!(key, %error, attempts, "refresh failed; not retried until the source changes");
            None
        } else {
            let delay = self.backoff.delay(attempts);
            tracing::warn!(key, %error, attempts, retry_in = ?delay, "refresh failed");
            Some(Instant::now() + delay)
        };
        slot.failure = Some(Failure {
            error: Arc::clone(error),
            stamp,
            attempts,
            retry_at,
            at: SystemTime::now(),
        });
    }

    /// Writes `key`'s data to disk if it has not been written yet, on the
    /// blocking pool (the write ends with two fsyncs, which must not stall a
    /// runtime worker that is answering queries). A failure is logged and
    /// retried by the next revalidation; memory keeps serving.
    async fn save(&self, key: &str) {
        let Some(writing) = self.lock().get(key).map(|s| Arc::clone(&s.writing)) else {
            return;
        };
        let _one_writer = writing.lock().await;
        let data = {
            let slots = self.lock();
            match slots.get(key) {
                Some(s) if s.unsaved => s.data.clone(),
                _ => None,
            }
        };
        let Some(data) = data else { return };
        let dir = self.store.dir().display().to_string();
        let bytes = match self.handler.save_file(key, &data) {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(key, %error, "cannot encode the cache file; serving from memory");
                return;
            }
        };
        let (store, k) = (self.store.clone(), key.to_owned());
        match tokio::task::spawn_blocking(move || store.write(&k, &bytes)).await {
            Ok(Ok(())) => {
                self.observer.store_writable(self.store.dir(), Ok(()));
                if let Some(slot) = self.lock().get_mut(key) {
                    if slot.data.as_ref().is_some_and(|d| Arc::ptr_eq(d, &data)) {
                        slot.unsaved = false;
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(key, dir, %error, "cannot write cache file; will retry");
                self.observer.store_writable(self.store.dir(), Err(&error));
            }
            Err(error) => {
                tracing::warn!(key, %error, "cache file write did not complete; will retry")
            }
        }
    }

    /// Forces one refresh of `key`, joining one already running under the
    /// same stamp. At most one forced refresh starts per `min_interval`;
    /// within it the answer says how long to wait. Does not wait for the
    /// outcome.
    pub fn force(
        self: &Arc<Self>,
        key: &str,
        min_interval: Duration,
    ) -> Result<Forced, LookupErrorOf<H>> {
        let now = self.handler.stamp(key);
        let mut slots = self.lock();
        let slot = slots.get_mut(key).ok_or(LookupError::Unknown)?;
        // The decision, forced: an absent source is marked so, a refresh
        // already running under this stamp is joined; anything else (valid
        // data, a backoff, a change) gets the forced refresh.
        let verdict = self.classify(slot, now.as_ref(), true);
        let now = self.note_absence(key, slot, verdict, now)?;
        if verdict != Verdict::Join {
            if let Some(last) = slot.last_forced {
                let since = last.elapsed();
                if since < min_interval {
                    return Ok(Forced {
                        state: slot_state(slot),
                        retry_after: Some(min_interval - since),
                    });
                }
            }
            slot.last_forced = Some(Instant::now());
            self.observer.invalidated(key, Reason::Forced.as_str());
            self.start_flight(key, slot, now, Reason::Forced.as_str());
        }
        Ok(Forced {
            state: slot_state(slot),
            retry_after: None,
        })
    }

    /// `key`'s data as it is in memory: no stat, no refresh, no counter
    /// (for long-polls woken by a change, after their first lookup).
    pub fn peek(&self, key: &str) -> Option<Arc<H::Data>> {
        self.lock().get(key).and_then(|s| s.data.clone())
    }

    /// Waits for `key`'s latest refresh, if any, to settle (its outcome
    /// published and its file written).
    pub async fn settle(&self, key: &str) {
        let rx = self.lock().get(key).and_then(|s| s.latest.clone());
        if let Some(mut rx) = rx {
            flight::settled(&mut rx).await;
        }
    }

    /// Re-checks every key with the same decision a lookup makes: refreshes
    /// those whose source changed, that were never probed, or whose backoff
    /// is over; marks missing ones; retries unsaved files. Returns once the
    /// refreshes it started or joined have settled (files written).
    pub async fn revalidate_all(self: &Arc<Self>) {
        self.observer.revalidation();
        let mut waiting = Vec::new();
        for key in self.keys() {
            let now = self.handler.stamp(&key);
            {
                let mut slots = self.lock();
                let Some(slot) = slots.get_mut(&key) else {
                    continue;
                };
                if let Step::Wait(rx, _) = self.step(&key, slot, now) {
                    waiting.push(rx);
                }
            }
            self.save(&key).await;
        }
        for mut rx in waiting {
            flight::settled(&mut rx).await;
        }
    }

    /// The earliest time a failed key may be retried, if any. Keys that are
    /// absent or already refreshing have nothing to retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.lock()
            .values()
            .filter(|s| s.absent.is_none() && s.flight.is_none())
            .filter_map(|s| s.failure.as_ref()?.retry_at)
            .min()
    }

    /// Whether every key has an answer: data, a failure, or absent.
    pub fn ready(&self) -> bool {
        self.lock()
            .values()
            .all(|s| s.data.is_some() || s.failure.is_some() || s.absent.is_some())
    }

    /// Every key's state, sorted by key. Takes no stat: it shows what the
    /// cache knows, as of the last lookup or pass.
    pub fn statuses(&self) -> Vec<Status<H::Data>> {
        let slots = self.lock();
        let mut v: Vec<Status<H::Data>> = slots.iter().map(|(k, s)| status_of(k, s)).collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    pub fn status(&self, key: &str) -> Option<Status<H::Data>> {
        self.lock().get(key).map(|s| status_of(key, s))
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

fn slot_state<D, S, E>(s: &Slot<D, S, E>) -> State {
    if s.flight.is_some() {
        State::Probing
    } else {
        match &s.absent {
            Some(Absent::Missing) => State::Missing,
            Some(Absent::Inaccessible(_)) => State::Failed,
            None if s.failure.is_some() => State::Failed,
            None if s.data.is_some() => State::Fresh,
            None => State::Pending,
        }
    }
}

fn status_of<D, S, E: std::fmt::Display>(key: &str, s: &Slot<D, S, E>) -> Status<D> {
    let error = match &s.absent {
        Some(Absent::Inaccessible(why)) => Some(why.to_string()),
        _ => s.failure.as_ref().map(|f| f.error.to_string()),
    };
    Status {
        key: key.to_owned(),
        state: slot_state(s),
        stale: s.data.is_some() && error.is_some(),
        data: s.data.clone(),
        error,
        failures: s.failure.as_ref().map_or(0, |f| f.attempts),
        last_failure: s.failure.as_ref().map(|f| f.at),
    }
}

#[cfg(test)]
mod tests;
