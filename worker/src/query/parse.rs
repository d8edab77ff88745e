//! Parsing Siddhi store queries on aggregations:
//!
//! ```text
//! from Agg [on cond]
//! within START, END | within "2026-11-** **:**:**"
//! per "hours"
//! [select * | select expr [as name], …] [group by attr, …] [having cond]
//! [order by attr [asc|desc], …] [limit n] [offset n] [;]
//! ```

use crate::bucket::Granularity;
use crate::siddhi::parser::Parser;
use crate::siddhi::{Expr, ParseError, Pos, SelectItem, Tok, parse_expr, parse_select_items};

use super::within::period;

/// A parsed store query.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreQuery {
    /// The aggregation queried (`from …`).
    pub aggregation: String,
    /// Where the aggregation's name is.
    pub aggregation_pos: Pos,
    /// The `on` condition, over the aggregation's output attributes and `AGG_TIMESTAMP`.
    pub on: Option<Expr>,
    /// First bucket start included (epoch ms).
    pub start_ms: i64,
    /// First bucket start excluded (epoch ms).
    pub end_ms: i64,
    /// The granularity read (`per "hours"`).
    pub per: Granularity,
    /// Where the `per` value is.
    pub per_pos: Pos,
    /// The select items; `None` for `select *` or no select (`AGG_TIMESTAMP`, then the
    /// aggregation's outputs).
    pub select: Option<Vec<SelectItem>>,
    /// `group by` attributes.
    pub group_by: Vec<AttrRef>,
    /// The `having` condition, over the selected names (then the input attributes).
    pub having: Option<Expr>,
    /// `order by` keys, in order.
    pub order_by: Vec<OrderBy>,
    /// `limit n`.
    pub limit: Option<u64>,
    /// `offset n`.
    pub offset: Option<u64>,
}

/// An attribute named in `group by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrRef {
    /// Attribute name.
    pub name: String,
    /// Where it is written.
    pub pos: Pos,
}

/// One `order by` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBy {
    /// A selected name or an input attribute.
    pub attribute: String,
    /// `desc`.
    pub descending: bool,
    /// Where it is written.
    pub pos: Pos,
}

impl StoreQuery {
    /// Parses a store query. Errors carry the line and column.
    pub fn parse(text: &str) -> Result<StoreQuery, ParseError> {
        let mut p = Parser::new(text)?;
        p.expect_kw("from")?;
        let (aggregation, aggregation_pos) = p.ident("an aggregation name")?;
        let on = if p.eat_kw("on") {
            Some(parse_expr(&mut p)?)
        } else {
            None
        };
        let within_pos = p.expect_kw("within")?;
        let (start_ms, end_ms) = within(&mut p, within_pos)?;
        p.expect_kw("per")?;
        let per_pos = p.pos();
        let per = match p.peek().tok.clone() {
            Tok::Str(s) => {
                p.bump();
                s.parse::<Granularity>()
                    .map_err(|m| ParseError::at(per_pos, m))?
            }
            _ => return Err(p.unexpected("a quoted granularity like \"hours\"")),
        };
        let select = if p.eat_kw("select") {
            if p.eat(&Tok::Star) {
                None
            } else {
                Some(parse_select_items(&mut p)?)
            }
        } else {
            None
        };
        let mut group_by = Vec::new();
        if p.at_kw("group") {
            p.bump();
            p.expect_kw("by")?;
            loop {
                let (name, pos) = p.ident("a group-by attribute")?;
                group_by.push(AttrRef { name, pos });
                if !p.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        let having = if p.eat_kw("having") {
            Some(parse_expr(&mut p)?)
        } else {
            None
        };
        let mut order_by = Vec::new();
        if p.at_kw("order") {
            p.bump();
            p.expect_kw("by")?;
            loop {
                let (attribute, pos) = p.ident("an order-by attribute")?;
                let descending = if p.eat_kw("desc") {
                    true
                } else {
                    p.eat_kw("asc");
                    false
                };
                order_by.push(OrderBy {
                    attribute,
                    descending,
                    pos,
                });
                if !p.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        let limit = if p.eat_kw("limit") {
            Some(count(&mut p, "limit")?)
        } else {
            None
        };
        let offset = if p.eat_kw("offset") {
            Some(count(&mut p, "offset")?)
        } else {
            None
        };
        p.eat(&Tok::Semi);
        if !p.at(&Tok::Eof) {
            return Err(p.unexpected("end of query"));
        }
        Ok(StoreQuery {
            aggregation,
            aggregation_pos,
            on,
            start_ms,
            end_ms,
            per,
            per_pos,
            select,
            group_by,
            having,
            order_by,
            limit,
            offset,
        })
    }
}

fn count(p: &mut Parser, what: &str) -> Result<u64, ParseError> {
    match p.peek().tok {
        Tok::Int(v) | Tok::Long(v) if v >= 0 => {
            p.bump();
            Ok(v.unsigned_abs())
        }
        _ => Err(p.unexpected(&format!("a non-negative whole number after `{what}`"))),
    }
}

/// One bound of `within A, B`: epoch ms, or a time string without wildcards.
fn bound(p: &mut Parser) -> Result<(i64, Pos), ParseError> {
    let pos = p.pos();
    let negative = p.eat(&Tok::Minus);
    match p.peek().tok.clone() {
        Tok::Int(v) | Tok::Long(v) => {
            p.bump();
            Ok((if negative { v.wrapping_neg() } else { v }, pos))
        }
        Tok::Str(s) if !negative => {
            p.bump();
            if s.contains('*') {
                return Err(ParseError::at(
                    pos,
                    "`**` wildcards are only allowed in a single within string (`within \"2026-11-** **:**:**\"`)",
                ));
            }
            Ok((period(&s).map_err(|m| ParseError::at(pos, m))?.0, pos))
        }
        _ => Err(p.unexpected("a time: epoch milliseconds or \"yyyy-MM-dd HH:mm:ss\"")),
    }
}

fn within(p: &mut Parser, within_pos: Pos) -> Result<(i64, i64), ParseError> {
    if let Tok::Str(s) = p.peek().tok.clone()
        && !matches!(p.peek_nth(1).tok, Tok::Comma)
    {
        let pos = p.bump().pos;
        return period(&s).map_err(|m| ParseError::at(pos, m));
    }
    let (start, start_pos) = bound(p)?;
    if !p.eat(&Tok::Comma) {
        return Err(ParseError::at(
            start_pos,
            "within needs a start and an end (`within START, END`) or one time pattern \
             (`within \"2026-11-** **:**:**\"`)",
        ));
    }
    let (end, _) = bound(p)?;
    if start >= end {
        return Err(ParseError::at(
            within_pos,
            format!("within start ({start}) must be before its end ({end})"),
        ));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> String {
        match StoreQuery::parse(q) {
            Ok(q) => panic!("parsed {q:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_every_clause() {
        let q = StoreQuery::parse(
            "from GeoLocationAgg on country == 'Italy' and totalRequestCount > 10\n\
             within \"2026-11-20 10:00:00\", 1800000000000L per 'Hours'\n\
             select country, sum(totalRequestCount) as total group by country having total > 5\n\
             order by total desc, country asc, city limit 10 offset 2;",
        )
        .unwrap();
        assert_eq!(q.aggregation, "GeoLocationAgg");
        assert_eq!(q.aggregation_pos, Pos::new(1, 6));
        assert_eq!(
            q.on.as_ref().unwrap().to_string(),
            "country == 'Italy' and totalRequestCount > 10"
        );
        assert_eq!(q.start_ms, 1_795_168_800_000);
        assert_eq!(q.end_ms, 1_800_000_000_000);
        assert_eq!(q.per, Granularity::Hours);
        assert_eq!(q.per_pos, Pos::new(2, 50));
        let sel: Vec<String> = q
            .select
            .unwrap()
            .iter()
            .map(|s| format!("{} as {}", s.expr, s.name()))
            .collect();
        assert_eq!(
            sel,
            ["country as country", "sum(totalRequestCount) as total"]
        );
        assert_eq!(
            q.group_by,
            [AttrRef {
                name: "country".into(),
                pos: Pos::new(3, 58)
            }]
        );
        assert_eq!(q.having.unwrap().to_string(), "total > 5");
        assert_eq!(
            q.order_by,
            [
                OrderBy {
                    attribute: "total".into(),
                    descending: true,
                    pos: Pos::new(4, 10)
                },
                OrderBy {
                    attribute: "country".into(),
                    descending: false,
                    pos: Pos::new(4, 22)
                },
                OrderBy {
                    attribute: "city".into(),
                    descending: false,
                    pos: Pos::new(4, 35)
                },
            ]
        );
        assert_eq!((q.limit, q.offset), (Some(10), Some(2)));
    }

    #[test]
    fn parses_the_minimal_forms() {
        let q = StoreQuery::parse(
            "from stockAggregation within \"2017-06-** **:**:**\" per \"seconds\"",
        )
        .unwrap();
        assert_eq!(
            (q.start_ms, q.end_ms),
            (1_496_275_200_000, 1_498_867_200_000)
        );
        assert_eq!(q.select, None);
        assert!(
            q.group_by.is_empty() && q.order_by.is_empty() && q.having.is_none() && q.on.is_none()
        );
        let q =
            StoreQuery::parse("from A within 1496289951000L, 1496289952001 per \"sec\" select *")
                .unwrap();
        assert_eq!(
            (q.start_ms, q.end_ms, q.per),
            (1_496_289_951_000, 1_496_289_952_001, Granularity::Seconds)
        );
        assert_eq!(q.select, None);
        let q = StoreQuery::parse("from A within -1000, 0 per 'min'").unwrap();
        assert_eq!((q.start_ms, q.end_ms), (-1000, 0));
    }

    #[test]
    fn errors_match_siddhis_refusals() {
        assert_eq!(
            err("from A within \"2017-06-** **:**:**\" per 1000"),
            "line 1, column 41: expected a quoted granularity like \"hours\", found `1000`"
        );
        assert_eq!(
            err("from A within \"2017-06-02 00:00:00\", \"2017-06-01 00:00:00\" per \"hours\""),
            "line 1, column 8: within start (1496361600000) must be before its end (1496275200000)"
        );
        assert_eq!(
            err("from A within \"2017-06-** **:**:**:1000\" per \"hours\""),
            "line 1, column 15: bad time \"2017-06-** **:**:**:1000\": expected yyyy-MM-dd HH:mm:ss with an optional offset like +05:30, trailing fields may be ** (\"2026-11-** **:**:**\")"
        );
        assert_eq!(
            err("from A within \"2017-06-** 12:**:**\" per \"hours\""),
            "line 1, column 15: bad time \"2017-06-** 12:**:**\": only trailing fields can be ** (after a ** field, every field must be **)"
        );
        assert_eq!(
            err("from A within 1513578087000L per \"hours\""),
            "line 1, column 15: within needs a start and an end (`within START, END`) or one time pattern (`within \"2026-11-** **:**:**\"`)"
        );
        assert_eq!(
            err("from A within \"2017-12-18 11:51:27 +05:30\", 156 per \"hours\""),
            "line 1, column 8: within start (1513578087000) must be before its end (156)"
        );
        assert_eq!(
            err("from A within \"2017-06-** **:**:**\", 5 per \"hours\""),
            "line 1, column 15: `**` wildcards are only allowed in a single within string (`within \"2026-11-** **:**:**\"`)"
        );
        assert_eq!(
            err("from A within 1, 2 per \"weeks\""),
            "line 1, column 24: unknown granularity `weeks` (expected seconds, minutes, hours, days, months or years)"
        );
        assert_eq!(
            err("from A per \"hours\""),
            "line 1, column 8: expected `within`, found `per`"
        );
        assert_eq!(
            err("from A within 1, 2 per \"hours\" select a limit -1"),
            "line 1, column 47: expected a non-negative whole number after `limit`, found `-`"
        );
        assert_eq!(
            err("from A within 1, 2 per \"hours\" select a insert into B"),
            "line 1, column 41: expected end of query, found `insert`"
        );
        assert_eq!(
            err("select * from A"),
            "line 1, column 1: expected `from`, found `select`"
        );
        assert_eq!(
            err(""),
            "line 1, column 1: expected `from`, found end of input"
        );
    }
}
