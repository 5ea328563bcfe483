//! The probe against libvirt's recorded QEMU conversations: for every
//! transcript, what qcapsd reports equals what libvirt parsed from the same
//! replies (version, machine types, CPU models and their blockers).

use crate::common::{self, Attrs, LibvirtCaps};
use qcapsd::qemu::caps::DevicesSource;
use qcapsd::qemu::probe::COMMANDS_USED;
use qcapsd::qemu::{Accel, Capabilities, ExecCounter, probe};
use std::collections::BTreeSet;
use std::path::Path;
use tokio_util::sync::CancellationToken;

async fn probe_transcript(transcript: &Path, accel: Accel) -> Capabilities {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::replay_emulator(dir.path(), "qemu-system-replay", transcript);
    let mut req = qcapsd::config::defaults::probe_request("replay");
    req.accel = accel;
    let counter = ExecCounter::default();
    let (caps, _) = probe(&bin, &req, &counter, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", transcript.display()));
    assert_eq!(counter.get(), 1, "one exec per probe");
    assert_eq!(caps.probe.execs, 1);
    caps
}

type MachineKey = (String, Option<String>, bool, u64, bool);

fn probed_machines(c: &Capabilities) -> BTreeSet<MachineKey> {
    c.machines
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.alias.clone(),
                m.is_default,
                m.cpu_max,
                m.deprecated,
            )
        })
        .collect()
}

fn libvirt_machines(x: &LibvirtCaps, typ: &str) -> BTreeSet<MachineKey> {
    x.machines
        .iter()
        .filter(|a| a["type"] == typ)
        .map(|a| {
            (
                a["name"].clone(),
                a.get("alias").cloned(),
                yes(a, "default"),
                a["maxCpus"].parse().unwrap(),
                yes(a, "deprecated"),
            )
        })
        .collect()
}

fn yes(a: &Attrs, key: &str) -> bool {
    a.get(key).is_some_and(|v| v == "yes")
}

use common::{CpuKey, libvirt_cpus};

fn probed_cpus(c: &Capabilities) -> BTreeSet<CpuKey> {
    c.cpu_models
        .iter()
        .map(|m| {
            let mut b = m.unavailable_features.clone();
            b.sort();
            (m.name.clone(), m.usable, b)
        })
        .collect()
}

/// Probes `transcript` as qcapsd would (accel auto) and, where it was
/// recorded with KVM, again with `--accel tcg`; each result must equal
/// libvirt's parse of the same pass.
async fn check_against_libvirt(transcript: &Path) {
    let xml_path = transcript.with_extension("xml");
    let xml = common::parse_libvirt_xml(&std::fs::read_to_string(&xml_path).unwrap());
    let has_kvm_pass = xml.machines.iter().any(|a| a["type"] == "kvm");
    let mut runs = vec![(Accel::Auto, if has_kvm_pass { "kvm" } else { "tcg" })];
    if has_kvm_pass {
        runs.push((Accel::Tcg, "tcg"));
    }
    for (accel, typ) in runs {
        let caps = probe_transcript(transcript, accel).await;
        let what = format!(
            "{} (accel {}, libvirt's {typ} entries)",
            transcript.display(),
            accel.as_str()
        );
        let q = caps
            .qemu
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no version"));
        assert_eq!(
            q.major * 1_000_000 + q.minor * 1_000 + q.micro,
            xml.version,
            "{what}: version"
        );
        assert_eq!(
            caps.arch.as_deref(),
            Some(xml.arch.as_str()),
            "{what}: arch"
        );
        // The accelerator follows what QEMU reported (a recording made with
        // another hardware accelerator, e.g. HVF, reports KVM disabled).
        let kvm_enabled = caps.kvm.is_some_and(|k| k.enabled);
        assert_eq!(
            caps.accel,
            if kvm_enabled { "kvm" } else { "tcg" },
            "{what}: accel"
        );
        if accel == Accel::Tcg {
            assert!(!kvm_enabled, "{what}: a TCG probe reports KVM disabled");
        }
        assert_eq!(
            probed_machines(&caps),
            libvirt_machines(&xml, typ),
            "{what}: machines"
        );
        assert_eq!(
            probed_cpus(&caps),
            libvirt_cpus(&xml, typ),
            "{what}: CPU models"
        );
        // Commands come from query-commands, which QEMU answers with the
        // schema's command names: the list is what the schema said.
        assert_eq!(
            caps.commands,
            common::schema_commands_of(transcript),
            "{what}: commands"
        );
        // libvirt did not record `device_add help`: the fallback.
        assert_eq!(
            caps.devices_source,
            Some(DevicesSource::QomListTypes),
            "{what}: devices source"
        );
        assert!(!caps.devices.is_empty(), "{what}: devices");
    }
}

macro_rules! transcript_tests {
    ($($name:ident => $file:literal,)*) => {$(
        #[tokio::test]
        async fn $name() {
            check_against_libvirt(&common::replies_dir().join($file)).await;
        }
    )*};
}

#[tokio::test]
async fn the_probe_asks_only_for_what_the_document_uses() {
    let dir = tempfile::tempdir().unwrap();
    let used: Vec<&str> = COMMANDS_USED.iter().map(|(c, _)| *c).collect();
    for t in ["caps_10.0.0_x86_64.replies", "caps_8.2.0_aarch64.replies"] {
        let log = dir.path().join(format!("{t}.log"));
        let bin = common::recording_emulator(
            dir.path(),
            "qemu-system-rec",
            &common::replies_dir().join(t),
            &log,
        );
        // Both passes: the main one under KVM and the TCG one.
        let caps = common::probe_kvm_and_tcg(&bin, "rec").await.unwrap();
        assert!(
            caps.other_accels["tcg"].error.is_none(),
            "{t}: the TCG pass ran"
        );
        let log = std::fs::read_to_string(&log).unwrap();
        let passes = log.matches("qmp_capabilities").count();
        assert_eq!(passes, 2, "{t}: two passes\n{log}");
        // Properties are asked only of devices the emulator has.
        for line in log.lines() {
            if let Some(d) = line.strip_prefix("device-list-properties ") {
                assert!(
                    caps.devices.iter().any(|x| x == d),
                    "{t}: asked the properties of {d}, which it does not have"
                );
            }
        }
        let asked = log.matches("device-list-properties ").count();
        let expected = qcapsd::config::defaults::probe_request("rec")
            .devices
            .iter()
            .filter(|d| caps.devices.contains(d))
            .count();
        assert_eq!(asked, expected, "{t}: every configured device it has");
        let sent: Vec<String> = log
            .lines()
            .map(|l| l.split(' ').next().unwrap_or("").to_owned())
            .collect();
        for c in &sent {
            assert!(
                used.contains(&c.as_str()),
                "{t}: the probe sent {c}, which no field uses"
            );
        }
        // And the list holds nothing the probe never sends (here the
        // fallback runs too: device_add help is not recorded).
        for c in &used {
            assert!(
                sent.iter().any(|s| s == c),
                "{t}: {c} is listed but never sent"
            );
        }
        assert!(
            !sent.iter().any(|c| c == "query-qmp-schema"),
            "the schema is not asked for"
        );
    }
}

transcript_tests! {
    libvirt_6_2_0_x86_64 => "caps_6.2.0_x86_64.replies",
    libvirt_7_2_0_x86_64 => "caps_7.2.0_x86_64.replies",
    libvirt_8_2_0_x86_64 => "caps_8.2.0_x86_64.replies",
    libvirt_9_1_0_x86_64 => "caps_9.1.0_x86_64.replies",
    libvirt_10_0_0_x86_64 => "caps_10.0.0_x86_64.replies",
    libvirt_8_2_0_aarch64 => "caps_8.2.0_aarch64.replies",
    libvirt_10_0_0_s390x => "caps_10.0.0_s390x.replies",
    libvirt_7_1_0_ppc64 => "caps_7.1.0_ppc64.replies",
    libvirt_9_1_0_riscv64 => "caps_9.1.0_riscv64.replies",
}

/// The transcripts the tests above name.
const NAMED: &[&str] = &[
    "caps_6.2.0_x86_64.replies",
    "caps_7.2.0_x86_64.replies",
    "caps_8.2.0_x86_64.replies",
    "caps_9.1.0_x86_64.replies",
    "caps_10.0.0_x86_64.replies",
    "caps_8.2.0_aarch64.replies",
    "caps_10.0.0_s390x.replies",
    "caps_7.1.0_ppc64.replies",
    "caps_9.1.0_riscv64.replies",
];

/// A transcript added to the shared folder is checked too (the named ones
/// are not checked twice).
#[tokio::test]
async fn every_other_transcript_in_the_shared_folder_agrees_with_libvirt() {
    let all = common::all_transcripts();
    for named in NAMED {
        assert!(
            all.iter().any(|t| t.ends_with(named)),
            "{named} is missing from the shared folder"
        );
    }
    for t in all.iter().filter(|t| !NAMED.iter().any(|n| t.ends_with(n))) {
        check_against_libvirt(t).await;
    }
}

#[tokio::test]
async fn device_properties_are_read_for_devices_the_emulator_has() {
    let t = common::replies_dir().join("caps_10.0.0_x86_64.replies");
    let caps = probe_transcript(&t, Accel::Auto).await;
    let props = &caps.device_properties["virtio-blk-pci"];
    assert!(props.iter().any(|p| p.name == "num-queues"), "{props:?}");
    assert!(
        !caps.device_properties.contains_key("virtio-net-ccw"),
        "an s390x-only device is not asked of x86_64"
    );
    assert!(caps.commands.iter().any(|c| c == "query-cpu-definitions"));
    assert!(
        !caps.commands.iter().any(|c| c == "SHUTDOWN"),
        "events are not commands"
    );
}

#[tokio::test]
async fn kvm_only_probe_of_a_tcg_only_emulator_fails_with_qemus_words() {
    let dir = tempfile::tempdir().unwrap();
    let t = common::replies_dir().join("caps_9.1.0_riscv64.replies");
    let bin = common::replay_emulator(dir.path(), "qemu-system-riscv64", &t);
    let mut req = qcapsd::config::defaults::probe_request("riscv64");
    req.accel = Accel::Kvm;
    let e = probe(
        &bin,
        &req,
        &ExecCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("failed to initialize kvm"), "{e}");
    assert!(e.contains("exited with status 1"), "{e}");
}
