//! The agent in this test process, through `daemon::serve` with a shutdown
//! token and a reload channel of the test's own (as mini-redis's tests
//! drive its server): for tests that need no process boundary.

use super::http::{Http, free_port, wait_ready};
use qcapsd::config::{Config, ConfigError};
use qcapsd::daemon::{self, DaemonError};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct InProcess {
    pub port: u16,
    pub dir: PathBuf,
    pub socket: PathBuf,
    stop: CancellationToken,
    reloads: mpsc::Sender<Result<Config, ConfigError>>,
    thread: Option<std::thread::JoinHandle<Result<(), DaemonError>>>,
}

impl InProcess {
    /// The config every test agent gets (listen on a free port, a cache and
    /// a socket in `dir`, one accelerator pass unless `extra` says
    /// otherwise: see [`super::one_pass`]), then `extra`.
    pub fn config_text(dir: &Path, port: u16, extra: &str) -> String {
        format!(
            "listen: 127.0.0.1:{port}\ncache_dir: {}\nunix_socket: {}\n{}{extra}",
            dir.join("cache").display(),
            dir.join("run/qcapsd.sock").display(),
            super::one_pass(extra)
        )
    }

    /// Starts the agent on its own runtime; returns once /readyz says ready.
    pub fn start(dir: &Path, extra: &str) -> InProcess {
        let a = Self::spawn(dir, extra);
        assert!(wait_ready(a.port), "agent not ready");
        a
    }

    /// The most common agent under test: one counting x86_64 stand-in
    /// replaying `transcript`, named `x86_64`, plus `extra` (whole YAML
    /// keys). Returns the ready agent, the stand-in's path and its count
    /// file.
    pub fn with_x86(dir: &Path, transcript: &str, extra: &str) -> (InProcess, PathBuf, PathBuf) {
        let (x86, count) = super::stand_in(dir, "qemu-system-x86_64", transcript);
        let agent = Self::start(dir, &(extra.to_owned() + &x86_yaml(&x86)));
        (agent, x86, count)
    }

    /// Starts the agent without waiting for it to be ready.
    pub fn spawn(dir: &Path, extra: &str) -> InProcess {
        let port = free_port();
        let cfg = Config::parse(&Self::config_text(dir, port, extra)).unwrap();
        let socket = cfg.unix_socket.as_ref().map(|s| s.0.clone()).unwrap();
        let stop = CancellationToken::new();
        let (reloads, rx) = mpsc::channel(4);
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(daemon::serve(cfg, rx, token))
        });
        InProcess {
            port,
            dir: dir.to_owned(),
            socket,
            stop,
            reloads,
            thread: Some(thread),
        }
    }

    /// Hands the agent a config, as SIGHUP would.
    pub fn reload(&self, extra: &str) {
        let cfg = Config::parse(&Self::config_text(&self.dir, self.port, extra));
        self.reloads.blocking_send(cfg).unwrap();
    }

    /// Shuts the agent down; returns how `serve` ended.
    pub fn stop(mut self) -> Result<(), DaemonError> {
        self.stop.cancel();
        self.thread.take().unwrap().join().unwrap()
    }

    /// Stops it and starts it again on the same directory and config.
    pub fn restart(self, extra: &str) -> InProcess {
        let dir = self.dir.clone();
        self.stop().unwrap();
        Self::start(&dir, extra)
    }
}

impl Http for InProcess {
    fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `emulators:` key naming `x86` as `x86_64`.
pub fn x86_yaml(x86: &Path) -> String {
    format!(
        "emulators:\n  - path: {}\n    name: x86_64\n",
        x86.display()
    )
}
