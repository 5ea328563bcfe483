//! A `qcapsd run` process, for tests that need the process boundary:
//! signals, restarts, logs, exit codes.

use super::http::{Http, free_port, wait_ready};
use std::path::{Path, PathBuf};

/// A `qcapsd run` process with its own temporary directory, port, cache
/// and unix socket. Killed on drop if still running.
pub struct AgentProc {
    pub child: std::process::Child,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl AgentProc {
    /// Writes a config (listen, cache_dir, unix_socket, then `extra`) and
    /// starts the agent; returns once /readyz says ready.
    pub fn start(dir: &Path, extra: &str) -> AgentProc {
        let port = free_port();
        let config = dir.join("qcapsd.yaml");
        let socket = dir.join("run/qcapsd.sock");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ncache_dir: {}\nunix_socket: {}\n{}{extra}",
                dir.join("cache").display(),
                socket.display(),
                super::one_pass(extra)
            ),
        )
        .unwrap();
        Self::start_with(dir, &config, port, socket)
    }

    /// Starts the agent again on the same directory and config.
    pub fn restart(self) -> AgentProc {
        let (dir, config, socket) = (self.dir.clone(), self.config.clone(), self.socket.clone());
        let port = self.port;
        let status = self.stop();
        assert!(status.success(), "agent exited with {status}");
        Self::start_with(&dir, &config, port, socket)
    }

    fn start_with(dir: &Path, config: &Path, port: u16, socket: PathBuf) -> AgentProc {
        let log = dir.join(format!(
            "agent-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_qcapsd"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let a = AgentProc {
            child,
            port,
            dir: dir.to_owned(),
            config: config.to_owned(),
            socket,
            log,
        };
        a.wait_ready();
        a
    }

    /// Waits for /readyz (bounded: 60 s).
    pub fn wait_ready(&self) {
        if !wait_ready(self.port) {
            panic!("agent not ready; log:\n{}", self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        let st = self.child.wait().unwrap();
        std::mem::forget(self);
        st
    }
}

impl Http for AgentProc {
    fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
