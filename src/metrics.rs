//! Every Prometheus metric of qcapsd, registered in one place
//! (`Metrics::register`); components get an `Arc<Metrics>` and bump what
//! they own. Label values come only from the config (emulator names and
//! paths) or from small fixed sets (reasons, routes, codes); never machine
//! types, CPU models or devices.
//!
//! The per-emulator gauges (`qcapsd_emulator_info`, `_up`) and the hit ratio
//! are derived from the cache when /metrics is scraped, which only reads
//! memory: a scrape never waits on a probe.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of `qcapsd_exec_duration_seconds`: 5 ms to 60 s.
pub const EXEC_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of `qcapsd_http_request_duration_seconds`: 10 µs to 1 s.
pub const HTTP_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub probes: IntCounterVec,
    pub probe_failures: IntCounterVec,
    pub exec_duration: HistogramVec,
    pub lookups: IntCounterVec,
    pub hits: IntCounterVec,
    pub misses: IntCounterVec,
    pub hit_ratio: Gauge,
    pub invalidations: IntCounterVec,
    pub seconds_saved: prometheus::CounterVec,
    pub revalidations: IntCounter,
    pub emulator_info: IntGaugeVec,
    pub emulator_up: IntGaugeVec,
    pub last_success: GaugeVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub build_info: IntGaugeVec,
    /// Totals behind the hit ratio (all emulators, since start).
    total_lookups: AtomicU64,
    total_hits: AtomicU64,
    /// (emulator, reason) pairs of the reason-labelled counters, so a
    /// removed emulator's series can all be deleted. Touched only on
    /// misses, invalidations and failures, never on a hit.
    reasons: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Creates and registers every metric (and the process collector).
    pub fn register() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: T,
        ) -> Result<T, prometheus::Error> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let m = Metrics {
            probes: reg(
                r,
                IntCounterVec::new(
                    opts("qcapsd_probes_total", "QEMU probes started."),
                    &["emulator"],
                )?,
            )?,
            probe_failures: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "qcapsd_probe_failures_total",
                        "QEMU probes that failed, by reason.",
                    ),
                    &["emulator", "reason"],
                )?,
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
            lookups: reg(
                r,
                IntCounterVec::new(
                    opts("qcapsd_cache_lookups_total", "Cache lookups."),
                    &["emulator"],
                )?,
            )?,
            hits: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "qcapsd_cache_hits_total",
                        "Lookups answered from a valid entry (an exec avoided).",
                    ),
                    &["emulator"],
                )?,
            )?,
            misses: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "qcapsd_cache_misses_total",
                        "Lookups that needed a probe or waited on one, by reason.",
                    ),
                    &["emulator", "reason"],
                )?,
            )?,
            hit_ratio: reg(
                r,
                Gauge::with_opts(opts(
                    "qcapsd_cache_hit_ratio",
                    "Cache hits over lookups since start.",
                ))?,
            )?,
            invalidations: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "qcapsd_cache_invalidations_total",
                        "Entries found invalid, by reason.",
                    ),
                    &["emulator", "reason"],
                )?,
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
            last_success: reg(
                r,
                GaugeVec::new(
                    opts(
                        "qcapsd_last_probe_success_timestamp_seconds",
                        "Unix time of the last successful probe.",
                    ),
                    &["emulator"],
                )?,
            )?,
            http_requests: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "qcapsd_http_requests_total",
                        "HTTP requests by route and status code.",
                    ),
                    &["route", "code"],
                )?,
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
            build_info: reg(
                r,
                IntGaugeVec::new(
                    opts(
                        "qcapsd_build_info",
                        "qcapsd's version and revision (always 1).",
                    ),
                    &["version", "revision"],
                )?,
            )?,
            total_lookups: AtomicU64::new(0),
            total_hits: AtomicU64::new(0),
            reasons: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            registry,
        };
        m.build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("QCAPSD_REVISION").unwrap_or("unknown"),
            ])
            .set(1);
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    pub fn record_hit(&self, emulator: &str, exec_seconds: f64) {
        self.lookups.with_label_values(&[emulator]).inc();
        self.hits.with_label_values(&[emulator]).inc();
        self.seconds_saved
            .with_label_values(&[emulator])
            .inc_by(exec_seconds.max(0.0));
        self.total_lookups.fetch_add(1, Ordering::Relaxed);
        self.total_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_miss(&self, emulator: &str, reason: &str) {
        self.lookups.with_label_values(&[emulator]).inc();
        self.misses.with_label_values(&[emulator, reason]).inc();
        self.note_reason(emulator, reason);
        self.total_lookups.fetch_add(1, Ordering::Relaxed);
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

    pub fn record_invalidation(&self, emulator: &str, reason: &str) {
        self.invalidations
            .with_label_values(&[emulator, reason])
            .inc();
        self.note_reason(emulator, reason);
    }

    pub fn record_probe_failure(&self, emulator: &str, reason: &str) {
        self.probe_failures
            .with_label_values(&[emulator, reason])
            .inc();
        self.note_reason(emulator, reason);
    }

    fn note_reason(&self, emulator: &str, reason: &str) {
        let mut r = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        if !r.contains(&(emulator.to_owned(), reason.to_owned())) {
            r.insert((emulator.to_owned(), reason.to_owned()));
        }
    }

    /// Forgets every series of an emulator no longer configured.
    pub fn remove_emulator(&self, emulator: &str) {
        for v in [&self.probes, &self.lookups, &self.hits] {
            let _ = v.remove_label_values(&[emulator]);
        }
        let mut r = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<(String, String)> =
            r.iter().filter(|(e, _)| e == emulator).cloned().collect();
        for (e, reason) in gone {
            for v in [&self.misses, &self.invalidations, &self.probe_failures] {
                let _ = v.remove_label_values(&[&e, &reason]);
            }
            r.remove(&(e, reason));
        }
        let _ = self.exec_duration.remove_label_values(&[emulator]);
        let _ = self.seconds_saved.remove_label_values(&[emulator]);
        let _ = self.emulator_up.remove_label_values(&[emulator]);
        let _ = self.last_success.remove_label_values(&[emulator]);
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

    #[test]
    fn every_contract_metric_is_registered() {
        let m = Metrics::register().unwrap();
        m.record_hit("x86_64", 0.1);
        m.record_miss("x86_64", "cold");
        m.probes.with_label_values(&["x86_64"]).inc();
        m.probe_failures
            .with_label_values(&["x86_64", "timeout"])
            .inc();
        m.exec_duration.with_label_values(&["x86_64"]).observe(0.1);
        m.invalidations
            .with_label_values(&["x86_64", "binary_changed"])
            .inc();
        m.revalidations.inc();
        m.emulator_info
            .with_label_values(&["x86_64", "/usr/bin/q", "x86_64", "10.0.2"])
            .set(1);
        m.emulator_up.with_label_values(&["x86_64"]).set(1);
        m.last_success.with_label_values(&["x86_64"]).set(1.0);
        m.http_requests
            .with_label_values(&["/healthz", "200"])
            .inc();
        m.http_duration
            .with_label_values(&["/healthz", "200"])
            .observe(0.0001);
        let text = String::from_utf8(m.encode().unwrap()).unwrap();
        for name in [
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
            "qcapsd_http_requests_total",
            "qcapsd_http_request_duration_seconds_bucket",
            "qcapsd_build_info",
            "process_cpu_seconds_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn a_removed_emulator_loses_every_series() {
        let m = Metrics::register().unwrap();
        for e in ["gone", "kept"] {
            m.record_hit(e, 0.1);
            m.record_miss(e, "binary_changed");
            m.record_invalidation(e, "binary_changed");
            m.record_probe_failure(e, "timeout");
            m.probes.with_label_values(&[e]).inc();
        }
        m.remove_emulator("gone");
        let text = String::from_utf8(m.encode().unwrap()).unwrap();
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
        m.record_miss("b", "cold");
        assert_eq!(m.hit_ratio_now(), 0.75);
    }
}
