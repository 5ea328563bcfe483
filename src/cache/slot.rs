//! One key's state ([`Slot`]) and the one decision the cache makes about it
//! ([`Slot::classify`]): given what the source looks like now, is the data
//! valid, is there a refresh to join, is a failed source still backing off,
//! or is a new refresh needed (and why)? Both the lookup path and the
//! revalidator call it, so they always agree on what a change means and
//! which counters it moves.

use super::flight::{Flight, FlightRx};
use super::handler::{Absent, Reason};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// The last refresh failed.
#[derive(Debug)]
pub(crate) struct Failure<S, E> {
    pub error: Arc<E>,
    /// The stamp the failing refresh ran under: while the source still looks
    /// like this, nothing retries before `retry_at` (never, for a settled
    /// failure: `None`).
    pub stamp: S,
    pub attempts: u32,
    pub retry_at: Option<Instant>,
    pub at: SystemTime,
}

/// The state of one key. Guarded by the cache's slot lock.
pub(crate) struct Slot<D, S, E> {
    /// The last good data (stale when it does not match the source).
    pub data: Option<Arc<D>>,
    /// The refresh in flight, if any.
    pub flight: Option<Flight<D, S, E>>,
    pub failure: Option<Failure<S, E>>,
    /// Set while the source has no stamp (gone or unreadable).
    pub absent: Option<Absent>,
    /// The last write of `data` to disk failed; the revalidator retries it.
    pub unsaved: bool,
    /// When the last forced refresh started (rate limit of `Cache::force`).
    pub last_forced: Option<Instant>,
    /// The progress of the latest refresh, kept after it leaves `flight`
    /// (once its data is in memory) until it has written its file.
    pub latest: Option<FlightRx<D, E>>,
    /// Held across each write of this key's file, so writes happen one at
    /// a time and each writes the data current when it starts: the newest
    /// data is always the last written.
    pub writing: Arc<tokio::sync::Mutex<()>>,
}

/// What [`Slot::classify`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The source has no stamp. `newly`: it had one (or another kind of
    /// absence) before, so this is an invalidation.
    Absent { newly: bool },
    /// The data matches the source.
    Hit,
    /// A refresh started under the same stamp is in flight: wait for it.
    Join,
    /// The last refresh under this very stamp failed and its backoff runs.
    BackingOff,
    /// A refresh is needed. `invalidated`: the slot knew the source under
    /// another stamp (data, a failure or a flight), so this is a change.
    Refresh {
        reason: &'static str,
        invalidated: bool,
    },
}

impl<D, S: PartialEq, E> Slot<D, S, E> {
    pub fn new() -> Self {
        Slot {
            data: None,
            flight: None,
            failure: None,
            absent: None,
            unsaved: false,
            last_forced: None,
            latest: None,
            writing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The one decision about this slot, given the source's stamp `now`,
    /// the time, and whether a refresh is demanded (`forced`: valid data
    /// and a running backoff do not satisfy it; a refresh already running
    /// under the same stamp does). Pure: it changes nothing. `stamp_of`
    /// gives the stamp data was made under, `why_changed` a reason for the
    /// difference of two stamps.
    pub fn classify(
        &self,
        now: Result<&S, &Absent>,
        at: Instant,
        forced: bool,
        stamp_of: impl Fn(&D) -> &S,
        why_changed: impl Fn(&S, &S) -> &'static str,
    ) -> Verdict {
        let now = match now {
            Err(absent) => {
                return Verdict::Absent {
                    newly: self.absent.as_ref() != Some(absent),
                };
            }
            Ok(s) => s,
        };
        if !forced && self.data.as_ref().is_some_and(|d| stamp_of(d) == now) {
            return Verdict::Hit;
        }
        if self.flight.as_ref().is_some_and(|f| &f.stamp == now) {
            return Verdict::Join;
        }
        if let Some(f) = &self.failure {
            if !forced && &f.stamp == now && f.retry_at.is_none_or(|r| at < r) {
                return Verdict::BackingOff;
            }
        }
        if self.absent.is_some() {
            // The disappearance was the invalidation; its return is not one.
            return Verdict::Refresh {
                reason: Reason::Reappeared.as_str(),
                invalidated: false,
            };
        }
        // The newest stamp the slot knows the source by.
        let known = self
            .flight
            .as_ref()
            .map(|f| &f.stamp)
            .or(self.failure.as_ref().map(|f| &f.stamp))
            .or(self.data.as_deref().map(&stamp_of));
        match known {
            None => Verdict::Refresh {
                reason: Reason::Cold.as_str(),
                invalidated: false,
            },
            Some(k) if k == now => Verdict::Refresh {
                reason: Reason::Retry.as_str(),
                invalidated: false,
            },
            Some(k) => Verdict::Refresh {
                reason: why_changed(k, now),
                invalidated: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::flight::Flight;
    use super::*;
    use std::time::Duration;

    type TestSlot = Slot<u64, u64, String>;

    /// A failure's "seconds until its retry" for a settled failure.
    const SETTLED: i64 = i64::MAX;

    /// A slot with data made under `data`, a failure under `failed`
    /// (stamp, seconds until its retry, negative when past, [`SETTLED`] for
    /// a settled failure that never retries), a flight under
    /// `flying`, and `absent`.
    fn slot(
        data: Option<u64>,
        failed: Option<(u64, i64)>,
        flying: Option<u64>,
        absent: Option<Absent>,
        base: Instant,
    ) -> TestSlot {
        let failure = failed.map(|(stamp, retry_in)| {
            let d = Duration::from_secs(retry_in.unsigned_abs());
            Failure {
                error: Arc::new("boom".to_owned()),
                stamp,
                attempts: 1,
                retry_at: match retry_in {
                    SETTLED => None,
                    0.. => Some(base + d),
                    _ => Some(base - d),
                },
                at: SystemTime::UNIX_EPOCH,
            }
        });
        Slot {
            data: data.map(Arc::new),
            failure,
            flight: flying.map(Flight::test),
            absent,
            ..Slot::new()
        }
    }

    fn why(old: &u64, new: &u64) -> &'static str {
        if old / 10 != new / 10 {
            "binary_changed"
        } else {
            "modules_changed"
        }
    }

    fn classify(slot: &TestSlot, now: Result<u64, Absent>, at: Instant) -> Verdict {
        slot.classify(now.as_ref(), at, false, |d| d, why)
    }

    fn forced(slot: &TestSlot, now: Result<u64, Absent>, at: Instant) -> Verdict {
        slot.classify(now.as_ref(), at, true, |d| d, why)
    }

    /// Every situation a slot can be in, with the verdict both paths must
    /// reach. Stamps: tens differ by "binary", units by "modules".
    #[tokio::test(start_paused = true)]
    async fn the_decision_table() {
        let t = Instant::now();
        let refresh = |reason, invalidated| Verdict::Refresh {
            reason,
            invalidated,
        };
        let gone = Some(Absent::Missing);
        let missing = || Err(Absent::Missing);
        let unreadable = Err(Absent::Inaccessible(Arc::from("permission denied")));
        let s = |d, f, fl, a| slot(d, f, fl, a, t);
        #[rustfmt::skip]
        let cases: Vec<(&str, TestSlot, Result<u64, Absent>, Verdict)> = vec![
            ("never seen", s(None, None, None, None), Ok(10), refresh("cold", false)),
            ("valid data", s(Some(10), None, None, None), Ok(10), Verdict::Hit),
            ("binary replaced", s(Some(10), None, None, None), Ok(20), refresh("binary_changed", true)),
            ("module directory changed", s(Some(10), None, None, None), Ok(11), refresh("modules_changed", true)),
            ("valid data with an old failure recorded is a hit",
             s(Some(10), Some((20, 60)), None, None), Ok(10), Verdict::Hit),
            ("valid data, a forced refresh under the same stamp failed",
             s(Some(10), Some((10, 60)), None, None), Ok(10), Verdict::Hit),
            ("failed under this stamp, backing off", s(Some(10), Some((20, 60)), None, None), Ok(20), Verdict::BackingOff),
            ("failed under this stamp, no data, backing off", s(None, Some((20, 60)), None, None), Ok(20), Verdict::BackingOff),
            ("failed under this stamp, backoff over", s(Some(10), Some((20, -1)), None, None), Ok(20), refresh("retry", false)),
            ("settled failure under this stamp: no retry, however long after",
             s(None, Some((20, SETTLED)), None, None), Ok(20), Verdict::BackingOff),
            ("settled failure, then the source changed", s(None, Some((20, SETTLED)), None, None), Ok(21), refresh("modules_changed", true)),
            ("failed, then the source changed again",
             s(Some(10), Some((20, 60)), None, None), Ok(30), refresh("binary_changed", true)),
            ("failed before any data, then changed", s(None, Some((20, 60)), None, None), Ok(21), refresh("modules_changed", true)),
            ("refresh in flight under the same stamp", s(Some(10), None, Some(20), None), Ok(20), Verdict::Join),
            ("refresh in flight, but the source changed since it started",
             s(Some(10), None, Some(20), None), Ok(30), refresh("binary_changed", true)),
            ("forced refresh in flight while the data is valid", s(Some(10), None, Some(10), None), Ok(10), Verdict::Hit),
            ("gone", s(Some(10), None, None, None), missing(), Verdict::Absent { newly: true }),
            ("still gone", s(Some(10), None, None, gone.clone()), missing(), Verdict::Absent { newly: false }),
            ("gone, then unreadable", s(None, None, None, gone.clone()), unreadable, Verdict::Absent { newly: true }),
            ("back, replaced", s(Some(10), None, None, gone.clone()), Ok(20), refresh("reappeared", false)),
            ("back before it was ever probed", s(None, None, None, gone.clone()), Ok(20), refresh("reappeared", false)),
            ("back unchanged", s(Some(10), None, None, gone.clone()), Ok(10), Verdict::Hit),
        ];
        for (what, slot, now, want) in cases {
            assert_eq!(classify(&slot, now, t), want, "{what}");
        }
    }

    /// A forced refresh (`POST …/revalidate`): only absence and a refresh
    /// already running under the same stamp stop one from starting.
    #[tokio::test(start_paused = true)]
    async fn the_decision_table_when_forced() {
        let t = Instant::now();
        let refresh = |reason, invalidated| Verdict::Refresh {
            reason,
            invalidated,
        };
        let s = |d, f, fl, a| slot(d, f, fl, a, t);
        #[rustfmt::skip]
        let cases: Vec<(&str, TestSlot, Result<u64, Absent>, Verdict)> = vec![
            ("valid data", s(Some(10), None, None, None), Ok(10), refresh("retry", false)),
            ("never seen", s(None, None, None, None), Ok(10), refresh("cold", false)),
            ("backing off", s(None, Some((20, 60)), None, None), Ok(20), refresh("retry", false)),
            ("settled failure", s(None, Some((20, SETTLED)), None, None), Ok(20), refresh("retry", false)),
            ("changed", s(Some(10), None, None, None), Ok(20), refresh("binary_changed", true)),
            ("forced refresh in flight while the data is valid", s(Some(10), None, Some(10), None), Ok(10), Verdict::Join),
            ("refresh in flight under the same stamp", s(Some(10), None, Some(20), None), Ok(20), Verdict::Join),
            ("gone", s(Some(10), None, None, None), Err(Absent::Missing), Verdict::Absent { newly: true }),
        ];
        for (what, slot, now, want) in cases {
            assert_eq!(forced(&slot, now, t), want, "{what}");
        }
    }
}
