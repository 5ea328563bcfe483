//! The agent's lifecycle, told to a service manager over `$NOTIFY_SOCKET`
//! (systemd's `Type=notify`, through the `sd-notify` crate):
//!
//! - `READY=1` once the start-up pass is over and its cache files are
//!   written (when `/readyz` first answers 200), so units ordered after
//!   qcapsd find warm answers;
//! - `STATUS=` a one-line summary (`3 emulators: 3 fresh, 0 failed`), sent
//!   when it changes;
//! - `RELOADING=1` with `MONOTONIC_USEC`, then `READY=1`, around a reload;
//! - `STOPPING=1` when shutdown begins;
//! - `WATCHDOG=1` while `WatchdogSec=` is set, and only after the agent's
//!   own `/healthz` answered through one of its listeners: a wedged agent
//!   stops petting the watchdog and is restarted. A long probe does not
//!   stop it (answers never wait on probes).
//!
//! Without `$NOTIFY_SOCKET` nothing is sent and nothing runs.

use crate::api::client::{self, Target};
use crate::api::routes::Id;
use sd_notify::NotifyState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sends lifecycle notifications, if a service manager listens.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// Enabled when `$NOTIFY_SOCKET` is set.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                tracing::warn!(error = %e, "cannot notify the service manager");
            }
        }
    }

    /// Start-up or a reload is over.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// A reload begins (systemd 253 and later require the monotonic time
    /// with it).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The watchdog interval the service manager asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pets the watchdog every half `timeout`, each time only after `GET
/// /healthz` to `target` (the agent's own listener) answered within a
/// quarter of it. Runs until `shutdown`.
pub async fn watchdog(
    notifier: Notifier,
    target: Target,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let period = timeout / 2;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match tokio::time::timeout(period / 2, client::get(&target, &Id::Healthz.path(&[]))).await {
            Ok(Ok(_)) => notifier.watchdog(),
            Ok(Err(e)) => tracing::warn!(error = %e, "self-check failed; not petting the watchdog"),
            Err(_) => tracing::warn!("self-check timed out; not petting the watchdog"),
        }
    }
}
