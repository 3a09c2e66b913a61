//! Every bound of the native protocol in one place, unit last, each with its reason.

// Limits read as quantities (`frame_bytes_max`), as in TigerBeetle's constants.
#![allow(non_upper_case_globals)]

/// One frame's payload: the largest value plus room for names and keys.
pub const frame_bytes_max: usize = statefun_core::limits::value_bytes_max + 64 * 1024;

/// Requests a connection may have in flight. Past it the server stops reading the
/// connection's stream, and QUIC's flow control pushes back to the client.
pub const requests_in_flight_per_connection_max: usize = 1024;

/// Connections one shard's endpoint accepts.
pub const connections_per_shard_max: usize = 4096;

/// Bytes a connection may have waiting to be sent (replies the peer is slow to read).
pub const send_buffer_bytes_max: usize = 4 * frame_bytes_max;

/// Subscriptions one connection may hold.
pub const subscriptions_per_connection_max: usize = 64;

const _: () = assert!(frame_bytes_max <= u32::MAX as usize);
