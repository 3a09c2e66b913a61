//! The native protocol measured with the real client library.
//!
//! - `native-bench bare DATA_DIR`: the bare QUIC round trip: the client against an echo
//!   service on the same endpoint driver the shards use (glommio + quinn-proto), which answers
//!   every request at once. One request at a time; p50/p99.
//! - `native-bench call ADDR DATA_DIR [SECONDS]`: `example/counter` calls, one at a time,
//!   against a running node; p50/p99.
//! - `native-bench pipelined ADDR DATA_DIR CONNECTIONS IN_FLIGHT [SECONDS]`: calls over
//!   10,000 keys from `CONNECTIONS` clients (each one connection per shard) with `IN_FLIGHT`
//!   requests outstanding in all; calls per second, p50/p99.

#![allow(clippy::print_stdout)] // The figures are the program's output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use statefun_core::{Address, TypeName, TypedValue};
use statefun_net::client::{Client, ClientConfig};
use statefun_net::frame::{self, Kind};
use statefun_net::server::{self, Command, Event};
use statefun_net::tls::{self, DevFiles};

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|error| panic!("histogram: {error}"))
}

fn report(label: &str, histogram: &Histogram<u64>, elapsed: Duration) {
    println!(
        "{label}: {} requests, {:.0}/s, p50_us={} p99_us={} max_us={}",
        histogram.len(),
        histogram.len() as f64 / elapsed.as_secs_f64(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.max()
    );
}

/// Starts an echo endpoint on its own executor: `Welcome` to any `Hello`, `Admitted` to any
/// request, at once.
fn echo(data_dir: &Path) -> Result<SocketAddr, Failure> {
    let files = DevFiles::in_data_dir(data_dir);
    files.ensure()?;
    let config = tls::server_config(&files.cert, &files.key)?;
    let reset_key = files.read_reset_key()?;
    let (address_sender, address) = std::sync::mpsc::channel();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let endpoint = match server::start(any, config, &reset_key) {
                Ok(endpoint) => endpoint,
                Err(error) => return eprintln!("echo endpoint: {error}"),
            };
            let _ = address_sender.send(endpoint.local_address);
            while let Some(event) = endpoint.events.recv().await {
                let Event::Frame { connection, kind, payload } = event else { continue };
                let reply = match kind {
                    Kind::Hello => {
                        let welcome = frame::Welcome {
                            shard: 0,
                            shards: vec![frame::ShardEndpoint {
                                shard: 0,
                                address: endpoint.local_address.to_string(),
                            }],
                        };
                        frame::encode(Kind::Welcome, &welcome)
                    }
                    Kind::Request => {
                        let Ok(request) = frame::decode::<frame::Request>(kind, &payload) else { continue };
                        let _ = endpoint.commands.try_send(Command::Done { connection });
                        frame::encode(Kind::Reply, &frame::Reply { id: request.id, outcome: frame::Outcome::Admitted })
                    }
                    _ => continue,
                };
                let _ = endpoint.commands.try_send(Command::Send { connection, frame: reply });
            }
        })
        .map_err(|error| -> Failure { error.to_string().into() })?;
    Ok(address.recv()?)
}

fn counter(key: u64) -> Result<Address, Failure> {
    Ok(Address::new(TypeName::parse("example/counter")?, &format!("k{key}"))?)
}

async fn one_at_a_time(client: &Client, duration: Duration, call: bool) -> Result<(Histogram<u64>, Duration), Failure> {
    let value = TypedValue::new(TypeName::parse("example/delta")?, "1");
    let mut histogram = histogram();
    let started = Instant::now();
    let mut key = 0;
    while started.elapsed() < duration {
        let target = counter(key % 10_000)?;
        key += 1;
        let sent = Instant::now();
        if call {
            client.call(&target, &value).await?;
        } else {
            client.send(&target, &value).await?;
        }
        histogram.record(sent.elapsed().as_micros() as u64)?;
    }
    Ok((histogram, started.elapsed()))
}

async fn pipelined(
    address: SocketAddr,
    data_dir: &Path,
    connections: usize,
    in_flight: usize,
    duration: Duration,
) -> Result<(), Failure> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(ClientConfig::dev(address, data_dir)?).await?);
    }
    let started = Instant::now();
    let mut workers = Vec::with_capacity(in_flight);
    for worker in 0..in_flight {
        let client = clients[worker % connections].clone();
        workers.push(tokio::spawn(async move {
            let value = TypedValue::new(TypeName::parse("example/delta")?, "1");
            let mut histogram = histogram();
            let mut key = worker as u64 * 7919;
            while started.elapsed() < duration {
                let target = counter(key % 10_000)?;
                key += 1;
                let sent = Instant::now();
                client.call(&target, &value).await?;
                histogram.record(sent.elapsed().as_micros() as u64)?;
            }
            Ok::<_, Failure>(histogram)
        }));
    }
    let mut total = histogram();
    for worker in workers {
        total.add(worker.await??)?;
    }
    report(&format!("pipelined, {connections} connection(s), {in_flight} in flight"), &total, started.elapsed());
    Ok(())
}

async fn run(args: Vec<String>) -> Result<(), Failure> {
    let arg = |index: usize| {
        args.get(index)
            .cloned()
            .ok_or_else(|| -> Failure { format!("missing argument {index}; see the source's header").into() })
    };
    let seconds = |index: usize| {
        args.get(index).and_then(|text| text.parse().ok()).map_or(Duration::from_secs(5), Duration::from_secs)
    };
    match arg(0)?.as_str() {
        "bare" => {
            let data_dir = PathBuf::from(arg(1)?);
            let address = echo(&data_dir)?;
            let client = Client::connect(ClientConfig::dev(address, &data_dir)?).await?;
            let (histogram, elapsed) = one_at_a_time(&client, seconds(2), false).await?;
            report("bare QUIC round trip (echo endpoint)", &histogram, elapsed);
        }
        "call" => {
            let (address, data_dir) = (arg(1)?.parse()?, PathBuf::from(arg(2)?));
            let client = Client::connect(ClientConfig::dev(address, &data_dir)?).await?;
            let (histogram, elapsed) = one_at_a_time(&client, seconds(3), true).await?;
            report("QUIC call, c=1", &histogram, elapsed);
        }
        "pipelined" => {
            let (address, data_dir) = (arg(1)?.parse()?, PathBuf::from(arg(2)?));
            let (connections, in_flight) = (arg(3)?.parse()?, arg(4)?.parse()?);
            pipelined(address, &data_dir, connections, in_flight, seconds(5)).await?;
        }
        other => return Err(format!("unknown mode {other:?}: bare, call or pipelined").into()),
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
    let outcome =
        runtime.map_err(Failure::from).and_then(|runtime| runtime.block_on(run(std::env::args().skip(1).collect())));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("native-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
