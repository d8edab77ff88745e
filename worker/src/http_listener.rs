//! The HTTP side's listener: at most `max_connections` at once, and a connection on which
//! nothing is read or written for `idle` is closed — so slow or silent clients (slowloris) cannot
//! hold the HTTP side, which `axum::serve` alone would let them do (it sets no timeouts).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A [`TcpListener`] for `axum::serve` with a connection limit and an idle timeout.
pub(crate) struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl GuardedListener {
    pub(crate) fn new(inner: TcpListener, max_connections: usize, idle: Duration) -> Self {
        GuardedListener {
            inner,
            slots: Arc::new(Semaphore::new(max_connections)),
            idle,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedIo, SocketAddr) {
        loop {
            // A slot first: beyond the limit, clients wait in the kernel's backlog.
            let permit = match self.slots.clone().acquire_owned().await {
                Ok(p) => p,
                // Never closed; if it were, wait for nothing rather than spin.
                Err(_) => std::future::pending().await,
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let io = GuardedIo {
                        inner: stream,
                        deadline: Box::pin(tokio::time::sleep(self.idle)),
                        idle: self.idle,
                        _permit: permit,
                    };
                    return (io, addr);
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

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
