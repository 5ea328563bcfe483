//! Whether QEMU itself takes a VM (`verify`): the emulator is started
//! once with exactly the VM's machine, accelerator, CPU, vCPUs and
//! devices, stopped (`-S`), with no disk, no network, no default devices
//! and no display, in the exec sandbox; it either answers `query-status`
//! on its monitor (it took the VM), or exits with its own error line, or
//! crashes starting it (an assertion: a refusal too). Killed by
//! `SIGKILL`, timed out or not started at all, it gave no answer.
//!
//! A device that cannot exist without its backend (a disk without its
//! drive, `vfio-pci` without a host device) makes QEMU refuse for a
//! reason that is no verdict on the VM: such a device is left out and QEMU
//! asked again, and the answer says which devices were not started. A
//! refusal about the device itself (no bus for it, not a device type) is
//! a refusal. So a verification costs one exec, and one more per distinct
//! device that needs a backend.

use super::Accel;
use super::exec::{ExecSpec, with_qemu};
use super::outcome::{ExecCounter, ExecError, ExecReport, Exit};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What QEMU made of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// It started the VM (paused) and answered on its monitor.
    pub started: bool,
    /// Its exit status, when it refused.
    pub status: Option<i32>,
    /// Its error line, when it refused (without the program's name).
    pub message: Option<String>,
    /// Devices left out as they need a backend, with QEMU's words.
    pub unverified: Vec<(String, String)>,
    /// QEMU processes started.
    pub execs: u32,
}

/// One line of QEMU's stderr: where (`-device X`, when QEMU says), whether
/// a warning, and what.
fn line_of<'a>(line: &'a str, prefixes: &[String]) -> (Option<&'a str>, bool, &'a str) {
    let l = prefixes
        .iter()
        .find_map(|p| line.strip_prefix(p.as_str()))
        .unwrap_or(line)
        .trim();
    if let Some(w) = l.strip_prefix("warning: ") {
        return (None, true, w);
    }
    if l.starts_with('-') {
        if let Some((at, rest)) = l.split_once(": ") {
            return match rest.strip_prefix("warning: ") {
                Some(w) => (Some(at), true, w),
                None => (Some(at), false, rest),
            };
        }
    }
    (None, false, l)
}

/// What a CPU feature warning names: `abm` of `host doesn't support
/// requested feature: CPUID.80000001H:ECX.abm [bit 5]`; else the warning.
fn feature_of(warning: &str) -> &str {
    let Some((_, f)) = warning.rsplit_once("feature: ") else {
        return warning;
    };
    let f = f.split(" [bit").next().unwrap_or(f);
    f.rsplit_once('.').map_or(f, |(_, name)| name)
}

/// QEMU's first error line in `stderr` (as the sandbox keeps it: lines
/// joined by ` | `), without the program's name. Warnings are not
/// errors, but those at the error's own location say what it is about
/// (each feature a CPU lacks): up to eight are added in parentheses.
pub fn error_line(stderr: &str, program: &Path) -> Option<String> {
    let mut prefixes = vec![format!("{}: ", program.display())];
    if let Some(name) = program.file_name() {
        prefixes.push(format!("{}: ", name.to_string_lossy()));
    }
    let lines: Vec<(Option<&str>, bool, &str)> = stderr
        .split(" | ")
        .map(|l| line_of(l, &prefixes))
        // "…" stands for lines the sandbox left out.
        .filter(|(_, _, t)| !t.is_empty() && *t != "…")
        .collect();
    let &(at, _, what) = lines.iter().find(|(_, warning, _)| !warning)?;
    let line = match at {
        Some(at) => format!("{at}: {what}"),
        None => what.to_owned(),
    };
    let about: Vec<&str> = lines
        .iter()
        .filter(|(a, warning, _)| *warning && *a == at)
        .map(|(_, _, w)| feature_of(w))
        .take(8)
        .collect();
    Some(if about.is_empty() {
        line
    } else {
        let more = lines.iter().filter(|(a, w, _)| *w && *a == at).count() - about.len();
        let more = if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        };
        format!("{line} ({}{more})", about.join(", "))
    })
}

/// The device a refusal is located at (`-device NAME: message`), and the
/// message.
pub fn at_device(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("-device ")?;
    let (device, message) = rest.split_once(": ")?;
    Some((device, message))
}

/// Whether a refusal at a device is about something it lacks without its
/// backend or required property (not about the device itself: a bus it
/// cannot go on, a name that is no device type).
pub fn needs_backend(message: &str) -> bool {
    let m = message.to_lowercase();
    ![
        "bus",
        "device model",
        "device type",
        "not a valid",
        "not supported",
        "unsupported",
        "hotplug",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// Whether QEMU ending so, before its monitor answered, is its answer on
/// the VM: an error exit, or a crash in starting it (an assertion, a
/// fault). `SIGKILL` is not: something else killed it (the OOM killer),
/// and another try may go otherwise.
fn refused(end: Exit) -> bool {
    match end {
        Exit::Code(c) => c != 0,
        Exit::Signal(sig) => sig != rustix::process::Signal::KILL.as_raw(),
    }
}

/// Starts the emulator at `path` with `args` (the VM: see
/// [`crate::verdicts::check::verify_args`]) until QEMU takes it or refuses
/// it for a reason of the VM's own. An error is a QEMU that crashed, hung
/// or could not be started: no answer about the VM.
pub async fn verify(
    path: &Path,
    args: &[String],
    timeout: Duration,
    tag: Option<&str>,
    counter: &ExecCounter,
    cancel: &CancellationToken,
) -> Result<Taken, ExecError> {
    let mut args = args.to_vec();
    let mut taken = Taken {
        started: false,
        status: None,
        message: None,
        unverified: Vec::new(),
        execs: 0,
    };
    loop {
        let spec = ExecSpec {
            tag: tag.map(str::to_owned),
            vm: Some(args.clone()),
            ..ExecSpec::new(path, Accel::Auto, timeout)
        };
        taken.execs += 1;
        let result: Result<((), ExecReport), ExecError> =
            with_qemu(&spec, counter, cancel, async |qmp| {
                qmp.handshake().await?;
                qmp.execute("query-status", None).await?;
                Ok(())
            })
            .await;
        match result {
            Ok(_) => {
                taken.started = true;
                return Ok(taken);
            }
            Err(ExecError::Qmp {
                status: Some(end),
                stderr,
                ..
            }) if refused(end) => {
                let code = match end {
                    Exit::Code(c) => c,
                    Exit::Signal(sig) => 128 + sig,
                };
                let said = error_line(&stderr, path);
                let line = match (end, said) {
                    (Exit::Signal(sig), Some(l)) => format!("it crashed (signal {sig}): {l}"),
                    (Exit::Signal(sig), None) => format!("it crashed (signal {sig})"),
                    (_, Some(l)) => l,
                    (_, None) => format!("it exited with status {code} and said nothing"),
                };
                if let Some((device, message)) = at_device(&line) {
                    let pos = args.chunks(2).position(|p| {
                        p[0] == "-device" && p.get(1).map(String::as_str) == Some(device)
                    });
                    if let Some(pos) = pos.filter(|_| needs_backend(message)) {
                        let device = args[pos * 2 + 1].clone();
                        taken.unverified.push((device.clone(), message.to_owned()));
                        // Every instance of it: they all lack the same.
                        let mut kept = Vec::with_capacity(args.len());
                        for pair in args.chunks(2) {
                            if !(pair[0] == "-device" && pair.get(1) == Some(&device)) {
                                kept.extend_from_slice(pair);
                            }
                        }
                        args = kept;
                        continue;
                    }
                }
                taken.status = Some(code);
                taken.message = Some(line);
                return Ok(taken);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10's own words, as the sandbox keeps its stderr.
    #[test]
    fn qemu_s_error_line_and_what_it_is_about() {
        let bin = Path::new("/usr/bin/qemu-system-x86_64");
        let said = "/usr/bin/qemu-system-x86_64: warning: nic e1000.0 has no peer | /usr/bin/qemu-system-x86_64: -device virtio-blk-pci: drive property not set";
        let line = error_line(said, bin).unwrap();
        assert_eq!(line, "-device virtio-blk-pci: drive property not set");
        assert_eq!(
            at_device(&line),
            Some(("virtio-blk-pci", "drive property not set"))
        );
        assert_eq!(error_line("", bin), None);
        assert_eq!(
            error_line("… | qemu-system-x86_64: -cpu x: bad", bin).unwrap(),
            "-cpu x: bad"
        );
        // QEMU names itself by its file name, and says what a CPU lacks
        // in warnings before the error.
        let cpu = "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.07H:EBX.hle [bit 4] | qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.07H:EBX.rtm [bit 11] | qemu-system-x86_64: Host doesn't support requested features";
        assert_eq!(
            error_line(cpu, bin).unwrap(),
            "Host doesn't support requested features (hle, rtm)",
            "the warnings at the error's location say what it lacks"
        );
        let located = "qemu-system-x86_64: -cpu X,enforce: warning: host doesn't support requested feature: CPUID.07H:EBX.hle [bit 4] | qemu-system-x86_64: -cpu X,enforce: Host doesn't support requested features";
        assert_eq!(
            error_line(located, bin).unwrap(),
            "-cpu X,enforce: Host doesn't support requested features (hle)"
        );
        assert_eq!(
            error_line(
                "qemu-system-hppa: unable to find CPU model 'x'",
                Path::new("/usr/bin/qemu-system-hppa")
            )
            .unwrap(),
            "unable to find CPU model 'x'"
        );
        for backend in [
            "drive property not set",
            "No drive specified",
            "No provided host device",
            "chardev is mandatory",
            "guest-cid property must be greater than 2",
            "9pfs device couldn't find fsdev with the id = NULL",
        ] {
            assert!(needs_backend(backend), "{backend}");
        }
        for own in [
            "No 'PCI' bus found for device 'virtio-net-pci'",
            "No 'usb-bus' bus found for device 'usb-tablet'",
            "'foo' is not a valid device model name",
            "Device 'virtio-net-pci' can't go on PCIE bus",
        ] {
            assert!(!needs_backend(own), "{own}");
        }
    }
}
