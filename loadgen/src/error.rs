//! The tool's one error type: a single human line, already carrying its context.
//!
//! Every failure the user can cause (bad flag, bad URL, unreachable target,
//! malformed manifest or log) ends the process with exit code 2 and this line
//! on stderr; nothing in the tool panics on input.

use std::fmt;

/// A failure explained in one line, e.g. `--zipf site/staticfiles.json: no "paths" object`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }

    /// Prefixes the message with what was being done, e.g. the file or flag involved.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Error(format!("{what}: {}", self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Self {
        Error(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an I/O error with what was being attempted.
pub fn io_context(what: impl fmt::Display, e: std::io::Error) -> Error {
    Error(format!("{what}: {e}"))
}
