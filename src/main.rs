//! The `statefun` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use statefun::core::Retention;
use statefun::{Config, Durability, Node};

#[derive(Debug, Parser)]
#[command(name = "statefun", version, about = "Stateful functions on a thread-per-core server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node with the example application (example/counter, example/chain, example/reminder).
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Shards to run, one executor pinned per core [default: all cores].
    #[arg(long)]
    shards: Option<u16>,
    /// Address of the HTTP ingress (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8070")]
    http: SocketAddr,
    /// How committed an invocation is before its effects leave the shard.
    #[arg(long, value_enum, default_value_t = Durability::Memory)]
    durability: Durability,
    /// Where the node keeps its data.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// How long /v1/call waits for a reply, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    call_timeout_ms: u64,
    /// Busy-poll this many microseconds before an idle shard parks (lower latency, more CPU).
    #[arg(long)]
    spin_before_park_us: Option<u64>,
    /// How long a request with an Idempotency-Key is remembered, in seconds: a retry within
    /// this window gets the first outcome.
    #[arg(long, default_value_t = 24 * 3600)]
    idempotency_retention_s: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STATEFUN_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
    }
}

#[allow(clippy::print_stdout)] // The start-up line is the command's output; scripts read it.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let defaults = Config::embedded_default();
    let config = Config {
        shards: args.shards.unwrap_or(defaults.shards),
        http: args.http,
        durability: args.durability,
        data_dir: args.data_dir,
        call_timeout: Duration::from_millis(args.call_timeout_ms),
        spin_before_park: args.spin_before_park_us.map(Duration::from_micros),
        retention: Retention { keyed: Duration::from_secs(args.idempotency_retention_s), ..defaults.retention },
    };
    let durability = config.durability;
    let node = Node::start(config, statefun::examples::registry())?;
    println!("statefun serving http://{} with {} shards, durability {durability}", node.http, node.shards);
    node.wait()
}
