//! Node labels through node-feature-discovery's feature file: what the
//! agent writes (a golden file over two replayed transcripts), that it
//! follows an upgrade and stays within NFD's rules, and, property-tested,
//! that no input breaks those rules.

use crate::common::{self, Http, InProcess};
use proptest::prelude::*;
use qcapsd::agent::nfd::{Source, Wanted, render};
use qcapsd::qemu::Capabilities;
use std::time::{Duration, SystemTime};

/// NFD's rules, as its documentation and Kubernetes' label syntax state
/// them, written out independently of the agent's own check: a label is
/// `PREFIX/NAME=VALUE`, NAME and VALUE each 1–63 characters matching
/// `[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?`.
fn follows_label_syntax(part: &str) -> bool {
    let chars: Vec<char> = part.chars().collect();
    let alnum = |c: &char| c.is_ascii_alphanumeric();
    let middle = |c: &char| alnum(c) || *c == '.' || *c == '_' || *c == '-';
    (1..=63).contains(&chars.len())
        && chars.first().is_some_and(alnum)
        && chars.last().is_some_and(alnum)
        && chars.iter().all(middle)
}

/// Checks a feature file against NFD's rules; returns its labels.
fn check_feature_file(text: &str) -> Vec<(String, String)> {
    assert!(text.len() <= 64 * 1024, "over 64 KiB: {} bytes", text.len());
    let mut labels = Vec::new();
    let mut expiry = 0;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# +expiry-time=") {
            t.parse::<jiff::Timestamp>()
                .unwrap_or_else(|e| panic!("expiry {t:?} is not RFC 3339: {e}"));
            expiry += 1;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{line:?}: no value"));
        let part = name
            .strip_prefix("qcapsd.io/")
            .unwrap_or_else(|| panic!("{name}: not under qcapsd.io/"));
        assert!(follows_label_syntax(part), "name {part:?} breaks the rules");
        assert!(
            follows_label_syntax(value),
            "value {value:?} of {name} breaks the rules"
        );
        labels.push((name.to_owned(), value.to_owned()));
    }
    assert_eq!(expiry, 1, "one expiry directive, before the labels");
    let names: std::collections::BTreeSet<&String> = labels.iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), labels.len(), "no label twice");
    labels
}

fn expiry_of(text: &str) -> jiff::Timestamp {
    text.lines()
        .find_map(|l| l.strip_prefix("# +expiry-time="))
        .unwrap()
        .parse()
        .unwrap()
}

const LISTS: &str = "nfd_cpu_models: [Skylake-Server, Haswell-noTSX, EPYC-v4, cortex-a57, max, not-a-model]\nnfd_machine_types: [q35, pc-i440fx-2.0, virt, virt-8.2, not-a-machine]\n";

#[test]
fn the_feature_file_holds_the_chosen_labels_and_follows_an_upgrade() {
    let d = tempfile::tempdir().unwrap();
    let features = d.path().join("features.d");
    std::fs::create_dir_all(&features).unwrap();
    let file = features.join("qcapsd");
    let (x86, x86_count) =
        common::stand_in(d.path(), "qemu-system-x86_64", "caps_10.0.0_x86_64.replies");
    let (arm, _) = common::stand_in(
        d.path(),
        "qemu-system-aarch64",
        "caps_8.2.0_aarch64.replies",
    );
    let host = common::kvm_host(d.path());
    let before = jiff::Timestamp::now();
    let agent = InProcess::start(
        d.path(),
        &format!(
            "host_root: {}\nrevalidate_interval: 1h\nnfd_features_file: {}\n{LISTS}emulators:\n  - path: {}\n  - path: {}\n",
            host.display(),
            file.display(),
            x86.display(),
            arm.display()
        ),
    );
    // Written right after ready (in a task of its own: never before).
    assert!(common::poll_until(|| file.exists()), "no feature file");
    let text = std::fs::read_to_string(&file).unwrap();
    let labels = check_feature_file(&text);
    // Expires three revalidation intervals ahead.
    let ahead = expiry_of(&text).duration_since(before);
    assert!(
        ahead >= jiff::SignedDuration::from_secs(3 * 3600 - 5)
            && ahead <= jiff::SignedDuration::from_secs(3 * 3600 + 60),
        "expires {ahead:?} ahead"
    );
    let shown: String = text
        .lines()
        .map(|l| {
            if l.starts_with("# +expiry-time=") {
                "# +expiry-time=<time>\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    crate::golden::golden("node-labels.txt", &shown);
    let m = agent.get("/metrics").text();
    assert_eq!(
        common::metric(&m, "qcapsd_node_labels{result=\"written\"}"),
        Some(labels.len() as f64)
    );
    assert_eq!(
        common::metric(&m, "qcapsd_node_labels{result=\"skipped\"}"),
        Some(0.0)
    );
    let names: Vec<String> = std::fs::read_dir(&features)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["qcapsd"], "no dotfile left behind");

    // An upgrade: the next pass (woken by inotify) rewrites the labels.
    common::rename_upgrade(&x86, "caps_9.1.0_x86_64.replies", &x86_count);
    assert!(
        common::poll_until(|| std::fs::read_to_string(&file)
            .is_ok_and(|t| t.contains("qcapsd.io/x86_64.qemu-version=9.1.0\n"))),
        "the version label follows the upgrade"
    );
    check_feature_file(&std::fs::read_to_string(&file).unwrap());
}

#[test]
fn a_feature_file_that_cannot_be_written_is_said_and_nothing_else_changes() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such-dir/qcapsd");
    let (agent, _, _) = InProcess::with_x86(
        d.path(),
        "caps_10.0.0_x86_64.replies",
        &format!("nfd_features_file: {}\n", missing.display()),
    );
    assert_eq!(agent.get("/v1/emulators/x86_64").status, 200);
    assert!(!missing.exists());
    assert!(
        !d.path().join("no-such-dir").exists(),
        "no directory is made"
    );
}

/// Issue 23: a `features.d` on a hung mount (a dead NFS server) delays
/// neither readiness nor the revalidation passes: the agent is ready and
/// answers, and an upgrade is still seen and probed while the write hangs.
#[test]
#[ignore = "needs root (mounts a FUSE file system that never answers)"]
fn a_feature_file_on_a_hung_mount_delays_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (x86, count) =
        common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let mount = common::HungMount::at(&d.path().join("hung"));
    let hung = &mount.path;
    let agent = InProcess::spawn(
        d.path(),
        &format!(
            "nfd_features_file: {}/features.d/qcapsd\nrevalidate_interval: 1h\n{}",
            hung.display(),
            common::x86_yaml(&x86)
        ),
    );
    assert!(common::wait_ready(agent.port), "not ready");
    assert_eq!(agent.get("/v1/emulators/x86_64").status, 200);
    common::rename_upgrade(&x86, "caps_10.0.0_x86_64.replies", &count);
    assert!(
        common::poll_until(
            || agent.get("/v1/emulators/x86_64").json()["qemu"]["version"] == "10.0.0"
        ),
        "the upgrade is seen while the feature file hangs"
    );
    // The hung write returns (ENOTCONN) before the agent stops.
    drop(mount);
    agent.stop().unwrap();
}

/// A real document to vary: x86_64 from a recorded transcript.
fn base_doc() -> Capabilities {
    static DOC: std::sync::OnceLock<Capabilities> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let bin = common::replay_emulator(
            d.path(),
            "qemu-system-x86_64",
            &common::transcript("caps_10.0.0_x86_64.replies"),
        );
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(common::probe_kvm_and_tcg(&bin, "qemu-system-x86_64"))
            .unwrap()
    })
    .clone()
}

fn distinct(v: &[String]) -> Vec<&String> {
    let mut d: Vec<&String> = v.iter().collect();
    d.sort();
    d.dedup();
    d
}

/// Names as operators and QEMU write them, and worse: any printable
/// ASCII, spaces, non-ASCII, up to 80 characters.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9][A-Za-z0-9._-]{0,30}[A-Za-z0-9]",
        "[ -~]{0,80}",
        "[a-zé+ /]{1,20}",
        "[A-Za-z0-9]{50,70}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_input_makes_a_file_that_breaks_nfd_rules(
        arches in prop::collection::vec(any_name(), 1..4),
        models in prop::collection::vec(any_name(), 0..2000),
        machines in prop::collection::vec(any_name(), 0..50),
        usable_every in 1usize..4,
    ) {
        let base = base_doc();
        let docs: Vec<(String, Capabilities)> = arches
            .iter()
            .enumerate()
            .map(|(i, arch)| {
                let mut c = base.clone();
                c.arch = Some(arch.clone());
                c.cpu_models = models
                    .iter()
                    .enumerate()
                    .map(|(j, name)| {
                        let mut m = base.cpu_models[0].clone();
                        m.name = name.clone();
                        m.usable = Some(j % usable_every == 0);
                        m
                    })
                    .collect();
                for (j, name) in machines.iter().enumerate() {
                    if let Some(m) = c.machines.get_mut(j) {
                        m.name = name.clone();
                    }
                }
                (format!("e{i}"), c)
            })
            .collect();
        let sources: Vec<Source> = docs
            .iter()
            .map(|(n, c)| Source { name: n, file_name: n, caps: c })
            .collect();
        let r = render(
            &sources,
            Wanted { cpu_models: &models, machine_types: &machines },
            SystemTime::now() + Duration::from_secs(600),
        );
        let labels = check_feature_file(&r.text);
        prop_assert_eq!(labels.len(), r.written);
        // Everything asked for and present is either written or skipped
        // (and said), never silently lost: count the candidates.
        let mut distinct_arches: Vec<&String> = arches.iter().collect();
        distinct_arches.sort();
        distinct_arches.dedup();
        let mut candidates = 1; // kvm
        for arch in &distinct_arches {
            let c = &docs.iter().find(|(_, c)| c.arch.as_ref() == Some(*arch)).unwrap().1;
            candidates += usize::from(c.qemu.is_some());
            candidates += distinct(&models)
                .iter()
                .filter(|m| c.cpu_models.iter().any(|x| x.name == ***m && x.usable == Some(true)))
                .count();
            candidates += distinct(&machines)
                .iter()
                .filter(|t| c.machines.iter().any(|x| x.name == ***t || x.alias.as_deref() == Some(t.as_str())))
                .count();
        }
        prop_assert_eq!(r.written + r.skipped.len(), candidates);
    }
}

#[test]
fn the_rule_checker_refuses_what_nfd_refuses() {
    // The test's own checker, against the documented examples.
    for ok in ["my-feature.1", "a", "x86_64.cpu.EPYC-v4", &"a".repeat(63)] {
        assert!(follows_label_syntax(ok), "{ok}");
    }
    for bad in ["", "-a", "a.", "a b", "a/b", "é", &"a".repeat(64)] {
        assert!(!follows_label_syntax(bad), "{bad:?}");
    }
}
