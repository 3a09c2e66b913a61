//! The driver of a run: lanes (threads) of workers (connections), and the main thread that
//! starts them together and merges what they measure.
//!
//! 1. Each lane is a thread with a single-threaded tokio runtime. It opens its connections
//!    and reports `Connected`; a lane that cannot connect ends the run before it starts.
//! 2. Once every lane is connected, the main thread picks the start instant and sends it to
//!    all: warmup, measured period and drain are counted from it.
//! 3. Each worker owns one connection and loops: take the next request (closed loop: now;
//!    open loop: the next one of the schedule, released on time by the lane's pacer), pick a
//!    key, send, and record the outcome in the worker's own tally.
//! 4. Once a second a lane moves its workers' tallies into one update for the main thread,
//!    which shows progress; when its workers end, the lane sends its last update.
//!
//! **A worker records into its own tally, on its own thread; tallies only meet when a lane
//! sums them and when the main thread merges the lanes.** No lock is taken per request.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::LocalSet;

use crate::config::{Config, Load, Request, Target};
use crate::http::Failure;
use crate::keys::Rng;
use crate::report::{Report, Tally};
use crate::schedule::{Schedule, Window};
use crate::{http, limits, native, pacer, Error};

/// What the live progress line shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// Time until the end of the measured period.
    pub left: Duration,
    /// Requests finished per second since the last progress, warmup included.
    pub rate_per_s: f64,
    /// Measured requests that failed so far.
    pub errors: u64,
    /// The 99th percentile latency of the measured period so far.
    pub latency_us_p99: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measuring,
    /// The period is over; measured requests still in flight are awaited.
    Draining,
}

/// Runs `config` to the end, calling `on_progress` about once a second.
pub fn run(config: &Config, on_progress: impl FnMut(&Progress)) -> Result<Report, Error> {
    let lanes = config.threads;
    let (updates_sender, updates) = mpsc::channel(limits::updates_max);
    let mut starts = Vec::new();
    let mut threads = Vec::new();
    for lane in 0..lanes {
        let (start_sender, start) = oneshot::channel();
        let plan = LanePlan { config: config.clone(), lane, lanes };
        let updates = updates_sender.clone();
        let spawned = thread::Builder::new().name(format!("loadgen-lane-{lane}")).spawn(move || {
            // A lane that panics (a bug) must still report, or the others would wait for it.
            let last_words = updates.clone();
            if panic::catch_unwind(AssertUnwindSafe(|| plan.run(start, updates))).is_err() {
                let _ = last_words.blocking_send(Update::Failed(Error::Internal(format!("lane {lane} panicked"))));
            }
        });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(error) => {
                drop((starts, updates_sender));
                join(threads)?;
                return Err(error.into());
            }
        }
        starts.push(start_sender);
    }
    drop(updates_sender);
    // `gather` owns the receiver: returning, even early, drops it, so no lane stays blocked
    // on a full queue while the threads are joined.
    let report = gather(config, starts, updates, on_progress);
    join(threads)?;
    report
}

fn join(threads: Vec<thread::JoinHandle<()>>) -> Result<(), Error> {
    for thread in threads {
        thread.join().map_err(|_| Error::Internal("a lane thread panicked".into()))?;
    }
    Ok(())
}

/// What a lane tells the main thread.
#[derive(Debug)]
enum Update {
    /// All the lane's connections are open.
    Connected,
    /// Counts since the last update.
    Tally(Tally),
    /// The lane is done; counts since the last update.
    Done { tally: Tally, abandoned: u64 },
    /// The lane could not run.
    Failed(Error),
}

/// The main thread's side: starts the lanes together, merges their updates, shows progress.
fn gather(
    config: &Config,
    mut starts: Vec<oneshot::Sender<Instant>>,
    mut updates: mpsc::Receiver<Update>,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Report, Error> {
    let lanes = starts.len();
    let (mut connected, mut done, mut abandoned) = (0, 0, 0);
    let mut total = Tally::default();
    let mut window = None;
    let mut shown = (Instant::now(), 0);
    while done < lanes {
        let update = updates.blocking_recv().ok_or_else(|| Error::Internal("a lane ended without a report".into()))?;
        match update {
            Update::Connected => {
                connected += 1;
                if connected == lanes {
                    let start = Instant::now();
                    for lane in starts.drain(..) {
                        // A lane that is gone reports why itself.
                        let _ = lane.send(start);
                    }
                    window = Some(Window::new(start, config.warmup, config.duration, config.drain));
                    shown = (start, 0);
                }
            }
            Update::Tally(tally) => {
                total.merge(&tally);
                let now = Instant::now();
                // Lanes report in the same instant each second: show the first of a burst.
                let interval = Duration::from_millis(limits::progress_interval_ms * 9 / 10);
                if let Some(window) = &window {
                    if now - shown.0 >= interval {
                        on_progress(&progress(window, &total, now, shown));
                        shown = (now, total.finished);
                    }
                }
            }
            Update::Done { tally, abandoned: lane_abandoned } => {
                total.merge(&tally);
                abandoned += lane_abandoned;
                done += 1;
            }
            Update::Failed(error) => return Err(error),
        }
    }
    Ok(Report { tally: total, abandoned, measured: config.duration })
}

fn progress(window: &Window, total: &Tally, now: Instant, (shown_at, shown_finished): (Instant, u64)) -> Progress {
    let phase = if now < window.measure_from {
        Phase::Warmup
    } else if now < window.end {
        Phase::Measuring
    } else {
        Phase::Draining
    };
    let seconds = (now - shown_at).as_secs_f64();
    let finished = total.finished - shown_finished;
    Progress {
        phase,
        left: window.end.saturating_duration_since(now),
        rate_per_s: if seconds > 0.0 { finished as f64 / seconds } else { 0.0 },
        errors: total.errors,
        latency_us_p99: (!total.latency_us.is_empty()).then(|| total.latency_us.value_at_quantile(0.99)),
    }
}

/// One lane's share of the run.
struct LanePlan {
    config: Config,
    lane: u32,
    lanes: u32,
}

impl LanePlan {
    /// The lane's thread: its runtime, then its pacer's end.
    fn run(self, start: oneshot::Receiver<Instant>, updates: mpsc::Sender<Update>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = updates.blocking_send(Update::Failed(error.into()));
                return;
            }
        };
        let pacer = LocalSet::new().block_on(&runtime, async {
            match self.drive(start, &updates).await {
                Ok(pacer) => pacer,
                Err(error) => {
                    // If the main thread is gone, it has an error of its own to report.
                    let _ = updates.send(Update::Failed(error)).await;
                    None
                }
            }
        });
        if let Some(pacer) = pacer {
            // The pacer ends within `pacer_sleep_ms_max` of its lane: no thread outlives a run.
            let _ = pacer.join();
        }
    }

    /// This lane's connections: what `connections` is to the run, split over the lanes.
    fn connections(&self) -> u32 {
        let (connections, lanes) = (self.config.load.connections(), self.lanes);
        connections / lanes + u32::from(self.lane < connections % lanes)
    }

    async fn drive(
        &self,
        start: oneshot::Receiver<Instant>,
        updates: &mpsc::Sender<Update>,
    ) -> Result<Option<thread::JoinHandle<()>>, Error> {
        let config = &self.config;
        let unreachable =
            |failure: Failure| Error::Connect { target: config.target.to_string(), reason: failure.to_string() };
        let mut connections = Vec::new();
        // A native client multiplexes: the lane's workers share one.
        let native = match &config.target {
            Target::Native(target) => Some(native::Connection::open(target).await.map_err(unreachable)?),
            Target::Http(_) => None,
        };
        for _ in 0..self.connections() {
            let connection = match &native {
                Some(client) => Connection::Native(client.clone()),
                None => Connection::open(config).await.map_err(unreachable)?,
            };
            connections.push(connection);
        }
        send(updates, Update::Connected).await?;
        let Ok(start) = start.await else {
            // Another lane failed: the run ends before it starts.
            return Ok(None);
        };

        let window = Window::new(start, config.warmup, config.duration, config.drain);
        let (open_loop, pacer) = match config.load {
            Load::Closed { .. } => (None, None),
            Load::Open { rate_per_s, .. } => {
                let schedule = Schedule::new(start, rate_per_s, u64::from(self.lane), u64::from(self.lanes));
                let (released, pacer) = pacer::start(schedule, window.end)?;
                (Some(OpenLoop { schedule, next: Cell::new(0), released: Mutex::new(released) }), Some(pacer))
            }
        };
        let lane = Rc::new(Lane { config: config.clone(), window, open_loop });

        let mut tallies = Vec::new();
        let mut workers = Vec::new();
        for (index, connection) in connections.into_iter().enumerate() {
            let tally = Rc::new(RefCell::new(Tally::default()));
            let stream = u64::from(self.lane) * u64::from(limits::connections_max) + index as u64;
            let rng = Rng::for_stream(config.seed, stream);
            workers.push(tokio::task::spawn_local(work(lane.clone(), connection, tally.clone(), rng)));
            tallies.push(tally);
        }

        let workers_done = async {
            for worker in workers {
                worker.await.map_err(|error| Error::Internal(format!("a worker failed: {error}")))?;
            }
            Ok::<(), Error>(())
        };
        tokio::pin!(workers_done);
        let interval = Duration::from_millis(limits::progress_interval_ms);
        let mut ticks = tokio::time::interval_at((start + interval).into(), interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                result = &mut workers_done => break result?,
                _ = ticks.tick() => send(updates, Update::Tally(sum(&tallies))).await?,
            }
        }

        let abandoned = lane.open_loop.as_ref().map_or(0, |open_loop| open_loop.abandoned(&window));
        send(updates, Update::Done { tally: sum(&tallies), abandoned }).await?;
        Ok(pacer)
    }
}

async fn send(updates: &mpsc::Sender<Update>, update: Update) -> Result<(), Error> {
    updates.send(update).await.map_err(|_| Error::Internal("the main thread stopped listening".into()))
}

/// Moves the workers' counts into one tally.
fn sum(tallies: &[Rc<RefCell<Tally>>]) -> Tally {
    let mut sum = Tally::default();
    for tally in tallies {
        tally.borrow_mut().move_into(&mut sum);
    }
    sum
}

/// What the workers of one lane share.
struct Lane {
    config: Config,
    window: Window,
    open_loop: Option<OpenLoop>,
}

/// The lane's place in the open-loop schedule.
struct OpenLoop {
    schedule: Schedule,
    /// The lane's next request number.
    next: Cell<u64>,
    /// How many requests the pacer released. Free workers queue on the lock (fairly, in
    /// order): only the first in line waits on the pacer, so a release wakes one task.
    released: Mutex<watch::Receiver<u64>>,
}

impl OpenLoop {
    /// Waits for the lane's next request to be due and returns its intended time; `None`
    /// once the measured period's requests are all taken or the drain is over.
    async fn next(&self, window: &Window) -> Option<Instant> {
        let mut released = self.released.lock().await;
        let k = self.next.get();
        let intended = self.schedule.intended(k);
        if intended >= window.end || Instant::now() >= window.drain_until {
            return None;
        }
        self.next.set(k + 1);
        if released.wait_for(|&released| released > k).await.is_err() {
            // The pacer is gone, which it cannot be while this lane listens; keep the
            // schedule anyway, on tokio's coarser timer.
            tokio::time::sleep_until(intended.into()).await;
        }
        Some(intended)
    }

    /// Measured requests never taken: the drain ended first.
    fn abandoned(&self, window: &Window) -> u64 {
        let first_measured = self.schedule.count_before(window.measure_from);
        let end = self.schedule.count_before(window.end);
        end.saturating_sub(self.next.get().max(first_measured))
    }
}

/// A worker's way to the target: its own HTTP connection, or its share of the lane's
/// native client.
enum Connection {
    Http(http::Connection),
    Native(native::Connection),
}

impl Connection {
    async fn open(config: &Config) -> Result<Connection, Failure> {
        match &config.target {
            Target::Http(target) => Ok(Connection::Http(http::Connection::open(target.address).await?)),
            Target::Native(target) => Ok(Connection::Native(native::Connection::open(target).await?)),
        }
    }

    /// Whether the connection can take a request; `false` when the server closed it.
    async fn ready(&mut self) -> bool {
        match self {
            Connection::Http(connection) => connection.ready().await,
            // The client reconnects by itself.
            Connection::Native(_) => true,
        }
    }

    async fn send(&mut self, request: &Request, key: u64) -> Result<(), Failure> {
        match (self, request) {
            (Connection::Http(connection), Request::Http(spec)) => connection.send(spec.build(key)?).await,
            (Connection::Native(connection), Request::Native(spec)) => connection.send(spec, key).await,
            _ => Err(Failure::Request("the request does not fit the target".into())),
        }
    }
}

/// One worker: one connection, one request at a time, until the lane's requests are done.
async fn work(lane: Rc<Lane>, connection: Connection, tally: Rc<RefCell<Tally>>, mut rng: Rng) {
    let window = lane.window;
    let mut connection = Some(connection);
    // When the connection last became free: a request intended before that waited for it.
    let mut free_since = window.start;
    loop {
        let intended = match &lane.open_loop {
            None => {
                let now = Instant::now();
                if now >= window.end {
                    return;
                }
                now
            }
            Some(open_loop) => match open_loop.next(&window).await {
                Some(intended) => intended,
                None => return,
            },
        };
        let key = lane.config.keys.pick(&mut rng);
        let outcome = exchange(&lane.config, &mut connection, key, window.drain_until).await;
        let finished = Instant::now();
        record(&mut tally.borrow_mut(), &window, intended, finished, free_since > intended, &outcome);
        free_since = finished;
        if let Err(Failure::Connect(_)) = outcome {
            tokio::time::sleep(Duration::from_millis(limits::reconnect_pause_ms)).await;
        }
    }
}

/// Sends one request on `connection`, opening a new one if needed, within the request
/// timeout and the drain. A connection left unusable is dropped.
async fn exchange(
    config: &Config,
    connection: &mut Option<Connection>,
    key: u64,
    drain_until: Instant,
) -> Result<(), Failure> {
    let deadline = (Instant::now() + Duration::from_millis(limits::request_timeout_ms)).min(drain_until);
    let sent = async {
        // A connection the server closed while idle is replaced before the request goes out:
        // nothing was sent on it, so that is no failure.
        if let Some(open) = connection {
            if !open.ready().await {
                *connection = None;
            }
        }
        let open = match connection {
            Some(open) => open,
            None => connection.insert(Connection::open(config).await?),
        };
        open.send(&config.request, key).await
    };
    let outcome = tokio::time::timeout_at(deadline.into(), sent).await.unwrap_or(Err(Failure::Timeout));
    if outcome.as_ref().is_err_and(Failure::breaks_connection) {
        *connection = None;
    }
    outcome
}

/// Counts one finished request into `tally`; see `report` for what is measured.
fn record(
    tally: &mut Tally,
    window: &Window,
    intended: Instant,
    finished: Instant,
    waited: bool,
    outcome: &Result<(), Failure>,
) {
    tally.finished += 1;
    let measured = window.is_measured(intended);
    match outcome {
        Ok(()) => {
            if window.is_measured(finished) {
                tally.successes_in_period += 1;
            }
            if measured {
                let latency_us = u64::try_from((finished - intended).as_micros()).unwrap_or(u64::MAX);
                tally.latency_us.saturating_record(latency_us.min(limits::latency_us_max));
            }
        }
        Err(failure) => {
            if measured {
                tally.record_error(failure);
            }
        }
    }
    if measured && waited {
        tally.waited += 1;
    }
}

#[cfg(test)]
mod tests {
    //! Runs against a local hyper server on its own thread, with a known injected delay.
    //! Timing assertions are bounds that hold on a loaded two-core machine.

    use std::convert::Infallible;
    use std::net::SocketAddr;

    use ::http::{Request, Response, StatusCode};
    use bytes::Bytes;
    use clap::Parser;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::config::Args;
    use crate::http::TokioStream;

    /// How the test server answers.
    #[derive(Clone, Copy)]
    struct Server {
        delay: Duration,
        /// One request at a time over all connections: a server slower than the rate.
        serial: bool,
        status: StatusCode,
    }

    impl Server {
        fn new(delay_ms: u64) -> Server {
            Server { delay: Duration::from_millis(delay_ms), serial: false, status: StatusCode::OK }
        }

        /// Starts the server on a thread of its own; it lives as long as the test process.
        fn start(self) -> SocketAddr {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let address = listener.local_addr().unwrap();
            thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                LocalSet::new().block_on(&runtime, self.accept(listener));
            });
            address
        }

        async fn accept(self, listener: std::net::TcpListener) {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let gate = Rc::new(Semaphore::new(1));
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let gate = gate.clone();
                tokio::task::spawn_local(async move {
                    let service = hyper::service::service_fn(|request| self.answer(request, gate.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .header_read_timeout(None)
                        .serve_connection(TokioStream::new(stream), service)
                        .await;
                });
            }
        }

        async fn answer(
            self,
            request: Request<Incoming>,
            gate: Rc<Semaphore>,
        ) -> Result<Response<Full<Bytes>>, Infallible> {
            let _turn = if self.serial { Some(gate.acquire().await.unwrap()) } else { None };
            tokio::time::sleep(self.delay).await;
            // Only the counter workload's request is answered with `status`.
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let expected = parts.method == "POST"
                && parts.uri.path().starts_with("/v1/call/example/counter/k")
                && parts.headers["content-type"] == "application/vnd.example/delta"
                && body == "1";
            let status = if expected { self.status } else { StatusCode::BAD_REQUEST };
            Ok(Response::builder().status(status).body(Full::new(Bytes::from("answer"))).unwrap())
        }
    }

    fn config(address: SocketAddr, flags: &[&str]) -> Config {
        let target = format!("http://{address}");
        let args = ["statefun-loadgen", "--target", &target].into_iter().chain(flags.iter().copied());
        Args::try_parse_from(args).unwrap().config().unwrap()
    }

    fn ms(milliseconds: u64) -> u64 {
        milliseconds * 1000
    }

    #[test]
    fn closed_loop_latency_includes_the_server_delay() {
        let address = Server::new(20).start();
        let config = config(address, &["--concurrency", "2", "--warmup", "0.2", "--duration", "0.5"]);
        let report = run(&config, |_| {}).unwrap();
        let summary = report.summary();
        assert_eq!(summary.errors, 0, "{report}");
        assert!(summary.completed >= 2, "{report}");
        // Measured requests are sent in the 0.5 s after warmup and take 20 ms at least: at
        // most 26 per connection. Counting the warmup too would allow 36.
        assert!(summary.completed <= 52, "{report}");
        assert!(summary.p50_us >= ms(20) && summary.p50_us < ms(200), "{report}");
        assert!(summary.throughput_rps > 0.0 && summary.throughput_rps <= 110.0, "{report}");
        assert_eq!(report.tally.waited, 0);
    }

    #[test]
    fn open_loop_latency_counts_from_the_intended_time() {
        let address = Server::new(20).start();
        let config = config(address, &["--rate", "50", "--concurrency", "4", "--warmup", "0", "--duration", "1"]);
        let report = run(&config, |_| {}).unwrap();
        let summary = report.summary();
        // The schedule has exactly 50 requests in the second measured, all answered.
        assert_eq!((summary.completed, summary.errors), (50, 0), "{report}");
        assert!(summary.p50_us >= ms(20) && summary.p50_us < ms(200), "{report}");
    }

    #[test]
    fn open_loop_latency_grows_with_the_queue_of_a_slow_server() {
        // The server takes 20 ms per request, one at a time: 50 a second, asked for 100.
        // Request i is due at 10 i ms and answered near 20 (i + 1) ms: its latency grows to
        // a second by the end. A closed loop on the same server sees 20 ms throughout.
        let address = Server { serial: true, ..Server::new(20) }.start();
        let flags = ["--rate", "100", "--concurrency", "4", "--warmup", "0", "--duration", "1"];
        let mut progress = Vec::new();
        let open = run(&config(address, &flags), |update| progress.push(update.clone())).unwrap();
        let summary = open.summary();
        assert_eq!(summary.completed + summary.errors, 100, "{open}");
        assert_eq!(summary.errors, 0, "{open}");
        assert!(summary.p50_us >= ms(200), "p50 without the queue: {open}");
        assert!(summary.max_us >= ms(500), "{open}");
        assert!(open.tally.waited > 0, "every connection was busy, often: {open}");
        assert!(summary.throughput_rps <= 60.0, "throughput is what the server did: {open}");
        assert!(!progress.is_empty(), "a 2 s run shows progress");
        assert!(progress.iter().any(|update| update.latency_us_p99.is_some()), "{progress:?}");

        let closed = run(&config(address, &["--warmup", "0", "--duration", "0.5"]), |_| {}).unwrap();
        let summary = closed.summary();
        assert!(summary.completed > 0 && summary.p99_us < ms(200), "{closed}");
    }

    #[test]
    fn requests_left_at_the_end_of_the_drain_are_errors() {
        let address = Server { serial: true, ..Server::new(50) }.start();
        let flags = ["--rate", "100", "--concurrency", "2", "--warmup", "0", "--duration", "0.5"];
        let mut config = config(address, &flags);
        config.drain = Duration::from_millis(200);
        let report = run(&config, |_| {}).unwrap();
        let summary = report.summary();
        // 50 requests due; the server can answer 14 in the 0.7 s of period and drain.
        assert_eq!(summary.completed + summary.errors, 50, "{report}");
        assert!(summary.completed <= 20, "{report}");
        assert!(report.abandoned > 0, "{report}");
        assert!(report.tally.errors > 0, "requests in flight at the end time out: {report}");
    }

    #[test]
    fn lanes_share_the_schedule_and_the_connections() {
        let address = Server::new(5).start();
        let flags = ["--rate", "100", "--concurrency", "3", "--threads", "2", "--warmup", "0.1", "--duration", "0.5"];
        let report = run(&config(address, &flags), |_| {}).unwrap();
        let summary = report.summary();
        assert_eq!((summary.completed, summary.errors), (50, 0), "{report}");

        let flags = ["--concurrency", "4", "--threads", "2", "--warmup", "0", "--duration", "0.3"];
        let report = run(&config(address, &flags), |_| {}).unwrap();
        assert!(report.summary().completed > 4 && report.summary().errors == 0, "{report}");
    }

    #[test]
    fn non_2xx_answers_are_errors_not_latencies() {
        let address = Server { status: StatusCode::SERVICE_UNAVAILABLE, ..Server::new(1) }.start();
        let report = run(&config(address, &["--warmup", "0", "--duration", "0.3"]), |_| {}).unwrap();
        let summary = report.summary();
        assert_eq!((summary.completed, summary.max_us, summary.throughput_rps), (0, 0, 0.0), "{report}");
        assert!(summary.errors > 0, "{report}");
        let sample = report.tally.error_sample.unwrap();
        assert!(sample.starts_with("503 Service Unavailable: answer"), "{sample}");

        // A request the server does not understand is an error too: here, a wrong body.
        let address = Server::new(1).start();
        let report = run(&config(address, &["--body", "2", "--warmup", "0", "--duration", "0.2"]), |_| {}).unwrap();
        assert!(report.summary().errors > 0 && report.summary().completed == 0, "{report}");
    }

    #[test]
    fn an_unreachable_target_fails_the_run_at_once() {
        let address = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let began = Instant::now();
        let error = run(&config(address, &["--concurrency", "3", "--threads", "2"]), |_| {}).unwrap_err();
        assert!(matches!(error, Error::Connect { .. }), "{error}");
        assert!(error.to_string().starts_with(&format!("cannot connect to http://{address}")), "{error}");
        assert!(began.elapsed() < Duration::from_secs(5), "the 10 s run did not start");
    }

    #[test]
    fn a_measured_request_records_its_latency_from_the_intended_time() {
        let start = Instant::now();
        let window = Window::new(start, Duration::from_secs(1), Duration::from_secs(1), Duration::from_secs(1));
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut tally = Tally::default();
        record(&mut tally, &window, at(500), at(1200), false, &Ok(()));
        assert_eq!((tally.latency_us.len(), tally.successes_in_period), (0, 1), "warmup, answered in period");
        record(&mut tally, &window, at(1000), at(1250), true, &Ok(()));
        record(&mut tally, &window, at(1900), at(2100), false, &Ok(()));
        assert_eq!(tally.latency_us.len(), 2);
        assert!(tally.latency_us.equivalent(tally.latency_us.min(), ms(200)), "answered after the period");
        assert!(tally.latency_us.equivalent(tally.latency_us.max(), ms(250)));
        assert_eq!((tally.successes_in_period, tally.waited), (2, 1));
        record(&mut tally, &window, at(1500), at(1600), false, &Err(Failure::Timeout));
        record(&mut tally, &window, at(200), at(300), false, &Err(Failure::Timeout));
        assert_eq!((tally.errors, tally.latency_us.len(), tally.finished), (1, 2, 5));
    }
}
