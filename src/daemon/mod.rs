//! `qcapsd run`: takes the cache directory, binds the listeners, starts the
//! agent (disk cache, then probes), the revalidator and the HTTP servers,
//! and handles signals — SIGTERM/SIGINT shut down (in-flight probes killed
//! and reaped, the unix socket removed), SIGHUP reloads the config.
//!
//! [`serve`] is the whole agent under a caller's shutdown token and reload
//! channel, so tests drive it in-process (as mini-redis does).

pub mod notify;

use crate::agent::revalidate::Revalidator;
use crate::agent::{Agent, AgentError};
use crate::api::client::Target;
use crate::api::{self, Ctx, Listener};
use crate::config::{Config, ConfigError};
use crate::support::shim_dir;
use notify::Notifier;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long open connections and in-flight probes get at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config cannot be applied (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(
        "cannot listen on {addr}: {source} (another agent running? set `listen`, `metrics_listen` or `unix_socket` in the config)"
    )]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] api::BindError),
    #[error("{}: another agent uses this cache directory (stop it, or set another `cache_dir`)", .0.display())]
    CacheDirInUse(PathBuf),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(
        "the config has neither `listen` nor `unix_socket`: the query API would be unreachable"
    )]
    NoQueryApi,
}

impl DaemonError {
    /// Whether the fault is in the config (exit 64) rather than the
    /// machine (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DaemonError::Config(_)
                | DaemonError::Agent(AgentError::Discovery(_))
                | DaemonError::NoQueryApi
        )
    }
}

/// Runs the agent until SIGTERM or SIGINT. `config_path` is re-read on
/// SIGHUP (without one, SIGHUP re-runs the default discovery).
pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let stop = shutdown.clone();
    let signals = async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => {
                    // File I/O off the runtime's workers.
                    let path = config_path.clone();
                    let loaded = tokio::task::spawn_blocking(move || match path {
                        Some(p) => Config::load(&p),
                        None => Ok(Config::default()),
                    })
                    .await
                    .unwrap_or_else(|e| Err(ConfigError::Read {
                        path: String::new(),
                        source: std::io::Error::other(e.to_string()),
                    }));
                    if reload_tx.send(loaded).await.is_err() { break; }
                }
            }
        }
        stop.cancel();
    };
    tokio::spawn(signals);
    serve(cfg, reload_rx, shutdown).await
}

/// Takes the cache directory for this agent: an exclusive `flock` on the
/// directory itself, opened read-only, which works on a read-only mount,
/// an immutable directory, or a regular file where the directory should
/// be. Held as long as the returned descriptor lives: two live agents
/// never share a cache directory (the second is refused), so the start-up
/// sweep cannot kill another agent's probes. `None`: there is nothing to
/// lock (the path cannot even be created or opened); the agent runs from
/// memory all the same, without the sweep.
fn lock_cache_dir(dir: &Path) -> Result<Option<OwnedFd>, DaemonError> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let _ = std::fs::create_dir_all(dir);
    let fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot open the cache directory to lock it; running without the lock");
            return Ok(None);
        }
    };
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(DaemonError::CacheDirInUse(dir.to_owned())),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot lock the cache directory; running without the lock");
            Ok(None)
        }
    }
}

async fn bind_tcp(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// The agent with its servers, until `shutdown` is cancelled. Configs
/// arriving on `reloads` are applied (a bad one is logged, counted and
/// ignored).
pub async fn serve(
    cfg: Config,
    mut reloads: mpsc::Receiver<Result<Config, ConfigError>>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    if cfg.listen.is_none() && cfg.unix_socket.is_none() {
        return Err(DaemonError::NoQueryApi);
    }
    let lock = lock_cache_dir(&cfg.cache_dir)?;
    let agent = Agent::new(cfg.clone())?;
    // Only the holder of the directory may kill what was left in its name.
    if lock.is_some() {
        let sweeper = Arc::clone(&agent);
        tokio::task::spawn_blocking(move || sweeper.sweep_leftovers())
            .await
            .ok();
    }
    let ctx = Ctx::new(Arc::clone(&agent), shutdown.clone());
    let limits = cfg.http.clone();
    let app = api::router(ctx.clone());
    let mut listeners = Vec::new();
    if let Some(addr) = cfg.listen {
        let l = bind_tcp(addr).await?;
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "query API listening");
        listeners.push((Listener::Tcp(l), app.clone()));
    }
    if let Some(path) = &cfg.unix_socket {
        let l = api::bind_unix(path, 0o660)?;
        tracing::info!(path = %path.display(), "query API listening on unix socket");
        listeners.push((Listener::Unix(l), app.clone()));
    }
    // The shims, and their socket: any caller of a shim may reach it, and
    // it answers only pure queries.
    if let Some(dir) = &cfg.shim_dir {
        agent.sync_shims().await;
        let path = shim_dir::socket(dir);
        match api::bind_unix(&path, 0o666) {
            Ok(l) => {
                tracing::info!(path = %path.display(), "shims' socket listening");
                listeners.push((Listener::Unix(l), api::shim_router(ctx.clone())));
            }
            Err(e @ api::BindError::InUse(_)) => return Err(e.into()),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for the shims; they run QEMU themselves")
            }
        }
    }
    if let Some(addr) = cfg.metrics_listen {
        let l = bind_tcp(addr).await?;
        tracing::info!(addr = %addr, "metrics listening");
        listeners.push((Listener::Tcp(l), api::metrics_router(ctx.clone())));
    }
    let mut servers = tokio::task::JoinSet::new();
    for (listener, app) in listeners {
        let (limits, stop) = (limits.clone(), until(&shutdown));
        servers
            .spawn(async move { api::serve(listener, app, &limits, stop, SHUTDOWN_GRACE).await });
    }

    // Start-up probes, then the revalidator; the API answers meanwhile
    // (/readyz says when every emulator has an answer).
    let (revalidate_tx, revalidate_rx) = mpsc::channel(4);
    let background = {
        let agent = Arc::clone(&agent);
        let stop = shutdown.clone();
        // Watches first, so a change made during start-up is not missed.
        let revalidator = Revalidator::watching(&agent);
        tokio::spawn(async move {
            tokio::select! {
                () = agent.start() => {}
                () = stop.cancelled() => return,
            }
            revalidator.run(agent, revalidate_rx, stop).await
        })
    };
    let notifier = Notifier::from_env();
    if notifier.enabled() {
        spawn_notifications(&agent, &notifier, &cfg, &shutdown);
    }

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(loaded) = reloads.recv() => {
                notifier.reloading();
                match loaded {
                    Ok(c) => match agent.reload(c) {
                        Ok(()) => {
                            agent.sync_shims().await;
                            let _ = revalidate_tx.try_send(());
                        }
                        Err(e) => tracing::error!(error = %e, "config reload refused; keeping the running config"),
                    },
                    Err(e) => {
                        agent.reload_refused();
                        tracing::error!(error = %e, "config reload refused; keeping the running config");
                    }
                }
                notifier.ready(&agent.summary());
            }
        }
    }
    notifier.stopping();
    agent.shutdown(SHUTDOWN_GRACE).await;
    if tokio::time::timeout(SHUTDOWN_GRACE, background)
        .await
        .is_err()
    {
        tracing::warn!("the revalidator did not stop in time");
    }
    while servers.join_next().await.is_some() {}
    if let Some(path) = &cfg.unix_socket {
        let _ = std::fs::remove_file(&**path);
    }
    if let Some(dir) = &cfg.shim_dir {
        let _ = std::fs::remove_file(shim_dir::socket(dir));
    }
    tracing::info!("stopped");
    Ok(())
}

/// The service manager's side: `READY=1` once start-up is over, `STATUS=`
/// when the summary changes, and the watchdog if one is set.
fn spawn_notifications(
    agent: &Arc<Agent>,
    notifier: &Notifier,
    cfg: &Config,
    shutdown: &CancellationToken,
) {
    let (agent, n, stop) = (Arc::clone(agent), notifier.clone(), shutdown.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => return,
            () = agent.started() => {}
        }
        let mut said = agent.summary();
        n.ready(&said);
        let mut tick = tokio::time::interval(STATUS_PERIOD);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = agent.summary();
            if now != said {
                n.status(&now);
                said = now;
            }
        }
    });
    if let Some(timeout) = notify::watchdog_interval() {
        // Through the first query listener: the path callers use.
        let Some(target) = Target::for_config(cfg) else {
            return;
        };
        tracing::info!(?timeout, "watchdog enabled");
        tokio::spawn(notify::watchdog(
            notifier.clone(),
            target,
            timeout,
            shutdown.clone(),
        ));
    }
}

/// How often the status line is refreshed (sent only when it changed).
const STATUS_PERIOD: Duration = Duration::from_secs(5);

/// Resolves when `token` is cancelled (for servers taking `impl Future`).
pub fn until(token: &CancellationToken) -> impl Future<Output = ()> + use<> {
    let t = token.clone();
    async move { t.cancelled().await }
}
