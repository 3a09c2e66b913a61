//! The node end to end: a real `statefun serve` with two shards, driven over HTTP by
//! concurrent clients. Sums must come out exact, messages must cross shards, the relay and
//! delayed-message examples must answer, and bad requests must get a 4xx that says why.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use statefun::core::{Address, Routing, ShardId, TypeName};
use support::{eventually, get, Server};

fn two_shards() -> Server {
    Server::start(&["--shards", "2"])
}

#[test]
fn concurrent_calls_over_many_keys_sum_exactly() {
    let server = Arc::new(two_shards());
    let keys = 1_000;
    let clients = 16;
    let calls = 10_000;
    let workers: Vec<_> = (0..clients)
        .map(|client| {
            let server = server.clone();
            thread::spawn(move || {
                let mut last_seen = vec![0i64; keys];
                for call in (client..calls).step_by(clients) {
                    let key = call % keys;
                    let total: i64 = server.call(&format!("example/counter/k{key}"), "1").parse().unwrap();
                    assert!(total > last_seen[key], "a counter went backwards");
                    last_seen[key] = total;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let mut sum = 0;
    for key in 0..keys {
        let total: i64 = server.call(&format!("example/counter/k{key}"), "0").parse().unwrap();
        assert_eq!(total, (calls / keys) as i64, "key k{key}");
        sum += total;
    }
    assert_eq!(sum, calls as i64);
}

#[test]
fn sends_are_applied_on_the_owning_shard() {
    let server = two_shards();
    for _ in 0..50 {
        let reply = server.post("/v1/send/example/counter/sent", Some("application/vnd.example/delta"), "2");
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    // A send is accepted before it runs; the call after it queues behind it.
    assert!(eventually(Duration::from_secs(5), || server.call("example/counter/sent", "0") == "100"));
}

/// A chain root whose hops alternate between the two shards at least twice.
fn root_crossing_shards() -> String {
    let routing = Routing::new(2);
    let shard = |id: &str| routing.shard_of(&Address::new(TypeName::parse("example/chain").unwrap(), id).unwrap());
    (0..)
        .map(|n| format!("r{n}"))
        .find(|root| {
            let ids: Vec<String> = (0..4).map(|hop| format!("{root}{}", "+".repeat(hop))).collect();
            let shards: Vec<ShardId> = ids.iter().map(|id| shard(id)).collect();
            shards.windows(2).filter(|pair| pair[0] != pair[1]).count() >= 2
        })
        .unwrap()
}

#[test]
fn the_chain_relays_answers_across_shards() {
    let server = Arc::new(two_shards());
    let root = root_crossing_shards();
    let reply = server.post(&format!("/v1/call/example/chain/{root}"), Some("application/vnd.example/hops"), "3");
    assert_eq!(
        (reply.status, reply.content_type.as_str(), reply.body.as_str()),
        (200, "application/vnd.example/hops", "3")
    );
    // Concurrent callers of the same chain: every hop keeps its askers in order, so each
    // caller gets its own answer back.
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (server, root) = (server.clone(), root.clone());
            thread::spawn(move || {
                for _ in 0..20 {
                    assert_eq!(server.call(&format!("example/chain/{root}"), "3"), "3");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(server.call("example/chain/long", "25"), "25");
}

#[test]
fn fanouts_answer_each_concurrent_caller_once_all_counters_replied() {
    let server = Arc::new(two_shards());
    let reply = server.post("/v1/call/example/fanout/solo", Some("application/vnd.example/fanout"), "4");
    assert_eq!(
        (reply.status, reply.content_type.as_str(), reply.body.as_str()),
        (200, "application/vnd.example/fanout", "4")
    );
    // Concurrent callers of one id with different widths: counter `i` answers the fan-outs
    // wider than `i` in order, and each caller must get its own width back.
    let widths = [1, 4, 2, 3, 4, 1, 3, 2];
    let calls = 20;
    let workers: Vec<_> = widths
        .iter()
        .map(|&width| {
            let server = server.clone();
            thread::spawn(move || {
                for _ in 0..calls {
                    assert_eq!(server.call("example/fanout/shared", &width.to_string()), width.to_string());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    // Every fan-out added 1 to each of its counters, which live on both shards.
    let routing = Routing::new(2);
    let counter = |index: usize| Address::new(TypeName::parse("example/counter").unwrap(), &format!("shared.{index}"));
    let shards: Vec<ShardId> = (0..4).map(|index| routing.shard_of(&counter(index).unwrap())).collect();
    assert!(shards.iter().any(|&shard| shard != shards[0]), "the counters of `shared` span both shards: {shards:?}");
    for index in 0..4 {
        let expected = calls * widths.iter().filter(|&&width| width > index).count();
        assert_eq!(server.call(&format!("example/counter/shared.{index}"), "0"), expected.to_string(), "{index}");
    }
    assert_eq!(server.call("example/fanout/none", "0"), "0");
    let refused = server.post("/v1/call/example/fanout/big", Some("application/vnd.example/fanout"), "4097");
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("expected a fan-out of 0 to 4096"), "{}", refused.body);
}

#[test]
fn delayed_messages_fire_and_cancel() {
    let server = two_shards();
    assert_eq!(server.call("example/reminder/r", "remind 300 first"), "scheduled");
    assert_eq!(server.call("example/reminder/r", "cancel"), "cancelled");
    assert_eq!(server.call("example/reminder/r", "remind 200 second"), "scheduled");
    // `remind` replaces a pending reminder: only `third` fires of these two.
    assert_eq!(server.call("example/reminder/q", "remind 5000 lost"), "scheduled");
    assert_eq!(server.call("example/reminder/q", "remind 100 third"), "scheduled");
    assert!(eventually(Duration::from_secs(5), || server.call("example/reminder/r", "status") == "second"));
    assert!(eventually(Duration::from_secs(5), || server.call("example/reminder/q", "status") == "third"));
    thread::sleep(Duration::from_millis(400));
    assert_eq!(server.call("example/reminder/r", "status"), "second", "the cancelled reminder stayed cancelled");
    let started = std::time::Instant::now();
    assert_eq!(server.call("example/reminder/w", "wait 300"), "waited");
    assert!(started.elapsed() >= Duration::from_millis(300), "the delayed reply came early");
}

#[test]
fn calls_without_a_reply_time_out() {
    let server = Server::start(&["--shards", "2", "--call-timeout-ms", "300"]);
    let reply = server.post("/v1/call/example/reminder/w", Some("application/vnd.example/text"), "wait 2000");
    assert_eq!(reply.status, 504);
    assert!(reply.body.contains("no reply from example/reminder/w within 300 ms"), "{}", reply.body);
    assert_eq!(server.call("example/reminder/w", "wait 10"), "waited", "the node goes on serving");
}

#[test]
fn bad_requests_get_a_clear_4xx() {
    let server = two_shards();
    let delta = Some("application/vnd.example/delta");
    let cases = [
        ("/v1/call/example/counter", delta, "1", 400, "bad path"),
        ("/v2/call/example/counter/a", delta, "1", 404, "no such endpoint"),
        ("/v1/call/example/nope/a", delta, "1", 404, "no function is registered for type example/nope"),
        ("/v1/call/example/counter/a", None, "1", 415, "no Content-Type"),
        ("/v1/call/example/counter/a", Some("text/plain"), "1", 415, "application/vnd."),
        ("/v1/call/example/counter/a", Some("application/vnd.noslash"), "1", 415, "namespace/name"),
        ("/v1/call/example/counter/a", delta, "one", 422, "expected an ASCII decimal number"),
        ("/v1/call/example/counter/a%zz", delta, "1", 400, "percent-encoded"),
    ];
    for (path, content_type, body, status, says) in cases {
        let reply = server.post(path, content_type, body);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert!(reply.body.contains(says), "{path}: {:?} does not say {says:?}", reply.body);
    }
    // An oversized body is refused from its declared length, before it is sent.
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let length = statefun::limits::http_body_bytes_max + 1;
    let head = format!(
        "POST /v1/call/example/counter/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.example/delta\r\nContent-Length: {length}\r\n\r\n"
    );
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than the limit"), "{answer}");
    let reply = get(&format!("{}/v1/call/example/counter/a", server.url));
    assert_eq!(reply.status, 405);
    assert_eq!(get(&format!("{}/v1/health", server.url)).status, 200);
    assert_eq!(server.call("example/counter/a", "0"), "0", "nothing bad was applied");
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let server = two_shards();
    let address = server.url.trim_start_matches("http://").to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_statefun"))
        .args(["serve", "--http", &address, "--data-dir"])
        .arg(std::env::temp_dir().join(format!("statefun-port-test-{}", std::process::id())))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen for HTTP on {address}")), "{stderr}");
}
