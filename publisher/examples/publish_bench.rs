//! Measures the publish fast path: `publish_values` into a local worker stand-in that acks every
//! batch as soon as it is decoded.
//!
//! ```text
//! cargo run --release -p shardtally-publisher --example publish_bench -- [events] [tasks] [offline]
//! ```
//!
//! With `offline`, nothing listens: the events only go into the buffer (sized to hold them all),
//! which isolates the cost of `publish_values` from the worker stand-in sharing the CPU.

use std::time::{Duration, Instant};

use shardtally_publisher::{AttrType, Attribute, FullPolicy, Publisher, StreamSchema, ValueRef};
use tokio::net::TcpListener;

#[path = "../benches/support/ack_server.rs"]
mod support;

fn schema() -> StreamSchema {
    StreamSchema::new(
        "geo",
        vec![
            Attribute::new("apiName", AttrType::String),
            Attribute::new("country", AttrType::String),
            Attribute::new("city", AttrType::String),
            Attribute::new("requestTimestamp", AttrType::Long),
        ],
    )
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let tasks: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let offline = args.next().is_some_and(|a| a == "offline");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("tcp://{}", listener.local_addr().expect("addr"));
    if offline {
        drop(listener);
    } else {
        tokio::spawn(support::ack_server(listener, schema()));
    }
    let publisher = Publisher::builder(&url)
        .schema(schema())
        .buffer_max_events(events + 1)
        .buffer_max_bytes(u64::MAX)
        .batch_max_events(2000)
        .full_policy(FullPolicy::Block {
            timeout: Duration::from_secs(60),
        })
        .build()
        .expect("build");
    let start = Instant::now();
    let per_task = events / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let p = publisher.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                for i in 0..per_task {
                    let ts = i64::try_from(t * per_task + i).unwrap_or(i64::MAX);
                    let values = [
                        ValueRef::String("PizzaShackAPI"),
                        ValueRef::String("Italy"),
                        ValueRef::String("Naples"),
                        ValueRef::Long(1_763_632_800_000 + ts),
                    ];
                    p.publish_values("geo", &values).await.expect("publish");
                }
                start.elapsed()
            })
        })
        .collect();
    let mut publish_time = Duration::ZERO;
    for h in handles {
        publish_time = publish_time.max(h.await.expect("task"));
    }
    if offline {
        let n = per_task * tasks;
        println!(
            "{n} events, {tasks} task(s), offline: publish {:.0} ns/event ({:.2} M events/s)",
            publish_time.as_nanos() as f64 / n as f64,
            n as f64 / publish_time.as_secs_f64() / 1e6,
        );
        return;
    }
    publisher.flush().await.expect("flush");
    let total = start.elapsed();
    let stats = publisher.stats();
    let n = per_task * tasks;
    println!(
        "{n} events, {tasks} task(s): publish {:.0} ns/event ({:.2} M events/s); \
         end-to-end acked {:.2} M events/s; acked={} batches={}",
        publish_time.as_nanos() as f64 / n as f64,
        n as f64 / publish_time.as_secs_f64() / 1e6,
        n as f64 / total.as_secs_f64() / 1e6,
        stats.acked,
        stats.batches,
    );
    publisher
        .close(Duration::from_secs(5))
        .await
        .expect("close");
}
