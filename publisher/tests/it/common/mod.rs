//! A small acking worker for the publisher's integration tests.
//!
//! It speaks the protocol with `FrameCodec`, "commits" batches into a [`Ledger`] (shared by the
//! servers of one cluster, like the database), deduplicating by `(publisher_id, seq)`, and can be
//! told to stop acking, to go silent, to say goodbye, or be killed.

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shardtally_publisher::protocol::{
    AttrType, Attribute, ErrorCode, Frame, FrameCodec, PROTOCOL_VERSION, RejectCode, StreamSchema,
    ValueRef, Welcome,
};
use shardtally_publisher::{Publisher, Stats};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Fails the test if `fut` takes longer than `secs` (tests are bounded in time).
pub async fn bounded<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s"),
    }
}

/// Polls `cond` every 5 ms until it holds; fails the test after `secs`.
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    bounded(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The stream the tests publish.
pub fn geo_schema() -> StreamSchema {
    StreamSchema::new(
        "geo",
        vec![
            Attribute::new("api", AttrType::String),
            Attribute::new("city", AttrType::String),
            Attribute::new("ts", AttrType::Long),
        ],
    )
}

/// Values of one geo event.
pub fn geo_values(i: i64) -> [ValueRef<'static>; 3] {
    [
        ValueRef::String("PizzaShackAPI"),
        ValueRef::String("Naples"),
        ValueRef::Long(i),
    ]
}

/// What the servers of one cluster committed — the test's stand-in for the database.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Debug, Default)]
struct LedgerInner {
    committed: HashSet<(String, u64)>,
    events: u64,
    duplicate_batches: u64,
    events_by_node: HashMap<String, u64>,
    /// The seqs each node committed, in commit order.
    seqs_by_node: HashMap<String, Vec<u64>>,
    /// Every `ts` value committed, to check exactly-once per event.
    ts_seen: HashMap<i64, u32>,
}

impl Ledger {
    pub fn new() -> Arc<Ledger> {
        Arc::new(Ledger::default())
    }

    /// Commits a batch unless already committed; returns whether it was new.
    fn commit(&self, publisher: &str, seq: u64, node: &str, events: u64, ts: &[i64]) -> bool {
        let mut l = self.inner.lock().unwrap();
        if !l.committed.insert((publisher.to_owned(), seq)) {
            l.duplicate_batches += 1;
            return false;
        }
        l.events += events;
        *l.events_by_node.entry(node.to_owned()).or_default() += events;
        l.seqs_by_node.entry(node.to_owned()).or_default().push(seq);
        for t in ts {
            *l.ts_seen.entry(*t).or_default() += 1;
        }
        true
    }

    /// Distinct events committed.
    pub fn events(&self) -> u64 {
        self.inner.lock().unwrap().events
    }

    /// Batches received again after being committed (re-sends made harmless by dedup).
    pub fn duplicate_batches(&self) -> u64 {
        self.inner.lock().unwrap().duplicate_batches
    }

    /// Events committed through one node.
    pub fn events_by(&self, node: &str) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .events_by_node
            .get(node)
            .copied()
            .unwrap_or(0)
    }

    /// The batch seqs committed through one node, ascending.
    pub fn seqs_by(&self, node: &str) -> Vec<u64> {
        let mut seqs = self
            .inner
            .lock()
            .unwrap()
            .seqs_by_node
            .get(node)
            .cloned()
            .unwrap_or_default();
        seqs.sort_unstable();
        seqs
    }

    /// Checks that every `ts` in `0..n` was committed exactly once.
    pub fn assert_each_ts_once(&self, n: i64) {
        let l = self.inner.lock().unwrap();
        for t in 0..n {
            assert_eq!(l.ts_seen.get(&t).copied(), Some(1), "ts {t}");
        }
        assert_eq!(l.ts_seen.len(), usize::try_from(n).unwrap());
    }
}

/// How a test server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: String,
    pub schemas: Vec<StreamSchema>,
    pub auth_token: Option<String>,
    /// Announced in WELCOME and enforced: a larger batch is rejected `TooLarge`.
    pub max_batch_events: u32,
    /// How many batches it acks; the ones after are committed and held unacked.
    pub acks: u64,
}

impl ServerConfig {
    pub fn new(node_id: &str) -> ServerConfig {
        ServerConfig {
            node_id: node_id.to_owned(),
            schemas: vec![geo_schema()],
            auth_token: None,
            max_batch_events: 100_000,
            acks: u64::MAX,
        }
    }
}

struct State {
    config: ServerConfig,
    ledger: Arc<Ledger>,
    acking: AtomicBool,
    acks_left: AtomicU64,
    frozen: AtomicBool,
    received_batches: AtomicU64,
    held: AtomicU64,
    rejected: AtomicU64,
    connections: AtomicU64,
    goodbye: broadcast::Sender<String>,
}

/// A running test server.
pub struct TestServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    cancel: CancellationToken,
}

impl TestServer {
    /// Starts on a fresh loopback port.
    pub async fn start(config: ServerConfig, ledger: Arc<Ledger>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestServer::serve(listener, config, ledger)
    }

    /// Starts on a given address (to bring a worker up where a publisher already points).
    pub async fn start_on(
        addr: SocketAddr,
        config: ServerConfig,
        ledger: Arc<Ledger>,
    ) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        TestServer::serve(listener, config, ledger)
    }

    fn serve(listener: TcpListener, config: ServerConfig, ledger: Arc<Ledger>) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            acks_left: AtomicU64::new(config.acks),
            config,
            ledger,
            acking: AtomicBool::new(true),
            frozen: AtomicBool::new(false),
            received_batches: AtomicU64::new(0),
            held: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            goodbye: broadcast::channel(4).0,
        });
        let cancel = CancellationToken::new();
        let (st, c) = (Arc::clone(&state), cancel.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = c.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((socket, _)) = accepted else { continue };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let (st, c) = (Arc::clone(&st), c.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = c.cancelled() => {}
                        () = handle(socket, st) => {}
                    }
                });
            }
        });
        TestServer {
            addr,
            state,
            cancel,
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    pub fn node_id(&self) -> &str {
        &self.state.config.node_id
    }

    /// Keep committing batches, but stop acking them (they are "held").
    pub fn stop_acking(&self) {
        self.state.acking.store(false, Ordering::SeqCst);
    }

    /// Stop reading and answering anything (a hung worker; the sockets stay open).
    pub fn freeze(&self) {
        self.state.frozen.store(true, Ordering::SeqCst);
    }

    /// Send GOODBYE on every open connection.
    pub fn goodbye(&self, reason: &str) {
        let _ = self.state.goodbye.send(reason.to_owned());
    }

    /// Batches committed but never acked.
    pub fn held(&self) -> u64 {
        self.state.held.load(Ordering::SeqCst)
    }

    /// BATCH frames received (duplicates included).
    pub fn received_batches(&self) -> u64 {
        self.state.received_batches.load(Ordering::SeqCst)
    }

    /// Batches rejected.
    pub fn rejected(&self) -> u64 {
        self.state.rejected.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Kills the server: the listener and every connection close at once.
    pub fn kill(&self) {
        self.cancel.cancel();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn handle(socket: TcpStream, st: Arc<State>) {
    let mut framed = Framed::new(socket, FrameCodec::default());
    let Some(Ok(Frame::Hello(hello))) = framed.next().await else {
        return;
    };
    if let Some(token) = &st.config.auth_token
        && hello.auth_token != *token
    {
        let _ = framed
            .send(Frame::Error {
                code: ErrorCode::AuthFailed,
                message: "bad token".into(),
            })
            .await;
        return;
    }
    let welcome = Frame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node_id: st.config.node_id.clone(),
        shard_id: st.config.node_id.clone(),
        max_frame_len: 16 * 1024 * 1024,
        max_batch_events: st.config.max_batch_events,
        streams: st.config.schemas.clone(),
    });
    if framed.send(welcome).await.is_err() {
        return;
    }
    let mut goodbye = st.goodbye.subscribe();
    loop {
        if st.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let frame = tokio::select! {
            f = framed.next() => f,
            Ok(reason) = goodbye.recv() => {
                if framed.send(Frame::Goodbye { reason }).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(Ok(frame)) = frame else { return };
        if st.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let reply = match frame {
            Frame::Ping { nonce } => Some(Frame::Pong { nonce }),
            Frame::Batch(batch) => {
                st.received_batches.fetch_add(1, Ordering::SeqCst);
                let checked = if batch.event_count > st.config.max_batch_events {
                    Err((RejectCode::TooLarge, "too many events".to_owned()))
                } else {
                    check_batch(&st.config.schemas, &batch)
                };
                match checked {
                    Err((code, reason)) => {
                        st.rejected.fetch_add(1, Ordering::SeqCst);
                        Some(Frame::Reject {
                            seq: batch.seq,
                            code,
                            reason,
                        })
                    }
                    Ok(ts) => {
                        st.ledger.commit(
                            &hello.publisher_id,
                            batch.seq,
                            &st.config.node_id,
                            u64::from(batch.event_count),
                            &ts,
                        );
                        let ack = st.acking.load(Ordering::SeqCst)
                            && st
                                .acks_left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                        if ack {
                            Some(Frame::Ack { seq: batch.seq })
                        } else {
                            st.held.fetch_add(1, Ordering::SeqCst);
                            None
                        }
                    }
                }
            }
            _ => None,
        };
        if let Some(reply) = reply
            && framed.send(reply).await.is_err()
        {
            return;
        }
    }
}

/// Validates a batch against the schemas; returns the `ts` values of its events.
fn check_batch(
    schemas: &[StreamSchema],
    batch: &shardtally_publisher::protocol::BatchFrame,
) -> Result<Vec<i64>, (RejectCode, String)> {
    let mut out = Vec::new();
    let schema = schemas.iter().find(|s| s.name == batch.stream);
    let Some(schema) = schema else {
        return Err((
            RejectCode::UnknownStream,
            format!("no stream {}", batch.stream),
        ));
    };
    let mut positions = Vec::new();
    for c in &batch.columns {
        let Some(p) = schema.position(c) else {
            return Err((RejectCode::SchemaMismatch, format!("no attribute {c}")));
        };
        positions.push(p);
    }
    let ts_col = batch.columns.iter().position(|c| c == "ts");
    let mut reader = batch.reader();
    let mut ts = Vec::new();
    loop {
        match reader.next_event(&mut out) {
            Ok(false) => return Ok(ts),
            Ok(true) => {
                for (v, &p) in out.iter().zip(&positions) {
                    schema
                        .check_value(p, *v)
                        .map_err(|e| (RejectCode::SchemaMismatch, e))?;
                }
                if let Some(ValueRef::Long(t)) = ts_col.map(|i| out[i]) {
                    ts.push(t);
                }
            }
            Err(e) => return Err((RejectCode::Invalid, e.to_string())),
        }
    }
}

/// A loopback address nothing listens on (bound, then released).
pub async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The stats of the endpoint with this URL.
pub fn endpoint<'a>(stats: &'a Stats, url: &str) -> &'a shardtally_publisher::EndpointStats {
    stats
        .endpoints
        .iter()
        .find(|e| e.url == url)
        .unwrap_or_else(|| panic!("no endpoint {url} in {stats:?}"))
}

/// Publishes the GeoLocation events `range` ([`geo_values`]), each of them accepted.
pub async fn publish_geo(publisher: &Publisher, range: std::ops::Range<i64>) {
    for i in range {
        publisher
            .publish_values("geo", &geo_values(i))
            .await
            .unwrap();
    }
}

/// Waits until the publisher's endpoint `url` is connected.
pub async fn wait_endpoint_connected(publisher: &Publisher, url: &str) {
    wait_until(10, &format!("{url} connected"), || {
        endpoint(&publisher.stats(), url).state == shardtally_publisher::EndpointState::Connected
    })
    .await;
}

/// Waits until every endpoint of the publisher is connected.
pub async fn wait_connected(publisher: &Publisher) {
    wait_until(10, "all endpoints connected", || {
        publisher
            .stats()
            .endpoints
            .iter()
            .all(|e| e.state == shardtally_publisher::EndpointState::Connected)
    })
    .await;
}

/// Nothing is held any more: no event queued or in flight, no buffer bytes.
pub fn assert_nothing_held(stats: &Stats) {
    assert_eq!(
        (stats.queued, stats.in_flight, stats.buffered_bytes),
        (0, 0, 0),
        "{stats:?}"
    );
}
