//! The shim next to the exec it replaces, in one run, interleaved.
//!
//! `cargo bench --bench shim` starts the agent (the qcapsd binary, as a
//! process) with a shim directory for the real qemu-system-x86_64, waits
//! for the five default queries to be recorded, then, per iteration:
//! - each default query (`--help`, `-version`, `-machine help`, `-cpu
//!   help`, `-device help`) run directly and through the shim (answered
//!   from the memo);
//! - a VM-start-like pass-through (`-m 64 -version`, not a pure query: the
//!   shim execs QEMU in place) run directly and through the shim, whose
//!   difference is what a VM start pays for the shim;
//! - then, with the agent frozen (SIGSTOP: it accepts connections and
//!   sends nothing), `-cpu help` directly and through the shim, which waits
//!   for the agent's acknowledgement (250 ms at most) and runs QEMU.
//!
//! It prints the median and minimum of each, the ratio exec / shim per
//! query (target: 10 or more) and the pass-through overhead (target: 2 ms
//! or less). It does so twice where the static build exists
//! (`scripts/build-static`): shims running `qcapsd-shim` as built beside
//! the agent (glibc, dynamically linked: the default), then the static
//! one (`shim_binary`, what the package sets). Under `cargo test` (no `--bench`) it runs one
//! iteration as a smoke test. QEMU_BIN and QCAPSD_BENCH_ITERS override the
//! binary and the iteration count (30).

// Tests and benchmarks run tools and binaries; the exec ban is for the
// agent (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QUERIES: [&str; 5] = [
    "--help",
    "-version",
    "-machine help",
    "-cpu help",
    "-device help",
];
const PASS_THROUGH: &str = "-m 64 -version";

fn main() {
    let bench = common::measuring();
    let Some(qemu) = common::qemu("shim") else {
        return;
    };
    let iters = common::env_or("QCAPSD_BENCH_ITERS", if bench { 30 } else { 1 }) as usize;
    let static_build = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-musl/release/qcapsd-shim");
    let mut variants: Vec<(&str, Option<PathBuf>)> =
        vec![("qcapsd-shim beside the agent (glibc)", None)];
    if static_build.exists() {
        variants.push(("the static qcapsd-shim (shim_binary)", Some(static_build)));
    } else {
        println!(
            "shim bench: no static build (scripts/build-static); shims run the agent's binary only"
        );
    }
    for (what, shim_binary) in variants {
        measure(&qemu, iters, what, shim_binary.as_deref());
    }
}

/// Times each query directly and through a shim running `shim_binary`
/// (the agent's own where `None`), and prints the table.
fn measure(qemu: &Path, iters: usize, what: &str, shim_binary: Option<&Path>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let shims = dir.path().join("shims");
    let config = dir.path().join("qcapsd.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ncache_dir: {}\nshim_dir: {}\n{}accels: [kvm]\nemulators:\n  - path: {}\n",
            dir.path().join("cache").display(),
            shims.display(),
            shim_binary.map_or_else(String::new, |b| format!("shim_binary: {}\n", b.display())),
            qemu.display()
        ),
    )
    .expect("config");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let shim = shims.join(qemu.file_name().expect("a file name"));
    let recorded = format!(
        "qcapsd_shim_requests_total{{emulator=\"{}\",result=\"recorded\"}} 5",
        qemu.file_name().unwrap().to_string_lossy()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !metrics(port).contains(&recorded) {
        assert!(
            Instant::now() < deadline,
            "the default queries were never recorded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut rows: Vec<(&str, Vec<Duration>, Vec<Duration>)> = QUERIES
        .iter()
        .chain(std::iter::once(&PASS_THROUGH))
        .map(|q| (*q, Vec::new(), Vec::new()))
        .collect();
    for _ in 0..iters {
        for (q, direct, through) in &mut rows {
            direct.push(time(qemu, q));
            through.push(time(&shim, q));
        }
    }
    // The agent frozen (SIGSTOP): the shim waits for its acknowledgement
    // (250 ms), then runs QEMU.
    let pid = rustix::process::Pid::from_raw(agent.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    let (mut frozen_direct, mut frozen_through) = (Vec::new(), Vec::new());
    for _ in 0..iters.clamp(1, 5) {
        frozen_direct.push(time(qemu, "-cpu help"));
        frozen_through.push(time(&shim, "-cpu help"));
    }
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
    let _ = agent.kill();
    let _ = agent.wait();

    println!(
        "shim bench: shims running {what}; {iters} iterations, interleaved, median (min); {}",
        qemu.display()
    );
    println!(
        "  {:<16} {:>16} {:>16} {:>8}",
        "query", "QEMU exec", "through shim", "ratio"
    );
    for (q, direct, through) in &mut rows {
        let (d, t) = (stats(direct), stats(through));
        if *q == PASS_THROUGH {
            let overhead = d.0.as_secs_f64() - t.0.as_secs_f64();
            println!(
                "  {:<16} {:>16} {:>16}   pass-through overhead {:+.2} ms",
                q,
                show(d),
                show(t),
                -overhead * 1e3
            );
        } else {
            println!(
                "  {:<16} {:>16} {:>16} {:>7.1}x",
                q,
                show(d),
                show(t),
                d.0.as_secs_f64() / t.0.as_secs_f64()
            );
        }
    }
    let (d, t) = (stats(&mut frozen_direct), stats(&mut frozen_through));
    println!(
        "  {:<16} {:>16} {:>16}   agent frozen (SIGSTOP): QEMU's own time {:+.0} ms",
        "-cpu help",
        show(d),
        show(t),
        (t.0.as_secs_f64() - d.0.as_secs_f64()) * 1e3
    );
}

/// One run of `bin` with the words of `q`, output discarded.
fn time(bin: &Path, q: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new(bin)
        .args(q.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("exec");
    assert!(st.success(), "{} {q}: {st}", bin.display());
    t.elapsed()
}

/// Median and minimum.
fn stats(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0])
}

fn show((median, min): (Duration, Duration)) -> String {
    format!(
        "{:.2} ms ({:.2})",
        median.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3
    )
}

/// The agent's /metrics text (empty while it does not answer).
fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}
