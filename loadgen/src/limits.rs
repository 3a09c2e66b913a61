//! Every bound of the load generator in one place, unit last, each with the reason for its
//! number. A full bound pushes back: a lane waits for the main thread, a request waits for a
//! connection; nothing here is a silent drop.

// Limits read as quantities (`connections_max`), as in TigerBeetle's constants.
#![allow(non_upper_case_globals)]

/// The largest latency the histograms track, in microseconds; longer ones are recorded as
/// this value. A minute is far past any call timeout of the server (10 s by default).
pub const latency_us_max: u64 = 60_000_000;

/// Significant decimal digits the latency histograms keep: 0.1 % resolution, the usual
/// HdrHistogram setting, at about 140 KiB per histogram for a minute's range.
pub const latency_significant_digits: u8 = 3;

/// Connections the generator opens, over all threads. Each one is a file descriptor here
/// and a connection slot on the server (4096 per shard there).
pub const connections_max: u32 = 4096;

/// Threads that run connections. Each has its own runtime; more threads than cores only
/// steal time from the server under test.
pub const threads_max: u32 = 64;

/// Keys of a Zipf distribution. Its cumulative table takes 8 bytes per key: 8 MiB here.
pub const zipf_keys_max: u64 = 1_000_000;

/// Whole seconds of warmup plus measurement; a day keeps every `Instant` far from overflow.
pub const run_s_max: u64 = 24 * 60 * 60;

/// Bytes read from a socket per call before they are copied into hyper's buffer.
pub const read_chunk_bytes_max: usize = 16 * 1024;

/// Bytes of one response body. The body is read to the end to keep the connection alive;
/// the server's replies are small, so a larger one is a fault worth an error.
pub const response_body_bytes_max: usize = 4 * 1024 * 1024;

/// Bytes of a response body quoted in the summary's first error.
pub const error_sample_bytes_max: usize = 200;

/// Updates in flight from the lanes to the main thread. Lanes send one a second and the main
/// thread only merges them, so a full queue means the main thread is stalled: lanes wait.
pub const updates_max: usize = 64;

/// How long one request may take, in milliseconds, before it counts as an error and its
/// connection is replaced. Longer than the server's default call timeout (10 s).
pub const request_timeout_ms: u64 = 30_000;

/// How long, in milliseconds, the requests of the measured period may still take after it
/// ends. Requests not answered by then are errors; requests not even sent are abandoned.
pub const drain_timeout_ms: u64 = 10_000;

/// Pause, in milliseconds, after a failed connection attempt: a dead server must not turn
/// the generator into a busy loop of refused connections.
pub const reconnect_pause_ms: u64 = 10;

/// The longest the open-loop pacer sleeps, in milliseconds, before it checks that its lane
/// still wants it: a slow rate must not keep a finished run waiting.
pub const pacer_sleep_ms_max: u64 = 100;

/// Milliseconds between two progress updates of a lane.
pub const progress_interval_ms: u64 = 1000;

const _: () = assert!(request_timeout_ms * 1000 <= latency_us_max);
const _: () = assert!(drain_timeout_ms * 1000 <= latency_us_max);
const _: () = assert!(threads_max <= connections_max);
