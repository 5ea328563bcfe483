//! `qcapsd compare` over documents of the recorded probes: the pool
//! baseline against libvirt's own parses, architecture mismatch, every
//! kind of input (file, served document, stdin, live agent URL), and VM
//! verdicts per input.

use crate::common::{self, Http, InProcess, libvirt_cpus};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const X86: &[&str] = &[
    "caps_6.2.0_x86_64",
    "caps_7.2.0_x86_64",
    "caps_8.2.0_x86_64",
    "caps_9.1.0_x86_64",
    "caps_10.0.0_x86_64",
];

/// `qcapsd probe` of a replay of `name`, saved to a file as a user would.
fn saved_document(dir: &Path, name: &str) -> PathBuf {
    let bin = common::replay_emulator(dir, name, &common::transcript(&format!("{name}.replies")));
    let out = common::qcapsd(&["probe", bin.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

/// The CPU models QEMU calls not migration-safe in a transcript's first
/// `query-cpu-definitions` (read here from the recording itself).
fn not_migration_safe(name: &str) -> BTreeSet<String> {
    let transcript = common::transcript(&format!("{name}.replies"));
    common::recorded_reply(&transcript, "query-cpu-definitions")["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["migration-safe"] == false)
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

fn compare(args: &[&str]) -> std::process::Output {
    let mut all = vec!["compare"];
    all.extend_from_slice(args);
    common::qcapsd(&all)
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_baseline_of_five_x86_64_hosts_is_what_libvirt_says_every_one_can_run() {
    let d = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = X86.iter().map(|n| saved_document(d.path(), n)).collect();
    let args: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    for accel in ["kvm", "tcg"] {
        let mut expected: Option<BTreeSet<String>> = None;
        let mut unsafe_models = BTreeSet::new();
        for n in X86 {
            let xml = common::parse_libvirt_xml(
                &std::fs::read_to_string(common::transcript(&format!("{n}.xml"))).unwrap(),
            );
            let usable: BTreeSet<String> = libvirt_cpus(&xml, accel)
                .into_iter()
                .filter(|(_, u, _)| *u == Some(true))
                .map(|(name, _, _)| name)
                .collect();
            expected = Some(match expected {
                None => usable,
                Some(e) => e.intersection(&usable).cloned().collect(),
            });
            unsafe_models.extend(not_migration_safe(n));
        }
        let expected: BTreeSet<String> = expected
            .unwrap()
            .difference(&unsafe_models)
            .cloned()
            .collect();
        assert!(expected.len() > 5, "{accel}: {expected:?}");
        let mut a = args.clone();
        a.extend(["--accel", accel, "--json"]);
        let out = compare(&a);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = json_of(&out);
        let baseline: Vec<String> =
            serde_json::from_value(c["shared"]["cpu_models"].clone()).unwrap();
        assert_eq!(
            baseline.iter().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{accel} baseline"
        );
        // In QEMU's order of the first input.
        let first: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        let order: Vec<&str> = first["cpu_models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .filter(|n| expected.contains(*n))
            .collect();
        assert_eq!(baseline, order);
        assert_eq!(c["arch"], "x86_64");
        assert_eq!(c["inputs"].as_array().unwrap().len(), 5);
        // A model the newest host runs and the oldest does not, with why.
        let oldest = &c["inputs"][0];
        for m in oldest["missing_cpu_models"].as_array().unwrap() {
            let reason = m["reason"].as_str().unwrap();
            assert!(["blocked", "unknown_model", "usability_unknown"].contains(&reason));
            if reason == "blocked" {
                assert!(!m["blockers"].as_array().unwrap().is_empty(), "{m}");
            }
        }
    }
    // The text form says the same.
    let out = compare(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("5 inputs, all x86_64"), "{text}");
    assert!(
        text.contains("baseline CPU models, usable on every input"),
        "{text}"
    );
}

#[test]
fn another_architecture_is_refused_with_64() {
    let d = tempfile::tempdir().unwrap();
    let x86 = saved_document(d.path(), "caps_10.0.0_x86_64");
    let arm = saved_document(d.path(), "caps_8.2.0_aarch64");
    let out = compare(&[x86.to_str().unwrap(), arm.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("different architectures") && err.contains("is aarch64"),
        "{err}"
    );
    // Not a document at all, and a missing file: 64 as well, named.
    let bogus = d.path().join("bogus.json");
    std::fs::write(&bogus, "{\"hello\": 1}").unwrap();
    let out = compare(&[x86.to_str().unwrap(), bogus.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus.json"));
    let out = compare(&[x86.to_str().unwrap(), "/nonexistent/doc.json"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_live_agent_a_served_document_and_stdin_are_inputs_too() {
    let d = tempfile::tempdir().unwrap();
    let (agent, _, _) = InProcess::with_x86(d.path(), "caps_10.0.0_x86_64.replies", "");
    let url = format!("http://127.0.0.1:{}/v1/emulators/x86_64", agent.port);
    let served = d.path().join("served.json");
    std::fs::write(&served, agent.get("/v1/emulators/x86_64").body).unwrap();
    let old = saved_document(d.path(), "caps_9.1.0_x86_64");
    let mut child = Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args(["compare", &url, served.to_str().unwrap(), "-", "--json"])
        .args(["--machine", "q35", "--cpu", "Skylake-Client-v4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&old).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let c = json_of(&out);
    assert_eq!(c["inputs"][0]["label"], url.as_str());
    assert_eq!(c["inputs"][0]["qemu_version"], "10.0.0");
    assert_eq!(c["inputs"][2]["label"], "-");
    assert_eq!(c["inputs"][2]["qemu_version"], "9.1.0");
    // The live agent and its saved answer are the same document.
    assert!(
        c["inputs"][0]["only_cpu_models"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let vm = c["vm"].as_array().unwrap();
    assert_eq!(vm.len(), 3);
    // q35 resolves to each QEMU's own newest q35.
    assert_eq!(vm[0]["machine"]["resolved"], "pc-q35-10.0");
    assert_eq!(vm[2]["machine"]["resolved"], "pc-q35-9.1");
    let can_all = vm.iter().all(|v| v["ok"] == true);
    assert_eq!(out.status.code(), Some(if can_all { 0 } else { 1 }));

    // A model no input can run: exit 1, with the blockers per input.
    let out = compare(&[&url, old.to_str().unwrap(), "--cpu", "EPYC-Genoa"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cannot run") && text.contains("EPYC-Genoa"),
        "{text}"
    );

    // An agent that does not answer: 69.
    let gone = format!(
        "http://127.0.0.1:{}/v1/emulators/x86_64",
        common::free_port()
    );
    let out = compare(&[&url, &gone]);
    assert_eq!(out.status.code(), Some(69));
}
