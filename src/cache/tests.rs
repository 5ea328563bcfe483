//! The cache's contract, with an in-memory handler whose "source" is a
//! version number per key and whose refreshes are counted.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// Retries of the tests' cache: 5 s doubling to 10 min.
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(5),
    max: Duration::from_secs(600),
};

#[derive(Default)]
struct Fake {
    /// key → version of the source; `None` = missing.
    sources: Mutex<HashMap<String, Option<u64>>>,
    refreshes: AtomicUsize,
    fail: AtomicBool,
    /// When set with `fail`, the failures are settled (the source refuses
    /// the same way until it changes).
    refuse: AtomicBool,
    /// When set, refreshes wait for a permit here (to hold a flight open).
    gate: Mutex<Option<Arc<Semaphore>>>,
    /// Gates for refreshes of one source version only.
    stamp_gates: Mutex<HashMap<u64, Arc<Semaphore>>>,
    /// When set, encoding a file waits for a message (the refresh is then
    /// between publishing its outcome and writing its file).
    hold_save: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl Fake {
    fn set(&self, key: &str, v: Option<u64>) {
        self.sources.lock().unwrap().insert(key.to_owned(), v);
    }
    fn count(&self) -> usize {
        self.refreshes.load(Ordering::SeqCst)
    }
}

impl Handler for Fake {
    type Data = (u64, String);
    type Stamp = u64;
    type Error = String;
    type FileError = String;

    fn stamp(&self, key: &str) -> Result<u64, Absent> {
        self.sources
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .flatten()
            .ok_or(Absent::Missing)
    }
    fn data_stamp<'a>(&self, d: &'a (u64, String)) -> &'a u64 {
        &d.0
    }
    fn why_changed(&self, _: &u64, _: &u64) -> &'static str {
        "binary_changed"
    }
    async fn new_data(
        &self,
        key: &str,
        stamp: u64,
        _cancel: CancellationToken,
    ) -> Result<(u64, String), String> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        let stamp_gate = self.stamp_gates.lock().unwrap().get(&stamp).cloned();
        if let Some(g) = stamp_gate {
            let _ = g.acquire().await.map(|p| p.forget());
        }
        let gate = self.gate.lock().unwrap().clone();
        if let Some(g) = gate {
            let _ = g.acquire().await.map(|p| p.forget());
        }
        if self.fail.load(Ordering::SeqCst) {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(format!("{key}: refused"));
            }
            return Err(format!("{key}: probe failed"));
        }
        Ok((stamp, format!("{key}@{stamp}")))
    }
    fn settled(&self, error: &String) -> bool {
        error.ends_with(": refused")
    }
    fn load_file(&self, _key: &str, bytes: &[u8]) -> Result<(u64, String), String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let (v, s) = text.split_once(' ').ok_or("no space")?;
        Ok((v.parse().map_err(|_| "bad version")?, s.to_owned()))
    }
    fn save_file(&self, _key: &str, d: &(u64, String)) -> Result<Vec<u8>, String> {
        if let Some(rx) = self.hold_save.lock().unwrap().take() {
            let _ = rx.recv();
        }
        Ok(format!("{} {}", d.0, d.1).into_bytes())
    }
}

/// Counts what the cache reports, by event and reason.
#[derive(Default)]
struct Counts(Mutex<HashMap<String, usize>>);

impl Counts {
    fn bump(&self, what: String) {
        *self.0.lock().unwrap().entry(what).or_default() += 1;
    }
    fn get(&self, what: &str) -> usize {
        self.0.lock().unwrap().get(what).copied().unwrap_or(0)
    }
}

impl Observer<Fake> for Counts {
    fn hit(&self, _: &str, _: &(u64, String)) {
        self.bump("hit".into());
    }
    fn miss(&self, _: &str, reason: &'static str) {
        self.bump(format!("miss:{reason}"));
        self.bump("miss".into());
    }
    fn invalidated(&self, _: &str, reason: &'static str) {
        self.bump(format!("invalidated:{reason}"));
    }
    fn replaced(
        &self,
        _: &str,
        _: Option<&(u64, String)>,
        _: &(u64, String),
        reason: &'static str,
    ) {
        self.bump(format!("replaced:{reason}"));
    }
}

fn cache_in(dir: &std::path::Path, keys: &[&str]) -> (Arc<Cache<Fake>>, Arc<Fake>) {
    let (c, fake, _) = observed_cache_in(dir, keys);
    (c, fake)
}

fn observed_cache_in(
    dir: &std::path::Path,
    keys: &[&str],
) -> (Arc<Cache<Fake>>, Arc<Fake>, Arc<Counts>) {
    let fake = Arc::new(Fake::default());
    for k in keys {
        fake.set(k, Some(1));
    }
    let counts = Arc::new(Counts::default());
    let c = Cache::new(
        Arc::clone(&fake),
        Store::new(dir),
        2,
        BACKOFF,
        Arc::clone(&counts) as Arc<dyn Observer<Fake>>,
    );
    c.set_keys(&keys.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>());
    (c, fake, counts)
}

/// A lookup in a task of its own; yields the data's text.
fn spawn_lookup(
    c: &Arc<Cache<Fake>>,
    key: &'static str,
) -> tokio::task::JoinHandle<Result<String, LookupError<String>>> {
    let c = Arc::clone(c);
    tokio::spawn(async move { c.lookup(key).await.map(|a| a.data.1.clone()) })
}

/// Yields until the fake has started `n` refreshes.
async fn refreshes_reach(fake: &Fake, n: usize) {
    while fake.count() < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn steady_state_refreshes_once_then_only_hits() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    let first = c.lookup("a").await.unwrap();
    assert!(!first.hit);
    for _ in 0..1000 {
        let a = c.lookup("a").await.unwrap();
        assert!(a.hit && !a.stale);
        assert_eq!(a.data.1, "a@1");
    }
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn changed_source_is_refreshed_exactly_once_and_served_new() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a", "b"]);
    c.lookup("a").await.unwrap();
    c.lookup("b").await.unwrap();
    fake.set("a", Some(2));
    assert_eq!(c.lookup("a").await.unwrap().data.1, "a@2");
    assert_eq!(c.lookup("a").await.unwrap().data.1, "a@2");
    c.revalidate_all().await;
    assert_eq!(fake.count(), 3, "a twice, b once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_one_refresh() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake, counts) = observed_cache_in(d.path(), &["a"]);
    c.lookup("a").await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    *fake.gate.lock().unwrap() = Some(Arc::clone(&gate));
    fake.set("a", Some(2));
    let lookups: Vec<_> = (0..200)
        .map(|_| {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.lookup("a").await.map(|a| a.data.1.clone()) })
        })
        .collect();
    // Every lookup has joined the flight (each reports one miss; the first
    // lookup's was before the change), then the one refresh is released.
    while counts.get("miss") < 201 {
        tokio::task::yield_now().await;
    }
    assert_eq!(counts.get("miss:binary_changed"), 200);
    gate.add_permits(1000);
    for l in lookups {
        assert_eq!(l.await.unwrap().unwrap(), "a@2");
    }
    assert_eq!(
        fake.count(),
        2,
        "one initial refresh and one for the change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_refresh_does_not_block_other_keys() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a", "b"]);
    c.lookup("b").await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    *fake.gate.lock().unwrap() = Some(Arc::clone(&gate));
    let slow = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.lookup("a").await.map(|_| ()) }
    });
    while fake.count() < 2 {
        tokio::task::yield_now().await;
    }
    // "a" is stuck in its refresh; "b" still answers from memory.
    let b = c.lookup("b").await.unwrap();
    assert!(b.hit);
    assert_eq!(c.status("a").unwrap().state, State::Probing);
    gate.add_permits(10);
    slow.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_and_keep_the_last_good_data() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    c.lookup("a").await.unwrap();
    fake.fail.store(true, Ordering::SeqCst);
    fake.set("a", Some(2));
    let e = c.lookup("a").await.unwrap_err();
    assert_eq!(
        e,
        LookupError::Failed(Arc::new("a: probe failed".to_owned()))
    );
    // Within the backoff, lookups and passes cause no refresh: stale data.
    for _ in 0..100 {
        let a = c.lookup("a").await.unwrap();
        assert!(a.stale && !a.hit);
        assert_eq!(a.data.1, "a@1");
        c.revalidate_all().await;
    }
    assert_eq!(fake.count(), 2);
    let s = c.status("a").unwrap();
    assert_eq!((s.state, s.failures), (State::Failed, 1));
    // After the backoff one retry, which fails again and doubles the wait.
    tokio::time::advance(BACKOFF.delay(1)).await;
    c.revalidate_all().await;
    assert_eq!(fake.count(), 3);
    tokio::time::advance(BACKOFF.delay(1)).await;
    c.revalidate_all().await;
    assert_eq!(fake.count(), 3, "second delay is twice the first");
    tokio::time::advance(BACKOFF.delay(1)).await;
    fake.fail.store(false, Ordering::SeqCst);
    c.revalidate_all().await;
    assert_eq!(fake.count(), 4);
    let a = c.lookup("a").await.unwrap();
    assert!(a.hit && !a.stale);
    assert_eq!(a.data.1, "a@2");
}

#[tokio::test(start_paused = true)]
async fn a_settled_failure_is_not_retried_until_the_source_changes() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    fake.fail.store(true, Ordering::SeqCst);
    fake.refuse.store(true, Ordering::SeqCst);
    c.revalidate_all().await;
    assert_eq!(fake.count(), 1);
    assert_eq!(c.next_retry(), None, "no wake-up for a settled failure");
    assert!(c.ready(), "a failure is an answer");
    // A day of passes and lookups: the same answer, no refresh.
    for _ in 0..24 {
        tokio::time::advance(Duration::from_secs(3600)).await;
        c.revalidate_all().await;
        assert_eq!(
            c.lookup("a").await.unwrap_err(),
            LookupError::Failed(Arc::new("a: refused".to_owned()))
        );
    }
    assert_eq!(fake.count(), 1);
    // A forced refresh still runs (the operator asked).
    c.force("a", Duration::ZERO).unwrap();
    c.revalidate_all().await;
    refreshes_reach(&fake, 2).await;
    // A changed source is tried at once, and its success is served.
    fake.fail.store(false, Ordering::SeqCst);
    fake.set("a", Some(2));
    c.revalidate_all().await;
    assert_eq!(fake.count(), 3);
    assert_eq!(c.lookup("a").await.unwrap().data.1, "a@2");
}

#[tokio::test]
async fn missing_source_then_back() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    c.lookup("a").await.unwrap();
    fake.set("a", None);
    assert_eq!(c.lookup("a").await.unwrap_err(), LookupError::Missing);
    c.revalidate_all().await;
    assert_eq!(c.status("a").unwrap().state, State::Missing);
    assert!(c.ready(), "missing is an answer");
    fake.set("a", Some(5));
    c.revalidate_all().await;
    assert_eq!(fake.count(), 2);
    assert_eq!(c.lookup("a").await.unwrap().data.1, "a@5");
}

#[tokio::test]
async fn unknown_key() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = cache_in(d.path(), &["a"]);
    assert_eq!(c.lookup("zz").await.unwrap_err(), LookupError::Unknown);
}

#[tokio::test]
async fn restart_serves_valid_files_without_refresh() {
    let d = tempfile::tempdir().unwrap();
    {
        let (c, _) = cache_in(d.path(), &["a", "b"]);
        c.revalidate_all().await;
    }
    let (c, fake) = cache_in(d.path(), &["a", "b"]);
    assert!(c.load_from_disk("a") && c.load_from_disk("b"));
    assert!(c.ready());
    c.revalidate_all().await;
    assert!(c.lookup("a").await.unwrap().hit);
    assert_eq!(fake.count(), 0);
}

#[tokio::test]
async fn corrupt_truncated_and_outdated_files_are_discarded() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::new(d.path());
    store.write("a", b"\xff\xfe garbage").unwrap();
    store.write("b", b"1").unwrap(); // truncated: no data part
    store.write("c", b"7 c@7").unwrap(); // sound, but the source is now 1
    let (c, fake) = cache_in(d.path(), &["a", "b", "c"]);
    for k in ["a", "b", "c"] {
        assert!(!c.load_from_disk(k), "{k} must not be served");
        assert!(store.read(k).unwrap().is_none(), "{k}'s file is removed");
    }
    c.revalidate_all().await;
    assert_eq!(fake.count(), 3);
    assert_eq!(c.lookup("c").await.unwrap().data.1, "c@1");
    assert_eq!(store.read("c").unwrap().as_deref(), Some(&b"1 c@1"[..]));
}

#[tokio::test]
async fn unwritable_directory_keeps_serving_and_retries_the_write() {
    let d = tempfile::tempdir().unwrap();
    let blocker = d.path().join("cache");
    std::fs::write(&blocker, "a file where the directory should be").unwrap();
    let (c, fake) = cache_in(&blocker, &["a"]);
    assert_eq!(c.lookup("a").await.unwrap().data.1, "a@1");
    assert!(c.lookup("a").await.unwrap().hit);
    std::fs::remove_file(&blocker).unwrap();
    c.revalidate_all().await;
    assert_eq!(
        Store::new(&blocker).read("a").unwrap().as_deref(),
        Some(&b"1 a@1"[..])
    );
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn forced_refresh_joins_a_running_one() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    c.lookup("a").await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    *fake.gate.lock().unwrap() = Some(Arc::clone(&gate));
    assert_eq!(c.force("a", Duration::ZERO).unwrap().state, State::Probing);
    assert_eq!(c.force("a", Duration::ZERO).unwrap().state, State::Probing);
    // The data is still valid: lookups meanwhile are hits.
    assert!(c.lookup("a").await.unwrap().hit);
    gate.add_permits(10);
    c.settle("a").await;
    assert_eq!(fake.count(), 2);
}

#[tokio::test]
async fn shutdown_cancels_in_flight_refreshes() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    *fake.gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    let waiting = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.lookup("a").await.map(|_| ()) }
    });
    while fake.count() < 1 {
        tokio::task::yield_now().await;
    }
    c.shutdown(Duration::from_secs(5)).await;
    assert_eq!(waiting.await.unwrap().unwrap_err(), LookupError::Cancelled);
}

#[tokio::test]
async fn removed_keys_lose_their_files() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = cache_in(d.path(), &["a", "b"]);
    c.revalidate_all().await;
    assert_eq!(c.set_keys(&["b".to_owned(), "n".to_owned()]), ["n"]);
    assert!(c.store().read("a").unwrap().is_none());
    assert_eq!(c.keys(), ["b", "n"]);
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let b = Backoff {
        initial: Duration::from_secs(5),
        max: Duration::from_secs(60),
    };
    let d: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
    assert_eq!(d, [5, 10, 20, 40, 60, 60]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_key_that_goes_missing_has_nothing_to_retry() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    fake.fail.store(true, Ordering::SeqCst);
    c.revalidate_all().await;
    assert!(c.next_retry().is_some());
    fake.set("a", None);
    tokio::time::advance(Duration::from_secs(3600)).await;
    c.revalidate_all().await;
    assert_eq!(c.status("a").unwrap().state, State::Missing);
    assert_eq!(c.next_retry(), None, "no wake-up for a missing binary");
    assert_eq!(fake.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_after_a_mid_refresh_change_never_gets_the_old_answer() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    c.lookup("a").await.unwrap();
    // Version 2 is being probed (held), and a lookup waits on it.
    let v2 = Arc::new(Semaphore::new(0));
    let v3 = Arc::new(Semaphore::new(0));
    fake.stamp_gates.lock().unwrap().insert(2, Arc::clone(&v2));
    fake.stamp_gates.lock().unwrap().insert(3, Arc::clone(&v3));
    fake.set("a", Some(2));
    let before = spawn_lookup(&c, "a");
    refreshes_reach(&fake, 2).await;
    // The binary is replaced again while that probe runs: a new lookup
    // must not join it, and costs exactly one more refresh.
    fake.set("a", Some(3));
    let after = spawn_lookup(&c, "a");
    refreshes_reach(&fake, 3).await;
    // The newer refresh finishes first; the superseded one last.
    v3.add_permits(1);
    assert_eq!(after.await.unwrap().unwrap(), "a@3");
    v2.add_permits(1);
    assert_eq!(before.await.unwrap().unwrap(), "a@2", "its own question");
    c.settle("a").await;
    let now = c.lookup("a").await.unwrap();
    assert!(now.hit);
    assert_eq!(now.data.1, "a@3", "the superseded result is not kept");
    assert_eq!(fake.count(), 3);
    assert_eq!(c.store().read("a").unwrap().as_deref(), Some(&b"3 a@3"[..]));
}

/// The counters a change moves, whichever path sees it first.
async fn counters_after(first_by_lookup: bool, prepare: impl Fn(&Fake)) -> Vec<(String, usize)> {
    let d = tempfile::tempdir().unwrap();
    let (c, fake, counts) = observed_cache_in(d.path(), &["a"]);
    c.lookup("a").await.unwrap();
    prepare(&fake);
    c.revalidate_all().await;
    fake.fail.store(false, Ordering::SeqCst);
    fake.set("a", Some(9));
    if first_by_lookup {
        c.lookup("a").await.unwrap();
        c.revalidate_all().await;
    } else {
        c.revalidate_all().await;
    }
    let mut v: Vec<(String, usize)> = counts
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("invalidated") || k.starts_with("replaced"))
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn a_change_moves_the_same_counters_whichever_path_sees_it_first() {
    // Plain upgrade.
    let plain = |_: &Fake| {};
    assert_eq!(
        counters_after(true, plain).await,
        counters_after(false, plain).await
    );
    // Upgrade after an earlier failure is recorded.
    let failed_before = |f: &Fake| {
        f.fail.store(true, Ordering::SeqCst);
        f.set("a", Some(2));
    };
    let by_lookup = counters_after(true, failed_before).await;
    assert_eq!(by_lookup, counters_after(false, failed_before).await);
    assert!(
        by_lookup.contains(&("invalidated:binary_changed".into(), 2)),
        "both changes are invalidations: {by_lookup:?}"
    );
    // A binary that goes away and comes back replaced.
    let gone = |f: &Fake| f.set("a", None);
    let back = counters_after(true, gone).await;
    assert_eq!(back, counters_after(false, gone).await);
    assert!(
        back.contains(&("replaced:reappeared".into(), 1)),
        "{back:?}"
    );
    assert!(
        back.contains(&("invalidated:missing".into(), 1)),
        "{back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_get_the_answer_before_the_file_is_written() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a"]);
    let (release, hold) = std::sync::mpsc::channel();
    *fake.hold_save.lock().unwrap() = Some(hold);
    assert_eq!(c.lookup("a").await.unwrap().data.1, "a@1");
    assert!(
        c.store().read("a").unwrap().is_none(),
        "answered while the write is still held"
    );
    release.send(()).unwrap();
    c.settle("a").await;
    assert_eq!(c.store().read("a").unwrap().as_deref(), Some(&b"1 a@1"[..]));
}

#[tokio::test]
async fn forced_refreshes_are_rate_limited_per_key() {
    let d = tempfile::tempdir().unwrap();
    let (c, fake) = cache_in(d.path(), &["a", "b"]);
    c.revalidate_all().await;
    let first = c.force("a", Duration::from_secs(60)).unwrap();
    assert_eq!((first.state, first.retry_after), (State::Probing, None));
    c.settle("a").await;
    let second = c.force("a", Duration::from_secs(60)).unwrap();
    assert_eq!(second.state, State::Fresh);
    assert!(
        second
            .retry_after
            .is_some_and(|r| r <= Duration::from_secs(60))
    );
    assert_eq!(
        c.force("b", Duration::from_secs(60)).unwrap().retry_after,
        None
    );
    c.settle("b").await;
    assert_eq!(fake.count(), 4, "two at start, one forced each");
}
