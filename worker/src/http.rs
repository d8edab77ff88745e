//! The worker's HTTP side: Siddhi's store API (`POST /stores/query`), `GET /health` and
//! `GET /metrics` (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use shardtally_publisher::protocol::Value;

use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::retrieve;
use crate::store::Store;

/// Largest request body `/stores/query` accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub(crate) struct HttpState {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) node_id: String,
    pub(crate) shard_id: String,
    /// When set, `/stores/query` and `/metrics` need `Authorization: Bearer <token>`.
    pub(crate) auth_token: Option<String>,
    /// The time a request's body has to arrive (the head's is enforced by the server).
    pub(crate) body_timeout: std::time::Duration,
    /// What one store query may cost.
    pub(crate) query_limits: retrieve::QueryLimits,
}

pub(crate) fn router(state: Arc<HttpState>) -> Router {
    let protected = Router::new()
        .route("/stores/query", post(store_query))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// With a token configured, lets through only requests that carry it as a bearer token.
async fn require_token(
    State(state): State<Arc<HttpState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(expected) = &state.auth_token {
        let presented = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !crate::server::constant_time_eq(expected.as_bytes(), presented.trim().as_bytes()) {
            Metrics::add(&state.metrics.auth_failures, 1);
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "this worker requires `Authorization: Bearer <token>` (the publishers' token)",
            );
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

/// Siddhi's store-query request body.
#[derive(Debug, Deserialize)]
struct QueryRequest {
    #[serde(rename = "appName")]
    app_name: Option<String>,
    query: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn store_query(
    State(state): State<Arc<HttpState>>,
    request: axum::extract::Request,
) -> Response {
    // However slowly it trickles in, the body has its time, as the head has.
    let body = tokio::time::timeout(
        state.body_timeout,
        Json::<QueryRequest>::from_request(request, &()),
    )
    .await;
    let Json(req) = match body {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.body_text()),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?} (handshake_timeout)",
                    state.body_timeout
                ),
            );
        }
    };
    let app = req.app_name.unwrap_or_default();
    let query = req.query.unwrap_or_default();
    if app.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "`appName` is empty");
    }
    if query.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "`query` is empty");
    }
    if app != state.catalog.name() {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no Siddhi app named `{app}` (this worker runs `{}`)",
                state.catalog.name()
            ),
        );
    }
    match retrieve::run_within(&state.catalog, &state.store, &query, state.query_limits).await {
        Ok(rs) => {
            let records: Vec<Vec<serde_json::Value>> = rs
                .rows
                .iter()
                .map(|row| row.iter().map(json_value).collect())
                .collect();
            Json(json!({ "records": records })).into_response()
        }
        Err(e) if e.is_user_error() => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A value as Siddhi's store API renders it in JSON.
pub fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::String(s) => json!(s),
        Value::Int(x) => json!(x),
        Value::Long(x) => json!(x),
        Value::Float(x) => json!(x),
        Value::Double(x) => json!(x),
        Value::Bool(x) => json!(x),
    }
}

async fn health(State(state): State<Arc<HttpState>>) -> Response {
    let db = state.store.ping().await;
    let up = db.is_ok() && state.metrics.database_up.load(Ordering::Relaxed);
    let body = json!({
        "status": if up { "ok" } else { "unhealthy" },
        "node_id": state.node_id,
        "shard_id": state.shard_id,
        "database": match &db { Ok(()) if up => "up".to_owned(), Ok(()) => "failing commits".to_owned(), Err(e) => format!("down: {e}") },
        "pending_events": state.metrics.pending_events.load(Ordering::Relaxed),
    });
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state
            .metrics
            .render(&state.node_id, &state.shard_id, state.store.write_counts()),
    )
        .into_response()
}
