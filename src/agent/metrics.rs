//! Every Prometheus metric of qcapsd, registered in one place
//! ([`Metrics::register`]); components get an `Arc<Metrics>` and call the
//! `record_*` methods. Label values come only from the config (emulator
//! names and paths) or from small fixed sets (reasons, kinds, routes,
//! codes); never machine types, CPU models or devices.
//!
//! Cardinality and alerting: an emulator's series are created at zero when
//! it is configured ([`Metrics::add_emulator`]) and deleted when it is
//! removed, so a fleet sees every emulator from its first scrape. Series
//! labelled by a reason out of a larger set (misses, invalidations) are
//! born at their first event to stay within budget. Alerts never depend on
//! seeing a counter's first increment: a probe can fail before the first
//! scrape, and `increase()` cannot see a series born at 1. They use the
//! `*_timestamp_seconds` gauges instead, whose value says when the last
//! such event happened whenever it is first scraped.

use crate::agent::memo::{Answer, MemoError, Source};
use crate::qemu::FailureReason;
use crate::qemu::caps::Capabilities;
use crate::verdicts::check::Confirmation;
use crate::verdicts::vms::VmVerdict;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets of `qcapsd_exec_duration_seconds`: 5 ms to 60 s.
pub const EXEC_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of `qcapsd_http_request_duration_seconds`: few, as every route ×
/// code pair has them all (series budget). They tell an answer from memory
/// (under 0.5 ms) from one that waited on a probe (tens of ms and more).
pub const HTTP_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.005, 0.05, 1.0];
crate::support::labelled! {
    /// The parts of `qcapsd_capabilities`: how much of each an emulator
    /// offers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub enum CapabilityPart {
        Machines = "machines",
        CpuModels = "cpu_models",
        /// CPU models QEMU reports usable under the document's accelerator.
        CpuModelsUsable = "cpu_models_usable",
        Devices = "devices",
        Commands = "commands",
    }
}

impl CapabilityPart {
    /// How many of this part `caps` has.
    pub fn count(self, caps: &Capabilities) -> usize {
        match self {
            CapabilityPart::Machines => caps.machines.len(),
            CapabilityPart::CpuModels => caps.cpu_models.len(),
            CapabilityPart::CpuModelsUsable => caps
                .cpu_models
                .iter()
                .filter(|c| c.usable == Some(true))
                .count(),
            CapabilityPart::Devices => caps.devices.len(),
            CapabilityPart::Commands => caps.commands.len(),
        }
    }
}

crate::support::labelled! {
    /// What became of a shim's request: the `result` of
    /// `qcapsd_shim_requests_total`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    pub enum ShimResult {
        /// Answered from the memo: no exec.
        Answered = "answered",
        /// Recorded: the first request for an argument list, one exec.
        Recorded = "recorded",
        /// The shim ran QEMU: not a pure query, or past the memo's bounds.
        RanQemu = "ran_qemu",
        /// The agent did not answer; the shim ran QEMU.
        FellBack = "fell_back",
    }
}

/// The results of `qcapsd_verifications_total`.
const VERIFICATION_RESULTS: [&str; 3] = ["started", "refused", "answered"];

/// The reasons of `qcapsd_probe_failures_total`, all created at zero.
fn failure_reasons() -> impl Iterator<Item = &'static str> {
    FailureReason::ALL
        .iter()
        .filter(|r| r.counted())
        .map(|r| r.as_str())
}

pub struct Metrics {
    pub registry: Registry,
    probes: IntCounterVec,
    probe_failures: IntCounterVec,
    exec_duration: HistogramVec,
    lookups: IntCounterVec,
    hits: IntCounterVec,
    misses: IntCounterVec,
    hit_ratio: Gauge,
    invalidations: IntCounterVec,
    seconds_saved: prometheus::CounterVec,
    pub revalidations: IntCounter,
    pub emulator_info: IntGaugeVec,
    pub emulator_up: IntGaugeVec,
    last_success: GaugeVec,
    last_failure: GaugeVec,
    last_miss: GaugeVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_waiting: IntGauge,
    shim_requests: IntCounterVec,
    /// Running VMs by emulator and verdict (set after each pass).
    vms: IntGaugeVec,
    /// Processes that may be VMs the agent could not read.
    pub vms_unreadable: IntGauge,
    verifications: IntCounterVec,
    reloads: IntCounterVec,
    /// Times the emulator set resolved to nothing (start, reloads).
    pub discovery_empty: IntCounter,
    /// Whether the cache directory took the last write.
    pub cache_dir_writable: IntGauge,
    reload_ok: IntGauge,
    capability_changes: IntCounterVec,
    pub capabilities: IntGaugeVec,
    /// Node labels in the last feature file written (`nfd_features_file`).
    node_labels: IntGaugeVec,
    last_breaking: GaugeVec,
    /// Totals behind the hit ratio (all emulators, since start).
    total_lookups: AtomicU64,
    total_hits: AtomicU64,
    /// (emulator, reason) pairs of the series born at their first event,
    /// so a removed emulator's series can all be deleted. Touched only on
    /// misses and invalidations, never on a hit.
    born: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Each configured emulator's hit series, resolved once (a hit touches
    /// three series; looking each up by its labels costs a hash and a lock).
    hit_series: std::sync::RwLock<HashMap<String, HitSeries>>,
}

/// The series a cache hit moves.
#[derive(Clone)]
struct HitSeries {
    lookups: IntCounter,
    hits: IntCounter,
    saved: prometheus::Counter,
}

/// The status codes whose request series are resolved once per route
/// ([`HttpSeries`]); any other code is looked up by its labels.
const HTTP_CODES: [u16; 12] = [200, 202, 304, 400, 404, 405, 408, 413, 429, 431, 500, 503];

/// The request series of a router: for each route template and common
/// status code, the counter and histogram, resolved at the first such
/// request and then reused. Read without a lock.
pub struct HttpSeries {
    requests: IntCounterVec,
    duration: HistogramVec,
    routes: HashMap<&'static str, RouteSeries>,
    unmatched: RouteSeries,
}

struct RouteSeries {
    route: &'static str,
    by_code: [std::sync::OnceLock<(IntCounter, prometheus::Histogram)>; HTTP_CODES.len()],
}

impl RouteSeries {
    fn new(route: &'static str) -> Self {
        RouteSeries {
            route,
            by_code: std::array::from_fn(|_| std::sync::OnceLock::new()),
        }
    }
}

impl HttpSeries {
    /// Counts one request to `route` (its template; `None` when no route
    /// matched) answered with `code` after `took`.
    pub fn observe(&self, route: Option<&str>, code: u16, took: Duration) {
        let series = route.map_or(Some(&self.unmatched), |r| self.routes.get(r));
        let slot = series.and_then(|s| {
            let i = HTTP_CODES.iter().position(|&c| c == code)?;
            Some(s.by_code[i].get_or_init(|| {
                let code = code.to_string();
                let labels = [s.route, code.as_str()];
                (
                    self.requests.with_label_values(&labels),
                    self.duration.with_label_values(&labels),
                )
            }))
        });
        match slot {
            Some((n, d)) => {
                n.inc();
                d.observe(took.as_secs_f64());
            }
            None => {
                let code = code.to_string();
                let labels = [route.unwrap_or("unmatched"), code.as_str()];
                self.requests.with_label_values(&labels).inc();
                self.duration
                    .with_label_values(&labels)
                    .observe(took.as_secs_f64());
            }
        }
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: T,
) -> Result<T, prometheus::Error> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Creates and registers every metric (and the process collector).
    pub fn register() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntCounterVec::new(opts(name, help), labels)?)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(r, GaugeVec::new(opts(name, help), labels)?)
        };
        let build_info = reg(
            r,
            IntGaugeVec::new(
                opts(
                    "qcapsd_build_info",
                    "qcapsd's version and revision (always 1).",
                ),
                &["version", "revision"],
            )?,
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("QCAPSD_REVISION").unwrap_or("unknown"),
            ])
            .set(1);
        let m = Metrics {
            probes: counter(
                "qcapsd_probes_total",
                "QEMU probes started (one exec each). Created at 0 per configured emulator.",
                &["emulator"],
            )?,
            probe_failures: counter(
                "qcapsd_probe_failures_total",
                "Failed probes by reason; every reason created at 0 per emulator. Alerts use qcapsd_last_probe_failure_timestamp_seconds, which also shows a failure that happened before the first scrape.",
                &["emulator", "reason"],
            )?,
            exec_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "qcapsd_exec_duration_seconds",
                        "Wall time of each QEMU process started by a probe, spawn to reaped.",
                    )
                    .buckets(EXEC_BUCKETS.to_vec()),
                    &["emulator"],
                )?,
            )?,
            lookups: counter(
                "qcapsd_cache_lookups_total",
                "Cache lookups. Created at 0 per emulator.",
                &["emulator"],
            )?,
            hits: counter(
                "qcapsd_cache_hits_total",
                "Lookups answered from a valid entry (an exec avoided). Created at 0 per emulator.",
                &["emulator"],
            )?,
            misses: counter(
                "qcapsd_cache_misses_total",
                "Lookups that needed a probe, waited on one or found no valid entry, by reason. Each reason's series is born at its first miss (12 reasons per emulator would exceed the series budget); alerts use qcapsd_last_cache_miss_timestamp_seconds.",
                &["emulator", "reason"],
            )?,
            hit_ratio: reg(
                r,
                Gauge::with_opts(opts(
                    "qcapsd_cache_hit_ratio",
                    "Cache hits over lookups since start.",
                ))?,
            )?,
            invalidations: counter(
                "qcapsd_cache_invalidations_total",
                "Entries found invalid, by reason; each reason's series is born at its first invalidation (series budget).",
                &["emulator", "reason"],
            )?,
            seconds_saved: reg(
                r,
                prometheus::CounterVec::new(
                    opts(
                        "qcapsd_exec_seconds_saved_total",
                        "Exec time avoided: each hit adds the emulator's last probe exec time.",
                    ),
                    &["emulator"],
                )?,
            )?,
            revalidations: reg(
                r,
                IntCounter::with_opts(opts(
                    "qcapsd_revalidations_total",
                    "Revalidation passes over all emulators.",
                ))?,
            )?,
            emulator_info: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "qcapsd_emulator_info",
                        "Configured emulators with what their last probe found (always 1).",
                    ),
                    &["emulator", "path", "arch", "qemu_version"],
                )?,
            )?,
            emulator_up: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "qcapsd_emulator_up",
                        "1 while the emulator has valid capabilities, 0 when pending, failed or missing.",
                    ),
                    &["emulator"],
                )?,
            )?,
            last_success: gauge(
                "qcapsd_last_probe_success_timestamp_seconds",
                "Unix time of the last successful probe (0: none yet).",
                &["emulator"],
            )?,
            last_failure: gauge(
                "qcapsd_last_probe_failure_timestamp_seconds",
                "Unix time of the last failed probe (0: none). A level an alert can test from its first scrape, unlike the first increment of a counter.",
                &["emulator"],
            )?,
            last_miss: gauge(
                "qcapsd_last_cache_miss_timestamp_seconds",
                "Unix time of the last lookup that missed because the emulator changed (every miss reason but cold, failed, missing and inaccessible; 0: none). What QcapsdCacheMissesSustained tests.",
                &["emulator"],
            )?,
            http_requests: counter(
                "qcapsd_http_requests_total",
                "HTTP requests by route and status code.",
                &["route", "code"],
            )?,
            http_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "qcapsd_http_request_duration_seconds",
                        "HTTP request latency by route and status code.",
                    )
                    .buckets(HTTP_BUCKETS.to_vec()),
                    &["route", "code"],
                )?,
            )?,
            http_waiting: reg(
                r,
                IntGauge::with_opts(opts(
                    "qcapsd_http_waiting_requests",
                    "Long-polls (?wait=) held now, waiting for an answer to change.",
                ))?,
            )?,
            discovery_empty: reg(
                r,
                IntCounter::with_opts(opts(
                    "qcapsd_discovery_empty_total",
                    "Times the emulator set came out empty, at start or on a reload: nothing to serve (logged with where discovery looked).",
                ))?,
            )?,
            cache_dir_writable: reg(
                r,
                IntGauge::with_opts(opts(
                    "qcapsd_cache_dir_writable",
                    "1 if the cache directory took the last write (a cache file, or the check at start), 0 if not: the agent then serves from memory, and a restart costs a probe per emulator. What QcapsdCacheDirNotWritable tests.",
                ))?,
            )?,
            shim_requests: counter(
                "qcapsd_shim_requests_total",
                "Calls of an emulator through its shim, by result: answered (from the memo, no exec), recorded (first call of an argument list: one exec), ran_qemu (the shim ran QEMU: not a pure query, or past the memo's bounds), fell_back (the agent did not answer; the shim ran QEMU). Created at 0 per emulator.",
                &["emulator", "result"],
            )?,
            vms: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "qcapsd_vms",
                        "Running VMs (QEMU processes of the emulator) by verdict on a restart with the binary installed now: ok, would_fail, binary_replaced (would start; runs a replaced binary), unknown. Set after each revalidation pass; every verdict created at 0 per emulator.",
                    ),
                    &["emulator", "verdict"],
                )?,
            )?,
            vms_unreadable: reg(
                r,
                IntGauge::with_opts(opts(
                    "qcapsd_vms_unreadable",
                    "Processes named like an emulator whose executable the agent may not read (another user's VMs: they need root or CAP_SYS_PTRACE to be seen), at the last listing.",
                ))?,
            )?,
            verifications: counter(
                "qcapsd_verifications_total",
                "Verdicts QEMU was asked to confirm (verify), by result: started or refused (QEMU's answer, one or more execs), answered (from the memo, no exec). Each series is born at its first verification.",
                &["emulator", "result"],
            )?,
            reloads: counter(
                "qcapsd_config_reloads_total",
                "Config reloads (SIGHUP) by result: success or failure (a refused config keeps the running one).",
                &["result"],
            )?,
            reload_ok: reg(
                r,
                IntGauge::with_opts(opts(
                    "qcapsd_config_last_reload_successful",
                    "1 if the last config reload (or the start) succeeded, 0 if it was refused.",
                ))?,
            )?,
            capability_changes: counter(
                "qcapsd_capability_changes_total",
                "Items of capability changes found by re-probes, by kind (machine_removed, device_removed, cpu_model_became_unusable, ...; a fixed set): 2 devices removed add 2. Each kind's series is born at its first change (25 kinds per emulator would exceed the series budget); the alert uses qcapsd_last_breaking_change_timestamp_seconds.",
                &["emulator", "kind"],
            )?,
            node_labels: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "qcapsd_node_labels",
                        "Node labels in the last feature file written for node-feature-discovery (nfd_features_file), by result: written, or skipped (a name or value breaking the label rules, or past the 64 KiB file limit). Absent without nfd_features_file.",
                    ),
                    &["result"],
                )?,
            )?,
            capabilities: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "qcapsd_capabilities",
                        "What the emulator offers, by part: machines, cpu_models, cpu_models_usable, devices, commands.",
                    ),
                    &["emulator", "part"],
                )?,
            )?,
            last_breaking: gauge(
                "qcapsd_last_breaking_change_timestamp_seconds",
                "Unix time of the last breaking capability change (something VMs may use went away; 0: none). What QcapsdCapabilitiesLost tests; restored from the history at start.",
                &["emulator"],
            )?,
            total_lookups: AtomicU64::new(0),
            total_hits: AtomicU64::new(0),
            born: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            hit_series: std::sync::RwLock::new(HashMap::new()),
            registry,
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        m.reload_ok.set(1);
        m.cache_dir_writable.set(1);
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// The request series of a router serving `routes` (templates).
    pub fn http_series(&self, routes: &[&'static str]) -> HttpSeries {
        HttpSeries {
            requests: self.http_requests.clone(),
            duration: self.http_duration.clone(),
            routes: routes.iter().map(|&r| (r, RouteSeries::new(r))).collect(),
            unmatched: RouteSeries::new("unmatched"),
        }
    }

    /// Creates an emulator's series at zero.
    pub fn add_emulator(&self, e: &str) {
        let series = HitSeries {
            lookups: self.lookups.with_label_values(&[e]),
            hits: self.hits.with_label_values(&[e]),
            saved: self.seconds_saved.with_label_values(&[e]),
        };
        self.hit_series
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(e.to_owned(), series);
        self.probes.with_label_values(&[e]);
        for reason in failure_reasons() {
            self.probe_failures.with_label_values(&[e, reason]);
        }
        self.exec_duration.with_label_values(&[e]);
        self.lookups.with_label_values(&[e]);
        self.hits.with_label_values(&[e]);
        self.seconds_saved.with_label_values(&[e]);
        self.emulator_up.with_label_values(&[e]);
        for g in [
            &self.last_success,
            &self.last_failure,
            &self.last_miss,
            &self.last_breaking,
        ] {
            g.with_label_values(&[e]);
        }
        for part in CapabilityPart::ALL {
            self.capabilities.with_label_values(&[e, part.as_str()]);
        }
        for r in ShimResult::ALL {
            self.shim_requests.with_label_values(&[e, r.as_str()]);
        }
        for v in VmVerdict::ALL {
            self.vms.with_label_values(&[e, v.as_str()]);
        }
    }

    /// Forgets every series of an emulator no longer configured.
    pub fn remove_emulator(&self, e: &str) {
        self.hit_series
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(e);
        for v in [&self.probes, &self.lookups, &self.hits] {
            let _ = v.remove_label_values(&[e]);
        }
        for reason in failure_reasons() {
            let _ = self.probe_failures.remove_label_values(&[e, reason]);
        }
        let mut born = self.born.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<(String, String)> = born.iter().filter(|(x, _)| x == e).cloned().collect();
        for (x, reason) in gone {
            for v in [&self.misses, &self.invalidations, &self.capability_changes] {
                let _ = v.remove_label_values(&[&x, &reason]);
            }
            born.remove(&(x, reason));
        }
        for part in CapabilityPart::ALL {
            let _ = self.capabilities.remove_label_values(&[e, part.as_str()]);
        }
        for r in ShimResult::ALL {
            let _ = self.shim_requests.remove_label_values(&[e, r.as_str()]);
        }
        for v in VmVerdict::ALL {
            let _ = self.vms.remove_label_values(&[e, v.as_str()]);
        }
        for r in VERIFICATION_RESULTS {
            let _ = self.verifications.remove_label_values(&[e, r]);
        }
        let _ = self.exec_duration.remove_label_values(&[e]);
        let _ = self.seconds_saved.remove_label_values(&[e]);
        let _ = self.emulator_up.remove_label_values(&[e]);
        for g in [
            &self.last_success,
            &self.last_failure,
            &self.last_miss,
            &self.last_breaking,
        ] {
            let _ = g.remove_label_values(&[e]);
        }
    }

    pub fn probe_started(&self, e: &str) {
        self.probes.with_label_values(&[e]).inc();
    }

    pub fn observe_exec(&self, e: &str, took: Duration) {
        self.exec_duration
            .with_label_values(&[e])
            .observe(took.as_secs_f64());
    }

    pub fn probe_succeeded(&self, e: &str, at_unix: f64) {
        self.last_success.with_label_values(&[e]).set(at_unix);
    }

    pub fn probe_failed(&self, e: &str, reason: FailureReason, at_unix: f64) {
        self.probe_failures
            .with_label_values(&[e, reason.as_str()])
            .inc();
        self.last_failure.with_label_values(&[e]).set(at_unix);
    }

    pub fn record_hit(&self, e: &str, exec_seconds: f64) {
        let hit = |s: &HitSeries| {
            s.lookups.inc();
            s.hits.inc();
            s.saved.inc_by(exec_seconds.max(0.0));
        };
        let known = self.hit_series.read().unwrap_or_else(|p| p.into_inner());
        match known.get(e) {
            Some(s) => hit(s),
            None => {
                drop(known);
                hit(&HitSeries {
                    lookups: self.lookups.with_label_values(&[e]),
                    hits: self.hits.with_label_values(&[e]),
                    saved: self.seconds_saved.with_label_values(&[e]),
                });
            }
        }
        self.total_lookups.fetch_add(1, Ordering::Relaxed);
        self.total_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_miss(&self, e: &str, reason: &str, at_unix: f64) {
        self.lookups.with_label_values(&[e]).inc();
        self.misses.with_label_values(&[e, reason]).inc();
        self.note_born(e, reason);
        // Start-up and lookups of a failed or absent emulator are no
        // change: they do not move the last-miss timestamp.
        if !crate::cache::Reason::no_change(reason) {
            self.last_miss.with_label_values(&[e]).set(at_unix);
        }
        self.total_lookups.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_invalidation(&self, e: &str, reason: &str) {
        self.invalidations.with_label_values(&[e, reason]).inc();
        self.note_born(e, reason);
    }

    /// A change found by a re-probe: each item counts once under its kind.
    pub fn record_change(&self, e: &str, items: &[crate::verdicts::changes::Item], at_unix: f64) {
        for item in items {
            let kind = item.kind.as_str();
            self.capability_changes.with_label_values(&[e, kind]).inc();
            self.note_born(e, kind);
        }
        if items.iter().any(|i| i.breaking) {
            self.breaking_change_at(e, at_unix);
        }
    }

    /// When `e`'s last breaking change happened.
    pub fn breaking_change_at(&self, e: &str, at_unix: f64) {
        self.last_breaking.with_label_values(&[e]).set(at_unix);
    }

    /// A pure query of emulator `e` answered by the memo, recorded, or
    /// refused past its bounds (the shim runs QEMU). A recording is an
    /// exec, timed with the probes'; an answer from the memo saves the
    /// recording's exec time.
    pub fn record_shim(&self, e: &str, result: &Result<(Arc<Answer>, Source), MemoError>) {
        let counted = match result {
            Ok((answer, Source::Memo)) => {
                self.seconds_saved
                    .with_label_values(&[e])
                    .inc_by(answer.exec_seconds.max(0.0));
                ShimResult::Answered
            }
            Ok((answer, Source::Recorded)) => {
                self.observe_exec(e, Duration::from_secs_f64(answer.exec_seconds.max(0.0)));
                ShimResult::Recorded
            }
            Err(MemoError::Full(_) | MemoError::TooLarge(_)) => ShimResult::RanQemu,
            Err(_) => return,
        };
        self.shim_requests
            .with_label_values(&[e, counted.as_str()])
            .inc();
    }

    /// `n` running VMs of emulator `e` have verdict `v`.
    pub fn set_vms(&self, e: &str, v: VmVerdict, n: i64) {
        self.vms.with_label_values(&[e, v.as_str()]).set(n);
    }

    /// QEMU confirmed a verdict of emulator `e` (or the memo held it).
    pub fn record_verification(&self, e: &str, c: &Confirmation, source: Source) {
        let result = match (source, c.started) {
            (Source::Memo, _) => "answered",
            (Source::Recorded, true) => "started",
            (Source::Recorded, false) => "refused",
        };
        self.verifications.with_label_values(&[e, result]).inc();
    }

    /// What the shims counted themselves (they cannot reach the agent when
    /// they run QEMU): `n` more calls of emulator `e`'s shim ended as
    /// `result`.
    pub fn shim_counted(&self, e: &str, result: ShimResult, n: u64) {
        self.shim_requests
            .with_label_values(&[e, result.as_str()])
            .inc_by(n);
    }

    /// The last feature file for node-feature-discovery held `written`
    /// labels and left `skipped` out.
    pub fn node_labels(&self, written: usize, skipped: usize) {
        for (result, n) in [("written", written), ("skipped", skipped)] {
            self.node_labels
                .with_label_values(&[result])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// A config reload was applied (`true`) or refused.
    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
        self.reload_ok.set(i64::from(ok));
    }

    /// Hits over lookups since start (1 before the first lookup: nothing
    /// has missed).
    pub fn hit_ratio_now(&self) -> f64 {
        let l = self.total_lookups.load(Ordering::Relaxed);
        if l == 0 {
            1.0
        } else {
            self.total_hits.load(Ordering::Relaxed) as f64 / l as f64
        }
    }

    fn note_born(&self, e: &str, reason: &str) {
        let mut b = self.born.lock().unwrap_or_else(|p| p.into_inner());
        if !b.contains(&(e.to_owned(), reason.to_owned())) {
            b.insert((e.to_owned(), reason.to_owned()));
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        self.hit_ratio.set(self.hit_ratio_now());
        let mut buf = Vec::with_capacity(16 << 10);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode().unwrap()).unwrap()
    }

    fn assert_has_all(text: &str, items: &[&str]) {
        for item in items {
            assert!(text.contains(item), "{item} missing from:\n{text}");
        }
    }

    #[test]
    fn every_contract_metric_is_registered() {
        let m = Metrics::register().unwrap();
        m.add_emulator("x86_64");
        m.record_hit("x86_64", 0.1);
        m.record_miss("x86_64", "cold", 1.0);
        m.record_invalidation("x86_64", "binary_changed");
        m.revalidations.inc();
        m.emulator_info
            .with_label_values(&["x86_64", "/usr/bin/q", "x86_64", "10.0.2"])
            .set(1);
        m.http_requests
            .with_label_values(&["/healthz", "200"])
            .inc();
        m.http_duration
            .with_label_values(&["/healthz", "200"])
            .observe(0.0001);
        assert_has_all(
            &text(&m),
            &[
                "qcapsd_probes_total",
                "qcapsd_probe_failures_total",
                "qcapsd_exec_duration_seconds_bucket",
                "qcapsd_cache_lookups_total",
                "qcapsd_cache_hits_total",
                "qcapsd_cache_misses_total",
                "qcapsd_cache_hit_ratio 0.5",
                "qcapsd_cache_invalidations_total",
                "qcapsd_exec_seconds_saved_total",
                "qcapsd_revalidations_total",
                "qcapsd_emulator_info",
                "qcapsd_emulator_up",
                "qcapsd_last_probe_success_timestamp_seconds",
                "qcapsd_last_probe_failure_timestamp_seconds",
                "qcapsd_last_cache_miss_timestamp_seconds",
                "qcapsd_http_requests_total",
                "qcapsd_http_request_duration_seconds_bucket",
                "qcapsd_build_info",
                "qcapsd_config_reloads_total",
                "qcapsd_config_last_reload_successful 1",
                "process_cpu_seconds_total",
            ],
        );
    }

    #[test]
    fn a_configured_emulator_is_visible_at_zero_before_any_event() {
        let m = Metrics::register().unwrap();
        m.add_emulator("e");
        assert_has_all(
            &text(&m),
            &[
                "qcapsd_probes_total{emulator=\"e\"} 0",
                "qcapsd_probe_failures_total{emulator=\"e\",reason=\"timeout\"} 0",
                "qcapsd_last_probe_failure_timestamp_seconds{emulator=\"e\"} 0",
                "qcapsd_last_cache_miss_timestamp_seconds{emulator=\"e\"} 0",
                "qcapsd_exec_duration_seconds_count{emulator=\"e\"} 0",
            ],
        );
    }

    #[test]
    fn only_misses_of_a_changed_emulator_move_the_miss_timestamp() {
        let m = Metrics::register().unwrap();
        m.add_emulator("e");
        for r in crate::cache::Reason::ALL
            .iter()
            .filter(|r| crate::cache::Reason::no_change(r.as_str()))
        {
            m.record_miss("e", r.as_str(), 5.0);
        }
        assert!(text(&m).contains("qcapsd_last_cache_miss_timestamp_seconds{emulator=\"e\"} 0"));
        m.record_miss("e", "binary_changed", 7.0);
        assert!(text(&m).contains("qcapsd_last_cache_miss_timestamp_seconds{emulator=\"e\"} 7"));
    }

    #[test]
    fn a_removed_emulator_loses_every_series() {
        let m = Metrics::register().unwrap();
        for e in ["gone", "kept"] {
            m.add_emulator(e);
            m.record_hit(e, 0.1);
            m.record_miss(e, "binary_changed", 1.0);
            m.record_invalidation(e, "binary_changed");
            m.probe_failed(e, FailureReason::Timeout, 1.0);
            m.probe_started(e);
        }
        m.remove_emulator("gone");
        let text = text(&m);
        assert!(!text.contains("emulator=\"gone\""), "{text}");
        assert!(
            text.contains("qcapsd_probe_failures_total{emulator=\"kept\",reason=\"timeout\"} 1")
        );
    }

    #[test]
    fn hit_ratio_is_hits_over_lookups() {
        let m = Metrics::register().unwrap();
        assert_eq!(m.hit_ratio_now(), 1.0);
        for _ in 0..3 {
            m.record_hit("a", 0.0);
        }
        m.record_miss("b", "cold", 0.0);
        assert_eq!(m.hit_ratio_now(), 0.75);
    }
}
