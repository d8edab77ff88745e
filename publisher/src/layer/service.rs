//! The layer, its service and response future, and what the mapping sees of a request.

use std::fmt;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::client::Publisher;
use crate::error::PublishError;
use crate::event::Event;
use crate::stats::escape_label;

/// Turns a finished request into the event to publish, or `None` to publish nothing.
///
/// Implemented by every `Fn(&RequestInfo, &ResponseInfo<'_>) -> Option<Event>` closure, and by
/// [`ApiRequestMapping`](super::ApiRequestMapping), the mapping for the API-M request stream.
/// It runs on the request path, once per request, after the response head is ready: keep it
/// cheap and never block in it.
pub trait MapEvent: Send + Sync + 'static {
    /// The event for this request and its response.
    fn map(&self, request: &RequestInfo, response: &ResponseInfo<'_>) -> Option<Event>;

    /// Publishes this request's event without waiting: `None` when there is none, else what
    /// the publisher said. The default hands [`map`](MapEvent::map)'s event to
    /// [`Publisher::try_publish`]; a mapping that knows the stream's schema may publish
    /// positional values instead ([`Publisher::try_publish_values`]), as
    /// [`ApiRequestMapping`](super::ApiRequestMapping) does. It must never wait.
    fn publish(
        &self,
        publisher: &Publisher,
        stream: &str,
        request: &RequestInfo,
        response: &ResponseInfo<'_>,
    ) -> Option<Result<(), PublishError>> {
        let event = self.map(request, response)?;
        Some(publisher.try_publish(stream, &event))
    }
}

impl<F> MapEvent for F
where
    F: Fn(&RequestInfo, &ResponseInfo<'_>) -> Option<Event> + Send + Sync + 'static,
{
    fn map(&self, request: &RequestInfo, response: &ResponseInfo<'_>) -> Option<Event> {
        self(request, response)
    }
}

/// What the layer keeps of a request for the mapping: taken before the request goes to the
/// inner service, which consumes it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RequestInfo {
    /// The method.
    pub method: Method,
    /// The URI as received (usually the path and query only).
    pub uri: Uri,
    /// The HTTP version.
    pub version: Version,
    /// The request headers.
    pub headers: HeaderMap,
    /// The peer's address, when the server put a [`ClientAddr`] in the request's extensions.
    pub client_addr: Option<SocketAddr>,
    /// When the layer received the request (wall clock).
    pub received_at: SystemTime,
}

impl RequestInfo {
    /// Takes what the mapping needs from a request.
    pub fn from_request<B>(request: &Request<B>) -> RequestInfo {
        RequestInfo {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            client_addr: request.extensions().get::<ClientAddr>().map(|a| a.0),
            received_at: SystemTime::now(),
        }
    }

    /// `received_at` in epoch milliseconds (0 before 1970).
    pub fn received_at_millis(&self) -> i64 {
        self.received_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// A request header as text (bytes that are not UTF-8 replaced), if present.
    pub fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
    }
}

/// What the mapping sees of the response.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ResponseInfo<'a> {
    /// The response head, or `None` when the inner service failed without a response.
    pub response: Option<&'a http::response::Parts>,
    /// From the request's arrival at the layer until the response head was ready.
    pub latency: Duration,
}

impl<'a> ResponseInfo<'a> {
    /// Builds the view of a response (for mappings' tests, and layers of other frameworks).
    pub fn new(response: Option<&'a http::response::Parts>, latency: Duration) -> ResponseInfo<'a> {
        ResponseInfo { response, latency }
    }

    /// The status, if there is a response.
    pub fn status(&self) -> Option<StatusCode> {
        self.response.map(|r| r.status)
    }

    /// The response headers, if there is a response.
    pub fn headers(&self) -> Option<&'a HeaderMap> {
        self.response.map(|r| &r.headers)
    }

    /// What the upstream call cost, when the handler put a [`Backend`] in the response's
    /// extensions.
    pub fn backend(&self) -> Option<&'a Backend> {
        self.response.and_then(|r| r.extensions.get::<Backend>())
    }
}

/// The client's address, put in a request's extensions by the server (e.g. from axum's
/// `ConnectInfo`), for [`RequestInfo::client_addr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The upstream call behind a response, put in the response's extensions by a proxying handler;
/// the API-M mapping reads `backendTime`, `serviceTime` and `destination` from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// How long the upstream took to answer (until its response head).
    pub latency: Duration,
    /// The upstream's URL.
    pub destination: Option<String>,
}

/// A [`tower_layer::Layer`] that publishes one event per HTTP request into a stream.
///
/// Cheap to clone (one `Arc`). Its services never block and never fail a request because of
/// analytics: the event goes through [`Publisher::try_publish`], so when the buffer is full it
/// is dropped at once and counted (in the publisher's [`Stats::dropped`](crate::Stats::dropped)
/// and in [`LayerStats::refused`]), whatever the publisher's full-buffer policy.
pub struct AnalyticsLayer<M> {
    shared: Arc<Shared<M>>,
}

struct Shared<M> {
    publisher: Publisher,
    stream: String,
    mapping: M,
    counters: LayerCounters,
}

#[derive(Debug, Default)]
struct LayerCounters {
    requests: AtomicU64,
    published: AtomicU64,
    skipped: AtomicU64,
    refused: AtomicU64,
    cancelled: AtomicU64,
}

impl<M> Clone for AnalyticsLayer<M> {
    fn clone(&self) -> AnalyticsLayer<M> {
        AnalyticsLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M> fmt::Debug for AnalyticsLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnalyticsLayer")
            .field("stream", &self.shared.stream)
            .field("publisher", &self.shared.publisher)
            .finish_non_exhaustive()
    }
}

impl<M: MapEvent> AnalyticsLayer<M> {
    /// Publishes, through `publisher`, the event `mapping` makes of each request into `stream`.
    pub fn new(publisher: Publisher, stream: impl Into<String>, mapping: M) -> AnalyticsLayer<M> {
        AnalyticsLayer {
            shared: Arc::new(Shared {
                publisher,
                stream: stream.into(),
                mapping,
                counters: LayerCounters::default(),
            }),
        }
    }
}

impl<M> AnalyticsLayer<M> {
    /// The publisher events go through.
    pub fn publisher(&self) -> &Publisher {
        &self.shared.publisher
    }

    /// The stream events go to.
    pub fn stream(&self) -> &str {
        &self.shared.stream
    }

    /// The mapping.
    pub fn mapping(&self) -> &M {
        &self.shared.mapping
    }

    /// A snapshot of the layer's counters (shared by every service it made).
    pub fn stats(&self) -> LayerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LayerStats {
            requests: get(&c.requests),
            published: get(&c.published),
            skipped: get(&c.skipped),
            refused: get(&c.refused),
            cancelled: get(&c.cancelled),
        }
    }
}

impl<S, M> Layer<S> for AnalyticsLayer<M> {
    type Service = Analytics<S, M>;

    fn layer(&self, inner: S) -> Analytics<S, M> {
        Analytics {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The layer's counters. `requests = published + skipped + refused`; requests whose response
/// future was dropped before it finished (the client went away) publish nothing and count as
/// `cancelled` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerStats {
    /// Requests that got a response (or an error from the inner service).
    pub requests: u64,
    /// Events the publisher accepted.
    pub published: u64,
    /// Requests the mapping returned no event for.
    pub skipped: u64,
    /// Events the publisher refused: buffer full (also in its `dropped`), invalid for the
    /// stream's schema (also in its `invalid`), or publisher closed.
    pub refused: u64,
    /// Requests abandoned before their response was ready.
    pub cancelled: u64,
}

impl LayerStats {
    /// Appends the counters in the Prometheus text format, labelled with the stream.
    pub fn write_prometheus(&self, stream: &str, out: &mut String) {
        let stream = escape_label(stream);
        for (name, help, v) in [
            (
                "requests_total",
                "Requests that got a response.",
                self.requests,
            ),
            (
                "published_total",
                "Request events the publisher accepted.",
                self.published,
            ),
            (
                "skipped_total",
                "Requests the mapping made no event of.",
                self.skipped,
            ),
            (
                "refused_total",
                "Request events the publisher refused (buffer full, invalid, closed).",
                self.refused,
            ),
            (
                "cancelled_total",
                "Requests abandoned before their response.",
                self.cancelled,
            ),
        ] {
            let _ = writeln!(out, "# HELP shardtally_layer_{name} {help}");
            let _ = writeln!(out, "# TYPE shardtally_layer_{name} counter");
            let _ = writeln!(out, "shardtally_layer_{name}{{stream=\"{stream}\"}} {v}");
        }
    }
}

/// The service made by [`AnalyticsLayer`]: passes requests to `S` and publishes an event per
/// response.
pub struct Analytics<S, M> {
    inner: S,
    shared: Arc<Shared<M>>,
}

impl<S: Clone, M> Clone for Analytics<S, M> {
    fn clone(&self) -> Analytics<S, M> {
        Analytics {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for Analytics<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Analytics")
            .field("inner", &self.inner)
            .field("stream", &self.shared.stream)
            .finish_non_exhaustive()
    }
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for Analytics<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: MapEvent,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let info = RequestInfo::from_request(&request);
        let start = Instant::now();
        ResponseFuture {
            future: self.inner.call(request),
            pending: Some(Pending {
                info,
                start,
                shared: Arc::clone(&self.shared),
            }),
        }
    }
}

/// A request on its way: what the event is made of once the response is ready.
struct Pending<M> {
    info: RequestInfo,
    start: Instant,
    shared: Arc<Shared<M>>,
}

impl<M: MapEvent> Pending<M> {
    fn finish(self, response: Option<&http::response::Parts>) {
        let shared = &*self.shared;
        let c = &shared.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let view = ResponseInfo::new(response, self.start.elapsed());
        let published =
            shared
                .mapping
                .publish(&shared.publisher, &shared.stream, &self.info, &view);
        let Some(published) = published else {
            c.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match published {
            Ok(()) => {
                c.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let refused = c.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Every refusal is counted; the log says so at 1, 2, 4, 8, … to stay readable
                // while every worker is down.
                if refused.is_power_of_two() {
                    tracing::warn!(
                        stream = %shared.stream,
                        refused,
                        "request event not published: {e}"
                    );
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`Analytics`]: the inner future, then the event published when it
    /// completes.
    pub struct ResponseFuture<F, M> {
        #[pin]
        future: F,
        pending: Option<Pending<M>>,
    }

    impl<F, M> PinnedDrop for ResponseFuture<F, M> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(p) = this.project().pending.take() {
                p.shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<F, M> fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, M, B, E> Future for ResponseFuture<F, M>
where
    F: Future<Output = Result<Response<B>, E>>,
    M: MapEvent,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let Some(pending) = this.pending.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                pending.finish(Some(&parts));
                Ok(Response::from_parts(parts, body))
            }
            Err(e) => {
                pending.finish(None);
                Err(e)
            }
        })
    }
}
