//! The shim (issue 16): tools that exec QEMU for help text, pointed at a
//! shim, get QEMU's own bytes from the agent's memo with no exec; every
//! other command line is QEMU itself, in the caller's child; with the agent
//! gone, slow or confused, QEMU runs as before.

use crate::common::{self, AgentProc, Http, count};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run printed and how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    code: Option<i32>,
}

/// Runs `bin` with `args` (argv[0] `argv0` where given).
fn run(bin: &Path, argv0: Option<&str>, args: &[&str]) -> Ran {
    let mut cmd = Command::new(bin);
    if let Some(a) = argv0 {
        cmd.arg0(a);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
    Ran {
        stdout: out.stdout,
        stderr: out.stderr,
        code: out.status.code(),
    }
}

fn words(q: &str) -> Vec<&str> {
    q.split_whitespace().collect()
}

/// The five queries recorded by default after each probe.
const DEFAULTS: [&str; 5] = [
    "--help",
    "-version",
    "-machine help",
    "-cpu help",
    "-device help",
];

/// An agent keeping shims in `DIR/shims` for one help-answering stand-in
/// (`bin/qemu-system-x86_64`, tagged v1), plus `extra` config.
struct Scene {
    agent: AgentProc,
    dir: tempfile::TempDir,
    bin: PathBuf,
    shim: PathBuf,
    /// Probes of the stand-in.
    probes: PathBuf,
    /// Every other exec of the stand-in, with its tag and arguments.
    log: PathBuf,
}

const X86: &str = "qemu-system-x86_64";

fn scene(extra: &str) -> Scene {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    let bin = dir.path().join("bin").join(X86);
    let (probes, log) = (dir.path().join("probes"), dir.path().join("log"));
    common::help_stand_in(&bin, "caps_9.1.0_x86_64.replies", "v1", &probes, &log);
    let shims = dir.path().join("shims");
    let agent = AgentProc::start(
        dir.path(),
        &format!(
            "shim_dir: {}\n{extra}emulators:\n  - path: {}\n",
            shims.display(),
            bin.display()
        ),
    );
    Scene {
        agent,
        shim: shims.join(X86),
        dir,
        bin,
        probes,
        log,
    }
}

impl Scene {
    fn shim_metric(&self, result: &str) -> f64 {
        self.agent
            .metric(&format!(
                "qcapsd_shim_requests_total{{emulator=\"{X86}\",result=\"{result}\"}}"
            ))
            .unwrap_or(-1.0)
    }

    /// QEMU processes the agent started for this emulator (probes and
    /// recordings): the exec counter as /metrics shows it.
    fn execs(&self) -> f64 {
        self.agent
            .metric(&format!(
                "qcapsd_exec_duration_seconds_count{{emulator=\"{X86}\"}}"
            ))
            .unwrap_or(-1.0)
    }

    /// Lines of the stand-in's log tagged `tag`.
    fn logged(&self, tag: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .map(str::to_owned)
            .collect()
    }
}

/// What the stand-in tagged `tag` prints for `q`.
fn stand_in_answer(tag: &str, q: &str) -> Ran {
    let args = words(q).join(" ");
    Ran {
        stdout: format!("{tag}: help for {args}\n").into_bytes(),
        stderr: format!("{tag} on stderr: {args}\n").into_bytes(),
        code: Some(3),
    }
}

/// After the first answers, 1,000 calls of the five default queries make
/// no exec: counted by the agent's exec counter and by the stand-in's own
/// log. Prewarming cost exactly one exec per default query.
#[test]
fn a_thousand_calls_after_the_first_answers_make_no_exec() {
    let s = scene("");
    assert!(
        common::poll_until(|| s.logged("v1").len() == 5),
        "prewarm: {:?}",
        s.logged("v1")
    );
    assert!(common::poll_until(|| s.shim_metric("recorded") == 5.0));
    let execs = s.execs();
    assert_eq!(execs, 6.0, "one probe, five recordings");
    for i in 0..1000 {
        let q = DEFAULTS[i % DEFAULTS.len()];
        assert_eq!(
            run(&s.shim, None, &words(q)),
            stand_in_answer("v1", q),
            "{q}"
        );
    }
    assert_eq!(s.logged("v1").len(), 5, "the stand-in ran for none of them");
    assert_eq!(s.execs(), execs, "nor did the agent count an exec");
    assert_eq!(count(&s.probes), 1);
    assert_eq!(s.shim_metric("answered"), 1000.0);
    assert_eq!(s.shim_metric("fell_back"), 0.0);
}

/// A package upgrade renames a new binary in: the next call gets the new
/// binary's bytes, after exactly one exec per query form.
#[test]
fn after_an_upgrade_the_next_call_gets_the_new_bytes_for_one_exec_per_form() {
    let s = scene("");
    assert!(common::poll_until(|| s.logged("v1").len() == 5));
    common::help_stand_in(
        &s.bin,
        "caps_10.0.0_x86_64.replies",
        "v2",
        &s.probes,
        &s.log,
    );
    for q in DEFAULTS {
        assert_eq!(
            run(&s.shim, None, &words(q)),
            stand_in_answer("v2", q),
            "{q}"
        );
    }
    assert!(common::poll_until(|| s.shim_metric("recorded") == 10.0));
    let mut v2 = s.logged("v2");
    v2.sort();
    let mut want: Vec<String> = DEFAULTS
        .iter()
        .map(|q| format!("v2 {}", words(q).join(" ")))
        .collect();
    want.sort();
    assert_eq!(v2, want, "one exec per form");
    assert_eq!(s.logged("v1").len(), 5);
    assert_eq!(count(&s.probes), 2);
}

/// Whatever is sent straight to the agent that is not a pure query — the
/// arguments of a VM, paths, NUL bytes, a megabyte, 10,000 random lists —
/// is refused and reaches neither QEMU nor the memo. Through the shim the
/// same lists run QEMU in place, without the memo.
#[test]
fn nothing_but_pure_queries_reaches_qemu_or_the_memo() {
    let s = scene("shim_prewarm: []\n");
    let ask = |args: &[String]| {
        let mut q = format!("/v1/emulators/{X86}/help?argv0={X86}");
        for a in args {
            q += &format!("&arg={}", qcapsd::api::client::percent_encode(a));
        }
        s.agent.get(&q).status
    };
    let strings = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let hostile: Vec<Vec<String>> = vec![
        strings(&["-m", "1024", "-drive", "file=/var/lib/disk.img"]),
        strings(&["-kernel", "/boot/vmlinuz", "-help"]),
        strings(&["-cpu", "help", "-qmp", "unix:/tmp/x,server=on"]),
        strings(&["-L", "/etc", "-help"]),
        strings(&["/etc/passwd"]),
        strings(&["-device", "../../etc/passwd,help"]),
        strings(&["-help\0"]),
        strings(&["-device", "virtio\0,help"]),
        strings(&["-chardev", "file,id=f,path=/tmp/pwn", "-help"]),
        strings(&["-help", &"x".repeat(1 << 20)]),
        Vec::new(),
    ];
    for h in &hostile {
        let status = ask(h);
        assert!(
            (400..500).contains(&status),
            "{status} for {:?}",
            &h.iter().map(|a| a.len().min(40)).collect::<Vec<_>>()
        );
    }
    // Random lists from tokens QEMU knows, each with at least one that is
    // not on the allow-list.
    let allowed = [
        "-help",
        "-version",
        "-cpu",
        "help",
        "-device",
        "?",
        "-S",
        "-nodefaults",
        "-machine",
        "q35",
        "-accel",
        "kvm",
        "-display",
        "none",
    ];
    let others = [
        "-m",
        "512",
        "-smp",
        "4",
        "-drive",
        "if=virtio",
        "-netdev",
        "user,id=n",
        "-monitor",
        "stdio",
        "-cpu",
        "host",
        "-machine",
        "q35,usb=on",
        "-d",
        "in_asm",
        "-D",
        "/tmp/log",
        "-trace",
        "enable=*",
        "--",
        "-accel",
        "hvf",
        "%00",
        "-device",
        "e1000,netdev=n",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for _ in 0..10_000 {
        let len = 1 + next(6);
        let mut list: Vec<String> = (0..len)
            .map(|_| allowed[next(allowed.len())].to_owned())
            .collect();
        let at = next(len + 1);
        list.insert(at, others[next(others.len())].to_owned());
        if qcapsd::qemu::cmdline::is_pure_query(&list) {
            continue; // an "other" that happened to be allowed in place
        }
        assert_eq!(ask(&list), 400, "{list:?}");
    }
    assert!(
        s.logged("v1").is_empty(),
        "QEMU never ran: {:?}",
        s.logged("v1")
    );
    assert_eq!(s.execs(), 1.0, "only the probe");
    assert_eq!(
        (s.shim_metric("recorded"), s.shim_metric("answered")),
        (0.0, 0.0)
    );
    // The shims' own socket serves nothing else.
    let socket = s.dir.path().join("shims/.qcapsd/agent.sock");
    let r = common::unix_get(&socket, "/v1/emulators");
    assert_eq!(r.status, 404);
    // Through the shim, a VM's command line is QEMU in place, never the memo.
    let vm = ["-m", "1024", "-cpu", "host"];
    assert_eq!(
        run(&s.shim, None, &vm),
        stand_in_answer("v1", &vm.join(" "))
    );
    assert_eq!(s.logged("v1").len(), 1);
    assert_eq!(
        (s.shim_metric("recorded"), s.shim_metric("answered")),
        (0.0, 0.0)
    );
    assert_eq!(s.shim_metric("ran_qemu"), 1.0);
}

/// The agent keeps one shim per emulator, named like its binary: it adds
/// one when discovery finds a new binary (no reload), removes one when the
/// binary goes, touches nothing else in the directory, and `qcapsd shim`
/// lists what each fronts.
#[test]
fn shims_come_and_go_with_the_emulators_and_nothing_else_is_touched() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let (probes, log) = (d.path().join("probes"), d.path().join("log"));
    for name in ["qemu-system-x86_64", "qemu-system-aarch64"] {
        common::help_stand_in(
            &bin.join(name),
            "caps_9.1.0_x86_64.replies",
            "v1",
            &probes,
            &log,
        );
    }
    let shims = d.path().join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    std::fs::write(shims.join("notes.txt"), "an operator's file").unwrap();
    let agent = AgentProc::start(
        d.path(),
        &format!(
            "shim_dir: {}\nshim_prewarm: []\nrevalidate_interval: 1s\nemulators:\n  - glob: {}/qemu-system-*\n",
            shims.display(),
            bin.display()
        ),
    );
    let listed = |name: &str| std::fs::symlink_metadata(shims.join(name)).is_ok();
    assert!(listed("qemu-system-x86_64") && listed("qemu-system-aarch64"));
    common::help_stand_in(
        &bin.join("qemu-system-ppc64"),
        "caps_9.1.0_x86_64.replies",
        "v1",
        &probes,
        &log,
    );
    assert!(
        common::poll_until(|| listed("qemu-system-ppc64")),
        "{}",
        agent.log_text()
    );
    std::fs::remove_file(bin.join("qemu-system-aarch64")).unwrap();
    assert!(
        common::poll_until(|| !listed("qemu-system-aarch64")),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(shims.join("notes.txt")).unwrap(),
        "an operator's file"
    );
    let out = common::qcapsd(&["shim", "--config", agent.config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("2 shim(s); the agent answers"), "{text}");
    let ppc = shims.join("qemu-system-ppc64").display().to_string();
    assert!(
        text.lines().any(|l| l.starts_with(&ppc)
            && l.ends_with(&bin.join("qemu-system-ppc64").display().to_string())),
        "{text}"
    );
    assert!(!text.contains("aarch64"), "{text}");
}

/// The real QEMU of this machine.
fn x86() -> PathBuf {
    common::real_qemu(X86)
}

/// An agent keeping a shim for the real qemu-system-x86_64.
fn real_scene(extra: &str) -> (AgentProc, tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let shims = d.path().join("shims");
    let agent = AgentProc::start(
        d.path(),
        &format!(
            "shim_dir: {}\n{extra}emulators:\n  - path: {}\n",
            shims.display(),
            x86().display()
        ),
    );
    (agent, d, shims.join(X86))
}

/// A VM started through the shim is QEMU itself in the caller's child:
/// its stdin and stdout are QEMU's (QMP on stdio), its pid is QEMU's (QMP
/// on a socket; SIGTERM to it ends QEMU), its exit status is QEMU's.
fn a_vm_through_the_shim_is_qemu_itself(shim: &Path, dir: &Path) {
    // stdin and stdout passed through.
    let mut child = Command::new(shim)
        .args([
            "-machine",
            "none",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(
        common::poll_until(
            || std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == x86())
        ),
        "the caller's child is not QEMU"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n{\"execute\":\"quit\"}\n")
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("\"status\": \"prelaunch\""), "{out}");
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // The pid is QEMU's: QMP on a socket, then SIGTERM to that pid.
    let qmp = dir.join(format!("vm-{}.sock", std::process::id()));
    let mut child = Command::new(shim)
        .args([
            "-machine",
            "none",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(common::poll_until(|| qmp.exists()));
    let s = std::os::unix::net::UnixStream::connect(&qmp).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""), "{line}");
    (&s).write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
        .unwrap();
    let mut status = String::new();
    while !status.contains("prelaunch") {
        status.clear();
        assert!(reader.read_line(&mut status).unwrap() > 0, "QMP closed");
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let exited = child.wait().unwrap();
    assert!(exited.code().is_some() || exited.signal_of().is_some());

    // The exit status and stderr are QEMU's.
    let bad = ["-machine", "no-such-machine", "-display", "none"];
    let direct = run(&x86(), Some(&shim.display().to_string()), &bad);
    let through = run(shim, None, &bad);
    assert_eq!(through, direct);
    assert_eq!(through.code, Some(1));
}

trait SignalOf {
    fn signal_of(&self) -> Option<i32>;
}

impl SignalOf for std::process::ExitStatus {
    fn signal_of(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(self)
    }
}

#[test]
#[ignore = "needs QEMU"]
fn a_vm_started_through_the_shim_is_qemu_in_the_caller_s_child() {
    let (agent, d, shim) = real_scene("shim_prewarm: []\n");
    a_vm_through_the_shim_is_qemu_itself(&shim, d.path());
    let ran = || {
        agent
            .metric(&format!(
                "qcapsd_shim_requests_total{{emulator=\"{X86}\",result=\"ran_qemu\"}}"
            ))
            .unwrap()
    };
    assert_eq!(ran(), 3.0, "three pass-throughs, counted");
    // Issue 23: the agent takes what the count file holds and empties it
    // (it grew a byte per call, forever); taken once, counted once.
    let file = d
        .path()
        .join(format!("shims/.qcapsd/counts/{X86}.ran_qemu"));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "emptied");
    assert_eq!(ran(), 3.0, "not counted twice");
    let _ = run(&shim, None, &["-machine", "no-such-machine"]);
    assert_eq!(ran(), 4.0);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
}

/// The queries of the fallback test.
const FALLBACK_QUERIES: [&str; 6] = [
    "--help",
    "-version",
    "-machine help",
    "-cpu help",
    "-device help",
    "-device no-such-device,help",
];

/// With the agent stopped, its socket replaced by a file, or a socket that
/// never answers, every query through the shim gets QEMU's bytes by
/// running QEMU, and no call waits for the shim's timeout unless the
/// agent holds it (a bound, 10 s against a timeout of 30 s, not a timing);
/// a VM starts through the shim all the same.
#[test]
#[ignore = "needs QEMU"]
fn with_the_agent_stopped_or_confused_the_shim_runs_qemu() {
    let (agent, d, shim) = real_scene("shim_timeout: 30s\nshim_prewarm: []\n");
    let socket = d.path().join("shims/.qcapsd/agent.sock");
    let fell_back = d
        .path()
        .join(format!("shims/.qcapsd/counts/{X86}.fell_back"));
    let same = |what: &str| {
        for q in FALLBACK_QUERIES {
            let started = Instant::now();
            let through = run(&shim, None, &words(q));
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: {q} waited for the timeout"
            );
            assert_eq!(
                through,
                run(&x86(), Some(&shim.display().to_string()), &words(q)),
                "{what}: {q}"
            );
        }
    };
    let signal = |sig| {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(agent.child.id() as i32).unwrap(),
            sig,
        )
        .unwrap()
    };
    let counted = || std::fs::metadata(&fell_back).unwrap().len();
    // Issue 23: a frozen agent (SIGSTOP, a cgroup freezer, a debugger)
    // still accepts connections but sends nothing. The shim waits for its
    // acknowledgement (250 ms), not for shim_timeout (30 s here).
    signal(rustix::process::Signal::STOP);
    same("agent frozen");
    assert_eq!(counted(), 6, "each fallback counted");
    signal(rustix::process::Signal::CONT);
    // Thawed, it takes the fallbacks into its metric, and answers again.
    let series = format!("qcapsd_shim_requests_total{{emulator=\"{X86}\",result=\"fell_back\"}}");
    assert_eq!(agent.metric(&series), Some(6.0));
    assert_eq!(counted(), 0);
    assert_eq!(
        run(&shim, None, &["-version"]),
        run(&x86(), Some(&shim.display().to_string()), &["-version"])
    );
    assert_eq!(
        agent.metric(&series),
        Some(6.0),
        "answered, not fallen back"
    );
    let status = agent.stop();
    assert!(status.success());
    assert!(!socket.exists(), "the agent removes its socket");
    same("agent stopped");
    assert_eq!(counted(), 6, "each fallback counted");
    a_vm_through_the_shim_is_qemu_itself(&shim, d.path());
    std::fs::write(&socket, "not a socket").unwrap();
    same("socket replaced by a file");

    // A socket that accepts and never answers: the shim waits for an
    // acknowledgement, then runs QEMU.
    std::fs::remove_file(&socket).unwrap();
    let mute = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for c in mute.incoming().take(FALLBACK_QUERIES.len()) {
            kept.push(c.unwrap());
        }
        kept
    });
    same("an agent that never answers");
    drop(held.join().unwrap());
}

/// Issue 23: the agent is killed after it acknowledged a request, while
/// the answer is being recorded (QEMU slow to print its help): the shim
/// runs QEMU itself at once, well within shim_timeout (30 s).
#[test]
fn an_agent_killed_mid_answer_costs_the_shim_nothing_but_qemu_s_own_time() {
    let d = tempfile::tempdir().unwrap();
    let (bin, log) = (d.path().join("bin"), d.path().join("help.log"));
    std::fs::create_dir_all(&bin).unwrap();
    let slow = common::script(
        &bin,
        X86,
        &format!(
            "case \" $* \" in\n  *\" -qmp \"*) exec '{py}' '{replayer}' '{t}' \"$@\" ;;\nesac\necho started >> '{log}'\nsleep 2\necho \"slow help\"\n",
            py = "/usr/bin/python3",
            replayer = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/replay_qemu.py")
                .display(),
            t = common::transcript("caps_10.0.0_x86_64.replies").display(),
            log = log.display(),
        ),
    );
    let shims = d.path().join("shims");
    let mut agent = AgentProc::start(
        d.path(),
        &format!(
            "shim_dir: {}\nshim_timeout: 30s\nshim_prewarm: []\nemulators:\n  - path: {}\n",
            shims.display(),
            slow.display()
        ),
    );
    let shim = shims.join(X86);
    let started = Instant::now();
    let caller = std::thread::spawn(move || run(&shim, None, &["--help"]));
    // The agent took the request and is recording: kill it.
    assert!(common::poll_until(|| common::count(&log) >= 1));
    agent.child.kill().unwrap();
    let answer = caller.join().unwrap();
    assert_eq!(answer.stdout, b"slow help\n", "QEMU's own bytes");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the shim waited for its timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        common::count(&log),
        2,
        "the recording, then the shim's own exec"
    );
    let _ = agent.child.wait();
}

/// Every allow-listed query form, through the shim, gives exactly what
/// QEMU gives (stdout, stderr, exit status) on every emulator installed:
/// recorded once, then from the memo, and again after two restarts (from
/// the memo on disk, with no exec).
#[test]
#[ignore = "needs QEMU (all 30 emulators)"]
fn every_query_form_gives_qemu_s_own_bytes_on_every_emulator_across_restarts() {
    let forms = [
        "--help",
        "-h",
        "-help",
        "-version",
        "--version",
        "-M help",
        "-machine ?",
        "-cpu help",
        "-cpu ?",
        "-device help",
        "-device ?",
        "-accel help",
        "-display help",
        "-audiodev help",
        "-netdev help",
        "-nic help",
        "-object help",
        "-chardev help",
        "-vga help",
        "-device virtio-net-pci,help",
        "-object memory-backend-ram,help",
        "-device no-such-device,help",
        "-nodefaults -no-user-config -nographic -machine help",
        "-accel tcg -cpu help",
        "-S -display none -version",
    ];
    let bins = common::every_emulator();
    let d = tempfile::tempdir().unwrap();
    let shims = d.path().join("shims");
    let mut yaml = format!(
        "shim_dir: {}\nshim_prewarm: []\nemulators:\n",
        shims.display()
    );
    for b in &bins {
        yaml += &format!("  - path: {}\n", b.display());
    }
    // QEMU's own answers, once: argv[0] the shim's path (QEMU prints its
    // base name), as the shim's caller runs it.
    let direct: Vec<Vec<Ran>> = std::thread::scope(|s| {
        let handles: Vec<_> = bins
            .iter()
            .map(|b| {
                let shim = shims.join(b.file_name().unwrap());
                s.spawn(move || {
                    forms
                        .iter()
                        .map(|q| run(b, Some(&shim.display().to_string()), &words(q)))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut agent = AgentProc::start(d.path(), &yaml);
    let through = |round: &str| {
        for (b, want) in bins.iter().zip(&direct) {
            let shim = shims.join(b.file_name().unwrap());
            for (q, want) in forms.iter().zip(want) {
                assert_eq!(
                    &run(&shim, None, &words(q)),
                    want,
                    "{round}: {} {q}",
                    b.display()
                );
            }
        }
    };
    through("first");
    // kvm, as the cluster managers call it.
    let kvm_direct = run(&x86(), Some("kvm"), &["-enable-kvm", "--help"]);
    let kvm_shim = run(&shims.join(X86), Some("kvm"), &["-enable-kvm", "--help"]);
    assert_eq!(kvm_shim, kvm_direct, "kvm -enable-kvm --help");
    let sum = |agent: &AgentProc, result: &str| -> f64 {
        let m = agent.get("/metrics").text();
        m.lines()
            .filter(|l| {
                l.starts_with("qcapsd_shim_requests_total{")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let recorded = sum(&agent, "recorded");
    for round in ["after a restart", "after a second restart"] {
        agent = agent.restart();
        through(round);
        assert_eq!(
            sum(&agent, "recorded"),
            0.0,
            "{round}: answered from disk, no exec"
        );
        assert!(sum(&agent, "answered") > 0.0);
    }
    assert!(
        recorded >= (bins.len() - 1) as f64 * forms.len() as f64,
        "{recorded}"
    );
}
