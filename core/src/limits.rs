//! Every bound of the core in one place, unit last, each with the reason for its number.
//!
//! A full bound pushes back to its producer; nothing here is a silent drop.

// Limits read as quantities (`mailbox_messages_max`), as in TigerBeetle's constants.
#![allow(non_upper_case_globals)]

/// Key groups in a cluster, fixed for the cluster's life (Flink's max parallelism). State
/// moves between shards in whole key groups, so this caps the shard count of a cluster.
pub const key_groups_max: u16 = 4096;

/// Shards (cores) of one node. A shard owns at least one key group.
pub const shards_max: u16 = 1024;

/// Messages one invocation may send (including its reply, delayed messages and egress).
/// Bounds the fan-out of a single record: a function that amplifies its input without limit is
/// stopped with a clear error instead of filling memory.
pub const effects_per_invocation_max: usize = 4096;

/// Messages waiting in one address's mailbox. A full mailbox refuses new ingress messages
/// (the caller is told to retry); messages produced by committed records are always accepted,
/// so their count is bounded by ingress admission times `effects_per_invocation_max`.
pub const mailbox_messages_max: usize = 16 * 1024;

/// Bytes of everything one invocation produces (values and names of its state writes,
/// messages, delayed messages and egress), so that its record stays within the log's record
/// limit (`statefun_storage::limits::record_bytes_max`, 24 MiB) with room for framing.
pub const invocation_bytes_max: usize = 16 * 1024 * 1024;

/// Bytes in a type name (`namespace/type`) or an id. Long enough for UUIDs and paths, short
/// enough that a malformed request cannot make an address the size of a value.
pub const name_bytes_max: usize = 1024;

/// Bytes in one value, message or state. Matches the HTTP ingress body limit.
pub const value_bytes_max: usize = 4 * 1024 * 1024;

/// Ingress requests one shard remembers (for idempotent retries, and while callers wait).
/// Past it the oldest are forgotten early, so the retention window shrinks under a flood of
/// distinct keys rather than memory growing without bound: 1 M keys of ~200 bytes each.
pub const requests_per_shard_max: usize = 1 << 20;

/// Invocations a shard runs before it yields to its other tasks (network, timers).
pub const invocations_per_turn_max: usize = 256;

const _: () = assert!(shards_max <= key_groups_max);
const _: () = assert!(mailbox_messages_max >= effects_per_invocation_max);
const _: () = assert!(invocation_bytes_max >= 2 * value_bytes_max);
