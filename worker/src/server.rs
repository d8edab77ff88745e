//! The publisher-facing TCP server: accepts connections, runs the handshake, validates batches
//! and hands them to the ingest task, and writes acks back.
//!
//! Every connection is one task. Its lifecycle:
//!
//! ```text
//! accept ─▶ [TLS listener: first byte 0x16? TLS handshake : ERROR TlsRequired]
//!        ─▶ HELLO within handshake_timeout? ─▶ version ok? ─▶ token ok? ─▶ WELCOME
//!        ─▶ loop { BATCH ─▶ map columns ─▶ reserve its bytes ─▶ ingest channel
//!                   (both bounded: a slow database stops reads here)
//!                 PING ─▶ PONG;  ack/reject from ingest ─▶ ACK/REJECT;  idle too long ─▶ ERROR, close }
//! ```
//! A malformed or oversized frame, an unexpected frame kind, a bad version or token: an `ERROR`
//! frame, then the connection is closed. The worker and its other connections are unaffected.
//! No client holds a connection slot forever: the TLS handshake and HELLO must arrive within the
//! handshake timeout, some frame within every idle timeout, and every write of ours must drain
//! within the idle timeout too (a publisher that stops reading its acks is disconnected).
//! Authentication failures are counted always and logged at most once a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardtally_publisher::protocol::{
    BatchFrame, ErrorCode, Frame, FrameCodec, MAX_PUBLISHER_ID_LEN, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, ProtocolError, RejectCode, StreamSchema, Welcome,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::FrameBudget;
use crate::catalog::Catalog;
use crate::ingest::{IncomingBatch, Reply};
use crate::metrics::Metrics;

/// Limits and identity the server needs.
#[derive(Debug, Clone)]
pub(crate) struct ServerSettings {
    pub(crate) node_id: String,
    pub(crate) shard_id: String,
    pub(crate) auth_token: Option<String>,
    pub(crate) max_frame_len: u32,
    pub(crate) max_batch_events: u32,
    pub(crate) max_connections: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// When set, publishers must speak TLS.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

struct Shared {
    catalog: Arc<Catalog>,
    settings: ServerSettings,
    metrics: Arc<Metrics>,
    ingest: mpsc::Sender<IncomingBatch>,
    /// The bytes of batches held, shared with the ingest task.
    budget: FrameBudget,
    auth_log: RateLimitedLog,
}

/// Lets one log line through per period and counts the ones it holds back, so that a flood of
/// bad clients cannot flood the log.
struct RateLimitedLog {
    started: tokio::time::Instant,
    period_ms: u64,
    /// Milliseconds since `started` of the last line let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    fn new(period: Duration) -> RateLimitedLog {
        RateLimitedLog {
            started: tokio::time::Instant::now(),
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back since the
    /// last one; `None` when this one is held back.
    fn admit(&self) -> Option<u64> {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.period_ms
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Accepts connections until `shutdown`, then waits for the connection tasks to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    catalog: Arc<Catalog>,
    settings: ServerSettings,
    metrics: Arc<Metrics>,
    ingest: mpsc::Sender<IncomingBatch>,
    budget: FrameBudget,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let shared = Arc::new(Shared {
        catalog,
        settings,
        metrics,
        ingest,
        budget,
        auth_log: RateLimitedLog::new(Duration::from_secs(1)),
    });
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        Metrics::add(&shared.metrics.connections_accepted, 1);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let permit = slots.clone().try_acquire_owned();
        tracker.spawn(async move {
            let Ok(_permit) = permit else {
                Metrics::add(&shared.metrics.protocol_errors, 1);
                // A TLS client could not read a plaintext frame; it just sees the close.
                if shared.settings.tls.is_none() {
                    send_error(
                        &mut framed(&shared, socket),
                        ErrorCode::TooManyConnections,
                        "too many connections",
                    )
                    .await;
                }
                return;
            };
            shared
                .metrics
                .connections_open
                .fetch_add(1, Ordering::Relaxed);
            let result = match &shared.settings.tls {
                None => connection(&shared, &mut framed(&shared, socket), peer, &shutdown).await,
                Some(config) => match accept_tls(&shared, socket, config).await {
                    Ok(tls) => {
                        connection(&shared, &mut framed(&shared, tls), peer, &shutdown).await
                    }
                    Err(reason) => Err(reason),
                },
            };
            if let Err(reason) = result {
                tracing::debug!(%peer, %reason, "connection closed");
            }
            shared
                .metrics
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// The longest HELLO a worker reads (the `len` field): an unauthenticated peer cannot make it
/// buffer a batch-sized frame.
pub(crate) const MAX_HELLO_LEN: usize = 64 * 1024;

/// A framed connection that reads frames up to [`MAX_HELLO_LEN`] until the HELLO is accepted.
fn framed<S: AsyncRead + AsyncWrite>(shared: &Shared, stream: S) -> Framed<S, FrameCodec> {
    Framed::new(
        stream,
        FrameCodec::new(MAX_HELLO_LEN.min(shared.settings.max_frame_len as usize)),
    )
}

/// Tells TLS from plaintext by the first byte, then runs the TLS handshake, all within the
/// handshake timeout.
async fn accept_tls(
    shared: &Shared,
    socket: TcpStream,
    config: &Arc<rustls::ServerConfig>,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let handshake = async {
        let mut first = [0u8; 1];
        match socket.peek(&mut first).await {
            Ok(0) => return Err("closed before the TLS handshake".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if first[0] != crate::tls::TLS_HANDSHAKE_RECORD {
            Metrics::add(&shared.metrics.tls_failures, 1);
            send_error(
                &mut framed(shared, socket),
                ErrorCode::TlsRequired,
                "this worker only accepts TLS: use a tls:// endpoint",
            )
            .await;
            return Err("plaintext connection to a TLS listener".to_owned());
        }
        tokio_rustls::TlsAcceptor::from(Arc::clone(config))
            .accept(socket)
            .await
            .map_err(|e| {
                Metrics::add(&shared.metrics.tls_failures, 1);
                format!("TLS handshake failed: {e}")
            })
    };
    match tokio::time::timeout(shared.settings.handshake_timeout, handshake).await {
        Ok(result) => result,
        Err(_) => {
            Metrics::add(&shared.metrics.tls_failures, 1);
            Err("no TLS handshake within the handshake timeout".to_owned())
        }
    }
}

type Conn<S> = Framed<S, FrameCodec>;

/// Writes one frame, giving up when the peer does not take it within `limit`.
async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Conn<S>,
    frame: Frame,
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit, framed.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write: {e}")),
        Err(_) => Err(format!("the publisher took no data for {limit:?}")),
    }
}

async fn send_error<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Conn<S>,
    code: ErrorCode,
    message: &str,
) {
    let frame = Frame::Error {
        code,
        message: message.to_owned(),
    };
    if tokio::time::timeout(Duration::from_secs(1), framed.send(frame))
        .await
        .is_ok_and(|sent| sent.is_ok())
    {
        linger(framed.get_mut()).await;
    }
}

/// A lingering close, after a last frame: ends our side, then reads and discards what the peer
/// still sends (≤ 64 KiB, ≤ 1 s) until it closes. Closing a socket with unread bytes resets
/// the connection, and the reset can overtake the frame the peer has not read yet.
pub(crate) async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sink = [0u8; 4096];
    let mut budget: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if io.shutdown().await.is_err() {
            return;
        }
        while budget > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    })
    .await;
}

/// One connection, from handshake to close. Returns why it closed.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    framed: &mut Conn<S>,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let s = &shared.settings;
    // Handshake.
    let hello = match tokio::time::timeout(s.handshake_timeout, framed.next()).await {
        Err(_) => {
            Metrics::add(&shared.metrics.protocol_errors, 1);
            send_error(
                framed,
                ErrorCode::HandshakeTimeout,
                "no HELLO within the handshake timeout",
            )
            .await;
            return Err("handshake timeout".into());
        }
        Ok(None) => return Err("closed before HELLO".into()),
        Ok(Some(Err(e))) => return Err(protocol_error(shared, framed, &e).await),
        Ok(Some(Ok(Frame::Hello(h)))) => h,
        Ok(Some(Ok(_))) => {
            Metrics::add(&shared.metrics.protocol_errors, 1);
            send_error(
                framed,
                ErrorCode::Malformed,
                "the first frame must be HELLO",
            )
            .await;
            return Err("first frame was not HELLO".into());
        }
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        Metrics::add(&shared.metrics.protocol_errors, 1);
        let msg = format!(
            "protocol version {} is not supported; this worker speaks {MIN_PROTOCOL_VERSION} \
             to {PROTOCOL_VERSION}",
            hello.version
        );
        send_error(framed, ErrorCode::UnsupportedVersion, &msg).await;
        return Err(msg);
    }
    if let Some(expected) = &s.auth_token
        && !constant_time_eq(expected.as_bytes(), hello.auth_token.as_bytes())
    {
        Metrics::add(&shared.metrics.auth_failures, 1);
        if let Some(held_back) = shared.auth_log.admit() {
            // Not yet checked: an unauthenticated peer must not write megabytes into the log.
            let publisher = if hello.publisher_id.len() <= MAX_PUBLISHER_ID_LEN {
                hello.publisher_id.as_str()
            } else {
                "<longer than 128 bytes>"
            };
            tracing::warn!(%peer, publisher, held_back,
                "authentication failed (at most one such line a second; held_back = lines not written since the last)");
        }
        send_error(framed, ErrorCode::AuthFailed, "authentication failed").await;
        return Err("authentication failed".into());
    }
    if hello.publisher_id.is_empty() || hello.publisher_id.len() > MAX_PUBLISHER_ID_LEN {
        Metrics::add(&shared.metrics.protocol_errors, 1);
        send_error(
            framed,
            ErrorCode::Malformed,
            "publisher_id must be 1 to 128 bytes",
        )
        .await;
        return Err("bad publisher id".into());
    }
    let publisher_id: Arc<str> = hello.publisher_id.into();
    framed
        .codec_mut()
        .set_max_frame_len(s.max_frame_len as usize);
    // Answered in the publisher's version (a version-1 WELCOME carries no constraints).
    let welcome = Welcome {
        version: hello.version,
        node_id: s.node_id.clone(),
        shard_id: s.shard_id.clone(),
        max_frame_len: s.max_frame_len,
        max_batch_events: s.max_batch_events,
        streams: shared.catalog.streams().to_vec(),
    };
    write(framed, Frame::Welcome(welcome), s.idle_timeout).await?;
    tracing::debug!(%peer, publisher = %publisher_id, "publisher connected");

    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Reply>();
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let idle_deadline = last_heard + s.idle_timeout;
        // Biased: a shutdown is seen before anything else (GOODBYE precedes the final acks,
        // because the serving token is cancelled before the ingest task's last flush), and
        // writing replies goes before reading more frames.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                let goodbye = Frame::Goodbye { reason: "worker shutting down".into() };
                let _ = write(framed, goodbye, s.idle_timeout).await;
                // Acks for what was handed over still arrive until the ingest task's final flush;
                // the channel closes once the ingest task has dropped every pending batch.
                drop(reply_tx);
                while let Some(reply) = reply_rx.recv().await {
                    if write(framed, reply_frame(reply), s.idle_timeout).await.is_err() { break; }
                }
                return Ok(());
            }
            Some(reply) = reply_rx.recv() => {
                if let Reply::Malformed(code, message) = &reply {
                    Metrics::add(&shared.metrics.protocol_errors, 1);
                    send_error(framed, *code, message).await;
                    return Err(message.clone());
                }
                write(framed, reply_frame(reply), s.idle_timeout).await?;
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                Metrics::add(&shared.metrics.protocol_errors, 1);
                send_error(framed, ErrorCode::IdleTimeout, "no frame within the idle timeout").await;
                return Err("idle timeout".into());
            }
            frame = framed.next() => {
                last_heard = tokio::time::Instant::now();
                match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(protocol_error(shared, framed, &e).await),
                    Some(Ok(Frame::Batch(batch))) => {
                        match check_batch(shared, &batch) {
                            Ok((stream, positions)) => {
                                Metrics::add(&shared.metrics.batches_received, 1);
                                Metrics::add(&shared.metrics.events_received, u64::from(batch.event_count));
                                let received_ms = jiff::Timestamp::now().as_millisecond();
                                let bytes = batch.events.len();
                                let reply = reply_tx.clone();
                                // Waits while the worker holds `max_pending_bytes` or the ingest
                                // task is behind; the socket is not read meanwhile (backpressure
                                // to the publisher). A stop meanwhile drops the batch unacked
                                // (its publisher re-sends it) and says GOODBYE above.
                                let hand_over = async {
                                    let held = shared.budget.reserve(bytes).await.map_err(|_| "ingest stopped")?;
                                    let incoming = IncomingBatch {
                                        publisher_id: publisher_id.clone(),
                                        frame: batch,
                                        stream,
                                        positions,
                                        received_ms,
                                        reply,
                                        held,
                                    };
                                    shared.ingest.send(incoming).await.map_err(|_| "ingest stopped")
                                };
                                tokio::select! {
                                    biased;
                                    () = shutdown.cancelled() => {}
                                    handed = hand_over => handed?,
                                }
                                // Waiting for room is the worker's doing, not the publisher's
                                // silence: the idle timeout starts again.
                                last_heard = tokio::time::Instant::now();
                            }
                            Err(Check::Reject(code, reason)) => {
                                Metrics::add(&shared.metrics.batches_rejected, 1);
                                write(framed, Frame::Reject { seq: batch.seq, code, reason }, s.idle_timeout).await?;
                            }
                        }
                    }
                    Some(Ok(Frame::Ping { nonce })) => {
                        write(framed, Frame::Pong { nonce }, s.idle_timeout).await?;
                    }
                    Some(Ok(Frame::Pong { .. })) => {}
                    Some(Ok(other)) => {
                        Metrics::add(&shared.metrics.protocol_errors, 1);
                        let msg = format!("unexpected frame from a publisher: {}", other.name());
                        send_error(framed, ErrorCode::Malformed, &msg).await;
                        return Err(msg);
                    }
                }
            }
        }
    }
}

async fn protocol_error<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    framed: &mut Conn<S>,
    e: &ProtocolError,
) -> String {
    Metrics::add(&shared.metrics.protocol_errors, 1);
    let msg = e.to_string();
    send_error(framed, e.error_code(), &msg).await;
    msg
}

fn reply_frame(reply: Reply) -> Frame {
    match reply {
        Reply::Ack(seq) => Frame::Ack { seq },
        Reply::Reject(seq, code, reason) => Frame::Reject { seq, code, reason },
        Reply::Malformed(code, message) => Frame::Error { code, message },
    }
}

enum Check {
    /// The batch is well-formed but can never be accepted.
    Reject(RejectCode, String),
}

/// Maps the batch's columns onto the stream schema (its values are checked by the ingest task,
/// in the pass that decodes them: `check`).
fn check_batch(shared: &Shared, batch: &BatchFrame) -> Result<(usize, Arc<[usize]>), Check> {
    let catalog = &shared.catalog;
    let Some(stream) = catalog.stream_index(&batch.stream) else {
        return Err(Check::Reject(
            RejectCode::UnknownStream,
            format!(
                "unknown stream `{}` (this worker's app `{}` defines {})",
                batch.stream,
                catalog.name(),
                catalog
                    .streams()
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if batch.event_count > shared.settings.max_batch_events {
        return Err(Check::Reject(
            RejectCode::TooLarge,
            format!(
                "{} events in one batch; the limit is {}",
                batch.event_count, shared.settings.max_batch_events
            ),
        ));
    }
    let schema: &StreamSchema = &catalog.streams()[stream];
    let mut positions = Vec::with_capacity(batch.columns.len());
    for col in &batch.columns {
        let Some(p) = schema.position(col) else {
            return Err(Check::Reject(
                RejectCode::SchemaMismatch,
                format!("stream `{}` has no attribute `{col}`", schema.name),
            ));
        };
        if positions.contains(&p) {
            return Err(Check::Reject(
                RejectCode::SchemaMismatch,
                format!("attribute `{col}` appears twice"),
            ));
        }
        positions.push(p);
    }
    Ok((stream, positions.into()))
}

/// Compares secrets without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
