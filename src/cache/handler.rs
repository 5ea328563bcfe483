//! The contract between the generic cache and the thing it caches, as in
//! libvirt's `virfilecache` handler table, split so that no lock is ever
//! held across I/O: [`Handler::stamp`] says what the source looks like now
//! (stat-only), [`Handler::data_stamp`] what it looked like when the data
//! was made, [`Handler::new_data`] makes new data (a probe), and
//! [`Handler::load_file`] / [`Handler::save_file`] convert to and from disk.
//! [`Observer`] is how the cache reports what it does (metrics, logs).

use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a source has no stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Absent {
    /// It does not exist.
    Missing,
    /// It exists but cannot be examined (e.g. permission denied); the text
    /// says why.
    Inaccessible(Arc<str>),
}

impl Absent {
    /// A bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Absent::Missing => Reason::Missing.as_str(),
            Absent::Inaccessible(_) => Reason::Inaccessible.as_str(),
        }
    }
}

crate::support::labelled! {
    /// Why the cache refreshes a key or finds no valid data for it, other
    /// than a change of its source (which the handler names:
    /// [`Handler::why_changed`]). With those, the `reason` label of
    /// misses and invalidations.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub enum Reason {
        /// Never made yet (start-up, a new key).
        Cold = "cold",
        /// A failed refresh's backoff is over.
        Retry = "retry",
        /// The source is back after it was gone.
        Reappeared = "reappeared",
        /// A refresh was demanded.
        Forced = "forced",
        /// No valid data: backing off after a failure.
        Failed = "failed",
        /// No valid data: the source is gone.
        Missing = "missing",
        /// No valid data: the source cannot be examined.
        Inaccessible = "inaccessible",
    }
}

impl Reason {
    /// Whether a miss for the reason `label` says nothing of a change of
    /// the source (start-up, a failed or absent source).
    pub fn no_change(label: &str) -> bool {
        [
            Reason::Cold,
            Reason::Failed,
            Reason::Missing,
            Reason::Inaccessible,
        ]
        .iter()
        .any(|r| r.as_str() == label)
    }
}

/// What the cache needs from the thing it caches.
pub trait Handler: Send + Sync + 'static {
    type Data: Send + Sync + 'static;
    type Stamp: Clone + PartialEq + Send + Sync + 'static;
    type Error: std::fmt::Display + Send + Sync + 'static;
    type FileError: std::fmt::Display + Send + Sync + 'static;

    /// The source of `key` as it is now, cheaply (no exec).
    fn stamp(&self, key: &str) -> Result<Self::Stamp, Absent>;
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
    /// Whether `error` is settled: a property of the source as stamped, so
    /// a refresh under the same stamp would fail the same way. A settled
    /// failure is not retried until the stamp changes (or a refresh is
    /// forced); others back off and retry.
    fn settled(&self, _error: &Self::Error) -> bool {
        false
    }
    /// A settled failure (see [`Handler::settled`]) encoded for its file,
    /// so a restart does not retry it while the source is unchanged;
    /// `None`: it is not kept.
    fn save_failure(
        &self,
        _key: &str,
        _stamp: &Self::Stamp,
        _error: &Self::Error,
    ) -> Option<Vec<u8>> {
        None
    }
    /// Decodes a failure file: the stamp the failure happened under and
    /// the error (`None`: corrupt, foreign or not ours).
    fn load_failure(&self, _key: &str, _bytes: &[u8]) -> Option<(Self::Stamp, Self::Error)> {
        None
    }
    /// Decodes a cache file (an error means corrupt, foreign or not ours).
    fn load_file(&self, key: &str, bytes: &[u8]) -> Result<Self::Data, Self::FileError>;
    /// Encodes data for its cache file.
    fn save_file(&self, key: &str, data: &Self::Data) -> Result<Vec<u8>, Self::FileError>;
}

/// Hooks for metrics and logs. Every method has a no-op default. They are
/// called with no lock held unless their doc says otherwise.
pub trait Observer<H: Handler>: Send + Sync {
    /// A lookup answered from a valid entry (called under the slot lock).
    fn hit(&self, _key: &str, _data: &H::Data) {}
    /// A lookup that needed a refresh, waited on one, or found no valid
    /// entry (called under the slot lock).
    fn miss(&self, _key: &str, _reason: &'static str) {}
    /// An entry found invalid, by a lookup or the revalidator (called under
    /// the slot lock).
    fn invalidated(&self, _key: &str, _reason: &'static str) {}
    /// A refresh begins: [`Handler::new_data`] runs now (it had to wait for
    /// a permit).
    fn refreshing(&self, _key: &str) {}
    /// A refresh produced `data` (whether or not a later one superseded
    /// it).
    fn produced(&self, _key: &str, _data: &H::Data) {}
    /// A refresh failed (not one stopped by shutdown).
    fn failed(&self, _key: &str, _error: &H::Error) {}
    /// A refresh's data replaced `previous` (none for the first) as the
    /// key's current data. `reason` is why the refresh ran.
    fn replaced(
        &self,
        _key: &str,
        _previous: Option<&H::Data>,
        _new: &H::Data,
        _reason: &'static str,
    ) {
    }
    /// Whether the cache directory took a write (a cache file, or the
    /// check at start): `Err` says why not. Memory keeps serving either
    /// way; unsaved data is written by a later pass.
    fn store_writable(&self, _dir: &std::path::Path, _result: Result<(), &std::io::Error>) {}
    /// A pass of `Cache::revalidate_all`.
    fn revalidation(&self) {}
    /// A key was added (config load or reload).
    fn added(&self, _key: &str) {}
    /// A key was removed (config reload).
    fn removed(&self, _key: &str) {}
    /// Something about `key` changed that a watcher may want to see: new
    /// data, a new state. Called under the slot lock.
    fn changed(&self, _key: &str) {}
}

/// An observer that does nothing.
pub struct NoObserver;
impl<H: Handler> Observer<H> for NoObserver {}
