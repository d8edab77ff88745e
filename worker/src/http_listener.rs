//! The HTTP side's listener and server: at most `max_connections` at once; a connection on which
//! nothing is read or written for `idle` is closed, and a request's head must arrive whole within
//! `header` however it trickles in — so slow or silent clients (slowloris) cannot hold the HTTP
//! side, which `axum::serve` alone would let them do (it runs hyper without a timer, so with no
//! timeouts) — and, when the worker has a TLS certificate, HTTPS only.
//!
//! Connections are accepted by a task of their own; with TLS, each handshake runs in its own
//! task under the handshake timeout, so a client that stalls its handshake holds one connection
//! slot, never the accept loop. As on the event port, the first byte tells a TLS ClientHello
//! from plaintext: a plaintext HTTP request to an HTTPS worker gets a plaintext
//! `400 Bad Request` saying to use `https://`, instead of a TLS alert a browser or `curl`
//! shows as an empty reply.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// The body of the `400` a plaintext request to an HTTPS worker gets back.
const HTTPS_REQUIRED: &str = "this worker's HTTP side only accepts HTTPS: https://\n";

/// Limits of the HTTP side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// Connections open at once; beyond it, clients wait in the kernel's backlog.
    pub(crate) max_connections: usize,
    /// A connection on which nothing moves for this long is closed.
    pub(crate) idle: Duration,
    /// The time a client has to complete its TLS handshake, and then each request's head
    /// (request line and headers).
    pub(crate) handshake: Duration,
}

/// A listener for `axum::serve` with a connection limit, an idle timeout and optional TLS.
pub(crate) struct GuardedListener {
    ready: mpsc::Receiver<(HttpIo, SocketAddr)>,
    local: SocketAddr,
    header_timeout: Duration,
}

impl GuardedListener {
    /// Starts accepting on `inner`, bound to `local` (TLS with `tls`); the accept task ends when
    /// the listener is dropped. TLS failures are counted in `metrics.tls_failures`.
    pub(crate) fn new(
        inner: TcpListener,
        local: SocketAddr,
        limits: HttpLimits,
        tls: Option<Arc<rustls::ServerConfig>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, ready) = mpsc::channel(16);
        let tls = tls.map(|config| {
            // The HTTP side speaks HTTP/1.1 only; say so in ALPN.
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsAcceptor::from(Arc::new(config))
        });
        tokio::spawn(accept_loop(inner, limits, tls, metrics, tx));
        GuardedListener {
            ready,
            local,
            header_timeout: limits.handshake,
        }
    }

    /// Serves `app` on every connection until `stop`; then lets each connection finish the
    /// request it is answering (no new ones) and returns once all are closed.
    ///
    /// What `axum::serve` does, with a timer for hyper, so that its header-read timeout applies.
    pub(crate) async fn serve(mut self, app: axum::Router, stop: CancellationToken) {
        let connections = TaskTracker::new();
        loop {
            let (io, addr) = tokio::select! {
                conn = axum::serve::Listener::accept(&mut self) => conn,
                () = stop.cancelled() => break,
            };
            let service = TowerToHyperService::new(
                app.clone()
                    .map_request(|req: hyper::Request<Incoming>| req.map(axum::body::Body::new)),
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(self.header_timeout);
            let stop = stop.clone();
            connections.spawn(async move {
                let conn = http.serve_connection(TokioIo::new(io), service);
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%addr, error = %e, "HTTP connection ended");
                }
            });
        }
        // No new connections while the open ones finish: the accept task ends and the port
        // refuses, so clients go to another worker.
        drop(self);
        connections.close();
        connections.wait().await;
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = HttpIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (HttpIo, SocketAddr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    inner: TcpListener,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    ready: mpsc::Sender<(HttpIo, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A slot first: beyond the limit, clients wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = ready.closed() => return,
        };
        let (stream, addr) = tokio::select! {
            accepted = inner.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = ready.closed() => return,
        };
        let io = GuardedIo {
            inner: stream,
            deadline: Box::pin(tokio::time::sleep(limits.idle)),
            idle: limits.idle,
            _permit: permit,
        };
        match &tls {
            None => {
                if ready.send((Either::Left(io), addr)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let (acceptor, ready, metrics) = (acceptor.clone(), ready.clone(), metrics.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(limits.handshake, secure(io, acceptor)).await {
                        Ok(Ok(Some(tls))) => {
                            let _ = ready.send((Either::Right(Box::new(tls)), addr)).await;
                        }
                        // A port probe, as on the event port: not a TLS failure.
                        Ok(Ok(None)) => {}
                        Ok(Err(reason)) => {
                            Metrics::add(&metrics.tls_failures, 1);
                            tracing::debug!(%addr, reason, "HTTPS connection refused");
                        }
                        Err(_) => {
                            Metrics::add(&metrics.tls_failures, 1);
                            tracing::debug!(%addr, "no TLS handshake within the handshake timeout");
                        }
                    }
                });
            }
        }
    }
}

/// Tells TLS from plaintext by the first byte; answers plaintext with a `400` ([`HTTPS_REQUIRED`]), runs
/// the handshake otherwise. `None`: the client closed without sending a byte.
async fn secure(
    mut io: GuardedIo,
    acceptor: TlsAcceptor,
) -> Result<Option<TlsStream<GuardedIo>>, String> {
    let mut first = [0u8; 1];
    match io.inner.peek(&mut first).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    if first[0] != crate::tls::TLS_HANDSHAKE_RECORD {
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{HTTPS_REQUIRED}",
            HTTPS_REQUIRED.len()
        );
        // Best effort: the client may already be gone. The request is still unread (only its
        // first byte was peeked): a lingering close, so closing does not reset the connection
        // before the client has the answer.
        if io.write_all(response.as_bytes()).await.is_ok() {
            crate::server::linger(&mut io).await;
        }
        return Err("plaintext request to the HTTPS side".into());
    }
    match acceptor.accept(io).await {
        Ok(tls) => Ok(Some(tls)),
        Err(e) => Err(format!("TLS handshake failed: {e}")),
    }
}

/// One HTTP connection: plaintext (a worker without a TLS certificate), or TLS over the guarded
/// TCP stream after a completed handshake.
pub(crate) type HttpIo = Either<GuardedIo, Box<TlsStream<GuardedIo>>>;

/// A TCP stream that fails with `TimedOut` once no byte has moved for `idle`.
pub(crate) struct GuardedIo {
    inner: TcpStream,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    _permit: OwnedSemaphorePermit,
}

impl GuardedIo {
    /// Runs one I/O poll; moves the deadline on when it made `progress`, fails once the
    /// deadline has passed while it waits.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        io: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
        progress: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match io(Pin::new(&mut self.inner), cx) {
            Poll::Ready(Ok(v)) => {
                if progress(&v) {
                    self.deadline.as_mut().reset(Instant::now() + self.idle);
                }
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP connection idle for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut()
            .guard(cx, |s, cx| s.poll_read(cx, buf), |()| true)
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, |s, cx| s.poll_write(cx, buf), |&n| n > 0)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .guard(cx, |s, cx| s.poll_flush(cx), |()| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
