//! The errors of the native protocol, each saying what and where.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::frame::{Kind, VERSION};
use crate::limits;

/// What can go wrong with frames, certificates and the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Frames: bytes from the network that are not a frame this side reads.
    #[error("not a statefun frame (magic {0:#010x})")]
    Magic(u32),
    #[error("protocol version {0}; this side speaks {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("a frame of {0} bytes is larger than the limit of {max} bytes", max = limits::frame_bytes_max)]
    TooLarge(usize),
    #[error("a {kind:?} frame does not hold a valid message: {why}")]
    Payload { kind: Kind, why: String },

    // Certificates, keys and tokens.
    #[error("{op} {path} failed: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} holds no usable {what}: {why}")]
    Pem { path: PathBuf, what: &'static str, why: String },
    #[error("cannot generate the development certificate: {0}")]
    Generate(String),
    #[error("the TLS configuration is not usable: {0}")]
    TlsConfig(String),

    // The client.
    #[error("cannot reach {address}: {why}")]
    Connect { address: SocketAddr, why: String },
    #[error("the server refused the connection: {0}")]
    Refused(String),
    #[error("the server refused the request: {0}")]
    RequestRefused(String),
    #[error("{0}")]
    Failed(String),
    #[error("gave up after {0:?} of retries: {1}")]
    GaveUp(Duration, String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Model(#[from] statefun_core::Error),
    #[error(transparent)]
    Function(#[from] statefun_core::FunctionError),
}

impl Error {
    /// Whether trying again cannot help: a refused connection or unusable credentials.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Refused(_) | Error::Io { .. } | Error::Pem { .. } | Error::Generate(_) | Error::TlsConfig(_)
        )
    }
}
