//! Stand-in emulators: replays of libvirt's transcripts that count their
//! execs or log what they are asked, scripts that misbehave, and the
//! package-upgrade rename.

use super::data::transcript;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn python3() -> PathBuf {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("python3")
}

/// Writes an executable `#!/bin/sh` script named `name` into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A stand-in emulator in `dir` that replays `transcript` over QMP.
pub fn replay_emulator(dir: &Path, name: &str, transcript: &Path) -> PathBuf {
    let replayer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_qemu.py");
    script(
        dir,
        name,
        &format!(
            "exec '{}' '{}' '{}' \"$@\"",
            python3().display(),
            replayer.display(),
            transcript.display()
        ),
    )
}

/// A replay stand-in that also logs every command it receives to `log`.
pub fn recording_emulator(dir: &Path, name: &str, transcript: &Path, log: &Path) -> PathBuf {
    let replayer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_qemu.py");
    script(
        dir,
        name,
        &format!(
            "exec '{}' '{}' '{}' --log '{}' \"$@\"",
            python3().display(),
            replayer.display(),
            transcript.display(),
            log.display()
        ),
    )
}

/// A stand-in emulator that replays `transcript` and appends a line to
/// `count_file` on every exec, so tests count execs exactly.
pub fn counting_emulator(dir: &Path, name: &str, transcript: &Path, count_file: &Path) -> PathBuf {
    let replayer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_qemu.py");
    script(
        dir,
        name,
        &format!(
            "echo exec >> '{}'\nexec '{}' '{}' '{}' \"$@\"",
            count_file.display(),
            python3().display(),
            replayer.display(),
            transcript.display()
        ),
    )
}

/// Lines in a count file (0 if absent).
pub fn count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// A `#!/bin/sh` stand-in that first appends its pid to a file, then runs
/// `body`; returns the script and the pid file.
pub fn pid_stand_in(dir: &Path, body: &str) -> (PathBuf, PathBuf) {
    let pids = dir.join("pids");
    let bin = script(
        dir,
        "qemu",
        &format!("echo $$ >> '{}'\n{body}", pids.display()),
    );
    (bin, pids)
}

/// A counting replay stand-in named `name` in `dir/bin`, counting into
/// `dir/<name>.count`; returns its path and the count file.
pub fn stand_in(dir: &Path, name: &str, transcript_file: &str) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let count_file = dir.join(format!("{name}.count"));
    let path = counting_emulator(&bin, name, &transcript(transcript_file), &count_file);
    (path, count_file)
}

/// Replaces the stand-in at `path` the way a package upgrade does: a new
/// file (replaying `new_transcript`, counting into `count_file`) renamed
/// over the old one.
pub fn rename_upgrade(path: &Path, new_transcript: &str, count_file: &Path) {
    let dir = path.parent().unwrap();
    let staged = counting_emulator(
        dir,
        ".staged-upgrade",
        &transcript(new_transcript),
        count_file,
    );
    std::fs::rename(staged, path).unwrap();
}

/// Probes `bin` (called `name`) as the agent does by default on a host
/// where KVM works: the main pass under KVM, falling back to TCG, and a
/// CPU pass under TCG.
pub async fn probe_kvm_and_tcg(
    bin: &Path,
    name: &str,
) -> Result<qcapsd::qemu::Capabilities, qcapsd::qemu::ProbeError> {
    use qcapsd::qemu::{Accel, ExecCounter, ProbeRequest, probe};
    let req = qcapsd::config::defaults::probe_request(name).accels(&[Accel::Kvm, Accel::Tcg], true);
    probe(
        bin,
        &req,
        &ExecCounter::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .map(|(caps, _)| caps)
}

/// A stand-in emulator that is probed like QEMU (replaying `transcript`
/// over QMP, each probe counted in `count_file`) and answers every other
/// command line as a help text would: `TAG: help for ARGS` on stdout, a
/// line on stderr, exit status 3; each such exec is logged (its
/// arguments) to `log`. Written atomically at `path` (a rename, as a
/// package upgrade does), so it can replace an earlier one.
pub fn help_stand_in(path: &Path, transcript_file: &str, tag: &str, count_file: &Path, log: &Path) {
    let replayer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_qemu.py");
    let staged = path.with_file_name(format!(".staged-{tag}"));
    std::fs::write(
        &staged,
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" -qmp \"*) echo exec >> '{count}'; exec '{py}' '{replayer}' '{t}' \"$@\" ;;\nesac\n\
             echo \"{tag} $*\" >> '{log}'\necho \"{tag}: help for $*\"\necho \"{tag} on stderr: $*\" >&2\nexit 3\n",
            count = count_file.display(),
            py = python3().display(),
            replayer = replayer.display(),
            t = transcript(transcript_file).display(),
            log = log.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A fixture host root (config `host_root`) in `dir/host` with a
/// `/dev/kvm`: the same KVM answers on any machine.
pub fn kvm_host(dir: &Path) -> PathBuf {
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("dev")).unwrap();
    std::fs::write(host.join("dev/kvm"), "").unwrap();
    host
}
