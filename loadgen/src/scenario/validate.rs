//! From the serde shapes of `raw` to the validated [`Scenario`]: every check that needs more than
//! a type, each reported at the offending value.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};
use shardtally_worker::bucket::Granularity;

use super::error::{Pos, Problem};
use super::model::{
    Cluster, Database, Endpoints, ExpectKind, Expectation, Fault, FaultAction, FaultAt, FieldSpec,
    GeneratorSpec, Item, LatencyBounds, Literal, Phase, Rate, Route, Scenario, ShardCount,
    WorkerSpec,
};
use super::raw::{
    RawCluster, RawExpect, RawFault, RawField, RawGenerator, RawLatency, RawPhase, RawScenario,
    RawSequence, RawShards, pos_of,
};

/// The longest shard id the workers accept (SPEC §4.2).
pub const MAX_SHARD_ID_CHARS: usize = 20;

type Result<T> = std::result::Result<T, Problem>;

fn err<T>(pos: Option<Pos>, message: impl Into<String>) -> Result<T> {
    Err(Problem::at(pos, message))
}

pub(crate) fn parse(text: &str, path: &Path, base: &Path) -> Result<Scenario> {
    let raw: RawScenario = serde_saphyr::from_str(text).map_err(yaml_problem)?;
    validate(raw, path, base)
}

/// A YAML or shape error from the parser, with its position and a one-line message.
fn yaml_problem(e: serde_saphyr::Error) -> Problem {
    let pos = e.location().and_then(Pos::from_location);
    let message = UserMessageFormatter.format_message(e.without_snippet());
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Problem::at(pos, message)
}

fn validate(raw: RawScenario, path: &Path, base: &Path) -> Result<Scenario> {
    let name = check_name(&raw.name)?;
    let app = match &raw.app {
        None => None,
        Some(app) if app.value.trim().is_empty() => {
            return err(pos_of(app), "`app` is empty; give the .siddhi file's path");
        }
        Some(app) => Some(base.join(&app.value)),
    };
    let seed = match &raw.seed {
        None => None,
        Some(s) => Some(match &s.value {
            Literal::Int(v) => u64::try_from(*v).map_err(|_| {
                Problem::at(pos_of(s), format!("seed must be an integer ≥ 0, got {v}"))
            })?,
            other => {
                return err(
                    pos_of(s),
                    format!("seed must be an integer ≥ 0, got {other}"),
                );
            }
        }),
    };
    let cluster = cluster(&raw.cluster)?;

    if raw.phases.value.is_empty() {
        return err(pos_of(&raw.phases), "`phases` needs at least one phase");
    }
    let mut phases: Vec<Phase> = Vec::with_capacity(raw.phases.value.len());
    let mut first_event = 0u64;
    for raw_phase in &raw.phases.value {
        let p = phase(raw_phase, &cluster, first_event)?;
        if let Some(prev) = phases.iter().find(|q| q.name == p.name) {
            return err(
                pos_of(&raw_phase.value.name),
                format!(
                    "duplicate phase name `{}` (first at {})",
                    p.name,
                    show_pos(prev.pos)
                ),
            );
        }
        first_event = first_event.checked_add(p.events).ok_or_else(|| {
            Problem::at(pos_of(&raw_phase.value.events), "too many events in total")
        })?;
        phases.push(p);
    }
    let total = first_event;

    let faults = raw
        .faults
        .iter()
        .map(|f| fault(f, &cluster, total))
        .collect::<Result<Vec<_>>>()?;
    check_fault_order(&faults)?;

    let expect = raw
        .expect
        .iter()
        .map(|e| expectation(e, &cluster))
        .collect::<Result<Vec<_>>>()?;

    Ok(Scenario {
        source: path.to_owned(),
        name,
        description: raw.description,
        app,
        app_pos: raw.app.as_ref().and_then(pos_of),
        seed,
        cluster,
        phases,
        faults,
        expect,
    })
}

fn show_pos(pos: Option<Pos>) -> String {
    pos.map_or_else(
        || "an earlier entry".to_owned(),
        |p| format!("line {}", p.line),
    )
}

fn check_name(name: &Spanned<String>) -> Result<String> {
    let n = &name.value;
    let ok = !n.is_empty()
        && n.chars().count() <= 100
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return err(
            pos_of(name),
            format!(
                "name `{n}` must be 1-100 characters of letters, digits, `.`, `_` and `-`, not \
                 starting with `.` (it names the results folder)"
            ),
        );
    }
    Ok(n.clone())
}

fn cluster(raw: &Spanned<RawCluster>) -> Result<Cluster> {
    let c = &raw.value;
    let workers = match (&c.workers, &c.endpoints) {
        (Some(_), Some(e)) => {
            return err(
                pos_of(e),
                "`workers` and `endpoints` are mutually exclusive: `workers` are spawned by \
                 loadgen, `endpoints` name a running cluster",
            );
        }
        (None, None) => {
            return err(
                pos_of(raw),
                "`cluster` needs `workers` (spawned by loadgen) or `endpoints` (a running cluster)",
            );
        }
        (None, Some(_)) => Vec::new(),
        (Some(ws), None) => {
            if ws.value.is_empty() {
                return err(pos_of(ws), "`workers` needs at least one worker");
            }
            let mut out: Vec<WorkerSpec> = Vec::with_capacity(ws.value.len());
            for w in &ws.value {
                let node_id = &w.value.node_id;
                check_node_id(node_id)?;
                let shard_id = match &w.value.shard_id {
                    None => None,
                    Some(s) => {
                        check_shard_id(s, &s.value, "shard id")?;
                        Some(s.value.clone())
                    }
                };
                if w.value.shard_id.is_none() {
                    check_shard_id(node_id, &node_id.value, "shard id (the node id by default)")?;
                }
                let spec = WorkerSpec {
                    node_id: node_id.value.clone(),
                    shard_id,
                    pos: pos_of(w),
                };
                if let Some(prev) = out.iter().find(|o| o.node_id == spec.node_id) {
                    return err(
                        pos_of(node_id),
                        format!(
                            "duplicate node id `{}` (first at {})",
                            spec.node_id,
                            show_pos(prev.pos)
                        ),
                    );
                }
                if let Some(prev) = out
                    .iter()
                    .find(|o| o.effective_shard_id() == spec.effective_shard_id())
                {
                    let at = w.value.shard_id.as_ref().map_or(pos_of(node_id), pos_of);
                    return err(
                        at,
                        format!(
                            "shard id `{}` is already served by node `{}`; two live workers \
                             must not share a shard id",
                            spec.effective_shard_id(),
                            prev.node_id
                        ),
                    );
                }
                out.push(spec);
            }
            out
        }
    };
    let endpoints = match &c.endpoints {
        None => None,
        Some(e) if e.value.trim().is_empty() => {
            return err(pos_of(e), "`endpoints` is empty");
        }
        Some(e) => Some(Endpoints {
            url_set: e.value.trim().to_owned(),
            pos: pos_of(e),
        }),
    };
    let database = match &c.database {
        None => Database::EmbeddedSqlite,
        Some(d) => database(d)?,
    };
    let flush_interval = match &c.flush_interval {
        None => None,
        Some(f) => {
            let d = duration(f, "flush_interval")?;
            if d.is_zero() {
                return err(pos_of(f), "flush_interval must be greater than 0");
            }
            Some(d)
        }
    };
    Ok(Cluster {
        workers,
        endpoints,
        database,
        flush_interval,
    })
}

fn check_node_id(node_id: &Spanned<String>) -> Result<()> {
    let n = &node_id.value;
    if n.is_empty() {
        return err(pos_of(node_id), "node_id is empty");
    }
    if n.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '\\')
    {
        return err(
            pos_of(node_id),
            format!("node_id `{n}` must not contain spaces, control characters, `/` or `\\`"),
        );
    }
    Ok(())
}

fn check_shard_id<T>(at: &Spanned<T>, id: &str, what: &str) -> Result<()> {
    if id.is_empty() {
        return err(pos_of(at), format!("{what} is empty"));
    }
    let chars = id.chars().count();
    if chars > MAX_SHARD_ID_CHARS {
        return err(
            pos_of(at),
            format!(
                "{what} `{id}` is {chars} characters long; at most {MAX_SHARD_ID_CHARS} are allowed"
            ),
        );
    }
    Ok(())
}

fn database(d: &Spanned<String>) -> Result<Database> {
    let v = d.value.trim();
    if v == "sqlite" {
        return Ok(Database::EmbeddedSqlite);
    }
    let known = [
        "postgres://",
        "postgresql://",
        "mysql://",
        "mariadb://",
        "sqlite:",
    ];
    if known.iter().any(|prefix| v.starts_with(prefix)) {
        return Ok(Database::Url(v.to_owned()));
    }
    err(
        pos_of(d),
        format!(
            "database `{v}` is not `sqlite` or a postgres://, mysql:// (or sqlite:) database URL"
        ),
    )
}

/// A humane duration (`500ms`, `2s`, `1m30s`, `PT1S`).
fn duration(lit: &Spanned<Literal>, what: &str) -> Result<Duration> {
    match &lit.value {
        Literal::Str(s) => {
            parse_duration(s).map_err(|m| Problem::at(pos_of(lit), format!("{what}: {m}")))
        }
        Literal::Int(v) => err(
            pos_of(lit),
            format!("{what}: `{v}` has no unit; write e.g. {v}ms or {v}s"),
        ),
        other => err(
            pos_of(lit),
            format!("{what} must be a duration such as 500ms or 2s, got {other}"),
        ),
    }
}

/// Parses a humane duration; the message says why not.
pub(crate) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 2s, 1m30s)"))?;
    Duration::try_from(d).map_err(|_| format!("`{s}` must not be negative"))
}

/// An integer ≥ `min`.
fn integer(lit: &Spanned<Literal>, what: &str, min: i64) -> Result<i64> {
    match &lit.value {
        Literal::Int(v) if *v >= min => Ok(*v),
        other => err(
            pos_of(lit),
            format!("{what} must be an integer ≥ {min}, got {other}"),
        ),
    }
}

fn phase(raw: &Spanned<RawPhase>, cluster: &Cluster, first_event: u64) -> Result<Phase> {
    let p = &raw.value;
    if p.name.value.trim().is_empty() {
        return err(pos_of(&p.name), "phase name is empty");
    }
    if p.stream.value.trim().is_empty() {
        return err(pos_of(&p.stream), "stream is empty");
    }
    let events = u64::try_from(integer(&p.events, "events", 1)?).unwrap_or(0);
    let rate = match &p.rate {
        None => Rate::Max,
        Some(r) => match &r.value {
            Literal::Str(s) if s.trim() == "max" => Rate::Max,
            Literal::Int(v) if *v > 0 => Rate::PerSecond(*v as f64),
            Literal::Float(v) if v.is_finite() && *v > 0.0 => Rate::PerSecond(*v),
            other => {
                return err(
                    pos_of(r),
                    format!("rate must be `max` or events per second > 0, got {other}"),
                );
            }
        },
    };
    let publishers = match &p.publishers {
        None => 1,
        Some(n) => {
            let v = integer(n, "publishers", 1)?;
            u32::try_from(v)
                .ok()
                .filter(|v| *v <= 10_000)
                .ok_or_else(|| Problem::at(pos_of(n), "publishers must be at most 10000"))?
        }
    };
    let route = match &p.route {
        None => Route::AllWorkers,
        Some(r) => {
            if cluster.workers.is_empty() {
                return err(
                    pos_of(r),
                    "`route` names spawned workers, but this cluster is given by `endpoints`",
                );
            }
            let names = &r.value.workers;
            if names.value.is_empty() {
                return err(pos_of(names), "`route.workers` needs at least one node id");
            }
            let mut out: Vec<String> = Vec::with_capacity(names.value.len());
            for n in &names.value {
                if !cluster.workers.iter().any(|w| w.node_id == n.value) {
                    return err(pos_of(n), unknown_worker(&n.value, cluster, "route"));
                }
                if out.contains(&n.value) {
                    return err(pos_of(n), format!("`{}` is listed twice in route", n.value));
                }
                out.push(n.value.clone());
            }
            Route::Workers(out)
        }
    };
    let fields = match &p.fields {
        None => Vec::new(),
        Some(map) => map
            .value
            .0
            .iter()
            .map(|(k, v)| field(k, v))
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(Phase {
        name: p.name.value.clone(),
        pos: pos_of(raw),
        stream: p.stream.value.trim().to_owned(),
        stream_pos: pos_of(&p.stream),
        events,
        rate,
        route,
        publishers,
        fields,
        first_event,
    })
}

fn unknown_worker(name: &str, cluster: &Cluster, context: &str) -> String {
    let known: Vec<&str> = cluster.workers.iter().map(|w| w.node_id.as_str()).collect();
    format!(
        "unknown worker `{name}` in {context} (cluster.workers: {})",
        known.join(", ")
    )
}

fn item(s: &Spanned<Literal>) -> Item {
    Item {
        value: s.value.clone(),
        pos: pos_of(s),
    }
}

fn field(key: &Spanned<String>, value: &Spanned<RawField>) -> Result<FieldSpec> {
    if key.value.is_empty() {
        return err(pos_of(key), "field name is empty");
    }
    let generator = match &value.value {
        RawField::Constant(lit) => GeneratorSpec::Constant(Item {
            value: lit.clone(),
            pos: pos_of(value),
        }),
        RawField::Generator(g) => generator(g, pos_of(value))?,
    };
    Ok(FieldSpec {
        name: key.value.clone(),
        pos: pos_of(key),
        generator,
        value_pos: pos_of(value),
    })
}

fn number(lit: &Spanned<Literal>) -> Option<f64> {
    match lit.value {
        Literal::Int(v) => Some(v as f64),
        Literal::Float(v) => Some(v),
        _ => None,
    }
}

fn generator(g: &RawGenerator, at: Option<Pos>) -> Result<GeneratorSpec> {
    let kinds = [
        g.one_of.is_some(),
        g.between.is_some(),
        g.zipf.is_some(),
        g.sequence.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 if g.weights.is_some() => {
            return err(
                at,
                "`weights` go with `one_of`: { one_of: [a, b], weights: [3, 1] }",
            );
        }
        0 => {
            return err(
                at,
                "a generator needs one of `one_of`, `between`, `zipf` or `sequence`",
            );
        }
        1 => {}
        _ => {
            return err(
                at,
                "a field takes one generator: `one_of`, `between`, `zipf` or `sequence`",
            );
        }
    }
    if g.weights.is_some() && g.one_of.is_none() {
        return err(
            g.weights.as_ref().and_then(pos_of),
            "`weights` go with `one_of` only",
        );
    }
    if let Some(one_of) = &g.one_of {
        if one_of.value.is_empty() {
            return err(pos_of(one_of), "`one_of` needs at least one value");
        }
        let values: Vec<Item> = one_of.value.iter().map(item).collect();
        let weights = match &g.weights {
            None => None,
            Some(w) => {
                if w.value.len() != values.len() {
                    return err(
                        pos_of(w),
                        format!(
                            "{} weight(s) for {} values; give one weight per value",
                            w.value.len(),
                            values.len()
                        ),
                    );
                }
                let mut out = Vec::with_capacity(w.value.len());
                for x in &w.value {
                    match number(x) {
                        Some(v) if v.is_finite() && v >= 0.0 => out.push(v),
                        _ => {
                            return err(
                                pos_of(x),
                                format!("a weight must be a number ≥ 0, got {}", x.value),
                            );
                        }
                    }
                }
                if out.iter().sum::<f64>() <= 0.0 {
                    return err(pos_of(w), "the weights must not all be 0");
                }
                Some(out)
            }
        };
        return Ok(GeneratorSpec::OneOf { values, weights });
    }
    if let Some(between) = &g.between {
        let [lo, hi] = between.value.as_slice() else {
            return err(
                pos_of(between),
                format!(
                    "`between` takes two bounds [lo, hi], got {}",
                    between.value.len()
                ),
            );
        };
        for b in [lo, hi] {
            if !matches!(
                b.value,
                Literal::Int(_) | Literal::Float(_) | Literal::Str(_)
            ) {
                return err(
                    pos_of(b),
                    format!(
                        "a `between` bound is a number or a timestamp, got {}",
                        b.value
                    ),
                );
            }
        }
        return Ok(GeneratorSpec::Between {
            lo: item(lo),
            hi: item(hi),
        });
    }
    if let Some(zipf) = &g.zipf {
        let z = &zipf.value;
        if z.values.value.is_empty() {
            return err(pos_of(&z.values), "`zipf.values` needs at least one value");
        }
        let s = match &z.s {
            None => 1.0,
            Some(s) => match number(s) {
                Some(v) if v.is_finite() && v > 0.0 => v,
                _ => {
                    return err(
                        pos_of(s),
                        format!("zipf `s` must be a number > 0, got {}", s.value),
                    );
                }
            },
        };
        return Ok(GeneratorSpec::Zipf {
            values: z.values.value.iter().map(item).collect(),
            s,
        });
    }
    if let Some(sequence) = &g.sequence {
        return match &sequence.value {
            RawSequence::Cycle(values) => {
                if values.is_empty() {
                    return err(pos_of(sequence), "`sequence` needs at least one value");
                }
                Ok(GeneratorSpec::Cycle {
                    values: values.iter().map(item).collect(),
                })
            }
            RawSequence::Counter(c) => {
                for part in [&c.start, &c.step].into_iter().flatten() {
                    if !matches!(
                        part.value,
                        Literal::Int(_) | Literal::Float(_) | Literal::Str(_)
                    ) {
                        return err(
                            pos_of(part),
                            format!(
                                "sequence `start`/`step` is a number (or a timestamp / duration), got {}",
                                part.value
                            ),
                        );
                    }
                }
                Ok(GeneratorSpec::Counter {
                    start: c.start.as_ref().map(item),
                    step: c.step.as_ref().map(item),
                })
            }
        };
    }
    err(
        at,
        "a generator needs one of `one_of`, `between`, `zipf` or `sequence`",
    )
}

fn fault(raw: &Spanned<RawFault>, cluster: &Cluster, total: u64) -> Result<Fault> {
    let f = &raw.value;
    let (action, node) = match (&f.kill, &f.restart) {
        (Some(n), None) => (FaultAction::Kill, n),
        (None, Some(n)) => (FaultAction::Restart, n),
        (Some(_), Some(n)) => {
            return err(
                pos_of(n),
                "a fault either kills or restarts a node, not both",
            );
        }
        (None, None) => {
            return err(pos_of(raw), "a fault needs `kill: NODE` or `restart: NODE`");
        }
    };
    if cluster.workers.is_empty() {
        return err(
            pos_of(node),
            "faults need workers spawned by loadgen; this cluster is given by `endpoints`",
        );
    }
    if !cluster.workers.iter().any(|w| w.node_id == node.value) {
        return err(pos_of(node), unknown_worker(&node.value, cluster, "fault"));
    }
    let at = fault_at(&f.at, total)?;
    Ok(Fault {
        at,
        action,
        node_id: node.value.clone(),
        pos: pos_of(raw),
    })
}

fn fault_at(at: &Spanned<Literal>, total: u64) -> Result<FaultAt> {
    let bad = || {
        Problem::at(
            pos_of(at),
            format!(
                "`at` must be a percentage of the scenario's events (40%) or a duration (2s), got {}",
                at.value
            ),
        )
    };
    let Literal::Str(s) = &at.value else {
        return Err(bad());
    };
    let s = s.trim();
    if let Some(pct) = s.strip_suffix('%') {
        let p: f64 = pct.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&p) {
            return err(
                pos_of(at),
                format!("`at` percentage must be between 0% and 100%, got {s}"),
            );
        }
        // Exact for whole percentages of any count that fits in 2^53 / 100.
        let index = (total as f64 * p / 100.0).floor();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let index = (index as u64).min(total);
        return Ok(FaultAt::Event(index));
    }
    parse_duration(s)
        .map(FaultAt::Elapsed)
        .map_err(|m| Problem::at(pos_of(at), format!("`at`: {m}")))
}

/// With every `at` of one kind (all percentages or all durations), kills and restarts must
/// alternate per node, starting from running.
fn check_fault_order(faults: &[Fault]) -> Result<()> {
    let all_events = faults.iter().all(|f| matches!(f.at, FaultAt::Event(_)));
    let all_times = faults.iter().all(|f| matches!(f.at, FaultAt::Elapsed(_)));
    if !(all_events || all_times) {
        return Ok(());
    }
    let mut order: Vec<&Fault> = faults.iter().collect();
    order.sort_by_key(|f| match f.at {
        FaultAt::Event(i) => (i, Duration::ZERO),
        FaultAt::Elapsed(d) => (0, d),
    });
    let mut down: HashMap<&str, &Fault> = HashMap::new();
    for f in order {
        match f.action {
            FaultAction::Kill => {
                if let Some(prev) = down.get(f.node_id.as_str()) {
                    return err(
                        f.pos,
                        format!(
                            "node `{}` is already killed at this point (by the fault at {})",
                            f.node_id,
                            show_pos(prev.pos)
                        ),
                    );
                }
                down.insert(&f.node_id, f);
            }
            FaultAction::Restart => {
                if down.remove(f.node_id.as_str()).is_none() {
                    return err(
                        f.pos,
                        format!(
                            "node `{}` is running at this point; a restart follows a kill",
                            f.node_id
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

fn expectation(raw: &Spanned<RawExpect>, cluster: &Cluster) -> Result<Expectation> {
    let e = &raw.value;
    let at = pos_of(raw);
    let set = [
        e.query.is_some(),
        e.shards.is_some(),
        e.delivered.is_some(),
        e.latency.is_some(),
    ];
    let n = set.iter().filter(|s| **s).count();
    if n != 1 {
        return err(
            at,
            "an expectation is exactly one of `query` (with `rows`), `shards`, `delivered` or \
             `latency`",
        );
    }
    if let (Some(rows), None) = (&e.rows, &e.query) {
        return err(pos_of(rows), "`rows` go with `query`");
    }
    let kind = if let Some(q) = &e.query {
        if q.value.trim().is_empty() {
            return err(pos_of(q), "`query` is empty");
        }
        let Some(rows) = &e.rows else {
            return err(
                pos_of(q),
                "a `query` expectation needs `rows: [[...], ...]`",
            );
        };
        let mut out = Vec::with_capacity(rows.value.len());
        for row in &rows.value {
            let mut cells = Vec::with_capacity(row.value.len());
            for cell in &row.value {
                if cell.value.is_array() || cell.value.is_object() {
                    return err(pos_of(cell), "a row cell must be a scalar");
                }
                cells.push(cell.value.clone());
            }
            out.push(cells);
        }
        ExpectKind::Query {
            query: q.value.trim().to_owned(),
            query_pos: pos_of(q),
            rows: out,
        }
    } else if let Some(s) = &e.shards {
        shards(s, cluster)?
    } else if let Some(d) = &e.delivered {
        if d.value.trim() != "exactly-once" {
            return err(
                pos_of(d),
                format!("`delivered` must be `exactly-once`, got `{}`", d.value),
            );
        }
        ExpectKind::Delivered
    } else if let Some(l) = &e.latency {
        ExpectKind::Latency(latency(l)?)
    } else {
        return err(at, "empty expectation");
    };
    Ok(Expectation { pos: at, kind })
}

fn shards(raw: &Spanned<RawShards>, cluster: &Cluster) -> Result<ExpectKind> {
    let s = &raw.value;
    if s.aggregation.value.trim().is_empty() {
        return err(pos_of(&s.aggregation), "`aggregation` is empty");
    }
    let per = Granularity::from_str(&s.per.value).map_err(|m| Problem::at(pos_of(&s.per), m))?;
    if s.counts.value.0.is_empty() {
        return err(pos_of(&s.counts), "`counts` needs at least one shard");
    }
    let mut counts: Vec<ShardCount> = Vec::with_capacity(s.counts.value.0.len());
    for (key, n) in &s.counts.value.0 {
        let shard_id = if cluster.workers.is_empty() {
            key.value.clone()
        } else if let Some(w) = cluster.workers.iter().find(|w| w.node_id == key.value) {
            w.effective_shard_id().to_owned()
        } else if cluster
            .workers
            .iter()
            .any(|w| w.effective_shard_id() == key.value)
        {
            key.value.clone()
        } else {
            return err(
                pos_of(key),
                format!(
                    "`{}` is neither a node id nor a shard id of cluster.workers",
                    key.value
                ),
            );
        };
        if counts.iter().any(|c| c.shard_id == shard_id) {
            return err(pos_of(key), format!("shard `{shard_id}` is counted twice"));
        }
        let count = u64::try_from(integer(n, "a shard count", 0)?).unwrap_or(0);
        counts.push(ShardCount {
            key: key.value.clone(),
            shard_id,
            count,
            pos: pos_of(key),
        });
    }
    Ok(ExpectKind::Shards {
        aggregation: s.aggregation.value.trim().to_owned(),
        per,
        counts,
    })
}

fn latency(raw: &Spanned<RawLatency>) -> Result<LatencyBounds> {
    let l = &raw.value;
    let get = |v: &Option<Spanned<Literal>>, what: &str| -> Result<Option<Duration>> {
        v.as_ref().map(|d| duration(d, what)).transpose()
    };
    let bounds = LatencyBounds {
        p50: get(&l.p50, "p50")?,
        p90: get(&l.p90, "p90")?,
        p99: get(&l.p99, "p99")?,
        p999: get(&l.p999, "p999")?,
        max: get(&l.max, "max")?,
    };
    if bounds.iter().next().is_none() {
        return err(
            pos_of(raw),
            "`latency` needs at least one of p50, p90, p99, p999, max",
        );
    }
    Ok(bounds)
}
