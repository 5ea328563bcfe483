//! The probe next to QEMU's own floor and the help-text execs it replaces,
//! all timed in one run, interleaved.
//!
//! `cargo bench --bench probe` times, per iteration:
//! - the bare start: the same exec path as a probe (spawn, QMP greeting,
//!   `qmp_capabilities`, kill and reap) with nothing asked;
//! - one qcapsd probe of the real qemu-system-x86_64;
//! - the three help execs of the original report (`-cpu help`, `-help`,
//!   `-device help`);
//!
//! and prints median, mean and min of each, the ratio probe / bare start,
//! and the median time of each QMP command inside the probe, so the next
//! regression shows where it is. Under `cargo test` (no `--bench`) it runs
//! one iteration as a smoke test. QEMU_BIN and QCAPSD_BENCH_ITERS override
//! the binary and the iteration count.

// Tests and benchmarks run tools and binaries; the exec ban is for the
// agent (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use qcapsd::qemu::exec::{ExecSpec, with_qemu};
use qcapsd::qemu::{Accel, ExecCounter, ProbeRequest, probe};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn main() {
    let bench = common::measuring();
    let Some(bin) = common::qemu("probe") else {
        return;
    };
    let iters = common::env_or("QCAPSD_BENCH_ITERS", if bench { 30 } else { 1 }) as usize;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let req = ProbeRequest {
        accel: Accel::Auto,
        ..qcapsd::config::defaults::probe_request("x86_64")
    };
    let counter = ExecCounter::default();
    let cancel = CancellationToken::new();
    let bare_spec = ExecSpec::new(&bin, Accel::Auto, Duration::from_secs(30));
    let (mut bares, mut probes, mut helps) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_command: BTreeMap<(usize, String), Vec<Duration>> = BTreeMap::new();
    let mut startups = Vec::new();
    let mut summary = String::new();
    for i in 0..iters {
        let t = Instant::now();
        rt.block_on(with_qemu(&bare_spec, &counter, &cancel, async |qmp| {
            qmp.handshake().await.map(|_| ())
        }))
        .expect("bare start");
        bares.push(t.elapsed());

        let t = Instant::now();
        let (caps, report) = rt
            .block_on(probe(&bin, &req, &counter, &cancel))
            .expect("probe");
        probes.push(t.elapsed());
        startups.push(report.startup);
        let reads = report
            .commands
            .iter()
            .filter(|c| c.command == "device-list-properties")
            .count();
        for (n, c) in report.commands.iter().enumerate() {
            // Device property reads are many small commands: one line.
            let key = if c.command == "device-list-properties" {
                (
                    7,
                    format!(
                        "device-list-properties ({reads} of {} configured)",
                        req.devices.len()
                    ),
                )
            } else {
                (n, c.command.clone())
            };
            let slot = per_command.entry(key).or_default();
            if c.command == "device-list-properties" && slot.len() > i {
                slot[i] += c.took;
            } else {
                slot.push(c.took);
            }
        }
        if i == 0 {
            summary = format!(
                "{} machines, {} CPU models, {} devices ({:?}), {} device property sets, {} commands, accel {}",
                caps.machines.len(),
                caps.cpu_models.len(),
                caps.devices.len(),
                caps.devices_source,
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
    assert_eq!(
        counter.get(),
        2 * iters as u64,
        "one exec per bare start and per probe"
    );
    println!(
        "probe bench: {} ({iters} iterations, interleaved)",
        bin.display()
    );
    println!("  probe collects: {summary}");
    report(
        "bare start (spawn, greeting, qmp_capabilities, kill)",
        &mut bares,
    );
    report("qcapsd probe (1 exec)", &mut probes);
    report("-cpu help + -help + -device help (3 execs)", &mut helps);
    let (b, p, h) = (median(&bares), median(&probes), median(&helps));
    println!(
        "  ratio probe / bare start (medians): {:.2}   probe / three help execs: {:.2}",
        p.as_secs_f64() / b.as_secs_f64(),
        p.as_secs_f64() / h.as_secs_f64()
    );
    println!("  inside the probe (medians):");
    println!(
        "    {:<44} {:>7.1} ms",
        "start to QMP greeting",
        ms(median(&startups))
    );
    for ((_, name), times) in &per_command {
        println!("    {name:<44} {:>7.2} ms", ms(median(times)));
    }
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
        "  {what:<52} median {:>7.1} ms  mean {:>7.1} ms  min {:>7.1} ms",
        ms(v[v.len() / 2]),
        ms(mean),
        ms(v[0])
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
