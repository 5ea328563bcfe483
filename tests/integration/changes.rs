//! What changed, and who is told: the capability diff a re-probe records
//! (against libvirt's own parses, and with a real QEMU losing a module),
//! the history across restarts, the changes routes and `qcapsd query …
//! changes`, the QcapsdCapabilitiesLost alert on a real Prometheus, and
//! long-polls (`?wait=`) held by the thousand.

use crate::common::{
    self, Attrs, Http, InProcess, LibvirtCaps, Prometheus, count, rename_upgrade, require_tool,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// The newest change of `name`, once there is one (bounded wait).
fn newest_change(agent: &impl Http, name: &str, n: usize) -> serde_json::Value {
    let path = format!("/v1/emulators/{name}/changes");
    let seen = || agent.get(&path).json().as_array().map_or(0, Vec::len);
    common::poll_until(|| seen() >= n);
    let all = agent.get(&path).json();
    assert!(
        all.as_array().unwrap().len() >= n,
        "no change recorded: {all}"
    );
    all[0].clone()
}

fn items(change: &serde_json::Value) -> BTreeSet<(String, String)> {
    change["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_owned(),
                i["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn xml(transcript: &str) -> LibvirtCaps {
    let path = common::replies_dir().join(transcript.replace(".replies", ".xml"));
    common::parse_libvirt_xml(&std::fs::read_to_string(path).unwrap())
}

fn yes(a: &Attrs, k: &str) -> bool {
    a.get(k).is_some_and(|v| v == "yes")
}

/// What libvirt's parses of two recordings say changed in machines and CPU
/// models (entries of type `typ`), by the same rules as the diff.
fn libvirt_changes(old: &LibvirtCaps, new: &LibvirtCaps, typ: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut add = |k: &str, n: &str| {
        out.insert((k.to_owned(), n.to_owned()));
    };
    let machines = |c: &LibvirtCaps| -> BTreeMap<String, Attrs> {
        c.machines
            .iter()
            .filter(|a| a["type"] == typ)
            .map(|a| (a["name"].clone(), a.clone()))
            .collect()
    };
    let (om, nm) = (machines(old), machines(new));
    for n in nm.keys().filter(|n| !om.contains_key(*n)) {
        add("machine_added", n);
    }
    for n in om.keys().filter(|n| !nm.contains_key(*n)) {
        add("machine_removed", n);
    }
    let default = |m: &BTreeMap<String, Attrs>| {
        m.values()
            .find(|a| yes(a, "default"))
            .map(|a| a["name"].clone())
    };
    if default(&om) != default(&nm) {
        add(
            "machine_default_changed",
            &default(&nm).unwrap_or("none".into()),
        );
    }
    let aliases = |m: &BTreeMap<String, Attrs>| -> BTreeMap<String, String> {
        m.values()
            .filter_map(|a| Some((a.get("alias")?.clone(), a["name"].clone())))
            .collect()
    };
    let (oa, na) = (aliases(&om), aliases(&nm));
    for (alias, target) in &oa {
        match na.get(alias) {
            Some(t) if t != target => add("machine_alias_moved", alias),
            Some(_) => {}
            None => add("machine_alias_removed", alias),
        }
    }
    for (n, a) in &nm {
        if let Some(o) = om.get(n) {
            if o["maxCpus"] != a["maxCpus"] {
                add("machine_cpu_max_changed", n);
            }
            if yes(a, "deprecated") && !yes(o, "deprecated") {
                add("machine_became_deprecated", n);
            }
        }
    }
    let cpus = |c: &LibvirtCaps| -> BTreeMap<String, (Attrs, Vec<String>)> {
        c.cpus
            .iter()
            .filter(|(a, _)| a["type"] == typ)
            .map(|(a, b)| {
                let mut b = b.clone();
                b.sort();
                (a["name"].clone(), (a.clone(), b))
            })
            .collect()
    };
    let (oc, nc) = (cpus(old), cpus(new));
    for n in nc.keys().filter(|n| !oc.contains_key(*n)) {
        add("cpu_model_added", n);
    }
    for n in oc.keys().filter(|n| !nc.contains_key(*n)) {
        add("cpu_model_removed", n);
    }
    for (n, (a, b)) in &nc {
        let Some((o, ob)) = oc.get(n) else { continue };
        let usable = |x: &Attrs| x.get("usable").map(|u| u == "yes");
        match (usable(o), usable(a)) {
            (Some(true), Some(false)) => add("cpu_model_became_unusable", n),
            (Some(false), Some(true)) => add("cpu_model_became_usable", n),
            (Some(false), Some(false)) if ob != b => add("cpu_model_blockers_changed", n),
            _ => {}
        }
        if yes(a, "deprecated") && !yes(o, "deprecated") {
            add("cpu_model_became_deprecated", n);
        }
    }
    out
}

#[test]
fn a_rename_upgrade_records_what_libvirt_s_own_parses_say_changed() {
    for (from, to) in [
        ("caps_9.1.0_x86_64.replies", "caps_10.0.0_x86_64.replies"),
        ("caps_8.2.0_x86_64.replies", "caps_9.1.0_x86_64.replies"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (agent, x86, count_file) = InProcess::with_x86(d.path(), from, "");
        rename_upgrade(&x86, to, &count_file);
        let change = newest_change(&agent, "x86_64", 1);
        assert_eq!(change["reason"], "binary_changed");
        assert_eq!(change["emulator"], "x86_64");
        let accel = change["after"]["accel"].as_str().unwrap();
        let ours: BTreeSet<(String, String)> = items(&change)
            .into_iter()
            .filter(|(k, _)| k.starts_with("machine_") || k.starts_with("cpu_model_"))
            .collect();
        let libvirt = libvirt_changes(&xml(from), &xml(to), accel);
        assert!(!libvirt.is_empty(), "{from} → {to}: libvirt sees changes");
        assert_eq!(ours, libvirt, "{from} → {to} ({accel})");
        let version = items(&change)
            .into_iter()
            .find(|(k, _)| k == "version_changed")
            .map(|(_, v)| v);
        assert_eq!(version.as_deref(), Some(to.split('_').nth(1).unwrap()));
        assert_eq!(change["breaking"], true, "machines went away");
        assert!(
            change["summary"].as_str().unwrap().starts_with("x86_64: ")
                && change["summary"]
                    .as_str()
                    .unwrap()
                    .ends_with(" after binary_changed"),
            "{}",
            change["summary"]
        );
        assert_eq!(count(&count_file), 2);
    }
}

/// The module directory of the installed QEMU, if it has the qxl module.
fn qemu_module_dir() -> Option<std::path::PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/qemu",
        "/usr/lib64/qemu",
        "/usr/lib/qemu",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|d| d.join("hw-display-qxl.so").exists())
}

#[ignore = "needs QEMU, prometheus, root"]
#[test]
fn removing_the_qxl_module_records_qxl_and_qxl_vga_removed_and_fires_the_alert() {
    let qemu = common::real_qemu("qemu-system-x86_64");
    let prometheus = require_tool("prometheus");
    let system = qemu_module_dir().expect("QEMU's module directory with hw-display-qxl.so");
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (a private mount namespace)"
    );
    let d = tempfile::tempdir().unwrap();
    // A copy of the module directory, bind-mounted over the system's in a
    // mount namespace of QEMU's own (QEMU_MODULE_DIR would not do: QEMU
    // falls back to its built-in directory). The system's directory is
    // never touched, and other tests' QEMUs see it as it is.
    let modules = d.path().join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    for e in std::fs::read_dir(&system).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), modules.join(e.file_name())).unwrap();
    }
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = common::script(
        &bin,
        "qemu-system-x86_64",
        &format!(
            "exec unshare -m sh -c 'mount --bind \"$0\" \"$1\" && shift && exec \"$@\"' '{}' '{}' '{}' \"$@\"",
            modules.display(),
            system.display(),
            qemu.display()
        ),
    );
    let agent = InProcess::start(
        d.path(),
        &format!(
            "revalidate_interval: 1h\nmodule_dirs: [{}]\nemulators:\n  - path: {}\n    name: x86_64\n",
            modules.display(),
            wrapper.display()
        ),
    );
    let devices = agent.get("/v1/emulators/x86_64/devices").json();
    let has = |v: &serde_json::Value, d: &str| {
        v.as_array()
            .unwrap_or_else(|| panic!("no devices: {v}"))
            .iter()
            .any(|x| x == d)
    };
    assert!(
        has(&devices, "qxl") && has(&devices, "qxl-vga"),
        "{devices}"
    );
    let prom_dir = d.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = Prometheus::start(
        &prometheus,
        &prom_dir,
        agent.port,
        &crate::observability::compressed_rules(),
    );

    // The module package is removed: inotify sees the directory change.
    let aside = d.path().join("hw-display-qxl.so");
    std::fs::rename(modules.join("hw-display-qxl.so"), &aside).unwrap();
    let removed = newest_change(&agent, "x86_64", 1);
    let want: BTreeSet<(String, String)> =
        [("device_removed", "qxl"), ("device_removed", "qxl-vga")]
            .iter()
            .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
            .collect();
    assert_eq!(items(&removed), want, "{removed}");
    assert_eq!(removed["breaking"], true);
    assert_eq!(removed["reason"], "modules_changed");
    assert_eq!(
        removed["summary"],
        "x86_64: 2 devices removed (qxl, qxl-vga) after modules_changed"
    );
    assert_eq!(
        agent
            .metric("qcapsd_capability_changes_total{emulator=\"x86_64\",kind=\"device_removed\"}"),
        Some(2.0)
    );
    // The alert's expression (as shipped) is true on a real Prometheus.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/qcapsd.rules.yml"),
    )
    .unwrap();
    let expr = rules
        .lines()
        .skip_while(|l| !l.contains("alert: QcapsdCapabilitiesLost"))
        .find_map(|l| l.trim().strip_prefix("expr: "))
        .unwrap()
        .to_owned();
    common::poll_until(|| !prom.query(&expr).is_empty());
    let firing = prom.query(&expr);
    assert_eq!(firing.len(), 1, "{expr}: {firing:?}");
    assert_eq!(firing[0]["metric"]["emulator"], "x86_64");
    common::poll_until(|| prom.alert_state("QcapsdCapabilitiesLost").as_deref() == Some("firing"));
    assert_eq!(
        prom.alert_state("QcapsdCapabilitiesLost").as_deref(),
        Some("firing")
    );

    // The package comes back: the devices are added again.
    std::fs::rename(&aside, modules.join("hw-display-qxl.so")).unwrap();
    let added = newest_change(&agent, "x86_64", 2);
    let want: BTreeSet<(String, String)> = [("device_added", "qxl"), ("device_added", "qxl-vga")]
        .iter()
        .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
        .collect();
    assert_eq!(items(&added), want, "{added}");
    assert_eq!(added["breaking"], false);
}

#[test]
fn kvm_taken_away_records_the_accelerator_and_the_usability_changes() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/osrelease"), "6.1.0-fixture\n").unwrap();
    std::fs::write(root.join("proc/cpuinfo"), "vendor_id\t: GenuineIntel\n").unwrap();
    std::fs::write(root.join("dev/kvm"), "").unwrap();
    let (agent, _, count_file) = InProcess::with_x86(
        d.path(),
        "caps_10.0.0_x86_64.replies",
        &format!("host_root: {}\nrevalidate_interval: 1h\n", root.display()),
    );
    assert_eq!(agent.get("/v1/emulators/x86_64").json()["accel"], "kvm");
    std::fs::remove_file(root.join("dev/kvm")).unwrap();
    assert_eq!(agent.get("/v1/emulators/x86_64").json()["accel"], "tcg");
    let change = newest_change(&agent, "x86_64", 1);
    assert_eq!(change["reason"], "kvm_changed");
    let all = items(&change);
    assert!(
        all.contains(&("accel_changed".into(), "tcg".into())),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|(k, _)| k == "cpu_model_became_usable" || k == "cpu_model_became_unusable"),
        "usability under TCG differs: {all:?}"
    );
    assert_eq!(count(&count_file), 2);
}

#[test]
fn the_history_survives_a_restart_and_a_corrupt_history_file_does_not() {
    let d = tempfile::tempdir().unwrap();
    let (x86, count_file) =
        common::stand_in(d.path(), "qemu-system-x86_64", "caps_9.1.0_x86_64.replies");
    let yaml = common::x86_yaml(&x86);
    let agent = InProcess::start(d.path(), &yaml);
    rename_upgrade(&x86, "caps_10.0.0_x86_64.replies", &count_file);
    let before = newest_change(&agent, "x86_64", 1);
    let file = d.path().join("cache/history/x86_64.json");
    common::poll_until(|| file.exists());
    let agent = agent.restart(&yaml);
    let after = agent.get("/v1/emulators/x86_64/changes").json();
    assert_eq!(after[0], before, "the same change after a restart");
    assert_eq!(
        agent
            .metric("qcapsd_last_breaking_change_timestamp_seconds{emulator=\"x86_64\"}")
            .map(|v| v > 0.0),
        Some(true),
        "the alert's gauge is restored from the history"
    );
    agent.stop().unwrap();
    std::fs::write(
        &file,
        b"{\"format\":\"qcapsd-history\",\"changes\":[{\"at\":",
    )
    .unwrap();
    let agent = InProcess::start(d.path(), &yaml);
    assert_eq!(
        agent.get("/v1/emulators/x86_64/changes").json(),
        serde_json::json!([])
    );
    assert!(!file.exists(), "the corrupt file is discarded");
    assert_eq!(agent.get("/healthz").status, 200);
}

#[test]
fn the_changes_routes_and_the_client() {
    let d = tempfile::tempdir().unwrap();
    let (agent, x86, count_file) = InProcess::with_x86(d.path(), "caps_9.1.0_x86_64.replies", "");
    assert_eq!(
        agent.get("/v1/emulators/x86_64/changes").json(),
        serde_json::json!([])
    );
    assert_eq!(agent.get("/v1/changes").json(), serde_json::json!([]));
    rename_upgrade(&x86, "caps_10.0.0_x86_64.replies", &count_file);
    let change = newest_change(&agent, "x86_64", 1);
    let all = agent.get("/v1/changes").json();
    assert_eq!(all[0], change);
    assert_eq!(
        agent.get("/v1/changes?since=2000-01-01T00:00:00Z").json()[0],
        change
    );
    assert_eq!(
        agent
            .get("/v1/changes?since=2999-01-01T00:00:00%2B02:00")
            .json(),
        serde_json::json!([])
    );
    for bad in [
        "/v1/changes?since=yesterday",
        "/v1/changes?after=x",
        "/v1/emulators/x86_64/changes?x=1",
    ] {
        let r = agent.get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(agent.get("/v1/emulators/nope/changes").status, 404);
    let addr = format!("http://127.0.0.1:{}", agent.port);
    let out = common::qcapsd(&["query", "--addr", &addr, "x86_64", "changes"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("AT") && table.contains("binary_changed  yes"),
        "{table}"
    );
    let out = common::qcapsd(&["query", "--addr", &addr, "x86_64", "changes", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0], change);
}

/// One request held on a raw connection: the status and ETag it got.
async fn get_with(port: u16, path: &str, etag: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nIf-None-Match: {etag}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let r = common::parse_response(&buf);
    (r.status, r.header("etag").unwrap_or("").to_owned())
}

/// `n` requests for `path` held on `rt` with `etag` as If-None-Match.
fn hold(
    rt: &tokio::runtime::Runtime,
    port: u16,
    path: &str,
    etag: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(u16, String)>> {
    (0..n)
        .map(|_| {
            let (p, e) = (path.to_owned(), etag.to_owned());
            rt.spawn(async move { get_with(port, &p, &e).await })
        })
        .collect()
}

/// What each held request was answered, in order.
fn answers(
    rt: &tokio::runtime::Runtime,
    held: Vec<tokio::task::JoinHandle<(u16, String)>>,
) -> Vec<(u16, String)> {
    rt.block_on(async {
        let mut v = Vec::new();
        for h in held {
            v.push(h.await.unwrap());
        }
        v
    })
}

fn waiting(agent: &InProcess) -> f64 {
    agent.metric("qcapsd_http_waiting_requests").unwrap_or(-1.0)
}

#[test]
fn a_thousand_held_requests_get_the_new_answer_for_one_exec() {
    let d = tempfile::tempdir().unwrap();
    let (agent, x86, count_file) = InProcess::with_x86(
        d.path(),
        "caps_9.1.0_x86_64.replies",
        "http:\n  max_connections: 2048\n",
    );
    let etag = agent
        .get("/v1/emulators/x86_64")
        .header("etag")
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = agent.port;
    let held = hold(&rt, port, "/v1/emulators/x86_64?wait=60s", &etag, 1000);
    common::poll_until(|| waiting(&agent) == 1000.0);
    assert_eq!(waiting(&agent), 1000.0, "every request is held");
    rename_upgrade(&x86, "caps_10.0.0_x86_64.replies", &count_file);
    let answers = answers(&rt, held);
    let new = agent
        .get("/v1/emulators/x86_64")
        .header("etag")
        .unwrap()
        .to_owned();
    assert_ne!(new, etag);
    assert!(
        answers.iter().all(|(s, e)| *s == 200 && *e == new),
        "{:?}",
        &answers[..3]
    );
    assert_eq!(
        count(&count_file),
        2,
        "one exec at start, one for the upgrade"
    );
}

#[test]
fn held_requests_get_304_when_nothing_changes_and_list_and_device_routes_hold_too() {
    let d = tempfile::tempdir().unwrap();
    let (agent, _, count_file) = InProcess::with_x86(d.path(), "caps_9.1.0_x86_64.replies", "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = agent.port;
    for path in [
        "/v1/emulators/x86_64/machines",
        "/v1/emulators/x86_64/devices/virtio-blk-pci",
        "/v1/emulators",
    ] {
        let etag = agent.get(path).header("etag").unwrap().to_owned();
        let started = Instant::now();
        let held = hold(&rt, port, &format!("{path}?wait=1s"), &etag, 50);
        let answers = answers(&rt, held);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{path}: held for the wait"
        );
        assert!(
            answers.iter().all(|(s, e)| *s == 304 && *e == etag),
            "{path}: {:?}",
            &answers[..2]
        );
    }
    // A stale tag is answered at once, waiting or not; a bad wait is a 400.
    let r = agent.request(
        "GET",
        "/v1/emulators/x86_64?wait=5m",
        &[("If-None-Match", "\"old\"")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(agent.get("/v1/emulators/x86_64?wait=soon").status, 400);
    assert_eq!(agent.get("/v1/emulators/x86_64?watch=1").status, 400);
    assert_eq!(count(&count_file), 1);
}

#[test]
fn shutdown_answers_held_requests_at_once() {
    let d = tempfile::tempdir().unwrap();
    let (agent, _, _) = InProcess::with_x86(d.path(), "caps_9.1.0_x86_64.replies", "");
    let etag = agent
        .get("/v1/emulators/x86_64/machines")
        .header("etag")
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = agent.port;
    let held = hold(
        &rt,
        port,
        "/v1/emulators/x86_64/machines?wait=5m",
        &etag,
        20,
    );
    common::poll_until(|| waiting(&agent) == 20.0);
    let started = Instant::now();
    agent.stop().unwrap();
    let answers = answers(&rt, held);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered, not held for the wait"
    );
    assert!(answers.iter().all(|(s, _)| *s == 304), "{answers:?}");
}

#[test]
fn query_watch_prints_the_answer_then_each_new_one() {
    use std::io::BufRead;
    let d = tempfile::tempdir().unwrap();
    let (agent, x86, count_file) = InProcess::with_x86(d.path(), "caps_9.1.0_x86_64.replies", "");
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args([
            "query",
            "--addr",
            &format!("127.0.0.1:{}", agent.port),
            "--watch",
            "x86_64",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["qemu"]["version"], "9.1.0");
    rename_upgrade(&x86, "caps_10.0.0_x86_64.replies", &count_file);
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["qemu"]["version"], "10.0.0");
    let _ = watch.kill();
    let _ = watch.wait();
}
