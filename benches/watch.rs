//! What held long-polls cost: `cargo bench --bench watch` starts the agent
//! (the `qcapsd` binary, as its own process, with the real
//! qemu-system-x86_64), holds 1,000 requests with `?wait=` and a current
//! `If-None-Match`, and measures the agent's CPU time (utime + stime from
//! /proc) while nothing changes, and its resident memory. Each held request
//! is answered 304 when its wait ends. Under `cargo test` (no `--bench`) it
//! runs a short pass. QEMU_BIN, QCAPSD_BENCH_WAITERS and
//! QCAPSD_BENCH_SECONDS override.

// Tests and benchmarks run tools and binaries; the exec ban is for the
// agent (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn http(port: u16, req: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let etag = text
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap_or("")
        .trim()
        .to_owned();
    (status, etag, text)
}

fn get(port: u16, path: &str) -> (u16, String, String) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"),
    )
}

/// utime + stime of `pid`, in seconds, and its resident set in MiB.
fn cpu_and_rss(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state.
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    let hz = 100.0; // USER_HZ on Linux
    let rss_pages: f64 = f[21].parse().unwrap_or(0.0);
    (ticks / hz, rss_pages * 4096.0 / (1 << 20) as f64)
}

fn main() {
    let bench = common::measuring();
    let Some(qemu) = common::qemu("watch") else {
        return;
    };
    let waiters = common::env_or("QCAPSD_BENCH_WAITERS", if bench { 1000 } else { 200 }) as usize;
    let seconds = common::env_or("QCAPSD_BENCH_SECONDS", if bench { 30 } else { 2 });
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ncache_dir: {}\nrevalidate_interval: 1h\nemulators:\n  - path: {}\n    name: x86_64\nhttp:\n  max_connections: {}\n",
            dir.path().join("cache").display(),
            qemu.display(),
            waiters + 64
        ),
    )
    .expect("config");
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/qcapsd");
    let bin = if bin.exists() {
        bin
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/qcapsd")
    };
    if !bin.exists() {
        eprintln!("watch bench: build qcapsd first (cargo build --release)");
        return;
    }
    let mut agent = std::process::Command::new(&bin)
        .args(["run", "--config", config.to_str().expect("path")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    let ready = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && get(port, "/readyz").0 == 200
    });
    assert!(ready, "agent not ready");
    let (_, etag, _) = get(port, "/v1/emulators/x86_64");
    let path = format!("/v1/emulators/x86_64?wait={}s", seconds + 5);
    let held: Vec<_> = (0..waiters)
        .map(|_| {
            let (path, etag) = (path.clone(), etag.clone());
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    http(
                        port,
                        &format!(
                            "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nIf-None-Match: {etag}\r\n\r\n"
                        ),
                    )
                    .0
                })
                .expect("thread")
        })
        .collect();
    let all_held = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        get(port, "/metrics")
            .2
            .lines()
            .any(|l| l == format!("qcapsd_http_waiting_requests {waiters}"))
    });
    assert!(all_held, "not every request was held");
    let pid = agent.id();
    let (cpu0, _) = cpu_and_rss(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu1, rss) = cpu_and_rss(pid);
    let held_for = t0.elapsed().as_secs_f64();
    let statuses: Vec<u16> = held.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    let answered_304 = statuses.iter().filter(|s| **s == 304).count();
    let _ = agent.kill();
    let _ = agent.wait();
    println!(
        "watch bench: {waiters} requests held on the full document for {held_for:.1} s, nothing changing"
    );
    println!(
        "  agent CPU time while held: {:.3} s ({:.2} ms per second, {:.4}% of one core); resident memory {rss:.1} MiB",
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e3 / held_for,
        (cpu1 - cpu0) * 100.0 / held_for
    );
    println!("  answered 304 at the end of the wait: {answered_304} of {waiters}");
    assert_eq!(answered_304, waiters);
}
