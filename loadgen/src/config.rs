//! The command line, and the checked [`Config`] a run is made from.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use std::fmt;

use crate::http::{self, RequestSpec};
use crate::keys::{Distribution, KeyPicker};
use crate::native;
use crate::{limits, Error};

/// The open-loop connection pool when `--rate` is given without `--concurrency`.
pub const OPEN_LOOP_CONNECTIONS_DEFAULT: u32 = 64;

/// The default seed: runs repeat their key sequence unless told otherwise.
pub const SEED_DEFAULT: u64 = 0x5eed;

/// Drives a statefun node over HTTP and measures its latency (HdrHistogram) without
/// coordinated omission.
#[derive(Debug, Clone, Parser)]
#[command(name = "statefun-loadgen", version)]
pub struct Args {
    /// Where to send requests: http://HOST:PORT, or quic://HOST:PORT for the native protocol
    /// (shard 0's address; the client learns the others).
    #[arg(long)]
    pub target: String,
    /// quic:// only: the node's data directory, for its development certificate and client
    /// token.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// quic:// only: a certificate (or CA) file to trust instead of the development one.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// quic:// only: the client token instead of the data directory's.
    #[arg(long)]
    pub token: Option<String>,
    /// quic:// only: the name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Request path; `{key}` is replaced by the request's key [default: from --workload].
    #[arg(long)]
    pub path: Option<String>,
    /// Request body; `{key}` is replaced by the request's key [default: from --workload].
    #[arg(long)]
    pub body: Option<String>,
    /// A request header 'Name: value', repeatable [default: from --workload].
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Request method.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The example function to call; it supplies --path, --body and --header when not given.
    #[arg(long, value_enum, default_value_t = Workload::Counter)]
    pub workload: Workload,
    /// Hops of each chain message (--workload chain); `{hops}` in --body stands for it.
    #[arg(long, default_value_t = 3)]
    pub hops: u32,
    /// Counters each fan-out message goes to (--workload fanout); `{fanout}` in --body stands
    /// for it.
    #[arg(long, default_value_t = 4)]
    pub fanout: u32,
    /// Keys to spread requests over, rendered k0, k1, ...
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How requests spread over the keys: uniform, zipf:S (key 0 the most popular) or hot
    /// (every request to key 0).
    #[arg(long, default_value = "uniform")]
    pub distribution: Distribution,
    /// Seed of the key choices.
    #[arg(long, default_value_t = SEED_DEFAULT)]
    pub seed: u64,
    /// Connections. Closed loop: each sends its next request when the last is answered.
    /// Open loop (--rate): the pool the schedule's requests are sent on [default: 1, or 64
    /// with --rate].
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Open loop: requests per second over all connections, each due at start + i/rate;
    /// latency counts from that intended time, so waiting for a connection counts too.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds measured, after the warmup (fractions allowed).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Seconds of load before the measured period, not recorded.
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    pub warmup: Duration,
    /// Threads running connections, each with its own single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Writes the summary as a JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Writes the latency distribution (microseconds) in HdrHistogram's .hgrm text format.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Writes the latency distribution as an SVG chart: latency by percentile, the percentiles
    /// spaced as in HdrHistogram's plots (90%, 99%, 99.9%, ... equally apart).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// The example functions of `statefun serve`, and the request each one takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// example/counter: adds 1 to the key's count and replies with the total.
    Counter,
    /// example/chain: a message travels --hops addresses and the answer comes back.
    Chain,
    /// example/fanout: a message goes to --fanout counters and is answered once all replied.
    Fanout,
}

impl Workload {
    fn path(self) -> &'static str {
        match self {
            Workload::Counter => "/v1/call/example/counter/{key}",
            Workload::Chain => "/v1/call/example/chain/{key}",
            Workload::Fanout => "/v1/call/example/fanout/{key}",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Workload::Counter => "1",
            Workload::Chain => "{hops}",
            Workload::Fanout => "{fanout}",
        }
    }

    fn header(self) -> &'static str {
        match self {
            Workload::Counter => "Content-Type: application/vnd.example/delta",
            Workload::Chain => "Content-Type: application/vnd.example/hops",
            Workload::Fanout => "Content-Type: application/vnd.example/fanout",
        }
    }
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `connections` workers, each sending back to back.
    Closed { connections: u32 },
    /// `rate_per_s` requests a second, due on a fixed schedule, over a pool of `connections`.
    Open { rate_per_s: f64, connections: u32 },
}

impl Load {
    pub fn connections(&self) -> u32 {
        match *self {
            Load::Closed { connections } | Load::Open { connections, .. } => connections,
        }
    }
}

/// Where a run sends its requests.
#[derive(Debug, Clone)]
pub enum Target {
    Http(http::Target),
    Native(native::Target),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Http(target) => target.fmt(f),
            Target::Native(target) => target.fmt(f),
        }
    }
}

/// The request a run sends, for its kind of target.
#[derive(Debug, Clone)]
pub enum Request {
    Http(RequestSpec),
    Native(native::RequestSpec),
}

/// A checked run.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub request: Request,
    pub keys: Arc<KeyPicker>,
    pub seed: u64,
    pub load: Load,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long measured requests may finish after the period: `drain_timeout_ms`.
    pub drain: Duration,
    /// Threads actually used: never more than connections.
    pub threads: u32,
}

impl Args {
    /// The workload as shown: its name, or "custom" when --path is given.
    pub fn workload_name(&self) -> &'static str {
        match (&self.path, self.workload) {
            (Some(_), _) => "custom requests",
            (None, Workload::Counter) => "example/counter",
            (None, Workload::Chain) => "example/chain",
            (None, Workload::Fanout) => "example/fanout",
        }
    }

    /// Checks the flags and fills in the workload's defaults.
    pub fn config(&self) -> Result<Config, Error> {
        let path = self.path.as_deref().unwrap_or(self.workload.path());
        let body = self
            .body
            .as_deref()
            .unwrap_or(self.workload.body())
            .replace("{hops}", &self.hops.to_string())
            .replace("{fanout}", &self.fanout.to_string());
        let headers =
            if self.headers.is_empty() { vec![self.workload.header().to_string()] } else { self.headers.clone() };
        let credentials = native::Credentials {
            data_dir: &self.data_dir,
            ca: self.ca.as_ref(),
            token: self.token.as_deref(),
            server_name: &self.server_name,
        };
        let (target, request) = match native::Target::parse(&self.target, &credentials) {
            Some(target) => {
                (Target::Native(target?), Request::Native(native::RequestSpec::new(path, &body, &headers)?))
            }
            None => {
                let target = http::Target::parse(&self.target)?;
                let request = RequestSpec::new(&target, &self.method, path, &body, &headers)?;
                (Target::Http(target), Request::Http(request))
            }
        };
        let keys = Arc::new(KeyPicker::new(self.keys, self.distribution)?);

        let load = match self.rate {
            None => Load::Closed { connections: self.concurrency.unwrap_or(1) },
            Some(rate_per_s) if rate_per_s.is_finite() && rate_per_s > 0.0 => {
                Load::Open { rate_per_s, connections: self.concurrency.unwrap_or(OPEN_LOOP_CONNECTIONS_DEFAULT) }
            }
            Some(rate) => return Err(Error::config(format!("--rate {rate}: expected requests per second above 0"))),
        };
        let connections = load.connections();
        if connections == 0 || connections > limits::connections_max {
            let max = limits::connections_max;
            return Err(Error::config(format!("--concurrency {connections}: expected 1 to {max}")));
        }
        if self.threads == 0 || self.threads > limits::threads_max {
            return Err(Error::config(format!("--threads {}: expected 1 to {}", self.threads, limits::threads_max)));
        }
        if self.duration.is_zero() {
            return Err(Error::config("--duration must be above 0"));
        }
        if (self.warmup + self.duration).as_secs() > limits::run_s_max {
            return Err(Error::config(format!("--warmup plus --duration: at most {} s", limits::run_s_max)));
        }
        Ok(Config {
            target,
            request,
            keys,
            seed: self.seed,
            load,
            warmup: self.warmup,
            duration: self.duration,
            drain: Duration::from_millis(limits::drain_timeout_ms),
            threads: self.threads.min(connections),
        })
    }
}

/// Seconds as a decimal number, `2.5` for instance.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?}: expected seconds, such as 2.5"))?;
    if !(0.0..=limits::run_s_max as f64).contains(&seconds) {
        return Err(format!("{text:?}: expected 0 to {} seconds", limits::run_s_max));
    }
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    //! Flags parsed as from the command line, and the run they make inspected.

    use ::http::header::CONTENT_TYPE;
    use http_body_util::BodyExt;

    use super::*;

    fn config(flags: &[&str]) -> Result<Config, Error> {
        let args = Args::try_parse_from(["statefun-loadgen", "--target", "http://127.0.0.1:8070"].iter().chain(flags))
            .map_err(|error| Error::Config(error.to_string()))?;
        args.config()
    }

    fn http(config: &Config) -> &RequestSpec {
        match &config.request {
            Request::Http(spec) => spec,
            Request::Native(_) => panic!("not an HTTP request"),
        }
    }

    fn body(config: &Config, key: u64) -> String {
        let body = http(config).build(key).unwrap().into_body();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        String::from_utf8(runtime.block_on(body.collect()).unwrap().to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_counter_workload_is_the_default() {
        let config = config(&[]).unwrap();
        let request = http(&config).build(5).unwrap();
        assert_eq!(request.method(), "POST");
        assert_eq!(request.uri(), "/v1/call/example/counter/k5");
        assert_eq!(request.headers()[CONTENT_TYPE], "application/vnd.example/delta");
        assert_eq!(body(&config, 5), "1");
        assert_eq!(config.load, Load::Closed { connections: 1 });
        assert_eq!((config.warmup, config.duration), (Duration::from_secs(1), Duration::from_secs(10)));
        assert_eq!((config.keys.keys(), config.seed, config.threads), (10_000, SEED_DEFAULT, 1));
    }

    #[test]
    fn the_chain_workload_sends_its_hops() {
        let five = config(&["--workload", "chain", "--hops", "5"]).unwrap();
        let request = http(&five).build(7).unwrap();
        assert_eq!(request.uri(), "/v1/call/example/chain/k7");
        assert_eq!(request.headers()[CONTENT_TYPE], "application/vnd.example/hops");
        assert_eq!(body(&five, 7), "5");
        assert_eq!(body(&config(&["--workload", "chain"]).unwrap(), 0), "3");
    }

    #[test]
    fn the_fanout_workload_sends_its_width() {
        let six = config(&["--workload", "fanout", "--fanout", "6"]).unwrap();
        let request = http(&six).build(2).unwrap();
        assert_eq!(request.uri(), "/v1/call/example/fanout/k2");
        assert_eq!(request.headers()[CONTENT_TYPE], "application/vnd.example/fanout");
        assert_eq!(body(&six, 2), "6");
        assert_eq!(body(&config(&["--workload", "fanout"]).unwrap(), 0), "4");
        let both = config(&["--body", "{hops}/{fanout}", "--hops", "2", "--fanout", "9"]).unwrap();
        assert_eq!(body(&both, 0), "2/9");
    }

    #[test]
    fn given_flags_replace_the_workload_defaults() {
        let flags = ["--path", "/v1/send/a/b/{key}", "--body", "{key}:{hops}", "--header", "Content-Type: text/x"];
        let config = config(&[&flags[..], &["--method", "PUT", "--hops", "2"]].concat()).unwrap();
        let request = http(&config).build(1).unwrap();
        assert_eq!((request.method().as_str(), request.uri().to_string()), ("PUT", "/v1/send/a/b/k1".to_string()));
        assert_eq!(request.headers().get_all(CONTENT_TYPE).iter().collect::<Vec<_>>(), ["text/x"]);
        assert_eq!(body(&config, 1), "k1:2");
    }

    #[test]
    fn rate_makes_an_open_loop_with_a_pool() {
        let config = config(&["--rate", "1000", "--duration", "2.5", "--warmup", "0"]).unwrap();
        assert_eq!(config.load, Load::Open { rate_per_s: 1000.0, connections: OPEN_LOOP_CONNECTIONS_DEFAULT });
        assert_eq!((config.duration, config.warmup), (Duration::from_millis(2500), Duration::ZERO));
        let few = self::config(&["--rate", "10", "--concurrency", "3", "--threads", "8"]).unwrap();
        assert_eq!((few.load.connections(), few.threads), (3, 3));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        let quic = ["statefun-loadgen", "--target", "quic://127.0.0.1:8071", "--data-dir", "/nonexistent/data"];
        let quic = Args::try_parse_from(quic).unwrap().config().unwrap_err().to_string();
        assert!(quic.contains("/nonexistent/data/tls/cert.pem"), "{quic}");
        for flags in [
            &["--rate", "0"][..],
            &["--rate", "-5"],
            &["--rate", "NaN"],
            &["--concurrency", "0"],
            &["--concurrency", "100000"],
            &["--threads", "0"],
            &["--duration", "0"],
            &["--duration", "-1"],
            &["--duration", "1e30"],
            &["--warmup", "soon"],
            &["--distribution", "zipf"],
            &["--keys", "0"],
            &["--header", "no colon"],
            &["--workload", "reminder"],
            &["--fanout", "-1"],
        ] {
            assert!(config(flags).is_err(), "{flags:?}");
        }
    }
}
