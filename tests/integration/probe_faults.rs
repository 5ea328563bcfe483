//! Emulators that misbehave: each gives a clear error, never a panic, and
//! leaves no process behind. (QMP runs over pipes: no temporary file exists
//! to leave.)

use crate::common::{self, process_alive, read_pids, script};
use qcapsd::qemu::{ExecCounter, ProbeError, probe};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 9}, "package": ""}, "capabilities": []}}"#;

async fn probe_with_timeout(bin: &Path, timeout: Duration) -> Result<(), ProbeError> {
    let mut req = qcapsd::config::defaults::probe_request("faulty");
    req.timeout = timeout;
    probe(
        bin,
        &req,
        &ExecCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .map(|_| ())
}

async fn probe_err(bin: &Path) -> String {
    probe_with_timeout(bin, Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string()
}

async fn assert_all_gone(pids_file: &Path) {
    let pids = read_pids(pids_file);
    assert!(!pids.is_empty(), "the stand-in recorded its pids");
    // SIGKILL is delivered at once, but the kernel may take a moment to
    // tear a process down.
    common::poll_until_async(|| pids.iter().all(|&p| !process_alive(p))).await;
    let alive: Vec<_> = pids.iter().filter(|&&p| process_alive(p)).collect();
    assert!(alive.is_empty(), "processes left behind: {alive:?}");
}

#[tokio::test]
async fn missing_path_is_named() {
    let e = probe_err(Path::new("/nonexistent/qemu-system-x86_64")).await;
    assert_eq!(e, "/nonexistent/qemu-system-x86_64: no such file");
}

#[tokio::test]
async fn non_executable_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("qemu-system-x86_64");
    std::fs::write(&f, "not a program").unwrap();
    let e = probe_err(&f).await;
    assert_eq!(e, format!("{}: not an executable file", f.display()));
    let e = probe_err(dir.path()).await;
    assert!(e.ends_with("not an executable file"), "a directory: {e}");
}

/// Log lines captured in memory (a `tracing` writer).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Linux refuses to exec a file open for writing (`ETXTBSY`). While it
/// stays open the probe says so in one line; once it is closed the probe
/// goes through. (This once failed CI: a test thread forked while another
/// held its freshly written stand-in open.) On a kernel that allows such an
/// exec, the probe just runs.
#[tokio::test]
async fn binary_open_for_writing_is_retried_then_named() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = common::transcript("caps_9.1.0_x86_64.replies");
    let bin = common::replay_emulator(dir.path(), "qemu", &transcript);

    let writer = std::fs::OpenOptions::new().append(true).open(&bin).unwrap();
    let busy = common::script(dir.path(), "busy", "exit 0");
    let busy_writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&busy)
        .unwrap();
    let kernel_refuses = std::process::Command::new(&busy)
        .status()
        .err()
        .and_then(|e| e.raw_os_error())
        == Some(rustix::io::Errno::TXTBSY.raw_os_error());
    drop(busy_writer);
    if kernel_refuses {
        let e = probe_err(&bin).await;
        assert_eq!(
            e,
            format!(
                "{}: cannot start: the file is open for writing by another process \
                 (being replaced?); still busy after 1300ms",
                bin.display()
            )
        );
    } else {
        probe_with_timeout(&bin, Duration::from_secs(30))
            .await
            .expect("this kernel runs a file open for writing");
    }

    // Closed while the probe is retrying (seen in its debug log, captured
    // on this thread): it goes through.
    let log = Captured::default();
    let _capture = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(log.clone())
            .finish(),
    );
    let release = std::thread::spawn(move || {
        if kernel_refuses {
            assert!(
                common::poll_until(|| log.text().contains("binary busy")),
                "the probe never retried"
            );
        }
        drop(writer);
    });
    probe_with_timeout(&bin, Duration::from_secs(30))
        .await
        .expect("the probe succeeds once the writer is gone");
    release.join().unwrap();
}

#[tokio::test]
async fn emulator_that_exits_at_once_reports_its_stderr_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "qemu",
        "echo 'qemu: -machine none: unsupported machine' >&2\nexit 3",
    );
    let e = probe_err(&bin).await;
    assert!(e.contains("monitor closed"), "{e}");
    assert!(e.contains("exited with status 3"), "{e}");
    assert!(e.contains("unsupported machine"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[tokio::test]
async fn garbage_instead_of_qmp_is_an_error_and_the_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, pids) = common::pid_stand_in(
        dir.path(),
        "echo 'Usage: qemu-system [options] [disk_image]'\nexec sleep 600",
    );
    let e = probe_err(&bin).await;
    assert!(
        e.contains("no QMP greeting") && e.contains("Usage: qemu-system"),
        "{e}"
    );
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn monitor_closed_in_the_middle_names_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "qemu",
        &format!(
            "echo '{GREETING}'\nread line\necho '{{\"return\": {{}}, \"id\": \"qcapsd-1\"}}'\nread line\nexit 0"
        ),
    );
    // Whether QEMU's end shows up as a broken pipe on our write or as the
    // end of the stream on our read, the error is the same.
    let e = probe_err(&bin).await;
    assert!(
        e.contains("monitor closed (waiting for the reply to query-version)"),
        "{e}"
    );
}

#[tokio::test]
async fn hang_is_killed_at_the_timeout_with_every_child() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let p = pids.display();
    // The stand-in forks a child and a grandchild, then hangs itself.
    let bin = script(
        dir.path(),
        "qemu",
        &format!(
            "echo $$ >> {p}\n\
             sleep 600 & echo $! >> {p}\n\
             sh -c 'sleep 600 & echo $! >> {p}; wait' &\n\
             echo $! >> {p}\n\
             echo 'still starting' >&2\n\
             exec sleep 600"
        ),
    );
    let e = probe_with_timeout(&bin, Duration::from_millis(700))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ProbeError::Exec(qcapsd::qemu::ExecError::Timeout { .. })),
        "{msg}"
    );
    assert!(msg.contains("no answer within 0.7s, killed"), "{msg}");
    assert!(
        msg.contains("still starting"),
        "stderr is in the error: {msg}"
    );
    assert_eq!(read_pids(&pids).len(), 4);
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn stdout_flood_without_newline_hits_the_message_cap() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let bin = script(
        dir.path(),
        "qemu",
        &format!(
            "echo $$ > {p}\n(yes 'stderr noise' >&2) &\necho $! >> {p}\nexec tr -d '\\n' < /dev/zero",
            p = pids.display()
        ),
    );
    let e = probe_err(&bin).await;
    assert!(e.contains("QMP message larger than"), "{e}");
    assert!(e.contains("stderr noise"), "{e}");
    assert!(e.len() < 4000, "the error stays short: {} bytes", e.len());
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn stdout_flood_of_lines_is_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, pids) = common::pid_stand_in(
        dir.path(),
        &format!("echo '{GREETING}'\nexec yes 'lorem ipsum'"),
    );
    let e = probe_err(&bin).await;
    assert!(e.contains("not QMP: \"lorem ipsum\""), "{e}");
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn cancelling_a_probe_kills_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, pids) = common::pid_stand_in(dir.path(), "exec sleep 600");
    let cancel = CancellationToken::new();
    let req = qcapsd::config::defaults::probe_request("hung");
    let counter = ExecCounter::default();
    let probing = probe(&bin, &req, &counter, &cancel);
    let trigger = async {
        assert!(common::poll_until_async(|| !read_pids(&pids).is_empty()).await);
        cancel.cancel();
    };
    let (r, ()) = tokio::join!(probing, trigger);
    assert!(r.unwrap_err().to_string().ends_with("probe cancelled"));
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn dropping_a_probe_future_kills_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, pids) = common::pid_stand_in(dir.path(), "exec sleep 600");
    let req = qcapsd::config::defaults::probe_request("hung");
    let counter = ExecCounter::default();
    let cancel = CancellationToken::new();
    tokio::select! {
        _ = probe(&bin, &req, &counter, &cancel) => panic!("the stand-in never answers"),
        started = common::poll_until_async(|| !read_pids(&pids).is_empty()) => assert!(started),
    }
    assert_all_gone(&pids).await;
}

#[test]
fn cli_error_is_one_line_with_exit_code_1() {
    let out = common::qcapsd(&["probe", "/nonexistent/qemu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "qcapsd: probe failed: /nonexistent/qemu: no such file\n"
    );
}

/// Issue 17 item 2: `qcapsd probe bin/qemu-system-x86_64` probed
/// /bin/qemu-system-x86_64 (QEMU runs in `/`, where the relative path
/// named the system's QEMU) and printed it under the relative path.
#[test]
fn a_relative_path_is_the_binary_in_the_caller_s_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, count) = common::stand_in(
        dir.path(),
        "qemu-system-x86_64",
        "caps_9.1.0_x86_64.replies",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args(["probe", "--accel", "tcg", "bin/qemu-system-x86_64"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["qemu"]["version"], "9.1.0",
        "the stand-in, not the system's QEMU"
    );
    assert_eq!(
        doc["emulator"]["path"],
        bin.display().to_string(),
        "the binary actually run"
    );
    assert!(bin.is_absolute());
    assert_eq!(common::count(&count), 1);
}

#[test]
fn cli_bad_usage_exits_64() {
    let out = common::qcapsd(&["probe", "/x", "--accel", "hvf"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn cli_probe_of_a_replay_prints_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let t = common::replies_dir().join("caps_8.2.0_aarch64.replies");
    let bin = common::replay_emulator(dir.path(), "qemu-system-aarch64", &t);
    let out = common::qcapsd(&["probe", bin.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["emulator"]["name"], "qemu-system-aarch64");
    assert_eq!(doc["qemu"]["version"], "8.2.0");
}
