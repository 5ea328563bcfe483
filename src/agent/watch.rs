//! Versions that long-polling requests wait on: one counter per emulator
//! and one for the whole list, bumped whenever the cache reports that
//! something about an emulator changed (new data, a new state). A held
//! request waits on a `watch` channel: it costs no CPU while nothing
//! happens and wakes once per change.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

#[derive(Default)]
pub struct Versions {
    /// Emulator → its version. Created on first use.
    keys: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Any emulator changed.
    all: watch::Sender<u64>,
}

impl Versions {
    fn sender(&self, key: &str) -> watch::Sender<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.entry(key.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .clone()
    }

    /// Something about `key` changed.
    pub fn bump(&self, key: &str) {
        self.sender(key).send_modify(|v| *v += 1);
        self.all.send_modify(|v| *v += 1);
    }

    /// Wakes on the next change of `key`.
    pub fn subscribe(&self, key: &str) -> watch::Receiver<u64> {
        self.sender(key).subscribe()
    }

    /// The version of the whole list now: it changes whenever any
    /// emulator's does.
    pub fn all_version(&self) -> u64 {
        *self.all.borrow()
    }

    /// Wakes on the next change of any emulator.
    pub fn subscribe_all(&self) -> watch::Receiver<u64> {
        self.all.subscribe()
    }

    /// Forgets a removed emulator (its waiters are woken and find it gone).
    pub fn remove(&self, key: &str) {
        let gone = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(s) = gone {
            s.send_modify(|v| *v += 1);
        }
        self.all.send_modify(|v| *v += 1);
    }
}
