//! Query latency and throughput next to the exec they replace and next to
//! the transport floor.
//!
//! `cargo bench --bench query` starts the agent in-process on a loopback
//! port with the real qemu-system-x86_64 and, in the same process, a floor
//! server: a bare axum router that answers the same paths with the same
//! bytes and headers the agent sent, fetched from the agent first, with
//! nothing else (no lookup, no metrics, no limits). Then, in the same run:
//! - times one exec of `qemu-system-x86_64 -machine help` (median of 10);
//! - drives each route on both servers with wrk (keep-alive, 2 threads, 64
//!   connections), floor and agent alternately, and reports requests/s,
//!   latency percentiles and the ratio floor / agent;
//! - prints how many answers fit in the time of one exec.
//!
//! Each side runs QCAPSD_BENCH_ROUNDS times (3), alternately, and the
//! median run is reported. Under `cargo test` (no `--bench`) it runs a
//! one-second smoke pass. QEMU_BIN, QCAPSD_BENCH_SECONDS (5) and
//! QCAPSD_BENCH_CONNECTIONS (64) override.

// Tests and benchmarks run tools and binaries; the exec ban is for the
// agent (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

/// As the static agent (src/main.rs): with `--target
/// x86_64-unknown-linux-musl`, mimalloc.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use qcapsd::config::Config;
use qcapsd::daemon;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn main() {
    let bench = common::measuring();
    let Some(qemu) = common::qemu("query") else {
        return;
    };
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("query bench: needs wrk (.ci/install-deps); nothing to measure");
        return;
    }
    let seconds: u64 = common::env_or("QCAPSD_BENCH_SECONDS", if bench { 5 } else { 1 });
    let rounds: u64 = common::env_or("QCAPSD_BENCH_ROUNDS", if bench { 3 } else { 1 });
    let conns: u64 = common::env_or("QCAPSD_BENCH_CONNECTIONS", 64);
    let cache = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ncache_dir: {}\nemulators:\n  - path: {}\n    name: x86_64\nhttp:\n  max_connections: 1024\n",
        cache.path().display(),
        qemu.display()
    );
    let cfg = Config::parse(&yaml).expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stop = CancellationToken::new();
    let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let server = rt.spawn(daemon::serve(cfg, reload_rx, stop.clone()));
    wait_ready(port);

    let mut execs: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let st = Command::new(&qemu)
                .args(["-machine", "help"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("exec");
            assert!(st.success());
            t.elapsed()
        })
        .collect();
    execs.sort();
    let exec = execs[execs.len() / 2];
    println!(
        "query bench: agent on 127.0.0.1:{port}, wrk -t2 -c{conns} -d{seconds}s, keep-alive, median of {rounds} alternating runs"
    );
    println!(
        "  one exec of `{} -machine help`: median {:.1} ms",
        qemu.display(),
        exec.as_secs_f64() * 1e3
    );
    let routes = [
        "/healthz",
        "/v1/emulators",
        "/v1/emulators/x86_64/machines",
        "/v1/emulators/x86_64",
    ];
    let floor_port = floor_server(&rt, port, &routes);
    println!(
        "  {:<34} {:>13} {:>13} {:>7}  agent p50 / p90 / p99           answers per exec",
        "route (floor: same bytes, bare axum)", "floor req/s", "agent req/s", "ratio"
    );
    for path in routes {
        // Floor and agent alternately, `rounds` times each: the median run
        // of each side (this host's load varies from run to run).
        let mut floors: Vec<Wrk> = Vec::new();
        let mut agents: Vec<Wrk> = Vec::new();
        for _ in 0..rounds {
            floors.push(wrk(floor_port, path, conns, seconds));
            agents.push(wrk(port, path, conns, seconds));
        }
        let (floor, agent) = (median_run(floors), median_run(agents));
        println!(
            "  GET {path:<30} {:>13.0} {:>13.0} {:>7.2}  {:>8} {:>8} {:>8} {:>12.0} {}",
            floor.rps,
            agent.rps,
            floor.rps / agent.rps.max(1.0),
            agent.p50,
            agent.p90,
            agent.p99,
            agent.rps * exec.as_secs_f64(),
            agent.non2xx
        );
    }
    stop.cancel();
    let _ = rt.block_on(server);
}

struct Wrk {
    rps: f64,
    p50: String,
    p90: String,
    p99: String,
    non2xx: String,
}

fn median_run(mut runs: Vec<Wrk>) -> Wrk {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.swap_remove(runs.len() / 2)
}

fn wrk(port: u16, path: &str, conns: u64, seconds: u64) -> Wrk {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{seconds}s"),
            "--latency",
            &url,
        ])
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
            .unwrap_or_else(|| "?".into())
    };
    Wrk {
        rps: field(&text, "Requests/sec:").unwrap_or(0.0),
        p50: pct("50%"),
        p90: pct("90%"),
        p99: pct("99%"),
        non2xx: text
            .lines()
            .find(|l| l.contains("Non-2xx"))
            .unwrap_or("")
            .trim()
            .to_owned(),
    }
}

/// The floor: a bare axum server on its own port answering each of
/// `paths` with the status, headers and body the agent on `agent_port`
/// gave for it (fetched once, here), and nothing more.
fn floor_server(rt: &tokio::runtime::Runtime, agent_port: u16, paths: &[&str]) -> u16 {
    use axum::http::{HeaderName, HeaderValue, StatusCode};
    let mut router = axum::Router::new();
    for path in paths {
        let (status, headers, body) = fetch(agent_port, path);
        let headers: Vec<(HeaderName, HeaderValue)> = headers
            .into_iter()
            .filter(|(k, _)| !["content-length", "date", "connection"].contains(&k.as_str()))
            .map(|(k, v)| {
                (
                    HeaderName::try_from(k).unwrap(),
                    HeaderValue::try_from(v).unwrap(),
                )
            })
            .collect();
        let status = StatusCode::from_u16(status).unwrap();
        let body = axum::body::Bytes::from(body);
        router = router.route(
            path,
            axum::routing::get(move || {
                let (headers, body) = (headers.clone(), body.clone());
                async move {
                    let mut r = axum::response::Response::new(axum::body::Body::from(body));
                    *r.status_mut() = status;
                    r.headers_mut().extend(headers);
                    r
                }
            }),
        );
    }
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("floor listener");
    let port = listener.local_addr().expect("floor address").port();
    rt.spawn(async move { axum::serve(listener, router).await });
    port
}

/// Status, headers and body of one GET (Connection: close).
fn fetch(port: u16, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, buf[end + 4..].to_vec())
}

fn field(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_ready(port: u16) {
    use std::io::{Read, Write};
    for _ in 0..600 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            if buf.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("agent not ready");
}
