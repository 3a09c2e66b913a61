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
    /// Works on a stopped node's log.
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Drops everything from OFFSET in SEGMENT on (the rest of that segment is zeroed, later
    /// segments are removed): the explicit answer to damage in the middle of a log, which
    /// start-up reports with this very command. Records after the offset are lost.
    Truncate {
        /// The segment file, e.g. data/shard-0/log/00000003.seg.
        segment: PathBuf,
        /// The byte offset in it where the damage starts.
        offset: u64,
    },
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
    #[arg(long, value_enum, default_value_t = Durability::Fsync)]
    durability: Durability,
    /// The period of `--durability interval`, in milliseconds.
    #[arg(long, default_value_t = 5)]
    fsync_interval_ms: u64,
    /// The size of a log segment file, in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    log_segment_mib: u64,
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

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STATEFUN_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let outcome = match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Log(LogCommand::Truncate { segment, offset }) => truncate(&segment, offset),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            #[allow(clippy::print_stderr)] // The error is the command's last word.
            {
                eprintln!("statefun: {error:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)] // Saying what was done is the command's output.
fn truncate(segment: &std::path::Path, offset: u64) -> anyhow::Result<()> {
    let removed = statefun_storage::truncate(segment, offset)?;
    println!("zeroed {} from offset {offset} on", segment.display());
    for path in removed {
        println!("removed {}", path.display());
    }
    Ok(())
}

#[allow(clippy::print_stdout)] // The start-up line is the command's output; scripts read it.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let defaults = Config::embedded_default();
    let config = Config {
        shards: args.shards.unwrap_or(defaults.shards),
        http: args.http,
        durability: args.durability,
        fsync_interval: Duration::from_millis(args.fsync_interval_ms),
        segment_bytes: args.log_segment_mib * 1024 * 1024,
        data_dir: args.data_dir,
        call_timeout: Duration::from_millis(args.call_timeout_ms),
        spin_before_park: args.spin_before_park_us.map(Duration::from_micros),
        retention: Retention { keyed: Duration::from_secs(args.idempotency_retention_s), ..defaults.retention },
    };
    let durability = config.durability_text();
    let node = Node::start(config, statefun::examples::registry())?;
    println!("statefun serving http://{} with {} shards, durability {durability}", node.http, node.shards);
    node.wait()
}
