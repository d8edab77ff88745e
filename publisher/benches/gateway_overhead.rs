//! What the analytics layer adds per request, measured two ways:
//!
//! 1. **Loopback load**: the example gateway (`examples/gateway.rs`) proxying to an upstream on
//!    loopback, with and without the layer; keep-alive clients send requests back to back for a
//!    few seconds per round, the configurations alternate, and the medians over the rounds are
//!    compared: requests/s, the median request latency, and the CPU time the whole process
//!    spends per request (the steadiest of the three on a shared machine).
//! 2. **In process**: a trivial `tower` service called in a loop, with and without the layer
//!    (the API-M mapping of a realistic request): the added time per call, nothing else.
//!
//! Events go to a stand-in worker in the same process that acks every batch as soon as it is
//! decoded, so the publisher's whole path (mapping, encoding, batching, sending, acks) shares
//! the CPU with the gateway, as it would with a real worker on another machine — minus that
//! worker. On a shared 2-core machine, read the medians.
//!
//! ```text
//! cargo bench -p shardtally-publisher --features tower --bench gateway_overhead -- [SECONDS] [ROUNDS] [CONNECTIONS]
//! ```
//!
//! Defaults: 3 s, 5 rounds, 8 connections; `CONNECTIONS` 0 runs the in-process part only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shardtally_publisher::Publisher;
use shardtally_publisher::layer::{AnalyticsLayer, apim_request_schema};
use tokio::net::TcpListener;
use tower::{Layer as _, Service, ServiceExt as _};

#[allow(dead_code)]
#[path = "../examples/gateway.rs"]
mod example;
#[path = "support/ack_server.rs"]
mod support;

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// CPU time used by this process so far (user + system, every thread), in seconds; from
/// `/proc/self/stat` at 100 ticks per second (Linux), NaN elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // After "pid (comm)", utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// One timed round: requests/s, the median latency (µs), and the process's CPU time per
/// request (µs: client, gateway, upstream, publisher and stand-in worker together).
async fn load(gateway: SocketAddr, connections: usize, seconds: f64) -> (f64, f64, f64) {
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let uri: Uri = format!("http://{gateway}/pizzashack/1.0.0/menu?size=128")
        .parse()
        .expect("a URI");
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let cpu = cpu_seconds();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, uri, stop) = (client.clone(), uri.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let request = Request::get(uri.clone())
                        .header("x-client-country", "Italy")
                        .header("x-client-city", "Naples")
                        .header("user-agent", "bench/1.0")
                        .body(Body::empty())
                        .expect("a request");
                    let t = Instant::now();
                    let response = client.request(request).await.expect("an answer");
                    let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
                        .await
                        .expect("a body");
                    assert_eq!(body.len(), 128);
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a client task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu) * 1e6 / all.len() as f64;
    (all.len() as f64 / elapsed, median(&mut all), cpu)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Nanoseconds per call of `service`, over `n` calls.
async fn per_call<S>(mut service: S, n: u32) -> f64
where
    S: Service<Request<()>, Response = Response<&'static str>, Error = Infallible>,
{
    let start = Instant::now();
    for _ in 0..n {
        let request = Request::get("/pizzashack/1.0.0/menu?size=128")
            .header("x-client-country", "Italy")
            .header("x-client-city", "Naples")
            .header("user-agent", "bench/1.0")
            .header("host", "gw.example.com")
            .body(())
            .expect("a request");
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("a response");
        std::hint::black_box(response);
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; the rest are ours.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);

    let (listener, worker) = bind().await;
    tokio::spawn(support::ack_server(listener, apim_request_schema()));
    let (listener, upstream) = bind().await;
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { "x".repeat(128) });
        axum::serve(listener, app).await
    });

    use clap::Parser as _;
    let args = example::Args::parse_from([
        "gateway",
        "--upstream",
        &format!("http://{upstream}"),
        "--workers",
        &format!("{{tcp://{worker}}}"),
        "--api",
        "/pizzashack/1.0.0=PizzaShackAPI:1.0.0",
    ]);
    let publisher: Publisher = example::publisher(&args).expect("a publisher");
    let layer = AnalyticsLayer::new(
        publisher.clone(),
        example::STREAM,
        example::mapping(&args).expect("a mapping"),
    );
    let mut gateways = Vec::new();
    for with_layer in [false, true] {
        let router = example::router(&args, with_layer.then(|| layer.clone())).expect("a router");
        let (listener, addr) = bind().await;
        tokio::spawn(example::serve(listener, router, std::future::pending()));
        gateways.push(addr);
    }

    if connections > 0 {
        println!(
            "loopback load: {connections} keep-alive connections, {rounds} rounds of {seconds} s \
             per configuration, alternating"
        );
        load(gateways[0], connections, 1.0).await; // warm-up
        load(gateways[1], connections, 1.0).await;
        let mut results = [
            [Vec::new(), Vec::new(), Vec::new()],
            [Vec::new(), Vec::new(), Vec::new()],
        ];
        for round in 0..rounds {
            for (k, gateway) in gateways.iter().enumerate() {
                let (rps, p50, cpu) = load(*gateway, connections, seconds).await;
                println!(
                    "  round {round} {:<13} {rps:>9.0} req/s   p50 {p50:>7.1} µs   CPU {cpu:>6.1} µs/request",
                    if k == 0 {
                        "without layer"
                    } else {
                        "with layer"
                    }
                );
                results[k][0].push(rps);
                results[k][1].push(p50);
                results[k][2].push(cpu);
            }
        }
        let [without, with] = results.map(|r| r.map(|mut v| median(&mut v)));
        println!();
        println!("| gateway | req/s | p50 latency µs | CPU µs per request |");
        println!("|---|---|---|---|");
        for (name, m) in [("without the layer", without), ("with the layer", with)] {
            println!("| {name} | {:.0} | {:.1} | {:.1} |", m[0], m[1], m[2]);
        }
        println!(
            "| ratio with / without | {:.3} | {:.3} | {:.3} |",
            with[0] / without[0],
            with[1] / without[1],
            with[2] / without[2]
        );
    }

    // In process: the layer around a service that answers at once.
    let bare =
        tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new("hello")) });
    let n = 200_000;
    per_call(bare, n / 10).await;
    per_call(layer.layer(bare), n / 10).await;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(5) {
        without.push(per_call(bare, n).await);
        with.push(per_call(layer.layer(bare), n).await);
    }
    let (without, with) = (median(&mut without), median(&mut with));
    println!();
    println!(
        "in process: {without:.0} ns per call without the layer, {with:.0} ns with it: the \
         layer adds {:.2} µs per request",
        (with - without) / 1000.0
    );
    publisher.flush().await.expect("flush");
    let stats = publisher.stats();
    println!(
        "published {} events, acked {}, dropped {}",
        stats.published,
        stats.acked,
        stats.dropped_total()
    );
}
