//! Siddhi expressions: the syntax tree, its parser (shared by apps and store queries), its
//! rendering back to text, and type inference following Siddhi's rules.
//!
//! Precedence, loosest first: `or`, `and`, `not`, comparisons (`==` `!=` `<` `<=` `>` `>=`,
//! `is null`), `+ -`, `* / %`, unary `-`, then literals, attributes, calls and parentheses.

use std::fmt;

use shardtally_publisher::protocol::{AttrType, Value};

use super::error::{ParseError, Pos};
use super::lexer::Tok;
use super::parser::{MAX_DEPTH, MAX_OPERATORS, Parser};

/// An expression with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the expression is.
    pub kind: ExprKind,
    /// Where it starts in the source.
    pub pos: Pos,
}

/// The shape of an [`Expr`].
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A constant: number, string, `true`/`false`, `null`.
    Literal(Value),
    /// An attribute by name.
    Attribute(String),
    /// `-x` or `not x`.
    Unary(UnaryOp, Box<Expr>),
    /// `a op b`.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `x is null`.
    IsNull(Box<Expr>),
    /// An aggregate function call: `count()`, `sum(x)`, `avg(x)`, `min(x)`, `max(x)`.
    Call(AggFunc, Vec<Expr>),
}

/// A prefix operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// Arithmetic negation `-`.
    Neg,
    /// Logical `not`.
    Not,
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (integer division for int and long, as in Siddhi)
    Div,
    /// `%`
    Mod,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `and`
    And,
    /// `or`
    Or,
}

impl BinaryOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }

    fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => 4,
            BinaryOp::Add | BinaryOp::Sub => 5,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => 6,
        }
    }

    /// Whether this is `+ - * / %`.
    pub fn is_arithmetic(self) -> bool {
        matches!(
            self,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod
        )
    }

    /// Whether this is a comparison.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggFunc {
    /// `count()`: number of events (rows in a store query).
    Count,
    /// `sum(x)`.
    Sum,
    /// `avg(x)`.
    Avg,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
}

impl AggFunc {
    /// The function's name.
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Avg => "avg",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
        }
    }

    fn from_name(name: &str) -> Option<AggFunc> {
        Some(match name.to_ascii_lowercase().as_str() {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            _ => return None,
        })
    }

    /// The result type over an argument of type `arg` (`None` for `count()`), following Siddhi:
    /// count → long, sum of int/long → long, sum of float/double → double, avg → double,
    /// min/max keep the argument type.
    pub fn result_type(self, arg: Option<AttrType>) -> AttrType {
        match (self, arg) {
            (AggFunc::Count, _) => AttrType::Long,
            (AggFunc::Avg, _) => AttrType::Double,
            (AggFunc::Sum, Some(AttrType::Float | AttrType::Double)) => AttrType::Double,
            (AggFunc::Sum, _) => AttrType::Long,
            (AggFunc::Min | AggFunc::Max, Some(t)) => t,
            (AggFunc::Min | AggFunc::Max, None) => AttrType::Double,
        }
    }
}

/// Words that end an expression rather than name an attribute.
const RESERVED: &[&str] = &[
    "select",
    "from",
    "group",
    "by",
    "having",
    "order",
    "limit",
    "offset",
    "as",
    "and",
    "or",
    "not",
    "within",
    "per",
    "on",
    "aggregate",
    "every",
    "define",
    "is",
    "insert",
    "asc",
    "desc",
];

impl Expr {
    /// Builds an expression.
    pub fn new(kind: ExprKind, pos: Pos) -> Expr {
        Expr { kind, pos }
    }

    /// The attribute name when the expression is a bare attribute.
    pub fn as_attribute(&self) -> Option<&str> {
        match &self.kind {
            ExprKind::Attribute(name) => Some(name),
            _ => None,
        }
    }

    /// Whether any aggregate call occurs in the expression.
    pub fn contains_call(&self) -> bool {
        let mut found = false;
        self.walk(&mut |e| found |= matches!(e.kind, ExprKind::Call(..)));
        found
    }

    /// Visits this expression and every sub-expression, parents first.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match &self.kind {
            ExprKind::Literal(_) | ExprKind::Attribute(_) => {}
            ExprKind::Unary(_, e) | ExprKind::IsNull(e) => e.walk(f),
            ExprKind::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            ExprKind::Call(_, args) => args.iter().for_each(|a| a.walk(f)),
        }
    }

    fn precedence(&self) -> u8 {
        match &self.kind {
            ExprKind::Binary(op, ..) => op.precedence(),
            ExprKind::Unary(UnaryOp::Not, _) => 3,
            ExprKind::IsNull(_) => 4,
            _ => 9,
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let child = |f: &mut fmt::Formatter<'_>, e: &Expr, min: u8| {
            if e.precedence() < min {
                write!(f, "({e})")
            } else {
                write!(f, "{e}")
            }
        };
        match &self.kind {
            ExprKind::Literal(v) => write_literal(f, v),
            ExprKind::Attribute(name) => f.write_str(name),
            ExprKind::Unary(UnaryOp::Neg, e) => {
                let inner = if e.precedence() < 9 {
                    format!("({e})")
                } else {
                    e.to_string()
                };
                // `--` would start a comment: keep a nested minus (or a negative number) apart.
                if inner.starts_with('-') {
                    write!(f, "- {inner}")
                } else {
                    write!(f, "-{inner}")
                }
            }
            ExprKind::Unary(UnaryOp::Not, e) => {
                f.write_str("not ")?;
                child(f, e, 3)
            }
            ExprKind::IsNull(e) => {
                child(f, e, 5)?;
                f.write_str(" is null")
            }
            ExprKind::Binary(op, a, b) => {
                let p = op.precedence();
                child(f, a, p)?;
                write!(f, " {} ", op.symbol())?;
                child(f, b, p + 1)
            }
            ExprKind::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

fn write_literal(f: &mut fmt::Formatter<'_>, v: &Value) -> fmt::Result {
    match v {
        Value::Null => f.write_str("null"),
        Value::String(s) if s.contains('\'') && !s.contains('"') => write!(f, "\"{s}\""),
        Value::String(s) if s.contains('\'') => write!(f, "\"\"\"{s}\"\"\""),
        Value::String(s) => write!(f, "'{s}'"),
        Value::Int(v) => write!(f, "{v}"),
        Value::Long(v) => write!(f, "{v}L"),
        Value::Float(v) => write!(f, "{v:?}f"),
        Value::Double(v) => write!(f, "{v:?}"),
        Value::Bool(v) => write!(f, "{v}"),
    }
}

/// Counts one more operator of the expression being parsed; past [`MAX_OPERATORS`], an error at
/// `pos` (the expression's start).
fn count_operator(p: &mut Parser, pos: Pos) -> Result<(), ParseError> {
    p.operators += 1;
    if p.operators > MAX_OPERATORS {
        return Err(ParseError::at(
            pos,
            format!("expression has more than {MAX_OPERATORS} operators"),
        ));
    }
    Ok(())
}

/// Parses one expression at the cursor.
pub(crate) fn parse_expr(p: &mut Parser) -> Result<Expr, ParseError> {
    if p.depth == 0 {
        p.operators = 0;
    }
    p.depth += 1;
    if p.depth > MAX_DEPTH {
        return Err(ParseError::at(
            p.pos(),
            format!("expression nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let r = parse_or(p);
    p.depth -= 1;
    r
}

fn binary(p: &mut Parser, op: BinaryOp, a: Expr, b: Expr) -> Result<Expr, ParseError> {
    count_operator(p, a.pos)?;
    let pos = a.pos;
    Ok(Expr::new(
        ExprKind::Binary(op, Box::new(a), Box::new(b)),
        pos,
    ))
}

fn parse_or(p: &mut Parser) -> Result<Expr, ParseError> {
    let mut e = parse_and(p)?;
    while p.eat_kw("or") {
        let rhs = parse_and(p)?;
        e = binary(p, BinaryOp::Or, e, rhs)?;
    }
    Ok(e)
}

fn parse_and(p: &mut Parser) -> Result<Expr, ParseError> {
    let mut e = parse_not(p)?;
    while p.eat_kw("and") {
        let rhs = parse_not(p)?;
        e = binary(p, BinaryOp::And, e, rhs)?;
    }
    Ok(e)
}

fn parse_not(p: &mut Parser) -> Result<Expr, ParseError> {
    if p.at_kw("not") {
        let pos = p.bump().pos;
        p.depth += 1;
        if p.depth > MAX_DEPTH {
            return Err(ParseError::at(
                pos,
                format!("expression nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let inner = parse_not(p);
        p.depth -= 1;
        return Ok(Expr::new(
            ExprKind::Unary(UnaryOp::Not, Box::new(inner?)),
            pos,
        ));
    }
    parse_comparison(p)
}

fn parse_comparison(p: &mut Parser) -> Result<Expr, ParseError> {
    let mut e = parse_additive(p)?;
    loop {
        let op = match p.peek().tok {
            Tok::EqEq => BinaryOp::Eq,
            Tok::Ne => BinaryOp::Ne,
            Tok::Lt => BinaryOp::Lt,
            Tok::Le => BinaryOp::Le,
            Tok::Gt => BinaryOp::Gt,
            Tok::Ge => BinaryOp::Ge,
            Tok::Assign => return Err(ParseError::at(p.pos(), "use `==` to compare, not `=`")),
            _ if p.at_kw("is") => {
                p.bump();
                p.expect_kw("null")?;
                // A postfix chain (`x is null is null …`) nests as deep as it is long: counted
                // like a binary operator, or checking and evaluating it would recurse unbounded.
                count_operator(p, e.pos)?;
                let pos = e.pos;
                e = Expr::new(ExprKind::IsNull(Box::new(e)), pos);
                continue;
            }
            _ => return Ok(e),
        };
        p.bump();
        let rhs = parse_additive(p)?;
        e = binary(p, op, e, rhs)?;
    }
}

fn parse_additive(p: &mut Parser) -> Result<Expr, ParseError> {
    let mut e = parse_multiplicative(p)?;
    loop {
        let op = match p.peek().tok {
            Tok::Plus => BinaryOp::Add,
            Tok::Minus => BinaryOp::Sub,
            _ => return Ok(e),
        };
        p.bump();
        let rhs = parse_multiplicative(p)?;
        e = binary(p, op, e, rhs)?;
    }
}

fn parse_multiplicative(p: &mut Parser) -> Result<Expr, ParseError> {
    let mut e = parse_unary(p)?;
    loop {
        let op = match p.peek().tok {
            Tok::Star => BinaryOp::Mul,
            Tok::Slash => BinaryOp::Div,
            Tok::Percent => BinaryOp::Mod,
            _ => return Ok(e),
        };
        p.bump();
        let rhs = parse_unary(p)?;
        e = binary(p, op, e, rhs)?;
    }
}

fn parse_unary(p: &mut Parser) -> Result<Expr, ParseError> {
    if p.at(&Tok::Minus) {
        let pos = p.bump().pos;
        // A negative number is a literal (so `-2147483648` is an int).
        let lit = match p.peek().tok {
            Tok::Int(v) => Some(int_literal(-v)),
            Tok::Long(v) => Some(Value::Long(v.wrapping_neg())),
            Tok::Float(v) => Some(Value::Float(-v)),
            Tok::Double(v) => Some(Value::Double(-v)),
            _ => None,
        };
        if let Some(v) = lit {
            p.bump();
            return Ok(Expr::new(ExprKind::Literal(v), pos));
        }
        p.depth += 1;
        if p.depth > MAX_DEPTH {
            return Err(ParseError::at(
                pos,
                format!("expression nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let inner = parse_unary(p);
        p.depth -= 1;
        return Ok(Expr::new(
            ExprKind::Unary(UnaryOp::Neg, Box::new(inner?)),
            pos,
        ));
    }
    parse_primary(p)
}

fn int_literal(v: i64) -> Value {
    i32::try_from(v).map_or(Value::Long(v), Value::Int)
}

fn parse_primary(p: &mut Parser) -> Result<Expr, ParseError> {
    let t = p.peek().clone();
    let lit = |v: Value| Ok(Expr::new(ExprKind::Literal(v), t.pos));
    match t.tok {
        Tok::Int(v) => {
            p.bump();
            lit(int_literal(v))
        }
        Tok::Long(v) => {
            p.bump();
            lit(Value::Long(v))
        }
        Tok::Float(v) => {
            p.bump();
            lit(Value::Float(v))
        }
        Tok::Double(v) => {
            p.bump();
            lit(Value::Double(v))
        }
        Tok::Str(s) => {
            p.bump();
            lit(Value::String(s))
        }
        Tok::LParen => {
            p.bump();
            let e = parse_expr(p)?;
            p.expect(&Tok::RParen, "`)`")?;
            Ok(e)
        }
        Tok::Ident(name) => {
            if name.eq_ignore_ascii_case("true") {
                p.bump();
                return lit(Value::Bool(true));
            }
            if name.eq_ignore_ascii_case("false") {
                p.bump();
                return lit(Value::Bool(false));
            }
            if name.eq_ignore_ascii_case("null") {
                p.bump();
                return lit(Value::Null);
            }
            if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
                return Err(p.unexpected("an expression"));
            }
            p.bump();
            if p.at(&Tok::LParen) {
                return parse_call(p, &name, t.pos);
            }
            if p.at(&Tok::Dot) || p.at(&Tok::Colon) {
                return Err(ParseError::at(
                    p.pos(),
                    format!(
                        "qualified names and namespaced functions are not supported (after `{name}`)"
                    ),
                ));
            }
            Ok(Expr::new(ExprKind::Attribute(name), t.pos))
        }
        _ => Err(p.unexpected("an expression")),
    }
}

fn parse_call(p: &mut Parser, name: &str, pos: Pos) -> Result<Expr, ParseError> {
    let Some(func) = AggFunc::from_name(name) else {
        return Err(ParseError::at(
            pos,
            format!("unknown function `{name}` (supported: count, sum, avg, min, max)"),
        ));
    };
    p.expect(&Tok::LParen, "`(`")?;
    let mut args = Vec::new();
    if !p.at(&Tok::RParen) {
        loop {
            args.push(parse_expr(p)?);
            if !p.eat(&Tok::Comma) {
                break;
            }
        }
    }
    p.expect(&Tok::RParen, "`)`")?;
    match (func, args.len()) {
        (AggFunc::Count, 0) => {}
        (AggFunc::Count, _) => return Err(ParseError::at(pos, "count() takes no argument")),
        (_, 1) => {}
        (f, n) => {
            return Err(ParseError::at(
                pos,
                format!("{}() takes exactly one argument, got {n}", f.name()),
            ));
        }
    }
    Ok(Expr::new(ExprKind::Call(func, args), pos))
}

/// Whether aggregate calls may appear in an expression being typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Calls {
    /// No calls: the message explains where they belong.
    Forbidden(&'static str),
    /// Calls allowed (not nested).
    Allowed,
}

/// Resolves an attribute name to its type, or an error (at the given position) naming it unknown.
pub(crate) type Resolver<'a> = dyn Fn(&str, Pos) -> Result<AttrType, ParseError> + 'a;

/// Infers the type of `e` following Siddhi: int op int → int, long involved → long, float
/// involved → float, double involved → double, comparisons and logic → bool. `None` is the type
/// of `null`, which fits anywhere.
pub(crate) fn infer(
    e: &Expr,
    resolve: &Resolver<'_>,
    calls: Calls,
) -> Result<Option<AttrType>, ParseError> {
    use AttrType::*;
    let err = |msg: std::string::String| Err(ParseError::at(e.pos, msg));
    match &e.kind {
        ExprKind::Literal(v) => Ok(v.attr_type()),
        ExprKind::Attribute(name) => resolve(name, e.pos).map(Some),
        ExprKind::Unary(UnaryOp::Neg, inner) => match infer(inner, resolve, calls)? {
            t @ (None | Some(Int | Long | Float | Double)) => Ok(t),
            Some(t) => err(format!("`-` needs a number, `{inner}` is {t}")),
        },
        ExprKind::Unary(UnaryOp::Not, inner) => match infer(inner, resolve, calls)? {
            None | Some(Bool) => Ok(Some(Bool)),
            Some(t) => err(format!("`not` needs a bool, `{inner}` is {t}")),
        },
        ExprKind::IsNull(inner) => {
            infer(inner, resolve, calls)?;
            Ok(Some(Bool))
        }
        ExprKind::Binary(op, a, b) => {
            let ta = infer(a, resolve, calls)?;
            let tb = infer(b, resolve, calls)?;
            let numeric = |t: Option<AttrType>| t.is_none_or(AttrType::is_numeric);
            if op.is_arithmetic() {
                if !numeric(ta) || !numeric(tb) {
                    let (bad, t) = if numeric(ta) { (b, tb) } else { (a, ta) };
                    return err(format!(
                        "`{}` needs numbers, `{bad}` is {}",
                        op.symbol(),
                        t.map_or("null", AttrType::keyword)
                    ));
                }
                return Ok(match (ta, tb) {
                    (None, t) | (t, None) => t,
                    (Some(x), Some(y)) => Some(promote(x, y)),
                });
            }
            if op.is_comparison() {
                let ok = match (ta, tb) {
                    (None, _) | (_, None) => true,
                    (Some(x), Some(y)) if x.is_numeric() && y.is_numeric() => true,
                    (Some(String), Some(String)) => true,
                    (Some(Bool), Some(Bool)) => matches!(op, BinaryOp::Eq | BinaryOp::Ne),
                    _ => false,
                };
                if !ok {
                    return err(format!(
                        "cannot compare {} with {} using `{}`",
                        ta.map_or("null", AttrType::keyword),
                        tb.map_or("null", AttrType::keyword),
                        op.symbol()
                    ));
                }
                return Ok(Some(Bool));
            }
            for (side, t) in [(a, ta), (b, tb)] {
                if !matches!(t, None | Some(Bool)) {
                    return Err(ParseError::at(
                        side.pos,
                        format!(
                            "`{}` needs bools, `{side}` is {}",
                            op.symbol(),
                            t.map_or("null", AttrType::keyword)
                        ),
                    ));
                }
            }
            Ok(Some(Bool))
        }
        ExprKind::Call(func, args) => {
            if let Calls::Forbidden(why) = calls {
                return err(format!("{}() is not allowed here: {why}", func.name()));
            }
            let inner = Calls::Forbidden("aggregate functions cannot be nested");
            let arg = match args.first() {
                Some(a) => {
                    let t = infer(a, resolve, inner)?;
                    match (func, t) {
                        (_, None) => {
                            return Err(ParseError::at(
                                a.pos,
                                format!("{}() of null", func.name()),
                            ));
                        }
                        (AggFunc::Sum | AggFunc::Avg | AggFunc::Min | AggFunc::Max, Some(t))
                            if !t.is_numeric() =>
                        {
                            return Err(ParseError::at(
                                a.pos,
                                format!("{}() needs a number, `{a}` is {t}", func.name()),
                            ));
                        }
                        (_, t) => t,
                    }
                }
                None => None,
            };
            Ok(Some(func.result_type(arg)))
        }
    }
}

/// The type of `a op b` for two numeric types.
pub(crate) fn promote(a: AttrType, b: AttrType) -> AttrType {
    use AttrType::*;
    if a == Double || b == Double {
        Double
    } else if a == Float || b == Float {
        Float
    } else if a == Long || b == Long {
        Long
    } else {
        Int
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Expr, ParseError> {
        let mut p = Parser::new(src)?;
        let e = parse_expr(&mut p)?;
        if !p.at(&Tok::Eof) {
            return Err(p.unexpected("end of expression"));
        }
        Ok(e)
    }

    fn types(name: &str, pos: Pos) -> Result<AttrType, ParseError> {
        Ok(match name {
            "i" => AttrType::Int,
            "l" => AttrType::Long,
            "f" => AttrType::Float,
            "d" => AttrType::Double,
            "s" => AttrType::String,
            "b" => AttrType::Bool,
            _ => return Err(ParseError::at(pos, format!("unknown attribute `{name}`"))),
        })
    }

    fn ty(src: &str) -> Result<Option<AttrType>, String> {
        let e = parse(src).map_err(|e| e.to_string())?;
        infer(&e, &types, Calls::Allowed).map_err(|e| e.to_string())
    }

    #[test]
    fn precedence_and_rendering() {
        let cases = [
            ("a + b * c", "a + b * c"),
            ("(a + b) * c", "(a + b) * c"),
            ("a - (b - c)", "a - (b - c)"),
            ("a - b - c", "a - b - c"),
            ("not a == b and c or d", "not a == b and c or d"),
            ("not (a or b)", "not (a or b)"),
            ("x is null or -y > 3", "x is null or -y > 3"),
            ("-(a + b)", "-(a + b)"),
            ("sum(price * quantity)", "sum(price * quantity)"),
            ("COUNT()", "count()"),
            ("'it''s'", "'it''s'"),
            ("\"it's\"", "\"it's\""),
            ("1 + 2L + 3.5 + 4f + true", "1 + 2L + 3.5 + 4.0f + true"),
            ("-2147483648", "-2147483648"),
        ];
        for (src, want) in cases {
            // `'it''s'` lexes as two strings side by side, which is not one expression.
            if src == "'it''s'" {
                assert!(parse(src).is_err());
                continue;
            }
            assert_eq!(parse(src).unwrap().to_string(), want, "{src}");
        }
        let e = parse("a + b * c").unwrap();
        let ExprKind::Binary(BinaryOp::Add, _, rhs) = &e.kind else {
            panic!("{e:?}")
        };
        assert!(matches!(rhs.kind, ExprKind::Binary(BinaryOp::Mul, ..)));
        assert_eq!(
            parse("-2147483648").unwrap().kind,
            ExprKind::Literal(Value::Int(i32::MIN))
        );
        assert_eq!(
            parse("2147483648").unwrap().kind,
            ExprKind::Literal(Value::Long(2_147_483_648))
        );
        assert_eq!(parse("not not b").unwrap().to_string(), "not not b");
    }

    #[test]
    fn infers_types_like_siddhi() {
        assert_eq!(ty("i * i"), Ok(Some(AttrType::Int)));
        assert_eq!(ty("i + l"), Ok(Some(AttrType::Long)));
        assert_eq!(ty("f * i"), Ok(Some(AttrType::Float)));
        assert_eq!(ty("f * d"), Ok(Some(AttrType::Double)));
        assert_eq!(ty("l % 7"), Ok(Some(AttrType::Long)));
        assert_eq!(ty("i > 2.5 and s == 'x'"), Ok(Some(AttrType::Bool)));
        assert_eq!(ty("sum(i)"), Ok(Some(AttrType::Long)));
        assert_eq!(ty("sum(f)"), Ok(Some(AttrType::Double)));
        assert_eq!(ty("avg(i)"), Ok(Some(AttrType::Double)));
        assert_eq!(ty("max(f)"), Ok(Some(AttrType::Float)));
        assert_eq!(ty("count()"), Ok(Some(AttrType::Long)));
        assert_eq!(ty("null"), Ok(None));
        assert_eq!(ty("i + null"), Ok(Some(AttrType::Int)));
        assert_eq!(
            ty("s + 1"),
            Err("line 1, column 1: `+` needs numbers, `s` is string".into())
        );
        assert_eq!(
            ty("b < b"),
            Err("line 1, column 1: cannot compare bool with bool using `<`".into())
        );
        assert_eq!(
            ty("i and b"),
            Err("line 1, column 1: `and` needs bools, `i` is int".into())
        );
        assert_eq!(
            ty("sum(s)"),
            Err("line 1, column 5: sum() needs a number, `s` is string".into())
        );
        assert_eq!(
            ty("sum(sum(i))"),
            Err(
                "line 1, column 5: sum() is not allowed here: aggregate functions cannot be nested"
                    .into()
            )
        );
        assert_eq!(
            ty("1 + zz"),
            Err("line 1, column 5: unknown attribute `zz`".into())
        );
    }

    proptest::proptest! {
        /// Rendering a parsed expression and parsing it again gives the same tree (positions
        /// aside), so names derived from expressions are stable.
        #[test]
        fn rendering_round_trips(words in proptest::collection::vec(proptest::sample::select(vec![
            "a", "b", "1", "2.5", "7L", "3f", "'s'", "\"t\"", "true", "null", "+", "-", "*", "/", "%",
            "==", "!=", "<", ">=", "and", "or", "not", "(", ")", "is null", "sum(", "count()", ",",
        ]), 1..14)) {
            let src = words.join(" ");
            if let Ok(e) = parse(&src) {
                let text = e.to_string();
                let again = parse(&text).unwrap_or_else(|err| panic!("{src} -> {text}: {err}"));
                proptest::prop_assert_eq!(again.to_string(), text.clone());
                proptest::prop_assert_eq!(strip(&again), strip(&e), "{} -> {}", src, text);
            }
        }
    }

    /// The tree without positions.
    fn strip(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Literal(v) => format!("{v:?}"),
            ExprKind::Attribute(a) => a.clone(),
            ExprKind::Unary(op, x) => format!("{op:?}({})", strip(x)),
            ExprKind::IsNull(x) => format!("IsNull({})", strip(x)),
            ExprKind::Binary(op, a, b) => format!("{op:?}({}, {})", strip(a), strip(b)),
            ExprKind::Call(f, args) => format!(
                "{f:?}({})",
                args.iter().map(strip).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        let e = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            e("a +"),
            "line 1, column 4: expected an expression, found end of input"
        );
        assert_eq!(
            e("(a"),
            "line 1, column 3: expected `)`, found end of input"
        );
        assert_eq!(e("a = b"), "line 1, column 3: use `==` to compare, not `=`");
        assert_eq!(
            e("foo(x)"),
            "line 1, column 1: unknown function `foo` (supported: count, sum, avg, min, max)"
        );
        assert_eq!(e("count(x)"), "line 1, column 1: count() takes no argument");
        assert_eq!(
            e("sum()"),
            "line 1, column 1: sum() takes exactly one argument, got 0"
        );
        assert_eq!(
            e("s.x"),
            "line 1, column 2: qualified names and namespaced functions are not supported (after `s`)"
        );
        assert_eq!(e("x is 3"), "line 1, column 6: expected `null`, found `3`");
        let deep = format!("{}x{}", "(".repeat(100), ")".repeat(100));
        assert!(e(&deep).contains("nested deeper than 64"));
        let negs = format!("{}x", "- ".repeat(100));
        assert!(e(&negs).contains("nested deeper than 64"));
        let nots = format!("{}x", "not ".repeat(100));
        assert!(e(&nots).contains("nested deeper than 64"));
        let chain = format!("x{}", " + x".repeat(100_000));
        assert_eq!(
            e(&chain),
            "line 1, column 1: expression has more than 256 operators"
        );
        let mixed = format!("x{}", " * x + x".repeat(200));
        assert_eq!(
            e(&mixed),
            "line 1, column 1: expression has more than 256 operators"
        );
        assert!(parse(&format!("x{}", " + x".repeat(256))).is_ok());
        let is_nulls = format!("x{}", " is null".repeat(10_000));
        assert_eq!(
            e(&is_nulls),
            "line 1, column 1: expression has more than 256 operators"
        );
        assert!(parse(&format!("x{}", " is null".repeat(256))).is_ok());
    }
}
