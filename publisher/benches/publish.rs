//! Hot paths of the publisher: encoding a batch, and the `publish` call gateways make per
//! request.
//!
//! `cargo bench -p shardtally-publisher --bench publish`. Each benchmark reports the time per
//! event (criterion's throughput is set to one element per event).
//!
//! - `encode_batch/1000`: 1,000 GeoLocation events pushed into a [`BatchEncoder`] and sealed.
//! - `publish_values`: [`Publisher::publish_values`] on a publisher connected to a minimal
//!   worker stand-in that acks every batch at once (so the buffer never fills); the time per
//!   event is amortised over the call, the batch seals and the hand-over to the background task.
//! - `try_publish_values`: the same without `.await`, timed in chunks of 100,000 events with an
//!   untimed flush after each (it refuses an event the buffer cannot hold rather than wait).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use shardtally_publisher::protocol::{
    AttrType, Attribute, BatchEncoder, Frame, FrameCodec, PROTOCOL_VERSION, StreamSchema, ValueRef,
    Welcome,
};
use shardtally_publisher::{FullPolicy, Publisher};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

fn schema() -> StreamSchema {
    StreamSchema::new(
        "geoTempStream",
        vec![
            Attribute::new("apiName", AttrType::String),
            Attribute::new("country", AttrType::String),
            Attribute::new("city", AttrType::String),
            Attribute::new("requestTimestamp", AttrType::Long),
        ],
    )
}

const CITIES: [&str; 8] = [
    "Naples", "Rome", "Milan", "Turin", "Palermo", "Genoa", "Bologna", "Florence",
];

fn event(i: u64) -> [ValueRef<'static>; 4] {
    [
        ValueRef::String("PizzaShackAPI"),
        ValueRef::String("Italy"),
        ValueRef::String(CITIES[(i % 8) as usize]),
        ValueRef::Long(1_795_168_800_000 + i64::try_from(i % 3_600_000).unwrap_or(0)),
    ]
}

fn encode_batch(c: &mut Criterion) {
    let columns = ["apiName", "country", "city", "requestTimestamp"];
    let mut group = c.benchmark_group("encode_batch");
    group.throughput(Throughput::Elements(1000));
    let mut encoder = BatchEncoder::new("geoTempStream", &columns).expect("valid columns");
    let mut seq = 0;
    group.bench_function("1000", |b| {
        b.iter(|| {
            for i in 0..1000 {
                encoder.push_event(&event(i)).expect("4 values");
            }
            seq += 1;
            black_box(encoder.seal(seq))
        })
    });
    group.finish();
}

/// A worker stand-in: handshake, then an ACK for every BATCH, at once.
async fn acking_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let mut framed = Framed::new(socket, FrameCodec::new(64 << 20));
                while let Some(Ok(frame)) = framed.next().await {
                    let reply = match frame {
                        Frame::Hello(_) => Frame::Welcome(Welcome {
                            version: PROTOCOL_VERSION,
                            node_id: "bench".into(),
                            shard_id: "bench".into(),
                            max_frame_len: 64 << 20,
                            max_batch_events: 100_000,
                            streams: vec![schema()],
                        }),
                        Frame::Batch(b) => Frame::Ack { seq: b.seq },
                        Frame::Ping { nonce } => Frame::Pong { nonce },
                        _ => continue,
                    };
                    if framed.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Events per timed chunk of `try_publish_values`: a tenth of the publisher's default buffer
/// (1,000,000 events).
const TRY_CHUNK_EVENTS: u64 = 100_000;

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let publisher = rt.block_on(async {
        let addr = acking_server().await;
        let p = Publisher::builder(&format!("tcp://{addr}"))
            .schema(schema())
            .full_policy(FullPolicy::Block {
                timeout: Duration::from_secs(60),
            })
            .build()
            .expect("publisher");
        // Connected before measuring.
        p.publish_values("geoTempStream", &event(0))
            .await
            .expect("publish");
        p.flush().await.expect("flush");
        p
    });
    let mut group = c.benchmark_group("publisher");
    group.throughput(Throughput::Elements(1));
    group.bench_function("publish_values", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let _ = black_box(publisher.publish_values("geoTempStream", &event(i)).await);
                }
                start.elapsed()
            })
        })
    });
    // `try_publish_values` refuses (and counts as dropped) an event the buffer cannot hold: the
    // calls are timed in chunks of a tenth of the buffer, each followed by an untimed flush, so
    // the stand-in's acks always keep up and every call measured is an accepted event.
    let mut i = 0;
    group.bench_function("try_publish_values", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(TRY_CHUNK_EVENTS);
                let start = Instant::now();
                for _ in 0..chunk {
                    i += 1;
                    let _ = black_box(publisher.try_publish_values("geoTempStream", &event(i)));
                }
                timed += start.elapsed();
                left -= chunk;
                rt.block_on(publisher.flush()).expect("flush");
            }
            timed
        })
    });
    group.finish();
    rt.block_on(async {
        let _ = publisher.close(Duration::from_secs(10)).await;
    });
    // A refusal would have been timed as if it were a publish.
    let stats = publisher.stats();
    assert_eq!(
        stats.dropped_total(),
        0,
        "events dropped while measuring: {:?}",
        stats.dropped
    );
}

criterion_group!(benches, encode_batch, publish);
criterion_main!(benches);
