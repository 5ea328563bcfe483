//! Serving HTTP/1.1 connections on TCP and unix-socket listeners, with
//! limits that keep one client from starving the others:
//!
//! - at most `max_connections` connections at once (more wait in the
//!   kernel's backlog);
//! - a connection must deliver each request head within
//!   `header_read_timeout` of its first byte (or of accept);
//! - a keep-alive connection with no request for `idle_timeout` is closed,
//!   as is one whose request body never arrives;
//! - a response write that makes no progress for `write_timeout` closes
//!   the connection (a client that sends requests and never reads);
//! - request heads over `max_header_bytes` are refused.
//!
//! The timeouts take no timer per request or per connection: each
//! connection keeps a few atomics (updated as bytes move and requests begin
//! and end), and one reaper task per listener checks them every tick and
//! closes what is over its limit. A request being answered (a query waiting
//! on a probe, a long-poll) is never cut by them.

use crate::config::HttpLimits;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore};

/// A listener the server can accept byte streams from.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

/// Milliseconds since a process-wide epoch: a cheap clock for atomics.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

const NEVER: u64 = u64::MAX;

/// What the reaper knows of one connection. Written by the connection's
/// I/O and service, read by the reaper; no lock.
struct ConnState {
    /// Requests being answered now.
    busy: AtomicU32,
    /// When the connection last became idle: accept, or the end of the
    /// last response (service done and its bytes written).
    idle_since: AtomicU64,
    /// The first byte received since `idle_since` (a request head, or a
    /// body still arriving), or `NEVER`.
    first_byte: AtomicU64,
    /// Since when a write has been waiting on a full socket, or `NEVER`.
    write_blocked: AtomicU64,
    /// At least one request was answered (then an idle connection is a
    /// keep-alive one).
    served: AtomicBool,
    kill: Notify,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            first_byte: AtomicU64::new(NEVER),
            write_blocked: AtomicU64::new(NEVER),
            served: AtomicBool::new(false),
            kill: Notify::new(),
        }
    }

    /// Why the connection is over a limit at `now`, if it is.
    fn over_limit(&self, now: u64, limits: &Limits) -> Option<&'static str> {
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        if blocked != NEVER && now.saturating_sub(blocked) > limits.write {
            return Some("write timeout");
        }
        if self.busy.load(Ordering::Relaxed) > 0 || blocked != NEVER {
            return None;
        }
        let first = self.first_byte.load(Ordering::Relaxed);
        if first != NEVER {
            return (now.saturating_sub(first) > limits.header).then_some("header read timeout");
        }
        let idle = now.saturating_sub(self.idle_since.load(Ordering::Relaxed));
        if self.served.load(Ordering::Relaxed) {
            (idle > limits.idle).then_some("keep-alive idle timeout")
        } else {
            (idle > limits.header).then_some("header read timeout")
        }
    }
}

/// The timeouts in milliseconds.
#[derive(Clone, Copy)]
struct Limits {
    header: u64,
    write: u64,
    idle: u64,
}

impl Limits {
    fn of(l: &HttpLimits) -> Self {
        let ms = |d: Duration| d.as_millis() as u64;
        Limits {
            header: ms(*l.header_read_timeout),
            write: ms(*l.write_timeout),
            idle: ms(*l.idle_timeout),
        }
    }

    /// How often the reaper looks: a quarter of the shortest limit, between
    /// 10 ms and 1 s.
    fn tick(&self) -> Duration {
        let shortest = self.header.min(self.write).min(self.idle);
        Duration::from_millis((shortest / 4).clamp(10, 1000))
    }
}

/// A byte stream that reports progress to its connection's state.
struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let s = &self.state;
            if s.busy.load(Ordering::Relaxed) == 0 && s.first_byte.load(Ordering::Relaxed) == NEVER
            {
                s.first_byte.store(now_ms(), Ordering::Relaxed);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> Tracked<S> {
    fn progress<T>(&self, r: &Poll<io::Result<T>>) {
        let s = &self.state;
        match r {
            Poll::Pending => {
                if s.write_blocked.load(Ordering::Relaxed) == NEVER {
                    s.write_blocked.store(now_ms(), Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => {
                if s.write_blocked.load(Ordering::Relaxed) != NEVER {
                    s.write_blocked.store(NEVER, Ordering::Relaxed);
                }
                if s.busy.load(Ordering::Relaxed) == 0 {
                    // The last response's bytes are still going out: the
                    // connection is not idle yet.
                    s.idle_since.store(now_ms(), Ordering::Relaxed);
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(&r);
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(&r);
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections, for the reaper.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn add(&self, c: Arc<ConnState>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, c);
        id
    }
    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Closes every connection over a limit.
    fn reap(&self, limits: &Limits) {
        let now = now_ms();
        for c in self.lock().values() {
            if let Some(why) = c.over_limit(now, limits) {
                tracing::debug!(why, "closing connection");
                c.kill.notify_one();
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open
/// connections finish for up to `grace`.
pub async fn serve(
    listener: Listener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.get() as usize));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // No hyper timer: the reaper enforces every timeout.
        .header_read_timeout(None)
        // hyper's minimum buffer is 8 KiB.
        .max_buf_size((limits.max_header_bytes.get() as usize).max(8192))
        .keep_alive(true);
    let registry = Arc::new(Registry::default());
    let l = Limits::of(limits);
    let reaper = {
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(l.tick());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                registry.reap(&l);
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            s = listener.accept() => match s {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = Conn {
            builder: &builder,
            graceful: &graceful,
            registry: &registry,
            app: &app,
            permit,
        };
        match stream {
            Stream::Tcp(s) => conn.spawn(s),
            Stream::Unix(s) => conn.spawn(s),
        }
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
    reaper.abort();
}

/// What one accepted connection needs.
struct Conn<'a> {
    builder: &'a hyper::server::conn::http1::Builder,
    graceful: &'a GracefulShutdown,
    registry: &'a Arc<Registry>,
    app: &'a Router,
    /// Its slot under `max_connections`.
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Conn<'_> {
    /// Serves the connection in its own task until it ends, is closed by
    /// the reaper, or the server shuts down.
    fn spawn<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(ConnState::new());
        let id = self.registry.add(Arc::clone(&state));
        let svc = {
            let state = Arc::clone(&state);
            let app = self.app.clone();
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                state.busy.fetch_add(1, Ordering::Relaxed);
                state.first_byte.store(NEVER, Ordering::Relaxed);
                let done = BusyGuard(Arc::clone(&state));
                let call = tower::ServiceExt::oneshot(app.clone(), req);
                async move {
                    let r = call.await;
                    drop(done);
                    r
                }
            })
        };
        let io = TokioIo::new(Tracked {
            inner: stream,
            state: Arc::clone(&state),
        });
        let conn = self.graceful.watch(self.builder.serve_connection(io, svc));
        let registry = Arc::clone(self.registry);
        let permit = self.permit;
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                () = state.kill.notified() => {}
            }
            registry.remove(id);
            drop(permit);
        });
    }
}

/// Marks the end of a request when dropped (also if its future is).
struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(now_ms(), Ordering::Relaxed);
        s.served.store(true, Ordering::Relaxed);
        s.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exists and is not a socket (the agent never deletes other files; pick another `unix_socket`)", .0.display())]
    NotASocket(std::path::PathBuf),
    #[error("{}: another agent is listening on it (stop it, or pick another `unix_socket`)", .0.display())]
    InUse(std::path::PathBuf),
}

/// Binds the unix socket at `path`, mode 0660. An existing socket is
/// replaced only if it is stale: if anything answers a connect on it, that
/// is a running agent, and binding is refused. Any other kind of file is
/// never touched.
pub fn bind_unix(path: &std::path::Path, mode: u32) -> Result<tokio::net::UnixListener, BindError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(BindError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header: 100,
            write: 200,
            idle: 300,
        }
    }

    #[test]
    fn the_limits_of_each_phase() {
        let l = limits();
        let c = ConnState::new();
        let t0 = c.idle_since.load(Ordering::Relaxed);
        assert_eq!(c.over_limit(t0 + 50, &l), None);
        assert_eq!(
            c.over_limit(t0 + 150, &l),
            Some("header read timeout"),
            "nothing sent after accept"
        );
        c.served.store(true, Ordering::Relaxed);
        assert_eq!(c.over_limit(t0 + 150, &l), None, "keep-alive idle");
        assert_eq!(c.over_limit(t0 + 350, &l), Some("keep-alive idle timeout"));
        c.first_byte.store(t0 + 320, Ordering::Relaxed);
        assert_eq!(c.over_limit(t0 + 350, &l), None, "a head started");
        assert_eq!(c.over_limit(t0 + 450, &l), Some("header read timeout"));
        c.busy.store(1, Ordering::Relaxed);
        assert_eq!(
            c.over_limit(t0 + 100_000, &l),
            None,
            "a request being answered"
        );
        c.write_blocked.store(t0 + 1000, Ordering::Relaxed);
        assert_eq!(c.over_limit(t0 + 1100, &l), None);
        assert_eq!(c.over_limit(t0 + 1300, &l), Some("write timeout"));
    }

    #[test]
    fn the_tick_follows_the_shortest_limit() {
        assert_eq!(limits().tick(), Duration::from_millis(25));
        let long = Limits {
            header: 60_000,
            write: 60_000,
            idle: 60_000,
        };
        assert_eq!(long.tick(), Duration::from_secs(1));
    }
}
