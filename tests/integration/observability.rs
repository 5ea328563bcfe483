//! Metrics, rules and dashboard: exact counters on a live agent, promtool's
//! verdicts, the dashboard's queries, and a real Prometheus scraping a
//! running agent while a stand-in emulator keeps changing.

use crate::common::{
    self, Http, InProcess, Prometheus, count, metric, rename_upgrade, require_tool,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

struct Scene {
    agent: InProcess,
    x86: PathBuf,
    x86_count: PathBuf,
    dir: tempfile::TempDir,
}

/// An agent over a good x86_64 stand-in and a broken one.
fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let (x86, x86_count) = common::stand_in(
        dir.path(),
        "qemu-system-x86_64",
        "caps_9.1.0_x86_64.replies",
    );
    let broken = common::script(
        x86.parent().unwrap(),
        "qemu-system-broken",
        "echo 'broken' >&2\nexit 1",
    );
    let agent = InProcess::start(
        dir.path(),
        &format!(
            "revalidate_interval: 1h\nemulators:\n  - path: {}\n    name: x86_64\n  - path: {}\n    name: broken\n",
            x86.display(),
            broken.display()
        ),
    );
    Scene {
        agent,
        x86,
        x86_count,
        dir,
    }
}

/// How long a Prometheus rule or alert may take to show (its evaluation
/// interval and `for:` are compressed for the test), and how often the
/// test looks.
const PROMETHEUS_BOUND: Duration = Duration::from_secs(60);
const PROMETHEUS_PERIOD: Duration = Duration::from_millis(100);

#[test]
fn counters_move_exactly_with_queries_and_probes() {
    let s = scene();
    let a = &s.agent;
    const N: usize = 37;
    for _ in 0..N {
        assert_eq!(a.get("/v1/emulators/x86_64/machines").status, 200);
    }
    // One change: the next lookup misses (binary_changed), later ones hit.
    // inotify also wakes the revalidator; should it have finished the
    // re-probe first (a very slow test machine), that lookup is a hit. The
    // response says which, and the counts must agree with it exactly.
    rename_upgrade(&s.x86, "caps_10.0.0_x86_64.replies", &s.x86_count);
    let first = a.get("/v1/emulators/x86_64");
    assert_eq!(first.status, 200);
    let misses = match first.header("qcapsd-cache") {
        Some("miss") => 1.0,
        Some("hit") => 0.0,
        other => panic!("unexpected qcapsd-cache: {other:?}"),
    };
    for _ in 0..2 {
        let r = a.get("/v1/emulators/x86_64");
        assert_eq!((r.status, r.header("qcapsd-cache")), (200, Some("hit")));
    }
    // A forced re-probe, waited for.
    assert_eq!(
        a.request("POST", "/v1/emulators/x86_64/revalidate", &[])
            .status,
        202
    );
    common::poll_until(|| a.get("/v1/emulators").json()[1]["state"] == "fresh");
    assert_eq!(a.get("/v1/emulators/broken").status, 503);
    let m = a.get("/metrics").text();
    let v = |series: &str| metric(&m, series).unwrap_or_else(|| panic!("{series} not in:\n{m}"));
    let probes = count(&s.x86_count) as f64;
    assert_eq!(probes, 3.0, "start, upgrade, forced");
    assert_eq!(v("qcapsd_probes_total{emulator=\"x86_64\"}"), probes);
    assert_eq!(
        v("qcapsd_exec_duration_seconds_count{emulator=\"x86_64\"}"),
        probes
    );
    assert_eq!(v("qcapsd_probes_total{emulator=\"broken\"}"), 1.0);
    // A QEMU that started and then failed is timed too.
    assert_eq!(
        v("qcapsd_exec_duration_seconds_count{emulator=\"broken\"}"),
        1.0
    );
    assert_eq!(
        v("qcapsd_probe_failures_total{emulator=\"broken\",reason=\"qmp\"}"),
        1.0
    );
    let lookups = (N + 3) as f64;
    assert_eq!(
        v("qcapsd_cache_lookups_total{emulator=\"x86_64\"}"),
        lookups
    );
    assert_eq!(
        v("qcapsd_cache_hits_total{emulator=\"x86_64\"}"),
        lookups - misses
    );
    assert_eq!(
        metric(
            &m,
            "qcapsd_cache_misses_total{emulator=\"x86_64\",reason=\"binary_changed\"}"
        )
        .unwrap_or(0.0),
        misses
    );
    assert_eq!(
        v("qcapsd_cache_invalidations_total{emulator=\"x86_64\",reason=\"binary_changed\"}"),
        1.0
    );
    assert_eq!(
        v("qcapsd_cache_invalidations_total{emulator=\"x86_64\",reason=\"forced\"}"),
        1.0
    );
    // The failed emulator's lookup (in its backoff) is a miss without a probe.
    assert_eq!(v("qcapsd_cache_lookups_total{emulator=\"broken\"}"), 1.0);
    assert_eq!(
        v("qcapsd_cache_misses_total{emulator=\"broken\",reason=\"failed\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "qcapsd_cache_hits_total{emulator=\"broken\"}"),
        Some(0.0),
        "created at zero, never hit"
    );
    assert_eq!(
        v("qcapsd_cache_hit_ratio"),
        (lookups - misses) / (lookups + 1.0)
    );
    assert!(v("qcapsd_exec_seconds_saved_total{emulator=\"x86_64\"}") > 0.0);
    assert_eq!(v("qcapsd_emulator_up{emulator=\"x86_64\"}"), 1.0);
    assert_eq!(v("qcapsd_emulator_up{emulator=\"broken\"}"), 0.0);
    assert!(m.contains(&format!(
        "qcapsd_emulator_info{{arch=\"x86_64\",emulator=\"x86_64\",path=\"{}\",qemu_version=\"10.0.0\"}} 1",
        s.x86.display()
    )), "{m}");
    assert_eq!(
        v("qcapsd_http_requests_total{code=\"200\",route=\"/v1/emulators/{name}/machines\"}"),
        N as f64
    );
    assert_eq!(
        v("qcapsd_http_requests_total{code=\"503\",route=\"/v1/emulators/{name}\"}"),
        1.0
    );
    assert!(v("qcapsd_revalidations_total") >= 1.0);
    assert!(m.contains("qcapsd_build_info{revision="));
    assert!(m.contains("process_resident_memory_bytes"));
    // Labels are bounded by the config: no machine, CPU or device names.
    assert!(!m.contains("pc-i440fx") && !m.contains("Haswell") && !m.contains("virtio-blk"));
}

#[ignore = "needs promtool"]
#[test]
fn live_metrics_pass_promtool_check_metrics() {
    let promtool = require_tool("promtool");
    let s = scene();
    s.agent.get("/v1/emulators/x86_64");
    let text = s.agent.get("/metrics").body;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &text).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

#[ignore = "needs promtool"]
#[test]
fn rules_pass_promtool_check_and_their_tests() {
    let promtool = require_tool("promtool");
    common::check_rules(&promtool, &repo("deploy/prometheus/qcapsd.rules.yml"));
    let test = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(repo("deploy/prometheus/qcapsd.rules.test.yml"))
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every alert of the rules file is exercised by the tests, and has a
    // runbook entry.
    let rules = std::fs::read_to_string(repo("deploy/prometheus/qcapsd.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(repo("deploy/prometheus/qcapsd.rules.test.yml")).unwrap();
    let runbook = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
        assert!(
            runbook.contains(&format!("**{alert}**")),
            "{alert} has no runbook entry in docs/metrics.md"
        );
    }
}

/// Every `expr` in the dashboard, with Grafana's variables substituted.
fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo("dashboards/qcapsd.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            out.push(
                e.replace("$__rate_interval", "1m")
                    .replace("$__range", "1h")
                    .replace("$instance", ".*")
                    .replace("$job", "qcapsd"),
            );
        }
    }
    out
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("qcapsd_") {
        let start = i + off;
        if start > 0 && b[start - 1] == b':' {
            // The middle of a recording rule's name, not a metric.
            i = start + 1;
            continue;
        }
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        names.push(expr[start..end].to_owned());
        i = end;
    }
    names
}

#[ignore = "needs promtool"]
#[test]
fn dashboard_is_valid_its_queries_parse_and_use_only_live_metrics() {
    let d: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo("dashboards/qcapsd.json")).unwrap()).unwrap();
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "a recent schemaVersion"
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10);
    let raw = std::fs::read_to_string(repo("dashboards/qcapsd.json")).unwrap();
    assert!(raw.contains("$__rate_interval"));
    // Every expression parses: promtool checks them as recording rules.
    {
        let promtool = require_tool("promtool");
        let dir = tempfile::tempdir().unwrap();
        let mut y = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, e) in exprs.iter().enumerate() {
            y += &format!(
                "      - record: dashboard:expr{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            );
        }
        let f = dir.path().join("dashboard.rules.yml");
        std::fs::write(&f, y).unwrap();
        common::check_rules(&promtool, &f);
    }
    // Every metric it uses is on a live agent's /metrics.
    let s = scene();
    s.agent.get("/v1/emulators/x86_64");
    rename_upgrade(&s.x86, "caps_10.0.0_x86_64.replies", &s.x86_count);
    s.agent.get("/v1/emulators/x86_64");
    let live = s.agent.get("/metrics").text();
    let rules = std::fs::read_to_string(repo("deploy/prometheus/qcapsd.rules.yml")).unwrap();
    let mut used: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    used.extend(
        metric_names(&rules)
            .into_iter()
            .filter(|n| !n.contains(':')),
    );
    used.sort();
    used.dedup();
    for name in &used {
        let present = live.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        });
        assert!(
            present,
            "{name} is used by the dashboard or rules but not exported:\n{live}"
        );
    }
}

/// The rules with time compressed 60× (minutes become seconds), so a real
/// Prometheus evaluates the same expressions within a test's time.
/// Durations are written `[5m]`, `for: 15m` and, as thresholds in seconds,
/// `5 * 60`.
pub fn compressed_rules() -> String {
    let text = std::fs::read_to_string(repo("deploy/prometheus/qcapsd.rules.yml"))
        .unwrap()
        .replace(" * 60", "");
    let mut out = String::new();
    let mut rest = text.as_str();
    // "[5m]" → "[5s]"; "for: 15m" → "for: 15s".
    while let Some(i) = rest.find(|c: char| c.is_ascii_digit()) {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let digits = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (num, after) = tail.split_at(digits);
        out.push_str(num);
        let in_window = head.ends_with('[') && after.starts_with("m]");
        let in_for = head.ends_with("for: ") && after.starts_with('m');
        if in_window || in_for {
            out.push('s');
            rest = &after[1..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[ignore = "needs prometheus"]
#[test]
fn real_prometheus_records_the_hit_ratio_and_the_miss_alert_fires_then_resolves() {
    let prometheus = require_tool("prometheus");
    let s = scene();
    let prom = Prometheus::start(&prometheus, s.dir.path(), s.agent.port, &compressed_rules());
    // Steady queries: the hit-ratio recording rule yields 1.
    let mut ratio = None;
    common::poll_until_for(PROMETHEUS_BOUND, PROMETHEUS_PERIOD, || {
        s.agent.get("/v1/emulators/x86_64/machines");
        let v = prom.api("/api/v1/query?query=instance:qcapsd_cache_hit_ratio:rate5m");
        if let Some(r) = v["data"]["result"].as_array().and_then(|a| a.first()) {
            ratio = r["value"][1].as_str().and_then(|x| x.parse::<f64>().ok());
        }
        ratio.is_some()
    });
    assert_eq!(ratio, Some(1.0), "recorded hit ratio");
    assert_eq!(prom.alert_state("QcapsdCacheMissesSustained"), None);

    // The emulator keeps changing: every lookup misses. The alert fires.
    let versions = ["caps_10.0.0_x86_64.replies", "caps_9.1.0_x86_64.replies"];
    let mut i = 0;
    let fired = common::poll_until_for(PROMETHEUS_BOUND, PROMETHEUS_PERIOD, || {
        rename_upgrade(&s.x86, versions[i % 2], &s.x86_count);
        i += 1;
        s.agent.get("/v1/emulators/x86_64");
        prom.alert_state("QcapsdCacheMissesSustained").as_deref() == Some("firing")
    });
    assert!(
        fired,
        "QcapsdCacheMissesSustained never fired: {}",
        prom.api("/api/v1/alerts")
    );
    let m = s.agent.get("/metrics").text();
    assert!(
        metric(
            &m,
            "qcapsd_cache_misses_total{emulator=\"x86_64\",reason=\"binary_changed\"}"
        )
        .unwrap()
            >= 5.0
    );

    // It stops changing; lookups hit again. The alert resolves.
    let resolved = common::poll_until_for(PROMETHEUS_BOUND, PROMETHEUS_PERIOD, || {
        s.agent.get("/v1/emulators/x86_64");
        prom.alert_state("QcapsdCacheMissesSustained").is_none()
    });
    assert!(
        resolved,
        "the alert did not resolve: {}",
        prom.api("/api/v1/alerts")
    );
}

#[test]
fn time_compression_only_touches_durations() {
    let c = compressed_rules();
    assert!(c.contains("[5s]") && c.contains("for: 15s") && !c.contains("[5m]"));
    assert!(c.contains("< 5\n") && !c.contains("* 60"), "{c}");
    assert!(
        c.contains("histogram_quantile(0.99"),
        "numbers elsewhere untouched"
    );
}

/// Series on /metrics after a typical workload: every emulator queried,
/// the list, the host, health checks, a scrape.
fn series_count(emulators: usize) -> usize {
    let d = tempfile::tempdir().unwrap();
    let mut yaml = String::from("emulators:\n");
    let (bin, _) = common::stand_in(
        d.path(),
        "qemu-system-aarch64",
        "caps_8.2.0_aarch64.replies",
    );
    for i in 0..emulators {
        let link = d.path().join(format!("bin/qemu-{i}"));
        std::os::unix::fs::symlink(&bin, &link).unwrap();
        yaml += &format!("  - path: {}\n", link.display());
    }
    let agent = InProcess::start(d.path(), &format!("probe_concurrency: 4\n{yaml}"));
    for i in 0..emulators {
        for part in ["", "/machines", "/cpu-models", "/devices", "/commands"] {
            assert_eq!(
                agent.get(&format!("/v1/emulators/qemu-{i}{part}")).status,
                200
            );
        }
    }
    for path in ["/v1/emulators", "/v1/host", "/healthz", "/metrics"] {
        assert_eq!(agent.get(path).status, 200);
    }
    agent
        .get("/metrics")
        .text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count()
}

#[test]
fn series_stay_within_44_per_emulator_plus_150() {
    for n in [2, 30] {
        let series = series_count(n);
        eprintln!("{n} emulators: {series} series");
        assert!(
            series <= 44 * n + 150,
            "{n} emulators: {series} series, budget {}",
            44 * n + 150
        );
    }
}

/// Issue 23: the reasons of misses and invalidations come from two
/// labelled enums (the cache's own, the fingerprint's); docs/metrics.md
/// names every one.
#[test]
fn every_miss_and_invalidation_reason_is_documented() {
    use qcapsd::qemu::fingerprint::ChangeReason;
    let doc = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let labels = qcapsd::cache::Reason::ALL.iter().map(|r| r.as_str()).chain(
        ChangeReason::ALL
            .iter()
            .filter(|r| **r != ChangeReason::Unchanged)
            .map(|r| r.as_str()),
    );
    for label in labels {
        assert!(
            doc.contains(&format!("`{label}`")),
            "docs/metrics.md does not name the reason {label}"
        );
    }
}
