//! The memo: what QEMU printed for pure queries (help and version
//! requests, [`crate::qemu::cmdline`]), recorded once per argument list
//! and replayed to the shims byte for byte.
//!
//! A memo belongs to one cache entry: a new binary, new modules or a new
//! host make a new entry with an empty memo, so an answer is always QEMU's
//! own under the emulator's current fingerprint. Recording is single
//! flight: concurrent first requests for one argument list share one
//! exec, which runs as a task of its own (a caller that goes away does not
//! cancel it for the others). Two bounds keep it small: the number of
//! argument lists, and the bytes of one answer; past them the caller runs
//! QEMU itself.
//!
//! State: the answers and the recordings in flight, under one
//! `std::sync::Mutex` never held across an exec, a write or an `.await`.

use crate::qemu::exec::{Captured, ExecError, Exit};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// What a query is: the name QEMU is called by (its messages start with
/// it) and the arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryKey {
    pub argv0: String,
    pub args: Vec<String>,
}

/// QEMU's answer to one query.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    /// How long the recording exec took: what each replay saves.
    pub exec_seconds: f64,
    /// `stdout` and `stderr` in base64, as every replay sends them:
    /// encoded once, when the answer is made.
    pub encoded: (String, String),
    /// The whole body a replay sends (the API's, rendered at the first
    /// replay and kept: a replay then copies nothing).
    pub replayed: std::sync::OnceLock<bytes::Bytes>,
}

impl Answer {
    pub fn new(stdout: Vec<u8>, stderr: Vec<u8>, exit_code: i32, exec_seconds: f64) -> Answer {
        let encoded = (
            crate::support::base64::encode(&stdout),
            crate::support::base64::encode(&stderr),
        );
        Answer {
            stdout,
            stderr,
            exit_code,
            exec_seconds,
            encoded,
            replayed: std::sync::OnceLock::new(),
        }
    }
}

/// The memo's bounds (config `shim_memo_max_queries`,
/// `shim_memo_max_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Argument lists kept per emulator.
    pub max_queries: usize,
    /// Bytes of one answer (stdout and stderr together).
    pub max_bytes: usize,
}

/// Why a query has no answer from the memo: the caller runs QEMU itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MemoError {
    #[error("the memo holds {0} argument lists already")]
    Full(usize),
    #[error("QEMU printed more than {0} bytes")]
    TooLarge(usize),
    #[error("QEMU was killed by signal {0}")]
    Signaled(i32),
    #[error(transparent)]
    Exec(Arc<ExecError>),
    #[error("the recording stopped (shutting down)")]
    Stopped,
}

/// How an answer was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Replayed (or shared from a recording another request started).
    Memo,
    /// This request's recording: one exec.
    Recorded,
}

type Outcome = Option<Result<Arc<Answer>, MemoError>>;

#[derive(Default)]
struct Inner {
    answers: HashMap<QueryKey, Arc<Answer>>,
    /// Recordings in flight; waiters watch for the outcome.
    recording: HashMap<QueryKey, watch::Receiver<Outcome>>,
}

/// Called after each new answer (to persist the memo); gets the memo.
pub type OnChange = Box<dyn Fn(&Memo) + Send + Sync>;

pub struct Memo {
    inner: Mutex<Inner>,
    limits: Limits,
    on_change: OnChange,
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("answers", &self.len())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Memo {
    /// A memo holding `answers` (read back from disk, or none).
    pub fn new(limits: Limits, answers: Vec<(QueryKey, Answer)>, on_change: OnChange) -> Memo {
        let answers = answers
            .into_iter()
            .take(limits.max_queries)
            .map(|(k, a)| (k, Arc::new(a)))
            .collect();
        Memo {
            inner: Mutex::new(Inner {
                answers,
                recording: HashMap::new(),
            }),
            limits,
            on_change,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Every answer, sorted by query (for the memo's file).
    pub fn snapshot(&self) -> Vec<(QueryKey, Arc<Answer>)> {
        let mut v: Vec<(QueryKey, Arc<Answer>)> = self
            .lock()
            .answers
            .iter()
            .map(|(k, a)| (k.clone(), Arc::clone(a)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The answer to `key`: from the memo, or from one recording shared by
    /// every concurrent caller (`record` runs QEMU; it is only called when
    /// nothing is recorded or recording yet, and there is room).
    pub async fn answer<F, Fut>(
        self: &Arc<Self>,
        key: QueryKey,
        record: F,
    ) -> Result<(Arc<Answer>, Source), MemoError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Captured, ExecError>> + Send + 'static,
    {
        let (mut rx, source) = {
            let mut inner = self.lock();
            if let Some(a) = inner.answers.get(&key) {
                return Ok((Arc::clone(a), Source::Memo));
            }
            match inner.recording.get(&key) {
                Some(rx) => (rx.clone(), Source::Memo),
                None => {
                    let held = inner.answers.len() + inner.recording.len();
                    if held >= self.limits.max_queries {
                        return Err(MemoError::Full(self.limits.max_queries));
                    }
                    let (tx, rx) = watch::channel(None);
                    inner.recording.insert(key.clone(), rx.clone());
                    drop(inner);
                    let memo = Arc::clone(self);
                    let recording = record();
                    tokio::spawn(async move { memo.finish(key, recording.await, tx) });
                    (rx, Source::Recorded)
                }
            }
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .ok()
            .flatten()
            .unwrap_or(Err(MemoError::Stopped));
        outcome.map(|a| (a, source))
    }

    /// Stores a recording's outcome (a good answer within the bounds) and
    /// hands it to its waiters.
    fn finish(
        &self,
        key: QueryKey,
        result: Result<Captured, ExecError>,
        tx: watch::Sender<Outcome>,
    ) {
        let outcome = match result {
            Err(ExecError::OutputTooLarge { .. }) => {
                Err(MemoError::TooLarge(self.limits.max_bytes))
            }
            Err(e) => Err(MemoError::Exec(Arc::new(e))),
            Ok(c) if c.stdout.len() + c.stderr.len() > self.limits.max_bytes => {
                Err(MemoError::TooLarge(self.limits.max_bytes))
            }
            Ok(Captured {
                exit: Exit::Signal(s),
                ..
            }) => Err(MemoError::Signaled(s)),
            Ok(Captured {
                stdout,
                stderr,
                exit: Exit::Code(exit_code),
                duration,
            }) => Ok(Arc::new(Answer::new(
                stdout,
                stderr,
                exit_code,
                duration.as_secs_f64(),
            ))),
        };
        {
            let mut inner = self.lock();
            inner.recording.remove(&key);
            if let Ok(a) = &outcome {
                inner.answers.insert(key, Arc::clone(a));
            }
        }
        if outcome.is_ok() {
            (self.on_change)(self);
        }
        tx.send_replace(Some(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn key(args: &str) -> QueryKey {
        QueryKey {
            argv0: "qemu-system-x86_64".into(),
            args: args.split_whitespace().map(str::to_owned).collect(),
        }
    }

    fn memo(max_queries: usize, max_bytes: usize) -> (Arc<Memo>, Arc<AtomicUsize>) {
        let saves = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&saves);
        let m = Memo::new(
            Limits {
                max_queries,
                max_bytes,
            },
            Vec::new(),
            Box::new(move |_| {
                s.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (Arc::new(m), saves)
    }

    /// A recording that prints `out`, counted in `execs`, after `delay`.
    fn qemu(
        out: &'static str,
        code: i32,
        execs: &Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl Future<Output = Result<Captured, ExecError>> + Send + 'static {
        let execs = Arc::clone(execs);
        async move {
            execs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            Ok(Captured {
                stdout: out.as_bytes().to_vec(),
                stderr: b"warning\n".to_vec(),
                exit: Exit::Code(code),
                duration: Duration::from_millis(20),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn two_hundred_concurrent_first_requests_mean_one_exec() {
        let (m, saves) = memo(64, 1 << 20);
        let execs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (m, execs) = (Arc::clone(&m), Arc::clone(&execs));
            tasks.push(tokio::spawn(async move {
                m.answer(key("-cpu help"), || {
                    qemu("x86\n", 0, &execs, Duration::from_millis(50))
                })
                .await
            }));
        }
        let mut recorded = 0;
        for t in tasks {
            let (a, source) = t.await.unwrap().unwrap();
            assert_eq!(a.stdout, b"x86\n");
            assert_eq!(a.stderr, b"warning\n");
            recorded += usize::from(source == Source::Recorded);
        }
        assert_eq!(execs.load(Ordering::SeqCst), 1);
        assert_eq!(recorded, 1);
        assert_eq!(saves.load(Ordering::SeqCst), 1);
        // Then from the memo, with no exec.
        let (_, source) = m
            .answer(key("-cpu help"), || qemu("?", 0, &execs, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(source, Source::Memo);
        assert_eq!(execs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_argument_lists_and_the_answer_size_are_bounded() {
        let (m, _) = memo(2, 20);
        let execs = Arc::new(AtomicUsize::new(0));
        for q in ["-cpu help", "-device help"] {
            m.answer(key(q), || qemu("ok\n", 0, &execs, Duration::ZERO))
                .await
                .unwrap();
        }
        let e = m
            .answer(key("-M help"), || qemu("ok\n", 0, &execs, Duration::ZERO))
            .await
            .unwrap_err();
        assert!(matches!(e, MemoError::Full(2)), "{e}");
        assert_eq!(execs.load(Ordering::SeqCst), 2, "no exec past the bound");
        let (m, _) = memo(64, 20);
        let e = m
            .answer(key("-device help"), || {
                qemu("far more than ten bytes\n", 0, &execs, Duration::ZERO)
            })
            .await
            .unwrap_err();
        assert!(matches!(e, MemoError::TooLarge(20)), "{e}");
        assert!(m.is_empty(), "an answer over the bound is not kept");
    }

    #[tokio::test]
    async fn a_failed_recording_is_not_kept_and_the_next_request_records_again() {
        let (m, _) = memo(64, 1 << 20);
        let e = m
            .answer(key("-version"), || async {
                Err(ExecError::Timeout {
                    path: "/q".into(),
                    after: Duration::from_secs(1),
                    stderr: String::new(),
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(e, MemoError::Exec(_)), "{e}");
        assert!(m.is_empty());
        let execs = Arc::new(AtomicUsize::new(0));
        let (a, source) = m
            .answer(key("-version"), || {
                qemu("QEMU 10\n", 0, &execs, Duration::ZERO)
            })
            .await
            .unwrap();
        assert_eq!((a.exit_code, source), (0, Source::Recorded));
    }
}
