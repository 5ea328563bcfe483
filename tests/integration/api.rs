//! The query API through real HTTP, with the agent in this process: every
//! route, ETag/304, error bodies, hostile input (which must never cause an
//! exec), the unix socket, limits, and the `qcapsd query` client.

use crate::common::{self, Http, InProcess, count, raw_http};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Setup {
    agent: InProcess,
    x86: PathBuf,
    x86_count: PathBuf,
    yaml: String,
    _dir: tempfile::TempDir,
}

fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (x86, x86_count) = common::stand_in(
        dir.path(),
        "qemu-system-x86_64",
        "caps_10.0.0_x86_64.replies",
    );
    let yaml = format!(
        "emulators:\n  - path: {}\n    name: x86_64\n{extra}",
        x86.display()
    );
    let agent = InProcess::start(dir.path(), &yaml);
    Setup {
        agent,
        x86,
        x86_count,
        yaml,
        _dir: dir,
    }
}

#[test]
fn every_route_answers() {
    let s = setup("");
    let a = &s.agent;
    let index = a.get("/");
    assert_eq!(index.status, 200);
    assert!(
        index
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(index.text().contains("href=\"/v1/emulators\""));
    let list = a.get("/v1/emulators").json();
    assert_eq!(list[0]["name"], "x86_64");
    assert_eq!(list[0]["state"], "fresh");
    assert_eq!(list[0]["version"], "10.0.0");
    assert_eq!(list[0]["arch"], "x86_64");
    assert_eq!(list[0]["path"], s.x86.display().to_string());
    assert!(list[0]["probed_at"].as_str().unwrap().ends_with('Z'));
    let doc = a.get("/v1/emulators/x86_64");
    assert_eq!(doc.header("content-type"), Some("application/json"));
    let doc = doc.json();
    assert_eq!(doc["schema_version"], 3);
    assert_eq!(
        doc["devices_source"], "qom-list-types",
        "not recorded by libvirt"
    );
    assert_eq!(doc["probe"]["execs"], 1);
    assert!(doc["cache"]["fingerprint"]["binary"]["ino"].is_u64());
    let machines = a.get("/v1/emulators/x86_64/machines").json();
    assert_eq!(machines[0]["is_default"], true);
    assert!(
        a.get("/v1/emulators/x86_64/cpu-models")
            .json()
            .as_array()
            .unwrap()
            .len()
            > 100
    );
    let devices = a.get("/v1/emulators/x86_64/devices").json();
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "virtio-blk-pci")
    );
    let dev = a.get("/v1/emulators/x86_64/devices/virtio-blk-pci").json();
    assert_eq!(dev["name"], "virtio-blk-pci");
    assert!(
        dev["properties"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "num-queues")
    );
    let other = a.get("/v1/emulators/x86_64/devices/e1000").json();
    assert!(
        other["properties"].is_null(),
        "present but not among the devices read"
    );
    assert!(
        a.get("/v1/emulators/x86_64/commands")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "query-kvm")
    );
    let host = a.get("/v1/host").json();
    assert!(host["kvm"]["usable"].is_boolean() && host["system"]["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(a.get("/healthz").json()["status"], "ok");
    assert_eq!(a.get("/readyz").json()["status"], "ready");
    let m = a.get("/metrics");
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    assert!(m.text().contains("qcapsd_build_info"));
    assert_eq!(
        count(&s.x86_count),
        1,
        "all of that cost the start-up exec only"
    );
}

#[test]
fn etag_gives_304_and_changes_with_the_data() {
    let s = setup("");
    let a = &s.agent;
    let r = a.get("/v1/emulators/x86_64/machines");
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    let r304 = a.request(
        "GET",
        "/v1/emulators/x86_64/machines",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(r304.status, 304);
    assert!(r304.body.is_empty());
    assert_eq!(r304.header("etag"), Some(etag.as_str()));
    let listed = a.request(
        "GET",
        "/v1/emulators/x86_64/machines",
        &[("If-None-Match", &format!("\"x\", {etag}"))],
    );
    assert_eq!(listed.status, 304, "a list of tags matches too");
    assert_eq!(
        a.request(
            "GET",
            "/v1/emulators/x86_64/machines",
            &[("If-None-Match", "\"other\"")]
        )
        .status,
        200
    );
    let full = a
        .get("/v1/emulators/x86_64")
        .header("etag")
        .unwrap()
        .to_owned();
    assert_ne!(full, etag, "each part has its own tag");
    // A restart serves the same bytes: the same tag.
    let a = s.agent.restart(&s.yaml);
    assert_eq!(
        a.get("/v1/emulators/x86_64/machines").header("etag"),
        Some(etag.as_str())
    );
    // New data, new tag.
    common::rename_upgrade(&s.x86, "caps_6.2.0_x86_64.replies", &s.x86_count);
    let r = a.request(
        "GET",
        "/v1/emulators/x86_64/machines",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(r.status, 200);
    assert_ne!(r.header("etag").unwrap(), etag);
}

#[test]
fn errors_are_json_with_status() {
    let s = setup("");
    let a = &s.agent;
    let check = |method: &str, path: &str, status: u16, needle: &str| {
        let r = a.request(method, path, &[]);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{method} {path}"
        );
        let v = r.json();
        assert_eq!(v["status"], status);
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{method} {path}: {v}"
        );
    };
    check("GET", "/v1/emulators/nope", 404, "no emulator named 'nope'");
    check(
        "GET",
        "/v1/emulators/nope/machines",
        404,
        "no emulator named",
    );
    check(
        "GET",
        "/v1/emulators/x86_64/devices/no-such-device",
        404,
        "has no device 'no-such-device'",
    );
    check("GET", "/v2/anything", 404, "no such route");
    check("DELETE", "/v1/emulators", 405, "method not allowed");
    check("POST", "/v1/emulators/x86_64", 405, "method not allowed");
    check(
        "GET",
        "/v1/emulators/x86_64/revalidate",
        405,
        "method not allowed",
    );
    check(
        "POST",
        "/v1/emulators/nope/revalidate",
        404,
        "no emulator named",
    );
    check("PUT", "/metrics", 405, "method not allowed");
    assert_eq!(count(&s.x86_count), 1);
}

#[test]
fn hostile_paths_get_4xx_and_never_an_exec() {
    let s = setup("");
    let a = &s.agent;
    let long = "a".repeat(4000);
    let hostile = [
        "/v1/emulators/..".to_owned(),
        "/v1/emulators/../../etc/passwd".to_owned(),
        "/v1/emulators/..%2F..%2Fbin%2Fsh".to_owned(),
        format!(
            "/v1/emulators/{}",
            s.x86.display().to_string().replace('/', "%2F")
        ),
        "/v1/emulators/x86_64%2F..%2F..".to_owned(),
        "/v1/emulators/%FF%FE".to_owned(),
        "/v1/emulators/x86_64/devices/%C0%AE%C0%AE".to_owned(),
        "/v1/emulators/%00".to_owned(),
        "/v1/emulators/$(reboot)".to_owned(),
        format!("/v1/emulators/{long}"),
        format!("/v1/emulators/x86_64/devices/{long}"),
    ];
    for p in &hostile {
        for method in ["GET", "POST"] {
            let r = a.request(method, p, &[]);
            assert!(
                (400..500).contains(&r.status),
                "{method} {p}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    // Raw bytes that are not UTF-8 in the request line, and a head larger
    // than the limit.
    let r = raw_http(
        a.port,
        b"GET /v1/emulators/\xff\xfe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!((400..500).contains(&r.status), "{}", r.status);
    let huge = format!(
        "GET /v1/emulators/{} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "b".repeat(100_000)
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    let _ = conn.write_all(huge.as_bytes());
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&buf[..buf.len().min(100)])
    );
    // A body over the limit.
    let body = "x".repeat(10_000);
    let r = raw_http(
        a.port,
        format!("POST /v1/emulators/x86_64/revalidate HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(count(&s.x86_count), 1, "no request caused an exec");
    assert_eq!(a.get("/healthz").status, 200, "the agent is unharmed");
}

#[test]
fn revalidate_forces_exactly_one_probe() {
    let s = setup("");
    let a = &s.agent;
    let r = a.request("POST", "/v1/emulators/x86_64/revalidate", &[]);
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["name"], "x86_64");
    assert_eq!(r.json()["state"], "probing");
    common::poll_until(|| a.get("/v1/emulators").json()[0]["state"] == "fresh");
    assert_eq!(count(&s.x86_count), 2);
    // The data stayed valid meanwhile and stays a hit after.
    assert_eq!(
        a.get("/v1/emulators/x86_64/machines")
            .header("qcapsd-cache"),
        Some("hit")
    );
    assert_eq!(count(&s.x86_count), 2);
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn unix_socket_serves_with_mode_0660_and_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (x86, _count) = common::stand_in(
        dir.path(),
        "qemu-system-x86_64",
        "caps_9.1.0_x86_64.replies",
    );
    // A stale socket from a crashed agent: nothing listens on it.
    let sock = dir.path().join("run/qcapsd.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let agent = InProcess::start(
        dir.path(),
        &format!("emulators:\n  - path: {}\n", x86.display()),
    );
    assert_eq!(mode(&agent.socket), 0o660);
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    s.write_all(b"GET /v1/emulators/qemu-system-x86_64/machines HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let r = common::parse_response(&buf);
    assert_eq!(r.status, 200);
    assert!(r.json().as_array().unwrap().len() > 10);
    let out = common::qcapsd(&["query", "--socket", agent.socket.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("qemu-system-x86_64"));
    let socket = agent.socket.clone();
    agent.stop().unwrap();
    assert!(!socket.exists(), "removed on exit");
}

#[test]
fn listen_null_serves_the_query_api_on_the_unix_socket_only() {
    let dir = tempfile::tempdir().unwrap();
    let (x86, _count) = common::stand_in(
        dir.path(),
        "qemu-system-x86_64",
        "caps_9.1.0_x86_64.replies",
    );
    let metrics = common::free_port();
    // `listen: null` after the harness's own listen line overrides it: the
    // harness waits for readiness on the metrics port instead.
    let text = InProcess::config_text(dir.path(), 1, "")
        .replace("listen: 127.0.0.1:1\n", "listen: null\n")
        + &format!(
            "metrics_listen: 127.0.0.1:{metrics}\nemulators:\n  - path: {}\n",
            x86.display()
        );
    let cfg = qcapsd::config::Config::parse(&text).unwrap();
    assert_eq!(cfg.listen, None);
    let stop = tokio_util::sync::CancellationToken::new();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let token = stop.clone();
    let t = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(qcapsd::daemon::serve(cfg, rx, token))
    });
    assert!(common::wait_ready(metrics));
    let sock = dir.path().join("run/qcapsd.sock");
    let out = common::qcapsd(&["query", "--socket", sock.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The metrics-only port does not serve the query API.
    let r = raw_http(
        metrics,
        b"GET /v1/emulators HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    stop.cancel();
    t.join().unwrap().unwrap();
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("precious");
    std::fs::write(&sock, "data").unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{}\ncache_dir: {}\nunix_socket: {}\nemulators: []\n",
            common::free_port(),
            dir.path().join("cache").display(),
            sock.display()
        ),
    )
    .unwrap();
    let out = common::qcapsd(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("precious") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "data");
}

#[test]
fn query_client_prints_tables_and_json() {
    let s = setup("");
    let addr = format!("http://127.0.0.1:{}", s.agent.port);
    let run = |args: &[&str]| {
        let mut all = vec!["query", "--addr", &addr];
        all.extend_from_slice(args);
        let out = common::qcapsd(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let list = run(&[]);
    assert!(
        list.starts_with("NAME    STATE  VERSION  ARCH    PROBED AT"),
        "{list}"
    );
    assert!(list.contains("x86_64  fresh  10.0.0   x86_64"), "{list}");
    let machines = run(&["x86_64", "machines"]);
    let first = machines.lines().next().unwrap();
    assert!(
        first.starts_with("NAME")
            && first.contains("ALIAS")
            && first.contains("DEFAULT")
            && first.contains("MAX CPUS")
            && first.ends_with("DEPRECATED"),
        "{first}"
    );
    assert!(
        machines.lines().nth(1).unwrap().contains(" yes "),
        "default machine first: {machines}"
    );
    let cpus = run(&["x86_64", "cpu-models"]);
    assert!(cpus.lines().next().unwrap().starts_with("NAME") && cpus.contains("BLOCKERS"));
    assert!(
        cpus.lines()
            .any(|l| l.contains(" no ") && l.split_whitespace().count() > 2),
        "a blocked model with its blockers"
    );
    let dev = run(&["x86_64", "virtio-blk-pci"]);
    assert!(
        dev.starts_with("PROPERTY") && dev.contains("num-queues"),
        "{dev}"
    );
    assert!(
        run(&["x86_64", "devices"])
            .lines()
            .any(|l| l == "virtio-blk-pci")
    );
    assert!(
        run(&["x86_64", "commands"])
            .lines()
            .any(|l| l == "query-version")
    );
    assert!(run(&["x86_64"]).contains("version     10.0.0"));
    let json: serde_json::Value =
        serde_json::from_str(&run(&["x86_64", "machines", "--json"])).unwrap();
    assert!(json.as_array().unwrap().len() > 10);
    let out = common::qcapsd(&["query", "--addr", &addr, "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no emulator named 'nope'"));
}

#[test]
fn query_of_an_unreachable_agent_exits_69_naming_the_address() {
    let port = common::free_port();
    let out = common::qcapsd(&["query", "--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach the agent at http://127.0.0.1:{port}"
        )),
        "{err}"
    );
    let out = common::qcapsd(&["query", "--socket", "/nonexistent/qcapsd.sock"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unix:/nonexistent/qcapsd.sock"));
}

#[test]
fn a_client_that_never_finishes_its_head_is_dropped() {
    let s = setup("http:\n  header_read_timeout: 300ms\n");
    // Slowloris: half a request line, then nothing. The server hangs up.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", s.agent.port)).unwrap();
    slow.write_all(b"GET /healthz HT").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = Vec::new();
    let n = slow.read_to_end(&mut buf);
    assert!(n.is_ok(), "closed by the server, not by our timeout: {n:?}");
}

#[test]
fn connections_beyond_the_limit_wait_until_a_slot_is_free() {
    // Long timeouts: only the limit can hold the second client back.
    let s = setup("http:\n  max_connections: 1\n  header_read_timeout: 60s\n  idle_timeout: 60s\n");
    let port = s.agent.port;
    // An idle connection holds the only slot.
    let idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A second client connects (the kernel's backlog) and asks; while the
    // slot is held it gets no answer.
    let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    let held = second.read(&mut buf);
    assert!(
        matches!(&held, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "answered while the only slot was held: {held:?}"
    );
    // The slot frees: the waiting client is served.
    drop(idle);
    second
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    second.read_to_end(&mut rest).unwrap();
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn forced_probes_are_rate_limited_with_retry_after() {
    let s = setup("forced_probe_interval: 1h\n");
    let a = &s.agent;
    let first = a.request("POST", "/v1/emulators/x86_64/revalidate", &[]);
    assert_eq!(first.status, 202);
    common::poll_until(|| a.get("/v1/emulators").json()[0]["state"] == "fresh");
    let again = a.request("POST", "/v1/emulators/x86_64/revalidate", &[]);
    assert_eq!(again.status, 429, "{}", again.text());
    let wait: u64 = again.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 3500 && wait <= 3600, "{wait}");
    assert_eq!(again.json()["state"], "fresh");
    assert_eq!(count(&s.x86_count), 2, "start and the one forced probe");
}

#[test]
fn a_request_waiting_on_a_slow_probe_gets_503_and_the_probe_goes_on() {
    let s = setup("http:\n  request_timeout: 300ms\n");
    let a = &s.agent;
    // The upgraded binary takes a while to answer QMP.
    let staged = common::script(
        s.x86.parent().unwrap(),
        ".slow",
        &format!(
            "sleep 2\nexec '{}'",
            common::counting_emulator(
                s.x86.parent().unwrap(),
                ".slow-inner",
                &common::transcript("caps_9.1.0_x86_64.replies"),
                &s.x86_count
            )
            .display()
        ),
    );
    std::fs::rename(staged, &s.x86).unwrap();
    let r = a.get("/v1/emulators/x86_64/machines");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("is being probed"),
        "{}",
        r.text()
    );
    // Answers from memory stay instant meanwhile.
    assert_eq!(a.get("/healthz").status, 200);
    let mut fresh = None;
    common::poll_until(|| {
        let r = a.get("/v1/emulators/x86_64");
        if r.status == 200 {
            fresh = Some(r.json());
        }
        fresh.is_some()
    });
    assert_eq!(fresh.expect("probe finished")["qemu"]["version"], "9.1.0");
    assert_eq!(
        count(&s.x86_count),
        2,
        "one probe, however many requests waited"
    );
}
