//! One error type for the whole library, so the CLI and the C ABI can report every failure
//! as a message (and a code) instead of a panic.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS error is part of the message, not a `source` (a chain printer such as anyhow's
    /// `{:#}` would print it twice).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The file is not what it claims to be (truncated, corrupt, inconsistent).
    #[error("{0}")]
    Format(String),
    /// The file is valid but uses something llmcad does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// A model configuration is missing fields or is inconsistent.
    #[error("{0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt plus the requested tokens do not fit in the context window.
    #[error("context overflow: {needed} tokens needed but the context holds {limit}{hint}")]
    ContextOverflow {
        needed: usize,
        limit: usize,
        hint: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("GPU: {0}")]
    Gpu(String),
    /// An allocation was refused (the message says what for and how to need less).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// `bail!`-style helpers that keep call sites short.
macro_rules! format_err {
    ($($arg:tt)*) => { $crate::error::Error::Format(format!($($arg)*)) };
}
macro_rules! unsupported {
    ($($arg:tt)*) => { $crate::error::Error::Unsupported(format!($($arg)*)) };
}
macro_rules! config_err {
    ($($arg:tt)*) => { $crate::error::Error::Config(format!($($arg)*)) };
}
pub(crate) use {config_err, format_err, unsupported};
