//! What a listing of the running VMs costs the agent: `cargo bench --bench
//! vms` starts 200 stand-in VM processes (a copy of Python named
//! qemu-system-x86_64, each with a command line as libvirt writes one: a
//! name, a uuid, the machine, `-accel`, a CPU with flags, `-smp`, and 12
//! devices in JSON), then times the listing's blocking step
//! ([`qcapsd::agent::vms::judge_all`]: every process in /proc looked at,
//! the 200 read, parsed and judged against qemu-system-x86_64's real
//! document) by the CPU clock of the thread that runs it, as the agent's
//! pass and `GET /v1/vms` run it. Under `cargo test` (no `--bench`) it
//! runs a short pass. QEMU_BIN, QCAPSD_BENCH_VMS and QCAPSD_BENCH_ROUNDS
//! override.

// Tests and benchmarks run tools and binaries; the exec ban is for the
// agent (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

use qcapsd::agent::emulators::Entry;
use qcapsd::agent::memo::{Limits, Memo};
use qcapsd::agent::vms::{Known, judge_all};
use qcapsd::config::discovery::EmulatorSpec;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A VM's command line as libvirt 11 writes it.
fn libvirt_args(i: usize) -> Vec<String> {
    let mut a: Vec<String> = [
        "-name",
        &format!("guest=vm-{i:03},debug-threads=on"),
        "-S",
        "-object",
        &format!(r#"{{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-{i}-vm/master-key.aes"}}"#),
        "-machine",
        "pc-q35-10.0,usb=off,dump-guest-core=off,memory-backend=pc.ram,hpet=off,acpi=on",
        "-accel",
        "kvm",
        "-cpu",
        "qemu64,+pdpe1gb,-svm,kvm=off",
        "-m",
        "size=1048576k",
        "-smp",
        "2,maxcpus=4,sockets=4,cores=1,threads=1",
        "-uuid",
        &format!("c7a5fdbd-edaf-9455-926a-d65c16db{i:04}"),
        "-no-user-config",
        "-nodefaults",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for (n, driver) in [
        "pcie-root-port",
        "pcie-root-port",
        "pcie-root-port",
        "pcie-root-port",
        "qemu-xhci",
        "virtio-serial-pci",
        "virtio-blk-pci",
        "virtio-net-pci",
        "usb-tablet",
        "virtio-balloon-pci",
        "virtio-rng-pci",
        "VGA",
    ]
    .iter()
    .enumerate()
    {
        a.push("-device".into());
        a.push(format!(
            r#"{{"driver":"{driver}","id":"dev{n}","bus":"pci.{n}","addr":"0x0"}}"#
        ));
    }
    a
}

fn main() {
    let bench = common::measuring();
    let Some(qemu) = common::qemu("vms") else {
        return;
    };
    let n = common::env_or("QCAPSD_BENCH_VMS", if bench { 200 } else { 20 }) as usize;
    let rounds = common::env_or("QCAPSD_BENCH_ROUNDS", if bench { 50 } else { 3 }) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("python3");
    let stand_in = dir.path().join("qemu-system-x86_64");
    std::fs::copy(std::fs::canonicalize(python).unwrap(), &stand_in).unwrap();
    // The real document, to judge by.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let req = qcapsd::qemu::ProbeRequest::new(
        "qemu-system-x86_64".to_owned(),
        Duration::from_secs(60),
        Vec::new(),
    );
    let (caps, _) = runtime
        .block_on(qcapsd::qemu::probe(
            &qemu,
            &req,
            &qcapsd::qemu::ExecCounter::default(),
            &tokio_util::sync::CancellationToken::new(),
        ))
        .expect("probe");
    let memo = || {
        Memo::new(
            Limits {
                max_queries: 1,
                max_bytes: 1,
            },
            Vec::new(),
            Box::new(|_| {}),
        )
    };
    let host = qcapsd::qemu::fingerprint::Host::new("/");
    let fingerprint = host
        .fingerprint(
            &qemu,
            &[],
            &[qcapsd::qemu::Accel::Kvm],
            &Arc::new(host.context()),
        )
        .expect("fingerprint");
    let entry =
        Arc::new(Entry::new(caps, fingerprint, 0.1, Vec::new(), (memo(), memo())).expect("entry"));
    let known = [Known {
        spec: EmulatorSpec {
            name: "x86_64".into(),
            path: stand_in.clone(),
        },
        entry: Some(entry),
        missing: None,
        stale: None,
    }];
    let started = Instant::now();
    let vms = StandIns(
        (0..n)
            .map(|i| {
                Command::new(&stand_in)
                    .args(["-c", "import signal; signal.pause()"])
                    .args(libvirt_args(i))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("stand-in")
            })
            .collect(),
    );
    // Until every stand-in runs the copy with its command line: the
    // kernel points `exe` at the new binary a moment before it sets the
    // new command line, and a listing in between counts the process gone.
    let real = std::fs::canonicalize(&stand_in).unwrap();
    let up = |c: &Child| {
        std::fs::read_link(format!("/proc/{}/exe", c.id())).is_ok_and(|l| l == real)
            && std::fs::read(format!("/proc/{}/cmdline", c.id()))
                .is_ok_and(|c| c.windows(9).any(|w| w == b"guest=vm-"))
    };
    while !vms.0.iter().all(up) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the stand-in VMs did not all start within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count();
    eprintln!(
        "vms bench: {n} stand-in VMs up in {:.1} s; {processes} processes on the host",
        started.elapsed().as_secs_f64()
    );
    let proc = Path::new(qcapsd::agent::vms::PROC);
    let mut cpu = Vec::with_capacity(rounds);
    let mut wall = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (c0, w0) = (thread_cpu(), Instant::now());
        let (list, _) = judge_all(proc, &known, None);
        let body = serde_json::to_vec(&list).expect("encode");
        cpu.push(thread_cpu() - c0);
        wall.push(w0.elapsed());
        assert_eq!(list.vms.len(), n, "every stand-in listed");
        assert!(
            list.vms.iter().all(|v| v.verdict.as_str() == "ok"),
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(2000)])
        );
        assert!(body.len() > n * 500);
    }
    cpu.sort();
    wall.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "vms: a listing of {n} VMs ({processes} processes): CPU median {:.2} ms, p90 {:.2} ms; wall median {:.2} ms ({rounds} rounds)",
        ms(cpu[rounds / 2]),
        ms(cpu[rounds * 9 / 10]),
        ms(wall[rounds / 2])
    );
    drop(vms);
}

/// The stand-in VMs, killed when the bench ends or fails.
struct StandIns(Vec<Child>);

impl Drop for StandIns {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
