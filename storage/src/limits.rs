//! Every bound of the log in one place, unit last, each with the reason for its number.

// Limits read as quantities (`segment_bytes_max`), as in TigerBeetle's constants.
#![allow(non_upper_case_globals)]

/// The unit of O_DIRECT writes: every batch starts on a block boundary and is padded to one,
/// so no write ever touches a block that holds committed records.
pub const block_bytes: u64 = 4096;

/// One encoded record. The core bounds an invocation's effects below this
/// (`statefun_core::limits::invocation_bytes_max`), with room for names and framing.
pub const record_bytes_max: usize = 24 * 1024 * 1024;

/// One batch: a batch closes when the next record would not fit. A single record always
/// fits. Also the reach of a torn write past the end of the log, which recovery zeroes.
pub const batch_bytes_max: u64 = 32 * 1024 * 1024;

/// The smallest segment: batches are then at most half a segment (tests use small ones).
pub const segment_bytes_min: u64 = 1024 * 1024;

/// The default size of a segment file.
pub const segment_bytes_default: u64 = 64 * 1024 * 1024;

/// Bytes read from a segment per I/O during recovery.
pub const read_chunk_bytes: u64 = 1024 * 1024;

/// Zeroes written per I/O when a segment is prepared.
pub const zero_chunk_bytes: u64 = 1024 * 1024;

/// Address states in one checkpoint chunk. A base of a large shard is split into chunks so
/// that each is read, checked and converted on its own, and an unchanged one can be shared by
/// content name; 64 Ki states of a few hundred bytes make chunks of a few tens of MiB.
pub const chunk_states_max: usize = 64 * 1024;

/// The estimated size at which a chunk closes before `chunk_states_max` states: large values
/// would otherwise make chunks of gigabytes. 16 MiB uploads in a few parts and reads in well
/// under a second. One state always fits, however large.
pub const chunk_bytes_target: usize = 16 * 1024 * 1024;

const _: () = assert!(record_bytes_max as u64 + 64 <= batch_bytes_max);
const _: () = assert!(segment_bytes_default >= 2 * batch_bytes_max);
const _: () = assert!(batch_bytes_max % block_bytes == 0 && segment_bytes_default % block_bytes == 0);
const _: () = assert!(read_chunk_bytes % block_bytes == 0 && zero_chunk_bytes % block_bytes == 0);
