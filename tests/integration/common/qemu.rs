//! Real QEMU, asked directly by the tests (not through qcapsd): its help
//! texts, read with plain splits so that a parser bug in qcapsd cannot
//! agree with itself, and whether it starts a given VM.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The system emulators Debian's qemu-system-* packages install (bookworm-
/// backports, QEMU 10): qemu-system-x86, -arm, -ppc, -s390x, -riscv,
/// -mips, -sparc and -misc. `.ci/install-deps` installs them all.
pub const DEBIAN_EMULATORS: &[&str] = &[
    "qemu-system-aarch64",
    "qemu-system-alpha",
    "qemu-system-arm",
    "qemu-system-avr",
    "qemu-system-hppa",
    "qemu-system-i386",
    "qemu-system-loongarch64",
    "qemu-system-m68k",
    "qemu-system-microblaze",
    "qemu-system-microblazeel",
    "qemu-system-mips",
    "qemu-system-mips64",
    "qemu-system-mips64el",
    "qemu-system-mipsel",
    "qemu-system-or1k",
    "qemu-system-ppc",
    "qemu-system-ppc64",
    "qemu-system-riscv32",
    "qemu-system-riscv64",
    "qemu-system-rx",
    "qemu-system-s390x",
    "qemu-system-sh4",
    "qemu-system-sh4eb",
    "qemu-system-sparc",
    "qemu-system-sparc64",
    "qemu-system-tricore",
    "qemu-system-x86_64",
    "qemu-system-x86_64-microvm",
    "qemu-system-xtensa",
    "qemu-system-xtensaeb",
];

/// Every one of [`DEBIAN_EMULATORS`] (the test fails if one is missing).
pub fn every_emulator() -> Vec<PathBuf> {
    DEBIAN_EMULATORS
        .iter()
        .map(|n| super::real_qemu(n))
        .collect()
}

/// QEMU's stdout for `args`.
fn stdout_of(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first word of each indented line after the heading, up to the
/// first blank or unindented line: the names of `-cpu help` and
/// `-machine help`, whatever each target prints after them.
fn listed(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .take_while(|l| l.starts_with([' ', '\t']) && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The model names `-cpu help` prints.
pub fn cpu_help_names(bin: &Path) -> Vec<String> {
    let mut v = listed(&stdout_of(bin, &["-cpu", "help"]));
    v.sort();
    v
}

/// The machine names and aliases `-machine help` prints, without `none`.
pub fn machine_help_names(bin: &Path) -> Vec<String> {
    let text = stdout_of(bin, &["-machine", "help"]);
    // Unlike -cpu help, machine lines are not indented.
    let mut v: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "none")
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The names `-device help` prints: what `-device` accepts.
pub fn device_help_names(bin: &Path) -> Vec<String> {
    let text = stdout_of(bin, &["-device", "help"]);
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("name \""))
        .map(|l| l.split('"').nth(1).unwrap().to_owned())
        .collect();
    let lines = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), lines, "each device is listed once");
    names
}

/// `f` over `items` on two threads (this machine's cores), results in
/// the items' order: the real-QEMU sweeps start QEMU two at a time.
pub fn two_at_a_time<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(items.len().div_ceil(2).max(1))
            .map(|chunk| s.spawn(move || chunk.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sweep thread panicked"))
            .collect()
    })
}

/// Whether QEMU starts with `args` (stopped, `-S`): `Ok` if it answers
/// `query-status` on its monitor, else its stderr. The test adds
/// `-qmp stdio`.
pub fn qemu_starts(bin: &Path, args: &[String]) -> Result<(), String> {
    let mut child = Command::new(bin)
        .args(args)
        .args(["-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(
        b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\",\"id\":\"s\"}\n",
    );
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let answered = stdout.lines().map_while(Result::ok).any(|l| {
            serde_json::from_str::<Value>(&l)
                .is_ok_and(|v| v["id"] == "s" && v["return"]["status"].is_string())
        });
        let _ = tx.send(answered);
    });
    let answered = rx.recv_timeout(Duration::from_secs(60)).unwrap_or(false);
    let _ = stdin.write_all(b"{\"execute\":\"quit\"}\n");
    drop(stdin);
    super::poll_until(|| child.try_wait().unwrap().is_some());
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    if answered {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
