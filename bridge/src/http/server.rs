//! The TLS listener: accepts connections, completes the handshake, tags each request with the
//! peer's address and certificate status, and drains connections on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceExt;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What one client may hold of the server: against slow or idle clients (slowloris).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// An HTTP/1.1 request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection on which nothing moves either way for this long is closed (HTTP/1.1 and
    /// HTTP/2 alike).
    pub idle_timeout: Duration,
    /// Connections open at once; the next waits in the listen queue until one closes.
    pub max_connections: usize,
    /// Connections open at once from one address; more are closed at once.
    pub max_connections_per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_source: 128,
        }
    }
}

/// Connection counters, shown on `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted in all.
    pub accepted: AtomicU64,
    /// Connections closed because nothing moved for the idle timeout.
    pub idle_closed: AtomicU64,
    /// TLS handshakes that did not finish in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed because a request's headers did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Times the connection limit was reached and accepting paused.
    pub limit_reached: AtomicU64,
    /// Connections closed at once because their address had too many open.
    pub per_source_refused: AtomicU64,
}

/// An I/O stream that fails with `TimedOut` once nothing has been read or written for
/// `timeout` while no request is being handled on it (a slow handler is not an idle client).
struct IdleIo<T> {
    inner: T,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    stats: Arc<ConnectionStats>,
    /// Requests of this connection being handled now.
    busy: Arc<AtomicU64>,
    /// When bytes last moved.
    last: tokio::time::Instant,
}

impl<T> IdleIo<T> {
    fn new(inner: T, timeout: Duration, stats: Arc<ConnectionStats>, busy: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            stats,
            busy,
            last: tokio::time::Instant::now(),
        }
    }

    /// Bytes moved: only the time is noted (cheap, on every read and write); the timer is
    /// moved when it fires.
    fn moved(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = tokio::time::Instant::now();
            let due = self.last + self.timeout;
            if self.busy.load(Ordering::Relaxed) > 0 || due > now {
                // Not idle after all: wait until the real deadline (polled again, so the
                // timer wakes this task).
                let next = if due > now { due } else { now + self.timeout };
                self.deadline.as_mut().reset(next);
                continue;
            }
            self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            // Once: a later poll starts a new period rather than counting again.
            self.last = now;
            self.deadline.as_mut().reset(now + self.timeout);
            return true;
        }
    }
}

fn idle() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }
}

/// Open connections per address.
type PerSource = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One connection counted against its address while it lives.
struct SourceSlot(PerSource, std::net::IpAddr);

impl SourceSlot {
    fn take(map: &PerSource, ip: std::net::IpAddr, limits: ConnectionLimits) -> Option<Self> {
        let mut m = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_source.max(1) {
            return None;
        }
        *n += 1;
        Some(Self(map.clone(), ip))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Counts a request as being handled while it lives.
struct Busy(Arc<AtomicU64>);

impl Busy {
    fn start(n: &Arc<AtomicU64>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<ConnectionStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who is on the other end of the connection a request came in on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Whether it presented a client certificate that verified against a configured CA.
    pub client_cert: bool,
    /// The certificate chain it presented, end entity first.
    pub chain: Option<Arc<[rustls::pki_types::CertificateDer<'static>]>>,
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting and waits
/// (up to 20 s) for open requests to finish; with the default [`ConnectionLimits`].
///
/// # Errors
/// Only if accepting fails in a way that will not recover.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(
        listener,
        tls,
        app,
        shutdown,
        ConnectionLimits::default(),
        Arc::default(),
    )
    .await
}

/// [`serve`] with these limits, counting connections in `stats`.
///
/// # Errors
/// Only if accepting fails in a way that will not recover.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let per_source: PerSource = Arc::default();
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                stats.limit_reached.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    max = limits.max_connections,
                    "connection limit reached (`limits.max_connections`); accepting again when one closes"
                );
                tokio::select! {
                    () = &mut shutdown => break,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let Some(from_source) = SourceSlot::take(&per_source, addr.ip(), limits) else {
            stats.per_source_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %addr, "too many connections from this address (`limits.max_connections_per_source`)");
            drop(tcp);
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = (slot, from_source);
            let _open = OpenGuard(stats.clone());
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let chain: Option<Arc<[_]>> = stream
                .get_ref()
                .1
                .peer_certificates()
                .filter(|c| !c.is_empty())
                .map(|c| c.iter().map(|d| d.clone().into_owned()).collect());
            let peer = PeerInfo {
                addr,
                client_cert: chain.is_some(),
                chain,
            };
            let busy = Arc::new(AtomicU64::new(0));
            let in_flight = busy.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let handling = Busy::start(&in_flight);
                let answer = app.clone().oneshot(req);
                async move {
                    let r = answer.await;
                    drop(handling);
                    r
                }
            });
            let io = IdleIo::new(stream, limits.idle_timeout, stats.clone(), busy);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                if e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout)
                {
                    stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
    Ok(())
}
