//! The native protocol of statefun: QUIC with TLS 1.3 on every shard, rkyv frames, and the
//! shard-aware client applications embed.
//!
//! - [`frame`]: the frames and their checks (`net/FRAMES.md` gives every byte).
//! - [`server`]: one quinn-proto endpoint per shard, driven from a glommio UDP socket.
//! - [`client`]: the client on tokio and quinn: learns the cluster map, sends each request
//!   straight to the shard that owns its key, retries with the same idempotency key.
//! - [`tls`]: certificates: the development certificate a node generates on first start.

#![forbid(unsafe_code)]

pub mod client;
mod error;
pub mod frame;
pub mod limits;
pub mod server;
pub mod tls;

pub use error::Error;
