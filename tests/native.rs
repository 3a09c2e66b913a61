//! The native protocol end to end: a real `statefun serve`, driven through the QUIC client
//! library. Calls, sends and egress subscriptions work; requests reach their owning shard
//! without a hop; a request retried across a SIGKILL and restart applies once; a bad frame
//! closes only its own connection; a client without the token is refused; `statefun snapshot`
//! asks every shard for a checkpoint and prints each one's answer.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use statefun::core::{Address, TypeName, TypedValue};
use statefun_net::client::{Client, ClientConfig};
use statefun_net::frame::{self, Kind};
use statefun_net::Error;
use support::{data_dir, get, Server};

fn address(text: &str) -> Address {
    let (function, id) = text.rsplit_once('/').unwrap();
    Address::new(TypeName::parse(function).unwrap(), id).unwrap()
}

fn text(value: &str) -> TypedValue {
    TypedValue::new(TypeName::parse("example/text").unwrap(), value.to_string())
}

/// Two consecutive free UDP ports, for a server that must come back on the same ones.
fn free_ports() -> u16 {
    loop {
        let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn start(data: &std::path::Path, port: u16) -> Server {
    Server::start_in(data, &["--shards", "2", "--listen", &format!("127.0.0.1:{port}")])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn client(data: &std::path::Path, port: u16) -> Client {
    let connect: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Client::connect(ClientConfig::dev(connect, data).unwrap()).await.unwrap()
}

fn forwarded(server: &Server) -> u64 {
    let metrics = get(&format!("{}/metrics", server.url)).body;
    metrics
        .lines()
        .filter(|line| line.starts_with("statefun_forwarded_requests_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn calls_sends_and_subscriptions_go_straight_to_their_shard() {
    let data = data_dir();
    let port = free_ports();
    let server = start(&data, port);
    runtime().block_on(async {
        let client = client(&data, port).await;
        assert_eq!(client.shards(), 2);
        let mut calls = Vec::new();
        for key in 0..200 {
            let client = client.clone();
            calls.push(tokio::spawn(async move {
                let target = address(&format!("example/counter/k{key}"));
                client.call(&target, &text("2")).await.unwrap();
                client.call(&target, &text("3")).await.unwrap()
            }));
        }
        for call in calls {
            assert_eq!(call.await.unwrap().as_text().unwrap(), "5");
        }
        client.send(&address("example/counter/sent"), &text("4")).await.unwrap();
        let total = client.call(&address("example/counter/sent"), &text("0")).await.unwrap();
        assert_eq!(total.as_text().unwrap(), "4");
        assert_eq!(forwarded(&server), 0, "a smart client never needs a hop between shards");

        let reminders = TypeName::parse("example/reminders").unwrap();
        let mut records = client.subscribe(&reminders, vec![0, 0]);
        for n in 0..3 {
            let reply =
                client.call(&address(&format!("example/reminder/r{n}")), &text(&format!("remind 10 hello{n}"))).await;
            assert_eq!(reply.unwrap().as_text().unwrap(), "scheduled");
        }
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let record = tokio::time::timeout(Duration::from_secs(10), records.recv()).await.unwrap().unwrap().unwrap();
            seen.push(record.value.as_text().unwrap().to_string());
        }
        seen.sort();
        assert_eq!(seen, ["hello0", "hello1", "hello2"]);
        // Resuming past the end gives nothing old.
        let mut later = client.subscribe(&reminders, vec![100, 100]);
        assert!(tokio::time::timeout(Duration::from_millis(300), later.recv()).await.is_err());
    });
    drop(server);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn a_request_retried_across_a_crash_applies_once() {
    let data = data_dir();
    let port = free_ports();
    let server = start(&data, port);
    let runtime = runtime();
    let client = runtime.block_on(client(&data, port));
    let counter = address("example/counter/once");
    let first = runtime.block_on(client.call_with_key(&counter, &text("1"), "the-key")).unwrap();
    assert_eq!(first.as_text().unwrap(), "1");
    server.kill();
    // While the node is down, requests wait and retry; one with the same key comes back with
    // the first outcome once it is up again.
    let retry = {
        let (client, counter) = (client.clone(), counter.clone());
        runtime.spawn(async move { client.call_with_key(&counter, &text("1"), "the-key").await })
    };
    let fresh = {
        let (client, counter) = (client.clone(), counter.clone());
        runtime.spawn(async move { client.call(&counter, &text("10")).await })
    };
    std::thread::sleep(Duration::from_millis(500));
    let server = start(&data, port);
    let retried = runtime.block_on(retry).unwrap().unwrap();
    assert_eq!(retried.as_text().unwrap(), "1", "the first outcome, not a second increment");
    assert_eq!(runtime.block_on(fresh).unwrap().unwrap().as_text().unwrap(), "11");
    let total = runtime.block_on(client.call(&counter, &text("0"))).unwrap();
    assert_eq!(total.as_text().unwrap(), "11");
    drop(server);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn bad_frames_close_only_their_connection_and_strangers_are_refused() {
    let data = data_dir();
    let port = free_ports();
    let server = start(&data, port);
    runtime().block_on(async {
        let good = client(&data, port).await;
        let connect: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

        // A client with the wrong token is refused, and told why.
        let mut stranger = ClientConfig::dev(connect, &data).unwrap();
        stranger.token = "not-the-token".into();
        let refused = Client::connect(stranger).await.unwrap_err();
        assert!(matches!(&refused, Error::Refused(why) if why.contains("unauthenticated")), "{refused}");

        // A raw connection that says hello properly, then sends garbage.
        let config = ClientConfig::dev(connect, &data).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config.tls.clone());
        let connection = endpoint.connect(connect, &config.server_name).unwrap().await.unwrap();
        let (mut send, mut receive) = connection.open_bi().await.unwrap();
        send.write_all(&frame::encode(Kind::Hello, &frame::Hello { token: config.token.clone() })).await.unwrap();
        let mut reader = frame::Reader::default();
        while reader.next_frame().unwrap().is_none() {
            let chunk = receive.read_chunk(4096, true).await.unwrap().unwrap();
            reader.extend(&chunk.bytes);
        }
        let mut garbage = frame::encode(Kind::Request, &frame::Hello { token: "x".repeat(40) });
        garbage[20] ^= 0xff;
        send.write_all(&garbage).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await.unwrap();
        let reason = closed.to_string();
        assert!(reason.contains("bad frame"), "{reason}");

        // The good client never noticed.
        let reply = good.call(&address("example/counter/fine"), &text("3")).await.unwrap();
        assert_eq!(reply.as_text().unwrap(), "3");
    });
    drop(server);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn the_snapshot_command_checkpoints_every_shard() {
    let data = data_dir();
    let port = free_ports();
    let server = start(&data, port);
    runtime().block_on(async {
        let client = client(&data, port).await;
        for key in 0..20 {
            client.call(&address(&format!("example/counter/s{key}")), &text("1")).await.unwrap();
        }
    });
    let snapshot = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_statefun"))
            .args(["snapshot", "--connect", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}{stderr}");
        let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 2, "one line per shard: {stdout}");
        // Each shard's own checkpoint, in shard order: `shard 0: generation 4, LSN 123456,
        // delta of 1,200 addresses, 3 chunks, 1.2 MiB written`.
        let mut generations = Vec::new();
        for (shard, line) in lines.iter().enumerate() {
            let rest = line.strip_prefix(&format!("shard {shard}: generation ")).unwrap_or_else(|| panic!("{line}"));
            assert!(rest.contains(", LSN ") && rest.ends_with(" written"), "{line}");
            generations.push(rest.split(',').next().unwrap().parse::<u64>().unwrap());
        }
        (generations, lines)
    };
    let (first, lines) = snapshot();
    // The counters live on both shards: each shard's checkpoint holds some of them.
    assert!(lines.iter().all(|line| !line.contains(" of 0 addresses")), "{lines:?}");
    let (second, _) = snapshot();
    assert!(first.iter().zip(&second).all(|(first, second)| second > first), "{first:?} then {second:?}");
    // The library call behind the command: one entry per shard, in shard order.
    let third = runtime().block_on(async { client(&data, port).await.snapshot().await.unwrap() });
    assert_eq!(third.len(), 2);
    for (entry, second) in third.iter().zip(&second) {
        match &entry.outcome {
            frame::SnapshotOutcome::Done { generation, .. } => assert!(generation > second, "{third:?}"),
            frame::SnapshotOutcome::Failed(why) => panic!("{why}"),
        }
    }
    assert_eq!(third.iter().map(|entry| entry.shard.0).collect::<Vec<_>>(), [0, 1]);
    drop(server);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn the_snapshot_command_reports_each_failed_shard_and_fails() {
    let data = data_dir();
    let port = free_ports();
    let listen = format!("127.0.0.1:{port}");
    // No log, no checkpoints: every shard says no, each in its own words.
    let server = Server::start_in(&data, &["--shards", "2", "--listen", &listen, "--durability", "memory"]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_statefun"))
        .args(["snapshot", "--connect", &listen, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per shard: {stdout}");
    for (shard, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("shard {shard}: failed: shard {shard}: ")), "{line}");
    }
    assert!(stderr.contains("2 of 2 shards took no checkpoint"), "{stderr}");
    drop(server);
    let _ = std::fs::remove_dir_all(data);
}
