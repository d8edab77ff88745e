use shardtally_publisher::protocol::{AttrType, Attribute, StreamSchema, Value};

use super::*;
use crate::scenario::Scenario;

fn schema() -> StreamSchema {
    StreamSchema::new(
        "s",
        vec![
            Attribute::new("name", AttrType::String),
            Attribute::new("n", AttrType::Int),
            Attribute::new("ts", AttrType::Long),
            Attribute::new("price", AttrType::Float),
            Attribute::new("amount", AttrType::Double),
            Attribute::new("ok", AttrType::Bool),
        ],
    )
}

/// A scenario with one phase of `events` events and these field lines (indented 6).
fn scenario(events: u64, fields: &str) -> Scenario {
    let text = format!(
        "name: t
cluster: {{ workers: [{{ node_id: n1 }}] }}
phases:
  - name: p
    stream: s
    events: {events}
    fields:
{fields}"
    );
    Scenario::parse(&text, "t.yaml", "/").unwrap_or_else(|e| panic!("{e}"))
}

fn compile(events: u64, fields: &str) -> PhaseGenerator {
    let s = scenario(events, fields);
    PhaseGenerator::compile(&s, &s.phases[0], &schema()).unwrap_or_else(|e| panic!("{e}"))
}

fn compile_error(fields: &str) -> String {
    let s = scenario(10, fields);
    match PhaseGenerator::compile(&s, &s.phases[0], &schema()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn all(g: &PhaseGenerator, seed: u64) -> Vec<Vec<Value>> {
    let mut c = g.cursor(0..g.events(), seed, 0);
    std::iter::from_fn(|| c.next_owned()).collect()
}

fn column(rows: &[Vec<Value>], i: usize) -> Vec<Value> {
    rows.iter().map(|r| r[i].clone()).collect()
}

#[test]
fn constants_convert_and_unlisted_attributes_are_null() {
    let g = compile(
        2,
        "      name: PizzaShackAPI
      ts: 5
      price: 2
      amount: 1.25
      ok: true
",
    );
    let rows = all(&g, 1);
    let expected = vec![
        Value::String("PizzaShackAPI".into()),
        Value::Null,
        Value::Long(5),
        Value::Float(2.0),
        Value::Double(1.25),
        Value::Bool(true),
    ];
    assert_eq!(rows, vec![expected.clone(), expected]);
}

#[test]
fn timestamp_constant_fits_a_long() {
    let g = compile(1, "      ts: \"2026-11-20T10:00:00Z\"\n      n: ~\n");
    assert_eq!(all(&g, 1)[0][2], Value::Long(1_795_168_800_000));
    assert_eq!(all(&g, 1)[0][1], Value::Null);
}

#[test]
fn same_seed_same_events_other_seed_other_events() {
    let fields = "      name: { one_of: [a, b, c] }
      n: { between: [0, 1000000] }
      amount: { between: [0, 1] }
      ts: { zipf: { values: [1, 2, 3, 4] } }
";
    let g = compile(500, fields);
    let a = all(&g, 42);
    assert_eq!(a, all(&g, 42));
    assert_eq!(a, all(&compile(500, fields), 42));
    assert_ne!(a, all(&g, 43));
    // Different parts of the same phase draw from different streams.
    let mut p0 = g.cursor(0..10, 42, 0);
    let mut p1 = g.cursor(0..10, 42, 1);
    assert_ne!(p0.next_owned(), p1.next_owned());
}

#[test]
fn split_covers_the_phase_once() {
    let g = compile(10, "      n: { sequence: { start: 0, step: 1 } }\n");
    let cursors = g.split(3, 9);
    let sizes: Vec<u64> = cursors.iter().map(EventCursor::remaining).collect();
    assert_eq!(sizes, [4, 3, 3]);
    let mut seen = Vec::new();
    for mut c in cursors {
        while let Some(row) = c.next_event() {
            seen.push(row[1].clone());
        }
        assert_eq!(c.remaining(), 0);
    }
    let expected: Vec<Value> = (0..10).map(Value::Int).collect();
    assert_eq!(seen, expected);
    assert_eq!(g.split(0, 9).len(), 1);
    assert_eq!(
        g.split(20, 9)
            .iter()
            .map(EventCursor::remaining)
            .sum::<u64>(),
        10
    );
    // Ranges are clipped to the phase.
    let c = g.cursor(8..50, 1, 0);
    assert_eq!((c.position(), c.remaining()), (8, 2));
}

#[test]
fn weights_three_to_one() {
    let n = 40_000u32;
    let g = compile(
        u64::from(n),
        "      name: { one_of: [a, b], weights: [3, 1] }\n",
    );
    let rows = all(&g, 7);
    let a = rows
        .iter()
        .filter(|r| r[0] == Value::String("a".into()))
        .count();
    let b = rows
        .iter()
        .filter(|r| r[0] == Value::String("b".into()))
        .count();
    assert_eq!(a + b, 40_000);
    // Binomial(n, 3/4): mean 30,000, sd = sqrt(n p q) ≈ 86.6; allow 5 sd.
    let sd = (f64::from(n) * 0.75 * 0.25).sqrt();
    let diff = (a as f64 - 30_000.0).abs();
    assert!(diff <= 5.0 * sd, "a = {a}, expected 30000 ± {}", 5.0 * sd);
}

#[test]
fn zero_weight_is_never_picked_and_uniform_one_of_is_even() {
    let g = compile(
        3_000,
        "      name: { one_of: [a, b, c], weights: [1, 0, 1] }\n",
    );
    assert!(!all(&g, 1).iter().any(|r| r[0] == Value::String("b".into())));
    let g = compile(30_000, "      n: { one_of: [1, 2, 3] }\n");
    let rows = all(&g, 1);
    for v in 1..=3 {
        let k = rows.iter().filter(|r| r[1] == Value::Int(v)).count();
        // Binomial(30000, 1/3): sd ≈ 81.6; allow 5 sd.
        assert!((k as f64 - 10_000.0).abs() <= 5.0 * 81.65, "{v}: {k}");
    }
}

#[test]
fn between_integers_is_inclusive() {
    let g = compile(3_000, "      n: { between: [1, 3] }\n");
    let values = column(&all(&g, 3), 1);
    for v in 1..=3 {
        assert!(values.contains(&Value::Int(v)), "{v} never drawn");
    }
    assert!(values.iter().all(|v| matches!(v, Value::Int(1..=3))));
    let g = compile(5, "      n: { between: [4, 4] }\n");
    assert_eq!(column(&all(&g, 3), 1), vec![Value::Int(4); 5]);
}

#[test]
fn between_timestamps_gives_epoch_ms_in_bounds() {
    let g = compile(
        20_000,
        "      ts: { between: [\"2026-11-20T10:00:00Z\", \"2026-11-20T10:00:01Z\"] }\n",
    );
    let lo = 1_795_168_800_000i64;
    let values: Vec<i64> = column(&all(&g, 5), 2)
        .into_iter()
        .map(|v| match v {
            Value::Long(ms) => ms,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(values.iter().all(|ms| (lo..=lo + 1_000).contains(ms)));
    // 1,001 possible values over 20,000 draws: both ends are drawn (miss chance ≈ e^-20).
    assert!(values.contains(&lo) && values.contains(&(lo + 1_000)));
    // Epoch ms and RFC 3339 mix.
    let g = compile(
        100,
        "      ts: { between: [1795168800000, \"2026-11-20T10:00:00.002Z\"] }\n",
    );
    assert!(
        column(&all(&g, 5), 2)
            .iter()
            .all(|v| matches!(v, Value::Long(ms) if (lo..=lo + 2).contains(ms)))
    );
}

#[test]
fn between_floats_stays_in_bounds() {
    let g = compile(
        10_000,
        "      amount: { between: [0.5, 1.5] }\n      price: { between: [-1, 1] }\n",
    );
    let rows = all(&g, 11);
    let mut sum = 0.0;
    for r in &rows {
        let Value::Double(a) = r[4] else {
            panic!("{:?}", r[4])
        };
        let Value::Float(p) = r[3] else {
            panic!("{:?}", r[3])
        };
        assert!((0.5..=1.5).contains(&a) && (-1.0..=1.0).contains(&p));
        sum += a;
    }
    // Mean of U(0.5, 1.5) is 1, sd of the mean = (1/sqrt(12))/sqrt(10000) ≈ 0.0029; allow 5 sd.
    assert!(
        (sum / 10_000.0 - 1.0).abs() < 0.015,
        "mean {}",
        sum / 10_000.0
    );
}

#[test]
fn zipf_ranks_in_order() {
    let g = compile(
        50_000,
        "      name: { zipf: { values: [a, b, c, d, e], s: 1.1 } }\n",
    );
    let rows = all(&g, 13);
    let counts: Vec<usize> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|v| {
            rows.iter()
                .filter(|r| r[0] == Value::String((*v).into()))
                .count()
        })
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 50_000);
    assert!(counts.windows(2).all(|w| w[0] > w[1]), "{counts:?}");
    // P(rank 1) = 1 / Σ k^-1.1 for k = 1..5 ≈ 0.4466.
    let h: f64 = (1..=5).map(|k| 1.0 / f64::from(k).powf(1.1)).sum();
    let p = 1.0 / h;
    let sd = (50_000.0 * p * (1.0 - p)).sqrt();
    assert!(
        (counts[0] as f64 - 50_000.0 * p).abs() <= 5.0 * sd,
        "{counts:?}"
    );
}

#[test]
fn sequences_cycle_and_count() {
    let g = compile(
        5,
        "      name: { sequence: [a, b, c] }
      n: { sequence: { start: 10, step: -2 } }
      ts: { sequence: { start: \"2026-11-20T10:00:00Z\", step: 1s } }
      amount: { sequence: { step: 0.5 } }
      ok: { sequence: [true, false] }
",
    );
    let rows = all(&g, 0);
    let s = |x: &str| Value::String(x.into());
    assert_eq!(
        column(&rows, 0),
        vec![s("a"), s("b"), s("c"), s("a"), s("b")]
    );
    assert_eq!(column(&rows, 1), [10, 8, 6, 4, 2].map(Value::Int).to_vec());
    let t0 = 1_795_168_800_000i64;
    assert_eq!(
        column(&rows, 2),
        (0..5)
            .map(|i| Value::Long(t0 + i * 1000))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        column(&rows, 4),
        [0.0, 0.5, 1.0, 1.5, 2.0].map(Value::Double).to_vec()
    );
    assert_eq!(
        column(&rows, 5),
        [true, false, true, false, true].map(Value::Bool).to_vec()
    );
    // A cursor over a later range continues the sequence by index.
    let mut c = g.cursor(3..5, 0, 1);
    assert_eq!(c.next_event().map(|r| r[1].clone()), Some(Value::Int(4)));
    assert_eq!(c.next_event().map(|r| r[0].clone()), Some(s("b")));
    assert_eq!(c.next_event(), None);
}

#[test]
fn type_errors_point_at_the_value() {
    // Field lines start at line 8.
    assert_eq!(
        compile_error("      ts: Naples\n"),
        "t.yaml:8:11: s.ts is long; a string (\"Naples\") does not fit; a string fits a long only as an RFC 3339 timestamp (2026-11-20T10:00:00Z)"
    );
    assert_eq!(
        compile_error("      name: 5\n"),
        "t.yaml:8:13: s.name is string; an integer (5) does not fit; quote it to make it a string: \"5\""
    );
    assert_eq!(
        compile_error("      n: 2.5\n"),
        "t.yaml:8:10: s.n is int; a number (2.5) does not fit"
    );
    assert_eq!(
        compile_error("      n: 3000000000\n"),
        "t.yaml:8:10: s.n is int; 3000000000 is out of the int range"
    );
    assert_eq!(
        compile_error("      ok: { one_of: [true, 1] }\n"),
        "t.yaml:8:28: s.ok is bool; an integer (1) does not fit"
    );
    assert_eq!(
        compile_error("      cty: Naples\n"),
        "t.yaml:8:7: stream `s` has no attribute `cty` (attributes: name, n, ts, price, amount, ok)"
    );
}

#[test]
fn generators_that_do_not_fit() {
    assert_eq!(
        compile_error("      n: { between: [0, 5000000000] }\n"),
        "t.yaml:8:25: s.n is int; bound 5000000000 is out of the int range"
    );
    assert_eq!(
        compile_error("      n: { between: [5, 1] }\n"),
        "t.yaml:8:22: `between` needs lo ≤ hi, got [5, 1]"
    );
    assert_eq!(
        compile_error("      amount: { between: [2.5, 1] }\n"),
        "t.yaml:8:27: `between` needs lo ≤ hi, got [2.5, 1]"
    );
    assert_eq!(
        compile_error("      name: { between: [1, 2] }\n"),
        "t.yaml:8:25: s.name is string; `between` needs a numeric or timestamp (long) attribute — use one_of for a string"
    );
    assert_eq!(
        compile_error("      ts: { between: [\"yesterday\", 2] }\n"),
        "t.yaml:8:23: bound `yesterday` is not an RFC 3339 timestamp (e.g. 2026-11-20T10:00:00Z) or epoch milliseconds"
    );
    assert_eq!(
        compile_error("      n: { sequence: { start: 2147483640, step: 1 } }\n"),
        "t.yaml:8:31: s.n is int; the sequence ends at 2147483649 over 10 events, out of the int range"
    );
    assert_eq!(
        compile_error("      name: { sequence: { start: 1 } }\n"),
        "t.yaml:8:13: s.name is string; `sequence: { start, step }` counts numbers — use `sequence: [a, b, …]` to cycle through string values"
    );
    assert_eq!(
        compile_error("      ts: { sequence: { step: 1us } }\n"),
        "t.yaml:8:31: step `1us` is not a whole number of milliseconds (e.g. 250ms, 1s)"
    );
    assert_eq!(
        compile_error("      price: { between: [0, 1e39] }\n"),
        "t.yaml:8:29: s.price is float; bound 1e39 is out of the float range"
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any split covers the phase's indices exactly once, in order.
        #[test]
        fn split_partitions_the_phase(events in 1u64..300, parts in 0u32..40, seed: u64) {
            let g = compile(events, "      ts: { sequence: { start: 0, step: 1 } }\n");
            let mut seen = Vec::new();
            for mut c in g.split(parts, seed) {
                while let Some(row) = c.next_event() {
                    seen.push(row[2].clone());
                }
            }
            let expected: Vec<Value> = (0..i64::try_from(events).unwrap_or(0)).map(Value::Long).collect();
            prop_assert_eq!(seen, expected);
        }

        /// `between` stays within its bounds, inclusive, for ints, longs and doubles.
        #[test]
        fn between_stays_in_bounds(a in -1_000_000i64..1_000_000, b in -1_000_000i64..1_000_000, seed: u64) {
            let (lo, hi) = (a.min(b), a.max(b));
            let g = compile(
                200,
                &format!("      n: {{ between: [{lo}, {hi}] }}\n      ts: {{ between: [{lo}, {hi}] }}\n      amount: {{ between: [{lo}, {hi}] }}\n"),
            );
            let mut c = g.cursor(0..200, seed, 0);
            while let Some(row) = c.next_event() {
                let Value::Int(n) = row[1] else { return Err(TestCaseError::fail("n not an int")) };
                let Value::Long(t) = row[2] else { return Err(TestCaseError::fail("ts not a long")) };
                let Value::Double(d) = row[4] else { return Err(TestCaseError::fail("amount not a double")) };
                prop_assert!((lo..=hi).contains(&i64::from(n)));
                prop_assert!((lo..=hi).contains(&t));
                prop_assert!(d >= lo as f64 && d <= hi as f64);
            }
        }
    }
}
