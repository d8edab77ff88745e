//! A small API gateway: a reverse proxy (axum + hyper) to one upstream that publishes one event
//! per request into the API-M `Request` stream of a shardtally cluster, through the publisher's
//! tower layer (`shardtally_publisher::layer`).
//!
//! ```text
//! cargo run --release -p shardtally-publisher --features tower --example gateway -- \
//!     --listen 127.0.0.1:8080 --upstream http://127.0.0.1:9000 \
//!     --workers '{tcp://127.0.0.1:9611,tcp://127.0.0.1:9612}' \
//!     --api /pizzashack/1.0.0=PizzaShackAPI:1.0.0
//! ```
//!
//! The workers run `scenarios/apps/apim-requests.siddhi` (see the README). Every request is
//! forwarded to the upstream with its path and query; the answer comes back as it is, or `502`
//! when the upstream cannot be reached. Analytics never holds a request: with every worker down
//! the gateway keeps answering, events are buffered up to `--buffer-events` and then dropped,
//! counted on `GET /_shardtally/metrics` (Prometheus text, answered by the gateway itself and
//! not published). Ctrl-C stops accepting, then delivers what is buffered (up to 10 s).
//!
//! The loadgen's tests include this file (`loadgen/tests/it/gateway.rs`) and drive it over real
//! HTTP into real workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shardtally_publisher::layer::{
    AnalyticsLayer, ApiRequestMapping, Backend, ClientAddr, DEFAULT_CITY_HEADER,
    DEFAULT_COUNTRY_HEADER, MapEvent, apim_request_schema,
};
use shardtally_publisher::{FullPolicy, Publisher};
use tokio::net::TcpListener;

/// The gateway's own path: Prometheus text of the publisher's and the layer's counters.
pub(crate) const METRICS_PATH: &str = "/_shardtally/metrics";

/// The stream events go to (`scenarios/apps/apim-requests.siddhi`).
pub(crate) const STREAM: &str = "Request";

/// A reverse proxy publishing one analytics event per request into a shardtally cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway")]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// The upstream requests are forwarded to: `http://host:port` (path and query are the
    /// request's).
    #[arg(
        long,
        env = "GATEWAY_UPSTREAM",
        default_value = "http://127.0.0.1:9000"
    )]
    pub(crate) upstream: String,
    /// The shardtally workers, as a receiver URL set.
    #[arg(
        long,
        env = "SHARDTALLY_ENDPOINTS",
        default_value = "{tcp://127.0.0.1:9611}"
    )]
    pub(crate) workers: String,
    /// An API, as `CONTEXT=NAME:VERSION` (repeatable); other paths are named after their first
    /// segment.
    #[arg(long = "api", value_name = "CONTEXT=NAME:VERSION", value_parser = parse_api)]
    pub(crate) apis: Vec<(String, String, String)>,
    /// The request header with the client's country (e.g. `cloudfront-viewer-country`).
    #[arg(long, default_value = DEFAULT_COUNTRY_HEADER)]
    pub(crate) country_header: String,
    /// The request header with the client's city.
    #[arg(long, default_value = DEFAULT_CITY_HEADER)]
    pub(crate) city_header: String,
    /// A file holding the workers' auth token.
    #[arg(long, env = "SHARDTALLY_AUTH_TOKEN_FILE")]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for `tls://` workers [default: the system trust store].
    #[arg(long, env = "SHARDTALLY_TLS_CA")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Events buffered while unacked; beyond, events are dropped (and counted).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) buffer_events: u64,
    /// Consecutive batches sent to one worker before the next worker's turn (1: every batch
    /// to the next worker).
    #[arg(long, default_value_t = shardtally_publisher::DEFAULT_BATCHES_PER_TURN)]
    pub(crate) batches_per_turn: usize,
    /// Publish nothing: the same proxy without the analytics layer (for overhead measurements).
    #[arg(long)]
    pub(crate) no_analytics: bool,
}

/// `CONTEXT=NAME:VERSION` → `(context, name, version)`.
fn parse_api(s: &str) -> Result<(String, String, String), String> {
    let (context, api) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected CONTEXT=NAME:VERSION"))?;
    let (name, version) = api.split_once(':').unwrap_or((api, ""));
    if !context.starts_with('/') || name.is_empty() {
        return Err(format!("{s:?}: expected /CONTEXT=NAME:VERSION"));
    }
    Ok((context.to_owned(), name.to_owned(), version.to_owned()))
}

/// The publisher for the `Request` stream (its schema given, so a gateway started while every
/// worker is down still checks and buffers events).
pub(crate) fn publisher(args: &Args) -> anyhow::Result<Publisher> {
    let mut builder = Publisher::builder(&args.workers)
        .publisher_id("gateway")
        .client_name("shardtally-example-gateway")
        .schema(apim_request_schema())
        .buffer_max_events(args.buffer_events)
        .batches_per_turn(args.batches_per_turn)
        .full_policy(FullPolicy::DropNewest);
    if let Some(path) = &args.auth_token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the auth token from {}", path.display()))?;
        builder = builder.auth_token(token.trim());
    }
    if let Some(path) = &args.tls_ca {
        let pem =
            std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?;
        builder = builder.tls_root_certificates_pem(pem);
    }
    builder.build().context("--workers")
}

/// The API-M mapping for the `--api`s and geo headers.
pub(crate) fn mapping(args: &Args) -> anyhow::Result<ApiRequestMapping> {
    let mut builder = ApiRequestMapping::builder()
        .geo_headers(&args.country_header, &args.city_header)
        .constant("gatewayType", "shardtally-example");
    for (context, name, version) in &args.apis {
        builder = builder.api(context, name, version);
    }
    builder.build(&apim_request_schema()).context("the mapping")
}

/// What the proxy handler shares.
struct Proxy {
    client: Client<HttpConnector, Body>,
    /// `scheme://authority` of the upstream.
    base: String,
    authority: HeaderValue,
}

/// The gateway's router: the proxy under `layer` (unless `None`), and the metrics endpoint.
pub(crate) fn router<M: MapEvent>(
    args: &Args,
    layer: Option<AnalyticsLayer<M>>,
) -> anyhow::Result<Router> {
    let upstream: Uri = args.upstream.parse().context("--upstream")?;
    let (Some("http"), Some(authority)) = (upstream.scheme_str(), upstream.authority()) else {
        anyhow::bail!("--upstream must be http://host:port, not {upstream}");
    };
    let proxy = Arc::new(Proxy {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{authority}"),
        authority: HeaderValue::from_str(authority.as_str()).context("--upstream")?,
    });
    let proxied = Router::new().fallback(forward).with_state(proxy);
    let Some(layer) = layer else {
        return Ok(proxied);
    };
    let metrics_layer = layer.clone();
    let metrics = move || {
        let layer = metrics_layer.clone();
        async move {
            let mut text = String::new();
            layer.publisher().stats().write_prometheus(&mut text);
            layer.stats().write_prometheus(layer.stream(), &mut text);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
        }
    };
    Ok(Router::new()
        .route(METRICS_PATH, get(metrics))
        .fallback_service(proxied.layer(layer))
        // The peer address, for `userIp` when there is no X-Forwarded-For.
        .layer(axum::middleware::map_request(client_addr)))
}

async fn client_addr(mut request: Request) -> Request {
    if let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        let addr = ClientAddr(*addr);
        request.extensions_mut().insert(addr);
    }
    request
}

/// Hop-by-hop headers, which a proxy does not forward.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove("keep-alive");
}

/// Forwards a request to the upstream; reports the upstream's latency in a [`Backend`].
async fn forward(State(proxy): State<Arc<Proxy>>, mut request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let destination = format!("{}{path}", proxy.base);
    match destination.parse::<Uri>() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return (StatusCode::BAD_REQUEST, "bad request URI").into_response(),
    }
    let client = request
        .extensions()
        .get::<ClientAddr>()
        .map(|a| a.0.ip().to_string());
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    headers.insert(header::HOST, proxy.authority.clone());
    if let Some(ip) = client {
        let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            headers.insert("x-forwarded-for", v);
        }
    }
    let start = Instant::now();
    let result = proxy.client.request(request).await;
    let backend = Backend {
        latency: start.elapsed(),
        destination: Some(destination),
    };
    let mut response = match result {
        Ok(response) => {
            let mut response = response.map(Body::new);
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(e) => {
            tracing::warn!("upstream {}: {e}", proxy.base);
            (StatusCode::BAD_GATEWAY, "upstream unreachable\n").into_response()
        }
    };
    response.extensions_mut().insert(backend);
    response
}

/// Serves `router` on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[allow(dead_code)] // The loadgen's tests include this file without its `main`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDTALLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let publisher = publisher(&args)?;
    let layer = if args.no_analytics {
        None
    } else {
        Some(AnalyticsLayer::new(
            publisher.clone(),
            STREAM,
            mapping(&args)?,
        ))
    };
    let router = router(&args, layer)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        "gateway on http://{} → {}, publishing to {} (metrics on {METRICS_PATH})",
        listener.local_addr()?,
        args.upstream,
        args.workers
    );
    serve(listener, router, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    tracing::info!("stopping: delivering what is buffered");
    if let Err(e) = publisher.close(Duration::from_secs(10)).await {
        tracing::warn!("{e}");
    }
    let stats = publisher.stats();
    tracing::info!(
        "published {}, acked {}, dropped {}, failed {}",
        stats.published,
        stats.acked,
        stats.dropped_total(),
        stats.failed_total()
    );
    Ok(())
}
