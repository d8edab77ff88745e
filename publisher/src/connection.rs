//! One connection to one worker: connect, handshake, then write batches and read acks.
//!
//! The task reports everything that matters to the background task as [`ConnEvent`]s and decides
//! nothing itself; the background task ends it through its cancellation token (or by dropping
//! its outgoing channel).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::endpoint::{Endpoint, Scheme};
use crate::protocol::{ErrorCode, Frame, FrameCodec, Hello, ProtocolError, RejectCode, Welcome};

/// Heartbeats missed before a silent peer is declared dead.
const MISSED_HEARTBEATS: u32 = 3;

/// What a connection task tells the background task.
#[derive(Debug)]
pub(crate) struct ConnEvent {
    /// Global member index.
    pub(crate) member: usize,
    /// Which connection of that member.
    pub(crate) conn: u64,
    pub(crate) kind: ConnEventKind,
}

#[derive(Debug)]
pub(crate) enum ConnEventKind {
    /// Handshake complete.
    Up(Welcome),
    Ack(u64),
    Reject {
        seq: u64,
        code: RejectCode,
        reason: String,
    },
    /// The worker is draining.
    Goodbye(String),
    /// The connection is gone (or never came up).
    Down(ConnError),
}

/// Why a connection ended. Only [`ConnError::is_fatal`] errors stop reconnection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// A `tls://` member, but the publisher has no TLS configuration (cannot happen through
    /// the builder, which makes one for every URL set with a `tls://` member).
    #[error("no TLS configuration for {0}")]
    TlsUnconfigured(String),
    /// The TLS handshake failed (untrusted or mismatched certificate, not a TLS server, …).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    /// The host of a `tls://` URL is not a valid DNS name or IP address for TLS.
    #[error("`{0}` is not a valid TLS server name")]
    TlsServerName(String),
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// TCP connect did not complete in time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// No WELCOME in time.
    #[error("no WELCOME within {0:?}")]
    HandshakeTimeout(Duration),
    /// The worker closed the connection.
    #[error("connection closed by the worker")]
    Closed,
    /// Reading or writing failed, or the worker sent bytes we cannot decode.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The worker sent an ERROR frame.
    #[error("worker error {code}: {message}")]
    Refused {
        /// The worker's code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The worker sent a frame that has no business arriving at a publisher now.
    #[error("unexpected {0} frame from the worker")]
    Unexpected(&'static str),
    /// Nothing arrived for several heartbeat intervals.
    #[error("no frame from the worker for {0:?} (missed heartbeats)")]
    Silent(Duration),
    /// A batch sent on this connection was not acked in time.
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    /// The publisher closed the connection.
    #[error("closed by the publisher")]
    Local,
}

impl ConnError {
    /// Whether reconnecting is pointless.
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(
            self,
            ConnError::TlsUnconfigured(_)
                | ConnError::TlsServerName(_)
                | ConnError::Refused {
                    code: ErrorCode::TlsRequired,
                    ..
                }
        )
    }
}

/// What a connection needs to know.
#[derive(Debug, Clone)]
pub(crate) struct ConnParams {
    pub(crate) member: usize,
    pub(crate) conn: u64,
    pub(crate) endpoint: Endpoint,
    pub(crate) hello: Hello,
    pub(crate) connect_timeout: Duration,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) events: mpsc::UnboundedSender<ConnEvent>,
    pub(crate) cancel: CancellationToken,
}

impl ConnParams {
    fn report(&self, kind: ConnEventKind) {
        // The background task outlives its connections; if it is gone, nobody is listening.
        let _ = self.events.send(ConnEvent {
            member: self.member,
            conn: self.conn,
            kind,
        });
    }
}

/// Runs one connection until it fails or is cancelled; reports `Down` unless cancelled.
pub(crate) async fn run(params: ConnParams, mut outgoing: mpsc::UnboundedReceiver<Bytes>) {
    let result = tokio::select! {
        () = params.cancel.cancelled() => return,
        r = session(&params, &mut outgoing) => r,
    };
    params.report(ConnEventKind::Down(result));
}

async fn session(p: &ConnParams, outgoing: &mut mpsc::UnboundedReceiver<Bytes>) -> ConnError {
    let stream = match tokio::time::timeout(
        p.connect_timeout,
        TcpStream::connect(p.endpoint.authority()),
    )
    .await
    {
        Err(_) => return ConnError::ConnectTimeout(p.connect_timeout),
        Ok(Err(e)) => return ConnError::Connect(e),
        Ok(Ok(s)) => s,
    };
    // Batches are written whole; Nagle would only delay the acks' counterpart.
    let _ = stream.set_nodelay(true);
    if p.endpoint.scheme != Scheme::Tls {
        let (r, w) = stream.into_split();
        return framed_session(p, r, w, outgoing).await;
    }
    let Some(config) = &p.tls else {
        return ConnError::TlsUnconfigured(p.endpoint.to_string());
    };
    let Ok(name) = ServerName::try_from(p.endpoint.host.clone()) else {
        return ConnError::TlsServerName(p.endpoint.host.clone());
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let stream =
        match tokio::time::timeout(p.connect_timeout, connector.connect(name, stream)).await {
            Err(_) => return ConnError::HandshakeTimeout(p.connect_timeout),
            Ok(Err(e)) => return ConnError::TlsHandshake(e),
            Ok(Ok(s)) => s,
        };
    let (r, w) = tokio::io::split(stream);
    framed_session(p, r, w, outgoing).await
}

/// The protocol over an established (plain or TLS) byte stream: handshake, then batches out and
/// acks in until something fails.
async fn framed_session<R, W>(
    p: &ConnParams,
    r: R,
    w: W,
    outgoing: &mut mpsc::UnboundedReceiver<Bytes>,
) -> ConnError
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = FramedRead::new(r, FrameCodec::default());
    let mut writer = FramedWrite::new(w, FrameCodec::default());
    if let Err(e) = writer.send(Frame::Hello(p.hello.clone())).await {
        return e.into();
    }
    let welcome = match tokio::time::timeout(p.connect_timeout, reader.next()).await {
        Err(_) => return ConnError::HandshakeTimeout(p.connect_timeout),
        Ok(None) => return ConnError::Closed,
        Ok(Some(Err(e))) => return e.into(),
        Ok(Some(Ok(Frame::Welcome(w)))) => w,
        Ok(Some(Ok(Frame::Error { code, message }))) => {
            return ConnError::Refused { code, message };
        }
        Ok(Some(Ok(other))) => return ConnError::Unexpected(other.name()),
    };
    p.report(ConnEventKind::Up(welcome));

    // Milliseconds since `started` when the last frame arrived (shared by the read and write
    // halves of this task).
    let started = Instant::now();
    let since_start = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let last_heard = AtomicU64::new(0);
    let (ctrl_tx, mut ctrl_rx) = mpsc::unbounded_channel::<Frame>();
    let read = async {
        loop {
            let frame = match reader.next().await {
                None => return ConnError::Closed,
                Some(Err(e)) => return e.into(),
                Some(Ok(f)) => f,
            };
            last_heard.store(since_start(), Ordering::Relaxed);
            match frame {
                Frame::Ack { seq } => p.report(ConnEventKind::Ack(seq)),
                Frame::Reject { seq, code, reason } => {
                    p.report(ConnEventKind::Reject { seq, code, reason });
                }
                Frame::Ping { nonce } => {
                    let _ = ctrl_tx.send(Frame::Pong { nonce });
                }
                Frame::Pong { .. } => {}
                Frame::Goodbye { reason } => p.report(ConnEventKind::Goodbye(reason)),
                Frame::Error { code, message } => return ConnError::Refused { code, message },
                other @ (Frame::Hello(_) | Frame::Welcome(_) | Frame::Batch(_)) => {
                    return ConnError::Unexpected(other.name());
                }
            }
        }
    };
    let write = async {
        let period = p.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut nonce = 0u64;
        loop {
            let result = tokio::select! {
                batch = outgoing.recv() => {
                    let Some(batch) = batch else { return ConnError::Local };
                    write_batches(&mut writer, batch, outgoing).await
                }
                Some(frame) = ctrl_rx.recv() => writer.send(frame).await,
                _ = heartbeat.tick() => {
                    let silent = Duration::from_millis(
                        since_start().saturating_sub(last_heard.load(Ordering::Relaxed)),
                    );
                    if silent >= period * MISSED_HEARTBEATS {
                        return ConnError::Silent(silent);
                    }
                    nonce += 1;
                    writer.send(Frame::Ping { nonce }).await
                }
            };
            if let Err(e) = result {
                return e.into();
            }
        }
    };
    tokio::select! {
        e = read => e,
        e = write => e,
    }
}

/// Writes `first` and whatever else is queued, then flushes once.
async fn write_batches<W: AsyncWrite + Unpin>(
    writer: &mut FramedWrite<W, FrameCodec>,
    first: Bytes,
    outgoing: &mut mpsc::UnboundedReceiver<Bytes>,
) -> Result<(), ProtocolError> {
    writer.feed(first).await?;
    while let Ok(more) = outgoing.try_recv() {
        writer.feed(more).await?;
    }
    SinkExt::<Bytes>::flush(writer).await
}
