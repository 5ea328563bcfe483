//! Each rule of the check on a small document.

use super::*;
use crate::qemu::Accel;
use crate::qemu::caps::AccelPass;
use crate::qemu::caps::sample::{cpu, doc, machine};

fn ask(f: impl FnOnce(&mut CheckRequest)) -> CheckRequest {
    let mut r = CheckRequest::default();
    f(&mut r);
    r
}

#[test]
fn an_alias_resolves_to_the_canonical_machine() {
    let v = check(&doc(), &ask(|r| r.machine = Some("q35".into())), None);
    assert!(v.ok, "{v:?}");
    let m = v.machine.clone().unwrap();
    assert_eq!(m.resolved.as_deref(), Some("pc-q35-9.1"));
    assert_eq!(m.requested.as_deref(), Some("q35"));
    assert_eq!(m.cpu_max, Some(4096));
    assert_eq!(v.accel, "kvm", "the probe's accelerator by default");
}

#[test]
fn no_machine_means_the_default_one_and_none_is_a_problem() {
    let v = check(&doc(), &ask(|r| r.cpus = Some(300)), None);
    assert!(v.ok, "q35 (the default here) takes 4096: {v:?}");
    assert_eq!(
        v.machine.clone().unwrap().resolved.as_deref(),
        Some("pc-q35-9.1")
    );
    let mut d = doc();
    d.machines.iter_mut().for_each(|m| m.is_default = false);
    let v = check(&d, &CheckRequest::default(), None);
    assert!(!v.ok);
    assert!(v.problems[0].contains("no default machine"), "{v:?}");
}

#[test]
fn an_unknown_name_suggests_the_closest_ones() {
    let v = check(
        &doc(),
        &ask(|r| {
            r.machine = Some("pc-q35-9.2".into());
            r.cpu = Some("haswell".into());
            r.devices = vec!["virtio-blk-pcie".into()];
        }),
        None,
    );
    assert!(!v.ok);
    assert_eq!(v.problems.len(), 3, "{v:?}");
    assert_eq!(v.machine.clone().unwrap().suggestions[0], "pc-q35-9.1");
    assert_eq!(
        v.cpu.clone().unwrap().suggestions,
        ["Haswell"],
        "case differs only"
    );
    assert_eq!(v.devices[0].suggestions[0], "virtio-blk-pci");
    assert!(
        v.problems[1].contains("closest: Haswell"),
        "{}",
        v.problems[1]
    );
}

#[test]
fn nothing_close_suggests_nothing() {
    let v = check(&doc(), &ask(|r| r.cpu = Some("zzzzzzzz".into())), None);
    assert!(v.cpu.clone().unwrap().suggestions.is_empty());
    assert!(!v.problems[0].contains("closest"));
}

#[test]
fn a_deprecated_machine_or_cpu_is_a_warning() {
    let mut d = doc();
    d.machines.push({
        let mut m = machine("pc-i440fx-2.12", None, false, 255);
        m.deprecated = true;
        m
    });
    d.cpu_models[0].deprecated = true;
    let v = check(
        &d,
        &ask(|r| {
            r.machine = Some("pc-i440fx-2.12".into());
            r.cpu = Some("Haswell".into());
        }),
        None,
    );
    assert!(v.ok, "{v:?}");
    assert_eq!(v.warnings.len(), 2, "{v:?}");
    assert!(v.machine.clone().unwrap().deprecated);
    assert!(v.cpu.clone().unwrap().deprecated);
}

#[test]
fn cpus_above_cpu_max_is_a_problem() {
    let ok = check(
        &doc(),
        &ask(|r| {
            r.machine = Some("pc".into());
            r.cpus = Some(255);
        }),
        None,
    );
    assert!(ok.ok);
    let v = check(
        &doc(),
        &ask(|r| {
            r.machine = Some("pc".into());
            r.cpus = Some(256);
        }),
        None,
    );
    assert!(!v.ok);
    assert!(v.problems[0].contains("256 vCPUs"), "{v:?}");
}

#[test]
fn an_unusable_cpu_names_its_blockers() {
    let v = check(&doc(), &ask(|r| r.cpu = Some("Skylake".into())), None);
    assert!(!v.ok);
    let c = v.cpu.clone().unwrap();
    assert_eq!((c.ok, c.usable), (false, Some(false)));
    assert_eq!(c.blockers, ["avx512f"]);
    assert_eq!(
        v.problems,
        ["cpu Skylake is not usable under kvm on this host: missing avx512f"]
    );
}

#[test]
fn usability_qemu_does_not_report_is_a_warning() {
    let mut d = doc();
    d.cpu_models.push(cpu("cortex-a57", None, &[]));
    let v = check(&d, &ask(|r| r.cpu = Some("cortex-a57".into())), None);
    assert!(v.ok);
    assert_eq!(v.cpu.clone().unwrap().usable, None);
    assert!(v.warnings[0].contains("does not report"), "{v:?}");
}

#[test]
fn another_accelerator_is_answered_from_its_pass() {
    let mut d = doc();
    d.other_accels.insert(
        "tcg".into(),
        AccelPass {
            error: None,
            cpu_models: vec![
                CpuUsability {
                    name: "Haswell".into(),
                    usable: Some(false),
                    unavailable_features: vec!["hle".into(), "rtm".into()],
                },
                CpuUsability {
                    name: "Skylake".into(),
                    usable: Some(true),
                    unavailable_features: vec![],
                },
            ],
        },
    );
    let tcg = |cpu: &str| {
        check(
            &d,
            &ask(|r| {
                r.cpu = Some(cpu.into());
                r.accel = Some(Accel::Tcg);
            }),
            None,
        )
    };
    let v = tcg("Haswell");
    assert!(!v.ok);
    assert_eq!(v.accel, "tcg");
    assert_eq!(
        v.problems,
        ["cpu Haswell is not usable under tcg on this host: missing hle, rtm"]
    );
    assert!(tcg("Skylake").ok);
}

#[test]
fn an_accelerator_that_cannot_run_is_a_problem() {
    let mut d = doc();
    d.accel = "tcg".into();
    d.other_accels.insert(
        "kvm".into(),
        AccelPass {
            error: Some("/dev/kvm is missing".into()),
            cpu_models: vec![],
        },
    );
    let v = check(&d, &ask(|r| r.accel = Some(Accel::Kvm)), None);
    assert!(!v.ok);
    assert_eq!(
        v.problems,
        ["QEMU cannot run under kvm here: /dev/kvm is missing"]
    );
}

#[test]
fn an_accelerator_never_probed_is_unknown_not_guessed() {
    let v = check(
        &doc(),
        &ask(|r| {
            r.cpu = Some("Skylake".into());
            r.accel = Some(Accel::Tcg);
        }),
        None,
    );
    assert!(v.ok, "no problem is invented: {v:?}");
    let c = v.cpu.clone().unwrap();
    assert_eq!(c.usable, None);
    assert!(c.blockers.is_empty());
    assert!(v.warnings[0].contains("tcg was not probed"), "{v:?}");
}

#[test]
fn devices_by_name_or_alias() {
    let v = check(
        &doc(),
        &ask(|r| r.devices = vec!["qxl".into(), "virtio-blk".into(), "apic".into()]),
        None,
    );
    assert!(!v.ok);
    assert!(v.devices[0].ok);
    assert_eq!(v.devices[1].resolved.as_deref(), Some("virtio-blk-pci"));
    assert!(!v.devices[2].ok);
    assert_eq!(v.problems.len(), 1);
    assert!(v.problems[0].contains("'apic'"), "{v:?}");
}

#[test]
fn a_superset_device_list_is_a_warning() {
    let mut d = doc();
    d.devices_source = Some(DevicesSource::QomListTypes);
    let v = check(&d, &ask(|r| r.devices = vec!["qxl".into()]), None);
    assert!(v.ok);
    assert!(v.warnings[0].contains("qom-list-types"), "{v:?}");
}

#[test]
fn stale_data_is_said() {
    let v = check(&doc(), &CheckRequest::default(), Some("timeout"));
    assert!(v.ok);
    assert!(v.warnings[0].starts_with("stale:"), "{v:?}");
    assert!(v.warnings[0].contains("timeout"));
}

#[test]
fn hostile_names_are_echoed_bounded_and_printable() {
    let name = format!("\u{1b}[31m{}", "x".repeat(500));
    let v = check(&doc(), &ask(|r| r.cpu = Some(name)), None);
    assert!(!v.problems[0].contains('\u{1b}'));
    assert!(v.problems[0].len() < 200, "{}", v.problems[0]);
}

#[test]
fn edit_distance_counts_edits() {
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("abc", "abc"), 0);
}

fn flags(list: &[(&str, bool)]) -> Vec<CpuFlag> {
    list.iter()
        .map(|&(name, on)| CpuFlag {
            name: name.to_owned(),
            on,
        })
        .collect()
}

/// A running VM's `-cpu Haswell,-hle,-rtm`: the blockers it turns off
/// are gone; one it turns on that the document calls missing stays a
/// problem; one the document knows nothing of is a warning, not a guess.
#[test]
fn explicit_cpu_flags_turn_blockers_off_and_unknown_ones_are_said() {
    let mut d = doc();
    d.cpu_models
        .push(cpu("Haswell-x", Some(false), &["hle", "rtm"]));
    let asked = |list: &[(&str, bool)]| {
        check(
            &d,
            &ask(|r| {
                r.cpu = Some("Haswell-x".into());
                r.cpu_flags = flags(list);
            }),
            None,
        )
    };
    let v = asked(&[("hle", false), ("rtm", false)]);
    assert!(v.ok, "{v:?}");
    assert_eq!(v.cpu.clone().unwrap().usable, Some(true));
    assert!(v.warnings.is_empty(), "{v:?}");
    let v = asked(&[("hle", false)]);
    assert!(!v.ok);
    assert!(v.problems[0].ends_with("missing rtm"), "{v:?}");
    let v = asked(&[("hle", false), ("rtm", true)]);
    assert!(!v.ok, "rtm asked for and missing: {v:?}");
    let v = asked(&[
        ("hle", false),
        ("rtm", false),
        ("vmx", true),
        ("pdpe1gb", true),
    ]);
    assert!(v.ok);
    assert!(
        v.warnings[0].contains("2 more feature(s) (vmx, pdpe1gb)"),
        "{v:?}"
    );
    // QEMU spells features with `_` or `-` alike.
    let mut d2 = doc();
    d2.cpu_models
        .push(cpu("Cascade", Some(false), &["avx512-vnni"]));
    let v = check(
        &d2,
        &ask(|r| {
            r.cpu = Some("Cascade".into());
            r.cpu_flags = flags(&[("avx512_vnni", false)]);
        }),
        None,
    );
    assert!(v.ok, "{v:?}");
}
