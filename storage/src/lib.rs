//! The durable side of a shard: its append-only log.
//!
//! Every record a shard's core produces is encoded ([`codec`]) into the current batch
//! ([`format::BatchBuilder`]); while one batch is being written and synced, the next one
//! fills (group commit). A batch is one write plus one `fdatasync` ([`Segments::write`]),
//! into segment files that were zero-filled ahead of time, through glommio's O_DIRECT
//! io_uring files. At start, [`open`] reads the segments back, cuts a torn final batch and
//! hands the records over for replay; any other damage stops start-up with an error that
//! names the segment and offset. The byte layout is in `storage/FORMAT.md`.
//!
//! **A failed write or sync poisons the log**: every later call fails, and a sync is never
//! retried, because after a failed `fdatasync` the kernel may have dropped the dirty pages
//! it could not write (the "fsyncgate" lesson).

// The one exception, `mmap`, maps immutable checkpoint files (memmap2's `Mmap::map` is unsafe).
#![deny(unsafe_code)]

pub mod blob;
pub mod codec;
mod error;
mod file;
pub mod format;
pub mod limits;
mod log;
mod mmap;
pub mod snapshot;

pub use error::Error;
pub use log::{open, segment_path, truncate, Batcher, LogConfig, Plan, Recovered, Recovery, SealedSegment, Segments};

/// A log sequence number: the place of a record in its shard's log, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);
