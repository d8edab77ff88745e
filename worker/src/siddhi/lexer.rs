//! The Siddhi lexer shared by the app parser and the store-query parser.
//!
//! Produces tokens with their positions; skips whitespace, `-- line` and `/* block */` comments.
//! Keywords are plain identifiers here; parsers compare them case-insensitively, as Siddhi does.

use super::error::{ParseError, Pos};

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An identifier or keyword: `[A-Za-z_][A-Za-z0-9_]*`.
    Ident(String),
    /// An integer without suffix (an `int` when it fits, else a `long`).
    Int(i64),
    /// An integer with an `L` suffix.
    Long(i64),
    /// A number with an `f` suffix.
    Float(f32),
    /// A number with a fraction, an exponent or a `d` suffix.
    Double(f64),
    /// A quoted string (`'…'`, `"…"` or `"""…"""`), without its quotes.
    Str(String),
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `,`
    Comma,
    /// `;`
    Semi,
    /// `.`
    Dot,
    /// `...`
    Ellipsis,
    /// `@`
    At,
    /// `:`
    Colon,
    /// `=`
    Assign,
    /// `==`
    EqEq,
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
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `*`
    Star,
    /// `/`
    Slash,
    /// `%`
    Percent,
    /// End of input.
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(v) => format!("`{v}`"),
            Tok::Long(v) => format!("`{v}L`"),
            Tok::Float(v) => format!("`{v}f`"),
            Tok::Double(v) => format!("`{v}`"),
            Tok::Str(s) => {
                let short: String = s.chars().take(30).collect();
                if short.len() < s.len() {
                    format!("string \"{short}…\"")
                } else {
                    format!("string \"{short}\"")
                }
            }
            Tok::Eof => "end of input".to_owned(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Semi => ";",
            Tok::Dot => ".",
            Tok::Ellipsis => "...",
            Tok::At => "@",
            Tok::Colon => ":",
            Tok::Assign => "=",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            _ => "?",
        }
    }
}

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) pos: Pos,
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    rest: &'a str,
    line: u32,
    column: u32,
}

impl Cursor<'_> {
    fn pos(&self) -> Pos {
        Pos::new(self.line, self.column)
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.rest.chars().nth(n)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        self.rest = &self.rest[c.len_utf8()..];
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.column = 1;
        } else {
            self.column = self.column.saturating_add(1);
        }
        Some(c)
    }

    fn starts_with(&self, s: &str) -> bool {
        self.rest.starts_with(s)
    }
}

/// Splits `src` into tokens, ending with [`Tok::Eof`].
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut cur = Cursor {
        chars: src.chars().peekable(),
        rest: src,
        line: 1,
        column: 1,
    };
    let mut out = Vec::new();
    loop {
        skip_trivia(&mut cur)?;
        let pos = cur.pos();
        let Some(c) = cur.peek() else {
            out.push(Token { tok: Tok::Eof, pos });
            return Ok(out);
        };
        let tok = match c {
            'a'..='z' | 'A'..='Z' | '_' => {
                let mut s = String::new();
                while let Some(c) = cur.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        s.push(c);
                        cur.bump();
                    } else {
                        break;
                    }
                }
                Tok::Ident(s)
            }
            '0'..='9' => number(&mut cur, pos)?,
            '.' if cur.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => number(&mut cur, pos)?,
            '\'' | '"' => string(&mut cur, pos)?,
            _ => {
                cur.bump();
                match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    ',' => Tok::Comma,
                    ';' => Tok::Semi,
                    '@' => Tok::At,
                    ':' => Tok::Colon,
                    '+' => Tok::Plus,
                    '-' => Tok::Minus,
                    '*' => Tok::Star,
                    '/' => Tok::Slash,
                    '%' => Tok::Percent,
                    '.' => {
                        if cur.starts_with("..") {
                            cur.bump();
                            cur.bump();
                            Tok::Ellipsis
                        } else {
                            Tok::Dot
                        }
                    }
                    '=' => {
                        if cur.peek() == Some('=') {
                            cur.bump();
                            Tok::EqEq
                        } else {
                            Tok::Assign
                        }
                    }
                    '!' => {
                        if cur.peek() == Some('=') {
                            cur.bump();
                            Tok::Ne
                        } else {
                            return Err(ParseError::at(pos, "unexpected `!` (use `not` or `!=`)"));
                        }
                    }
                    '<' => {
                        if cur.peek() == Some('=') {
                            cur.bump();
                            Tok::Le
                        } else {
                            Tok::Lt
                        }
                    }
                    '>' => {
                        if cur.peek() == Some('=') {
                            cur.bump();
                            Tok::Ge
                        } else {
                            Tok::Gt
                        }
                    }
                    other => {
                        return Err(ParseError::at(
                            pos,
                            format!("unexpected character {other:?}"),
                        ));
                    }
                }
            }
        };
        out.push(Token { tok, pos });
    }
}

fn skip_trivia(cur: &mut Cursor<'_>) -> Result<(), ParseError> {
    loop {
        match cur.peek() {
            Some(c) if c.is_whitespace() => {
                cur.bump();
            }
            Some('-') if cur.starts_with("--") => {
                while let Some(c) = cur.peek() {
                    if c == '\n' {
                        break;
                    }
                    cur.bump();
                }
            }
            Some('/') if cur.starts_with("/*") => {
                let start = cur.pos();
                cur.bump();
                cur.bump();
                loop {
                    if cur.starts_with("*/") {
                        cur.bump();
                        cur.bump();
                        break;
                    }
                    if cur.bump().is_none() {
                        return Err(ParseError::at(start, "unterminated comment `/*`"));
                    }
                }
            }
            _ => return Ok(()),
        }
    }
}

fn number(cur: &mut Cursor<'_>, pos: Pos) -> Result<Tok, ParseError> {
    let mut text = String::new();
    let mut is_real = false;
    while let Some(c) = cur.peek() {
        if c.is_ascii_digit() {
            text.push(c);
            cur.bump();
        } else {
            break;
        }
    }
    // A fraction, but not the start of `...`.
    if cur.peek() == Some('.') && cur.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
        is_real = true;
        text.push('.');
        cur.bump();
        while let Some(c) = cur.peek() {
            if c.is_ascii_digit() {
                text.push(c);
                cur.bump();
            } else {
                break;
            }
        }
    }
    if matches!(cur.peek(), Some('e' | 'E')) {
        let digit_after = match cur.peek_at(1) {
            Some('+' | '-') => cur.peek_at(2).is_some_and(|c| c.is_ascii_digit()),
            Some(c) => c.is_ascii_digit(),
            None => false,
        };
        if digit_after {
            is_real = true;
            text.push('e');
            cur.bump();
            if let Some(sign @ ('+' | '-')) = cur.peek() {
                text.push(sign);
                cur.bump();
            }
            while let Some(c) = cur.peek() {
                if c.is_ascii_digit() {
                    text.push(c);
                    cur.bump();
                } else {
                    break;
                }
            }
        }
    }
    let suffix = match cur.peek() {
        Some(c @ ('L' | 'l' | 'F' | 'f' | 'D' | 'd')) => {
            cur.bump();
            Some(c.to_ascii_lowercase())
        }
        _ => None,
    };
    if let Some(c) = cur.peek()
        && (c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ParseError::at(
            pos,
            format!(
                "malformed number `{text}{}{c}…`",
                suffix.map(String::from).unwrap_or_default()
            ),
        ));
    }
    let bad = |what: &str| ParseError::at(pos, format!("{what} `{text}` is out of range"));
    Ok(match suffix {
        Some('l') => {
            if is_real {
                return Err(ParseError::at(
                    pos,
                    format!("a long cannot have a fraction: `{text}L`"),
                ));
            }
            Tok::Long(text.parse().map_err(|_| bad("long"))?)
        }
        Some('f') => {
            let v: f32 = text.parse().map_err(|_| bad("float"))?;
            if !v.is_finite() {
                return Err(bad("float"));
            }
            Tok::Float(v)
        }
        Some(_) => Tok::Double(
            finite(text.parse().map_err(|_| bad("double"))?).ok_or_else(|| bad("double"))?,
        ),
        None if is_real => Tok::Double(
            finite(text.parse().map_err(|_| bad("double"))?).ok_or_else(|| bad("double"))?,
        ),
        None => Tok::Int(text.parse().map_err(|_| bad("number"))?),
    })
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn string(cur: &mut Cursor<'_>, pos: Pos) -> Result<Tok, ParseError> {
    if cur.starts_with("\"\"\"") {
        cur.bump();
        cur.bump();
        cur.bump();
        let mut s = String::new();
        loop {
            if cur.starts_with("\"\"\"") {
                cur.bump();
                cur.bump();
                cur.bump();
                return Ok(Tok::Str(s));
            }
            match cur.bump() {
                Some(c) => s.push(c),
                None => return Err(ParseError::at(pos, "unterminated string `\"\"\"`")),
            }
        }
    }
    let Some(quote) = cur.bump() else {
        return Err(ParseError::at(pos, "expected a string"));
    };
    let mut s = String::new();
    loop {
        match cur.bump() {
            Some(c) if c == quote => return Ok(Tok::Str(s)),
            Some(c) => s.push(c),
            None => {
                return Err(ParseError::at(
                    pos,
                    format!("unterminated string (missing closing {quote})"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        lex(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn lexes_numbers_with_siddhi_suffixes() {
        assert_eq!(
            toks("1 2L 3.5 4f 5.25d 1e3 7l"),
            vec![
                Tok::Int(1),
                Tok::Long(2),
                Tok::Double(3.5),
                Tok::Float(4.0),
                Tok::Double(5.25),
                Tok::Double(1000.0),
                Tok::Long(7),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("sec...year"),
            vec![
                Tok::Ident("sec".into()),
                Tok::Ellipsis,
                Tok::Ident("year".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn lexes_strings_comments_and_positions() {
        let t = lex("-- c\n  /* x\n y */ 'a\"b' \"c'd\" \"\"\"e\"f\"\"\" == != <= >=").unwrap();
        assert_eq!(
            t[0],
            Token {
                tok: Tok::Str("a\"b".into()),
                pos: Pos::new(3, 7)
            }
        );
        assert_eq!(t[1].tok, Tok::Str("c'd".into()));
        assert_eq!(t[2].tok, Tok::Str("e\"f".into()));
        assert_eq!(
            t[3..].iter().map(|t| t.tok.clone()).collect::<Vec<_>>(),
            vec![Tok::EqEq, Tok::Ne, Tok::Le, Tok::Ge, Tok::Eof]
        );
    }

    #[test]
    fn reports_errors_with_positions() {
        assert_eq!(
            lex("a\n  'open").unwrap_err().to_string(),
            "line 2, column 3: unterminated string (missing closing ')"
        );
        assert_eq!(
            lex("/* never").unwrap_err().to_string(),
            "line 1, column 1: unterminated comment `/*`"
        );
        assert_eq!(
            lex("x # y").unwrap_err().to_string(),
            "line 1, column 3: unexpected character '#'"
        );
        assert_eq!(
            lex("99999999999999999999").unwrap_err().to_string(),
            "line 1, column 1: number `99999999999999999999` is out of range"
        );
        assert_eq!(
            lex("12abc").unwrap_err().to_string(),
            "line 1, column 1: malformed number `12a…`"
        );
        assert!(lex("1e999").is_err());
    }

    #[test]
    fn counts_columns_in_characters() {
        let t = lex("'€€' x").unwrap();
        assert_eq!(t[1].pos, Pos::new(1, 6));
    }
}
