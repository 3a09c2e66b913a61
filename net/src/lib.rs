//! The transport of statefun: QUIC endpoints per shard, rkyv frames, node-to-node links and
//! the native client. Its first piece lands with the native-protocol issue; until then the
//! node speaks HTTP only (see the root package's `ingress` module).

#![forbid(unsafe_code)]
