//! A token cursor with the small helpers both parsers use.

use super::error::{ParseError, Pos};
use super::lexer::{Tok, Token, lex};

/// Deepest nesting of parentheses and prefix operators an expression may have. Deeper input is
/// an error rather than a stack overflow.
pub(crate) const MAX_DEPTH: u32 = 64;

/// Most binary operators one expression may have: chains like `a + b + …` build trees as deep
/// as they are long, and every walk over a tree recurses.
pub(crate) const MAX_OPERATORS: u32 = 256;

/// A cursor over the tokens of one text.
pub(crate) struct Parser {
    toks: Vec<Token>,
    i: usize,
    /// Current expression nesting depth.
    pub(crate) depth: u32,
    /// Binary operators in the expression being parsed.
    pub(crate) operators: u32,
}

impl Parser {
    /// Lexes `src`.
    pub(crate) fn new(src: &str) -> Result<Parser, ParseError> {
        Ok(Parser {
            toks: lex(src)?,
            i: 0,
            depth: 0,
            operators: 0,
        })
    }

    /// The current token (the final `Eof` once the input is used up).
    pub(crate) fn peek(&self) -> &Token {
        // `lex` always ends with Eof and `bump` never moves past it.
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    /// The token `n` after the current one.
    pub(crate) fn peek_nth(&self, n: usize) -> &Token {
        &self.toks[(self.i + n).min(self.toks.len() - 1)]
    }

    /// Where the current token starts.
    pub(crate) fn pos(&self) -> Pos {
        self.peek().pos
    }

    /// Consumes and returns the current token.
    pub(crate) fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    /// Whether the current token is `tok`.
    pub(crate) fn at(&self, tok: &Tok) -> bool {
        &self.peek().tok == tok
    }

    /// Consumes the current token if it is `tok`.
    pub(crate) fn eat(&mut self, tok: &Tok) -> bool {
        if self.at(tok) {
            self.bump();
            true
        } else {
            false
        }
    }

    /// Consumes `tok` or fails with "expected {what}".
    pub(crate) fn expect(&mut self, tok: &Tok, what: &str) -> Result<Pos, ParseError> {
        if self.at(tok) {
            Ok(self.bump().pos)
        } else {
            Err(self.unexpected(what))
        }
    }

    /// Whether the current token is the keyword `kw` (case-insensitive).
    pub(crate) fn at_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    /// Consumes the keyword `kw` if present.
    pub(crate) fn eat_kw(&mut self, kw: &str) -> bool {
        if self.at_kw(kw) {
            self.bump();
            true
        } else {
            false
        }
    }

    /// Consumes the keyword `kw` or fails.
    pub(crate) fn expect_kw(&mut self, kw: &str) -> Result<Pos, ParseError> {
        if self.at_kw(kw) {
            Ok(self.bump().pos)
        } else {
            Err(self.unexpected(&format!("`{kw}`")))
        }
    }

    /// Consumes an identifier, or fails with "expected {what}".
    pub(crate) fn ident(&mut self, what: &str) -> Result<(String, Pos), ParseError> {
        match &self.peek().tok {
            Tok::Ident(s) => {
                let s = s.clone();
                let pos = self.bump().pos;
                Ok((s, pos))
            }
            _ => Err(self.unexpected(what)),
        }
    }

    /// "expected {what}, found {current token}" at the current token.
    pub(crate) fn unexpected(&self, what: &str) -> ParseError {
        let t = self.peek();
        ParseError::at(
            t.pos,
            format!("expected {what}, found {}", t.tok.describe()),
        )
    }
}
