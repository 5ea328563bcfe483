//! The probe next to the help-text execs it replaces, timed in the same run.
//!
//! `cargo bench --bench probe` times, interleaved, (a) one qcapsd probe of
//! the real qemu-system-x86_64 (version, machines, CPU models, devices,
//! device properties, QMP commands: one exec) and (b) the three help execs
//! of the original report (`-cpu help`, `-help`, `-device help`), and prints
//! median, mean and min of each. Under `cargo test` (no `--bench`) it runs
//! one iteration as a smoke test. QEMU_BIN and QCAPSD_BENCH_ITERS override
//! the binary and the iteration count.

// Tests and benchmarks run tools and binaries; the exec ban is for the
// agent (clippy.toml).
#![allow(clippy::disallowed_methods)]

use qcapsd::qemu::{Accel, ExecCounter, ProbeRequest, probe};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let bin = PathBuf::from(
        std::env::var("QEMU_BIN").unwrap_or_else(|_| "/usr/bin/qemu-system-x86_64".into()),
    );
    if !bin.exists() {
        eprintln!(
            "probe bench: {} not found, nothing to measure",
            bin.display()
        );
        return;
    }
    let iters: usize = match std::env::var("QCAPSD_BENCH_ITERS") {
        Ok(v) => v.parse().expect("QCAPSD_BENCH_ITERS must be a number"),
        Err(_) if bench => 30,
        Err(_) => 1,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let req = ProbeRequest {
        accel: Accel::Auto,
        ..ProbeRequest::new("x86_64")
    };
    let counter = ExecCounter::default();
    let cancel = CancellationToken::new();
    let (mut probes, mut helps) = (Vec::new(), Vec::new());
    let mut summary = String::new();
    for i in 0..iters {
        let t = Instant::now();
        let (caps, _) = rt
            .block_on(probe(&bin, &req, &counter, &cancel))
            .expect("probe");
        probes.push(t.elapsed());
        if i == 0 {
            summary = format!(
                "{} machines, {} CPU models, {} devices, {} device property sets, {} commands, accel {}",
                caps.machines.len(),
                caps.cpu_models.len(),
                caps.devices.len(),
                caps.device_properties.len(),
                caps.commands.len(),
                caps.accel
            );
        }
        let t = Instant::now();
        for args in [&["-cpu", "help"][..], &["-help"], &["-device", "help"]] {
            let st = Command::new(&bin)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("help exec");
            assert!(st.success(), "{} {args:?} failed", bin.display());
        }
        helps.push(t.elapsed());
    }
    assert_eq!(counter.get(), iters as u64, "one exec per probe");
    println!(
        "probe bench: {} ({iters} iterations, interleaved)",
        bin.display()
    );
    println!("  probe collects: {summary}");
    report("qcapsd probe (1 exec)", &mut probes);
    report("-cpu help + -help + -device help (3 execs)", &mut helps);
    let (p, h) = (median(&probes), median(&helps));
    println!(
        "  ratio probe / three help execs (medians): {:.2}",
        p.as_secs_f64() / h.as_secs_f64()
    );
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn report(what: &str, v: &mut [Duration]) {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "  {what:<44} median {:>7.1} ms  mean {:>7.1} ms  min {:>7.1} ms",
        ms(v[v.len() / 2]),
        ms(mean),
        ms(v[0])
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
