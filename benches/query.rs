//! Query latency and throughput next to the exec they replace.
//!
//! `cargo bench --bench query` starts the agent in-process on a loopback
//! port with the real qemu-system-x86_64, then, in the same run:
//! - times one exec of `qemu-system-x86_64 -machine help` (median of 10);
//! - drives `/v1/emulators/x86_64/machines` and the full document with wrk
//!   (keep-alive, 2 threads, 64 connections) and reports requests/s and
//!   latency percentiles;
//! - prints how many answers fit in the time of one exec.
//!
//! Under `cargo test` (no `--bench`) it runs a one-second smoke pass.
//! QEMU_BIN, QCAPSD_BENCH_SECONDS and QCAPSD_BENCH_CONNECTIONS override.

// Tests and benchmarks run tools and binaries; the exec ban is for the
// agent (clippy.toml).
#![allow(clippy::disallowed_methods)]

use qcapsd::config::Config;
use qcapsd::daemon;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let qemu = PathBuf::from(
        std::env::var("QEMU_BIN").unwrap_or_else(|_| "/usr/bin/qemu-system-x86_64".into()),
    );
    if !qemu.exists() || Command::new("wrk").arg("--version").output().is_err() {
        eprintln!(
            "query bench: needs {} and wrk (.ci/install-deps); nothing to measure",
            qemu.display()
        );
        return;
    }
    let seconds: u64 = env_or("QCAPSD_BENCH_SECONDS", if bench { 10 } else { 1 });
    let conns: u64 = env_or("QCAPSD_BENCH_CONNECTIONS", 64);
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
    println!("query bench: agent on 127.0.0.1:{port}, wrk -t2 -c{conns} -d{seconds}s, keep-alive");
    println!(
        "  one exec of `{} -machine help`: median {:.1} ms",
        qemu.display(),
        exec.as_secs_f64() * 1e3
    );
    for path in ["/v1/emulators/x86_64/machines", "/v1/emulators/x86_64"] {
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
        let rps = field(&text, "Requests/sec:").unwrap_or(0.0);
        let pct = |p: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(p))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_owned)
                .unwrap_or_else(|| "?".into())
        };
        let non2xx = text
            .lines()
            .find(|l| l.contains("Non-2xx"))
            .unwrap_or("")
            .trim()
            .to_owned();
        println!(
            "  GET {path:<34} {rps:>9.0} req/s  p50 {:>8}  p90 {:>8}  p99 {:>8}  answers per exec time {:>6.0} {non2xx}",
            pct("50%"),
            pct("90%"),
            pct("99%"),
            rps * exec.as_secs_f64()
        );
    }
    stop.cancel();
    let _ = rt.block_on(server);
}

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
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
