//! Siddhi apps: `@app:name`, `define stream`, `define aggregation` and their annotations, parsed
//! and then checked (every name resolves, types fit, the tables it implies are valid SQL).

use std::time::Duration;

use shardtally_publisher::protocol::{AttrType, Attribute, StreamSchema};

use super::error::{ParseError, Pos};
use super::expr::{Calls, Expr, ExprKind, infer, parse_expr};
use super::lexer::Tok;
use super::parser::{MAX_DEPTH, Parser};
use crate::bucket::Granularity;

/// A parsed and checked Siddhi app.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// `@app:name('…')`.
    pub name: String,
    /// The streams, in definition order.
    pub streams: Vec<StreamSchema>,
    /// The aggregations, in definition order.
    pub aggregations: Vec<AggregationDef>,
}

/// One `define aggregation`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregationDef {
    /// Aggregation name; its tables are `<name>_SECONDS` … `<name>_YEARS`.
    pub name: String,
    /// The stream it reads (`from …`).
    pub stream: String,
    /// An optional input filter: `from stream[condition]`.
    pub filter: Option<Expr>,
    /// `@PartitionById` (`Some(true)`), `@PartitionById(enable='false')` (`Some(false)`), or no
    /// annotation (`None`: the worker's global `partitionById` decides).
    pub partition_by_id: Option<bool>,
    /// `@purge(…)`, when present.
    pub purge: Option<Purge>,
    /// The select items, in order.
    pub select: Vec<SelectItem>,
    /// `group by` attributes, in order.
    pub group_by: Vec<String>,
    /// `aggregate by <attr>` (event time), or `None` (arrival time).
    pub aggregate_by: Option<String>,
    /// The granularities of `every …`, finest first, without duplicates.
    pub granularities: Vec<Granularity>,
    /// Where `define aggregation` starts.
    pub pos: Pos,
}

/// One select item: an expression and its optional `as` name.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectItem {
    /// The expression.
    pub expr: Expr,
    /// The `as` alias.
    pub alias: Option<String>,
}

impl SelectItem {
    /// The output name: the alias, else the attribute's name, else the expression's text.
    pub fn name(&self) -> String {
        match (&self.alias, &self.expr.kind) {
            (Some(a), _) => a.clone(),
            (None, ExprKind::Attribute(n)) => n.clone(),
            (None, _) => self.expr.to_string(),
        }
    }
}

/// `@purge(enable=…, interval=…, @retentionPeriod(…))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// `enable='true'` (the default when `enable` is absent).
    pub enabled: bool,
    /// How often to purge (`interval`, default 15 min as in Siddhi).
    pub interval: Duration,
    /// Retention per granularity of the aggregation, finest first; `None` keeps everything
    /// (`'all'`). Granularities not named take Siddhi's defaults: seconds 120 sec, minutes 24
    /// hours, hours 30 days, days 1 year, months and years all.
    pub retention: Vec<(Granularity, Option<Duration>)>,
}

impl App {
    /// Parses and checks a Siddhi app.
    pub fn parse(text: &str) -> Result<App, ParseError> {
        let raw = parse_raw(text)?;
        check(raw)
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> Option<&StreamSchema> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The aggregation called `name`.
    pub fn aggregation(&self, name: &str) -> Option<&AggregationDef> {
        self.aggregations.iter().find(|a| a.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax

#[derive(Debug)]
struct Annotation {
    namespace: Option<String>,
    name: String,
    pos: Pos,
    elements: Vec<Element>,
}

#[derive(Debug)]
enum Element {
    Pair {
        key: Option<String>,
        value: String,
        pos: Pos,
    },
    Nested(Annotation),
}

impl Annotation {
    fn is(&self, name: &str) -> bool {
        self.namespace.is_none() && self.name.eq_ignore_ascii_case(name)
    }

    fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("@{ns}:{}", self.name),
            None => format!("@{}", self.name),
        }
    }
}

struct RawStream {
    schema: StreamSchema,
    pos: Pos,
    attr_pos: Vec<Pos>,
}

struct RawAgg {
    def: AggregationDef,
    name_pos: Pos,
    stream_pos: Pos,
    group_by_pos: Vec<Pos>,
    aggregate_by_pos: Option<Pos>,
}

struct RawApp {
    name: Option<String>,
    streams: Vec<RawStream>,
    aggregations: Vec<RawAgg>,
    end: Pos,
}

fn parse_raw(text: &str) -> Result<RawApp, ParseError> {
    let mut p = Parser::new(text)?;
    let mut app = RawApp {
        name: None,
        streams: Vec::new(),
        aggregations: Vec::new(),
        end: Pos::new(1, 1),
    };
    loop {
        let mut anns = Vec::new();
        while p.at(&Tok::At) {
            let a = parse_annotation(&mut p)?;
            if a.namespace
                .as_deref()
                .is_some_and(|ns| ns.eq_ignore_ascii_case("app"))
            {
                app_annotation(&mut app, a)?;
            } else {
                anns.push(a);
            }
        }
        if p.at(&Tok::Eof) {
            if let Some(a) = anns.first() {
                return Err(ParseError::at(
                    a.pos,
                    format!(
                        "annotation {} is not followed by a definition",
                        a.display_name()
                    ),
                ));
            }
            app.end = p.pos();
            return Ok(app);
        }
        if p.at(&Tok::Semi) {
            if let Some(a) = anns.first() {
                return Err(ParseError::at(
                    a.pos,
                    format!(
                        "annotation {} is not followed by a definition",
                        a.display_name()
                    ),
                ));
            }
            p.bump();
            continue;
        }
        if p.at_kw("from") || p.at_kw("partition") {
            return Err(ParseError::at(
                p.pos(),
                "queries are not supported: a shardtally app has only `define stream` and \
                 `define aggregation` (events are published straight into the streams)",
            ));
        }
        let define_pos = p.expect_kw("define")?;
        if p.eat_kw("stream") {
            app.streams.push(parse_stream(&mut p)?);
        } else if p.eat_kw("aggregation") {
            app.aggregations
                .push(parse_aggregation(&mut p, define_pos, &anns)?);
        } else if ["table", "window", "trigger", "function"]
            .iter()
            .any(|k| p.at_kw(k))
        {
            return Err(ParseError::at(
                p.pos(),
                format!(
                    "`define {}` is not supported: a shardtally app has only `define stream` and \
                     `define aggregation`",
                    match &p.peek().tok {
                        Tok::Ident(s) => s.to_ascii_lowercase(),
                        _ => String::new(),
                    }
                ),
            ));
        } else {
            return Err(p.unexpected("`stream` or `aggregation`"));
        }
        if !p.eat(&Tok::Semi) && !p.at(&Tok::Eof) {
            return Err(p.unexpected("`;`"));
        }
    }
}

fn parse_annotation(p: &mut Parser) -> Result<Annotation, ParseError> {
    let pos = p.expect(&Tok::At, "`@`")?;
    p.depth += 1;
    if p.depth > MAX_DEPTH {
        return Err(ParseError::at(pos, "annotations nested too deeply"));
    }
    let (first, _) = p.ident("an annotation name")?;
    let (namespace, name) = if p.eat(&Tok::Colon) {
        (Some(first), p.ident("an annotation name")?.0)
    } else {
        (None, first)
    };
    let mut elements = Vec::new();
    if p.eat(&Tok::LParen) && !p.eat(&Tok::RParen) {
        loop {
            if p.at(&Tok::At) {
                elements.push(Element::Nested(parse_annotation(p)?));
            } else {
                let epos = p.pos();
                let key = if matches!(p.peek().tok, Tok::Ident(_))
                    && matches!(p.peek_nth(1).tok, Tok::Assign | Tok::Dot)
                {
                    let mut key = p.ident("a key")?.0;
                    while p.eat(&Tok::Dot) {
                        key.push('.');
                        key.push_str(&p.ident("a key")?.0);
                    }
                    p.expect(&Tok::Assign, "`=`")?;
                    Some(key)
                } else {
                    None
                };
                let value = match p.peek().tok.clone() {
                    Tok::Str(s) => s,
                    Tok::Int(v) | Tok::Long(v) => v.to_string(),
                    Tok::Double(v) => v.to_string(),
                    Tok::Float(v) => v.to_string(),
                    Tok::Ident(s)
                        if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") =>
                    {
                        s
                    }
                    _ => return Err(p.unexpected("a quoted value")),
                };
                p.bump();
                elements.push(Element::Pair {
                    key,
                    value,
                    pos: epos,
                });
            }
            if p.eat(&Tok::RParen) {
                break;
            }
            p.expect(&Tok::Comma, "`,` or `)`")?;
        }
    }
    p.depth -= 1;
    Ok(Annotation {
        namespace,
        name,
        pos,
        elements,
    })
}

fn app_annotation(app: &mut RawApp, a: Annotation) -> Result<(), ParseError> {
    if !a.name.eq_ignore_ascii_case("name") {
        // @app:description, @app:statistics, @app:playback …: nothing to do here.
        return Ok(());
    }
    if app.name.is_some() {
        return Err(ParseError::at(a.pos, "duplicate @app:name"));
    }
    match a.elements.as_slice() {
        [Element::Pair { key, value, pos }]
            if key
                .as_deref()
                .is_none_or(|k| k.eq_ignore_ascii_case("name")) =>
        {
            if value.trim().is_empty() {
                return Err(ParseError::at(*pos, "@app:name must not be empty"));
            }
            app.name = Some(value.trim().to_owned());
            Ok(())
        }
        _ => Err(ParseError::at(
            a.pos,
            "@app:name takes one quoted name, like @app:name('MyApp')",
        )),
    }
}

fn parse_stream(p: &mut Parser) -> Result<RawStream, ParseError> {
    let (name, pos) = p.ident("a stream name")?;
    p.expect(&Tok::LParen, "`(`")?;
    let mut attributes = Vec::new();
    let mut attr_pos = Vec::new();
    loop {
        let (attr, apos) = p.ident("an attribute name")?;
        let (ty_name, tpos) =
            p.ident("an attribute type (string, int, long, float, double, bool)")?;
        let Some(ty) = AttrType::from_keyword(&ty_name) else {
            return Err(ParseError::at(
                tpos,
                format!(
                    "unknown type `{ty_name}` (expected string, int, long, float, double or bool)"
                ),
            ));
        };
        attributes.push(Attribute::new(attr, ty));
        attr_pos.push(apos);
        if p.eat(&Tok::RParen) {
            break;
        }
        p.expect(&Tok::Comma, "`,` or `)`")?;
    }
    Ok(RawStream {
        schema: StreamSchema::new(name, attributes),
        pos,
        attr_pos,
    })
}

fn parse_aggregation(
    p: &mut Parser,
    define_pos: Pos,
    anns: &[Annotation],
) -> Result<RawAgg, ParseError> {
    let (name, name_pos) = p.ident("an aggregation name")?;
    p.expect_kw("from")?;
    let (stream, stream_pos) = p.ident("a stream name")?;
    let filter = if p.eat(&Tok::LBracket) {
        let e = parse_expr(p)?;
        p.expect(&Tok::RBracket, "`]`")?;
        Some(e)
    } else {
        None
    };
    p.expect_kw("select")?;
    if p.at(&Tok::Star) {
        return Err(ParseError::at(
            p.pos(),
            "an aggregation must name what it selects (`select *` is for queries)",
        ));
    }
    let select = parse_select_items(p)?;
    let mut group_by = Vec::new();
    let mut group_by_pos = Vec::new();
    if p.at_kw("group") {
        p.bump();
        p.expect_kw("by")?;
        loop {
            let (a, pos) = p.ident("a group-by attribute")?;
            group_by.push(a);
            group_by_pos.push(pos);
            if !p.eat(&Tok::Comma) {
                break;
            }
        }
    }
    p.expect_kw("aggregate")?;
    let (aggregate_by, aggregate_by_pos) = if p.eat_kw("by") {
        let (a, pos) = p.ident("the event-time attribute")?;
        (Some(a), Some(pos))
    } else {
        (None, None)
    };
    p.expect_kw("every")?;
    let granularities = parse_granularities(p)?;

    let mut partition_by_id = None;
    let mut purge = None;
    for a in anns {
        if a.is("PartitionById") {
            if partition_by_id.is_some() {
                return Err(ParseError::at(a.pos, "duplicate @PartitionById"));
            }
            partition_by_id = Some(partition_annotation(a)?);
        } else if a.is("purge") {
            if purge.is_some() {
                return Err(ParseError::at(a.pos, "duplicate @purge"));
            }
            purge = Some(purge_annotation(a, &granularities)?);
        }
        // @store, @info and others carry nothing shardtally needs.
    }
    Ok(RawAgg {
        def: AggregationDef {
            name,
            stream,
            filter,
            partition_by_id,
            purge,
            select,
            group_by,
            aggregate_by,
            granularities,
            pos: define_pos,
        },
        name_pos,
        stream_pos,
        group_by_pos,
        aggregate_by_pos,
    })
}

/// Parses `expr [as name], …` (shared with store queries).
pub(crate) fn parse_select_items(p: &mut Parser) -> Result<Vec<SelectItem>, ParseError> {
    let mut items = Vec::new();
    loop {
        let expr = parse_expr(p)?;
        let alias = if p.eat_kw("as") {
            Some(p.ident("a name after `as`")?.0)
        } else {
            None
        };
        items.push(SelectItem { expr, alias });
        if !p.eat(&Tok::Comma) {
            return Ok(items);
        }
    }
}

fn granularity(p: &mut Parser) -> Result<(Granularity, Pos), ParseError> {
    let (word, pos) = p.ident("a granularity (sec, min, hour, day, month, year)")?;
    word.parse::<Granularity>()
        .map(|g| (g, pos))
        .map_err(|m| ParseError::at(pos, m))
}

fn parse_granularities(p: &mut Parser) -> Result<Vec<Granularity>, ParseError> {
    let (first, first_pos) = granularity(p)?;
    let mut out = vec![first];
    if p.eat(&Tok::Ellipsis) {
        let (last, _) = granularity(p)?;
        if last < first {
            return Err(ParseError::at(
                first_pos,
                format!(
                    "range `{first}...{last}` runs backwards (write the finer granularity first)"
                ),
            ));
        }
        out = Granularity::ALL
            .into_iter()
            .filter(|g| (first..=last).contains(g))
            .collect();
    } else {
        while p.eat(&Tok::Comma) {
            out.push(granularity(p)?.0);
        }
        out.sort();
        out.dedup();
    }
    Ok(out)
}

fn partition_annotation(a: &Annotation) -> Result<bool, ParseError> {
    match a.elements.as_slice() {
        [] => Ok(true),
        [Element::Pair { key, value, pos }]
            if key
                .as_deref()
                .is_none_or(|k| k.eq_ignore_ascii_case("enable")) =>
        {
            parse_bool(value, *pos, "@PartitionById(enable=…)")
        }
        _ => Err(ParseError::at(
            a.pos,
            "@PartitionById takes only enable='true' or enable='false'",
        )),
    }
}

fn parse_bool(value: &str, pos: Pos, what: &str) -> Result<bool, ParseError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ParseError::at(
            pos,
            format!("{what} must be 'true' or 'false', not '{value}'"),
        )),
    }
}

/// Siddhi's default retention for a granularity: `None` keeps everything.
fn default_retention(g: Granularity) -> Option<Duration> {
    const HOUR: u64 = 3_600;
    const DAY: u64 = 24 * HOUR;
    match g {
        Granularity::Seconds => Some(Duration::from_secs(120)),
        Granularity::Minutes => Some(Duration::from_secs(24 * HOUR)),
        Granularity::Hours => Some(Duration::from_secs(30 * DAY)),
        Granularity::Days => Some(Duration::from_secs(365 * DAY)),
        Granularity::Months | Granularity::Years => None,
    }
}

fn purge_annotation(a: &Annotation, granularities: &[Granularity]) -> Result<Purge, ParseError> {
    let mut enabled = true;
    let mut interval = Duration::from_secs(15 * 60);
    let mut retention: Vec<(Granularity, Option<Duration>)> = granularities
        .iter()
        .map(|g| (*g, default_retention(*g)))
        .collect();
    let mut seen = Vec::new();
    for e in &a.elements {
        match e {
            Element::Pair {
                key: Some(k),
                value,
                pos,
            } if k.eq_ignore_ascii_case("enable") => {
                enabled = parse_bool(value, *pos, "@purge(enable=…)")?;
            }
            Element::Pair {
                key: Some(k),
                value,
                pos,
            } if k.eq_ignore_ascii_case("interval") => {
                interval = parse_duration(value).map_err(|m| ParseError::at(*pos, m))?;
                if interval.is_zero() {
                    return Err(ParseError::at(*pos, "@purge interval must be positive"));
                }
            }
            Element::Nested(r) if r.is("retentionPeriod") => {
                for re in &r.elements {
                    let Element::Pair {
                        key: Some(k),
                        value,
                        pos,
                    } = re
                    else {
                        return Err(ParseError::at(
                            r.pos,
                            "@retentionPeriod takes granularity='duration' pairs, like sec='120 sec'",
                        ));
                    };
                    let g: Granularity = k.parse().map_err(|m: String| ParseError::at(*pos, m))?;
                    if seen.contains(&g) {
                        return Err(ParseError::at(*pos, format!("duplicate retention for {g}")));
                    }
                    seen.push(g);
                    let period = if value.trim().eq_ignore_ascii_case("all") {
                        None
                    } else {
                        let d = parse_duration(value).map_err(|m| ParseError::at(*pos, m))?;
                        if d.is_zero() {
                            return Err(ParseError::at(
                                *pos,
                                "a retention period must be positive (or 'all')",
                            ));
                        }
                        Some(d)
                    };
                    // A granularity the aggregation does not keep has nothing to purge.
                    if let Some(slot) = retention.iter_mut().find(|(rg, _)| *rg == g) {
                        slot.1 = period;
                    }
                }
            }
            Element::Pair { pos, .. } => {
                return Err(ParseError::at(
                    *pos,
                    "@purge takes enable=…, interval=… and @retentionPeriod(…)",
                ));
            }
            Element::Nested(n) => {
                return Err(ParseError::at(
                    n.pos,
                    format!(
                        "unexpected {} inside @purge (expected @retentionPeriod)",
                        n.display_name()
                    ),
                ));
            }
        }
    }
    Ok(Purge {
        enabled,
        interval,
        retention,
    })
}

/// Parses a Siddhi duration such as `10 sec`, `24 hours`, `1 year` (a month is 30 days and a
/// year 365 days, as Siddhi counts them).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("bad duration '{text}' (expected like '10 sec', '24 hours', '1 year')");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millisec" | "millisecond" | "milliseconds" | "millis" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "week" | "weeks" => 7 * 86_400_000,
        "month" | "months" => 30 * 86_400_000,
        "year" | "years" => 365 * 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(bad)
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Longest identifier PostgreSQL keeps (MySQL allows 64).
const MAX_IDENT: usize = 63;

fn check(raw: RawApp) -> Result<App, ParseError> {
    let name = raw.name.ok_or_else(|| {
        ParseError::at(
            Pos::new(1, 1),
            "missing @app:name('…') (the name store queries use)",
        )
    })?;
    for (i, s) in raw.streams.iter().enumerate() {
        if raw.streams[..i]
            .iter()
            .any(|o| o.schema.name == s.schema.name)
        {
            return Err(ParseError::at(
                s.pos,
                format!("stream `{}` is defined twice", s.schema.name),
            ));
        }
        for (j, a) in s.schema.attributes.iter().enumerate() {
            if s.schema.attributes[..j].iter().any(|o| o.name == a.name) {
                return Err(ParseError::at(
                    s.attr_pos[j],
                    format!(
                        "attribute `{}` appears twice in stream `{}`",
                        a.name, s.schema.name
                    ),
                ));
            }
        }
    }
    if raw.aggregations.is_empty() {
        return Err(ParseError::at(raw.end, "the app defines no aggregation"));
    }
    let streams: Vec<StreamSchema> = raw.streams.into_iter().map(|s| s.schema).collect();
    let mut aggregations: Vec<AggregationDef> = Vec::new();
    for agg in raw.aggregations {
        if let Some(prev) = aggregations
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(&agg.def.name))
        {
            return Err(ParseError::at(
                agg.name_pos,
                format!(
                    "aggregation `{}` is defined twice (as `{}` before; table names ignore case)",
                    agg.def.name, prev.name
                ),
            ));
        }
        if streams.iter().any(|s| s.name == agg.def.name) {
            return Err(ParseError::at(
                agg.name_pos,
                format!("`{}` is already a stream name", agg.def.name),
            ));
        }
        check_aggregation(&streams, &agg)?;
        aggregations.push(agg.def);
    }
    Ok(App {
        name,
        streams,
        aggregations,
    })
}

fn is_sql_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_aggregation(streams: &[StreamSchema], agg: &RawAgg) -> Result<(), ParseError> {
    let def = &agg.def;
    let Some(stream) = streams.iter().find(|s| s.name == def.stream) else {
        let known: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
        return Err(ParseError::at(
            agg.stream_pos,
            format!(
                "unknown stream `{}` (defined: {})",
                def.stream,
                list(&known)
            ),
        ));
    };
    for g in &def.granularities {
        let table = g.table_name(&def.name);
        if !is_sql_identifier(&table) || table.len() > MAX_IDENT {
            return Err(ParseError::at(
                agg.name_pos,
                format!(
                    "aggregation name `{}` does not make a valid table name `{table}` (letters, digits, \
                     underscores, at most {MAX_IDENT} characters)",
                    def.name
                ),
            ));
        }
    }
    let resolve = |name: &str, pos: Pos| -> Result<AttrType, ParseError> {
        stream
            .attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ty)
            .ok_or_else(|| {
                let known: Vec<&str> = stream.attributes.iter().map(|a| a.name.as_str()).collect();
                ParseError::at(
                    pos,
                    format!(
                        "unknown attribute `{name}` in stream `{}` (attributes: {})",
                        stream.name,
                        list(&known)
                    ),
                )
            })
    };
    if let Some(f) = &def.filter {
        match infer(f, &resolve, Calls::Forbidden("a filter cannot aggregate"))? {
            None | Some(AttrType::Bool) => {}
            Some(t) => {
                return Err(ParseError::at(
                    f.pos,
                    format!("the filter must be a condition, `{f}` is {t}"),
                ));
            }
        }
    }
    let mut names: Vec<String> = Vec::new();
    for item in &def.select {
        let e = &item.expr;
        let is_call = matches!(e.kind, ExprKind::Call(..));
        let calls = if is_call {
            Calls::Allowed
        } else {
            Calls::Forbidden(
                "an aggregate function must be a whole select item, like `sum(x) as total`",
            )
        };
        let ty = infer(e, &resolve, calls)?;
        if item.alias.is_none() && e.as_attribute().is_none() {
            return Err(ParseError::at(
                e.pos,
                format!("`{e}` needs a name: write `{e} as <name>`"),
            ));
        }
        if ty.is_none() {
            return Err(ParseError::at(
                e.pos,
                format!("cannot tell the type of `{e}`"),
            ));
        }
        let name = item.name();
        if name.eq_ignore_ascii_case("AGG_TIMESTAMP") {
            return Err(ParseError::at(
                e.pos,
                "`AGG_TIMESTAMP` is reserved for the bucket start store queries read",
            ));
        }
        if names.contains(&name) {
            return Err(ParseError::at(
                e.pos,
                format!("duplicate output name `{name}`"),
            ));
        }
        names.push(name);
    }
    for (i, (g, pos)) in def.group_by.iter().zip(&agg.group_by_pos).enumerate() {
        resolve(g, *pos)?;
        if def.group_by[..i].contains(g) {
            return Err(ParseError::at(
                *pos,
                format!("`{g}` appears twice in group by"),
            ));
        }
    }
    if let (Some(by), Some(pos)) = (&def.aggregate_by, agg.aggregate_by_pos) {
        let ty = resolve(by, pos)?;
        if ty != AttrType::Long {
            return Err(ParseError::at(
                pos,
                format!("aggregate by needs a long attribute (epoch milliseconds), `{by}` is {ty}"),
            ));
        }
    }
    // The tables this implies: every column name distinct (ignoring case, as SQL does) and short
    // enough for every backend.
    let layout = crate::engine::layout_for(stream, def, false);
    let columns = crate::engine::physical_columns(&layout);
    for (i, c) in columns.iter().enumerate() {
        if c.len() > MAX_IDENT {
            return Err(ParseError::at(
                def.pos,
                format!(
                    "column `{c}` of aggregation `{}` is longer than {MAX_IDENT} characters; use a shorter name",
                    def.name
                ),
            ));
        }
        if let Some(other) = columns[..i].iter().find(|o| o.eq_ignore_ascii_case(c)) {
            return Err(ParseError::at(
                def.pos,
                format!(
                    "aggregation `{}` would have two columns named `{other}` and `{c}` (names ignore case in SQL); rename one",
                    def.name
                ),
            ));
        }
    }
    Ok(())
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests;
