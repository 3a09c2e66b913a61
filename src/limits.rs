//! Every bound of the node in one place, unit last, each with the reason for its number.
//! The model's own bounds live in `statefun_core::limits`.

// Limits read as quantities (`mesh_channel_messages_max`), as in TigerBeetle's constants.
#![allow(non_upper_case_globals)]

/// Messages in flight on one shard-to-shard channel. A full channel makes the sender's
/// outbox wait; 1024 covers several turns of a busy shard (256 invocations each).
pub const mesh_channel_messages_max: usize = 1024;

/// Open HTTP connections per shard and listener (the ingress, and the playground's ingress
/// and egress when a module has them). HTTP/1.1 runs one request at a time per connection,
/// so this also bounds the ingress requests a shard has in flight: the ingress pushback.
pub const http_connections_per_shard_max: u64 = 4096;

/// Bytes in one HTTP request body: the largest message value, see the core limit.
pub const http_body_bytes_max: usize = statefun_core::limits::value_bytes_max;

/// Log bytes a shard may have appended and not yet handed to the disk. Past it the shard
/// stops running invocations until the disk catches up: the pushback of a slow disk. Two
/// full batches: one being written, one filling.
pub const unsynced_bytes_max: u64 = 2 * statefun_storage::limits::batch_bytes_max;

/// Egress records a shard keeps for subscribers to catch up from. Older positions are gone;
/// a subscriber resuming before them starts at the oldest kept.
pub const egress_records_retained_max: usize = 64 * 1024;

/// Bytes read from a socket per call before handing them to the HTTP parser.
pub const http_read_chunk_bytes_max: usize = 16 * 1024;

/// Batches of remote functions one shard has in flight (each a task with its request).
/// Addresses past it wait in the core's ready queue: the pushback of slow endpoints. It
/// matches StateFun's default `pool_size` of 1024 connections per endpoint, times a few
/// endpoints.
pub const remote_batches_in_flight_max: usize = 4096;

/// The first pause after a failed remote request; it doubles with every failure (StateFun's
/// own transport starts at 2 ms).
pub const remote_backoff_first_ms: u64 = 2;

/// The longest pause between two attempts within the call budget, so that a function that
/// comes back is noticed within seconds even with StateFun's 2-minute budget.
pub const remote_backoff_max_ms: u64 = 5_000;

/// How often a parked address tries again on its own. An operator's `POST /v1/parked/retry`
/// does not wait for it.
pub const remote_parked_retry_ms: u64 = 5_000;

/// The shortest timeout an attempt gets, even when the call budget is nearly spent.
pub const remote_attempt_min_ms: u64 = 10;

/// Bytes of an endpoint's error body quoted in the error of a parked address.
pub const remote_error_bytes_max: usize = 512;

/// Addresses a checkpoint captures per step before it yields to the core loop: the bound of
/// the pause a checkpoint puts on invocations (each capture copies one address's values,
/// mailbox and timers: about a microsecond for a small address).
pub const checkpoint_addresses_per_step: usize = 256;

/// A long checkpoint or restore says how far it got every this many chunks (of up to 16 MiB).
pub const checkpoint_progress_chunks: usize = 8;

/// How often the checkpointer looks at the log's growth.
pub const checkpoint_poll_ms: u64 = 1_000;

/// Deltas are folded into a new base once their bytes times this pass the base's: at 2,
/// once the deltas are half the base, a recovery reads at most 1.5 bases.
pub const checkpoint_deltas_fold_ratio: u64 = 2;

/// Deltas are folded into a new base after this many, whatever their size: each is a run a
/// recovery merges.
pub const checkpoint_deltas_max: usize = 16;

/// Records one topic keeps until a reader takes them. Past it the oldest record is dropped
/// with a warning: the topic stands for an external system (a broker's topic) that a reader
/// may never drain, and the functions that fill it must not stop for that. 100 000 greetings
/// are far more than anyone reads back with `curl`.
pub const topic_records_max: usize = 100_000;

/// Payload bytes one topic keeps, the same way: a bound on memory that holds for any payload
/// size. 64 MiB is sixteen of the largest values.
pub const topic_bytes_max: usize = 64 * 1024 * 1024;

/// How long the ingress waits for its message's admission before it answers `504`: as long
/// as the default `/v1/call` timeout.
pub const ingress_admission_wait_ms_max: u64 = 10_000;

/// Bytes of module text. Real modules are a few kilobytes; the bound keeps a wrong file
/// (a log, a binary) from being parsed at all.
pub const module_text_bytes_max: usize = 1024 * 1024;

/// YAML documents in one module: far more components than any StateFun module has.
pub const module_documents_max: usize = 1024;

/// Snapshot requests one connection may have waiting for the next checkpoint. An operator
/// asks once per shard and waits; more than a few at once is a client gone wrong, and each
/// one past the bound is answered `Failed` at once rather than kept.
pub const snapshots_waiting_per_connection_max: usize = 16;

const _: () = assert!(remote_backoff_first_ms <= remote_backoff_max_ms);
const _: () = assert!(mesh_channel_messages_max >= statefun_core::limits::invocations_per_turn_max);
