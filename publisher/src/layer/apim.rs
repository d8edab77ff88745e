//! [`ApiRequestMapping`]: requests as events of WSO2 API-M's request stream.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, HOST, USER_AGENT};
use http::{HeaderName, StatusCode, Version};

use super::service::{MapEvent, RequestInfo, ResponseInfo};
use crate::client::Publisher;
use crate::error::PublishError;
use crate::event::Event;
use crate::protocol::{AttrType, Attribute, StreamSchema, Value, ValueRef};

/// The default header the client's country is read from.
pub const DEFAULT_COUNTRY_HEADER: &str = "x-client-country";
/// The default header the client's city is read from.
pub const DEFAULT_CITY_HEADER: &str = "x-client-city";
/// The default header the client's IP is read from (its first entry), before the peer address.
pub const DEFAULT_CLIENT_IP_HEADER: &str = "x-forwarded-for";

/// The schema of the `Request` stream of the bundled API-M app
/// (`scenarios/apps/apim-requests.siddhi`): the attributes of WSO2 API-M's request stream
/// `org.wso2.apimgt.statistics.request`, plus `country` and `city` — with the constraints a
/// worker running that app announces: strings of at most 254 characters; `apiName`,
/// `apiVersion`, `country` and `city` never null (group-by keys), and `apiName`, `country` and
/// `city` at most 209 characters (`ApiGeoAgg`'s three string keys share its index budget).
pub fn apim_request_schema() -> StreamSchema {
    use AttrType::{Bool, Int, Long, String as Text};
    let attributes = [
        ("meta_clientType", Text),
        ("applicationConsumerKey", Text),
        ("applicationName", Text),
        ("applicationId", Text),
        ("applicationOwner", Text),
        ("apiContext", Text),
        ("apiName", Text),
        ("apiVersion", Text),
        ("apiResourcePath", Text),
        ("apiResourceTemplate", Text),
        ("apiMethod", Text),
        ("apiCreator", Text),
        ("apiCreatorTenantDomain", Text),
        ("apiTier", Text),
        ("apiHostname", Text),
        ("username", Text),
        ("userTenantDomain", Text),
        ("userIp", Text),
        ("userAgent", Text),
        ("requestTimestamp", Long),
        ("throttledOut", Bool),
        ("responseTime", Long),
        ("serviceTime", Long),
        ("backendTime", Long),
        ("responseCacheHit", Bool),
        ("responseSize", Long),
        ("protocol", Text),
        ("responseCode", Int),
        ("destination", Text),
        ("gatewayType", Text),
        ("label", Text),
        ("country", Text),
        ("city", Text),
    ];
    StreamSchema::new(
        "Request",
        attributes
            .into_iter()
            .map(|(name, ty)| {
                let attr = Attribute::new(name, ty);
                let attr = if ty == Text {
                    attr.max_chars(254)
                } else {
                    attr
                };
                match name {
                    "apiName" | "country" | "city" => attr.required().max_chars(209),
                    "apiVersion" => attr.required(),
                    _ => attr,
                }
            })
            .collect(),
    )
}

/// The mapping for WSO2 API-M's request stream (`org.wso2.apimgt.statistics.request`, the
/// `Request` stream of `scenarios/apps/apim-requests.siddhi`), or any stream using its
/// attribute names, such as `geoTempStream`.
///
/// Built against the stream's schema, it fills every attribute it knows by name and leaves the
/// others null:
///
/// | attribute | value |
/// |---|---|
/// | `apiContext`, `apiName`, `apiVersion` | the API registered with [`api`](ApiRequestMappingBuilder::api) whose context is the longest prefix of the path; else the first path segment (`/seg`, `seg`, null) |
/// | `apiResourcePath`, `apiResourceTemplate` | the path after the context (`/` when none) |
/// | `apiMethod` | the method |
/// | `apiHostname` | the `Host` header, else the URI's host |
/// | `userIp` | the first entry of `X-Forwarded-For` ([configurable](ApiRequestMappingBuilder::client_ip_header)), else the [`ClientAddr`](super::ClientAddr)'s IP |
/// | `userAgent` | the `User-Agent` header |
/// | `country`, `city` | the `X-Client-Country` and `X-Client-City` headers ([configurable](ApiRequestMappingBuilder::geo_headers)) |
/// | `requestTimestamp` | arrival at the layer, epoch ms |
/// | `responseTime` | arrival until the response head, ms |
/// | `backendTime` | the upstream's latency from the response's [`Backend`](super::Backend), ms (null without one) |
/// | `serviceTime` | `responseTime − backendTime`: the gateway's own time |
/// | `destination` | the [`Backend`](super::Backend)'s destination |
/// | `responseCode` | the status (null when the service failed without a response) |
/// | `throttledOut` | status 429 |
/// | `responseCacheHit` | an `X-Cache` response header starting with `HIT` |
/// | `responseSize` | the response's `Content-Length` |
/// | `protocol` | `HTTP/1.1`, `HTTP/2.0`, … |
///
/// A string attribute the schema says must not be null (a group-by key) gets the [missing
/// text](ApiRequestMappingBuilder::missing_text) (default empty) when the mapping has no value
/// for it — a request without geo headers is still counted, under `country = ''` — and text
/// longer than an attribute's `max_chars` is cut to it (a long `User-Agent`), so that the
/// publisher does not refuse the event. Times fill `long` and `int` attributes in whole
/// milliseconds, `double` and `float` ones with the fraction. Any attribute can instead come
/// from a request [`header`](ApiRequestMappingBuilder::header) (parsed to the attribute's type;
/// null when it does not parse) or be a [`constant`](ApiRequestMappingBuilder::constant): the application, the user,
/// the tenant — what a gateway learns from its authentication.
///
/// ```
/// use shardtally_publisher::layer::ApiRequestMapping;
/// use shardtally_publisher::{AttrType, Attribute, StreamSchema};
///
/// let schema = StreamSchema::new("geoTempStream", vec![
///     Attribute::new("apiName", AttrType::String),
///     Attribute::new("country", AttrType::String),
///     Attribute::new("city", AttrType::String),
///     Attribute::new("requestTimestamp", AttrType::Long),
/// ]);
/// let mapping = ApiRequestMapping::builder()
///     .api("/pizzashack/1.0.0", "PizzaShackAPI", "1.0.0")
///     .geo_headers("cloudfront-viewer-country", "cloudfront-viewer-city")
///     .build(&schema)?;
/// # Ok::<(), shardtally_publisher::layer::MappingError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ApiRequestMapping {
    schema: StreamSchema,
    fields: Vec<Field>,
    apis: Vec<Api>,
    client_ip_header: HeaderName,
    /// The publisher id and stream found to check events against `schema`.
    positional_for: OnceLock<(String, String)>,
}

/// Configures an [`ApiRequestMapping`].
#[derive(Debug, Clone)]
pub struct ApiRequestMappingBuilder {
    apis: Vec<Api>,
    headers: Vec<(String, String)>,
    constants: Vec<(String, Value)>,
    country_header: String,
    city_header: String,
    client_ip_header: String,
    missing_text: String,
}

/// An [`ApiRequestMapping`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MappingError {
    /// A header or constant names an attribute the stream does not have.
    #[error("stream {stream:?} has no attribute {attribute:?}")]
    UnknownAttribute {
        /// The stream.
        stream: String,
        /// The attribute.
        attribute: String,
    },
    /// An attribute's type cannot hold what the mapping puts there.
    #[error("attribute {stream}.{attribute} is {ty}, but the mapping puts {what} there")]
    Type {
        /// The stream.
        stream: String,
        /// The attribute.
        attribute: String,
        /// Its type.
        ty: AttrType,
        /// What the mapping has for it.
        what: &'static str,
    },
    /// A header name is not valid.
    #[error("{0:?} is not a valid header name")]
    HeaderName(String),
    /// The missing text holds a NUL character, which no store holds.
    #[error("missing_text {0:?} holds a NUL character")]
    MissingText(String),
    /// An API context does not start with `/`.
    #[error("API context {0:?} must start with '/'")]
    Context(String),
}

/// A registered API.
#[derive(Debug, Clone)]
struct Api {
    context: String,
    name: String,
    version: String,
}

/// One attribute the mapping fills.
#[derive(Debug, Clone)]
struct Field {
    /// Its index in the schema.
    position: usize,
    name: Cow<'static, str>,
    ty: AttrType,
    source: Source,
    /// For a string that must not be null: the missing text (already cut to `max_chars`).
    missing: Option<String>,
    /// The most characters a string may have (longer text is cut).
    max_chars: Option<u32>,
}

impl Field {
    /// `slot` as the attribute takes it: null in a required string becomes the missing text,
    /// text longer than `max_chars` characters is cut (allocating only then).
    fn fit<'r>(&'r self, slot: Slot<'r>) -> Slot<'r> {
        match (slot, &self.missing) {
            (Slot::Null, Some(missing)) => Slot::Text(Cow::Borrowed(missing)),
            (Slot::Text(text), _) => Slot::Text(cut(text, self.max_chars)),
            (other, _) => other,
        }
    }
}

/// `text` cut to at most `max_chars` characters (allocating only when it is cut).
fn cut(text: Cow<'_, str>, max_chars: Option<u32>) -> Cow<'_, str> {
    match max_chars.map(|m| m as usize) {
        Some(max) if text.len() > max => match text.char_indices().nth(max) {
            Some((end, _)) => Cow::Owned(text[..end].to_owned()),
            None => text,
        },
        _ => text,
    }
}

#[derive(Debug, Clone)]
enum Source {
    Builtin(Builtin),
    Header(HeaderName),
    Constant(Value),
}

/// What the mapping computes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    ApiContext,
    ApiName,
    ApiVersion,
    ResourcePath,
    Method,
    Hostname,
    UserIp,
    UserAgent,
    RequestTimestamp,
    ThrottledOut,
    ResponseTime,
    ServiceTime,
    BackendTime,
    CacheHit,
    ResponseSize,
    Protocol,
    ResponseCode,
    Destination,
}

/// The attributes the mapping computes, by name.
const BUILTINS: &[(&str, Builtin)] = &[
    ("apiContext", Builtin::ApiContext),
    ("apiName", Builtin::ApiName),
    ("apiVersion", Builtin::ApiVersion),
    ("apiResourcePath", Builtin::ResourcePath),
    ("apiResourceTemplate", Builtin::ResourcePath),
    ("apiMethod", Builtin::Method),
    ("apiHostname", Builtin::Hostname),
    ("userIp", Builtin::UserIp),
    ("userAgent", Builtin::UserAgent),
    ("requestTimestamp", Builtin::RequestTimestamp),
    ("throttledOut", Builtin::ThrottledOut),
    ("responseTime", Builtin::ResponseTime),
    ("serviceTime", Builtin::ServiceTime),
    ("backendTime", Builtin::BackendTime),
    ("responseCacheHit", Builtin::CacheHit),
    ("responseSize", Builtin::ResponseSize),
    ("protocol", Builtin::Protocol),
    ("responseCode", Builtin::ResponseCode),
    ("destination", Builtin::Destination),
];

/// `name` as a `'static` string when it is one the mapping knows (no allocation per event).
fn static_name(name: &str) -> Option<&'static str> {
    BUILTINS
        .iter()
        .map(|(n, _)| *n)
        .chain(["country", "city"])
        .find(|n| *n == name)
}

/// What kind of value a builtin produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Flag,
}

impl Builtin {
    fn kind(self) -> Kind {
        match self {
            Builtin::ApiContext
            | Builtin::ApiName
            | Builtin::ApiVersion
            | Builtin::ResourcePath
            | Builtin::Method
            | Builtin::Hostname
            | Builtin::UserIp
            | Builtin::UserAgent
            | Builtin::Protocol
            | Builtin::Destination => Kind::Text,
            Builtin::RequestTimestamp
            | Builtin::ResponseTime
            | Builtin::ServiceTime
            | Builtin::BackendTime
            | Builtin::ResponseSize
            | Builtin::ResponseCode => Kind::Number,
            Builtin::ThrottledOut | Builtin::CacheHit => Kind::Flag,
        }
    }
}

impl Kind {
    fn fits(self, ty: AttrType) -> bool {
        match self {
            Kind::Text => ty == AttrType::String,
            Kind::Number => ty.is_numeric(),
            Kind::Flag => ty == AttrType::Bool,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Number => "a number",
            Kind::Flag => "a bool",
        }
    }
}

/// A computed value before it takes the attribute's type.
enum Raw<'a> {
    Null,
    Text(Cow<'a, str>),
    Number(i64),
    Millis(Duration),
    Flag(bool),
}

impl<'a> Raw<'a> {
    fn into_slot(self, ty: AttrType) -> Slot<'a> {
        match (self, ty) {
            (Raw::Null, _) => Slot::Null,
            (Raw::Text(s), AttrType::String) => Slot::Text(s),
            (Raw::Flag(b), AttrType::Bool) => Slot::Bool(b),
            (Raw::Number(n), ty) => number(n, ty),
            (Raw::Millis(d), AttrType::Double) => Slot::Double(d.as_secs_f64() * 1000.0),
            #[allow(clippy::cast_possible_truncation)]
            (Raw::Millis(d), AttrType::Float) => Slot::Float((d.as_secs_f64() * 1000.0) as f32),
            (Raw::Millis(d), ty) => number(i64::try_from(d.as_millis()).unwrap_or(i64::MAX), ty),
            _ => Slot::Null,
        }
    }
}

/// An attribute's value: text borrowed from the request where it can be.
#[derive(Debug, Clone, PartialEq)]
enum Slot<'a> {
    Null,
    Text(Cow<'a, str>),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bool(bool),
}

impl<'a> Slot<'a> {
    fn borrowed(v: ValueRef<'a>) -> Slot<'a> {
        match v {
            ValueRef::Null => Slot::Null,
            ValueRef::String(s) => Slot::Text(Cow::Borrowed(s)),
            ValueRef::Int(n) => Slot::Int(n),
            ValueRef::Long(n) => Slot::Long(n),
            ValueRef::Float(n) => Slot::Float(n),
            ValueRef::Double(n) => Slot::Double(n),
            ValueRef::Bool(b) => Slot::Bool(b),
        }
    }

    fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Slot::Null => ValueRef::Null,
            Slot::Text(s) => ValueRef::String(s),
            Slot::Int(n) => ValueRef::Int(*n),
            Slot::Long(n) => ValueRef::Long(*n),
            Slot::Float(n) => ValueRef::Float(*n),
            Slot::Double(n) => ValueRef::Double(*n),
            Slot::Bool(b) => ValueRef::Bool(*b),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Slot::Null => Value::Null,
            Slot::Text(s) => Value::String(s.into_owned()),
            Slot::Int(n) => Value::Int(n),
            Slot::Long(n) => Value::Long(n),
            Slot::Float(n) => Value::Float(n),
            Slot::Double(n) => Value::Double(n),
            Slot::Bool(b) => Value::Bool(b),
        }
    }
}

/// `n` as an `ty` value; null when it does not fit.
#[allow(clippy::cast_precision_loss)]
fn number<'a>(n: i64, ty: AttrType) -> Slot<'a> {
    match ty {
        AttrType::Long => Slot::Long(n),
        AttrType::Int => i32::try_from(n).map_or(Slot::Null, Slot::Int),
        AttrType::Double => Slot::Double(n as f64),
        AttrType::Float => Slot::Float(n as f32),
        AttrType::String | AttrType::Bool => Slot::Null,
    }
}

/// A header's text parsed to `ty`; null when it does not parse.
fn parse_header(text: Cow<'_, str>, ty: AttrType) -> Slot<'_> {
    let t = text.trim();
    match ty {
        AttrType::String => Slot::Text(text),
        AttrType::Int => t.parse().map_or(Slot::Null, Slot::Int),
        AttrType::Long => t.parse().map_or(Slot::Null, Slot::Long),
        AttrType::Float => t.parse().map_or(Slot::Null, Slot::Float),
        AttrType::Double => t.parse().map_or(Slot::Null, Slot::Double),
        AttrType::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Slot::Bool(true),
            "false" | "0" | "no" => Slot::Bool(false),
            _ => Slot::Null,
        },
    }
}

/// `value` as a `ty` value when lossless (int → long/double, long → double, float → double).
#[allow(clippy::cast_precision_loss)]
fn fit(value: &Value, ty: AttrType) -> Option<Value> {
    Some(match (value, ty) {
        (Value::Null, _) => Value::Null,
        (v, ty) if v.attr_type() == Some(ty) => v.clone(),
        (Value::Int(n), AttrType::Long) => Value::Long(i64::from(*n)),
        (Value::Int(n), AttrType::Double) => Value::Double(f64::from(*n)),
        (Value::Long(n), AttrType::Double) => Value::Double(*n as f64),
        (Value::Float(n), AttrType::Double) => Value::Double(f64::from(*n)),
        _ => return None,
    })
}

impl ApiRequestMapping {
    /// Starts configuring a mapping.
    pub fn builder() -> ApiRequestMappingBuilder {
        ApiRequestMappingBuilder {
            apis: Vec::new(),
            headers: Vec::new(),
            constants: Vec::new(),
            country_header: DEFAULT_COUNTRY_HEADER.to_owned(),
            city_header: DEFAULT_CITY_HEADER.to_owned(),
            client_ip_header: DEFAULT_CLIENT_IP_HEADER.to_owned(),
            missing_text: String::new(),
        }
    }

    /// The event for a request and its response.
    pub fn event(&self, request: &RequestInfo, response: &ResponseInfo<'_>) -> Event {
        let mut event = Event::with_capacity(self.fields.len());
        for (field, slot) in self.slots(request, response) {
            if slot != Slot::Null {
                event.set(field.name.clone(), slot.into_value());
            }
        }
        event
    }

    /// The schema the mapping was built for.
    pub fn schema(&self) -> &StreamSchema {
        &self.schema
    }

    /// Each filled attribute's value.
    fn slots<'r>(
        &'r self,
        request: &'r RequestInfo,
        response: &ResponseInfo<'r>,
    ) -> impl Iterator<Item = (&'r Field, Slot<'r>)> {
        let api = self
            .apis
            .iter()
            .find(|a| under(request.uri.path(), &a.context));
        self.fields.iter().map(move |field| {
            let slot = match &field.source {
                Source::Constant(v) => Slot::borrowed(v.as_ref()),
                Source::Header(h) => request.headers.get(h).map_or(Slot::Null, |v| {
                    parse_header(String::from_utf8_lossy(v.as_bytes()), field.ty)
                }),
                Source::Builtin(b) => self.builtin(*b, api, request, response).into_slot(field.ty),
            };
            (field, field.fit(slot))
        })
    }

    /// The values in schema order, as [`publish`](MapEvent::publish) sends them.
    #[cfg(test)]
    pub(super) fn values(&self, request: &RequestInfo, response: &ResponseInfo<'_>) -> Vec<Value> {
        let mut values = vec![Value::Null; self.schema.attributes.len()];
        for (field, slot) in self.slots(request, response) {
            values[field.position] = slot.as_value_ref().to_owned_value();
        }
        values
    }

    /// Whether `publisher` checks `stream` against this mapping's schema, so that positional
    /// values fit (remembered for the first such publisher and stream).
    pub(super) fn positional(&self, publisher: &Publisher, stream: &str) -> bool {
        if self
            .positional_for
            .get()
            .is_some_and(|(id, s)| id == publisher.publisher_id() && s == stream)
        {
            return true;
        }
        if publisher
            .schema(stream)
            .is_some_and(|s| s.same_shape(&self.schema))
        {
            let _ = self
                .positional_for
                .set((publisher.publisher_id().to_owned(), stream.to_owned()));
            return true;
        }
        false
    }

    fn builtin<'r>(
        &self,
        b: Builtin,
        api: Option<&'r Api>,
        request: &'r RequestInfo,
        response: &ResponseInfo<'r>,
    ) -> Raw<'r> {
        let path = request.uri.path();
        let text = |s: &'r str| Raw::Text(Cow::Borrowed(s));
        let header = |name: &HeaderName| {
            request.headers.get(name).map_or(Raw::Null, |v| {
                Raw::Text(String::from_utf8_lossy(v.as_bytes()))
            })
        };
        match b {
            Builtin::ApiContext => match api {
                Some(a) => text(&a.context),
                None => first_segment(path).map_or(Raw::Null, |s| {
                    Raw::Text(Cow::Borrowed(&path[..s.len() + 1]))
                }),
            },
            Builtin::ApiName => match api {
                Some(a) => text(&a.name),
                None => first_segment(path).map_or(Raw::Null, text),
            },
            Builtin::ApiVersion => api.map_or(Raw::Null, |a| text(&a.version)),
            Builtin::ResourcePath => {
                let context_len = match api {
                    Some(a) => a.context.trim_end_matches('/').len(),
                    None => first_segment(path).map_or(0, |s| s.len() + 1),
                };
                let rest = path.get(context_len..).unwrap_or_default();
                text(if rest.is_empty() { "/" } else { rest })
            }
            Builtin::Method => text(request.method.as_str()),
            Builtin::Hostname => match request.headers.get(HOST) {
                Some(_) => header(&HOST),
                None => request.uri.host().map_or(Raw::Null, text),
            },
            Builtin::UserIp => {
                let forwarded = request
                    .headers
                    .get(&self.client_ip_header)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .map(str::trim)
                    .filter(|v| !v.is_empty());
                match (forwarded, request.client_addr) {
                    (Some(ip), _) => text(ip),
                    (None, Some(addr)) => Raw::Text(Cow::Owned(addr.ip().to_string())),
                    (None, None) => Raw::Null,
                }
            }
            Builtin::UserAgent => header(&USER_AGENT),
            Builtin::RequestTimestamp => Raw::Number(request.received_at_millis()),
            Builtin::ResponseTime => Raw::Millis(response.latency),
            Builtin::BackendTime => response
                .backend()
                .map_or(Raw::Null, |b| Raw::Millis(b.latency)),
            Builtin::ServiceTime => Raw::Millis(
                response
                    .latency
                    .saturating_sub(response.backend().map_or(Duration::ZERO, |b| b.latency)),
            ),
            Builtin::Destination => response
                .backend()
                .and_then(|b| b.destination.as_deref())
                .map_or(Raw::Null, text),
            Builtin::ResponseCode => response
                .status()
                .map_or(Raw::Null, |s| Raw::Number(i64::from(s.as_u16()))),
            Builtin::ThrottledOut => response
                .status()
                .map_or(Raw::Null, |s| Raw::Flag(s == StatusCode::TOO_MANY_REQUESTS)),
            Builtin::CacheHit => response.headers().map_or(Raw::Null, |h| {
                Raw::Flag(h.get("x-cache").is_some_and(|v| {
                    v.as_bytes().len() >= 3 && v.as_bytes()[..3].eq_ignore_ascii_case(b"HIT")
                }))
            }),
            Builtin::ResponseSize => response
                .headers()
                .and_then(|h| h.get(CONTENT_LENGTH))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map_or(Raw::Null, Raw::Number),
            Builtin::Protocol => text(protocol(request.version)),
        }
    }
}

impl MapEvent for ApiRequestMapping {
    fn map(&self, request: &RequestInfo, response: &ResponseInfo<'_>) -> Option<Event> {
        Some(self.event(request, response))
    }

    /// Publishes positional values borrowed from the request (no [`Event`], no allocation per
    /// attribute) when the publisher checks the stream against this mapping's schema; else the
    /// [`event`](ApiRequestMapping::event).
    fn publish(
        &self,
        publisher: &Publisher,
        stream: &str,
        request: &RequestInfo,
        response: &ResponseInfo<'_>,
    ) -> Option<Result<(), PublishError>> {
        if !self.positional(publisher, stream) {
            return Some(publisher.try_publish(stream, &self.event(request, response)));
        }
        let slots: Vec<(&Field, Slot<'_>)> = self.slots(request, response).collect();
        let mut values = vec![ValueRef::Null; self.schema.attributes.len()];
        for (field, slot) in &slots {
            if let Some(v) = values.get_mut(field.position) {
                *v = slot.as_value_ref();
            }
        }
        Some(publisher.try_publish_values(stream, &values))
    }
}

/// Whether `path` is `context` or below it (on a segment boundary).
fn under(path: &str, context: &str) -> bool {
    let context = context.trim_end_matches('/');
    path.strip_prefix(context)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The first segment of a path (`/a/b` → `a`), if not empty.
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let seg = rest.split('/').next().unwrap_or_default();
    (!seg.is_empty()).then_some(seg)
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

impl ApiRequestMappingBuilder {
    /// Registers an API: requests whose path is `context` or below it get its name and version
    /// (the longest matching context wins), e.g. `api("/pizzashack/1.0.0", "PizzaShackAPI",
    /// "1.0.0")`.
    #[must_use]
    pub fn api(
        mut self,
        context: impl Into<String>,
        name: impl Into<String>,
        version: impl Into<String>,
    ) -> ApiRequestMappingBuilder {
        self.apis.push(Api {
            context: context.into(),
            name: name.into(),
            version: version.into(),
        });
        self
    }

    /// What a string attribute that must not be null (a group-by key, such as `country` in
    /// `ApiGeoAgg`) gets when the mapping has no value for it: no geo header, no API for the
    /// path, no [`constant`](ApiRequestMappingBuilder::constant) for it (default: empty text).
    /// E.g. `missing_text("unknown")`.
    #[must_use]
    pub fn missing_text(mut self, text: impl Into<String>) -> ApiRequestMappingBuilder {
        self.missing_text = text.into();
        self
    }

    /// The request headers `country` and `city` come from (default `X-Client-Country` and
    /// `X-Client-City`; e.g. `CloudFront-Viewer-Country`, `CF-IPCountry`).
    #[must_use]
    pub fn geo_headers(
        mut self,
        country: impl Into<String>,
        city: impl Into<String>,
    ) -> ApiRequestMappingBuilder {
        self.country_header = country.into();
        self.city_header = city.into();
        self
    }

    /// The request header whose first entry is the client's IP (default `X-Forwarded-For`);
    /// without it, `userIp` is the peer's address.
    #[must_use]
    pub fn client_ip_header(mut self, header: impl Into<String>) -> ApiRequestMappingBuilder {
        self.client_ip_header = header.into();
        self
    }

    /// Fills `attribute` from a request header instead (parsed to the attribute's type; null
    /// when absent or not parsable), e.g. `header("username", "x-authenticated-user")`.
    #[must_use]
    pub fn header(
        mut self,
        attribute: impl Into<String>,
        header: impl Into<String>,
    ) -> ApiRequestMappingBuilder {
        self.headers.push((attribute.into(), header.into()));
        self
    }

    /// Fills `attribute` with the same value for every request, e.g. `constant("gatewayType",
    /// "shardtally")`. Ints also fill `long` and `double` attributes, floats `double` ones.
    #[must_use]
    pub fn constant(
        mut self,
        attribute: impl Into<String>,
        value: impl Into<Value>,
    ) -> ApiRequestMappingBuilder {
        self.constants.push((attribute.into(), value.into()));
        self
    }

    /// Builds the mapping for `schema`'s stream.
    pub fn build(self, schema: &StreamSchema) -> Result<ApiRequestMapping, MappingError> {
        if self.missing_text.contains('\0') {
            return Err(MappingError::MissingText(self.missing_text));
        }
        let header_name = |h: &str| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| MappingError::HeaderName(h.into()))
        };
        let unknown = |attribute: &str| MappingError::UnknownAttribute {
            stream: schema.name.clone(),
            attribute: attribute.to_owned(),
        };
        let mut sources: Vec<Option<Source>> = vec![None; schema.attributes.len()];
        for (i, attr) in schema.attributes.iter().enumerate() {
            if let Some((_, b)) = BUILTINS.iter().find(|(n, _)| *n == attr.name) {
                if !b.kind().fits(attr.ty) {
                    return Err(MappingError::Type {
                        stream: schema.name.clone(),
                        attribute: attr.name.clone(),
                        ty: attr.ty,
                        what: b.kind().describe(),
                    });
                }
                sources[i] = Some(Source::Builtin(*b));
            }
        }
        let geo = [
            ("country", self.country_header.as_str()),
            ("city", self.city_header.as_str()),
        ];
        for (attribute, header) in geo {
            if let Some(i) = schema.position(attribute) {
                sources[i] = Some(Source::Header(header_name(header)?));
            }
        }
        for (attribute, header) in &self.headers {
            let i = schema
                .position(attribute)
                .ok_or_else(|| unknown(attribute))?;
            sources[i] = Some(Source::Header(header_name(header)?));
        }
        for (attribute, value) in &self.constants {
            let i = schema
                .position(attribute)
                .ok_or_else(|| unknown(attribute))?;
            let ty = schema.attributes[i].ty;
            let value = fit(value, ty).ok_or_else(|| MappingError::Type {
                stream: schema.name.clone(),
                attribute: attribute.clone(),
                ty,
                what: "a constant of another type",
            })?;
            sources[i] = Some(Source::Constant(value));
        }
        let fields = schema
            .attributes
            .iter()
            .zip(sources)
            .enumerate()
            .filter_map(|(position, (attr, source))| {
                let name = static_name(&attr.name)
                    .map_or_else(|| Cow::Owned(attr.name.clone()), Cow::Borrowed);
                let missing = (attr.required && attr.ty == AttrType::String).then(|| {
                    cut(Cow::Borrowed(self.missing_text.as_str()), attr.max_chars).into_owned()
                });
                // A required string the mapping does not fill is the missing text.
                let source = source.or_else(|| {
                    missing
                        .as_ref()
                        .map(|m| Source::Constant(Value::String(m.clone())))
                })?;
                Some(Field {
                    position,
                    name,
                    ty: attr.ty,
                    source,
                    missing,
                    max_chars: attr.max_chars,
                })
            })
            .collect();
        let mut apis = self.apis;
        if let Some(a) = apis.iter().find(|a| !a.context.starts_with('/')) {
            return Err(MappingError::Context(a.context.clone()));
        }
        // Longest context first, so the first match is the most specific.
        apis.sort_by_key(|a| std::cmp::Reverse(a.context.trim_end_matches('/').len()));
        Ok(ApiRequestMapping {
            schema: schema.clone(),
            fields,
            apis,
            client_ip_header: header_name(&self.client_ip_header)?,
            positional_for: OnceLock::new(),
        })
    }
}
