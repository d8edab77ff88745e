//! The example gateway (`publisher/examples/gateway.rs`, included here as a module) under real
//! HTTP requests: forwarded to an upstream on loopback, published through the tower layer into
//! two real workers, read back per API and minute; and with every worker down.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shardtally_publisher::layer::{
    AnalyticsLayer, ApiRequestMapping, MapEvent, RequestInfo, ResponseInfo, apim_request_schema,
};
use shardtally_publisher::{
    DROPPED_BUFFER_FULL, EndpointState, Event, PublishError, Publisher, Value,
};
use shardtally_worker::catalog::Catalog;
use shardtally_worker::config::AppSource;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{FreshDatabase, TempDir, Worker, database_servers, scenarios_dir};

#[allow(dead_code, unreachable_pub)]
#[path = "../../../publisher/examples/gateway.rs"]
mod example;

fn apim_app() -> PathBuf {
    scenarios_dir().join("apps/apim-requests.siddhi")
}

const APIS: [(&str, &str, &str); 3] = [
    ("/pizzashack/1.0.0", "PizzaShackAPI", "1.0.0"),
    ("/weather/2.1.0", "WeatherAPI", "2.1.0"),
    ("/books/1.0.0", "BookStoreAPI", "1.0.0"),
];

/// Where requests come from; the last sends no geo headers (counted under `country = ''`).
const PLACES: [(&str, &str); 5] = [
    ("Italy", "Naples"),
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Japan", "東京"),
    ("", ""),
];

/// Request `i`: its API, the upstream's delay (ms), the response body's size, and the place.
fn plan(i: usize) -> (usize, u64, usize, (&'static str, &'static str)) {
    (i % 3, (i as u64 * 7) % 13, (i * 37) % 700, PLACES[i % 5])
}

/// Request `i`'s `User-Agent`: every seventh is 300 characters, longer than the store holds.
fn user_agent(i: usize) -> String {
    if i.is_multiple_of(7) {
        format!("gateway-test/{i} {}", "é".repeat(300))
    } else {
        "gateway-test".to_owned()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The upstream: answers `?delay=MS&size=N` after `MS` ms with `N` bytes.
async fn start_upstream(stop: CancellationToken) -> SocketAddr {
    async fn answer(request: Request) -> Result<String, Infallible> {
        let query = request.uri().query().unwrap_or_default().to_owned();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        tokio::time::sleep(Duration::from_millis(param("delay"))).await;
        Ok("x".repeat(usize::try_from(param("size")).unwrap_or(0)))
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(answer);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    addr
}

/// The example's arguments for this upstream and these workers.
fn args(upstream: SocketAddr, workers: &str, buffer_events: u64) -> example::Args {
    use clap::Parser as _;
    let mut argv: Vec<String> = vec![
        "gateway".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        format!("http://{upstream}"),
        "--workers".into(),
        workers.into(),
        "--buffer-events".into(),
        buffer_events.to_string(),
        // A few hundred requests make a few batches: one per turn, so both workers get some.
        "--batches-per-turn".into(),
        "1".into(),
    ];
    for (context, name, version) in APIS {
        argv.extend(["--api".into(), format!("{context}={name}:{version}")]);
    }
    example::Args::parse_from(argv)
}

/// Serves the example gateway's router on a loopback port.
async fn start_gateway(router: axum::Router, stop: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(example::serve(listener, router, stop.cancelled_owned()));
    addr
}

type HttpClient = Client<HttpConnector, Body>;

/// Sends request `i` of the plan through the gateway; checks the answer.
async fn send(client: &HttpClient, gateway: SocketAddr, i: usize) {
    let (api, delay, size, (country, city)) = plan(i);
    let uri: Uri = format!(
        "http://{gateway}{}/menu?delay={delay}&size={size}",
        APIS[api].0
    )
    .parse()
    .expect("a URI");
    let mut request = axum::http::Request::get(uri).header("user-agent", user_agent(i));
    if !country.is_empty() {
        request = request
            .header("x-client-country", country)
            .header("x-client-city", city);
    }
    let request = request.body(Body::empty()).expect("a request");
    let response = client.request(request).await.expect("the gateway answers");
    assert_eq!(response.status(), StatusCode::OK, "request {i}");
    let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
        .await
        .expect("the body");
    assert_eq!(body.len(), size, "request {i}: the upstream's body, whole");
}

/// Sends requests `0..n`, `concurrency` at a time.
async fn send_all(client: &HttpClient, gateway: SocketAddr, n: usize, concurrency: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..concurrency {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (k..n).step_by(concurrency) {
                send(&client, gateway, i).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a sender");
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What the layer published for one request, as the test's mapping recorded it.
#[derive(Debug, Clone)]
struct Published {
    api: String,
    user_agent: String,
    minute: i64,
    delay: i64,
    response_time: i64,
    backend_time: i64,
    service_time: i64,
    size: i64,
}

fn long(event: &Event, name: &str) -> i64 {
    match event.get(name) {
        Some(Value::Long(v)) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

/// The example's mapping, recording the event of every request it publishes; the publishing
/// itself is the mapping's (positional values, not the recorded event).
struct Recording {
    mapping: ApiRequestMapping,
    log: Arc<Mutex<Vec<Published>>>,
}

impl MapEvent for Recording {
    fn map(&self, req: &RequestInfo, res: &ResponseInfo<'_>) -> Option<Event> {
        Some(self.mapping.event(req, res))
    }

    fn publish(
        &self,
        publisher: &Publisher,
        stream: &str,
        req: &RequestInfo,
        res: &ResponseInfo<'_>,
    ) -> Option<Result<(), PublishError>> {
        let event = self.mapping.event(req, res);
        let delay = req
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay=")))
            .and_then(|v| v.parse().ok())
            .expect("a delay");
        let Some(Value::String(api)) = event.get("apiName") else {
            panic!("no apiName in {event:?}");
        };
        let Some(Value::String(user_agent)) = event.get("userAgent") else {
            panic!("no userAgent in {event:?}");
        };
        let ts = long(&event, "requestTimestamp");
        self.log.lock().expect("the log").push(Published {
            api: api.clone(),
            user_agent: user_agent.clone(),
            minute: ts - ts.rem_euclid(60_000),
            delay,
            response_time: long(&event, "responseTime"),
            backend_time: long(&event, "backendTime"),
            service_time: long(&event, "serviceTime"),
            size: long(&event, "responseSize"),
        });
        self.mapping.publish(publisher, stream, req, res)
    }
}

fn int(v: &serde_json::Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// 600 requests over loopback through the example gateway into two real workers: per API and
/// minute, the merged rows hold exactly the count, the latency sums, minima and maxima, and the
/// average of what the layer published; per country and city exactly the requests sent (those
/// without geo headers under `country = city = ''`); 300-character user agents are cut to 254.
#[test]
fn the_gateway_publishes_every_request_exactly_into_two_workers() {
    let dir = TempDir::new("gateway");
    let url = format!("sqlite://{}", dir.path().join("worker.db").display());
    gateway_into_two_workers(&dir, &url);
}

/// [`the_gateway_publishes_every_request_exactly_into_two_workers`] on PostgreSQL and
/// MySQL/MariaDB (a fresh database on each server the environment names).
#[test]
fn the_gateway_publishes_every_request_exactly_on_database_servers() {
    for (name, server) in database_servers() {
        eprintln!("gateway on {name}");
        let dir = TempDir::new("gateway-server");
        let db = FreshDatabase::create(&server, "gateway");
        gateway_into_two_workers(&dir, &db.url);
    }
}

fn gateway_into_two_workers(dir: &TempDir, database_url: &str) {
    const REQUESTS: usize = 600;
    let app = apim_app();
    let w1 = Worker::start_on(dir.path(), database_url, "gw-1", &app, &[]);
    let w2 = Worker::start_on(dir.path(), database_url, "gw-2", &app, &[]);
    let workers = format!("{{{},{}}}", w1.endpoint(), w2.endpoint());

    let rt = runtime();
    let stop = CancellationToken::new();
    let (log, publisher) = rt.block_on(async {
        let upstream = start_upstream(stop.clone()).await;
        let args = args(upstream, &workers, 100_000);
        let publisher = example::publisher(&args).expect("the publisher");
        let log: Arc<Mutex<Vec<Published>>> = Arc::default();
        let recording = Recording {
            mapping: example::mapping(&args).expect("the mapping"),
            log: Arc::clone(&log),
        };
        let layer = AnalyticsLayer::new(publisher.clone(), example::STREAM, recording);
        let router = example::router(&args, Some(layer.clone())).expect("the router");
        let gateway = start_gateway(router, stop.clone()).await;

        send_all(&client(), gateway, REQUESTS, 6).await;
        publisher.flush().await.expect("flush");
        let s = layer.stats();
        assert_eq!((s.requests, s.published, s.refused), (600, 600, 0));
        (log, publisher)
    });
    let stats = publisher.stats();
    assert_eq!(stats.published, 600);
    assert_eq!(stats.acked, 600, "{stats:?}");
    assert_eq!((stats.dropped_total(), stats.failed_total()), (0, 0));
    for e in &stats.endpoints {
        assert!(e.acked > 0, "round-robin reaches both workers: {stats:?}");
    }

    let log = log.lock().expect("the log").clone();
    assert_eq!(log.len(), REQUESTS);
    // Long user agents are cut to the 254 characters the store holds (not refused).
    let mut cut = 0;
    for p in &log {
        let i: usize = p
            .user_agent
            .strip_prefix("gateway-test/")
            .and_then(|rest| rest.split(' ').next())
            .map_or(1, |n| n.parse().expect("a request number"));
        let sent = user_agent(i);
        if sent.chars().count() > 254 {
            cut += 1;
            assert_eq!(p.user_agent, sent.chars().take(254).collect::<String>());
        } else {
            assert_eq!(p.user_agent, sent);
        }
    }
    assert_eq!(cut, REQUESTS.div_ceil(7));
    let mut expected: BTreeMap<(i64, String), [i64; 8]> = BTreeMap::new();
    for p in &log {
        // The upstream slept `delay` ms: its latency, and the total, are at least that.
        assert!(p.backend_time >= p.delay, "{p:?}");
        assert!(p.response_time >= p.backend_time, "{p:?}");
        let e = expected.entry((p.minute, p.api.clone())).or_insert([
            0,
            0,
            i64::MAX,
            i64::MIN,
            0,
            i64::MAX,
            i64::MIN,
            0,
        ]);
        e[0] += 1;
        e[1] += p.response_time;
        e[2] = e[2].min(p.response_time);
        e[3] = e[3].max(p.response_time);
        e[4] += p.backend_time;
        e[5] = e[5].min(p.backend_time);
        e[6] = e[6].max(p.backend_time);
        e[7] += p.service_time;
    }
    let total_size: i64 = log.iter().map(|p| p.size).sum();
    let sent_size: i64 = (0..REQUESTS)
        .map(|i| i64::try_from(plan(i).2).expect("a size"))
        .sum();
    assert_eq!(total_size, sent_size, "responseSize is the body's length");

    let rows = w1.query(
        &app,
        "from ApiLatencyAgg within 0L, 9000000000000L per \"minutes\" \
         select AGG_TIMESTAMP, apiName, totalRequestCount, totalResponseTime, minResponseTime, \
         maxResponseTime, totalBackendTime, minBackendTime, maxBackendTime, totalServiceTime, \
         avgResponseTime, totalResponseSize",
    );
    let mut actual: BTreeMap<(i64, String), [i64; 8]> = BTreeMap::new();
    let mut read_size = 0;
    for r in &rows {
        let key = (int(&r[0]), r[1].as_str().expect("apiName").to_owned());
        let v: Vec<i64> = r[2..10].iter().map(int).collect();
        let avg = r[10].as_f64().expect("avgResponseTime");
        assert_eq!(avg, v[1] as f64 / v[0] as f64, "avg = sum / count: {r:?}");
        read_size += int(&r[11]);
        assert!(
            actual
                .insert(key, v.try_into().expect("8 values"))
                .is_none(),
            "one row per API and minute: {rows:?}"
        );
    }
    assert_eq!(actual, expected);
    assert_eq!(read_size, sent_size);
    let counts: i64 = actual.values().map(|v| v[0]).sum();
    assert_eq!(counts, 600);

    // Per country and city: what the requests' geo headers said (whatever the buckets).
    let rows = w2.query(
        &app,
        "from ApiGeoAgg within 0L, 9000000000000L per \"days\" \
         select apiName, country, city, totalRequestCount",
    );
    let mut geo: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for r in &rows {
        let s = |i: usize| r[i].as_str().expect("a string").to_owned();
        *geo.entry((s(0), s(1), s(2))).or_default() += int(&r[3]);
    }
    let mut sent: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for i in 0..REQUESTS {
        let (api, _, _, (country, city)) = plan(i);
        *sent
            .entry((APIS[api].1.into(), country.into(), city.into()))
            .or_default() += 1;
    }
    assert_eq!(geo, sent);
    assert_eq!(sent.len(), 15, "3 APIs × 5 places, one of them none");
    assert_eq!(
        sent.get(&("WeatherAPI".into(), String::new(), String::new())),
        Some(&40),
        "requests without geo headers are counted under country = city = ''"
    );

    rt.block_on(async {
        publisher
            .close(Duration::from_secs(10))
            .await
            .expect("close");
    });
    stop.cancel();
}

/// Two loopback ports nothing listens on.
fn dead_ports() -> [SocketAddr; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    [a.local_addr().expect("addr"), b.local_addr().expect("addr")]
}

/// Every worker down: all 300 requests are answered by the upstream through the gateway, the
/// first 40 events wait in the buffer, the other 260 are dropped at once, and the gateway's
/// metrics endpoint shows it.
#[test]
fn with_every_worker_down_the_gateway_answers_and_counts_the_drops() {
    let [a, b] = dead_ports();
    let workers = format!("{{tcp://{a},tcp://{b}}}");
    let rt = runtime();
    let stop = CancellationToken::new();
    rt.block_on(async {
        let upstream = start_upstream(stop.clone()).await;
        let args = args(upstream, &workers, 40);
        let publisher: Publisher = example::publisher(&args).expect("the publisher");
        let layer = AnalyticsLayer::new(
            publisher.clone(),
            example::STREAM,
            example::mapping(&args).expect("the mapping"),
        );
        let router = example::router(&args, Some(layer.clone())).expect("the router");
        let gateway = start_gateway(router, stop.clone()).await;
        let client = client();

        send_all(&client, gateway, 300, 4).await;
        let s = layer.stats();
        assert_eq!(
            (s.requests, s.published, s.refused, s.skipped),
            (300, 40, 260, 0)
        );
        let stats = publisher.stats();
        assert_eq!(stats.published, 40);
        assert_eq!(stats.acked, 0);
        assert_eq!(stats.dropped.get(DROPPED_BUFFER_FULL), Some(&260));
        assert!(
            stats
                .endpoints
                .iter()
                .all(|e| e.state != EndpointState::Connected),
            "{stats:?}"
        );

        // Visible on the gateway's own endpoint (which publishes nothing itself).
        let uri: Uri = format!("http://{gateway}{}", example::METRICS_PATH)
            .parse()
            .expect("a URI");
        let response = client
            .request(
                axum::http::Request::get(uri)
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await
            .expect("metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let text = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
            .await
            .expect("the body");
        let text = String::from_utf8_lossy(&text);
        let id = &stats.publisher_id;
        for line in [
            format!(
                "shardtally_publisher_dropped_events_total{{publisher_id=\"{id}\",reason=\"buffer_full\"}} 260"
            ),
            format!("shardtally_publisher_published_events_total{{publisher_id=\"{id}\"}} 40"),
            format!(
                "shardtally_publisher_endpoint_up{{publisher_id=\"{id}\",url=\"tcp://{a}\",group=\"0\"}} 0"
            ),
            "shardtally_layer_requests_total{stream=\"Request\"} 300".to_owned(),
            "shardtally_layer_refused_total{stream=\"Request\"} 260".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in\n{text}");
        }
        assert_eq!(layer.stats().requests, 300, "metrics requests are not published");
        stop.cancel();
    });
}

/// `apim_request_schema()` is the `Request` stream of the bundled app.
#[test]
fn the_built_in_request_schema_is_the_apps() {
    let catalog =
        Catalog::load(&AppSource::File(apim_app()), true).unwrap_or_else(|e| panic!("{e}"));
    let stream = catalog
        .streams()
        .iter()
        .find(|s| s.name == "Request")
        .expect("the Request stream");
    assert_eq!(stream, &apim_request_schema());
}
