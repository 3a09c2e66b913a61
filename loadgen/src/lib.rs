//! The load generator of statefun: it drives a node over HTTP/1.1 or its native protocol
//! (QUIC, through the client library), in closed loop (N
//! connections sending back to back) or open loop (a fixed schedule of R requests a second,
//! latency counted from each request's intended time, so without coordinated omission), and
//! reports HdrHistogram latencies.
//!
//! The binary (`main.rs`) only parses flags and prints; the rest lives here to be tested:
//! - [`config`]: the command line and the checked run it describes;
//! - [`template`], [`keys`]: what each request looks like and which key it goes to;
//! - [`schedule`], [`pacer`]: when requests are due, and the thread that releases them on time;
//! - [`http`]: the HTTP target, the request, one keep-alive connection;
//! - [`native`]: the `quic://` target, the same workload as a native request, the client;
//! - [`run`]: lanes of workers on single-threaded runtimes, and the progress feed;
//! - [`report`]: what was measured, the summary, the JSON and `.hgrm` outputs;
//! - [`plot`]: the latency distribution as an SVG chart (`--plot`);
//! - [`limits`]: every bound, with its reason.

#![forbid(unsafe_code)]

pub mod config;
mod error;
pub mod http;
pub mod keys;
pub mod limits;
pub mod native;
pub mod pacer;
pub mod plot;
pub mod report;
pub mod run;
pub mod schedule;
pub mod template;

pub use error::Error;
