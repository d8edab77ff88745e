//! [`Publisher`]: the cheap, cloneable handle gateways publish through, and its builder.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::{BatchLimits, Batcher, SchemaSource, SealedBatch};
use crate::buffer::{Buffer, Credit, FullPolicy};
use crate::dispatch::{Command, Dispatcher};
use crate::endpoint::{Scheme, UrlSet};
use crate::error::{ConfigError, PublishError};
use crate::event::Event;
use crate::protocol::{DEFAULT_MAX_FRAME_LEN, LEN_PREFIX, StreamSchema, ValueRef};
use crate::report::DeliveryReport;
use crate::stats::{Counters, DROPPED_BUFFER_FULL, EndpointCell, FAILED_CLOSED, Stats};

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) url_set: UrlSet,
    pub(crate) publisher_id: String,
    pub(crate) auth_token: String,
    pub(crate) client_name: String,
    pub(crate) batch_max_events: u32,
    pub(crate) batch_max_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) buffer_max_events: u64,
    pub(crate) buffer_max_bytes: u64,
    pub(crate) full_policy: FullPolicy,
    pub(crate) ack_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) delivery_deadline: Duration,
    pub(crate) max_in_flight_per_connection: usize,
    pub(crate) batches_per_turn: usize,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) delivery_reports: bool,
    /// Set when some member is `tls://`.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// What the batcher lock guards: the open batches, and the buffer room taken ahead for the
/// events still to come.
pub(crate) struct Open {
    pub(crate) batcher: Batcher,
    pub(crate) credit: Credit,
}

/// State shared by the handles and the background task.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    open: Mutex<Open>,
    commands: mpsc::UnboundedSender<Command>,
    pub(crate) buffer: Buffer,
    pub(crate) counters: Counters,
    pub(crate) endpoints: Vec<EndpointCell>,
    closed: AtomicBool,
}

impl Shared {
    pub(crate) fn lock_open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events and bytes the buffer holds: its counters net of the credit (room taken ahead).
    pub(crate) fn held(&self, open: &Open) -> (u64, u64) {
        (
            self.buffer.events().saturating_sub(open.credit.events),
            self.buffer.bytes().saturating_sub(open.credit.bytes),
        )
    }

    /// Seals every open batch and gives the buffer credit back (on close and shutdown).
    pub(crate) fn seal_all_returning_credit(&self, open: &mut Open) {
        open.batcher.seal_all(&mut |b| self.send_batch(b));
        self.buffer.return_credit(&mut open.credit);
    }

    /// Hands a sealed batch to the background task (call with the batcher locked, so that
    /// batches arrive in sequence order relative to flushes).
    pub(crate) fn send_batch(&self, batch: SealedBatch) {
        let events = u64::from(batch.events);
        let bytes = batch.event_bytes;
        if self.commands.send(Command::Batch(batch)).is_err() {
            self.counters.failed(
                FAILED_CLOSED,
                "the publisher's background task has stopped".to_owned(),
                events,
            );
            self.buffer.release(events, bytes);
        }
    }

    fn reserve(&self, credit: &mut Credit, bytes: u64) -> Result<(), PublishError> {
        if self.buffer.reserve_event(credit, bytes) {
            return Ok(());
        }
        if bytes > self.buffer.max_bytes() {
            return Err(PublishError::EventTooLarge {
                bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
                max: usize::try_from(self.buffer.max_bytes()).unwrap_or(usize::MAX),
            });
        }
        Err(PublishError::BufferFull {
            events: self.buffer.events(),
            bytes: self.buffer.bytes(),
            waited: Duration::ZERO,
        })
    }

    /// One attempt: lock, check closed, run `push`.
    fn attempt(
        &self,
        push: &mut impl FnMut(&mut Batcher, &mut Credit, &Shared) -> Result<(), PublishError>,
    ) -> Result<(), PublishError> {
        let mut open = self.lock_open();
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let Open { batcher, credit } = &mut *open;
        push(batcher, credit, self)
    }

    fn count(&self, result: &Result<(), PublishError>) {
        match result {
            Ok(()) => {}
            Err(
                PublishError::UnknownStream { .. }
                | PublishError::UnknownAttribute { .. }
                | PublishError::TypeMismatch { .. }
                | PublishError::InvalidValue { .. }
                | PublishError::WrongArity { .. }
                | PublishError::SchemaRequired { .. }
                | PublishError::EventTooLarge { .. }
                | PublishError::Event(_),
            ) => Counters::add(&self.counters.invalid, 1),
            Err(PublishError::BufferFull { .. }) => self.counters.dropped(DROPPED_BUFFER_FULL, 1),
            Err(PublishError::Closed | PublishError::CloseTimeout { .. }) => {}
        }
    }
}

/// The handle's own part: when the last clone goes, the background task is cancelled.
struct Handle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    reports: Mutex<Option<mpsc::UnboundedReceiver<DeliveryReport>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The publisher: a cheap [`Clone`] handle (`Send + Sync`) over one background task that owns
/// the connections. See the [crate docs](crate) for a guide.
///
/// Dropping the last clone stops delivery at once (what is unacked is counted failed as
/// `closed`); call [`Publisher::close`] to deliver first.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Handle>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("publisher_id", &self.inner.shared.settings.publisher_id)
            .field("url_set", &self.inner.shared.settings.url_set.to_string())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts configuring a publisher for a receiver URL set (parsed by
    /// [`PublisherBuilder::build`]).
    pub fn builder(url_set: &str) -> PublisherBuilder {
        PublisherBuilder::new(url_set)
    }

    /// This instance's publisher id (the configured prefix plus a random suffix).
    pub fn publisher_id(&self) -> &str {
        &self.inner.shared.settings.publisher_id
    }

    /// The receiver URL set.
    pub fn url_set(&self) -> &UrlSet {
        &self.inner.shared.settings.url_set
    }

    /// The schema events of `stream` are checked against, if known (given to the builder or
    /// announced by a worker).
    pub fn schema(&self, stream: &str) -> Option<StreamSchema> {
        self.inner
            .shared
            .lock_open()
            .batcher
            .schema(stream)
            .map(|s| StreamSchema::clone(s))
    }

    /// Publishes one event (named fields).
    ///
    /// With the stream's schema known, fields are mapped onto it (a missing field is null;
    /// `int` widens to `long`/`double` and `float` to `double`); an unknown stream or field, a
    /// wrong type or a value the store cannot hold ([`PublishError::InvalidValue`]: a null
    /// group-by key, a string too long or with NUL, a non-finite number) is refused here and
    /// nothing reaches the wire. Without a schema (none given and
    /// no worker reached yet) the event is buffered as is and the worker validates it.
    ///
    /// When the buffer is full, [`FullPolicy`] applies: wait up to its timeout for space, or
    /// drop; a dropped event is counted and reported as [`PublishError::BufferFull`].
    pub async fn publish(&self, stream: &str, event: &Event) -> Result<(), PublishError> {
        self.publish_with(|b, c, s| {
            b.push_event(stream, event, |n| s.reserve(c, n), &mut |x| s.send_batch(x))
        })
        .await
    }

    /// Publishes one event given as values in schema order — the fast path: the values are
    /// encoded straight into the stream's open batch, without allocating.
    ///
    /// Needs the stream's schema (given to the builder, or announced by a worker); types must
    /// match exactly (null fits any type but a required one's), and values must be storable
    /// ([`PublishError::InvalidValue`]).
    pub async fn publish_values(
        &self,
        stream: &str,
        values: &[ValueRef<'_>],
    ) -> Result<(), PublishError> {
        self.publish_with(|b, c, s| {
            b.push_values(stream, values, |n| s.reserve(c, n), &mut |x| {
                s.send_batch(x)
            })
        })
        .await
    }

    /// Like [`Publisher::publish_values`], but never waits: a full buffer drops the event
    /// (counted) whatever the policy. For callers that cannot `.await`.
    pub fn try_publish_values(
        &self,
        stream: &str,
        values: &[ValueRef<'_>],
    ) -> Result<(), PublishError> {
        let shared = &self.inner.shared;
        let result = shared.attempt(&mut |b, c, s| {
            b.push_values(stream, values, |n| s.reserve(c, n), &mut |x| {
                s.send_batch(x)
            })
        });
        shared.count(&result);
        result
    }

    /// Like [`Publisher::publish`], but never waits (see [`Publisher::try_publish_values`]).
    pub fn try_publish(&self, stream: &str, event: &Event) -> Result<(), PublishError> {
        let shared = &self.inner.shared;
        let result = shared.attempt(&mut |b, c, s| {
            b.push_event(stream, event, |n| s.reserve(c, n), &mut |x| s.send_batch(x))
        });
        shared.count(&result);
        result
    }

    async fn publish_with(
        &self,
        mut push: impl FnMut(&mut Batcher, &mut Credit, &Shared) -> Result<(), PublishError>,
    ) -> Result<(), PublishError> {
        let shared = &*self.inner.shared;
        let first = shared.attempt(&mut push);
        let timeout = match (&first, shared.settings.full_policy) {
            (Err(PublishError::BufferFull { .. }), FullPolicy::Block { timeout }) => timeout,
            _ => {
                shared.count(&first);
                return first;
            }
        };
        let start = Instant::now();
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let notified = shared.buffer.space().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let result = shared.attempt(&mut push);
            if !matches!(result, Err(PublishError::BufferFull { .. })) {
                shared.count(&result);
                return result;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                let (events, bytes) = shared.held(&shared.lock_open());
                let result = Err(PublishError::BufferFull {
                    events,
                    bytes,
                    waited: start.elapsed(),
                });
                shared.count(&result);
                return result;
            }
        }
    }

    /// Seals the open batches and waits until every event published before the call is acked
    /// or failed (so at most the delivery deadline).
    pub async fn flush(&self) -> Result<(), PublishError> {
        let shared = &self.inner.shared;
        let (done, wait) = oneshot::channel();
        {
            let mut open = shared.lock_open();
            if shared.closed.load(Ordering::Acquire) {
                return Err(PublishError::Closed);
            }
            open.batcher.seal_all(&mut |b| shared.send_batch(b));
            let upto = open.batcher.next_seq();
            shared
                .commands
                .send(Command::Flush { upto, done })
                .map_err(|_| PublishError::Closed)?;
        }
        wait.await.map_err(|_| PublishError::Closed)
    }

    /// Stops accepting events, waits up to `timeout` for everything buffered to be acked (or
    /// fail), then closes the connections. What is still unacked is counted failed as `closed`
    /// and reported as [`PublishError::CloseTimeout`]. Calling it again returns at once.
    pub async fn close(&self, timeout: Duration) -> Result<(), PublishError> {
        let shared = &self.inner.shared;
        let (done, wait) = oneshot::channel();
        {
            let mut open = shared.lock_open();
            if shared.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            shared.seal_all_returning_credit(&mut open);
            let upto = open.batcher.next_seq();
            let _ = shared.commands.send(Command::Flush { upto, done });
        }
        shared.buffer.wake_all();
        let _ = tokio::time::timeout(timeout, wait).await;
        let (done, wait) = oneshot::channel();
        let undelivered = if shared.commands.send(Command::Shutdown { done }).is_ok() {
            wait.await.unwrap_or(0)
        } else {
            0
        };
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        if undelivered == 0 {
            Ok(())
        } else {
            Err(PublishError::CloseTimeout { undelivered })
        }
    }

    /// A snapshot of the counters and the endpoints' states.
    pub fn stats(&self) -> Stats {
        let shared = &self.inner.shared;
        let c = &shared.counters;
        // The credit is room taken, not events held: net of it, read under the same lock.
        let (published, (buffered, buffered_bytes)) = {
            let open = shared.lock_open();
            (open.batcher.published(), shared.held(&open))
        };
        let in_flight = Counters::get(&c.in_flight);
        let reasons = c.reasons.lock().unwrap_or_else(|e| e.into_inner());
        Stats {
            publisher_id: shared.settings.publisher_id.clone(),
            published,
            queued: buffered.saturating_sub(in_flight),
            in_flight,
            buffered_bytes,
            acked: Counters::get(&c.acked),
            batches: Counters::get(&c.batches),
            retried: Counters::get(&c.retried),
            failed_over: Counters::get(&c.failed_over),
            invalid: Counters::get(&c.invalid),
            dropped: reasons.dropped.clone(),
            failed: reasons.failed.clone(),
            last_failure: reasons.last_failure.clone(),
            endpoints: shared
                .endpoints
                .iter()
                .map(EndpointCell::snapshot)
                .collect(),
        }
    }

    /// The receiver of delivery reports (once; `None` when reports are not enabled or were
    /// already taken).
    pub fn take_delivery_reports(&self) -> Option<mpsc::UnboundedReceiver<DeliveryReport>> {
        self.inner
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Default of [`PublisherBuilder::batches_per_turn`].
pub const DEFAULT_BATCHES_PER_TURN: usize = 8;

/// Configures a [`Publisher`]. Every setting has a default; see each method.
#[derive(Debug, Clone)]
pub struct PublisherBuilder {
    url_set: String,
    schemas: Vec<StreamSchema>,
    auth_token: String,
    publisher_id_prefix: String,
    client_name: String,
    batch_max_events: u32,
    batch_max_bytes: usize,
    linger: Duration,
    buffer_max_events: u64,
    buffer_max_bytes: u64,
    full_policy: FullPolicy,
    ack_timeout: Duration,
    heartbeat_interval: Duration,
    delivery_deadline: Duration,
    max_in_flight_per_connection: usize,
    batches_per_turn: usize,
    backoff_min: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    delivery_reports: bool,
    tls_roots_pem: Vec<Vec<u8>>,
    tls_client_auth_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl PublisherBuilder {
    fn new(url_set: &str) -> PublisherBuilder {
        PublisherBuilder {
            url_set: url_set.to_owned(),
            schemas: Vec::new(),
            auth_token: String::new(),
            publisher_id_prefix: "shardtally".to_owned(),
            client_name: concat!("shardtally-publisher/", env!("CARGO_PKG_VERSION")).to_owned(),
            batch_max_events: 10_000,
            batch_max_bytes: 1024 * 1024,
            linger: Duration::from_millis(10),
            buffer_max_events: 1_000_000,
            buffer_max_bytes: 64 * 1024 * 1024,
            full_policy: FullPolicy::default(),
            ack_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(2),
            delivery_deadline: Duration::from_secs(120),
            max_in_flight_per_connection: 1024,
            batches_per_turn: DEFAULT_BATCHES_PER_TURN,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            delivery_reports: false,
            tls_roots_pem: Vec::new(),
            tls_client_auth_pem: None,
        }
    }

    /// Checks events of `schema.name` against this schema (repeatable, one per stream). Given
    /// schemas are authoritative: events of other streams are refused, and schemas announced
    /// by workers do not replace them — only the first worker's constraints (`required`,
    /// `max_chars`: what its store holds) are put on a given schema with the same attributes.
    #[must_use]
    pub fn schema(mut self, schema: StreamSchema) -> PublisherBuilder {
        self.schemas.push(schema);
        self
    }

    /// The token sent in HELLO (default: empty).
    #[must_use]
    pub fn auth_token(mut self, token: impl Into<String>) -> PublisherBuilder {
        self.auth_token = token.into();
        self
    }

    /// The publisher id prefix (default `shardtally`); a random suffix is always appended, as
    /// ids must be unique per publisher instance (`(publisher_id, batch_seq)` is the dedup key
    /// and sequence numbers restart at 0).
    #[must_use]
    pub fn publisher_id(mut self, prefix: impl Into<String>) -> PublisherBuilder {
        self.publisher_id_prefix = prefix.into();
        self
    }

    /// The client name sent in HELLO, for the workers' logs.
    #[must_use]
    pub fn client_name(mut self, name: impl Into<String>) -> PublisherBuilder {
        self.client_name = name.into();
        self
    }

    /// Seal a batch at this many events (default 10,000; lowered to a worker's limit).
    ///
    /// At a gateway's usual rates a batch is sealed by [`linger`](PublisherBuilder::linger)
    /// long before, and for events of more than ~100 bytes by
    /// [`batch_max_bytes`](PublisherBuilder::batch_max_bytes); this bound matters for small
    /// events at high rates, such as a replay of a log. There, larger batches send longer runs
    /// of event time to one worker, so fewer `(key, second)` rows are written by both shards.
    /// A re-send after a failover covers the same unacked events whatever their batches' size.
    #[must_use]
    pub fn batch_max_events(mut self, n: u32) -> PublisherBuilder {
        self.batch_max_events = n;
        self
    }

    /// Seal a batch before its frame exceeds this many bytes (default 1 MiB; lowered to a
    /// worker's maximum frame length).
    #[must_use]
    pub fn batch_max_bytes(mut self, n: usize) -> PublisherBuilder {
        self.batch_max_bytes = n;
        self
    }

    /// Seal a batch this long after its first event at the latest (default 10 ms).
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> PublisherBuilder {
        self.linger = linger;
        self
    }

    /// Buffer at most this many unacked events (default 1,000,000).
    #[must_use]
    pub fn buffer_max_events(mut self, n: u64) -> PublisherBuilder {
        self.buffer_max_events = n;
        self
    }

    /// Buffer at most this many bytes of encoded unacked events (default 64 MiB).
    #[must_use]
    pub fn buffer_max_bytes(mut self, n: u64) -> PublisherBuilder {
        self.buffer_max_bytes = n;
        self
    }

    /// What `publish` does when the buffer is full (default: block up to 100 ms, then drop).
    #[must_use]
    pub fn full_policy(mut self, policy: FullPolicy) -> PublisherBuilder {
        self.full_policy = policy;
        self
    }

    /// A worker that has acked nothing for this long while a batch sent to it this long ago is
    /// still unacked is marked unhealthy, and its unacked batches are re-sent elsewhere (default
    /// 5 s). A worker that goes on acking is alive, however deep its queue (a slow database):
    /// re-sending there would only add load.
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> PublisherBuilder {
        self.ack_timeout = timeout;
        self
    }

    /// PING period; a worker silent for three periods is dead (default 2 s).
    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Duration) -> PublisherBuilder {
        self.heartbeat_interval = interval;
        self
    }

    /// An event not acked this long after it was published is failed with reason `deadline`
    /// (default 120 s).
    #[must_use]
    pub fn delivery_deadline(mut self, deadline: Duration) -> PublisherBuilder {
        self.delivery_deadline = deadline;
        self
    }

    /// Unacked batches per connection (default 1024): with acks arriving about a flush interval
    /// after a batch is sent, a connection carries at most this many batches per flush
    /// interval. The buffer bounds memory either way.
    #[must_use]
    pub fn max_in_flight_per_connection(mut self, n: usize) -> PublisherBuilder {
        self.max_in_flight_per_connection = n;
        self
    }

    /// Consecutive batches a round-robin group sends to one member before the next member's
    /// turn (default 8; 1 is plain round-robin), starting at a random member. A member that is
    /// down, whose in-flight window is full or that a re-sent batch avoids ends its turn early,
    /// so turns never hold a batch back.
    ///
    /// Each worker writes its own partial aggregate (its shard's row) of every time bucket it
    /// received events for, so a bucket whose events were spread over two workers costs two
    /// rows. Consecutive batches usually hold neighbouring event times: a turn keeps them on one
    /// worker, and a bucket is split only where one turn ends and the next begins. This matters
    /// when many events share each bucket — replaying a backlog (a one-hour replay over 1,000
    /// keys writes ~20 % fewer rows in turns of 8 than of 1); with live traffic every worker sees
    /// every key's current buckets anyway. Turns are counted in batches, not time: at low rates
    /// (batches sealed by `linger`) a turn lasts about `n × linger`.
    #[must_use]
    pub fn batches_per_turn(mut self, n: usize) -> PublisherBuilder {
        self.batches_per_turn = n;
        self
    }

    /// Reconnect delays: capped exponential from `min` to `max` with full jitter (default
    /// 100 ms .. 10 s).
    #[must_use]
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> PublisherBuilder {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Limit for TCP connect and for the handshake (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> PublisherBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// Emit a [`DeliveryReport`] per batch per group, with per-event publish times (default
    /// off); take the receiver with [`Publisher::take_delivery_reports`].
    #[must_use]
    pub fn delivery_reports(mut self, enabled: bool) -> PublisherBuilder {
        self.delivery_reports = enabled;
        self
    }

    /// Trusts the CA certificates in this PEM document for `tls://` workers (repeatable). Without
    /// any, the operating system's trust store is used.
    #[must_use]
    pub fn tls_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> PublisherBuilder {
        self.tls_roots_pem.push(pem.into());
        self
    }

    /// Presents this client certificate chain (PEM, leaf first) and private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1) to `tls://` workers, for workers that require client certificates.
    #[must_use]
    pub fn tls_client_auth_pem(
        mut self,
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> PublisherBuilder {
        self.tls_client_auth_pem = Some((cert_chain_pem.into(), key_pem.into()));
        self
    }

    fn validate(self) -> Result<(Settings, Vec<StreamSchema>), ConfigError> {
        const MAX_DURATION_SETTING: Duration = Duration::from_secs(365 * 86_400);
        let url_set = UrlSet::parse(&self.url_set)?;
        let invalid = |setting: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.batch_max_events == 0 {
            return invalid("batch_max_events", "must be at least 1");
        }
        if self.batch_max_bytes < 64 {
            return invalid("batch_max_bytes", "must be at least 64");
        }
        if self.batch_max_bytes > DEFAULT_MAX_FRAME_LEN + LEN_PREFIX {
            return invalid(
                "batch_max_bytes",
                &format!("must be at most {DEFAULT_MAX_FRAME_LEN} (the maximum frame length)"),
            );
        }
        // The id is the prefix, '-' and 16 hex digits; a worker refuses a longer one.
        let max_prefix = crate::protocol::MAX_PUBLISHER_ID_LEN - 17;
        if self.publisher_id_prefix.len() > max_prefix {
            return invalid(
                "publisher_id",
                &format!(
                    "a prefix of at most {max_prefix} bytes (with its 17-byte suffix the id is at \
                     most {} bytes, what a worker accepts); got {}",
                    crate::protocol::MAX_PUBLISHER_ID_LEN,
                    self.publisher_id_prefix.len()
                ),
            );
        }
        if self.buffer_max_events == 0 {
            return invalid("buffer_max_events", "must be at least 1");
        }
        if self.buffer_max_bytes == 0 {
            return invalid("buffer_max_bytes", "must be at least 1");
        }
        let block_timeout = match self.full_policy {
            FullPolicy::Block { timeout } => timeout,
            FullPolicy::DropNewest => Duration::ZERO,
        };
        // (setting, value, whether it must be more than zero)
        let durations = [
            ("ack_timeout", self.ack_timeout, true),
            ("heartbeat_interval", self.heartbeat_interval, true),
            ("delivery_deadline", self.delivery_deadline, true),
            ("connect_timeout", self.connect_timeout, true),
            ("linger", self.linger, false),
            ("reconnect_backoff", self.backoff_max, false),
            ("full_policy", block_timeout, false),
        ];
        for &(setting, d, positive) in &durations {
            if positive && d.is_zero() {
                return invalid(setting, "must be more than zero");
            }
        }
        // Deadlines are computed as `now + setting`: a setting near `Duration::MAX` ("forever")
        // would overflow the clock there, in a task, long after this builder returned.
        for &(setting, d, _) in &durations {
            if d > MAX_DURATION_SETTING {
                return invalid(setting, "must be at most 365 days");
            }
        }
        if self.max_in_flight_per_connection == 0 {
            return invalid("max_in_flight_per_connection", "must be at least 1");
        }
        if self.batches_per_turn == 0 {
            return invalid("batches_per_turn", "must be at least 1");
        }
        if self.backoff_min > self.backoff_max {
            return invalid("reconnect_backoff", "min must not exceed max");
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.schemas {
            if !seen.insert(s.name.as_str()) {
                return Err(ConfigError::DuplicateSchema(s.name.clone()));
            }
        }
        let uses_tls = url_set
            .groups
            .iter()
            .flat_map(|g| &g.members)
            .any(|m| m.scheme == Scheme::Tls);
        // Material given is checked even when no member uses it yet: a typo should not wait
        // for the day the URL set changes.
        let tls = if uses_tls
            || !self.tls_roots_pem.is_empty()
            || self.tls_client_auth_pem.is_some()
        {
            let config =
                crate::tls::client_config(&self.tls_roots_pem, self.tls_client_auth_pem.as_ref());
            match config {
                Ok(c) => uses_tls.then_some(c),
                // The system trust store only matters when a member is tls://.
                Err(crate::tls::TlsError::NoTrustRoots(_)) if !uses_tls => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let publisher_id = format!(
            "{}-{:016x}",
            self.publisher_id_prefix,
            rand::random::<u64>()
        );
        Ok((
            Settings {
                url_set,
                publisher_id,
                auth_token: self.auth_token,
                client_name: self.client_name,
                batch_max_events: self.batch_max_events,
                batch_max_bytes: self.batch_max_bytes,
                linger: self.linger,
                buffer_max_events: self.buffer_max_events,
                buffer_max_bytes: self.buffer_max_bytes,
                full_policy: self.full_policy,
                ack_timeout: self.ack_timeout,
                heartbeat_interval: self.heartbeat_interval,
                delivery_deadline: self.delivery_deadline,
                max_in_flight_per_connection: self.max_in_flight_per_connection,
                batches_per_turn: self.batches_per_turn,
                backoff_min: self.backoff_min,
                backoff_max: self.backoff_max,
                connect_timeout: self.connect_timeout,
                delivery_reports: self.delivery_reports,
                tls,
            },
            self.schemas,
        ))
    }

    /// Validates the settings and starts the background task. Must be called within a tokio
    /// runtime; connecting starts at once, in the background (a publisher whose workers are all
    /// down still accepts events into its buffer).
    pub fn build(self) -> Result<Publisher, ConfigError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let (settings, schemas) = self.validate()?;
        let mut batcher = Batcher::new(
            BatchLimits {
                max_events: settings.batch_max_events,
                max_bytes: settings.batch_max_bytes,
            },
            settings.delivery_reports,
        );
        for schema in schemas {
            batcher.add_schema(schema, SchemaSource::Given);
        }
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (conn_tx, conn_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = if settings.delivery_reports {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let endpoints = settings
            .url_set
            .groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| {
                group
                    .members
                    .iter()
                    .map(move |m| EndpointCell::new(m.to_string(), g))
            })
            .collect();
        let shared = Arc::new(Shared {
            buffer: Buffer::new(settings.buffer_max_events, settings.buffer_max_bytes),
            settings,
            open: Mutex::new(Open {
                batcher,
                credit: Credit::default(),
            }),
            commands,
            counters: Counters::default(),
            endpoints,
            closed: AtomicBool::new(false),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let dispatcher = Dispatcher::new(
            Arc::clone(&shared),
            reports_tx,
            tracker.clone(),
            cancel.clone(),
            conn_tx,
        );
        let _guard = runtime.enter();
        tracker.spawn(dispatcher.run(command_rx, conn_rx));
        Ok(Publisher {
            inner: Arc::new(Handle {
                shared,
                cancel,
                tracker,
                reports: Mutex::new(reports_rx),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_needs_a_runtime() {
        assert!(matches!(
            Publisher::builder("tcp://127.0.0.1:1").build(),
            Err(ConfigError::NoRuntime)
        ));
    }

    #[test]
    fn settings_are_validated() {
        let cases: Vec<(PublisherBuilder, &str)> = vec![
            (Publisher::builder("{tcp://a:1,"), "bad receiver URL set"),
            (
                Publisher::builder("tcp://a:1").batch_max_events(0),
                "batch_max_events",
            ),
            (
                Publisher::builder("tcp://a:1")
                    .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1)),
                "reconnect_backoff",
            ),
            (
                Publisher::builder("tcp://a:1").ack_timeout(Duration::ZERO),
                "ack_timeout",
            ),
            (
                Publisher::builder("tcp://a:1").linger(Duration::MAX),
                "linger: must be at most 365 days",
            ),
            (
                Publisher::builder("tcp://a:1").heartbeat_interval(Duration::MAX),
                "heartbeat_interval: must be at most 365 days",
            ),
            (
                Publisher::builder("tcp://a:1").full_policy(FullPolicy::Block {
                    timeout: Duration::MAX,
                }),
                "full_policy: must be at most 365 days",
            ),
            (
                Publisher::builder("tcp://a:1")
                    .schema(StreamSchema::new("s", vec![]))
                    .schema(StreamSchema::new("s", vec![])),
                "given twice",
            ),
        ];
        for (builder, want) in cases {
            let err = builder.validate().err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(want)),
                "{err:?} should mention {want}"
            );
        }
    }

    #[test]
    fn publisher_ids_get_a_unique_suffix() {
        let (a, _) = Publisher::builder("tcp://a:1")
            .publisher_id("gw")
            .validate()
            .unwrap();
        let (b, _) = Publisher::builder("tcp://a:1")
            .publisher_id("gw")
            .validate()
            .unwrap();
        assert!(a.publisher_id.starts_with("gw-"));
        assert_eq!(a.publisher_id.len(), "gw-".len() + 16);
        assert_ne!(a.publisher_id, b.publisher_id);
        // The longest prefix a worker's 128-byte limit leaves room for, and one byte more.
        let (c, _) = Publisher::builder("tcp://a:1")
            .publisher_id("p".repeat(111))
            .validate()
            .unwrap();
        assert_eq!(c.publisher_id.len(), 128);
        let err = Publisher::builder("tcp://a:1")
            .publisher_id("p".repeat(112))
            .validate()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "invalid setting publisher_id: a prefix of at most 111 bytes (with its 17-byte \
                 suffix the id is at most 128 bytes, what a worker accepts); got 112"
            )
        );
    }
}

/// `publish` does not allocate per event: a counting allocator (per thread, so the background
/// task's allocations on the runtime's thread do not count) around 100,000 calls.
#[cfg(test)]
mod allocation_tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use super::*;
    use crate::protocol::{AttrType, Attribute};

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    struct Counting;

    fn bump() {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    // SAFETY: forwards every call to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            bump();
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            bump();
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    fn allocations() -> u64 {
        COUNT.with(Cell::get)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn publishing_allocates_per_batch_not_per_event() {
        // Nobody listens: every event stays in the buffer, and the test thread does the publishing.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let schema = StreamSchema::new(
            "geo",
            vec![
                Attribute::new("api", AttrType::String),
                Attribute::new("city", AttrType::String),
                Attribute::new("ts", AttrType::Long),
            ],
        );
        let publisher = Publisher::builder(&format!("tcp://127.0.0.1:{port}"))
            .schema(schema)
            .batch_max_events(1000)
            .full_policy(FullPolicy::DropNewest)
            .build()
            .unwrap();
        let cities = ["Naples", "Rome", "Milan"];
        let event = |i: i64| {
            [
                ValueRef::String("PizzaShackAPI"),
                ValueRef::String(cities[usize::try_from(i).unwrap() % 3]),
                ValueRef::Long(i),
            ]
        };
        // Warm up: the stream's slot and the first batches.
        for i in 0..3_000 {
            publisher.try_publish_values("geo", &event(i)).unwrap();
        }
        let before = allocations();
        for i in 3_000..103_000 {
            publisher.try_publish_values("geo", &event(i)).unwrap();
        }
        let allocated = allocations() - before;
        // 100 batches sealed: a new frame buffer each, and the hand-over to the background task.
        assert!(
            allocated <= 3 * 100,
            "{allocated} allocations for 100,000 events (100 batches)"
        );
        assert_eq!(publisher.stats().published, 103_000);
        let _ = publisher.close(Duration::from_millis(10)).await;
    }
}
