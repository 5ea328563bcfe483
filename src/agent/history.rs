//! The change history: the last `change_history` changes of each emulator,
//! newest first, in memory and in `cache_dir/history/<name>.json`, loaded
//! at start, so it survives restarts. Files are written atomically by one
//! writer task, in the order the changes happened. A corrupt or foreign
//! file is discarded with a warning, as cache files are; it is never fatal.

use crate::cache::store::Store;
use crate::verdicts::changes::Change;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Tag of history files.
const FILE_FORMAT: &str = "qcapsd-history";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryFile {
    format: String,
    emulator: String,
    /// Newest first.
    changes: Vec<Change>,
}

/// Why a history file is discarded.
#[derive(Debug, thiserror::Error)]
enum HistoryFileError {
    #[error("not a history file: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("written as {format} for '{emulator}'")]
    Foreign { format: String, emulator: String },
}

/// `key`'s history file from its bytes.
fn parse_file(key: &str, bytes: &[u8]) -> Result<HistoryFile, HistoryFileError> {
    let f: HistoryFile = serde_json::from_slice(bytes)?;
    if f.format != FILE_FORMAT || f.emulator != key {
        return Err(HistoryFileError::Foreign {
            format: f.format,
            emulator: f.emulator,
        });
    }
    Ok(f)
}

pub struct History {
    store: Store,
    /// Changes kept per emulator; set on reload.
    limit: Mutex<usize>,
    /// Emulator → its changes, newest first. Never held across I/O.
    changes: Mutex<HashMap<String, VecDeque<Change>>>,
    /// Emulators whose file must be rewritten, to the writer task.
    dirty: mpsc::UnboundedSender<String>,
    /// Emulators whose last write failed (the cache directory cannot be
    /// written): sent again by [`History::retry_unwritten`].
    unwritten: Mutex<std::collections::BTreeSet<String>>,
}

impl History {
    /// A history in `store`, and the receiver [`History::write_files`]
    /// takes.
    pub fn new(store: Store, limit: usize) -> (Arc<History>, mpsc::UnboundedReceiver<String>) {
        let (dirty, rx) = mpsc::unbounded_channel();
        let h = History {
            store,
            limit: Mutex::new(limit.max(1)),
            changes: Mutex::new(HashMap::new()),
            dirty,
            unwritten: Mutex::new(std::collections::BTreeSet::new()),
        };
        (Arc::new(h), rx)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Change>>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limit(&self) -> usize {
        *self.limit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps at most `limit` changes per emulator from now on.
    pub fn set_limit(&self, limit: usize) {
        *self.limit.lock().unwrap_or_else(|p| p.into_inner()) = limit.max(1);
        let limit = self.limit();
        for v in self.lock().values_mut() {
            v.truncate(limit);
        }
    }

    /// Reads `key`'s file, if any (blocking). A bad file is removed.
    pub fn load(&self, key: &str) {
        let file = self.store.path(key);
        let bytes = match self.store.read(key) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(key, file = %file.display(), error = %e, "cannot read history file; discarding it");
                self.store.remove(key);
                return;
            }
        };
        match parse_file(key, &bytes) {
            Ok(f) => {
                let mut v: VecDeque<Change> = f.changes.into();
                v.truncate(self.limit());
                self.lock().insert(key.to_owned(), v);
            }
            Err(error) => {
                tracing::warn!(key, file = %file.display(), %error, "discarding corrupt history file");
                self.store.remove(key);
            }
        }
    }

    /// Adds a change (the newest) and schedules its file's rewrite.
    pub fn record(&self, change: Change) {
        let key = change.emulator.clone();
        let limit = self.limit();
        {
            let mut all = self.lock();
            let v = all.entry(key.clone()).or_default();
            v.push_front(change);
            v.truncate(limit);
        }
        let _ = self.dirty.send(key);
    }

    /// `key`'s changes, newest first.
    pub fn of(&self, key: &str) -> Vec<Change> {
        self.lock()
            .get(key)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every emulator's changes at or after `since` (all without it),
    /// newest first.
    pub fn since(&self, since: Option<jiff::Timestamp>) -> Vec<Change> {
        let mut all: Vec<(jiff::Timestamp, Change)> = self
            .lock()
            .values()
            .flatten()
            .filter_map(|c| Some((c.at.parse::<jiff::Timestamp>().ok()?, c.clone())))
            .filter(|(t, _)| since.is_none_or(|s| *t >= s))
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.emulator.cmp(&b.1.emulator)));
        all.into_iter().map(|(_, c)| c).collect()
    }

    /// When `key`'s newest breaking change was recorded (Unix seconds).
    pub fn newest_breaking(&self, key: &str) -> Option<f64> {
        self.lock()
            .get(key)?
            .iter()
            .find(|c| c.breaking)
            .and_then(|c| c.at.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond() as f64 / 1000.0)
    }

    /// Forgets an emulator no longer configured, and its file.
    pub fn remove(&self, key: &str) {
        self.lock().remove(key);
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.store.remove(key);
    }

    /// Rewrites the file of each emulator named on `dirty`, one at a time
    /// (on the blocking pool), until the channel closes.
    pub async fn write_files(self: Arc<Self>, mut dirty: mpsc::UnboundedReceiver<String>) {
        while let Some(key) = dirty.recv().await {
            if !self.lock().contains_key(&key) {
                continue; // removed meanwhile
            }
            let file = HistoryFile {
                format: FILE_FORMAT.to_owned(),
                changes: self.of(&key),
                emulator: key.clone(),
            };
            let bytes = match serde_json::to_vec(&file) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(key, error = %e, "cannot encode the history");
                    continue;
                }
            };
            let store = self.store.clone();
            let k = key.clone();
            let written = match tokio::task::spawn_blocking(move || store.write(&k, &bytes)).await {
                Ok(Ok(())) => true,
                // The cache directory's state is reported by the cache.
                Ok(Err(e)) => {
                    tracing::debug!(key, error = %e, "cannot write the history file; will retry");
                    false
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "history write did not complete; will retry");
                    false
                }
            };
            let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
            if written {
                unwritten.remove(&key);
            } else {
                unwritten.insert(key);
            }
        }
    }

    /// Schedules again the files whose last write failed (called on each
    /// revalidation pass, so they are written once the directory can be).
    pub fn retry_unwritten(&self) {
        let keys: Vec<String> = self
            .unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for k in keys {
            let _ = self.dirty.send(k);
        }
    }
}

/// After each pass, the files whose last write failed are written again
/// (once the directory can be).
impl super::pass::Feature for History {
    fn name(&self) -> &'static str {
        "change history"
    }

    fn after_pass(
        self: Arc<Self>,
        _snapshot: Arc<super::pass::Snapshot>,
    ) -> Option<super::pass::Work> {
        self.retry_unwritten();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdicts::changes::Side;

    fn change(emulator: &str, at: &str, breaking: bool) -> Change {
        let side = Side {
            version: Some("1".into()),
            accel: "tcg".into(),
            probed_at: at.into(),
            binary: "1".into(),
        };
        Change {
            emulator: emulator.into(),
            at: at.into(),
            reason: "binary_changed".into(),
            breaking,
            summary: format!("{emulator} at {at}"),
            before: side.clone(),
            after: side,
            items: Vec::new(),
        }
    }

    #[tokio::test]
    async fn kept_newest_first_bounded_and_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let (h, rx) = History::new(Store::new(d.path()), 2);
        tokio::spawn(Arc::clone(&h).write_files(rx));
        h.record(change("a", "2026-11-28T10:00:00Z", true));
        h.record(change("a", "2026-11-28T11:00:00Z", false));
        h.record(change("a", "2026-11-28T12:00:00Z", false));
        h.record(change("b", "2026-11-28T11:30:00Z", false));
        let a: Vec<String> = h.of("a").into_iter().map(|c| c.at).collect();
        assert_eq!(
            a,
            ["2026-11-28T12:00:00Z", "2026-11-28T11:00:00Z"],
            "newest first, at most 2"
        );
        let since: Vec<String> = h
            .since(Some("2026-11-28T11:15:00+00:00".parse().unwrap()))
            .into_iter()
            .map(|c| c.summary)
            .collect();
        assert_eq!(
            since,
            ["a at 2026-11-28T12:00:00Z", "b at 2026-11-28T11:30:00Z"]
        );
        assert_eq!(h.newest_breaking("a"), None, "the breaking one fell out");
        // A new instance reads what the writer wrote (once it has).
        let written = |key: &str, n: usize| {
            Store::new(d.path())
                .read(key)
                .ok()
                .flatten()
                .is_some_and(|b| {
                    serde_json::from_slice::<HistoryFile>(&b).is_ok_and(|f| f.changes.len() == n)
                })
        };
        while !(written("a", 2) && written("b", 1)) {
            tokio::task::yield_now().await;
        }
        let (again, _rx) = History::new(Store::new(d.path()), 50);
        again.load("a");
        again.load("b");
        assert_eq!(again.of("a").len(), 2);
        assert_eq!(again.since(None).len(), 3);
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_discarded_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        store.write("a", b"{\"format\": \"qcapsd-hist").unwrap();
        store
            .write(
                "b",
                br#"{"format":"qcapsd-history","emulator":"other","changes":[]}"#,
            )
            .unwrap();
        let (h, _rx) = History::new(store.clone(), 50);
        h.load("a");
        h.load("b");
        assert!(h.of("a").is_empty() && h.of("b").is_empty());
        assert!(store.read("a").unwrap().is_none() && store.read("b").unwrap().is_none());
    }
}
