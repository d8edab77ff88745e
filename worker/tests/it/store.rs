//! The SQL store on every backend: schema, exactly-once commits, delta arithmetic, shards,
//! migration, node registry, leases, purges, verbatim strings and error classification.

use std::time::Duration;

use shardtally_publisher::protocol::{AttrType, Value};
use shardtally_worker::bucket::Granularity;
use shardtally_worker::layout::{AggRow, Column, Delta, Layout, Measure, MeasureKind, StoredRow};
use shardtally_worker::store::{
    Backend, BatchId, CommitOutcome, LeaseOutcome, Store, StoreError, StoreOptions, ValueError,
    WriteCounts,
};

use crate::common::{TestDb, on_every_backend};

fn ms(rfc3339: &str) -> i64 {
    rfc3339
        .parse::<jiff::Timestamp>()
        .expect("a valid timestamp")
        .as_millisecond()
}

fn col(name: &str, ty: AttrType) -> Column {
    Column {
        name: name.into(),
        ty,
    }
}

fn measure(column: &str, kind: MeasureKind, ty: AttrType) -> Measure {
    Measure {
        column: column.into(),
        kind,
        ty,
    }
}

/// `GeoAgg`: group by country, city; latest apiName; sum/min/max of a long latency.
fn geo(partitioned: bool) -> Layout {
    Layout {
        aggregation: "GeoAgg".into(),
        partitioned,
        event_time: true,
        granularities: Granularity::ALL.to_vec(),
        keys: vec![
            col("country", AttrType::String),
            col("city", AttrType::String),
        ],
        latest: vec![col("apiName", AttrType::String)],
        measures: vec![
            measure("AGG_SUM_latency", MeasureKind::Sum, AttrType::Long),
            measure("AGG_MIN_latency", MeasureKind::Min, AttrType::Long),
            measure("AGG_MAX_latency", MeasureKind::Max, AttrType::Long),
        ],
        outputs: vec![],
    }
}

/// One partial aggregate of [`geo`].
#[allow(clippy::too_many_arguments)]
fn geo_row(
    bucket: i64,
    country: &str,
    city: &str,
    last_ts: i64,
    api: Option<&str>,
    count: i64,
    sum: Option<i64>,
    min: Option<i64>,
    max: Option<i64>,
) -> AggRow {
    AggRow {
        bucket,
        keys: vec![country.into(), city.into()].into(),
        last_event_ts: last_ts,
        latest: vec![api.into()],
        count,
        measures: vec![sum.into(), min.into(), max.into()],
    }
}

/// A delta holding, for every granularity of `layout`, the row `make(bucket start of ts)`.
fn everywhere(layout: &Layout, ts: i64, make: impl Fn(i64) -> AggRow) -> Delta {
    Delta {
        rows: layout
            .granularities
            .iter()
            .map(|&g| (g, vec![make(g.bucket_start(ts))]))
            .collect(),
    }
}

fn batch(publisher: &str, seq: u64) -> BatchId {
    BatchId {
        publisher_id: publisher.into(),
        seq,
    }
}

async fn commit(
    store: &Store,
    shard: &str,
    batches: &[BatchId],
    layout: &Layout,
    delta: &Delta,
) -> CommitOutcome {
    store
        .commit(shard, batches, &[(layout, delta)])
        .await
        .unwrap_or_else(|e| panic!("commit on {}: {e:?}", store.backend()))
}

/// Every row of one granularity, sorted by (bucket, shard, keys) so backends compare alike.
async fn all_rows(store: &Store, layout: &Layout, g: Granularity) -> Vec<StoredRow> {
    let mut rows = store
        .fetch(layout, g, i64::MIN, i64::MAX)
        .await
        .unwrap_or_else(|e| panic!("fetch on {}: {e:?}", store.backend()));
    rows.sort_by(|a, b| {
        (a.row.bucket, &a.shard_id, format!("{:?}", a.row.keys)).cmp(&(
            b.row.bucket,
            &b.shard_id,
            format!("{:?}", b.row.keys),
        ))
    });
    rows
}

async fn schema(store: &Store, layouts: &[Layout]) {
    store
        .ensure_schema(layouts)
        .await
        .unwrap_or_else(|e| panic!("ensure_schema on {}: {e:?}", store.backend()));
}

#[tokio::test]
async fn schema_creation_is_idempotent_and_concurrent_safe() {
    on_every_backend(|db| async move {
        let layouts = [geo(true)];
        // Four workers start at once on an empty database.
        let stores = [
            db.store().await,
            db.store().await,
            db.store().await,
            db.store().await,
        ];
        let results =
            futures_util::future::join_all(stores.iter().map(|s| s.ensure_schema(&layouts))).await;
        for r in results {
            assert!(r.is_ok(), "{:?}: {r:?}", db.backend);
        }
        // And again, twice.
        schema(&stores[0], &layouts).await;
        schema(&stores[1], &layouts).await;
        for g in Granularity::ALL {
            assert_eq!(all_rows(&stores[2], &layouts[0], g).await, vec![]);
        }
        let t = ms("2026-11-20T10:15:00Z");
        let delta = everywhere(&layouts[0], t, |b| {
            geo_row(
                b,
                "Italy",
                "Naples",
                t,
                Some("PizzaShackAPI"),
                1,
                Some(5),
                Some(5),
                Some(5),
            )
        });
        assert_eq!(
            commit(&stores[3], "n1", &[batch("p", 1)], &layouts[0], &delta).await,
            CommitOutcome::Committed
        );
        for g in Granularity::ALL {
            assert_eq!(all_rows(&stores[0], &layouts[0], g).await.len(), 1, "{g}");
        }
        for s in &stores {
            s.close().await;
        }
        db
    })
    .await;
}

#[tokio::test]
async fn deltas_add_exactly() {
    on_every_backend(|db| async move {
        let layout = geo(true);
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let t = ms("2026-11-20T10:15:30.250Z");
        let hour = Granularity::Hours.bucket_start(t);

        // Batch 1: 3 events, latency sum 30, min 5, max 20, latest apiName v1 at t.
        let d1 = everywhere(&layout, t, |b| {
            geo_row(
                b,
                "Italy",
                "Naples",
                t,
                Some("v1"),
                3,
                Some(30),
                Some(5),
                Some(20),
            )
        });
        // Batch 2: 4 older events: smaller min, smaller max, an older latest value.
        let d2 = everywhere(&layout, t, |b| {
            geo_row(
                b,
                "Italy",
                "Naples",
                t - 10,
                Some("v2"),
                4,
                Some(12),
                Some(2),
                Some(9),
            )
        });
        assert_eq!(
            commit(&store, "n1", &[batch("p", 1)], &layout, &d1).await,
            CommitOutcome::Committed
        );
        assert_eq!(
            commit(&store, "n1", &[batch("p", 2)], &layout, &d2).await,
            CommitOutcome::Committed
        );
        let expected = |b| {
            geo_row(
                b,
                "Italy",
                "Naples",
                t,
                Some("v1"),
                7,
                Some(42),
                Some(2),
                Some(20),
            )
        };
        for g in Granularity::ALL {
            let rows = all_rows(&store, &layout, g).await;
            assert_eq!(
                rows,
                vec![StoredRow {
                    shard_id: Some("n1".into()),
                    row: expected(g.bucket_start(t)),
                }],
                "{:?} {g}",
                db.backend
            );
        }

        // Batch 3 ties on the event time: the incoming latest value wins (AggRow::merge's rule).
        // Its measures are null: sums, min and max keep the stored values.
        let d3 = Delta {
            rows: vec![(
                Granularity::Hours,
                vec![geo_row(
                    hour,
                    "Italy",
                    "Naples",
                    t,
                    Some("v3"),
                    1,
                    None,
                    None,
                    None,
                )],
            )],
        };
        commit(&store, "n1", &[batch("p", 3)], &layout, &d3).await;
        // Batch 4 is newer, with a null latest value: the null replaces "v3".
        let d4 = Delta {
            rows: vec![(
                Granularity::Hours,
                vec![geo_row(
                    hour,
                    "Italy",
                    "Naples",
                    t + 5,
                    None,
                    2,
                    Some(-50),
                    Some(-7),
                    Some(100),
                )],
            )],
        };
        commit(&store, "n1", &[batch("p", 4)], &layout, &d4).await;
        let rows = all_rows(&store, &layout, Granularity::Hours).await;
        assert_eq!(
            rows[0].row,
            geo_row(
                hour,
                "Italy",
                "Naples",
                t + 5,
                None,
                10,
                Some(-8),
                Some(-7),
                Some(100)
            ),
            "{:?}",
            db.backend
        );
        // The same result as the engine's merge rule.
        let mut merged = expected(hour);
        merged.merge(&d3.rows[0].1[0], &layout).expect("in range");
        merged.merge(&d4.rows[0].1[0], &layout).expect("in range");
        assert_eq!(rows[0].row, merged);
        // Other granularities were not touched by batches 3 and 4.
        assert_eq!(
            all_rows(&store, &layout, Granularity::Days).await[0]
                .row
                .count,
            7
        );

        // A stored null measure takes the first value; a new key is a new row.
        let d5 = Delta {
            rows: vec![(
                Granularity::Minutes,
                vec![geo_row(
                    Granularity::Minutes.bucket_start(t),
                    "Italy",
                    "Rome",
                    t,
                    None,
                    1,
                    None,
                    None,
                    None,
                )],
            )],
        };
        let d6 = Delta {
            rows: vec![(
                Granularity::Minutes,
                vec![geo_row(
                    Granularity::Minutes.bucket_start(t),
                    "Italy",
                    "Rome",
                    t - 1,
                    Some("late"),
                    2,
                    Some(8),
                    Some(3),
                    Some(5),
                )],
            )],
        };
        commit(&store, "n1", &[batch("p", 5)], &layout, &d5).await;
        commit(&store, "n1", &[batch("p", 6)], &layout, &d6).await;
        let rows = all_rows(&store, &layout, Granularity::Minutes).await;
        assert_eq!(rows.len(), 2);
        let rome = rows
            .iter()
            .find(|r| r.row.keys[1] == Value::from("Rome"))
            .unwrap();
        assert_eq!(
            rome.row,
            geo_row(
                Granularity::Minutes.bucket_start(t),
                "Italy",
                "Rome",
                t,
                None,
                3,
                Some(8),
                Some(3),
                Some(5)
            )
        );
        store.close().await;
        db
    })
    .await;
}

/// A layout with every type in keys, latest values and measures.
fn typed() -> Layout {
    Layout {
        aggregation: "TypedAgg".into(),
        partitioned: false,
        event_time: false,
        granularities: vec![Granularity::Seconds, Granularity::Days],
        keys: vec![
            col("s", AttrType::String),
            col("i", AttrType::Int),
            col("l", AttrType::Long),
            col("b", AttrType::Bool),
        ],
        latest: vec![
            col("ls", AttrType::String),
            col("li", AttrType::Int),
            col("ll", AttrType::Long),
            col("lf", AttrType::Float),
            col("ld", AttrType::Double),
            col("lb", AttrType::Bool),
        ],
        measures: vec![
            measure("AGG_SUM_d", MeasureKind::Sum, AttrType::Double),
            measure("AGG_COUNT_d", MeasureKind::Sum, AttrType::Long),
            measure("AGG_MIN_i", MeasureKind::Min, AttrType::Int),
            measure("AGG_MAX_f", MeasureKind::Max, AttrType::Float),
            measure("AGG_MIN_d", MeasureKind::Min, AttrType::Double),
            measure("AGG_MAX_b", MeasureKind::Max, AttrType::Bool),
        ],
        outputs: vec![],
    }
}

#[tokio::test]
async fn every_type_round_trips() {
    on_every_backend(|db| async move {
        let layout = typed();
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let t = ms("2026-01-02T03:04:05Z");
        let row = |last, latest: Vec<Value>, count, measures: Vec<Value>, b: bool| AggRow {
            bucket: t,
            keys: vec![
                "k".into(),
                Value::Int(-7),
                Value::Long(i64::MIN + 1),
                Value::Bool(b),
            ]
            .into(),
            last_event_ts: last,
            latest,
            count,
            measures,
        };
        let first = row(
            t + 1,
            vec![
                "x".into(),
                Value::Int(i32::MAX),
                Value::Long(i64::MAX),
                Value::Float(f32::MAX),
                Value::Double(-f64::MAX),
                Value::Bool(true),
            ],
            2,
            vec![
                Value::Double(0.1),
                Value::Long(2),
                Value::Int(-3),
                Value::Float(0.5),
                Value::Double(f64::MIN_POSITIVE),
                Value::Bool(false),
            ],
            true,
        );
        let second = row(
            t + 2,
            vec![
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Bool(false),
            ],
            1,
            vec![
                Value::Double(0.2),
                Value::Long(1),
                Value::Int(i32::MIN),
                Value::Float(-1.5),
                Value::Null,
                Value::Bool(true),
            ],
            true,
        );
        let other_key = row(t, vec![Value::Null; 6], 1, vec![Value::Null; 6], false);
        for (seq, r) in [(1, &first), (2, &second), (3, &other_key)] {
            let d = Delta {
                rows: vec![(Granularity::Seconds, vec![r.clone()])],
            };
            commit(&store, "n1", &[batch("p", seq)], &layout, &d).await;
        }
        let rows = all_rows(&store, &layout, Granularity::Seconds).await;
        let mut expected = first.clone();
        expected.merge(&second, &layout).expect("in range");
        assert_eq!(
            expected.measures,
            vec![
                Value::Double(0.1 + 0.2),
                Value::Long(3),
                Value::Int(i32::MIN),
                Value::Float(0.5),
                Value::Double(f64::MIN_POSITIVE),
                Value::Bool(true)
            ]
        );
        assert_eq!(rows.len(), 2, "{:?}", db.backend);
        assert_eq!(rows[0].shard_id, None);
        let by_flag = |b: bool| {
            rows.iter()
                .find(|r| r.row.keys[3] == Value::Bool(b))
                .unwrap()
        };
        assert_eq!(by_flag(true).row, expected, "{:?}", db.backend);
        assert_eq!(by_flag(false).row, other_key, "{:?}", db.backend);
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn shards_are_stored_apart_and_fetched_together() {
    on_every_backend(|db| async move {
        let part = geo(true);
        let mut plain = geo(false);
        plain.aggregation = "PlainAgg".into();
        let store = db.store().await;
        schema(&store, &[part.clone(), plain.clone()]).await;
        let t = ms("2026-11-20T10:20:00Z");
        let naples = |count| {
            move |b| {
                geo_row(
                    b,
                    "Italy",
                    "Naples",
                    t,
                    Some("PizzaShackAPI"),
                    count,
                    Some(count),
                    Some(1),
                    Some(1),
                )
            }
        };
        let d1 = everywhere(&part, t, naples(30_000));
        let d2 = everywhere(&part, t, naples(40_000));
        let p1 = everywhere(&plain, t, naples(30_000));
        let p2 = everywhere(&plain, t, naples(40_000));
        // One commit can carry several aggregations.
        let out = store
            .commit(
                "wso2-am-analytics-1",
                &[batch("g", 1)],
                &[(&part, &d1), (&plain, &p1)],
            )
            .await
            .unwrap();
        assert_eq!(out, CommitOutcome::Committed);
        let out = store
            .commit(
                "wso2-am-analytics-2",
                &[batch("g", 2)],
                &[(&part, &d2), (&plain, &p2)],
            )
            .await
            .unwrap();
        assert_eq!(out, CommitOutcome::Committed);

        let hour = Granularity::Hours.bucket_start(t);
        let rows = all_rows(&store, &part, Granularity::Hours).await;
        assert_eq!(
            rows,
            vec![
                StoredRow {
                    shard_id: Some("wso2-am-analytics-1".into()),
                    row: naples(30_000)(hour)
                },
                StoredRow {
                    shard_id: Some("wso2-am-analytics-2".into()),
                    row: naples(40_000)(hour)
                },
            ],
            "{:?}",
            db.backend
        );
        let merged: i64 = rows.iter().map(|r| r.row.count).sum();
        assert_eq!(merged, 70_000);
        // Unpartitioned: one row, already merged.
        let rows = all_rows(&store, &plain, Granularity::Hours).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].shard_id, None);
        assert_eq!(rows[0].row.count, 70_000);
        assert_eq!(
            rows[0].row.measures,
            vec![Value::Long(70_000), Value::Long(1), Value::Long(1)]
        );

        // The fetch window is [start, end) on the bucket start.
        let next = Granularity::Hours.next_bucket(hour);
        assert_eq!(
            store
                .fetch(&part, Granularity::Hours, hour, next)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            store
                .fetch(&part, Granularity::Hours, hour + 1, next)
                .await
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            store
                .fetch(&part, Granularity::Hours, hour - 1, hour)
                .await
                .unwrap()
                .len(),
            0
        );
        // A granularity the layout does not keep.
        let mut few = part.clone();
        few.granularities = vec![Granularity::Seconds];
        assert!(matches!(
            store.fetch(&few, Granularity::Hours, 0, 1).await,
            Err(StoreError::GranularityNotKept { .. })
        ));
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn duplicate_batches_write_nothing() {
    on_every_backend(|db| async move {
        let layout = geo(true);
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let t = ms("2026-11-20T11:00:00Z");
        let d = everywhere(&layout, t, |b| {
            geo_row(b, "Italy", "Naples", t, None, 5, None, None, None)
        });
        let x = batch("gw-1", u64::MAX);
        let y = batch("gw-1", 7);
        let z = batch("gw-2", 7);
        assert_eq!(
            commit(&store, "n1", std::slice::from_ref(&x), &layout, &d).await,
            CommitOutcome::Committed
        );

        // The same id again, from the same shard and from another: nothing is written.
        assert_eq!(
            commit(&store, "n1", &[y.clone(), x.clone()], &layout, &d).await,
            CommitOutcome::Duplicates(vec![x.clone()])
        );
        assert_eq!(
            commit(&store, "n2", &[x.clone(), z.clone()], &layout, &d).await,
            CommitOutcome::Duplicates(vec![x.clone()])
        );
        for g in Granularity::ALL {
            let rows = all_rows(&store, &layout, g).await;
            assert_eq!(rows.len(), 1, "{:?} {g}", db.backend);
            assert_eq!(rows[0].row.count, 5);
        }
        // Without the duplicate, the rest commits.
        assert_eq!(
            commit(&store, "n2", &[y.clone(), z.clone()], &layout, &d).await,
            CommitOutcome::Committed
        );
        let rows = all_rows(&store, &layout, Granularity::Years).await;
        assert_eq!(rows.iter().map(|r| r.row.count).sum::<i64>(), 10);
        // Duplicates come back sorted by (publisher id, seq).
        assert_eq!(
            commit(
                &store,
                "n3",
                &[z.clone(), x.clone(), y.clone()],
                &layout,
                &Delta::default()
            )
            .await,
            CommitOutcome::Duplicates(vec![y.clone(), x.clone(), z.clone()])
        );

        // One id twice in one commit is the caller's bug.
        let err = store
            .commit(
                "n1",
                &[batch("gw-3", 1), batch("gw-3", 1)],
                &[(&layout, &d)],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::DuplicateBatchInCommit { seq: 1, .. }),
            "{err:?}"
        );
        assert!(!err.is_retriable());
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn concurrent_commits_of_one_batch_count_once() {
    on_every_backend(|db| async move {
        let layout = geo(true);
        let a = db.store().await;
        let b = db.store().await;
        schema(&a, std::slice::from_ref(&layout)).await;
        let t = ms("2026-11-20T12:00:00Z");
        let d = everywhere(&layout, t, |bk| {
            geo_row(bk, "Italy", "Naples", t, None, 3, None, None, None)
        });
        const ROUNDS: u64 = 8;
        for seq in 0..ROUNDS {
            let id = batch("gw", seq);
            // Two workers got the same batch (a re-send after a lost ack) and commit at once.
            let (ra, rb) = tokio::join!(
                commit_retrying(&a, "node-a", &id, &layout, &d),
                commit_retrying(&b, "node-b", &id, &layout, &d)
            );
            let mut outcomes = [ra, rb];
            outcomes.sort_by_key(|o| matches!(o, CommitOutcome::Duplicates(_)));
            assert_eq!(
                outcomes,
                [
                    CommitOutcome::Committed,
                    CommitOutcome::Duplicates(vec![id.clone()])
                ],
                "{:?} round {seq}",
                db.backend
            );
        }
        for g in Granularity::ALL {
            let total: i64 = all_rows(&a, &layout, g)
                .await
                .iter()
                .map(|r| r.row.count)
                .sum();
            assert_eq!(
                total,
                3 * i64::try_from(ROUNDS).unwrap(),
                "{:?} {g}",
                db.backend
            );
        }
        a.close().await;
        b.close().await;
        db
    })
    .await;
}

/// Commits as a worker does: a retriable error (deadlock victim, busy) is retried.
async fn commit_retrying(
    store: &Store,
    shard: &str,
    id: &BatchId,
    layout: &Layout,
    delta: &Delta,
) -> CommitOutcome {
    let mut attempts = 0;
    loop {
        match store
            .commit(shard, std::slice::from_ref(id), &[(layout, delta)])
            .await
        {
            Ok(outcome) => return outcome,
            Err(e) if e.is_retriable() && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("commit on {}: {e:?}", store.backend()),
        }
    }
}

#[tokio::test]
async fn missing_shard_id_is_refused_then_migrated_without_losing_rows() {
    on_every_backend(|db| async move {
        let before = geo(false);
        let after = geo(true);
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&before)).await;
        let t = ms("2026-11-20T10:00:00Z");
        let d = Delta {
            rows: before
                .granularities
                .iter()
                .map(|&g| {
                    let b = g.bucket_start(t);
                    (
                        g,
                        vec![
                            geo_row(
                                b,
                                "Italy",
                                "Naples",
                                t,
                                Some("a"),
                                3,
                                Some(9),
                                Some(1),
                                Some(5),
                            ),
                            geo_row(b, "Italy", "Rome", t, None, 2, None, None, None),
                        ],
                    )
                })
                .collect(),
        };
        commit(&store, "ignored", &[batch("p", 1)], &before, &d).await;

        // Partitioning is switched on: refused, naming both remedies.
        let err = store
            .ensure_schema(std::slice::from_ref(&after))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::MissingShardId { table } if table == "GeoAgg_SECONDS"),
            "{:?}: {err:?}",
            db.backend
        );
        let msg = err.to_string();
        assert!(msg.contains("drop the aggregation's tables"), "{msg}");
        assert!(
            msg.contains("shardtally-worker migrate --add-shard-id"),
            "{msg}"
        );
        assert!(!err.is_retriable());

        let migrated = store
            .add_shard_id(std::slice::from_ref(&after), "node-1")
            .await
            .unwrap();
        assert_eq!(
            migrated,
            Granularity::ALL
                .iter()
                .map(|g| g.table_name("GeoAgg"))
                .collect::<Vec<_>>()
        );
        schema(&store, std::slice::from_ref(&after)).await;
        // Already migrated: nothing to do.
        assert_eq!(
            store
                .add_shard_id(std::slice::from_ref(&after), "node-1")
                .await
                .unwrap(),
            Vec::<String>::new()
        );

        for (g, rows) in &d.rows {
            let expected: Vec<StoredRow> = rows
                .iter()
                .map(|r| StoredRow {
                    shard_id: Some("node-1".into()),
                    row: r.clone(),
                })
                .collect();
            assert_eq!(
                all_rows(&store, &after, *g).await,
                expected,
                "{:?} {g}",
                db.backend
            );
        }
        // The new key takes a second shard's rows apart from the first's.
        let d2 = everywhere(&after, t, |b| {
            geo_row(
                b,
                "Italy",
                "Naples",
                t,
                Some("b"),
                4,
                Some(1),
                Some(0),
                Some(9),
            )
        });
        commit(&store, "node-2", &[batch("p", 2)], &after, &d2).await;
        let rows = all_rows(&store, &after, Granularity::Days).await;
        assert_eq!(rows.len(), 3);
        let naples: Vec<(Option<String>, i64)> = rows
            .iter()
            .filter(|r| r.row.keys[1] == Value::from("Naples"))
            .map(|r| (r.shard_id.clone(), r.row.count))
            .collect();
        assert_eq!(
            naples,
            vec![(Some("node-1".into()), 3), (Some("node-2".into()), 4)]
        );

        // A table with the shard column but partitioning turned off is a mismatch.
        let err = store
            .ensure_schema(std::slice::from_ref(&before))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::SchemaMismatch { .. }), "{err:?}");
        // So is an aggregation whose select changed.
        let mut changed = after.clone();
        changed.latest[0].name = "apiVersion".into();
        let err = store.ensure_schema(&[changed]).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("missing columns apiVersion")
                && msg.contains("unexpected columns apiName"),
            "{msg}"
        );
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn a_node_cannot_change_its_shard() {
    on_every_backend(|db| async move {
        let store = db.store().await;
        schema(&store, &[]).await;
        store
            .register_node("wso2-am-analytics-1", "shard-a", false)
            .await
            .unwrap();
        store
            .register_node("wso2-am-analytics-1", "shard-a", false)
            .await
            .unwrap();
        store
            .register_node("wso2-am-analytics-2", "shard-b", false)
            .await
            .unwrap();
        let err = store
            .register_node("wso2-am-analytics-1", "shard-b", false)
            .await
            .unwrap_err();
        match &err {
            StoreError::ShardChanged {
                node_id,
                recorded,
                requested,
            } => {
                assert_eq!(
                    (node_id.as_str(), recorded.as_str(), requested.as_str()),
                    ("wso2-am-analytics-1", "shard-a", "shard-b")
                );
            }
            other => panic!("{:?}: {other:?}", db.backend),
        }
        assert!(!err.is_retriable());
        // The explicit override records the new shard; from then on it is the one.
        store
            .register_node("wso2-am-analytics-1", "shard-b", true)
            .await
            .unwrap();
        store
            .register_node("wso2-am-analytics-1", "shard-b", false)
            .await
            .unwrap();
        assert!(matches!(
            store.register_node("wso2-am-analytics-1", "shard-a", false).await,
            Err(StoreError::ShardChanged { recorded, .. }) if recorded == "shard-b"
        ));
        // Shard ids are at most 20 characters.
        assert!(matches!(
            store
                .register_node("n", "wso2-am-analytics-123", false)
                .await,
            Err(StoreError::InvalidId {
                what: "shard id",
                ..
            })
        ));
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn leases_keep_one_live_worker_per_shard() {
    on_every_backend(|db| async move {
        let store = db.store().await;
        schema(&store, &[]).await;
        let long = Duration::from_secs(3600);
        let held_by = |outcome: &LeaseOutcome| match outcome {
            LeaseOutcome::HeldByOtherNode {
                node_id,
                expires_in,
            } => {
                assert!(
                    *expires_in > Duration::ZERO && *expires_in <= long,
                    "{expires_in:?}"
                );
                Some(node_id.clone())
            }
            _ => None,
        };

        assert_eq!(
            store.acquire_lease("s1", "n1", "i1", long).await.unwrap(),
            LeaseOutcome::Acquired
        );
        // The same instance may re-acquire.
        assert_eq!(
            store.acquire_lease("s1", "n1", "i1", long).await.unwrap(),
            LeaseOutcome::Acquired
        );
        // The same node restarted (a new instance) waits for the old lease.
        match store.acquire_lease("s1", "n1", "i2", long).await.unwrap() {
            LeaseOutcome::HeldBySameNode { expires_in } => {
                assert!(
                    expires_in > Duration::ZERO && expires_in <= long,
                    "{expires_in:?}"
                );
            }
            other => panic!("{:?}: {other:?}", db.backend),
        }
        // Another node is refused.
        let out = store.acquire_lease("s1", "n2", "i3", long).await.unwrap();
        assert_eq!(held_by(&out).as_deref(), Some("n1"), "{out:?}");

        assert!(store.renew_lease("s1", "i1", long).await.unwrap());
        assert!(!store.renew_lease("s1", "i2", long).await.unwrap());
        // Releasing someone else's lease does nothing.
        store.release_lease("s1", "i3").await.unwrap();
        assert_eq!(
            held_by(&store.acquire_lease("s1", "n2", "i3", long).await.unwrap()).as_deref(),
            Some("n1")
        );
        // A graceful stop frees it at once.
        store.release_lease("s1", "i1").await.unwrap();
        assert_eq!(
            store.acquire_lease("s1", "n2", "i3", long).await.unwrap(),
            LeaseOutcome::Acquired
        );
        assert!(!store.renew_lease("s1", "i1", long).await.unwrap());
        assert!(store.renew_lease("s1", "i3", long).await.unwrap());

        // An expired lease (a crashed worker stops renewing) is taken over.
        assert_eq!(
            store
                .acquire_lease("s2", "n1", "i1", Duration::ZERO)
                .await
                .unwrap(),
            LeaseOutcome::Acquired
        );
        assert_eq!(
            store.acquire_lease("s2", "n2", "i3", long).await.unwrap(),
            LeaseOutcome::Acquired
        );
        assert!(!store.renew_lease("s2", "i1", long).await.unwrap());
        assert_eq!(
            held_by(&store.acquire_lease("s2", "n1", "i4", long).await.unwrap()).as_deref(),
            Some("n2")
        );
        // The same node's expired lease, too.
        assert_eq!(
            store
                .acquire_lease("s3", "n1", "i1", Duration::ZERO)
                .await
                .unwrap(),
            LeaseOutcome::Acquired
        );
        assert_eq!(
            store.acquire_lease("s3", "n1", "i2", long).await.unwrap(),
            LeaseOutcome::Acquired
        );
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn purges_remove_old_buckets_and_old_batch_ids() {
    on_every_backend(|db| async move {
        let layout = geo(true);
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let t0 = ms("2026-11-20T10:00:00Z");
        for (i, seq) in (0..3).zip(1u64..) {
            let t = t0 + i * 1_000;
            let d = everywhere(&layout, t, |b| {
                geo_row(b, "Italy", "Naples", t, None, 1, None, None, None)
            });
            commit(&store, "n1", &[batch("p", seq)], &layout, &d).await;
        }
        assert_eq!(
            all_rows(&store, &layout, Granularity::Seconds).await.len(),
            3
        );
        assert_eq!(
            store
                .purge(&layout, Granularity::Seconds, t0 + 2_000)
                .await
                .unwrap(),
            2
        );
        let rows = all_rows(&store, &layout, Granularity::Seconds).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].row.bucket, t0 + 2_000);
        assert_eq!(
            store
                .purge(&layout, Granularity::Seconds, t0 + 2_000)
                .await
                .unwrap(),
            0
        );
        // Other granularities are untouched.
        assert_eq!(
            all_rows(&store, &layout, Granularity::Minutes).await[0]
                .row
                .count,
            3
        );

        assert_eq!(store.purge_dedup(0).await.unwrap(), 0);
        assert_eq!(store.purge_dedup(i64::MAX).await.unwrap(), 3);
        // Once its id is purged, a batch counts again: the dedup window matters.
        let d = everywhere(&layout, t0, |b| {
            geo_row(b, "Italy", "Naples", t0, None, 1, None, None, None)
        });
        assert_eq!(
            commit(&store, "n1", &[batch("p", 1)], &layout, &d).await,
            CommitOutcome::Committed
        );
        assert_eq!(
            all_rows(&store, &layout, Granularity::Minutes).await[0]
                .row
                .count,
            4
        );
        store.close().await;
        db
    })
    .await;
}

/// Strings users send: quotes, SQL, backslashes, unicode, emoji, case and trailing spaces; and
/// what PostgreSQL's `COPY` text format (and array literals) read specially.
const NASTY: [&str; 22] = [
    "O'Brien",
    "\"quoted\"",
    "'; DROP TABLE shardtally_batches; --",
    "Robert'); DELETE FROM GeoAgg_HOURS WHERE ('1'='1",
    "back\\slash\\\\",
    "\\'",
    "%_*?",
    "Napoli naïve 日本語 Ελληνικά",
    "🍕👨\u{200d}👩\u{200d}👧\u{200d}👦",
    "Naples",
    "naples",
    "Naples ",
    "",
    "tab\there\nnewline",
    "{\"a\",NULL}",
    "a,b",
    "NULL",
    " padded ",
    "\\N",
    "\\.",
    "carriage\rreturn\r\n",
    "\\t\t\\n",
];

#[tokio::test]
async fn strings_round_trip_verbatim() {
    on_every_backend(|db| async move {
        let layout = geo(true);
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let t = ms("2026-11-20T10:00:00Z");
        let hour = Granularity::Hours.bucket_start(t);
        let pizza_254 = "🍕".repeat(254);
        let mut rows: Vec<AggRow> = NASTY
            .iter()
            .map(|s| geo_row(hour, s, s, t, Some(s), 1, None, None, None))
            .collect();
        rows.push(geo_row(
            hour,
            &pizza_254,
            "x",
            t,
            Some(&pizza_254),
            1,
            None,
            None,
            None,
        ));
        let d = Delta {
            rows: vec![(Granularity::Hours, rows.clone())],
        };
        let weird = batch("gw-'\"\\🍕", 1);
        assert_eq!(
            commit(&store, "n1'🍕", std::slice::from_ref(&weird), &layout, &d).await,
            CommitOutcome::Committed
        );
        assert_eq!(
            commit(&store, "n1'🍕", std::slice::from_ref(&weird), &layout, &d).await,
            CommitOutcome::Duplicates(vec![weird.clone()])
        );
        // The rows were new: inserted (PostgreSQL: copied in). Again, under another batch,
        // they exist: upserted (PostgreSQL: bound as arrays).
        let again = batch("gw-'\"\\🍕", 2);
        assert_eq!(
            commit(&store, "n1'🍕", std::slice::from_ref(&again), &layout, &d).await,
            CommitOutcome::Committed
        );
        let n = rows.len() as u64;
        let expected = WriteCounts {
            rows_inserted: n,
            rows_upserted: n,
            flushes_rewritten: 0,
        };
        assert_eq!(store.write_counts(), expected, "{:?}", db.backend);
        let mut got: Vec<AggRow> = all_rows(&store, &layout, Granularity::Hours)
            .await
            .into_iter()
            .map(|r| {
                assert_eq!(r.shard_id.as_deref(), Some("n1'🍕"));
                r.row
            })
            .collect();
        let key = |r: &AggRow| format!("{:?}", r.keys);
        got.sort_by_key(key);
        for r in &mut rows {
            r.count = 2;
        }
        rows.sort_by_key(key);
        assert_eq!(got, rows, "{:?}", db.backend);
        // The meta tables survived the SQL in the strings.
        store.purge_dedup(0).await.unwrap();
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn values_a_column_cannot_hold_are_refused_before_writing() {
    on_every_backend(|db| async move {
        let layout = geo(true);
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let t = ms("2026-11-20T10:00:00Z");
        let h = Granularity::Hours.bucket_start(t);
        // A valid row of another key in the same delta.
        let good = geo_row(h, "Italy", "Rome", t, None, 1, None, None, None);
        let too_long = "x".repeat(255);
        let cases: Vec<(AggRow, ValueError)> = vec![
            (
                geo_row(
                    h,
                    "Italy",
                    "Naples",
                    t,
                    Some(&too_long),
                    1,
                    None,
                    None,
                    None,
                ),
                ValueError::TooLong {
                    max_chars: 254,
                    chars: 255,
                },
            ),
            (
                geo_row(h, &"é".repeat(255), "Naples", t, None, 1, None, None, None),
                ValueError::TooLong {
                    max_chars: 254,
                    chars: 255,
                },
            ),
            (
                geo_row(h, "Italy", "Nap\0les", t, None, 1, None, None, None),
                ValueError::ContainsNul,
            ),
            (
                AggRow {
                    keys: vec![Value::Null, "Naples".into()].into(),
                    ..good.clone()
                },
                ValueError::NullKey,
            ),
            (
                AggRow {
                    keys: vec!["Italy".into(), "Naples".into()].into(),
                    measures: vec![Value::Double(1.0), Value::Null, Value::Null],
                    ..good.clone()
                },
                ValueError::TypeMismatch {
                    expected: AttrType::Long,
                    got: AttrType::Double,
                },
            ),
        ];
        for (seq, (bad, expected)) in (1u64..).zip(cases) {
            let d = Delta {
                rows: vec![(Granularity::Hours, vec![good.clone(), bad])],
            };
            let err = store
                .commit("n1", &[batch("p", seq)], &[(&layout, &d)])
                .await
                .unwrap_err();
            match &err {
                StoreError::InvalidValue { table, source, .. } => {
                    assert_eq!(table, "GeoAgg_HOURS");
                    assert_eq!(source, &expected, "{:?}", db.backend);
                }
                other => panic!("{:?}: {other:?}", db.backend),
            }
            assert!(!err.is_retriable());
        }
        // Nothing was written, not even the batch ids.
        assert!(
            all_rows(&store, &layout, Granularity::Hours)
                .await
                .is_empty()
        );
        assert_eq!(store.purge_dedup(i64::MAX).await.unwrap(), 0);
        // A 21-character shard id and an over-long publisher id are refused too.
        let d = Delta {
            rows: vec![(Granularity::Hours, vec![good.clone()])],
        };
        assert!(matches!(
            store
                .commit("wso2-am-analytics-123", &[], &[(&layout, &d)])
                .await,
            Err(StoreError::InvalidId {
                what: "shard id",
                ..
            })
        ));
        assert!(matches!(
            store
                .commit("n1", &[batch(&"p".repeat(129), 1)], &[(&layout, &d)])
                .await,
            Err(StoreError::InvalidId {
                what: "publisher id",
                ..
            })
        ));
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn many_rows_are_chunked_under_parameter_limits() {
    on_every_backend(|db| async move {
        let layout = geo(true);
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let t = ms("2026-11-20T10:00:00Z");
        let h = Granularity::Hours.bucket_start(t);
        // Many more rows than one multi-row statement takes on any backend (500; on PostgreSQL
        // 5,000 per array statement).
        let rows: Vec<AggRow> = (0..6_001)
            .map(|i| {
                geo_row(
                    h,
                    "Italy",
                    &format!("city-{i}"),
                    t,
                    None,
                    i,
                    Some(i),
                    Some(i),
                    Some(i),
                )
            })
            .collect();
        let batches: Vec<BatchId> = (0..12_000).map(|s| batch("gw", s)).collect();
        let d = Delta {
            rows: vec![(Granularity::Hours, rows)],
        };
        assert_eq!(
            commit(&store, "n1", &batches, &layout, &d).await,
            CommitOutcome::Committed
        );
        let got = all_rows(&store, &layout, Granularity::Hours).await;
        assert_eq!(got.len(), 6_001);
        assert_eq!(
            got.iter().map(|r| r.row.count).sum::<i64>(),
            6_000 * 6_001 / 2
        );
        // Every one of the 12,000 ids is now a duplicate.
        let again = store.commit("n1", &batches[11_990..], &[]).await.unwrap();
        assert_eq!(again, CommitOutcome::Duplicates(batches[11_990..].to_vec()));
        assert_eq!(store.purge_dedup(i64::MAX).await.unwrap(), 12_000);
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn errors_are_classified() {
    // Nothing listening: a connection error, retriable (the database may come back).
    let quick = StoreOptions {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(300),
        ..StoreOptions::default()
    };
    for url in [
        "postgres://postgres@127.0.0.1:1/x",
        "mysql://root@127.0.0.1:1/x",
    ] {
        let err = Store::connect_with(url, &quick).await.unwrap_err();
        assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
        assert!(err.is_retriable(), "{url}: {err:?}");
    }
    // A file that cannot be created: configuration, not retriable.
    let err = Store::connect_with("sqlite:///nonexistent-shardtally-dir/sub/x.db", &quick)
        .await
        .unwrap_err();
    assert!(!err.is_retriable(), "{err:?}");
    assert!(matches!(
        Store::connect("jdbc:mysql://h/db", 1).await,
        Err(StoreError::UnsupportedUrl { .. })
    ));

    on_every_backend(|db| async move {
        let store = db.store().await;
        // No schema yet: the table is missing, which retrying cannot fix.
        let err = store
            .fetch(&geo(true), Granularity::Hours, 0, 1)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Database { .. }), "{err:?}");
        assert!(!err.is_retriable(), "{:?}: {err:?}", db.backend);
        store.ping().await.unwrap();
        // A closed pool is not retriable either: the worker is shutting down.
        store.close().await;
        let err = store.ping().await.unwrap_err();
        assert!(!err.is_retriable(), "{err:?}");
        db
    })
    .await;
}

#[tokio::test]
async fn sqlite_files_are_shared_by_several_stores() {
    // Worker processes share one SQLite file; separate pools stand in for them here.
    let db = TestDb::fresh(Backend::Sqlite).await;
    let layout = geo(true);
    let stores = [db.store().await, db.store().await, db.store().await];
    schema(&stores[0], std::slice::from_ref(&layout)).await;
    let t = ms("2026-11-20T10:00:00Z");
    let d = everywhere(&layout, t, |b| {
        geo_row(b, "Italy", "Naples", t, None, 1, None, None, None)
    });
    let commits = (0..30u64).map(|seq| {
        let store = &stores[usize::try_from(seq % 3).unwrap()];
        let id = batch("gw", seq);
        let (layout, d) = (&layout, &d);
        async move { commit_retrying(store, "n1", &id, layout, d).await }
    });
    let outcomes = futures_util::future::join_all(commits).await;
    assert!(outcomes.iter().all(|o| *o == CommitOutcome::Committed));
    assert_eq!(
        all_rows(&stores[1], &layout, Granularity::Days).await[0]
            .row
            .count,
        30
    );
    for s in &stores {
        s.close().await;
    }
    db.cleanup().await;
}

#[tokio::test]
async fn a_busy_sqlite_file_is_retriable() {
    use sqlx::Connection;
    let db = TestDb::fresh(Backend::Sqlite).await;
    let layout = geo(true);
    let impatient = StoreOptions {
        sqlite_busy_timeout: Duration::ZERO,
        ..StoreOptions::default()
    };
    let store = Store::connect_with(&db.url, &impatient).await.unwrap();
    schema(&store, std::slice::from_ref(&layout)).await;
    // Another process holds the write lock.
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let t = ms("2026-11-20T10:00:00Z");
    let d = everywhere(&layout, t, |b| {
        geo_row(b, "Italy", "Naples", t, None, 1, None, None, None)
    });
    let err = store
        .commit("n1", &[batch("p", 1)], &[(&layout, &d)])
        .await
        .unwrap_err();
    assert!(err.is_retriable(), "{err:?}");
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    // Once the lock is gone, the same commit goes through.
    assert_eq!(
        commit(&store, "n1", &[batch("p", 1)], &layout, &d).await,
        CommitOutcome::Committed
    );
    other.close().await.unwrap();
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn wide_keys_fit_the_key_limit_on_every_backend() {
    on_every_backend(|db| async move {
        // Six string keys and a double: each string key gets (2680 - 132 - 20 - 6 × 12) / 24 = 102.
        let mut layout = geo(false);
        layout.aggregation = "WideAgg".into();
        layout.keys = (0..6)
            .map(|i| col(&format!("k{i}"), AttrType::String))
            .collect();
        layout.keys.push(col("x", AttrType::Double));
        let n = shardtally_worker::store::key_string_chars(&layout);
        assert_eq!(n, 102);
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let t = ms("2026-11-20T10:00:00Z");
        let longest = "🍕".repeat(n);
        let mut keys: Vec<Value> = (0..6).map(|_| Value::from(longest.as_str())).collect();
        keys.push(Value::Double(0.5));
        let row = AggRow {
            bucket: Granularity::Seconds.bucket_start(t),
            keys: keys.clone().into(),
            last_event_ts: t,
            latest: vec![Value::Null],
            count: 1,
            measures: vec![Value::Null; 3],
        };
        let d = Delta {
            rows: vec![(Granularity::Seconds, vec![row.clone()])],
        };
        commit(&store, "n1", &[batch("p", 1)], &layout, &d).await;

        // One character more is refused before reaching the database.
        let mut too_wide = row.clone();
        keys[5] = Value::from(format!("{longest}!"));
        too_wide.keys = keys.into();
        let d2 = Delta {
            rows: vec![(Granularity::Seconds, vec![too_wide])],
        };
        match store
            .commit("n1", &[batch("p", 2)], &[(&layout, &d2)])
            .await
        {
            Err(StoreError::InvalidValue { column, source, .. }) => {
                assert_eq!(column, "k5");
                assert_eq!(
                    source,
                    ValueError::TooLong {
                        max_chars: 102,
                        chars: 103
                    }
                );
            }
            other => panic!("{:?}: {other:?}", db.backend),
        }

        // SHARD_ID still fits in the key after the migration.
        let mut partitioned = layout.clone();
        partitioned.partitioned = true;
        let migrated = store
            .add_shard_id(std::slice::from_ref(&partitioned), "n1")
            .await;
        assert_eq!(migrated.unwrap().len(), 6, "{:?}", db.backend);
        schema(&store, std::slice::from_ref(&partitioned)).await;
        let rows = all_rows(&store, &partitioned, Granularity::Seconds).await;
        assert_eq!(
            rows,
            vec![StoredRow {
                shard_id: Some("n1".into()),
                row
            }]
        );
        store.close().await;
        db
    })
    .await;
}

#[tokio::test]
async fn in_memory_sqlite_keeps_one_database() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Store>();

    // However many connections are asked for, `:memory:` must stay one database.
    let store = Store::connect("sqlite::memory:", 8).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    let layout = geo(true);
    schema(&store, std::slice::from_ref(&layout)).await;
    let t = ms("2026-11-20T10:00:00Z");
    let d = everywhere(&layout, t, |b| {
        geo_row(b, "Italy", "Naples", t, None, 2, None, None, None)
    });
    let clones = [store.clone(), store.clone(), store.clone()];
    let commits = clones.iter().zip(1u64..).map(|(s, seq)| {
        let (layout, d) = (&layout, &d);
        async move { commit_retrying(s, "n1", &batch("p", seq), layout, d).await }
    });
    let outcomes = futures_util::future::join_all(commits).await;
    assert!(outcomes.iter().all(|o| *o == CommitOutcome::Committed));
    assert_eq!(
        all_rows(&store, &layout, Granularity::Hours).await[0]
            .row
            .count,
        6
    );
    store.close().await;
}

/// Rows above a shard's newest bucket are written with plain INSERTs. Another writer with the
/// same shard id (here a second store; in life a worker that lost its lease without noticing)
/// can make that belief wrong: the flush is then written again with upserts, adding exactly,
/// and later commits go on adding.
#[tokio::test]
async fn rows_another_writer_of_the_shard_wrote_are_added_to() {
    on_every_backend(|db| async move {
        let layout = geo(true);
        let a = db.store().await;
        let b = db.store().await;
        schema(&a, std::slice::from_ref(&layout)).await;
        let t0 = ms("2026-11-20T10:00:00Z");
        // The next year: above t0's bucket at every granularity.
        let t1 = ms("2027-03-04T05:06:07Z");
        let row = |count: i64| {
            move |bucket| {
                geo_row(
                    bucket,
                    "Italy",
                    "Naples",
                    bucket,
                    None,
                    count,
                    Some(count),
                    Some(count),
                    Some(count),
                )
            }
        };
        // `a` learns the shard's newest buckets (t0's); `b` then writes t1's, which `a` takes
        // for new rows.
        let steps = [
            (&a, t0, 1, 1),
            (&b, t1, 2, 2),
            (&a, t1, 3, 3),
            (&a, t1, 4, 4),
        ];
        for (store, ts, count, seq) in steps {
            let delta = everywhere(&layout, ts, row(count));
            assert_eq!(
                commit(store, "n1", &[batch("gw", seq)], &layout, &delta).await,
                CommitOutcome::Committed
            );
        }
        for g in Granularity::ALL {
            let rows = all_rows(&a, &layout, g).await;
            let counts: Vec<(i64, i64)> =
                rows.iter().map(|r| (r.row.bucket, r.row.count)).collect();
            assert_eq!(
                counts,
                vec![(g.bucket_start(t0), 1), (g.bucket_start(t1), 9)],
                "{g:?} on {:?}",
                db.backend
            );
            assert_eq!(rows[1].row.measures[0], Value::Long(9));
            assert_eq!(rows[1].row.measures[1], Value::Long(2));
            assert_eq!(rows[1].row.measures[2], Value::Long(4));
        }
        // `a`: t0's rows new (inserted); t1's believed new, found written by `b`, so that flush
        // was rewritten with upserts; the next t1 flush knew better.
        let expected_a = WriteCounts {
            rows_inserted: 6,
            rows_upserted: 12,
            flushes_rewritten: 1,
        };
        assert_eq!(a.write_counts(), expected_a, "{:?}", db.backend);
        let expected_b = WriteCounts {
            rows_inserted: 6,
            rows_upserted: 0,
            flushes_rewritten: 0,
        };
        assert_eq!(b.write_counts(), expected_b, "{:?}", db.backend);
        a.close().await;
        b.close().await;
        db
    })
    .await;
}

/// Finding a shard's newest bucket fails when the database cannot answer (here: the table is
/// missing for a moment); that is not remembered, so once the database answers again rows in new
/// buckets go back to plain INSERTs — and the failed flush counted nothing.
#[tokio::test]
async fn a_failed_newest_bucket_lookup_is_asked_again_at_the_next_commit() {
    use sqlx::Connection;
    on_every_backend(|db| async move {
        let mut layout = geo(true);
        layout.granularities = vec![Granularity::Seconds];
        let store = db.store().await;
        schema(&store, std::slice::from_ref(&layout)).await;
        let q = |name: &str| match db.backend {
            Backend::MySql => format!("`{name}`"),
            _ => format!("\"{name}\""),
        };
        let table = q(&layout.table(Granularity::Seconds));
        let away = q("GeoAgg_away");
        let mut admin = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        let t0 = ms("2026-11-20T10:00:00Z");
        let delta = everywhere(&layout, t0, |b| {
            geo_row(b, "Italy", "Naples", b, None, 1, Some(1), Some(1), Some(1))
        });

        sqlx::raw_sql(&format!("ALTER TABLE {table} RENAME TO {away}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let failed = store
            .commit("n1", &[batch("gw", 1)], &[(&layout, &delta)])
            .await;
        assert!(failed.is_err(), "{:?}: {failed:?}", db.backend);
        sqlx::raw_sql(&format!("ALTER TABLE {away} RENAME TO {table}"))
            .execute(&mut admin)
            .await
            .unwrap();

        assert_eq!(
            commit(&store, "n1", &[batch("gw", 2)], &layout, &delta).await,
            CommitOutcome::Committed
        );
        let expected = WriteCounts {
            rows_inserted: 1,
            rows_upserted: 0,
            flushes_rewritten: 0,
        };
        assert_eq!(store.write_counts(), expected, "{:?}", db.backend);
        let rows = all_rows(&store, &layout, Granularity::Seconds).await;
        let counts: Vec<(i64, i64)> = rows.iter().map(|r| (r.row.bucket, r.row.count)).collect();
        assert_eq!(counts, vec![(t0, 1)], "{:?}", db.backend);
        admin.close().await.ok();
        store.close().await;
        db
    })
    .await;
}

/// PostgreSQL aggregation tables coarser than SECONDS leave half of each page free (rewritten
/// rows stay on their page: HOT updates), and key strings compare bytewise (`COLLATE "C"`);
/// rows rewritten on every commit still add exactly, and keys that only a locale would order
/// differently stay apart.
#[tokio::test]
async fn postgres_tables_leave_room_for_rewrites_and_compare_keys_bytewise() {
    use sqlx::Connection;
    if !crate::common::backends().contains(&Backend::Postgres) {
        return;
    }
    let db = TestDb::fresh(Backend::Postgres).await;
    let layout = geo(true);
    let store = db.store().await;
    schema(&store, std::slice::from_ref(&layout)).await;

    let mut admin = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    for g in Granularity::ALL {
        let table = layout.table(g);
        let options: Option<String> = sqlx::query_scalar(
            "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = $1",
        )
        .bind(&table)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        let want = (g != Granularity::Seconds).then_some("fillfactor=50");
        assert_eq!(options.as_deref(), want, "{table}");
        let collations: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, COALESCE(collation_name::text, '-') FROM \
             information_schema.columns WHERE table_name = $1 AND data_type = 'character varying' \
             ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        let expected = [
            ("SHARD_ID", "C"),
            ("country", "C"),
            ("city", "C"),
            ("apiName", "-"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(c, k)| ((*c).to_owned(), (*k).to_owned()))
            .collect();
        assert_eq!(collations, expected, "{table}");
    }

    // 60 commits each add 1 to the same rows of every granularity, as live traffic does.
    let t = ms("2026-11-20T10:15:00Z");
    let cities = ["Naples", "naples", "Ñapoles", "Zürich", "zurich"];
    for seq in 1..=60u64 {
        let delta = Delta {
            rows: layout
                .granularities
                .iter()
                .map(|&g| {
                    let rows = cities
                        .iter()
                        .map(|c| {
                            let b = g.bucket_start(t);
                            geo_row(b, "IT", c, t, Some("api"), 1, Some(5), Some(5), Some(5))
                        })
                        .collect();
                    (g, rows)
                })
                .collect(),
        };
        commit(&store, "n1", &[batch("p", seq)], &layout, &delta).await;
    }
    for g in Granularity::ALL {
        let rows = all_rows(&store, &layout, g).await;
        let mut got: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|r| {
                let Value::String(city) = &r.row.keys[1] else {
                    panic!("{:?}", r.row.keys)
                };
                let Value::Long(sum) = &r.row.measures[0] else {
                    panic!("{:?}", r.row.measures)
                };
                (city.to_string(), r.row.count, *sum)
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, i64, i64)> =
            cities.iter().map(|c| ((*c).to_owned(), 60, 300)).collect();
        want.sort();
        assert_eq!(got, want, "{g}");
    }
    admin.close().await.ok();
    store.close().await;
    db.cleanup().await;
}
