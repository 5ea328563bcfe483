//! Golden files for outputs people and programs read, as node_exporter
//! keeps one for /metrics: `tests/golden/metrics.txt` (an agent over two
//! replayed transcripts, after a fixed set of requests) and
//! `tests/golden/document-riscv64.json` (the capabilities document of one
//! replayed transcript). Times, and counts that depend on them, are
//! normalised. `QCAPSD_BLESS=1 cargo test golden` rewrites them; their
//! diffs are reviewed like code.

use crate::common::{self, Http, InProcess};
use std::path::{Path, PathBuf};

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file `name` (or rewrites it under
/// `QCAPSD_BLESS=1`), showing the differing lines on a mismatch.
pub(crate) fn golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var("QCAPSD_BLESS").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (QCAPSD_BLESS=1 cargo test golden writes it)",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (old, new): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut diff = String::new();
    for l in old.iter().filter(|l| !new.contains(l)).take(30) {
        diff += &format!("- {l}\n");
    }
    for l in new.iter().filter(|l| !old.contains(l)).take(30) {
        diff += &format!("+ {l}\n");
    }
    panic!(
        "{} differs (QCAPSD_BLESS=1 cargo test golden accepts the new output):\n{diff}",
        path.display()
    );
}

/// Whether a series' value depends on timing: process facts, times,
/// histogram buckets and sums.
fn timing_dependent(series: &str) -> bool {
    let name = series.split('{').next().unwrap_or(series);
    name.starts_with("process_")
        || name == "qcapsd_exec_seconds_saved_total"
        || name == "qcapsd_revalidations_total"
        || name.ends_with("_sum")
        || (name.ends_with("_bucket") && !series.contains("le=\"+Inf\""))
}

/// /metrics text with the temporary directory, the build revision and the
/// timing-dependent values replaced by placeholders.
fn normalize_metrics(text: &str, dir: &Path) -> String {
    let mut out = String::new();
    // The harness polls /readyz until the agent is ready: how often, and
    // whether one poll came early enough to get a 503, depends on timing.
    for line in text.lines().filter(|l| !l.contains("route=\"/readyz\"")) {
        let line = line.replace(&dir.display().to_string(), "$DIR");
        if line.starts_with('#') {
            out += &line;
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let series = match series.find("revision=\"") {
                Some(i) => {
                    let end = series[i + 10..].find('"').unwrap() + i + 10;
                    format!("{}revision=\"<revision>{}", &series[..i], &series[end..])
                }
                None => series.to_owned(),
            };
            let value = if timing_dependent(&series)
                || (series.contains("_timestamp_seconds") && value != "0")
            {
                "<time>"
            } else {
                value
            };
            out += &format!("{series} {value}");
        }
        out.push('\n');
    }
    out
}

#[test]
fn metrics_of_an_agent_over_two_replayed_transcripts() {
    let d = tempfile::tempdir().unwrap();
    let (x86, _) = common::stand_in(d.path(), "qemu-system-x86_64", "caps_10.0.0_x86_64.replies");
    let (riscv, _) = common::stand_in(
        d.path(),
        "qemu-system-riscv64",
        "caps_9.1.0_riscv64.replies",
    );
    let host = common::kvm_host(d.path());
    let agent = InProcess::start(
        d.path(),
        &format!(
            "host_root: {}\nrevalidate_interval: 1h\naccels: [kvm, tcg]\nemulators:\n  - path: {}\n    name: x86_64\n  - path: {}\n    name: riscv64\n",
            host.display(),
            x86.display(),
            riscv.display()
        ),
    );
    for _ in 0..5 {
        assert_eq!(agent.get("/v1/emulators/x86_64/machines").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(agent.get("/v1/emulators/riscv64").status, 200);
    }
    assert_eq!(agent.get("/v1/emulators/nope").status, 404);
    let text = agent.get("/metrics").text();
    golden("metrics.txt", &normalize_metrics(&text, d.path()));
}

#[tokio::test]
async fn document_of_a_replayed_transcript() {
    let d = tempfile::tempdir().unwrap();
    let bin = common::replay_emulator(
        d.path(),
        "qemu-system-riscv64",
        &common::transcript("caps_9.1.0_riscv64.replies"),
    );
    // The agent's default accelerators on a host where KVM works: the
    // recording is TCG-only, so QEMU falls back and the document says so.
    let caps = common::probe_kvm_and_tcg(&bin, "qemu-system-riscv64")
        .await
        .unwrap();
    let mut doc = serde_json::to_value(&caps).unwrap();
    doc["probe"]["started_at"] = "<time>".into();
    doc["probe"]["duration_seconds"] = "<time>".into();
    doc["emulator"]["path"] = "$DIR/qemu-system-riscv64".into();
    golden(
        "document-riscv64.json",
        &(serde_json::to_string_pretty(&doc).unwrap() + "\n"),
    );
}
