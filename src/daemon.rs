//! `qcapsd run`: binds the listeners, starts the agent (disk cache, then
//! probes), the revalidator and the HTTP servers, and handles signals —
//! SIGTERM/SIGINT shut down (in-flight probes killed and reaped, the unix
//! socket removed), SIGHUP reloads the config.

use crate::agent::Agent;
use crate::api::{self, Ctx, Listener, StaticHost};
use crate::config::Config;
use crate::revalidate;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long open connections and in-flight probes get at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot listen on {addr}: {source} (another agent running? set `listen`, `metrics_listen` or `unix_socket` in the config)"
    )]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
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
                    let loaded = match &config_path {
                        Some(p) => Config::load(p).map_err(|e| e.to_string()),
                        None => Ok(Config::default()),
                    };
                    if reload_tx.send(loaded).await.is_err() { break; }
                }
            }
        }
        stop.cancel();
    };
    tokio::spawn(signals);
    serve(cfg, reload_rx, shutdown).await
}

/// The agent with its servers, until `shutdown` is cancelled. Configs
/// arriving on `reloads` are applied (a bad one is logged and ignored).
pub async fn serve(
    cfg: Config,
    mut reloads: mpsc::Receiver<Result<Config, String>>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let agent = Agent::new(cfg.clone()).map_err(DaemonError::Config)?;
    let ctx = Ctx {
        agent: Arc::clone(&agent),
        static_host: Arc::new(StaticHost::read()),
        request_timeout: *cfg.http.request_timeout,
    };
    let limits = cfg.http.clone();
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: addr.to_string(),
                source,
            })
    };
    let main = bind(cfg.listen).await?;
    tracing::info!(addr = %main.local_addr().map(|a| a.to_string()).unwrap_or_default(), "query API listening");
    let mut servers = tokio::task::JoinSet::new();
    let app = api::router(ctx.clone(), &limits);
    {
        let (app, limits, stop) = (app.clone(), limits.clone(), until(&shutdown));
        servers.spawn(async move {
            api::serve(Listener::Tcp(main), app, &limits, stop, SHUTDOWN_GRACE).await
        });
    }
    if let Some(path) = &cfg.unix_socket {
        let l = api::bind_unix(path).map_err(|source| DaemonError::Bind {
            addr: path.display().to_string(),
            source,
        })?;
        tracing::info!(path = %path.display(), "query API listening on unix socket");
        let (app, limits, stop) = (app.clone(), limits.clone(), until(&shutdown));
        servers.spawn(async move {
            api::serve(Listener::Unix(l), app, &limits, stop, SHUTDOWN_GRACE).await
        });
    }
    if let Some(addr) = cfg.metrics_listen {
        let l = bind(addr).await?;
        tracing::info!(addr = %addr, "metrics listening");
        let (app, limits, stop) = (
            api::metrics_router(ctx.clone()),
            limits.clone(),
            until(&shutdown),
        );
        servers.spawn(async move {
            api::serve(Listener::Tcp(l), app, &limits, stop, SHUTDOWN_GRACE).await
        });
    }

    // Start-up probes, then the revalidator; the API answers meanwhile
    // (/readyz says when every emulator has an answer).
    let (revalidate_tx, revalidate_rx) = mpsc::channel(4);
    let background = {
        let agent = Arc::clone(&agent);
        let stop = shutdown.clone();
        tokio::spawn(async move { revalidate::run(agent, revalidate_rx, stop).await })
    };

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(loaded) = reloads.recv() => match loaded.and_then(|c| agent.reload(c)) {
                Ok(()) => { let _ = revalidate_tx.try_send(()); }
                Err(e) => tracing::error!(error = %e, "config reload failed; keeping the running config"),
            },
        }
    }
    agent.shutdown(SHUTDOWN_GRACE).await;
    let _ = background.await;
    while servers.join_next().await.is_some() {}
    if let Some(path) = &cfg.unix_socket {
        let _ = std::fs::remove_file(&**path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves when `token` is cancelled (for servers taking `impl Future`).
pub fn until(token: &CancellationToken) -> impl Future<Output = ()> + use<> {
    let t = token.clone();
    async move { t.cancelled().await }
}
