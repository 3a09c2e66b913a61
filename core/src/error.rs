//! The errors of the model.

use crate::TypeName;

/// A request the core refuses: bad names, unknown functions, full mailboxes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid type name {name:?}: {why}")]
    InvalidTypeName { name: String, why: &'static str },
    #[error("invalid id: {why}")]
    InvalidId { why: &'static str },
    #[error("function type {0} is registered twice")]
    DuplicateFunction(TypeName),
    #[error("namespace {0} is bound to remote functions twice")]
    DuplicateNamespace(String),
    #[error("no function is registered for type {0}")]
    UnknownFunction(TypeName),
    #[error("the mailbox of {address} is full ({len} messages); retry later")]
    MailboxFull { address: String, len: usize },
    #[error("idempotency key {key:?} was used before for a request to {target}")]
    IdempotencyKeyReused { key: String, target: String },
    #[error("this shard's log failed and refuses new work: {0}")]
    Poisoned(String),
    #[error("value of {bytes} bytes is larger than the limit of {max} bytes")]
    ValueTooLarge { bytes: usize, max: usize },
}

/// Why an invocation failed. A failed invocation applies none of its effects; the message
/// counts as consumed and a waiting caller is told the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FunctionError(pub String);

impl FunctionError {
    pub fn new(message: impl Into<String>) -> Self {
        FunctionError(message.into())
    }
}

impl From<Error> for FunctionError {
    fn from(error: Error) -> Self {
        FunctionError(error.to_string())
    }
}
