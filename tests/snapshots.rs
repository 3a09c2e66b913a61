//! Checkpoints end to end, with real processes: a node writes its checkpoints to a blob
//! store outside its data directory; `statefun snapshot` takes one on every shard; then the
//! data directory is deleted, a node starts on an empty one with the same blob store, and
//! every counter must read as before, retried requests must not apply again, and
//! `statefun snapshots list` must show the checkpoints. A node restarted with another shard
//! count (2 to 1 and back) must read every counter as before. Crashes during checkpoints are in
//! `tests/crash.rs`; the bytes of a delta in `storage/tests/checkpoint_size.rs`.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{data_dir, try_post, Server};

const COUNTERS: usize = 200;
const SENDS: usize = 600;

fn statefun(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let env = env.iter().map(|(key, value)| (key, value));
    let output = Command::new(env!("CARGO_BIN_EXE_statefun")).args(args).envs(env).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn send(server: &Server, counter: usize, key: &str, delta: u64) {
    let url = format!("{}/v1/send/example/counter/k{counter}", server.url);
    let reply = try_post(&url, key, &delta.to_string(), Duration::from_secs(10)).unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
}

fn count(server: &Server, counter: usize) -> u64 {
    server.call(&format!("example/counter/k{counter}"), "0").parse().unwrap()
}

#[test]
fn a_node_on_an_empty_disk_restores_every_counter_from_a_local_blob_store() {
    let blobs = data_dir();
    restore_from_blob_store_alone(&format!("file://{}", blobs.display()), &[]);
    let _ = std::fs::remove_dir_all(blobs);
}

/// The same against a real S3-compatible server.
#[cfg(feature = "s3")]
#[test]
fn a_node_on_an_empty_disk_restores_every_counter_from_s3() {
    let s3 = support::S3Server::start("checkpoints");
    restore_from_blob_store_alone("s3://checkpoints/node-a", &s3.env());
}

/// Fills counters, checkpoints every shard with `statefun snapshot`, deletes the data
/// directory, and starts a node on an empty one with the same blob store.
fn restore_from_blob_store_alone(blob_url: &str, env: &[(&str, String)]) {
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let args = ["--shards", "2", "--blob-url", blob_url, "--snapshot-interval", "1h", "--listen", &listen];

    let first = data_dir();
    let server = Server::start_with_env(&first, &args, env);
    let mut expected = vec![0u64; COUNTERS];
    for n in 0..SENDS {
        let delta = (n % 7 + 1) as u64;
        send(&server, n % COUNTERS, &format!("inc-{n}"), delta);
        expected[n % COUNTERS] += delta;
    }
    // Every send is admitted; wait until all are applied, so the checkpoint holds them.
    for (counter, expected) in expected.iter().enumerate() {
        assert!(support::eventually(Duration::from_secs(10), || count(&server, counter) == *expected));
    }
    let first_dir = first.display().to_string();
    let (ok, out) = statefun(&["snapshot", "--connect", &listen, "--data-dir", &first_dir], env);
    assert!(ok, "statefun snapshot: {out}");
    for shard in 0..2 {
        assert!(out.contains(&format!("shard {shard}: generation")), "{out}");
    }
    server.kill();
    std::fs::remove_dir_all(&first).unwrap();

    let second = data_dir();
    let server = Server::start_with_env(&second, &args, env);
    for (counter, expected) in expected.iter().enumerate() {
        assert_eq!(count(&server, counter), *expected, "counter k{counter} after the restore");
    }
    // Requests acknowledged before the checkpoint are known: a retry is not applied again.
    for n in 0..40 {
        send(&server, n % COUNTERS, &format!("inc-{n}"), 1_000);
    }
    for (counter, expected) in expected.iter().enumerate().take(40) {
        assert_eq!(count(&server, counter), *expected, "counter k{counter} after retries");
    }

    let (ok, out) = statefun(&["snapshots", "list", "--blob-url", blob_url], env);
    assert!(ok, "statefun snapshots list: {out}");
    assert!(out.contains("shard 0 generation") && out.contains("shard 1 generation"), "{out}");
    server.kill();
    let _ = std::fs::remove_dir_all(second);
}

#[test]
fn rescaling_two_shards_to_one_and_back_keeps_every_counter() {
    let data = data_dir();
    let start = |shards: &str| Server::start_in(&data, &["--shards", shards, "--snapshot-interval", "1h"]);
    let server = start("2");
    let mut expected = vec![0u64; COUNTERS];
    for n in 0..SENDS {
        let delta = (n % 5 + 1) as u64;
        send(&server, n % COUNTERS, &format!("inc-{n}"), delta);
        expected[n % COUNTERS] += delta;
    }
    for (counter, expected) in expected.iter().enumerate() {
        assert!(support::eventually(Duration::from_secs(10), || count(&server, counter) == *expected));
    }
    // Killed without a checkpoint: the move reads the logs too.
    server.kill();
    for shards in ["1", "2"] {
        let server = start(shards);
        for (counter, expected) in expected.iter().enumerate() {
            assert_eq!(count(&server, counter), *expected, "counter k{counter} on {shards} shards");
        }
        // The idempotency keys moved along: a retry does not apply again.
        for n in 0..20 {
            send(&server, n % COUNTERS, &format!("inc-{n}"), 1_000);
        }
        for (counter, expected) in expected.iter().enumerate().take(20) {
            assert_eq!(count(&server, counter), *expected, "counter k{counter} after retries on {shards} shards");
        }
        // More work on this layout, then moved again.
        for (counter, expected) in expected.iter_mut().enumerate() {
            send(&server, counter, &format!("more-{shards}-{counter}"), 1);
            *expected += 1;
        }
        for (counter, expected) in expected.iter().enumerate() {
            assert!(support::eventually(Duration::from_secs(10), || count(&server, counter) == *expected));
        }
        server.kill();
    }
    let layout = std::fs::read_to_string(data.join("layout")).unwrap();
    assert!(layout.starts_with("shards=2"), "{layout}");
    let _ = std::fs::remove_dir_all(data);
}
