//! Real worker processes for end-to-end tests: spawned from the built `shardtally-worker` binary
//! on loopback port 0, stopped with SIGTERM or killed with SIGKILL; plus a raw protocol client
//! for tests that need exact control over batch ids.

#![allow(dead_code, unreachable_pub)]

use shardtally_worker::node::Bound;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use shardtally_publisher::protocol::{
    BatchEncoder, Frame, FrameCodec, Hello, PROTOCOL_VERSION, Value, Welcome,
};
use tokio_util::codec::Framed;

/// The worker binary under test.
pub fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardtally-worker"))
}

/// A spawned worker process.
pub struct WorkerProc {
    child: Child,
    /// Publisher address.
    pub listen: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Its node id.
    pub node_id: String,
    /// Its stderr log.
    pub log: PathBuf,
}

/// How a worker that was expected not to start ended.
#[derive(Debug)]
pub struct Refused {
    pub status: ExitStatus,
    pub stderr: String,
}

fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("shardtally-it-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// `serve` arguments for a test worker: port 0, fast flushes and a short lease.
pub fn serve_args(db_url: &str, node_id: &str) -> Vec<String> {
    [
        "serve",
        "--database-url",
        db_url,
        "--node-id",
        node_id,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--partition-by-id",
        "true",
        "--flush-interval",
        "50ms",
        "--lease-ttl",
        "2s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

impl WorkerProc {
    /// Starts a worker and waits (up to 60 s) for its ready line; panics if it exits first.
    pub fn start(args: &[String]) -> WorkerProc {
        match WorkerProc::try_start(args, Duration::from_secs(60)) {
            Ok(w) => w,
            Err(r) => panic!("worker refused to start ({}): {}", r.status, r.stderr),
        }
    }

    /// Starts a worker; `Err` when it exits before becoming ready.
    pub fn try_start(args: &[String], timeout: Duration) -> Result<WorkerProc, Refused> {
        let node_id = args
            .iter()
            .position(|a| a == "--node-id")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default();
        let log = log_dir().join(format!("{node_id}-{:08x}.log", rand::random::<u32>()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(worker_bin())
            .args(args)
            .env("SHARDTALLY_LOG", "info,shardtally_worker=debug,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn shardtally-worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(bound) = Bound::parse_ready_line(&line) {
                    let _ = tx.send(bound);
                }
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(bound) = rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(WorkerProc {
                    listen: bound.listen,
                    http: bound.http,
                    child,
                    node_id,
                    log,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Refused {
                    status,
                    stderr: std::fs::read_to_string(&log).unwrap_or_default(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Refused {
                    status: ExitStatus::default(),
                    stderr: format!(
                        "not ready within {timeout:?}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ),
                });
            }
        }
    }

    /// `tcp://host:port` of this worker.
    pub fn endpoint(&self) -> String {
        format!("tcp://{}", self.listen)
    }

    /// SIGKILL: a real crash, no flush, no lease release.
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // std sends SIGKILL on Unix
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait")
    }

    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `shardtally-worker` subcommand to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(worker_bin())
        .args(args)
        .env("SHARDTALLY_LOG", "warn")
        .output()
        .expect("run shardtally-worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `shardtally-worker query --format json` → the records.
pub fn query_records(db_url: &str, query: &str) -> Vec<Vec<serde_json::Value>> {
    query_records_with(db_url, &[], query)
}

/// As [`query_records`], with extra flags (`--app FILE`, …).
pub fn query_records_with(
    db_url: &str,
    extra: &[&str],
    query: &str,
) -> Vec<Vec<serde_json::Value>> {
    let mut args = vec![
        "query",
        "--database-url",
        db_url,
        "--partition-by-id",
        "true",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    args.push(query);
    let (code, out, err) = run_cli(&args);
    assert_eq!(code, 0, "query failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json output");
    serde_json::from_value(v["records"].clone()).expect("records")
}

/// A minimal HTTP/1.1 exchange: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, "", body)
}

/// [`http`] with extra header lines (each ending in `\r\n`).
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write_request(&mut s, &addr.to_string(), method, path, headers, body).expect("write http");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read http");
    parse_response(&resp)
}

/// Writes one `Connection: close` HTTP/1.1 request with a JSON body.
fn write_request(
    s: &mut impl Write,
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<()> {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// Status and body of a whole response (bodies are small; axum sends them with
/// Content-Length, not chunked). Status 0: not an HTTP response.
fn parse_response(resp: &[u8]) -> (u16, String) {
    let resp = String::from_utf8_lossy(resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    (status, body.to_owned())
}

/// The TLS side of an [`https`] request: the CAs trusted, and a client certificate to show.
pub struct HttpsClient<'a> {
    /// PEM of the CA(s) to trust.
    pub roots: &'a [u8],
    /// PEM certificate chain and key, for a worker that asks for client certificates.
    pub client_auth: Option<(&'a [u8], &'a [u8])>,
}

/// [`http_with`] over TLS (server name `localhost`); `Err` when the handshake or the exchange
/// fails.
pub fn https(
    addr: SocketAddr,
    tls: &HttpsClient<'_>,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use shardtally_publisher::tls;
    let other = |e: String| std::io::Error::other(e);
    let builder = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| other(e.to_string()))?
        .with_root_certificates(
            tls::root_store_from_pem(tls.roots, "roots").map_err(|e| other(e.to_string()))?,
        );
    let config = match tls.client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                tls::certificates_from_pem(chain, "client chain")
                    .map_err(|e| other(e.to_string()))?,
                tls::private_key_from_pem(key, "client key").map_err(|e| other(e.to_string()))?,
            )
            .map_err(|e| other(e.to_string()))?,
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| other(e.to_string()))?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write_request(&mut s, "localhost", method, path, headers, body)?;
    let mut resp = Vec::new();
    match s.read_to_end(&mut resp) {
        Ok(_) => {}
        // A peer that closes without close_notify, after a whole response, is fine here.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(parse_response(&resp))
}

/// A raw protocol client: exact control over publisher id and batch sequence numbers.
pub struct RawClient {
    pub framed: Framed<tokio::net::TcpStream, FrameCodec>,
    pub welcome: Welcome,
}

impl RawClient {
    /// Connects and handshakes.
    pub async fn connect(
        addr: SocketAddr,
        publisher_id: &str,
        token: &str,
    ) -> Result<RawClient, Frame> {
        RawClient::connect_version(addr, publisher_id, token, PROTOCOL_VERSION).await
    }

    /// Connects and handshakes in protocol `version`.
    pub async fn connect_version(
        addr: SocketAddr,
        publisher_id: &str,
        token: &str,
        version: u16,
    ) -> Result<RawClient, Frame> {
        let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut framed = Framed::new(socket, FrameCodec::default());
        framed
            .send(Frame::Hello(Hello {
                version,
                publisher_id: publisher_id.to_owned(),
                auth_token: token.to_owned(),
                client_name: "it".to_owned(),
            }))
            .await
            .expect("send hello");
        match framed.next().await {
            Some(Ok(Frame::Welcome(welcome))) => Ok(RawClient { framed, welcome }),
            Some(Ok(other)) => Err(other),
            other => panic!("no answer to HELLO: {other:?}"),
        }
    }

    /// Sends one batch of `rows` (values in `columns` order).
    pub async fn send_batch(
        &mut self,
        seq: u64,
        stream: &str,
        columns: &[&str],
        rows: &[Vec<Value>],
    ) {
        let bytes = encoder_with(stream, columns, rows).finish(seq);
        self.framed.send(bytes).await.expect("send batch");
    }

    /// The next frame (30 s timeout).
    pub async fn recv(&mut self) -> Frame {
        match tokio::time::timeout(Duration::from_secs(30), self.framed.next()).await {
            Ok(Some(Ok(f))) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// `n` GeoLocation events for Italy/Naples spread evenly over 2026-11-20 10:00–10:59:59.999 UTC.
pub fn naples_rows(n: usize) -> Vec<Vec<Value>> {
    const START: i64 = 1_795_168_800_000; // 2026-11-20T10:00:00Z
    let n64 = i64::try_from(n).expect("n");
    (0..n64)
        .map(|i| {
            vec![
                Value::from("PizzaShackAPI"),
                Value::from("Italy"),
                Value::from("Naples"),
                Value::Long(START + i * 3_600_000 / n64),
            ]
        })
        .collect()
}

/// An encoder holding `rows` of `stream` (values in `columns` order), not yet finished.
pub fn encoder_with(stream: &str, columns: &[&str], rows: &[Vec<Value>]) -> BatchEncoder {
    let mut enc = BatchEncoder::new(stream, columns).expect("encoder");
    for row in rows {
        let refs: Vec<_> = row.iter().map(Value::as_ref).collect();
        enc.push_event(&refs).expect("push");
    }
    enc
}

/// An encoder holding [`naples_rows`]`(n)` of `geoTempStream`, not yet finished.
pub fn naples_encoder(n: usize) -> BatchEncoder {
    encoder_with("geoTempStream", &GEO_COLUMNS, &naples_rows(n))
}

/// The GeoLocation stream's columns.
pub const GEO_COLUMNS: [&str; 4] = ["apiName", "country", "city", "requestTimestamp"];

/// Waits up to `timeout` for `check` to hold, polling.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// Reads up to `max` bytes from a raw socket with a timeout (for garbage-input tests).
pub fn read_some(s: &mut TcpStream, max: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = vec![0; max];
    let n = s.read(&mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// The seeds' query: GeoLocationAgg per hour for 2026-11-20 10:00.
pub const HOUR_QUERY: &str = r#"from GeoLocationAgg within "2026-11-20 10:**:**" per "hours" select country, city, totalRequestCount"#;

/// `[["Italy", "Naples", n]]`: what [`HOUR_QUERY`] reads after `n` [`naples_rows`].
pub fn naples_hour(n: i64) -> Vec<Vec<serde_json::Value>> {
    vec![vec![
        serde_json::json!("Italy"),
        serde_json::json!("Naples"),
        serde_json::json!(n),
    ]]
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardtally-it-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes a Siddhi app to `name` in a fresh scratch directory; returns its path.
pub fn app_file(name: &str, source: &str) -> String {
    let app = scratch_dir().join(name);
    std::fs::write(&app, source).expect("app");
    app.display().to_string()
}

/// Sets the value of `flag` in `args` (which must have it, as [`serve_args`] does).
pub fn set_arg(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).expect("flag");
    args[i + 1] = value.into();
}

/// A file of the shared TLS test fixtures (`testdata/tls`).
pub fn tls_fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tls")).join(name)
}

/// Publishes every row positionally into `geoTempStream`.
pub async fn publish_rows(p: &shardtally_publisher::Publisher, rows: &[Vec<Value>]) {
    for row in rows {
        let refs: Vec<_> = row.iter().map(Value::as_ref).collect();
        p.publish_values("geoTempStream", &refs)
            .await
            .expect("publish");
    }
}

/// The metric line `shardtally_<name>{node_id=…,shard_id=…} <value>` of a `/metrics` text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("shardtally_{name}{{");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
