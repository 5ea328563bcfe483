//! Issue 22: the running VMs. Real QEMU processes (TCG, and KVM where
//! this machine has it), started stopped with no disk, in the legacy and
//! the JSON `-device` syntax, are found and read right, judged against
//! the binary installed now (and found running a replaced one after a
//! rename) and against an older QEMU's document; QEMU confirms verdicts
//! once (`verify`), memoized across restarts; a VM started by a real
//! libvirtd is read right; hostile command lines get verdicts.

use crate::common::{self, Http, InProcess, TestVm, vm_of};
use serde_json::Value;
use std::path::{Path, PathBuf};

const UUID: &str = "c7a5fdbd-edaf-9455-926a-d65c16db1809";

/// A copy of the real qemu-system-x86_64 in `dir/bin`, to replace later.
fn x86_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join("qemu-system-x86_64");
    std::fs::copy(common::real_qemu("qemu-system-x86_64"), &path).unwrap();
    path
}

fn agent_over(dir: &Path, bins: &[(&Path, &str)]) -> InProcess {
    let mut yaml = String::from("accels: [kvm, tcg]\nrevalidate_interval: 1h\nemulators:\n");
    for (b, name) in bins {
        yaml += &format!("  - path: {}\n    name: {name}\n", b.display());
    }
    InProcess::start(dir, &yaml)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "needs QEMU"]
fn running_vms_are_read_right_and_a_replaced_binary_is_said() {
    let d = tempfile::tempdir().unwrap();
    let bin = x86_copy(d.path());
    let agent = agent_over(d.path(), &[(&bin, "x86_64")]);
    let mut legacy = TestVm::qemu(
        &bin,
        &[
            "-name",
            "guest=legacy,debug-threads=on",
            "-machine",
            "pc-q35-10.0,accel=tcg",
            "-cpu",
            "qemu64,+pdpe1gb,-svm",
            "-smp",
            "2,maxcpus=4",
            "-device",
            "virtio-rng-pci",
            "-device",
            "e1000,id=nic0",
            "-uuid",
            UUID,
        ],
    );
    let mut json = TestVm::qemu(
        &bin,
        &[
            "-name",
            "json",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-device",
            r#"{"driver":"virtio-net-pci","id":"n1"}"#,
            "-device",
            r#"{"driver":"virtio-balloon-pci","id":"b0"}"#,
        ],
    );
    let mut kvm = common::kvm_usable().then(|| {
        TestVm::qemu(
            &bin,
            &[
                "-name",
                "kvm",
                "-machine",
                "q35",
                "-accel",
                "kvm",
                "-device",
                "virtio-rng-pci",
            ],
        )
    });
    let list = agent.get("/v1/vms").json();
    let v = vm_of(&list, legacy.pid());
    assert_eq!(v["name"], "legacy");
    assert_eq!(v["uuid"], UUID);
    assert_eq!(v["emulator"], "x86_64");
    assert_eq!(v["binary_replaced"], false);
    let c = &v["command"];
    assert_eq!(c["machine"], "pc-q35-10.0");
    assert_eq!(strings(&c["accels"]), ["tcg"]);
    assert_eq!(c["cpu"], "qemu64");
    assert_eq!(strings(&c["cpu_flags"]), ["+pdpe1gb", "-svm"]);
    assert_eq!(c["cpus"], 4);
    assert_eq!(strings(&c["devices"]), ["virtio-rng-pci", "e1000"]);
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["problems"], serde_json::json!([]));
    let j = vm_of(&list, json.pid());
    assert_eq!(j["name"], "json");
    assert_eq!(
        strings(&j["command"]["devices"]),
        ["virtio-net-pci", "virtio-balloon-pci"]
    );
    assert!(
        j["check"]["machine"]["resolved"]
            .as_str()
            .unwrap()
            .starts_with("pc-q35-"),
        "{j}"
    );
    assert_eq!(j["verdict"], "ok", "{j}");
    let mut vms = 2;
    if let Some(k) = &kvm {
        let k = vm_of(&list, k.pid());
        assert_eq!(strings(&k["command"]["accels"]), ["kvm"]);
        assert_eq!(k["verdict"], "ok", "{k}");
        vms += 1;
    }
    assert_eq!(list["vms"].as_array().unwrap().len(), vms, "{list}");
    // The same answer has the same ETag.
    let first = agent.get("/v1/vms");
    let etag = first.header("etag").unwrap().to_owned();
    assert_eq!(
        agent
            .request("GET", "/v1/vms", &[("If-None-Match", &etag)])
            .status,
        304
    );
    let series = |v: &str| format!("qcapsd_vms{{emulator=\"x86_64\",verdict=\"{v}\"}}");
    assert_eq!(agent.metric(&series("ok")), Some(vms as f64));
    let addr = format!("127.0.0.1:{}", agent.port);
    let out = common::qcapsd(&["vms", "--addr", &addr]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.starts_with("VM ") && table.contains("legacy") && table.contains("pc-q35-10.0"),
        "{table}"
    );

    // A package upgrade renames a new binary over the old one: the VMs run
    // on, on a file that is no longer installed.
    let new = bin.with_file_name(".qemu-system-x86_64.dpkg-new");
    std::fs::copy(&bin, &new).unwrap();
    std::fs::rename(&new, &bin).unwrap();
    assert!(
        common::poll_until(|| {
            let l = agent.get("/v1/vms").json();
            l["vms"].as_array().unwrap().len() == vms
                && l["vms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|v| v["verdict"] == "binary_replaced")
        }),
        "{}",
        agent.get("/v1/vms").text()
    );
    let list = agent.get("/v1/vms").json();
    let v = vm_of(&list, legacy.pid());
    assert_eq!(v["binary_replaced"], true);
    assert!(v["binary"].as_str().unwrap().ends_with(" (deleted)"), "{v}");
    assert!(
        v["warnings"][0].as_str().unwrap().contains("replaced"),
        "{v}"
    );
    assert_eq!(agent.metric(&series("binary_replaced")), Some(vms as f64));
    assert_eq!(agent.metric(&series("ok")), Some(0.0));
    let out = common::qcapsd(&["vms", "--addr", &addr]);
    assert!(out.status.success(), "a replaced binary still starts");
    assert!(String::from_utf8_lossy(&out.stdout).contains("binary_replaced"));
    assert!(legacy.running() && json.running());
    assert!(kvm.as_mut().is_none_or(TestVm::running));
}

/// The pre-flight of an upgrade or a migration: `qcapsd probe` of another
/// QEMU (here an older one, replayed from libvirt's recording of QEMU
/// 9.1), then the VMs judged against it: the VM's newer machine type is
/// the problem. Against this QEMU's own document, the same VM is fine.
#[test]
#[ignore = "needs QEMU"]
fn against_an_older_qemu_the_vm_s_newer_machine_type_is_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let x86 = common::real_qemu("qemu-system-x86_64");
    let agent = agent_over(d.path(), &[(&x86, "x86_64")]);
    let vm = TestVm::qemu(
        &x86,
        &["-name", "newer", "-machine", "pc-q35-10.0", "-accel", "tcg"],
    );
    let probe = |bin: &Path, out: &Path| {
        let o = common::qcapsd(&["probe", bin.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(out, &o.stdout).unwrap();
        o.stdout
    };
    let replay = common::replay_emulator(
        d.path(),
        "qemu-system-x86_64",
        &common::transcript("caps_9.1.0_x86_64.replies"),
    );
    let old = d.path().join("qemu-9.1.json");
    let old_doc = probe(&replay, &old);
    let addr = format!("127.0.0.1:{}", agent.port);
    let out = common::qcapsd(&["vms", "--addr", &addr, "--against", old.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("newer") && text.contains("would_fail") && text.contains("pc-q35-10.0"),
        "{text}"
    );
    let r = agent.post("/v1/vms/against?label=qemu-9.1.json", &old_doc);
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    assert_eq!(list["against"]["label"], "qemu-9.1.json");
    assert_eq!(list["against"]["qemu_version"], "9.1.0");
    let v = vm_of(&list, vm.pid());
    assert_eq!(v["verdict"], "would_fail", "{v}");
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("no machine type 'pc-q35-10.0'"),
        "{v}"
    );
    // Against the QEMU it runs on: it would start.
    let now = probe(&x86, &d.path().join("now.json"));
    let v = agent.post("/v1/vms/against", &now).json();
    assert_eq!(vm_of(&v, vm.pid())["verdict"], "ok", "{v}");
    // Another architecture's document: the x86 VM is left out, counted.
    let arm = common::replay_emulator(
        d.path(),
        "qemu-system-aarch64",
        &common::transcript("caps_8.2.0_aarch64.replies"),
    );
    let arm_doc = probe(&arm, &d.path().join("arm.json"));
    let l = agent.post("/v1/vms/against", &arm_doc).json();
    assert_eq!(l["vms"], serde_json::json!([]));
    assert_eq!(l["skipped"]["other_arch"], 1);
    // What cannot be: verifying another host's document, a body that is no
    // document, one over the limit.
    let r = agent.post("/v1/vms/against?verify=true", &old_doc);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("cannot be verified here"), "{}", r.text());
    for bad in [&b"{}"[..], b"[1,2]", b"\xff", b""] {
        let r = agent.post("/v1/vms/against", bad);
        assert_eq!(r.status, 400, "{:?}: {}", bad, r.text());
    }
    // Refused on its declared length, before a byte of it is read.
    let over = common::raw_http(
        agent.port,
        format!(
            "POST /v1/vms/against HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            9 << 20
        )
        .as_bytes(),
    );
    assert_eq!(over.status, 413);
    assert_eq!(agent.request("GET", "/v1/vms/against", &[]).status, 405);
}

/// `verify`: QEMU's own answer, had once. hppa's B160L does not take
/// hppa64-cpu, which the document cannot know: the check says yes with a
/// warning, the verified check says no with QEMU's message. Asked again,
/// and after a restart, it costs no exec.
#[test]
#[ignore = "needs QEMU"]
fn a_verified_verdict_is_qemu_s_word_had_once_and_kept_across_restarts() {
    let d = tempfile::tempdir().unwrap();
    let count = d.path().join("hppa.count");
    let hppa = common::script(
        d.path(),
        "qemu-system-hppa",
        &format!(
            "echo x >> '{}'\nexec '{}' \"$@\"",
            count.display(),
            common::real_qemu("qemu-system-hppa").display()
        ),
    );
    let yaml = format!("emulators:\n  - path: {}\n", hppa.display());
    let agent = InProcess::start(d.path(), &yaml);
    let probes = common::count(&count);
    let ask = "/v1/check?emulator=qemu-system-hppa&machine=B160L&cpu=hppa64-cpu";
    let unverified = agent.get(ask).json();
    assert_eq!(unverified["ok"], true, "{unverified}");
    assert_eq!(unverified["verified"], false);
    assert_eq!(common::count(&count), probes, "no exec without verify");
    let verified = agent.get(&format!("{ask}&verify=true")).json();
    assert_eq!(verified["ok"], false, "{verified}");
    assert_eq!(verified["verified"], true);
    let said = verified["problems"][0].as_str().unwrap();
    assert!(
        said.starts_with("QEMU refuses it: ") && said.contains("hppa64-cpu"),
        "{said}"
    );
    assert_eq!(common::count(&count), probes + 1, "one exec");
    assert_eq!(agent.get(&format!("{ask}&verify=true")).json(), verified);
    assert_eq!(common::count(&count), probes + 1, "asked again: none");
    // One QEMU takes: a second argument list, a second exec.
    let takes = agent
        .get("/v1/check?emulator=qemu-system-hppa&machine=B160L&verify=true")
        .json();
    assert_eq!(
        (takes["ok"].clone(), takes["verified"].clone()),
        (true.into(), true.into()),
        "{takes}"
    );
    assert_eq!(common::count(&count), probes + 2);
    let cli = |args: &[&str]| {
        let addr = format!("127.0.0.1:{}", agent.port);
        let mut all = vec!["check", "--addr", &addr, "qemu-system-hppa"];
        all.extend_from_slice(args);
        common::qcapsd(&all)
    };
    let out = cli(&["--machine", "B160L", "--cpu", "hppa64-cpu", "--verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("QEMU refuses it"));
    let agent = agent.restart(&yaml);
    assert_eq!(agent.get(&format!("{ask}&verify=true")).json(), verified);
    assert_eq!(
        common::count(&count),
        probes + 2,
        "after a restart: no probe, no exec"
    );
    assert_eq!(
        agent.metric(
            "qcapsd_verifications_total{emulator=\"qemu-system-hppa\",result=\"answered\"}"
        ),
        Some(1.0)
    );
}

/// Issue 22's bad input: 1,000 devices, arguments that are not UTF-8,
/// JSON that does not read, an option without its value, and VMs that
/// exit while being read. Each VM gets a verdict or is counted; nothing
/// blocks the listing. (The stand-ins are a copy of Python named like the
/// emulator: processes of its binary that take any command line.)
#[test]
fn hostile_command_lines_get_verdicts_and_nothing_blocks_the_listing() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let py = common::python_copy(&bin, "qemu-system-x86_64");
    let agent = agent_over(d.path(), &[(&py, "x86_64")]);
    let mut thousand: Vec<&str> = vec!["-name", "thousand", "-machine", "q35"];
    for _ in 0..1000 {
        thousand.extend(["-device", "e1000"]);
    }
    let big = "x".repeat(100_000);
    for _ in 0..10 {
        thousand.extend(["-append", &big]);
    }
    let a = common::vms::arg;
    let vms = [
        ("thousand", TestVm::stand_in(&py, &thousand)),
        (
            "not-utf8",
            TestVm::stand_in(
                &py,
                &[
                    a(b"-name"),
                    a(b"not-utf8"),
                    a(b"-device"),
                    a(b"virtio-\xff"),
                ],
            ),
        ),
        (
            "not-json",
            TestVm::stand_in(&py, &["-name", "not-json", "-device", "{oops"]),
        ),
        (
            "no-driver",
            TestVm::stand_in(&py, &["-name", "no-driver", "-device", r#"{"driver":[1]}"#]),
        ),
        (
            "no-value",
            TestVm::stand_in(&py, &["-name", "no-value", "-cpu"]),
        ),
    ];
    // Short-lived processes of the emulator, exiting all the time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (py, stop) = (py.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new(&py)
                    .args(["-c", "pass", "-machine", "q35"])
                    .status();
            }
        })
    };
    for _ in 0..20 {
        let r = agent.get("/v1/vms");
        assert_eq!(r.status, 200);
        let list = r.json();
        for (name, vm) in &vms {
            let v = vm_of(&list, vm.pid());
            assert_eq!(v["verdict"], "unknown", "{name}: {v}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    let list = agent.get("/v1/vms").json();
    let problem = |name: &str| {
        let pid = vms.iter().find(|(n, _)| *n == name).unwrap().1.pid();
        vm_of(&list, pid)["problems"][0]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let t = vm_of(&list, vms[0].1.pid());
    assert_eq!(t["command"]["devices"].as_array().unwrap().len(), 1000);
    assert!(
        problem("thousand").starts_with("no capabilities to judge it by"),
        "{}",
        problem("thousand")
    );
    for (name, says) in [
        ("not-utf8", "-device is not UTF-8"),
        ("not-json", "not JSON"),
        ("no-driver", "no \"driver\" string"),
        ("no-value", "-cpu has no value"),
    ] {
        let p = problem(name);
        assert!(
            p.starts_with("its command line cannot be read") && p.contains(says),
            "{name}: {p}"
        );
    }
    assert_eq!(
        agent.metric("qcapsd_vms{emulator=\"x86_64\",verdict=\"unknown\"}"),
        Some(vms.len() as f64)
    );
}

/// A private libvirtd (its own sockets and log; virtlogd beside it) and
/// one small domain it starts paused, with no disk, under TCG (libvirt's
/// QEMU runs as its own user, who may not open this machine's /dev/kvm): the agent finds the
/// QEMU libvirt started and reads its command line right (JSON devices,
/// `-accel`, `-name guest=`), and QEMU confirms it would start again.
#[test]
#[ignore = "needs QEMU, libvirt and root"]
fn a_vm_started_by_libvirt_is_found_and_read_right() {
    let d = tempfile::tempdir().unwrap();
    let lv = Libvirt::start(d.path());
    let x86 = common::real_qemu("qemu-system-x86_64");
    let uuid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    let xml = d.path().join("domain.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>qcapsd-libvirt</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory><vcpu>2</vcpu>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os>\
             <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>\
             <devices><emulator>{}</emulator><controller type='usb' model='none'/><memballoon model='virtio'/>\
             <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng></devices></domain>",
            x86.display()
        ),
    )
    .unwrap();
    let created = lv.virsh(&["create", xml.to_str().unwrap(), "--paused"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let agent = agent_over(d.path(), &[(&x86, "x86_64")]);
    let list = agent.get("/v1/vms?verify=true").json();
    let vms = list["vms"].as_array().unwrap();
    let v = vms
        .iter()
        .find(|v| v["name"] == "qcapsd-libvirt")
        .unwrap_or_else(|| panic!("libvirt's VM not found: {list}"));
    assert_eq!(v["uuid"], uuid);
    let c = &v["command"];
    assert!(c["machine"].as_str().unwrap().starts_with("pc-q35-"), "{v}");
    assert_eq!(strings(&c["accels"]), ["tcg"]);
    assert_eq!(c["cpu"], "qemu64");
    assert_eq!(c["cpus"], 2);
    let devices = strings(&c["devices"]);
    for d in ["pcie-root-port", "virtio-balloon-pci", "virtio-rng-pci"] {
        assert!(devices.iter().any(|x| x == d), "{d} not in {devices:?}");
    }
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["verified"], true, "{v}");
}

/// A libvirtd of the test's own, stopped (with its domains) when dropped.
struct Libvirt {
    uri: String,
    daemons: Vec<std::process::Child>,
}

impl Libvirt {
    fn start(dir: &Path) -> Libvirt {
        for tool in ["libvirtd", "virtlogd", "virsh"] {
            common::require_tool(tool);
        }
        let busy = std::process::Command::new("pgrep")
            .args(["-x", "libvirtd|virtqemud|virtlogd"])
            .output()
            .unwrap();
        assert!(
            busy.stdout.is_empty(),
            "a libvirtd already runs here: {}",
            String::from_utf8_lossy(&busy.stdout)
        );
        let run = dir.join("libvirt-run");
        std::fs::create_dir_all(&run).unwrap();
        let conf = dir.join("libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_ro = \"none\"\nauth_unix_rw = \"none\"\nlog_outputs = \"3:file:{}\"\n",
                run.display(),
                dir.join("libvirtd.log").display()
            ),
        )
        .unwrap();
        // QEMU's console goes through virtlogd; libvirt finds it at its
        // system socket.
        let virtlogd = std::process::Command::new("virtlogd").spawn().unwrap();
        let libvirtd = std::process::Command::new("libvirtd")
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(dir.join("libvirtd.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lv = Libvirt {
            uri: format!("qemu:///system?socket={}/libvirt-sock", run.display()),
            daemons: vec![libvirtd, virtlogd],
        };
        // Its first answer waits on its probe of every emulator.
        assert!(
            common::poll_until_for(
                std::time::Duration::from_secs(600),
                std::time::Duration::from_millis(200),
                || lv.virsh(&["capabilities"]).status.success()
            ),
            "libvirtd did not answer; see {}",
            dir.join("libvirtd.log").display()
        );
        lv
    }

    fn virsh(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("virsh")
            .args(["-c", &self.uri])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let _ = self.virsh(&["destroy", "qcapsd-libvirt"]);
        for d in &mut self.daemons {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(d.id() as i32).unwrap(),
                rustix::process::Signal::TERM,
            );
            let _ = d.wait();
        }
    }
}
