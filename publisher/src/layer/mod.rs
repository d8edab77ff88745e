//! A [`tower`](https://docs.rs/tower) layer that publishes one event per HTTP request (feature
//! `tower`).
//!
//! [`AnalyticsLayer`] wraps any `Service<http::Request<B>, Response = http::Response<B2>>` —
//! an axum `Router`, a hyper service, a tonic server — and, when the response head is ready,
//! asks its mapping ([`MapEvent`]) for an event and hands it to
//! [`Publisher::try_publish`](crate::Publisher::try_publish). The request never waits for
//! analytics and never fails because of it: when every worker is down the buffer fills, then
//! events are dropped at once and counted ([`Stats::dropped`](crate::Stats::dropped),
//! [`LayerStats::refused`]). Both render as Prometheus text
//! ([`Stats::write_prometheus`](crate::Stats::write_prometheus),
//! [`LayerStats::write_prometheus`]) for the gateway's `/metrics`.
//!
//! The mapping is any `Fn(&RequestInfo, &ResponseInfo<'_>) -> Option<Event>` closure, or
//! [`ApiRequestMapping`] for the API-M request stream (`scenarios/apps/apim-requests.siddhi`),
//! which closures can wrap to add or change attributes:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use shardtally_publisher::layer::{AnalyticsLayer, ApiRequestMapping, RequestInfo, ResponseInfo};
//! use shardtally_publisher::{Publisher, StreamSchema};
//!
//! # async fn gateway(schema: StreamSchema) -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = Publisher::builder("{tcp://10.0.0.1:9611,tcp://10.0.0.2:9611}")
//!     .schema(schema.clone())
//!     .build()?;
//! let mapping = ApiRequestMapping::builder()
//!     .api("/pizzashack/1.0.0", "PizzaShackAPI", "1.0.0")
//!     .header("username", "x-authenticated-user")
//!     .build(&schema)?;
//! let analytics = AnalyticsLayer::new(publisher.clone(), "Request", move |req: &RequestInfo, res: &ResponseInfo<'_>| {
//!     let mut event = mapping.event(req, res);
//!     event.set("gatewayType", "axum");
//!     Some(event)
//! });
//! let app: Router = Router::new()
//!     .route("/pizzashack/1.0.0/menu", get(|| async { "[]" }))
//!     .layer(analytics);
//! # Ok(())
//! # }
//! ```
//!
//! `responseTime` is measured around the inner service, from the call until its response head
//! (streaming the body is not included). A handler that proxies can report the upstream's share
//! by putting a [`Backend`] in the response's extensions; a server can give the peer address
//! with a [`ClientAddr`] in the request's extensions. `publisher/examples/gateway.rs` does both.
//!
//! # Layout
//! - `service`: [`AnalyticsLayer`], the [`Analytics`] service and its [`ResponseFuture`],
//!   [`MapEvent`], [`RequestInfo`], [`ResponseInfo`], [`LayerStats`].
//! - `apim`: [`ApiRequestMapping`].

mod apim;
mod service;
#[cfg(test)]
mod tests;

pub use apim::{
    ApiRequestMapping, ApiRequestMappingBuilder, DEFAULT_CITY_HEADER, DEFAULT_CLIENT_IP_HEADER,
    DEFAULT_COUNTRY_HEADER, MappingError, apim_request_schema,
};
pub use service::{
    Analytics, AnalyticsLayer, Backend, ClientAddr, LayerStats, MapEvent, RequestInfo,
    ResponseFuture, ResponseInfo,
};
