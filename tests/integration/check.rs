//! The admission check: its verdicts against QEMU itself (real QEMU starts
//! the VM the check was asked about) and against libvirt's parses of the
//! recorded probes; `/v1/check` over HTTP (hostile queries, emulator
//! choice, no answer yet, stale data) and `qcapsd check`'s exit codes; and
//! the default accelerators (a TCG pass where KVM works).

use crate::common::{self, CpuKey, Http, InProcess, count, libvirt_cpus};
use qcapsd::qemu::Capabilities;
use qcapsd::verdicts::check::{CheckRequest, check};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One VM to ask about.
#[derive(Debug, Clone)]
struct Vm {
    machine: String,
    cpu: Option<String>,
    accel: &'static str,
    devices: Vec<String>,
    cpus: Option<u64>,
}

impl Vm {
    fn query(&self) -> String {
        let mut q = format!(
            "/v1/check?emulator=x86_64&machine={}&accel={}",
            self.machine, self.accel
        );
        if let Some(c) = &self.cpu {
            q += &format!("&cpu={c}");
        }
        for d in &self.devices {
            q += &format!("&device={d}");
        }
        if let Some(n) = self.cpus {
            q += &format!("&cpus={n}");
        }
        q
    }
}

/// What QEMU says when it starts this VM stopped (`-S`): `Ok` if it answers
/// `query-status`, else its last words on stderr. Started by the test
/// itself, not through qcapsd.
fn qemu_starts(bin: &Path, vm: &Vm) -> Result<(), String> {
    let mut args: Vec<String> = [
        "-S",
        "-nodefaults",
        "-nographic",
        "-machine",
        &format!("{},accel={}", vm.machine, vm.accel),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(c) = &vm.cpu {
        args.extend(["-cpu".into(), format!("{c},enforce")]);
    }
    for d in &vm.devices {
        args.extend(["-device".into(), d.clone()]);
    }
    if let Some(n) = vm.cpus {
        args.extend(["-smp".into(), n.to_string()]);
    }
    common::qemu_starts(bin, &args).map_err(|err| {
        err.lines()
            .last()
            .unwrap_or("(nothing on stderr)")
            .to_owned()
    })
}

/// The nested-virtualisation fault some hosts have: the outer hypervisor
/// refuses an MSR value KVM reported for the host-passthrough models, and
/// QEMU asserts while setting up the vCPU. QEMU reports those models usable
/// (so does the check): nothing in a probe can see it.
fn nested_kvm_msr_fault(stderr_last_line: &str) -> bool {
    stderr_last_line.contains("kvm_buf_set_msrs")
}

/// A sample of VMs over the real x86_64 document: machines by alias, by
/// name, deprecated, unusual and unknown; CPU models usable and not under
/// each accelerator, and unknown; devices that need no backend, an alias,
/// one that does not exist and one `-device` refuses; vCPU counts at and
/// over the limit.
fn sample(caps: &Capabilities, accels: &[&'static str]) -> Vec<Vm> {
    let resolve = |alias: &str| {
        caps.machines
            .iter()
            .find(|m| m.alias.as_deref() == Some(alias))
            .map(|m| m.name.clone())
            .unwrap()
    };
    let deprecated = |prefix: &str| {
        caps.machines
            .iter()
            .filter(|m| m.deprecated && m.name.starts_with(prefix))
            .map(|m| m.name.clone())
            .next()
            .unwrap_or_else(|| panic!("no deprecated {prefix} machine"))
    };
    let machines = [
        "q35".to_owned(),
        "pc".to_owned(),
        resolve("q35"),
        deprecated("pc-q35-"),
        deprecated("pc-i440fx-"),
        "isapc".to_owned(),
        "microvm".to_owned(),
        "pc-q35-99.9".to_owned(),
    ];
    let mut vms = Vec::new();
    for &accel in accels {
        // Usability under this accelerator, as the document has it.
        let under: Vec<(String, Option<bool>)> = if caps.accel == accel {
            caps.cpu_models
                .iter()
                .map(|m| (m.name.clone(), m.usable))
                .collect()
        } else {
            caps.other_accels[accel]
                .cpu_models
                .iter()
                .map(|m| (m.name.clone(), m.usable))
                .collect()
        };
        let pick = |usable: bool, n: usize| -> Vec<String> {
            under
                .iter()
                .filter(|(_, u)| *u == Some(usable))
                .map(|(n, _)| n.clone())
                .take(n)
                .collect()
        };
        let mut cpus = pick(true, 4);
        cpus.extend(pick(false, 3));
        cpus.push("NoSuchCPU".to_owned());
        for m in &machines {
            for c in &cpus {
                vms.push(Vm {
                    machine: m.clone(),
                    cpu: Some(c.clone()),
                    accel,
                    devices: vec![],
                    cpus: None,
                });
            }
        }
        let plain = pick(true, 8)
            .into_iter()
            .find(|c| c != "host" && c != "max")
            .unwrap();
        for m in ["q35", "pc"] {
            for devices in [
                &["virtio-rng-pci"][..],
                &["virtio-net-pci", "virtio-rng-pci"],
                &["virtio-net"],
                &["no-such-device"],
                &["apic"],
            ] {
                vms.push(Vm {
                    machine: m.to_owned(),
                    cpu: Some(plain.clone()),
                    accel,
                    devices: devices.iter().map(|d| (*d).to_owned()).collect(),
                    cpus: None,
                });
            }
        }
        for (m, n) in [("pc", 2), ("pc", 256), ("q35", 2)] {
            vms.push(Vm {
                machine: m.to_owned(),
                cpu: None,
                accel,
                devices: vec![],
                cpus: Some(n),
            });
        }
        let q35_max = caps
            .machines
            .iter()
            .find(|m| m.alias.as_deref() == Some("q35"))
            .unwrap()
            .cpu_max;
        vms.push(Vm {
            machine: "q35".to_owned(),
            cpu: None,
            accel,
            devices: vec![],
            cpus: Some(q35_max + 1),
        });
    }
    vms
}

#[ignore = "needs QEMU"]
#[test]
fn verdicts_match_qemu_starting_the_vm() {
    let bin = common::real_qemu("qemu-system-x86_64");
    let d = tempfile::tempdir().unwrap();
    let agent = InProcess::start(
        d.path(),
        &format!(
            "accels: [kvm, tcg]\nemulators:\n  - path: {}\n    name: x86_64\n",
            bin.display()
        ),
    );
    let doc = agent.get("/v1/emulators/x86_64").json();
    let caps = qcapsd::verdicts::compare::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
    // Where KVM works, the agent probed both; where it does not, QEMU
    // refuses every kvm VM and the check must say no to each.
    let kvm = common::kvm_usable();
    assert_eq!(caps.accel, if kvm { "kvm" } else { "tcg" });
    let vms = sample(&caps, &["kvm", "tcg"]);
    assert!(vms.len() >= 60, "{} combinations", vms.len());
    let verdicts: Vec<(Vm, Value)> = vms
        .into_iter()
        .map(|vm| {
            let r = agent.get(&vm.query());
            assert_eq!(r.status, 200, "{}: {}", vm.query(), r.text());
            (vm, r.json())
        })
        .collect();
    // QEMU, two at a time.
    let results = common::two_at_a_time(&verdicts, |(vm, _)| qemu_starts(&bin, vm));
    let mut mismatches = Vec::new();
    let mut environment = Vec::new();
    let (mut yes, mut no) = (0, 0);
    for ((vm, verdict), started) in verdicts.iter().zip(&results) {
        let ok = verdict["ok"].as_bool().unwrap();
        if ok {
            yes += 1;
        } else {
            no += 1;
        }
        match (ok, started) {
            (true, Ok(())) | (false, Err(_)) => {}
            (true, Err(e))
                if vm.accel == "kvm"
                    && matches!(vm.cpu.as_deref(), Some("host" | "max"))
                    && nested_kvm_msr_fault(e) =>
            {
                environment.push(format!("{vm:?}: {e}"));
            }
            (true, Err(e)) => mismatches.push(format!("check ok, QEMU refused {vm:?}: {e}")),
            (false, Ok(())) => mismatches.push(format!(
                "check said no ({}), QEMU started {vm:?}",
                verdict["problems"]
            )),
        }
    }
    if !environment.is_empty() {
        eprintln!(
            "{} combinations hit this host's nested-KVM MSR fault (not a verdict error):\n  {}",
            environment.len(),
            environment.join("\n  ")
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} verdicts disagree with QEMU:\n  {}",
        mismatches.len(),
        verdicts.len(),
        mismatches.join("\n  ")
    );
    assert!(
        yes >= 20 && no >= 20,
        "a sample of both: {yes} ok, {no} not"
    );
}

async fn probe_both_accels(transcript: &Path) -> Capabilities {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::replay_emulator(dir.path(), "qemu-system-replay", transcript);
    common::probe_kvm_and_tcg(&bin, "replay")
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", transcript.display()))
}

/// For every recorded probe, the check's verdict on each CPU model, under
/// each accelerator libvirt recorded, is libvirt's usable/blockers.
#[tokio::test]
async fn cpu_verdicts_of_recorded_probes_equal_libvirt_s() {
    for t in common::all_transcripts() {
        let xml =
            common::parse_libvirt_xml(&std::fs::read_to_string(t.with_extension("xml")).unwrap());
        let caps = probe_both_accels(&t).await;
        for typ in ["kvm", "tcg"] {
            let expected: BTreeSet<CpuKey> = libvirt_cpus(&xml, typ);
            if expected.is_empty() {
                continue;
            }
            let got: BTreeSet<CpuKey> = expected
                .iter()
                .map(|(name, _, _)| {
                    let v = check(
                        &caps,
                        &CheckRequest {
                            cpu_flags: Vec::new(),
                            cpu_lenient: false,
                            cpu: Some(name.clone()),
                            accel: Some(typ.parse().unwrap()),
                            ..CheckRequest::default()
                        },
                        None,
                    );
                    let cpu = v.cpu.unwrap();
                    assert_eq!(
                        cpu.ok,
                        cpu.usable != Some(false),
                        "{}: {name} under {typ}: {:?}",
                        t.display(),
                        v.problems
                    );
                    let mut b = cpu.blockers;
                    b.sort();
                    (name.clone(), cpu.usable, b)
                })
                .collect();
            assert_eq!(got, expected, "{} under {typ}", t.display());
        }
    }
}

struct Setup {
    agent: InProcess,
    count: PathBuf,
    _dir: tempfile::TempDir,
}

fn replayed(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (x86, count) = common::stand_in(
        dir.path(),
        "qemu-system-x86_64",
        "caps_10.0.0_x86_64.replies",
    );
    let (arm, _) = common::stand_in(
        dir.path(),
        "qemu-system-aarch64",
        "caps_8.2.0_aarch64.replies",
    );
    let agent = InProcess::start(
        dir.path(),
        &format!(
            "emulators:\n  - path: {}\n    name: x86_64\n  - path: {}\n    name: aarch64\n{extra}",
            x86.display(),
            arm.display()
        ),
    );
    Setup {
        agent,
        count,
        _dir: dir,
    }
}

#[test]
fn hostile_check_queries_get_400_and_cause_no_exec() {
    let s = replayed("");
    let a = &s.agent;
    let before = count(&s.count);
    let long = "x".repeat(10_000);
    let hostile = [
        "/v1/check?emulator=x86_64&cpu=a&cpu=b".to_owned(),
        "/v1/check?emulator=x86_64&emulator=aarch64".to_owned(),
        "/v1/check?emulator=x86_64&arch=x86_64".to_owned(),
        format!("/v1/check?emulator=x86_64&cpu={long}"),
        format!("/v1/check?emulator=x86_64&machine={}", "y".repeat(300)),
        "/v1/check?emulator=x86_64&cpu=%FF%FE".to_owned(),
        "/v1/check?emulator=x86_64&cpu=%00".to_owned(),
        "/v1/check?emulator=x86_64&device=%".to_owned(),
        "/v1/check?emulator=x86_64&accel=hvf".to_owned(),
        "/v1/check?emulator=x86_64&cpus=0".to_owned(),
        "/v1/check?emulator=x86_64&cpus=99999999999999999999999".to_owned(),
        "/v1/check?emulator=x86_64&cpu=".to_owned(),
        "/v1/check?emulator=x86_64&bogus=1".to_owned(),
        "/v1/check".to_owned(),
    ];
    for q in &hostile {
        let r = a.get(q);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let r = common::raw_http(
        a.port,
        b"GET /v1/check?emulator=x86_64&cpu=\xff\xfe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    let unknown = a.get("/v1/check?emulator=../../bin/sh");
    assert_eq!(unknown.status, 404);
    assert_eq!(count(&s.count), before, "no query caused an exec");
}

#[test]
fn arch_picks_the_emulator_and_an_ambiguous_one_names_the_choices() {
    let s = replayed("");
    let a = &s.agent;
    let v = a
        .get("/v1/check?arch=aarch64&machine=virt&cpu=cortex-a57")
        .json();
    assert_eq!(v["emulator"], "aarch64");
    let v = a.get("/v1/check?arch=x86_64&machine=q35&cpu=qemu64&device=virtio-net-pci");
    assert_eq!(v.status, 200);
    let v = v.json();
    assert_eq!(v["emulator"], "x86_64");
    assert_eq!(v["machine"]["resolved"], "pc-q35-10.0");
    assert_eq!(a.get("/v1/check?arch=s390x").status, 404);
    let none = a.get("/v1/check?machine=q35");
    assert_eq!(none.status, 400);
    assert!(none.text().contains("aarch64, x86_64"), "{}", none.text());

    // Two emulators of one architecture: arch is ambiguous.
    let dir = tempfile::tempdir().unwrap();
    let (one, _) = common::stand_in(dir.path(), "qemu-a", "caps_10.0.0_x86_64.replies");
    let (two, _) = common::stand_in(dir.path(), "qemu-b", "caps_9.1.0_x86_64.replies");
    let agent = InProcess::start(
        dir.path(),
        &format!(
            "emulators:\n  - path: {}\n  - path: {}\n",
            one.display(),
            two.display()
        ),
    );
    let r = agent.get("/v1/check?arch=x86_64&machine=q35");
    assert_eq!(r.status, 400);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("qemu-a, qemu-b") && msg.contains("emulator="),
        "{msg}"
    );
}

/// Debian's qemu-system-x86 ships qemu-system-x86_64-microvm beside
/// qemu-system-x86_64: `arch=x86_64` picks the one named for the
/// architecture and says so, over HTTP and in `qcapsd check`.
#[test]
fn arch_picks_qemu_system_arch_over_the_microvm_build_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (x86, _) = common::stand_in(
        dir.path(),
        "qemu-system-x86_64",
        "caps_10.0.0_x86_64.replies",
    );
    let (micro, _) = common::stand_in(
        dir.path(),
        "qemu-system-x86_64-microvm",
        "caps_9.1.0_x86_64.replies",
    );
    let agent = InProcess::start(
        dir.path(),
        &format!(
            "emulators:\n  - path: {}\n  - path: {}\n",
            x86.display(),
            micro.display()
        ),
    );
    let r = agent.get("/v1/check?arch=x86_64&machine=q35");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["emulator"], "qemu-system-x86_64");
    let picked = v["picked"].as_str().unwrap();
    assert!(picked.contains("qemu-system-x86_64-microvm"), "{picked}");
    let out = common::qcapsd(&[
        "check",
        "--addr",
        &format!("http://127.0.0.1:{}", agent.port),
        "--arch",
        "x86_64",
        "--machine",
        "q35",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("ok: qemu-system-x86_64 can run") && text.contains("picked:"),
        "{text}"
    );
}

#[test]
fn no_answer_yet_is_503_and_stale_data_answers_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // An emulator that never answers: pending, then failed with no data.
    let hang = common::script(dir.path(), "qemu-hang", "sleep 600");
    let agent = InProcess::spawn(
        dir.path(),
        &format!(
            "probe_timeout: 2s\nhttp:\n  request_timeout: 1s\nemulators:\n  - path: {}\n",
            hang.display()
        ),
    );
    common::wait_ready(agent.port);
    let r = agent.get("/v1/check?emulator=qemu-hang&machine=q35");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"].is_string());
    agent.stop().unwrap();

    // Stale: a good probe, then the binary changes into one that fails.
    let dir = tempfile::tempdir().unwrap();
    let (agent, x86, _) = InProcess::with_x86(
        dir.path(),
        "caps_10.0.0_x86_64.replies",
        "probe_timeout: 2s\nrevalidate_interval: 1h\n",
    );
    assert_eq!(
        agent.get("/v1/check?emulator=x86_64&machine=q35").json()["ok"],
        true
    );
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'qemu: cannot start' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &x86).unwrap();
    let mut v = Value::Null;
    assert!(
        common::poll_until(|| {
            v = agent.get("/v1/check?emulator=x86_64&machine=q35").json();
            v["warnings"].as_array().is_some_and(|w| !w.is_empty())
        }),
        "no stale warning: {v}"
    );
    assert_eq!(v["ok"], true, "the last good data still answers");
    let w = v["warnings"][0].as_str().unwrap();
    assert!(w.starts_with("stale:") && w.contains("cannot start"), "{w}");
}

#[test]
fn qcapsd_check_prints_the_verdict_and_exits_0_1_64_69() {
    let s = replayed("");
    let addr = format!("127.0.0.1:{}", s.agent.port);
    let run = |args: &[&str]| {
        let mut all = vec!["check", "--addr", addr.as_str()];
        all.extend_from_slice(args);
        common::qcapsd(&all)
    };
    let ok = run(&[
        "x86_64",
        "--machine",
        "q35",
        "--cpu",
        "qemu64",
        "--device",
        "virtio-blk-pci",
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.starts_with("ok: x86_64 can run"), "{text}");
    let no = run(&[
        "--arch",
        "x86_64",
        "--machine",
        "q35",
        "--cpu",
        "Haswel",
        "--json",
    ]);
    assert_eq!(no.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&no.stdout).unwrap();
    assert_eq!(v["cpu"]["suggestions"][0], "Haswell");
    let not_usable = run(&["x86_64", "--cpu", "EPYC-Genoa"]);
    assert_eq!(not_usable.status.code(), Some(1));
    let text = String::from_utf8_lossy(&not_usable.stdout);
    assert!(
        text.starts_with("NO:") && text.contains("problem: cpu EPYC-Genoa is not usable"),
        "{text}"
    );
    assert_eq!(run(&["nope"]).status.code(), Some(64), "unknown emulator");
    assert_eq!(
        run(&["--machine", "q35"]).status.code(),
        Some(64),
        "which emulator?"
    );
    assert_eq!(
        run(&["x86_64", "--cpus", "0"]).status.code(),
        Some(64),
        "refused by the CLI"
    );
    let gone = common::qcapsd(&[
        "check",
        "--addr",
        &format!("127.0.0.1:{}", common::free_port()),
        "x86_64",
    ]);
    assert_eq!(gone.status.code(), Some(69));
}

/// The default `accels: [kvm, tcg]`: where KVM works (a fixture host with
/// a /dev/kvm), one more exec per probe answers checks under TCG; where it
/// does not, one exec under TCG, and a check under KVM says why not.
#[test]
fn default_accels_answer_both_accelerators_from_qemu() {
    for kvm in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        std::fs::create_dir_all(host.join("dev")).unwrap();
        if kvm {
            std::fs::write(host.join("dev/kvm"), "").unwrap();
        }
        let (agent, _, execs) = InProcess::with_x86(
            dir.path(),
            "caps_10.0.0_x86_64.replies",
            &format!("host_root: {}\naccels: [kvm, tcg]\n", host.display()),
        );
        let doc = agent.get("/v1/emulators/x86_64").json();
        let xml = common::parse_libvirt_xml(
            &std::fs::read_to_string(common::transcript("caps_10.0.0_x86_64.xml")).unwrap(),
        );
        // Haswell-v1 under TCG, as libvirt recorded it.
        let (_, tcg_usable, mut tcg_blockers) = libvirt_cpus(&xml, "tcg")
            .into_iter()
            .find(|(n, _, _)| n == "Haswell-v1")
            .unwrap();
        tcg_blockers.sort();
        let tcg = agent
            .get("/v1/check?emulator=x86_64&cpu=Haswell-v1&accel=tcg")
            .json();
        assert_eq!(tcg["cpu"]["usable"], serde_json::json!(tcg_usable));
        let mut got: Vec<String> = serde_json::from_value(tcg["cpu"]["blockers"].clone()).unwrap();
        got.sort();
        assert_eq!(got, tcg_blockers);
        assert!(tcg["warnings"].as_array().unwrap().is_empty(), "{tcg}");
        let on_kvm = agent.get("/v1/check?emulator=x86_64&accel=kvm").json();
        if kvm {
            assert_eq!(count(&execs), 2, "a KVM pass and a TCG pass");
            assert_eq!(doc["probe"]["execs"], 2);
            assert_eq!(doc["accel"], "kvm");
            assert!(doc["other_accels"]["tcg"]["error"].is_null());
            assert_eq!(on_kvm["ok"], true, "{on_kvm}");
        } else {
            assert_eq!(count(&execs), 1, "TCG only");
            assert_eq!(doc["probe"]["execs"], 1);
            assert_eq!(doc["accel"], "tcg");
            assert!(
                doc["other_accels"]["kvm"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("/dev/kvm")
            );
            assert_eq!(on_kvm["ok"], false);
            assert!(
                on_kvm["problems"][0]
                    .as_str()
                    .unwrap()
                    .contains("cannot run under kvm"),
                "{on_kvm}"
            );
        }
        // One accelerator only: the other is unknown, never guessed.
        let one = tempfile::tempdir().unwrap();
        let (agent, _, _) = InProcess::with_x86(
            one.path(),
            "caps_10.0.0_x86_64.replies",
            &format!("host_root: {}\naccels: [tcg]\n", host.display()),
        );
        let v = agent
            .get("/v1/check?emulator=x86_64&cpu=Haswell-v1&accel=kvm")
            .json();
        assert_eq!(v["cpu"]["usable"], Value::Null);
        assert!(
            v["warnings"][0]
                .as_str()
                .unwrap()
                .contains("kvm was not probed"),
            "{v}"
        );
    }
}
