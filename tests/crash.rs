//! Exactly-once across crashes, with real processes: concurrent clients send counter
//! increments with idempotency keys (straight to counters, and through `example/forward` on
//! another shard) and retry every error; the server is killed with SIGKILL at random moments
//! and restarted on the same data. At the end each counter must equal the number of distinct
//! increments sent to it: none lost, none applied twice.
//!
//! Also: `interval` durability acknowledges only what it synced.
//!
//! `STATEFUN_CRASH_CYCLES` sets the number of kills (default 20); `STATEFUN_CRASH_SEED`
//! replays a run's timing choices.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use statefun::core::{Address, Routing, TypeName};
use support::{data_dir, eventually, try_post, Server};

const CLIENTS: usize = 6;
const COUNTERS: usize = 12;
const SHARDS: u16 = 2;

/// A tiny deterministic generator, so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Forwarder ids whose shard differs from their counter's, so the increment crosses shards.
fn forwarder_for(counter: usize) -> String {
    let routing = Routing::new(SHARDS);
    let shard =
        |function: &str, id: &str| routing.shard_of(&Address::new(TypeName::parse(function).unwrap(), id).unwrap());
    let counter_shard = shard("example/counter", &format!("c{counter}"));
    (0..).map(|n| format!("f{counter}-{n}")).find(|id| shard("example/forward", id) != counter_shard).unwrap()
}

/// Sends one increment until it is acknowledged; returns the attempts it took.
fn increment(url: &RwLock<String>, path: &str, key: &str, body: &str, mut expect: impl FnMut(&str) -> bool) -> u32 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let base = url.read().unwrap().clone();
        match try_post(&format!("{base}{path}"), key, body, Duration::from_secs(5)) {
            Ok(reply) if reply.status == 200 => {
                assert!(expect(&reply.body), "{path} {key}: unexpected reply {:?}", reply.body);
                return attempts;
            }
            Ok(reply) => {
                assert!(reply.status == 503 || reply.status == 504, "{path} {key}: {} {}", reply.status, reply.body)
            }
            Err(_) => {} // The server is down or was killed mid-request.
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn acknowledged_increments_survive_sigkill_exactly_once() {
    crash_cycles(&["--shards", "2", "--log-segment-mib", "4"], 20);
}

/// The same with a checkpoint every 200 ms, small segments removed below each, and one
/// checkpoint kept: kills land during captures, uploads, manifest writes, segment removal and
/// the blob store's garbage collection, and recovery starts from a checkpoint.
#[test]
fn acknowledged_increments_survive_sigkill_during_checkpoints() {
    let args = ["--shards", "2", "--log-segment-mib", "1", "--snapshot-interval", "200ms", "--snapshots-retained", "1"];
    crash_cycles(&args, 12);
}

/// Clients increment counters while the server is killed and restarted with `args`
/// `STATEFUN_CRASH_CYCLES` times (or `cycles`); then every counter must be exact.
fn crash_cycles(args: &[&str], cycles: u32) {
    let cycles: u32 = std::env::var("STATEFUN_CRASH_CYCLES").ok().and_then(|text| text.parse().ok()).unwrap_or(cycles);
    let seed: u64 = std::env::var("STATEFUN_CRASH_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("crash test: {cycles} cycles, STATEFUN_CRASH_SEED={seed}");
    let data = data_dir();
    let server = Server::start_in(&data, args);
    let url = Arc::new(RwLock::new(server.url.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..COUNTERS).map(|_| AtomicU64::new(0)).collect());
    let retries = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, stop, sent, retries) = (url.clone(), stop.clone(), sent.clone(), retries.clone());
            thread::spawn(move || {
                let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let counter = rng.next(COUNTERS as u64) as usize;
                    let key = format!("s{seed}-c{client}-{done}");
                    let attempts = if done % 2 == 0 {
                        let path = format!("/v1/call/example/counter/c{counter}");
                        increment(&url, &path, &key, "1", |body| body.parse::<i64>().is_ok())
                    } else {
                        let path = format!("/v1/call/example/forward/{}", forwarder_for(counter));
                        increment(&url, &path, &key, &format!("c{counter} 1"), |body| body == "forwarded")
                    };
                    sent[counter].fetch_add(1, Ordering::Relaxed);
                    retries.fetch_add(u64::from(attempts - 1), Ordering::Relaxed);
                    done += 1;
                }
                done
            })
        })
        .collect();

    let mut rng = Rng(seed);
    let mut server = Some(server);
    for _ in 0..cycles {
        thread::sleep(Duration::from_millis(100 + rng.next(300)));
        server.take().unwrap().kill();
        thread::sleep(Duration::from_millis(rng.next(100)));
        let restarted = Server::start_in(&data, args);
        *url.write().unwrap() = restarted.url.clone();
        server = Some(restarted);
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = clients.into_iter().map(|client| client.join().unwrap()).sum();
    let server = server.unwrap();
    eprintln!("crash test: {total} increments acknowledged, {} retries", retries.load(Ordering::Relaxed));
    assert!(total > 100, "too little work to mean anything: {total}");
    assert!(retries.load(Ordering::Relaxed) > 0, "no request ever hit a crash");

    let count = |counter: usize| -> u64 {
        let reply = try_post(
            &format!("{}/v1/call/example/counter/c{counter}", server.url),
            &format!("read-{counter}-{}", Instant::now().elapsed().as_nanos()),
            "0",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body.parse().unwrap()
    };
    for counter in 0..COUNTERS {
        let expected = sent[counter].load(Ordering::Relaxed);
        // Forwarded increments may still be on their way from the forwarder's outbox.
        let reached = eventually(Duration::from_secs(10), || count(counter) >= expected);
        let actual = count(counter);
        assert!(reached && actual == expected, "counter c{counter}: {actual}, expected {expected} (seed {seed})");
    }
    server.kill();
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn interval_durability_acknowledges_only_what_it_synced() {
    let data = data_dir();
    let args = ["--shards", "2", "--durability", "interval", "--fsync-interval-ms", "20", "--log-segment-mib", "4"];
    let server = Server::start_in(&data, &args);
    let url = RwLock::new(server.url.clone());
    for n in 0..50 {
        let body = increment(&url, "/v1/call/example/counter/timed", &format!("interval-{n}"), "1", |_| true);
        assert_eq!(body, 1, "no retries needed while the server is up");
    }
    server.kill();
    let server = Server::start_in(&data, &args);
    *url.write().unwrap() = server.url.clone();
    let mut total = String::new();
    increment(&url, "/v1/call/example/counter/timed", "interval-read", "0", |body| {
        total = body.to_string();
        true
    });
    assert_eq!(total, "50", "every acknowledged increment was synced before its reply");
    server.kill();
    let _ = std::fs::remove_dir_all(data);
}
