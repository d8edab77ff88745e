//! Hot paths of the worker: decoding a batch, and folding events into the aggregation engine.
//!
//! `cargo bench -p shardtally-worker --bench ingest`. Times are per batch of 1,000 events;
//! criterion's throughput is set to 1,000 elements, so it also shows events/s.
//!
//! - `decode_batch/1000`: a BATCH frame of 1,000 GeoLocation events through the [`FrameCodec`]
//!   and an [`EventReader`](shardtally_publisher::protocol::EventReader) over every event, as the
//!   worker's connection task does.
//! - `record/<keys>[_live]`: [`Aggregator::record`] of 1,000 events of the bundled GeoLocation
//!   app (`seconds … years`), over 1,000 or 100,000 distinct keys, stamped over an hour (nearly
//!   every event a new row) or `live` (one second of event time per million events: rows are
//!   reused); the aggregator is drained every 200 batches, like a flush, and the drain is part of
//!   the time.
//! - `drain/<flush>`: [`Aggregator::drain`] of one flush, and dropping what it hands out (as the
//!   commit does): `replay`, 144,000 events over 1,000 keys and 26 s of event time (≈ 26,000
//!   SECONDS rows: one worker's flush of `shardtally-loadgen bench`'s one-hour replay while
//!   commits were sized by the finest rows only; ~1.3× that since), and
//!   `live`, 200,000 events over 1,000 keys in 200 ms of event time (≈ 1,000 rows per
//!   granularity).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shardtally_publisher::protocol::{BatchEncoder, Frame, FrameCodec, ValueRef};
use shardtally_worker::catalog::Catalog;
use shardtally_worker::config::AppSource;
use tokio_util::codec::Decoder;

struct Keys(Vec<(String, String, String)>);

impl Keys {
    fn new(n: usize) -> Keys {
        Keys(
            (0..n)
                .map(|j| {
                    (
                        format!("API-{:02}", j % 17),
                        format!("Country-{:02}", j % 97),
                        format!("City-{j:06}"),
                    )
                })
                .collect(),
        )
    }

    /// Event `i`: a random key; stamped two events per second over an hour (a replay: nearly
    /// every event is a new row), or, `live`, one second of event time per million events
    /// (traffic stamped now: rows are reused).
    fn event(&self, i: u64, live: bool) -> [ValueRef<'_>; 4] {
        let k = &self.0[(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % self.0.len()];
        let offset = if live { i / 1000 } else { i * 500 % 3_600_000 };
        [
            ValueRef::String(&k.0),
            ValueRef::String(&k.1),
            ValueRef::String(&k.2),
            ValueRef::Long(1_795_168_800_000 + i64::try_from(offset).unwrap_or(0)),
        ]
    }
}

fn batch_frame(keys: &Keys, first: u64) -> bytes::Bytes {
    let columns = ["apiName", "country", "city", "requestTimestamp"];
    let mut encoder = BatchEncoder::new("geoTempStream", &columns).expect("valid columns");
    for i in first..first + 1000 {
        encoder.push_event(&keys.event(i, false)).expect("4 values");
    }
    encoder.seal(first / 1000)
}

fn decode_batch(c: &mut Criterion) {
    let keys = Keys::new(1000);
    let frame = batch_frame(&keys, 0);
    let mut codec = FrameCodec::new(16 << 20);
    let mut group = c.benchmark_group("decode_batch");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000", |b| {
        b.iter(|| {
            let mut values = Vec::with_capacity(4);
            let mut buf = BytesMut::from(&frame[..]);
            let Ok(Some(Frame::Batch(batch))) = codec.decode(&mut buf) else {
                panic!("not a batch");
            };
            let mut reader = batch.reader();
            let mut n = 0u32;
            while reader.next_event(&mut values).expect("well-formed") {
                n += 1;
                black_box(&values);
            }
            n
        })
    });
    group.finish();
}

fn record(c: &mut Criterion) {
    let catalog = Catalog::load(&AppSource::Bundled, true).expect("bundled app");
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1000));
    for (n_keys, live, name) in [
        (1_000usize, false, "1000_keys"),
        (100_000, false, "100000_keys"),
        (1_000, true, "1000_keys_live"),
    ] {
        let keys = Keys::new(n_keys);
        let mut aggregator = catalog.aggregators().swap_remove(0);
        let mut i = 0u64;
        let mut batches = 0u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..1000 {
                    aggregator.record(&keys.event(i, live), 0);
                    i += 1;
                }
                batches += 1;
                if batches.is_multiple_of(200) {
                    let _ = black_box(aggregator.drain());
                }
            })
        });
    }
    group.finish();
}

fn drain(c: &mut Criterion) {
    let catalog = Catalog::load(&AppSource::Bundled, true).expect("bundled app");
    let keys = Keys::new(1_000);
    let mut group = c.benchmark_group("drain");
    // (name, events, event-time offset of event i in ms)
    type Flush = (&'static str, u64, fn(u64) -> u64);
    let flushes: [Flush; 2] = [
        ("replay", 144_000, |i| i * 2 / 11),
        ("live", 200_000, |i| i / 1_000),
    ];
    for (name, events, offset) in flushes {
        let mut filled = catalog.aggregators().swap_remove(0);
        for i in 0..events {
            let mut event = keys.event(i, true);
            event[3] = ValueRef::Long(1_795_168_800_000 + i64::try_from(offset(i)).unwrap_or(0));
            filled.record(&event, 0);
        }
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || filled.clone(),
                |a| drop(black_box(a.drain())),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decode_batch, record, drain);
criterion_main!(benches);
