//! The load generator's one error type.

/// Why a run could not start or finish. Failed requests are not errors of the run: they are
/// counted in its report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag or flag combination.
    #[error("{0}")]
    Config(String),
    /// The target did not accept the run's connections at the start.
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// A thread or runtime of the generator failed.
    #[error("load generator: {0}")]
    Internal(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::Config(message.into())
    }
}
