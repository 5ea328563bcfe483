//! The probe against the real QEMU binaries installed on this machine
//! (bookworm-backports' QEMU in CI). Each test is `#[ignore = "needs
//! QEMU"]`: `cargo test -- --include-ignored` runs them, and a missing
//! binary fails them.

use crate::common;
use qcapsd::qemu::{Accel, Capabilities, ExecCounter, probe};
use std::path::Path;
use tokio_util::sync::CancellationToken;

async fn probe_real(bin: &Path, accel: Accel) -> Capabilities {
    let mut req =
        qcapsd::config::defaults::probe_request(bin.file_name().unwrap().to_string_lossy());
    req.accel = accel;
    let counter = ExecCounter::default();
    let (caps, _) = probe(bin, &req, &counter, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counter.get(), 1, "the whole probe is one exec");
    assert_eq!(caps.probe.execs, 1);
    caps
}

/// The command names of `query-qmp-schema`, asked over QMP by the test
/// itself (what the probe used to read them from).
fn schema_commands(bin: &Path) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut qemu = std::process::Command::new(bin)
        .args([
            "-S",
            "-nodefaults",
            "-nographic",
            "-machine",
            "none",
            "-qmp",
            "stdio",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = qemu.stdin.take().unwrap();
    input
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-qmp-schema\",\"id\":\"s\"}\n{\"execute\":\"quit\"}\n")
        .unwrap();
    let reader = BufReader::new(qemu.stdout.take().unwrap());
    let mut names = Vec::new();
    for line in reader.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["id"] == "s" {
            names = common::schema_command_names(&v);
            break;
        }
    }
    drop(input);
    let _ = qemu.wait();
    names
}

#[ignore = "needs QEMU"]
#[tokio::test]
async fn devices_are_exactly_what_device_help_lists_and_commands_what_the_schema_lists() {
    for name in ["qemu-system-x86_64", "qemu-system-aarch64"] {
        let bin = common::real_qemu(name);
        let caps = probe_real(&bin, Accel::Auto).await;
        assert_eq!(
            caps.devices_source,
            Some(qcapsd::qemu::caps::DevicesSource::DeviceAddHelp)
        );
        assert_eq!(
            caps.devices,
            common::device_help_names(&bin),
            "{name}: devices"
        );
        assert!(
            !caps.devices.iter().any(|d| d == "apic" || d == "PIIX3"),
            "{name}: not user-creatable"
        );
        assert_eq!(caps.commands, schema_commands(&bin), "{name}: commands");
    }
}

/// `QEMU emulator version 10.0.2 (Debian ...)` → `10.0.2`.
fn version_from_dash_version(bin: &Path) -> String {
    let out = std::process::Command::new(bin)
        .arg("-version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("QEMU emulator version ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected -version output: {text}"))
        .to_owned()
}

#[ignore = "needs QEMU"]
#[tokio::test]
async fn x86_64_document_is_complete_in_one_exec() {
    let bin = common::real_qemu("qemu-system-x86_64");
    let caps = probe_real(&bin, Accel::Auto).await;
    let q = caps.qemu.as_ref().expect("version");
    assert_eq!(q.version, version_from_dash_version(&bin));
    assert_eq!(caps.arch.as_deref(), Some("x86_64"));
    assert!(
        caps.machines.len() >= 50,
        "{} machines",
        caps.machines.len()
    );
    assert!(caps.machines.iter().all(|m| m.name != "none"));
    assert_eq!(caps.machines.iter().filter(|m| m.is_default).count(), 1);
    assert!(
        caps.cpu_models.len() >= 100,
        "{} CPU models",
        caps.cpu_models.len()
    );
    assert!(caps.devices.len() >= 300, "{} devices", caps.devices.len());
    let blk = &caps.device_properties["virtio-blk-pci"];
    assert!(
        blk.iter().any(|p| p.name == "num-queues"),
        "virtio-blk-pci properties: {blk:?}"
    );
    assert!(caps.commands.iter().any(|c| c == "query-machines"));
    // KVM where /dev/kvm is usable, TCG otherwise.
    let kvm = caps.kvm.expect("query-kvm answered");
    if common::kvm_usable() {
        assert_eq!(caps.accel, "kvm");
        assert!(kvm.enabled);
        assert!(
            caps.cpu_models.iter().all(|c| c.usable.is_some()),
            "KVM reports usability"
        );
    } else {
        assert_eq!(caps.accel, "tcg");
        assert!(!kvm.enabled);
    }
}

#[ignore = "needs QEMU"]
#[tokio::test]
async fn x86_64_under_tcg_reports_tcg_usability() {
    let bin = common::real_qemu("qemu-system-x86_64");
    let caps = probe_real(&bin, Accel::Tcg).await;
    assert_eq!(caps.accel, "tcg");
    assert_eq!(caps.kvm.map(|k| k.enabled), Some(false));
    let host = caps.cpu_models.iter().find(|c| c.name == "host");
    // Under TCG the `host` model needs KVM, and QEMU says so.
    if let Some(host) = host {
        assert_eq!(host.usable, Some(false), "{host:?}");
    }
    assert!(caps.cpu_models.iter().any(|c| c.usable == Some(true)));
}

#[ignore = "needs QEMU"]
#[tokio::test]
async fn aarch64_document_is_complete_in_one_exec() {
    let bin = common::real_qemu("qemu-system-aarch64");
    let caps = probe_real(&bin, Accel::Auto).await;
    assert_eq!(
        caps.qemu.as_ref().unwrap().version,
        version_from_dash_version(&bin)
    );
    assert_eq!(caps.arch.as_deref(), Some("aarch64"));
    // An x86 host cannot run aarch64 guests under KVM.
    if std::env::consts::ARCH != "aarch64" {
        assert_eq!(caps.accel, "tcg");
    }
    assert!(caps.machines.iter().any(|m| m.name.starts_with("virt")));
    assert!(caps.cpu_models.iter().any(|c| c.name == "cortex-a57"));
    assert!(caps.devices.iter().any(|d| d == "virtio-blk-device"));
    assert!(caps.device_properties.contains_key("virtio-blk-pci"));
}

#[ignore = "needs QEMU"]
#[test]
fn cli_prints_the_document_for_real_qemu() {
    let bin = common::real_qemu("qemu-system-x86_64");
    let out = common::qcapsd(&["probe", bin.to_str().unwrap(), "--accel", "tcg"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schema_version"], 3);
    assert_eq!(doc["accel"], "tcg");
    assert_eq!(doc["probe"]["execs"], 1);
}

/// The agent's default accelerators on this machine: where KVM works, a
/// second exec answers CPU usability under TCG exactly as a TCG-only probe
/// does; where it does not, one exec under TCG and a reason for KVM.
#[ignore = "needs QEMU"]
#[tokio::test]
async fn default_accels_add_a_tcg_pass_where_kvm_works() {
    let bin = common::real_qemu("qemu-system-x86_64");
    let kvm = common::kvm_usable();
    let req = qcapsd::config::defaults::probe_request("qemu-system-x86_64")
        .accels(&[Accel::Kvm, Accel::Tcg], kvm);
    let counter = ExecCounter::default();
    let (caps, report) = probe(&bin, &req, &counter, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if kvm {
        assert_eq!(caps.accel, "kvm");
        assert_eq!(counter.get(), 2);
        assert_eq!(caps.probe.execs, 2);
        assert_eq!(report.passes.len(), 1);
        let tcg_only = probe_real(&bin, Accel::Tcg).await;
        let pass = &caps.other_accels["tcg"];
        assert_eq!(pass.error, None);
        let from_pass: Vec<(String, Option<bool>, Vec<String>)> = pass
            .cpu_models
            .iter()
            .map(|m| (m.name.clone(), m.usable, m.unavailable_features.clone()))
            .collect();
        let from_probe: Vec<(String, Option<bool>, Vec<String>)> = tcg_only
            .cpu_models
            .iter()
            .map(|m| (m.name.clone(), m.usable, m.unavailable_features.clone()))
            .collect();
        assert_eq!(from_pass, from_probe);
    } else {
        assert_eq!(caps.accel, "tcg");
        assert_eq!(counter.get(), 1);
        assert!(caps.other_accels["kvm"].error.is_some());
    }
}
