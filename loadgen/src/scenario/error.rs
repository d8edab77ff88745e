//! Errors of a scenario file, each pointing at a line and column.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde_saphyr::Location;

/// A position in a scenario file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: u64,
    /// 1-based column (in characters).
    pub column: u64,
}

impl Pos {
    /// Builds a position.
    pub fn new(line: u64, column: u64) -> Pos {
        Pos { line, column }
    }

    /// The position of a YAML location, or `None` when the parser did not know it.
    pub(crate) fn from_location(location: Location) -> Option<Pos> {
        (location.line() > 0).then(|| Pos::new(location.line(), location.column()))
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a scenario file cannot be used. Displays as `path:line:column: message`.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{}: cannot read the scenario file: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (shown in the message, not chained as a source).
        error: io::Error,
    },
    /// The file is not a valid scenario: a YAML syntax error, an unknown key, a value of the wrong
    /// type, or a value that fails validation (an unknown worker, a bad duration, a generator that
    /// does not fit its attribute, …).
    #[error("{}{}: {message}", path.display(), pos.map(|p| format!(":{p}")).unwrap_or_default())]
    Invalid {
        /// The file (as given for messages).
        path: PathBuf,
        /// Where in the file, when known.
        pos: Option<Pos>,
        /// What is wrong.
        message: String,
    },
}

impl ScenarioError {
    /// Where in the file the problem is, when known.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            ScenarioError::Read { .. } => None,
            ScenarioError::Invalid { pos, .. } => *pos,
        }
    }

    /// The message without the path and position.
    pub fn message(&self) -> String {
        match self {
            ScenarioError::Read { error, .. } => format!("cannot read the scenario file: {error}"),
            ScenarioError::Invalid { message, .. } => message.clone(),
        }
    }
}

/// A validation problem before the file's path is attached.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub(crate) pos: Option<Pos>,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn at(pos: Option<Pos>, message: impl Into<String>) -> Problem {
        Problem {
            pos,
            message: message.into(),
        }
    }

    pub(crate) fn into_error(self, path: PathBuf) -> ScenarioError {
        ScenarioError::Invalid {
            path,
            pos: self.pos,
            message: self.message,
        }
    }
}
