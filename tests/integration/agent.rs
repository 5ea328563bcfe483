//! `qcapsd run` end to end, as a process, with stand-in emulators that
//! count their execs: the cache's promise is zero execs while nothing
//! changes and exactly one when something does, across restarts, signals
//! and reloads.

use crate::common::{self, AgentProc, Http, count, counting_emulator, rename_upgrade, transcript};
use rustix::process::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Two counting stand-ins (x86_64 9.1.0 and aarch64 8.2.0) in `dir/bin`.
struct Fleet {
    bin: PathBuf,
    x86: PathBuf,
    arm: PathBuf,
    x86_count: PathBuf,
    arm_count: PathBuf,
}

fn fleet(dir: &Path) -> Fleet {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let x86_count = dir.join("x86.count");
    let arm_count = dir.join("arm.count");
    let x86 = counting_emulator(
        &bin,
        "qemu-system-x86_64",
        &transcript("caps_9.1.0_x86_64.replies"),
        &x86_count,
    );
    let arm = counting_emulator(
        &bin,
        "qemu-system-aarch64",
        &transcript("caps_8.2.0_aarch64.replies"),
        &arm_count,
    );
    Fleet {
        bin,
        x86,
        arm,
        x86_count,
        arm_count,
    }
}

fn emulators_yaml(f: &Fleet) -> String {
    format!(
        "emulators:\n  - path: {}\n    name: x86_64\n  - path: {}\n    name: aarch64\n",
        f.x86.display(),
        f.arm.display()
    )
}

#[test]
fn two_emulators_cost_two_execs_then_none_for_500_queries_or_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let agent = AgentProc::start(d.path(), &emulators_yaml(&f));
    assert_eq!(
        (count(&f.x86_count), count(&f.arm_count)),
        (1, 1),
        "one exec each at start"
    );
    for i in 0..500 {
        let name = if i % 2 == 0 { "x86_64" } else { "aarch64" };
        let r = agent.get(&format!("/v1/emulators/{name}/machines"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("qcapsd-cache"), Some("hit"));
    }
    assert_eq!(
        (count(&f.x86_count), count(&f.arm_count)),
        (1, 1),
        "no exec for 500 queries"
    );
    let agent = agent.restart();
    assert_eq!(
        (count(&f.x86_count), count(&f.arm_count)),
        (1, 1),
        "no exec on restart"
    );
    let doc = agent.get("/v1/emulators/x86_64").json();
    assert_eq!(doc["qemu"]["version"], "9.1.0");
    // Probed in parallel at start, each document still counts its own exec.
    assert_eq!(doc["probe"]["execs"], 1);
    assert_eq!(
        agent.get("/v1/emulators/aarch64").json()["probe"]["execs"],
        1
    );
    assert!(agent.stop().success());
}

#[test]
fn rename_upgrade_reprobes_that_emulator_once_and_serves_the_new_data() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let agent = AgentProc::start(d.path(), &emulators_yaml(&f));
    assert_eq!(
        agent.get("/v1/emulators/x86_64").json()["qemu"]["version"],
        "9.1.0"
    );
    rename_upgrade(&f.x86, "caps_10.0.0_x86_64.replies", &f.x86_count);
    // The very next query sees the new binary (stat on every lookup).
    let doc = agent.get("/v1/emulators/x86_64").json();
    assert_eq!(doc["qemu"]["version"], "10.0.0");
    // inotify wakes the revalidator too; whichever comes first, one exec.
    agent.get("/v1/emulators/x86_64");
    wait_for_state(&agent, "x86_64", "fresh");
    assert_eq!(count(&f.x86_count), 2, "exactly one re-probe");
    assert_eq!(count(&f.arm_count), 1, "the other emulator is untouched");
    let m = agent.get("/metrics").text();
    assert!(
        m.contains(
            "qcapsd_cache_invalidations_total{emulator=\"x86_64\",reason=\"binary_changed\"} 1"
        ),
        "{m}"
    );
}

#[test]
fn inotify_reprobes_an_upgrade_before_anyone_asks() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let agent = AgentProc::start(d.path(), &emulators_yaml(&f));
    rename_upgrade(&f.arm, "caps_10.0.0_s390x.replies", &f.arm_count);
    // No query: only the revalidator (woken by inotify, well before the 60 s
    // timer) can cause this exec. Poll the count (bounded).
    common::poll_until(|| count(&f.arm_count) == 2);
    assert_eq!(count(&f.arm_count), 2, "log:\n{}", agent.log_text());
    wait_for_state(&agent, "aarch64", "fresh");
    let r = agent.get("/v1/emulators/aarch64");
    assert_eq!(r.header("qcapsd-cache"), Some("hit"));
    assert_eq!(r.json()["arch"], "s390x");
}

fn state_of(agent: &AgentProc, name: &str) -> String {
    let list = agent.get("/v1/emulators").json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .unwrap()
}

fn wait_for_state(agent: &AgentProc, name: &str, want: &str) {
    if common::poll_until(|| state_of(agent, name) == want) {
        return;
    }
    panic!(
        "{name} never became {want}: {}",
        agent.get("/v1/emulators").text()
    );
}

#[test]
fn a_burst_of_200_requests_after_a_change_costs_one_exec() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    // A long interval and no inotify-visible change before the burst: the
    // requests themselves find the change.
    let agent = AgentProc::start(
        d.path(),
        &(emulators_yaml(&f) + "revalidate_interval: 1h\n"),
    );
    rename_upgrade(&f.x86, "caps_8.2.0_x86_64.replies", &f.x86_count);
    let port = agent.port;
    let handles: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                common::raw_http(port, b"GET /v1/emulators/x86_64/cpu-models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        count(&f.x86_count),
        2,
        "one exec at start, one for the burst"
    );
    assert_eq!(
        agent.get("/v1/emulators/x86_64").json()["qemu"]["version"],
        "8.2.0"
    );
}

#[test]
fn corrupt_truncated_foreign_and_torn_cache_files_are_reprobed_never_served() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let agent = AgentProc::start(d.path(), &emulators_yaml(&f));
    let cache = d.path().join("cache");
    let good = std::fs::read(cache.join("x86_64.json")).unwrap();
    let agent = {
        assert!(agent.stop().success());
        // Truncated x86_64, garbage aarch64, and a torn temporary file from a
        // crash between write and rename.
        std::fs::write(cache.join("x86_64.json"), &good[..good.len() / 2]).unwrap();
        std::fs::write(cache.join("aarch64.json"), b"\x00\xffnot json").unwrap();
        std::fs::write(cache.join(".tmp-crash1"), &good[..100]).unwrap();
        AgentProc::start(d.path(), &emulators_yaml(&f))
    };
    assert_eq!(
        (count(&f.x86_count), count(&f.arm_count)),
        (2, 2),
        "both re-probed"
    );
    assert!(
        !cache.join(".tmp-crash1").exists(),
        "crash leftovers are swept"
    );
    assert_eq!(
        agent.get("/v1/emulators/x86_64").json()["qemu"]["version"],
        "9.1.0"
    );
    assert!(agent.log_text().contains("discarding corrupt cache file"));
    // A file of another schema version, and one whose fingerprint no longer
    // matches, are not served either.
    assert!(agent.stop().success());
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("x86_64.json")).unwrap()).unwrap();
    v["schema_version"] = 99.into();
    std::fs::write(cache.join("x86_64.json"), v.to_string()).unwrap();
    let mut w: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("aarch64.json")).unwrap()).unwrap();
    w["fingerprint"]["binary"]["ino"] = 1.into();
    std::fs::write(cache.join("aarch64.json"), w.to_string()).unwrap();
    let agent = AgentProc::start(d.path(), &emulators_yaml(&f));
    assert_eq!((count(&f.x86_count), count(&f.arm_count)), (3, 3));
    assert_eq!(agent.get("/v1/emulators/aarch64").status, 200);
}

#[test]
fn missing_binary_becomes_missing_and_is_probed_when_it_returns() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let agent = AgentProc::start(d.path(), &emulators_yaml(&f));
    let aside = d.path().join("aside");
    std::fs::rename(&f.x86, &aside).unwrap();
    let r = agent.get("/v1/emulators/x86_64");
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"].as_str().unwrap().contains("is missing"),
        "{}",
        r.text()
    );
    assert_eq!(state_of(&agent, "x86_64"), "missing");
    assert_eq!(agent.get("/v1/emulators/aarch64").status, 200);
    std::fs::rename(&aside, &f.x86).unwrap();
    let r = agent.get("/v1/emulators/x86_64/machines");
    assert_eq!(r.status, 200);
    wait_for_state(&agent, "x86_64", "fresh");
    // Moved back, it has a new ctime: probed once more.
    assert_eq!(count(&f.x86_count), 2);
}

#[test]
fn a_failing_emulator_backs_off_instead_of_looping() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let bad_count = d.path().join("bad.count");
    let bad = common::script(
        &f.bin,
        "qemu-system-broken",
        &format!(
            "echo exec >> '{}'\necho 'qemu: broken install' >&2\nexit 1",
            bad_count.display()
        ),
    );
    let yaml = format!("{}  - path: {}\n", emulators_yaml(&f), bad.display());
    let agent = AgentProc::start(d.path(), &yaml);
    assert_eq!(count(&bad_count), 1);
    for _ in 0..50 {
        let r = agent.get("/v1/emulators/qemu-system-broken");
        assert_eq!(r.status, 503);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("broken install"),
            "{}",
            r.text()
        );
    }
    assert_eq!(
        count(&bad_count),
        1,
        "lookups during the backoff cause no exec"
    );
    assert_eq!(state_of(&agent, "qemu-system-broken"), "failed");
    let m = agent.get("/metrics").text();
    assert!(
        m.contains("qcapsd_probe_failures_total{emulator=\"qemu-system-broken\",reason=\"qmp\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("qcapsd_emulator_up{emulator=\"qemu-system-broken\"} 0"),
        "{m}"
    );
    // Ready: a failure is an answer.
    assert_eq!(agent.get("/readyz").status, 200);
}

#[test]
fn a_refusal_is_not_retried_until_the_binary_changes_while_a_crash_is() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let (refused_count, crashed_count) = (
        d.path().join("refused.count"),
        d.path().join("crashed.count"),
    );
    // QEMU's own error exit (status 1), as a build without the asked
    // accelerator gives; and a crash (a signal), which may not recur.
    let refusing = common::script(
        &f.bin,
        "qemu-system-refusing",
        &format!(
            "echo exec >> '{}'\necho 'qemu-system-refusing: invalid accelerator tcg' >&2\nexit 1",
            refused_count.display()
        ),
    );
    let crashing = common::script(
        &f.bin,
        "qemu-system-crashing",
        &format!("echo exec >> '{}'\nkill -SEGV $$", crashed_count.display()),
    );
    let yaml = format!(
        "{}  - path: {}\n  - path: {}\n",
        emulators_yaml(&f),
        refusing.display(),
        crashing.display()
    );
    let agent = AgentProc::start(d.path(), &yaml);
    assert_eq!((count(&refused_count), count(&crashed_count)), (1, 1));
    // The crash is retried when its backoff (5 s) ends; that pass would
    // retry the refusal too, were it not settled.
    assert!(
        common::poll_until_for(Duration::from_secs(60), Duration::from_millis(100), || {
            count(&crashed_count) >= 2
        }),
        "the crash is retried"
    );
    assert_eq!(count(&refused_count), 1, "the refusal is not retried");
    for _ in 0..20 {
        assert_eq!(agent.get("/v1/emulators/qemu-system-refusing").status, 503);
    }
    assert_eq!(count(&refused_count), 1, "nor by lookups");
    let err = agent.get("/v1/emulators/qemu-system-refusing").json()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        err.contains("invalid accelerator tcg") && err.contains("status 1"),
        "{err}"
    );
    // Issue 23: the refusal is kept on disk: a restart does not probe it
    // again (it says the same), while the crash is tried anew.
    let crashes = count(&crashed_count);
    let agent = agent.restart();
    assert_eq!(count(&refused_count), 1, "not after a restart either");
    assert!(count(&crashed_count) > crashes, "the crash is tried again");
    let again = agent.get("/v1/emulators/qemu-system-refusing");
    assert_eq!(again.status, 503);
    assert_eq!(
        again.json()["error"].as_str().unwrap(),
        err,
        "the same answer"
    );
    assert_eq!(
        agent
            .get("/v1/emulators")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "qemu-system-refusing")
            .unwrap()["state"],
        "failed"
    );
    // Replacing the binary is a change: one probe, now a success.
    rename_upgrade(&refusing, "caps_9.1.0_x86_64.replies", &refused_count);
    assert!(common::poll_until(|| agent
        .get("/v1/emulators/qemu-system-refusing")
        .status
        == 200));
}

#[test]
fn kvm_appearing_or_going_away_reprobes_once() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    // A fixture host: no /dev/kvm at first.
    let root = d.path().join("host");
    std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/osrelease"), "6.1.0-fixture\n").unwrap();
    std::fs::write(root.join("proc/cpuinfo"), "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t: 85\nstepping\t: 7\nmicrocode\t: 0x5003604\n").unwrap();
    let yaml = format!(
        "{}host_root: {}\nrevalidate_interval: 1h\n",
        emulators_yaml(&f),
        root.display()
    );
    let agent = AgentProc::start(d.path(), &yaml);
    let host = agent.get("/v1/host").json();
    assert_eq!(host["kvm"]["usable"], false);
    assert_eq!(host["kernel_release"], "6.1.0-fixture");
    assert_eq!(host["cpu_signature"], "GenuineIntel/6/85/7");
    assert!(agent.get("/v1/emulators/x86_64").json()["cache"]["fingerprint"]["host"].is_null());
    // KVM becomes usable (module loaded): one re-probe per emulator asked.
    std::fs::write(root.join("dev/kvm"), "").unwrap();
    assert_eq!(agent.get("/v1/host").json()["kvm"]["usable"], true);
    let doc = agent.get("/v1/emulators/x86_64").json();
    assert_eq!(doc["cache"]["fingerprint"]["kvm_usable"], true);
    assert_eq!(
        doc["cache"]["fingerprint"]["host"]["microcode"],
        "0x5003604"
    );
    agent.get("/v1/emulators/x86_64");
    assert_eq!(count(&f.x86_count), 2);
    // And going away again.
    std::fs::remove_file(root.join("dev/kvm")).unwrap();
    agent.get("/v1/emulators/x86_64");
    assert_eq!(count(&f.x86_count), 3);
    let m = agent.get("/metrics").text();
    assert!(
        m.contains(
            "qcapsd_cache_invalidations_total{emulator=\"x86_64\",reason=\"kvm_changed\"} 2"
        ),
        "{m}"
    );
}

#[test]
fn sighup_reloads_added_and_removed_emulators() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let only_x86 = common::x86_yaml(&f.x86);
    let agent = AgentProc::start(d.path(), &only_x86);
    assert_eq!(agent.get("/v1/emulators/aarch64").status, 404);
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let swapped = text.replace(
        &only_x86,
        &format!(
            "emulators:\n  - path: {}\n    name: aarch64\n",
            f.arm.display()
        ),
    );
    std::fs::write(&agent.config, swapped).unwrap();
    agent.signal(Signal::HUP);
    common::poll_until(|| agent.get("/v1/emulators/aarch64").status == 200);
    assert_eq!(agent.get("/v1/emulators/aarch64").status, 200);
    assert_eq!(agent.get("/v1/emulators/x86_64").status, 404);
    assert_eq!(count(&f.arm_count), 1);
    let m = agent.get("/metrics").text();
    assert!(
        !m.contains("emulator=\"x86_64\""),
        "a removed emulator's series go: {m}"
    );
    assert!(
        !d.path().join("cache/x86_64.json").exists(),
        "a removed emulator's file goes"
    );
    assert_eq!(
        agent.metric("qcapsd_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    // A broken config is refused (the agent says so) and the running one
    // kept.
    std::fs::write(&agent.config, "listen: [oops\n").unwrap();
    agent.signal(Signal::HUP);
    let refused = "qcapsd_config_reloads_total{result=\"failure\"}";
    common::poll_until(|| agent.metric(refused) == Some(1.0));
    assert_eq!(agent.metric(refused), Some(1.0));
    assert_eq!(
        agent.metric("qcapsd_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(agent.get("/v1/emulators/aarch64").status, 200);
    assert_eq!(agent.get("/healthz").status, 200);
    assert!(agent.log_text().contains("config reload refused"));
}

#[test]
fn sigterm_during_a_probe_kills_the_emulator_and_cleans_up() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let pids = d.path().join("hang.pids");
    let hang = common::script(
        &f.bin,
        "qemu-system-hang",
        &format!(
            "echo $$ >> '{p}'\nsleep 600 & echo $! >> '{p}'\nexec sleep 600",
            p = pids.display()
        ),
    );
    let port = common::free_port();
    let config = d.path().join("qcapsd.yaml");
    let socket = d.path().join("qcapsd.sock");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ncache_dir: {}\nunix_socket: {}\nemulators:\n  - path: {}\n",
            d.path().join("cache").display(),
            socket.display(),
            hang.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::poll_until(|| common::read_pids(&pids).len() == 2);
    assert_eq!(common::read_pids(&pids).len(), 2, "the probe is running");
    assert!(socket.exists());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    for p in common::read_pids(&pids) {
        assert!(
            !common::process_alive(p),
            "probe process {p} survived the agent"
        );
    }
    assert!(!socket.exists(), "the unix socket is removed on exit");
    let leftovers: Vec<_> = std::fs::read_dir(d.path().join("cache"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| n != ".lock")
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "no temporary file: {leftovers:?}");
}

#[test]
fn check_config_says_what_it_would_do_or_names_the_fault() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let good = d.path().join("good.yaml");
    std::fs::write(&good, format!("cache_dir: /tmp/x\n{}", emulators_yaml(&f))).unwrap();
    let out = common::qcapsd(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 emulator(s)")
            && text.contains("x86_64")
            && text.contains("listen: 127.0.0.1:9733"),
        "{text}"
    );
    let bad = d.path().join("bad.yaml");
    std::fs::write(&bad, "cache_dir: /tmp/x\nprobe_timeout: soon\n").unwrap();
    let out = common::qcapsd(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("probe_timeout") && err.contains("line 2"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // `run` refuses the same file with the same exit code.
    let out = common::qcapsd(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_new_qemu_module_reprobes_once() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    let modules = d.path().join("qemu-modules");
    std::fs::create_dir_all(&modules).unwrap();
    let yaml = format!(
        "{}module_dirs: [{}]\nrevalidate_interval: 1h\n",
        emulators_yaml(&f),
        modules.display()
    );
    let agent = AgentProc::start(d.path(), &yaml);
    let doc = agent.get("/v1/emulators/x86_64").json();
    assert_eq!(
        doc["cache"]["fingerprint"]["module_dirs"][0][0],
        modules.display().to_string()
    );
    // A module package adds a file: the directory's mtime moves.
    std::fs::write(modules.join("hw-display-virtio-gpu.so"), b"").unwrap();
    agent.get("/v1/emulators/x86_64");
    agent.get("/v1/emulators/aarch64");
    wait_for_state(&agent, "x86_64", "fresh");
    wait_for_state(&agent, "aarch64", "fresh");
    assert_eq!((count(&f.x86_count), count(&f.arm_count)), (2, 2));
    let m = agent.get("/metrics").text();
    assert!(
        m.contains(
            "qcapsd_cache_invalidations_total{emulator=\"x86_64\",reason=\"modules_changed\"} 1"
        ),
        "{m}"
    );
}

#[test]
fn a_log_written_to_a_file_has_no_terminal_escape_codes() {
    let d = tempfile::tempdir().unwrap();
    let f = fleet(d.path());
    // AgentProc sends stderr to a file, as a journal or a redirect would.
    let agent = AgentProc::start(d.path(), &emulators_yaml(&f));
    let log = agent.log_text();
    assert!(log.contains("probed"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in the log:\n{log}");
}

/// Issue 17 item 6: with no emulator to serve, the agent used to log only
/// "probing 0 emulator(s)". It warns, naming where discovery looked and
/// what to do, counts it, and is ready (nothing to serve is no error);
/// check-config says the same.
#[test]
fn nothing_found_is_said_where_discovery_looked_and_the_agent_is_still_ready() {
    let d = tempfile::tempdir().unwrap();
    let glob = d.path().join("nowhere/qemu-system-*");
    let agent = AgentProc::start(
        d.path(),
        &format!("emulators:\n  - glob: {}\n", glob.display()),
    );
    assert_eq!(agent.get("/readyz").status, 200);
    assert_eq!(agent.get("/v1/emulators").json(), serde_json::json!([]));
    let log = agent.log_text();
    assert!(
        log.contains("no QEMU emulator found")
            && log.contains(&glob.display().to_string())
            && log.contains("install QEMU"),
        "{log}"
    );
    assert_eq!(agent.metric("qcapsd_discovery_empty_total"), Some(1.0));

    let out = common::qcapsd(&["check-config", agent.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0 emulator(s)") && text.contains("warning: no QEMU emulator found"),
        "{text}"
    );

    // The default discovery names its directories and patterns.
    let empty = d.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args(["check-config", empty.to_str().unwrap()])
        .env("PATH", d.path().join("nowhere"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("0 emulator(s)") {
        // This machine has QEMU in /usr/libexec: discovery found it there.
        assert!(std::path::Path::new("/usr/libexec").exists(), "{text}");
        return;
    }
    assert!(
        text.contains("looked for qemu-system-*, qemu-kvm, kvm in")
            && text.contains(&format!(
                "{}:/usr/libexec",
                d.path().join("nowhere").display()
            )),
        "{text}"
    );
}
