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

/// Jobs waiting for the uploader beyond those in flight. A node's callers are its shards'
/// background uploaders and checkpointers, a few jobs each: 64 lets every shard of a 32-core
/// node have two waiting. More would only hide a slow store: the jobs behind it wait either
/// way, and a full queue makes the next caller wait at the send, which is the push-back.
pub const blob_jobs_queued_max: usize = 64;

/// Jobs the uploader runs at once. S3 throughput grows with parallel requests up to a few
/// tens; a local disk gains nothing past a handful of writers.
pub const blob_jobs_in_flight_max: usize = 16;

/// Threads of the uploader's blocking pool, where the local store's file I/O runs (one per
/// job in flight; the parts of a multipart upload queue behind them).
pub const blob_blocking_threads_max: usize = 16;

/// Bodies of this size and above go up as a multipart upload: S3 takes one request per part,
/// in parallel, and retries a failed part rather than the whole object.
pub const blob_multipart_bytes_min: usize = 8 * 1024 * 1024;

/// The size of each part of a multipart upload but the last. S3 wants at least 5 MiB.
pub const blob_part_bytes: usize = 8 * 1024 * 1024;

/// Parts of one multipart upload in flight at once.
pub const blob_parts_in_flight_max: usize = 4;

/// The largest object the store reads or writes: objects are read whole into memory. Far
/// above a log segment (64 MiB by default) or a checkpoint chunk (4-16 MiB); an object larger
/// than this is not one of ours.
pub const blob_bytes_max: u64 = 1024 * 1024 * 1024;

/// The most objects one [`BlobStore::list`] returns: about 100 MB of names at worst. Remote
/// garbage collection keeps a shard's objects to a few thousand.
pub const blob_list_entries_max: usize = 1_000_000;

const _: () = assert!(record_bytes_max as u64 + 64 <= batch_bytes_max);
const _: () = assert!(segment_bytes_default >= 2 * batch_bytes_max);
const _: () = assert!(batch_bytes_max % block_bytes == 0 && segment_bytes_default % block_bytes == 0);
const _: () = assert!(read_chunk_bytes % block_bytes == 0 && zero_chunk_bytes % block_bytes == 0);
