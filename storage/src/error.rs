//! The errors of the log and the blob store.

use std::path::PathBuf;

/// What can go wrong with a shard's log. Every variant says what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the disk is full: {op} {path} failed ({source}); free space and restart, nothing committed is lost")]
    DiskFull { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{op} {path} failed: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "the log is damaged in {segment} at offset {offset}: {why}. Records after this point cannot be trusted. \
         To drop them and start from what comes before, run: {fix}"
    )]
    Corrupt { segment: PathBuf, offset: u64, why: String, fix: String },
    #[error("the log failed earlier and refuses new work: {0}")]
    Poisoned(String),
    #[error("a record of {bytes} bytes is larger than the limit of {max} bytes")]
    RecordTooLarge { bytes: usize, max: usize },
    #[error("cannot encode a record: {0}")]
    Encode(String),
    /// A checkpoint chunk or manifest that cannot be used, named as it is stored.
    #[error("the checkpoint file {name} cannot be used: {why}")]
    Snapshot { name: String, why: String },
    #[error("blob store: {op} {path} failed: {why}")]
    Blob { op: &'static str, path: String, why: String },
    #[error("cannot open the blob store {url}: {why}")]
    BlobUrl { url: String, why: String },
}

impl Error {
    /// Classifies an I/O failure, calling out a full disk (or a file size limit) by name.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        let full = matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG))
            || matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded | std::io::ErrorKind::FileTooLarge
            );
        if full {
            Error::DiskFull { op, path: path.into(), source }
        } else {
            Error::Io { op, path: path.into(), source }
        }
    }
}
