//! The lifecycle the agent tells systemd (`Type=notify`), with a datagram
//! socket of the test standing in for `$NOTIFY_SOCKET`: READY=1 only once
//! /readyz is 200, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a
//! SIGHUP, STOPPING=1 at SIGTERM, and WATCHDOG=1 while a watchdog is set.

use crate::common::{self, count, raw_http};
use rustix::process::{Pid, Signal};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Reads datagrams until one holds `want` (bounded: 60 s); returns every
/// message read, the last one holding `want`.
fn read_until(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == want);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {want} within 60 s; got {seen:?}");
}

fn readyz(port: u16) -> u16 {
    raw_http(
        port,
        b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .status
}

#[test]
fn the_agent_tells_systemd_ready_reloading_stopping_and_pets_the_watchdog() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // A stand-in that takes a second to answer: READY must wait for it.
    let count_file = d.path().join("x86.count");
    let inner = common::counting_emulator(
        &bin,
        ".inner",
        &common::transcript("caps_9.1.0_x86_64.replies"),
        &count_file,
    );
    let x86 = common::script(
        &bin,
        "qemu-system-x86_64",
        &format!("sleep 1\nexec '{}' \"$@\"", inner.display()),
    );
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = common::free_port();
    let config = d.path().join("c.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ncache_dir: {}\n{}emulators:\n  - path: {}\n    name: x86_64\n",
        d.path().join("cache").display(),
        common::one_pass(""),
        x86.display()
    );
    std::fs::write(&config, &yaml).unwrap();
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(agent.id() as i32).unwrap();

    // READY=1, with a status line, only once the probe is done, its file
    // written and /readyz 200.
    let before_ready = read_until(&sock, "READY=1");
    let ready = before_ready.last().unwrap();
    assert!(
        ready.contains("STATUS=1 emulator: 1 fresh, 0 failed"),
        "{ready:?}"
    );
    assert_eq!(readyz(port), 200);
    assert_eq!(count(&count_file), 1);
    assert!(d.path().join("cache/x86_64.json").exists());

    // The watchdog is petted (every half second here).
    let pets = read_until(&sock, "WATCHDOG=1");
    assert!(!pets.iter().any(|m| m.contains("READY=1")));

    // A reload: RELOADING=1 with the monotonic time, then READY=1.
    std::fs::write(&config, yaml.replace("name: x86_64", "name: x86")).unwrap();
    rustix::process::kill_process(pid, Signal::HUP).unwrap();
    let reloading = read_until(&sock, "RELOADING=1");
    let msg = reloading.last().unwrap();
    assert!(msg.contains("MONOTONIC_USEC="), "{msg:?}");
    read_until(&sock, "READY=1");

    // Shutdown: STOPPING=1, then a clean exit.
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    read_until(&sock, "STOPPING=1");
    assert!(agent.wait().unwrap().success());
}
