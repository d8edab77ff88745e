//! Fuzzing, as bounded proptest harnesses that run with the tests (the stable-toolchain
//! equivalent of `cargo fuzz`): the wire-frame decoder, the Siddhi app parser, the store-query
//! parser and the scenario loader are fed mutations of the committed seed corpora in
//! `fuzz/corpus/<target>/` (plus the repository's own scenarios and apps). Each must return a
//! value or a clean error — never panic — and text errors must point inside the input.
//!
//! Runs `SHARDTALLY_FUZZ_CASES` cases per target (default 10,000, a few seconds; `proptest-regressions/` keeps
//! any failure found, to be committed). A longer session:
//! `SHARDTALLY_FUZZ_CASES=200000 cargo nextest run -p shardtally-loadgen fuzz`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::BytesMut;
use proptest::prelude::*;
use shardtally_loadgen::scenario::Scenario;
use shardtally_publisher::protocol::{Frame, FrameCodec, ValueRef};
use shardtally_worker::catalog::{Catalog, CatalogError};
use shardtally_worker::config::AppSource;
use shardtally_worker::query::{StoreQuery, check};
use tokio_util::codec::Decoder;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn cases() -> u32 {
    std::env::var("SHARDTALLY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Every file of `fuzz/corpus/<target>/`, plus files of `extra` dirs ending in `ext`.
fn corpus(target: &str, extra: &[(&str, &str)]) -> Vec<Vec<u8>> {
    let mut dirs: Vec<(PathBuf, &str)> = vec![(repo().join("fuzz/corpus").join(target), "")];
    dirs.extend(extra.iter().map(|(d, ext)| (repo().join(d), *ext)));
    let mut seeds = Vec::new();
    for (dir, ext) in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file() && p.to_string_lossy().ends_with(ext))
            .collect();
        files.sort();
        seeds.extend(files.iter().map(|f| std::fs::read(f).expect("seed")));
    }
    assert!(!seeds.is_empty(), "no seeds for {target}");
    seeds
}

/// Byte strings that mean something to one of the parsers, spliced in by [`Mutation::Token`].
const TOKENS: &[&[u8]] = &[
    b"define",
    b"stream",
    b"aggregation",
    b"from",
    b"select",
    b"group by",
    b"aggregate by",
    b"every",
    b"sec ... year",
    b"within",
    b"per",
    b"sum(",
    b"count()",
    b"avg(",
    b"max(",
    b"min(",
    b"ifThenElse(",
    b"@",
    b"@store(type='rdbms')",
    b"@PartitionById",
    b"(",
    b")",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b";",
    b":",
    b"'",
    b"\"",
    b"\\",
    b"\n",
    b"\r\n",
    b"\t",
    b"    ",
    b"-",
    b"- ",
    b"#",
    b"*",
    b"**",
    b"\"2026-11-20 10:**:**\"",
    b"\"hours\"",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"1e309",
    b"NaN",
    b"0x",
    b"\0",
    b"\xff\xfe",
    "é💥".as_bytes(),
    b"events: ",
    b"rate: max",
    b"phases:",
    b"expect:",
    b"fields:",
    b"between:",
    b"one_of:",
    b"zipf:",
    b"sequence:",
    b"at: 40%",
    b"kill:",
    b"&anchor",
    b"*anchor",
    b"!!binary",
    b"---",
    b"\x00\x00\x00\x05",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x10\x00",
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize, usize),
    Token(usize, usize),
    Truncate(usize),
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (at, any::<u8>()).prop_map(|(p, b)| Mutation::SetByte(p, b)),
        (at, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        (at, 1usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (at, 1usize..64, at).prop_map(|(p, n, q)| Mutation::Duplicate(p, n, q)),
        (at, 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Token(p, t)),
        at.prop_map(Mutation::Truncate),
        (any::<usize>(), at, at).prop_map(|(s, p, q)| Mutation::Splice(s, p, q)),
    ]
}

/// A seed (by index, modulo the corpus size) and mutations applied in order.
fn input() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (any::<usize>(), prop::collection::vec(mutation(), 0..6))
}

fn mutate(seeds: &[Vec<u8>], (seed, mutations): &(usize, Vec<Mutation>)) -> Vec<u8> {
    let mut data = seeds[seed % seeds.len()].clone();
    for m in mutations {
        let pos = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
        match m {
            Mutation::FlipBit(p, b) if !data.is_empty() => {
                let i = p % data.len();
                data[i] ^= 1 << b;
            }
            Mutation::SetByte(p, v) if !data.is_empty() => {
                let i = p % data.len();
                data[i] = *v;
            }
            Mutation::Insert(p, bytes) => {
                let i = pos(*p, data.len());
                data.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(p, n) => {
                let i = pos(*p, data.len());
                let end = (i + n).min(data.len());
                data.drain(i..end);
            }
            Mutation::Duplicate(p, n, q) => {
                let i = pos(*p, data.len());
                let end = (i + n).min(data.len());
                let chunk = data[i..end].to_vec();
                let j = pos(*q, data.len());
                data.splice(j..j, chunk);
            }
            Mutation::Token(p, t) => {
                let i = pos(*p, data.len());
                data.splice(i..i, TOKENS[*t].iter().copied());
            }
            Mutation::Truncate(p) => data.truncate(pos(*p, data.len())),
            Mutation::Splice(s, p, q) => {
                let other = &seeds[s % seeds.len()];
                let i = pos(*p, data.len());
                let j = pos(*q, other.len());
                data.truncate(i);
                data.extend_from_slice(&other[j..]);
            }
            Mutation::FlipBit(..) | Mutation::SetByte(..) => {}
        }
    }
    data
}

/// A text error's position must lie inside the text (or just past its end).
fn assert_inside(text: &str, line: u64, column: u64, what: &str) {
    let lines = u64::try_from(text.split('\n').count()).expect("line count");
    assert!(
        (1..=lines + 1).contains(&line) && column >= 1,
        "{what}: position {line}:{column} outside a {lines}-line input"
    );
}

/// The worker's default `max_batch_events`.
const MAX_BATCH_EVENTS: u32 = 100_000;

/// Decodes every frame of `data` (and every event of every batch); returns a summary that
/// must not depend on how the bytes were chunked.
fn decode_all(data: &[u8], chunk: usize) -> Vec<String> {
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    // Events are walked as the worker walks them: only in batches within
                    // its `max_batch_events` (a zero-column batch claiming 4 billion events
                    // would otherwise take 4 billion empty steps — the worker rejects it first).
                    if let Frame::Batch(batch) = &frame
                        && batch.event_count <= MAX_BATCH_EVENTS
                    {
                        let mut reader = batch.reader();
                        let mut values: Vec<ValueRef<'_>> = Vec::new();
                        loop {
                            match reader.next_event(&mut values) {
                                Ok(true) => out.push(format!("event {values:?}")),
                                Ok(false) => break,
                                Err(e) => {
                                    out.push(format!("bad event: {e}"));
                                    break;
                                }
                            }
                        }
                    }
                    out.push(format!("{frame:?}"));
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("error: {e}"));
                    return out;
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn frame_decoder(input in input(), chunk in 1usize..64) {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let seeds = SEEDS.get_or_init(|| corpus("frame", &[]));
        let data = mutate(seeds, &input);
        // The same bytes decode the same way whole or in pieces, and never panic.
        prop_assert_eq!(decode_all(&data, data.len()), decode_all(&data, chunk));
    }

    #[test]
    fn siddhi_app_parser(input in input()) {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let seeds = SEEDS.get_or_init(|| corpus("siddhi", &[("scenarios/apps", ".siddhi")]));
        let text = String::from_utf8_lossy(&mutate(seeds, &input)).into_owned();
        for partition_by_id in [false, true] {
            match Catalog::from_text(&text, partition_by_id, "fuzz.siddhi") {
                Ok(catalog) => prop_assert!(!catalog.name().is_empty()),
                Err(CatalogError::Parse { source, .. }) => assert_inside(
                    &text, u64::from(source.line), u64::from(source.column), &source.message),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn store_query_parser(input in input()) {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        let seeds = SEEDS.get_or_init(|| corpus("store_query", &[]));
        let catalog = CATALOG.get_or_init(|| {
            Catalog::load(&AppSource::Bundled, true).expect("bundled app")
        });
        let text = String::from_utf8_lossy(&mutate(seeds, &input)).into_owned();
        match StoreQuery::parse(&text) {
            Ok(query) => {
                // A query that parses is checked against a real layout without panicking.
                if let Ok(layout) = query.find_layout(&catalog.layouts) {
                    let _ = check(&query, layout);
                }
            }
            Err(e) => assert_inside(&text, u64::from(e.line), u64::from(e.column), &e.message),
        }
    }

    #[test]
    fn scenario_loader(input in input()) {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let seeds = SEEDS.get_or_init(|| corpus("scenario", &[("scenarios", ".yaml")]));
        let text = String::from_utf8_lossy(&mutate(seeds, &input)).into_owned();
        let base = repo().join("scenarios");
        match Scenario::parse(&text, Path::new("fuzz.yaml"), &base) {
            Ok(s) => prop_assert!(!s.phases.is_empty()),
            Err(e) => {
                if let Some(pos) = e.pos() {
                    assert_inside(&text, pos.line, pos.column, &e.message());
                }
            }
        }
    }
}

/// Writes the binary seeds of `fuzz/corpus/frame/` (run once by hand, then commit):
/// `cargo nextest run -p shardtally-loadgen --run-ignored only write_frame_seeds`.
#[test]
#[ignore = "regenerates committed fuzz seeds"]
fn write_frame_seeds() {
    use shardtally_publisher::protocol::{
        BatchEncoder, ErrorCode, Hello, PROTOCOL_VERSION, RejectCode, StreamSchema, Welcome,
    };
    use shardtally_publisher::{AttrType, Attribute};
    use tokio_util::codec::Encoder;

    let dir = repo().join("fuzz/corpus/frame");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut enc = BatchEncoder::new(
        "geoTempStream",
        &[
            "apiName",
            "country",
            "city",
            "requestTimestamp",
            "latency",
            "ok",
        ],
    )
    .expect("encoder");
    for (i, city) in ["Naples", "Zürich", "O'Brien \"quoted\"", "東京 🍕"]
        .iter()
        .enumerate()
    {
        enc.push_event(&[
            ValueRef::String("PizzaShackAPI"),
            ValueRef::String("Italy"),
            ValueRef::String(city),
            ValueRef::Long(1_795_168_800_000 + i64::try_from(i).expect("small")),
            ValueRef::Double(12.5),
            ValueRef::Bool(i % 2 == 0),
        ])
        .expect("push");
    }
    enc.push_event(&[
        ValueRef::Null,
        ValueRef::String(""),
        ValueRef::Null,
        ValueRef::Long(i64::MIN),
        ValueRef::Double(f64::MAX),
        ValueRef::Null,
    ])
    .expect("push");
    let batch = enc.finish(42);
    let frames = [
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            publisher_id: "gateway-eu1-00ff".into(),
            auth_token: "s3cret".into(),
            client_name: "shardtally-publisher/0.1.0".into(),
        }),
        Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            node_id: "wso2-am-analytics-1".into(),
            shard_id: "wso2-am-analytics-1".into(),
            max_frame_len: 16 << 20,
            max_batch_events: 100_000,
            streams: vec![StreamSchema::new(
                "geoTempStream",
                vec![
                    Attribute::new("apiName", AttrType::String),
                    Attribute::new("n", AttrType::Int),
                    Attribute::new("f", AttrType::Float),
                    Attribute::new("requestTimestamp", AttrType::Long),
                    Attribute::new("d", AttrType::Double),
                    Attribute::new("b", AttrType::Bool),
                ],
            )],
        }),
        Frame::Ack { seq: 7 },
        Frame::Reject {
            seq: 8,
            code: RejectCode::SchemaMismatch,
            reason: "event #3: bad".into(),
        },
        Frame::Ping { nonce: 1 },
        Frame::Pong { nonce: 1 },
        Frame::Goodbye {
            reason: "worker shutting down".into(),
        },
        Frame::Error {
            code: ErrorCode::AuthFailed,
            message: "authentication failed".into(),
        },
    ];
    let mut codec = FrameCodec::default();
    for frame in frames {
        let name = frame.name().to_lowercase();
        let mut buf = BytesMut::new();
        codec.encode(frame, &mut buf).expect("encode");
        std::fs::write(dir.join(format!("{name}.bin")), &buf).expect("write");
    }
    std::fs::write(dir.join("batch.bin"), &batch).expect("write");
    // A session's worth: HELLO, a batch, a ping, back to back.
    let mut session = std::fs::read(dir.join("hello.bin")).expect("hello");
    session.extend_from_slice(&batch);
    session.extend(std::fs::read(dir.join("ping.bin")).expect("ping"));
    std::fs::write(dir.join("session.bin"), session).expect("write");
}
