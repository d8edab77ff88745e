//! `publish --endpoints URLSET [--stream NAME] [--rate N] [--app FILE] [--auth-token-file FILE]
//! < events.jsonl`: one JSON object per line, its keys the stream's attributes, sent to running
//! workers.
//!
//! Each line is checked against the stream's schema — from `--app`, else the one the first
//! worker announces at handshake: an unknown attribute, a value of the wrong type, or a line that
//! is not a JSON object is reported as `line N: reason`. Missing attributes are null; a `long`
//! attribute also takes an RFC 3339 timestamp string (stored as epoch milliseconds); blank lines
//! are skipped.
//!
//! When stdin is a file (`< events.jsonl`) every line is checked before the first is sent, so a
//! bad file sends nothing. When it is a pipe, lines are sent as they come; a bad line stops the
//! input there (what came before it is delivered, and said so).
//!
//! `--rate N` paces the events at N per second; without it they go as fast as the workers ack.
//! Exit status: 0 when every event was acked; 1 when one was dropped or failed (or no worker
//! answered); 2 for a bad flag, app or input line.

use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shardtally_loadgen::generate::parse_timestamp_ms;
use shardtally_publisher::protocol::{AttrType, StreamSchema};
use shardtally_publisher::{
    EndpointState, FullPolicy, PublishError, Publisher, UrlSet, Value, ValueRef,
};
use shardtally_worker::catalog::{Catalog, CatalogError};
use shardtally_worker::config::AppSource;

use crate::cli::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, PublishArgs};

/// How long to wait for a worker to announce the stream's schema (without `--app`).
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `publish` waits for buffer space before dropping an event (counted).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an event may stay unacked before it is given up (counted as failed).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
/// How long `close` waits for the last acks.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many bad lines are listed.
const MAX_REPORTED_LINES: usize = 20;

/// Runs `publish`; returns the exit status.
pub(crate) async fn publish(args: PublishArgs) -> u8 {
    match Publish::new(&args).await {
        Ok(p) => p.run(&args).await,
        Err((code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

/// A connected publisher and the stream's schema.
struct Publish {
    publisher: Publisher,
    schema: StreamSchema,
}

type Failure = (u8, String);

impl Publish {
    /// Checks the flags, loads the schema, builds the publisher (and, without `--app`, waits
    /// for a worker to announce the schema).
    async fn new(args: &PublishArgs) -> Result<Publish, Failure> {
        let usage = |m: String| (EXIT_USAGE, m);
        UrlSet::parse(&args.endpoints).map_err(|e| usage(format!("--endpoints: {e}")))?;
        if let Some(r) = args.rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err(usage(format!("--rate must be a number above 0, got {r}")));
        }
        let token = match &args.auth_token_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| usage(format!("--auth-token-file {}: {e}", path.display())))?,
            None => String::new(),
        };
        let given = match &args.app {
            Some(app) => Some(schema_from_app(app, args.stream.as_deref()).map_err(usage)?),
            None => None,
        };
        let mut builder = Publisher::builder(&args.endpoints)
            .publisher_id("loadgen-publish")
            .client_name(concat!("shardtally-loadgen/", env!("CARGO_PKG_VERSION")))
            .auth_token(token)
            .full_policy(FullPolicy::Block {
                timeout: BLOCK_TIMEOUT,
            })
            .delivery_deadline(DELIVERY_DEADLINE);
        if let Some(s) = &given {
            builder = builder.schema(s.clone());
        }
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| usage(format!("{flag} {}: {e}", path.display())))
        };
        if let Some(ca) = &args.tls_ca {
            builder = builder.tls_root_certificates_pem(read("--tls-ca", ca)?);
        }
        if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
            builder = builder.tls_client_auth_pem(
                read("--tls-client-cert", cert)?,
                read("--tls-client-key", key)?,
            );
        }
        let publisher = builder
            .build()
            .map_err(|e| usage(format!("--endpoints: {e}")))?;
        let schema = match given {
            Some(s) => s,
            None => {
                let Some(stream) = args.stream.as_deref() else {
                    return Err(usage(
                        "give --stream NAME (or --app FILE, whose only stream is the default)"
                            .to_owned(),
                    ));
                };
                announced_schema(&publisher, stream).await?
            }
        };
        Ok(Publish { publisher, schema })
    }

    async fn run(self, args: &PublishArgs) -> u8 {
        let outcome = if stdin_is_file() {
            let text =
                match tokio::task::spawn_blocking(|| std::io::read_to_string(std::io::stdin()))
                    .await
                {
                    Ok(Ok(text)) => text,
                    Ok(Err(e)) => {
                        eprintln!("error: cannot read stdin: {e}");
                        return EXIT_USAGE;
                    }
                    Err(e) => {
                        eprintln!("error: cannot read stdin: {e}");
                        return EXIT_FAILED;
                    }
                };
            let (rows, bad) = parse_all(&text, &self.schema);
            if !bad.is_empty() {
                report_bad_lines(&bad);
                eprintln!("error: nothing was sent");
                self.publisher.close(Duration::ZERO).await.ok();
                return EXIT_USAGE;
            }
            let mut pacer = Pacer::new(args.rate);
            let mut sent = SendCount::default();
            for row in &rows {
                pacer.wait().await;
                sent.publish(&self.publisher, &self.schema.name, row).await;
            }
            Input {
                sent,
                bad_line: None,
            }
        } else {
            self.stream_lines(args.rate).await
        };
        self.finish(outcome).await
    }

    /// Reads, checks and sends line by line; stops at the first bad line.
    async fn stream_lines(&self, rate: Option<f64>) -> Input {
        let mut lines = stdin_lines();
        let mut pacer = Pacer::new(rate);
        let mut sent = SendCount::default();
        let mut n = 0usize;
        loop {
            let line = match lines.recv().await {
                Some(Ok(l)) => l,
                None => break,
                Some(Err(e)) => {
                    return Input {
                        sent,
                        bad_line: Some((n + 1, format!("cannot read stdin: {e}"))),
                    };
                }
            };
            n += 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line, &self.schema) {
                Ok(row) => {
                    pacer.wait().await;
                    sent.publish(&self.publisher, &self.schema.name, &row).await;
                }
                Err(reason) => {
                    return Input {
                        sent,
                        bad_line: Some((n, reason)),
                    };
                }
            }
        }
        Input {
            sent,
            bad_line: None,
        }
    }

    /// Flushes, closes, reports; 0 only when every event was acked.
    async fn finish(self, input: Input) -> u8 {
        let _ = self.publisher.flush().await;
        let stats = self.publisher.stats();
        let _ = self.publisher.close(CLOSE_TIMEOUT).await;
        let sent = input.sent;
        let (dropped, failed) = (stats.dropped_total(), stats.failed_total());
        let all_acked = stats.acked == stats.published && stats.published == sent.attempted;
        let mut line = format!(
            "{} event(s) to {}: {} acked",
            sent.attempted, self.schema.name, stats.acked
        );
        if dropped > 0 {
            line.push_str(&format!(", {dropped} dropped (buffer full)"));
        }
        if failed > 0 {
            line.push_str(&format!(", {failed} failed"));
        }
        if sent.refused > 0 {
            line.push_str(&format!(", {} refused", sent.refused));
        }
        eprintln!("{line}");
        if let Some(f) = stats.last_failure.or(sent.last_error)
            && !all_acked
        {
            eprintln!("last failure: {f}");
        }
        if let Some((n, reason)) = input.bad_line {
            eprintln!("error: line {n}: {reason}");
            eprintln!("error: input stopped at line {n}; the events before it were sent");
            return EXIT_USAGE;
        }
        if all_acked && dropped == 0 && failed == 0 && sent.refused == 0 {
            EXIT_OK
        } else {
            EXIT_FAILED
        }
    }
}

/// What was read and sent.
struct Input {
    sent: SendCount,
    /// The line input stopped at (pipes only).
    bad_line: Option<(usize, String)>,
}

/// Counts of one publishing loop.
#[derive(Debug, Default)]
struct SendCount {
    attempted: u64,
    refused: u64,
    last_error: Option<String>,
}

impl SendCount {
    async fn publish(&mut self, publisher: &Publisher, stream: &str, row: &[Value]) {
        let values: Vec<ValueRef<'_>> = row.iter().map(Value::as_ref).collect();
        self.attempted += 1;
        match publisher.publish_values(stream, &values).await {
            Ok(()) | Err(PublishError::BufferFull { .. }) => {}
            Err(e) => {
                self.refused += 1;
                self.last_error = Some(e.to_string());
            }
        }
    }
}

/// Paces events at a constant rate: event i is due at start + i / rate.
struct Pacer {
    every_s: Option<f64>,
    start: Instant,
    next: u64,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            every_s: rate.map(|r| 1.0 / r),
            start: Instant::now(),
            next: 0,
        }
    }

    async fn wait(&mut self) {
        if let Some(every) = self.every_s
            && let Some(due) = Duration::try_from_secs_f64(self.next as f64 * every)
                .ok()
                .and_then(|d| self.start.checked_add(d))
        {
            tokio::time::sleep_until(due.into()).await;
        }
        self.next += 1;
    }
}

/// Stdin's lines, read by a thread (std's stdin blocks), as they come.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let stop = line.is_err();
            if tx.blocking_send(line).is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// Whether stdin is a regular file (so it can be read whole before sending).
fn stdin_is_file() -> bool {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.is_file())
}

/// The schema of `stream` (default: the only one) in a Siddhi app file.
fn schema_from_app(app: &std::path::Path, stream: Option<&str>) -> Result<StreamSchema, String> {
    let catalog = Catalog::load(&AppSource::File(app.to_owned()), true).map_err(|e| match e {
        CatalogError::Parse { path, source } => {
            format!(
                "{path}:{}:{}: {}",
                source.line, source.column, source.message
            )
        }
        other => other.to_string(),
    })?;
    let names = || {
        catalog
            .streams()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match stream {
        Some(name) => catalog
            .streams()
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "--stream: the app {} has no stream `{name}` (streams: {})",
                    app.display(),
                    names()
                )
            }),
        None => match catalog.streams() {
            [only] => Ok(only.clone()),
            _ => Err(format!(
                "the app {} has several streams ({}): give --stream NAME",
                app.display(),
                names()
            )),
        },
    }
}

/// Waits for a worker to announce `stream`'s schema.
async fn announced_schema(publisher: &Publisher, stream: &str) -> Result<StreamSchema, Failure> {
    let deadline = Instant::now() + SCHEMA_TIMEOUT;
    loop {
        if let Some(s) = publisher.schema(stream) {
            return Ok(s);
        }
        let stats = publisher.stats();
        if Instant::now() >= deadline {
            let connected = stats
                .endpoints
                .iter()
                .any(|e| e.state == EndpointState::Connected);
            let _ = publisher.close(Duration::ZERO).await;
            return Err(if connected {
                (
                    EXIT_USAGE,
                    format!("--stream: the workers do not know a stream `{stream}`"),
                )
            } else {
                let why = stats
                    .endpoints
                    .iter()
                    .filter_map(|e| e.last_error.as_ref().map(|m| format!("{}: {m}", e.url)))
                    .collect::<Vec<_>>()
                    .join("; ");
                (
                    EXIT_FAILED,
                    format!(
                        "no worker answered within {}s, so the schema of `{stream}` is unknown \
                         (give --app FILE to check lines without a worker){}",
                        SCHEMA_TIMEOUT.as_secs(),
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(": {why}")
                        }
                    ),
                )
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every line of `text` as a row; bad lines as `(line number, reason)`. Blank lines skipped.
fn parse_all(text: &str, schema: &StreamSchema) -> (Vec<Vec<Value>>, Vec<(usize, String)>) {
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, schema) {
            Ok(row) => rows.push(row),
            Err(reason) => bad.push((i + 1, reason)),
        }
    }
    (rows, bad)
}

fn report_bad_lines(bad: &[(usize, String)]) {
    for (n, reason) in bad.iter().take(MAX_REPORTED_LINES) {
        eprintln!("error: line {n}: {reason}");
    }
    if bad.len() > MAX_REPORTED_LINES {
        eprintln!(
            "error: … and {} more bad line(s)",
            bad.len() - MAX_REPORTED_LINES
        );
    }
}

/// One JSON object as the stream's row (schema order; missing attributes null).
fn parse_line(line: &str, schema: &StreamSchema) -> Result<Vec<Value>, String> {
    let json: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Json::Object(fields) = json else {
        return Err(format!(
            "expected a JSON object (keys = attributes), got {}",
            kind(&json)
        ));
    };
    let mut row = vec![Value::Null; schema.attributes.len()];
    for (key, v) in &fields {
        let Some(i) = schema.position(key) else {
            let names: Vec<&str> = schema.attributes.iter().map(|a| a.name.as_str()).collect();
            return Err(format!(
                "stream {} has no attribute `{key}` (attributes: {})",
                schema.name,
                names.join(", ")
            ));
        };
        let ty = schema.attributes[i].ty;
        row[i] = value_of(v, ty).map_err(|why| format!("attribute `{key}` is {ty}, got {why}"))?;
    }
    // What the store holds (a group-by key left out is null): the publisher would refuse it.
    for (attr, v) in schema.attributes.iter().zip(&row) {
        attr.check(v.as_ref())
            .map_err(|why| format!("attribute `{}`: {why}", attr.name))?;
    }
    Ok(row)
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a bool",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// A JSON value as a value of type `ty`; the error says what was given.
fn value_of(v: &Json, ty: AttrType) -> Result<Value, String> {
    let got = || match v {
        Json::Number(n) => format!("{n}"),
        Json::String(s) => format!("the string {s:?}"),
        other => kind(other).to_owned(),
    };
    Ok(match (v, ty) {
        (Json::Null, _) => Value::Null,
        (Json::Bool(b), AttrType::Bool) => Value::Bool(*b),
        (Json::String(s), AttrType::String) => Value::String(s.clone()),
        (Json::String(s), AttrType::Long) => match parse_timestamp_ms(s) {
            Some(ms) => Value::Long(ms),
            None => return Err(format!("{} (not an RFC 3339 timestamp)", got())),
        },
        (Json::Number(n), AttrType::Int) => match n.as_i64().and_then(|x| i32::try_from(x).ok()) {
            Some(x) => Value::Int(x),
            None => return Err(got()),
        },
        (Json::Number(n), AttrType::Long) => match n.as_i64() {
            Some(x) => Value::Long(x),
            None => return Err(got()),
        },
        (Json::Number(n), AttrType::Float) => {
            #[allow(clippy::cast_possible_truncation)] // float attributes are f32 by definition
            let x = n.as_f64().map(|x| x as f32).filter(|x| x.is_finite());
            match x {
                Some(x) => Value::Float(x),
                None => return Err(got()),
            }
        }
        (Json::Number(n), AttrType::Double) => match n.as_f64() {
            Some(x) => Value::Double(x),
            None => return Err(got()),
        },
        _ => return Err(got()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardtally_publisher::protocol::Attribute;

    fn geo() -> StreamSchema {
        StreamSchema::new(
            "geoTempStream",
            vec![
                Attribute::new("apiName", AttrType::String),
                Attribute::new("country", AttrType::String),
                Attribute::new("requestTimestamp", AttrType::Long),
                Attribute::new("hits", AttrType::Int),
                Attribute::new("ratio", AttrType::Double),
                Attribute::new("ok", AttrType::Bool),
                Attribute::new("weight", AttrType::Float),
            ],
        )
    }

    #[test]
    fn objects_become_rows_in_schema_order() {
        let row = parse_line(
            r#"{"country": "Italy", "apiName": "Pizza \"Shack\" 🍕", "requestTimestamp": 1795168800000, "hits": 3, "ratio": 0.5, "ok": true, "weight": 1}"#,
            &geo(),
        )
        .unwrap();
        assert_eq!(
            row,
            [
                Value::String("Pizza \"Shack\" 🍕".into()),
                Value::String("Italy".into()),
                Value::Long(1_795_168_800_000),
                Value::Int(3),
                Value::Double(0.5),
                Value::Bool(true),
                Value::Float(1.0),
            ]
        );
    }

    #[test]
    fn missing_attributes_are_null_and_timestamps_are_epoch_ms() {
        let row = parse_line(
            r#"{"requestTimestamp": "2026-11-20T10:00:00Z", "ratio": null}"#,
            &geo(),
        )
        .unwrap();
        assert_eq!(row[2], Value::Long(1_795_168_800_000));
        assert!(row.iter().enumerate().all(|(i, v)| i == 2 || v.is_null()));
    }

    #[test]
    fn bad_lines_say_why() {
        let s = geo();
        let err = |line: &str| parse_line(line, &s).unwrap_err();
        assert!(
            err("{\"country\": ").starts_with("not JSON: "),
            "{}",
            err("{")
        );
        assert_eq!(
            err("[1, 2]"),
            "expected a JSON object (keys = attributes), got an array"
        );
        assert_eq!(
            err(r#"{"town": "Naples"}"#),
            "stream geoTempStream has no attribute `town` (attributes: apiName, country, \
             requestTimestamp, hits, ratio, ok, weight)"
        );
        assert_eq!(err(r#"{"hits": 3.5}"#), "attribute `hits` is int, got 3.5");
        assert_eq!(
            err(r#"{"hits": 3000000000}"#),
            "attribute `hits` is int, got 3000000000"
        );
        assert_eq!(
            err(r#"{"country": 7}"#),
            "attribute `country` is string, got 7"
        );
        assert_eq!(
            err(r#"{"requestTimestamp": "yesterday"}"#),
            "attribute `requestTimestamp` is long, got the string \"yesterday\" (not an RFC 3339 \
             timestamp)"
        );
        assert_eq!(
            err(r#"{"ok": {"a": 1}}"#),
            "attribute `ok` is bool, got an object"
        );
        assert_eq!(
            err(r#"{"weight": 1e300}"#),
            "attribute `weight` is float, got 1e+300"
        );
    }

    #[test]
    fn parse_all_numbers_lines_from_one_and_skips_blank_ones() {
        let text = "{\"hits\": 1}\n\n{\"hits\": \"x\"}\n   \n{\"hits\": 2}\nnope\n";
        let (rows, bad) = parse_all(text, &geo());
        assert_eq!(rows.len(), 2);
        assert_eq!(bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [3, 6]);
    }
}
