use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer as _, Service as _, ServiceExt as _, service_fn};

use super::*;
use crate::protocol::{AttrType, Attribute, StreamSchema, Value};
use crate::{Event, FullPolicy, Publisher, Stats};

fn request_schema() -> StreamSchema {
    let attrs = [
        ("applicationName", AttrType::String),
        ("apiContext", AttrType::String),
        ("apiName", AttrType::String),
        ("apiVersion", AttrType::String),
        ("apiResourcePath", AttrType::String),
        ("apiResourceTemplate", AttrType::String),
        ("apiMethod", AttrType::String),
        ("apiHostname", AttrType::String),
        ("username", AttrType::String),
        ("userTenantDomain", AttrType::String),
        ("userIp", AttrType::String),
        ("userAgent", AttrType::String),
        ("requestTimestamp", AttrType::Long),
        ("throttledOut", AttrType::Bool),
        ("responseTime", AttrType::Long),
        ("serviceTime", AttrType::Long),
        ("backendTime", AttrType::Long),
        ("responseCacheHit", AttrType::Bool),
        ("responseSize", AttrType::Long),
        ("protocol", AttrType::String),
        ("responseCode", AttrType::Int),
        ("destination", AttrType::String),
        ("gatewayType", AttrType::String),
        ("label", AttrType::String),
        ("country", AttrType::String),
        ("city", AttrType::String),
        ("tenantId", AttrType::Long),
    ];
    StreamSchema::new(
        "Request",
        attrs.iter().map(|(n, t)| Attribute::new(*n, *t)).collect(),
    )
}

fn info(request: Request<()>, received_at_ms: u64) -> RequestInfo {
    let mut info = RequestInfo::from_request(&request);
    info.received_at = SystemTime::UNIX_EPOCH + Duration::from_millis(received_at_ms);
    info
}

fn fields(event: &Event) -> Vec<(String, Value)> {
    event
        .fields()
        .map(|(n, v)| (n.to_owned(), v.clone()))
        .collect()
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

#[test]
fn the_apim_mapping_fills_every_attribute_it_knows() {
    let mapping = ApiRequestMapping::builder()
        .api("/pizzashack/1.0.0", "PizzaShackAPI", "1.0.0")
        .api("/pizzashack", "PizzaShackAPI", "0.9")
        .header("username", "x-user")
        .header("tenantId", "x-tenant-id")
        .constant("gatewayType", "shardtally")
        .constant("userTenantDomain", "carbon.super")
        .build(&request_schema())
        .unwrap();
    let mut request = Request::builder()
        .method("POST")
        .uri("/pizzashack/1.0.0/order/42?x=1")
        .header("host", "gw.example.com")
        .header("user-agent", "curl/8.5")
        .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
        .header("x-client-country", "Italy")
        .header("x-client-city", "Napoli")
        .header("x-user", "alice@carbon.super")
        .header("x-tenant-id", " 1234 ")
        .body(())
        .unwrap();
    request
        .extensions_mut()
        .insert(ClientAddr(SocketAddr::from(([127, 0, 0, 1], 5555))));
    let request = info(request, 1_763_632_800_123);
    let mut response = Response::builder()
        .status(StatusCode::CREATED)
        .header("content-length", "512")
        .header("x-cache", "HIT from edge")
        .body(())
        .unwrap();
    response.extensions_mut().insert(Backend {
        latency: Duration::from_micros(30_900),
        destination: Some("http://127.0.0.1:8080/order/42".to_owned()),
    });
    let (parts, ()) = response.into_parts();
    let event = mapping.event(
        &request,
        &ResponseInfo::new(Some(&parts), Duration::from_micros(42_700)),
    );
    // Schema order; the null ones (applicationName, label) left out.
    assert_eq!(
        fields(&event),
        vec![
            ("apiContext".to_owned(), s("/pizzashack/1.0.0")),
            ("apiName".to_owned(), s("PizzaShackAPI")),
            ("apiVersion".to_owned(), s("1.0.0")),
            ("apiResourcePath".to_owned(), s("/order/42")),
            ("apiResourceTemplate".to_owned(), s("/order/42")),
            ("apiMethod".to_owned(), s("POST")),
            ("apiHostname".to_owned(), s("gw.example.com")),
            ("username".to_owned(), s("alice@carbon.super")),
            ("userTenantDomain".to_owned(), s("carbon.super")),
            ("userIp".to_owned(), s("203.0.113.7")),
            ("userAgent".to_owned(), s("curl/8.5")),
            (
                "requestTimestamp".to_owned(),
                Value::Long(1_763_632_800_123)
            ),
            ("throttledOut".to_owned(), Value::Bool(false)),
            ("responseTime".to_owned(), Value::Long(42)),
            ("serviceTime".to_owned(), Value::Long(11)),
            ("backendTime".to_owned(), Value::Long(30)),
            ("responseCacheHit".to_owned(), Value::Bool(true)),
            ("responseSize".to_owned(), Value::Long(512)),
            ("protocol".to_owned(), s("HTTP/1.1")),
            ("responseCode".to_owned(), Value::Int(201)),
            (
                "destination".to_owned(),
                s("http://127.0.0.1:8080/order/42")
            ),
            ("gatewayType".to_owned(), s("shardtally")),
            ("country".to_owned(), s("Italy")),
            ("city".to_owned(), s("Napoli")),
            ("tenantId".to_owned(), Value::Long(1234)),
        ]
    );
}

#[tokio::test]
async fn positional_values_are_the_events_values_when_the_publisher_has_the_schema() {
    let schema = request_schema();
    let mapping = ApiRequestMapping::builder()
        .header("username", "x-user")
        .constant("gatewayType", "shardtally")
        .build(&schema)
        .unwrap();
    let request = info(
        Request::builder()
            .uri("/weather/today")
            .header("x-user", "bob")
            .header("x-client-city", "Café")
            .body(())
            .unwrap(),
        77,
    );
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("content-length", "3")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let view = ResponseInfo::new(Some(&response), Duration::from_millis(9));
    let event = mapping.event(&request, &view);
    let values = mapping.values(&request, &view);
    assert_eq!(values.len(), schema.attributes.len());
    for (attr, value) in schema.attributes.iter().zip(&values) {
        assert_eq!(
            event.get(&attr.name).unwrap_or(&Value::Null),
            value,
            "{}",
            attr.name
        );
    }
    assert_eq!(values.iter().filter(|v| !v.is_null()).count(), event.len());

    // Positional only for a publisher checking the stream against the same schema.
    let same = offline_publisher(10);
    assert!(mapping.positional(&same, "Request"));
    assert!(mapping.positional(&same, "Request"), "remembered");
    assert!(!mapping.positional(&same, "Other"));
    let unknown = Publisher::builder("tcp://127.0.0.1:1").build().unwrap();
    assert!(!mapping.positional(&unknown, "Request"));
    let other = Publisher::builder("tcp://127.0.0.1:1")
        .schema(StreamSchema::new(
            "Request",
            vec![Attribute::new("apiName", AttrType::String)],
        ))
        .build()
        .unwrap();
    assert!(!mapping.positional(&other, "Request"));

    // Both ways are accepted: positional values, and the event for a publisher without schema.
    for publisher in [&same, &unknown] {
        let layer = AnalyticsLayer::new(publisher.clone(), "Request", mapping.clone());
        let service = layer.layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
        service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(layer.stats().published, 1);
        assert_eq!(publisher.stats().published, 1);
    }
}

#[test]
fn unregistered_apis_fall_back_to_the_first_segment_and_the_peer_address() {
    let schema = StreamSchema::new(
        "geoTempStream",
        vec![
            Attribute::new("apiName", AttrType::String),
            Attribute::new("apiContext", AttrType::String),
            Attribute::new("apiVersion", AttrType::String),
            Attribute::new("apiResourcePath", AttrType::String),
            Attribute::new("userIp", AttrType::String),
            Attribute::new("country", AttrType::String),
            Attribute::new("city", AttrType::String),
            Attribute::new("requestTimestamp", AttrType::Long),
            Attribute::new("responseTime", AttrType::Double),
            Attribute::new("backendTime", AttrType::Long),
            Attribute::new("serviceTime", AttrType::Int),
            Attribute::new("responseCode", AttrType::Int),
            Attribute::new("throttledOut", AttrType::Bool),
        ],
    );
    let mapping = ApiRequestMapping::builder()
        .api("/pizzashack/1.0.0", "PizzaShackAPI", "1.0.0")
        .geo_headers("cloudfront-viewer-country", "cloudfront-viewer-city")
        .build(&schema)
        .unwrap();
    let mut request = Request::builder()
        .uri("/weather/today")
        .header("cloudfront-viewer-country", "FR")
        .header("x-client-city", "ignored: not the configured header")
        .body(())
        .unwrap();
    request
        .extensions_mut()
        .insert(ClientAddr(SocketAddr::from(([192, 0, 2, 1], 40_000))));
    let request = info(request, 5);
    let response = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let event = mapping.event(
        &request,
        &ResponseInfo::new(Some(&response), Duration::from_micros(2_500)),
    );
    assert_eq!(
        fields(&event),
        vec![
            ("apiName".to_owned(), s("weather")),
            ("apiContext".to_owned(), s("/weather")),
            ("apiResourcePath".to_owned(), s("/today")),
            ("userIp".to_owned(), s("192.0.2.1")),
            ("country".to_owned(), s("FR")),
            ("requestTimestamp".to_owned(), Value::Long(5)),
            ("responseTime".to_owned(), Value::Double(2.5)),
            // No backend: the gateway's own time is all of it.
            ("serviceTime".to_owned(), Value::Int(2)),
            ("responseCode".to_owned(), Value::Int(429)),
            ("throttledOut".to_owned(), Value::Bool(true)),
        ]
    );

    // The context itself is the resource "/"; a service error has no response code.
    let request = info(
        Request::builder()
            .uri("/pizzashack/1.0.0")
            .body(())
            .unwrap(),
        6,
    );
    let event = mapping.event(&request, &ResponseInfo::new(None, Duration::ZERO));
    assert_eq!(event.get("apiResourcePath"), Some(&s("/")));
    assert_eq!(event.get("apiVersion"), Some(&s("1.0.0")));
    assert_eq!(event.get("responseCode"), None);
    assert_eq!(event.get("throttledOut"), None);
    // "/pizzashack/1.0.0x" is not below "/pizzashack/1.0.0".
    let request = info(
        Request::builder()
            .uri("/pizzashack/1.0.0x/menu")
            .body(())
            .unwrap(),
        6,
    );
    let event = mapping.event(&request, &ResponseInfo::new(None, Duration::ZERO));
    assert_eq!(event.get("apiName"), Some(&s("pizzashack")));
}

#[test]
fn a_mapping_that_cannot_fit_its_stream_is_refused() {
    let schema = StreamSchema::new(
        "s",
        vec![
            Attribute::new("apiName", AttrType::Long),
            Attribute::new("n", AttrType::Int),
        ],
    );
    let err = |b: ApiRequestMappingBuilder| b.build(&schema).unwrap_err().to_string();
    assert_eq!(
        err(ApiRequestMapping::builder()),
        "attribute s.apiName is long, but the mapping puts text there"
    );
    let schema = StreamSchema::new("s", vec![Attribute::new("n", AttrType::Int)]);
    let err = |b: ApiRequestMappingBuilder| b.build(&schema).unwrap_err().to_string();
    assert_eq!(
        err(ApiRequestMapping::builder().header("user", "x-user")),
        "stream \"s\" has no attribute \"user\""
    );
    assert_eq!(
        err(ApiRequestMapping::builder().constant("n", 5i64)),
        "attribute s.n is int, but the mapping puts a constant of another type there"
    );
    assert_eq!(
        err(ApiRequestMapping::builder().header("n", "bad header")),
        "\"bad header\" is not a valid header name"
    );
    assert_eq!(
        err(ApiRequestMapping::builder().api("pizza", "P", "1")),
        "API context \"pizza\" must start with '/'"
    );
}

/// Required strings (group-by keys) the request has no value for get the missing text, cut like
/// any text to the attribute's `max_chars`; a required attribute the mapping does not fill at all
/// gets it too; a NUL in the missing text is refused when the mapping is built.
#[test]
fn required_strings_without_a_value_get_the_missing_text_cut_to_fit() {
    let schema = StreamSchema::new(
        "geo",
        vec![
            Attribute::new("apiName", AttrType::String)
                .required()
                .max_chars(6),
            Attribute::new("country", AttrType::String)
                .required()
                .max_chars(4),
            Attribute::new("city", AttrType::String).max_chars(3),
            Attribute::new("applicationName", AttrType::String).required(),
            Attribute::new("responseCode", AttrType::Int).required(),
        ],
    );
    let mapping = ApiRequestMapping::builder()
        .missing_text("unknown")
        .build(&schema)
        .unwrap();
    let request = info(
        Request::builder()
            .uri("/")
            .header("x-client-city", "Napoli")
            .body(())
            .unwrap(),
        5,
    );
    let values = mapping.values(&request, &ResponseInfo::new(None, Duration::ZERO));
    assert_eq!(
        values,
        [
            s("unknow"),
            s("unkn"),
            s("Nap"),
            s("unknown"),
            // Not a string: no missing text; the publisher refuses such an event.
            Value::Null,
        ]
    );
    let err = ApiRequestMapping::builder()
        .missing_text("a\0b")
        .build(&schema)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing_text \"a\\0b\" holds a NUL character"
    );
}

/// A publisher with nowhere to deliver: events stay in its buffer of `buffer` events.
fn offline_publisher(buffer: u64) -> Publisher {
    Publisher::builder("tcp://127.0.0.1:1")
        .schema(request_schema())
        .buffer_max_events(buffer)
        // The layer never waits, whatever the policy.
        .full_policy(FullPolicy::Block {
            timeout: Duration::from_secs(3600),
        })
        .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60))
        .build()
        .unwrap()
}

type Recorded = Arc<Mutex<Vec<(Option<StatusCode>, Event)>>>;

/// A mapping that records what it made (the API-M mapping, plus the status it saw).
fn recording(schema: &StreamSchema) -> (Recorded, impl MapEvent) {
    let mapping = ApiRequestMapping::builder().build(schema).unwrap();
    let seen: Recorded = Arc::default();
    let log = Arc::clone(&seen);
    let map = move |req: &RequestInfo, res: &ResponseInfo<'_>| {
        if req.uri.path() == "/skip" {
            return None;
        }
        let event = mapping.event(req, res);
        log.lock().unwrap().push((res.status(), event.clone()));
        Some(event)
    };
    (seen, map)
}

#[tokio::test]
async fn every_request_is_answered_while_a_full_buffer_drops_its_events() {
    let publisher = offline_publisher(3);
    let (seen, map) = recording(&request_schema());
    let layer = AnalyticsLayer::new(publisher.clone(), "Request", map);
    let mut service = layer.layer(service_fn(|req: Request<String>| async move {
        let status = if req.uri().path() == "/missing" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        Ok::<_, Infallible>(
            Response::builder()
                .status(status)
                .body(format!("echo {}", req.body()))
                .unwrap(),
        )
    }));
    for i in 0..5 {
        let path = if i == 1 { "/missing" } else { "/api/x" };
        let request = Request::builder().uri(path).body(i.to_string()).unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.body(), &format!("echo {i}"));
    }
    let skipped = Request::builder().uri("/skip").body(String::new()).unwrap();
    service.ready().await.unwrap().call(skipped).await.unwrap();

    assert_eq!(
        layer.stats(),
        LayerStats {
            requests: 6,
            published: 3,
            skipped: 1,
            refused: 2,
            cancelled: 0,
        }
    );
    let stats: Stats = publisher.stats();
    assert_eq!(stats.published, 3);
    assert_eq!(stats.dropped_total(), 2);
    assert_eq!(stats.dropped.get(crate::DROPPED_BUFFER_FULL), Some(&2));
    let seen = seen.lock().unwrap();
    let statuses: Vec<_> = seen.iter().map(|(s, _)| s.map(|s| s.as_u16())).collect();
    assert_eq!(
        statuses,
        [Some(200), Some(404), Some(200), Some(200), Some(200)]
    );
    assert_eq!(seen[1].1.get("responseCode"), Some(&Value::Int(404)));

    let mut text = String::new();
    layer.stats().write_prometheus(layer.stream(), &mut text);
    assert!(
        text.lines()
            .any(|l| l == "shardtally_layer_refused_total{stream=\"Request\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_service_error_publishes_an_event_without_response_and_is_passed_on() {
    let publisher = offline_publisher(10);
    let (seen, map) = recording(&request_schema());
    let layer = AnalyticsLayer::new(publisher.clone(), "Request", map);
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Err::<Response<()>, _>("upstream unreachable")
    }));
    let request = Request::builder().uri("/api/x").body(()).unwrap();
    assert_eq!(
        service.oneshot(request).await.unwrap_err(),
        "upstream unreachable"
    );
    assert_eq!(layer.stats().published, 1);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0, None);
    assert_eq!(seen[0].1.get("responseCode"), None);
    assert_eq!(seen[0].1.get("apiName"), Some(&s("api")));
}

#[tokio::test]
async fn an_abandoned_request_is_counted_cancelled_and_publishes_nothing() {
    let publisher = offline_publisher(10);
    let (seen, map) = recording(&request_schema());
    let layer = AnalyticsLayer::new(publisher.clone(), "Request", map);
    let service = layer.layer(service_fn(|_: Request<()>| async {
        std::future::pending::<Result<Response<()>, Infallible>>().await
    }));
    let request = Request::builder().uri("/api/x").body(()).unwrap();
    let answered = tokio::time::timeout(Duration::from_millis(20), service.oneshot(request)).await;
    assert!(answered.is_err());
    assert_eq!(
        layer.stats(),
        LayerStats {
            cancelled: 1,
            ..LayerStats::default()
        }
    );
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(publisher.stats().published, 0);
}

#[tokio::test]
async fn an_invalid_event_is_refused_not_the_request() {
    let publisher = offline_publisher(10);
    let layer = AnalyticsLayer::new(
        publisher.clone(),
        "Request",
        |_: &RequestInfo, _: &ResponseInfo<'_>| Some(Event::new().with("apiName", 42)),
    );
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert("user-agent", HeaderValue::from_static("t"));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(layer.stats().refused, 1);
    assert_eq!(publisher.stats().invalid, 1);
}
