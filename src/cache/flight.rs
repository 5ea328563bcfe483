//! A refresh in flight: the stamp it runs under, why it runs, and the
//! channel its outcome is published on. Lookups that need it wait on the
//! channel (single flight); the refresh itself is a task of the cache, so a
//! caller that goes away does not cancel it for the others.
//!
//! The outcome is published as soon as the data is in memory; `settled`
//! follows once the data is on disk (two fsyncs later), for the revalidator
//! and start-up, which promise written cache files.

use super::LookupError;
use std::sync::Arc;
use tokio::sync::watch;

/// What a refresh ends with.
pub(crate) type Outcome<D, E> = Result<Arc<D>, LookupError<E>>;

/// The published progress of one refresh.
pub(crate) struct Progress<D, E> {
    pub outcome: Option<Outcome<D, E>>,
    /// Outcome published and, on success, the cache file written (or its
    /// write failed and is left to the revalidator).
    pub settled: bool,
}

impl<D, E> Default for Progress<D, E> {
    fn default() -> Self {
        Progress {
            outcome: None,
            settled: false,
        }
    }
}

pub(crate) type FlightRx<D, E> = watch::Receiver<Progress<D, E>>;
pub(crate) type FlightTx<D, E> = watch::Sender<Progress<D, E>>;

/// The refresh of one key that is running now.
pub(crate) struct Flight<D, S, E> {
    /// Tells this flight from a later one of the same key (a change while
    /// it runs starts a new flight that supersedes it).
    pub id: u64,
    /// The source's stamp when it started: only lookups that see the same
    /// stamp may join it.
    pub stamp: S,
    pub reason: &'static str,
    pub rx: FlightRx<D, E>,
}

impl<D, S, E> Flight<D, S, E> {
    pub fn new(id: u64, stamp: S, reason: &'static str) -> (Self, FlightTx<D, E>) {
        let (tx, rx) = watch::channel(Progress::default());
        (
            Flight {
                id,
                stamp,
                reason,
                rx,
            },
            tx,
        )
    }

    #[cfg(test)]
    pub fn test(stamp: S) -> Self {
        Flight::new(0, stamp, "test").0
    }
}

/// Waits for a flight's outcome.
pub(crate) async fn outcome<D, E>(rx: &mut FlightRx<D, E>) -> Outcome<D, E> {
    match rx.wait_for(|p| p.outcome.is_some()).await {
        Ok(p) => p.outcome.clone().unwrap_or(Err(LookupError::Cancelled)),
        Err(_) => Err(LookupError::Cancelled),
    }
}

/// Waits until a flight has settled (outcome published, file written).
pub(crate) async fn settled<D, E>(rx: &mut FlightRx<D, E>) {
    let _ = rx.wait_for(|p| p.settled).await;
}
