//! The durable side of a shard: the append-only state log, group commit, recovery and
//! snapshots. Until the log lands, nodes run in `--durability memory`; the core's
//! `Record` is the unit this crate will frame, commit and replay.

#![forbid(unsafe_code)]
