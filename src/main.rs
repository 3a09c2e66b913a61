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
    /// Runs a node with the example application (example/counter, chain, fanout, forward,
    /// reminder), or with the functions of a StateFun module (`--module`).
    Serve(ServeArgs),
    /// Calls a function over the native protocol and prints its reply.
    Call(CallArgs),
    /// Sends a message over the native protocol; returns once it is durable.
    Send(CallArgs),
    /// Prints an egress's records as they are committed, from every shard.
    Tail(TailArgs),
    /// Checkpoints every shard now, and prints what each checkpoint wrote.
    Snapshot(ConnectArgs),
    /// Works on the checkpoints in the blob store.
    #[command(subcommand)]
    Snapshots(SnapshotsCommand),
    /// Lists the remote addresses parked after their call budget ran out, with their errors.
    Parked(AdminArgs),
    /// Makes every parked remote address try again now.
    Retry(AdminArgs),
    /// Works on a stopped node's log.
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Debug, Subcommand)]
enum SnapshotsCommand {
    /// Lists every shard's checkpoints in the blob store, oldest first (the node need not run).
    List(BlobArgs),
}

/// Where the checkpoints are.
#[derive(Debug, clap::Args)]
struct BlobArgs {
    /// The node's data directory: its blob store is `{data-dir}/blobs` unless --blob-url says.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// The blob store the node was started with (`statefun serve --blob-url`).
    #[arg(long)]
    blob_url: Option<String>,
}

/// How an operator's command reaches the node: its HTTP ingress.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The node's HTTP address (what `statefun serve --http` was given).
    #[arg(long, default_value = "127.0.0.1:8070")]
    http: SocketAddr,
}

/// How a client finds and trusts the node.
#[derive(Debug, clap::Args)]
struct ConnectArgs {
    /// Shard 0's QUIC address (what `statefun serve --listen` was given).
    #[arg(long, default_value = "127.0.0.1:8071")]
    connect: SocketAddr,
    /// The node's data directory, for its development certificate and client token.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct CallArgs {
    /// The target, `namespace/type/id`.
    target: String,
    /// The message, as text.
    value: String,
    /// The message's type name.
    #[arg(long = "type", default_value = "statefun/text")]
    typename: String,
    /// An idempotency key (one is made up otherwise).
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, clap::Args)]
struct TailArgs {
    /// The egress, `namespace/name`.
    egress: String,
    /// Start at this position on every shard (0: the oldest record kept).
    #[arg(long, default_value_t = 0)]
    from: u64,
    #[command(flatten)]
    connect: ConnectArgs,
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
    /// Shard 0's QUIC address; shard i listens on the port after it plus i (port 0 picks
    /// free ports).
    #[arg(long, default_value = "127.0.0.1:8071")]
    listen: SocketAddr,
    /// The server certificate chain (PEM) [default: a development certificate generated
    /// into the data directory].
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
    /// A StateFun module.yaml: serve its remote functions, playground ingress and egress
    /// instead of the example application.
    #[arg(long)]
    module: Option<PathBuf>,
    /// Where checkpoints and sealed log segments go: file:///dir, or s3://bucket/prefix
    /// (built with the `s3` feature; endpoint, region and credentials from the AWS_*
    /// environment variables) [default: file://{data-dir}/blobs].
    #[arg(long)]
    blob_url: Option<String>,
    /// Time between checkpoints, such as 60s or 5min.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    snapshot_interval: Duration,
    /// A checkpoint also starts once the log grew by this many MiB since the last.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_log_mib: u64,
    /// Checkpoints kept per shard in the blob store; older ones go, with what only they use.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    snapshots_retained: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    statefun::module::parse_duration(text)
}

/// The client commands: `call`, `send`, `tail`, `snapshot`.
mod client {
    use std::time::Duration;

    use statefun::core::{types, Address, ShardId, TypeName, TypedValue};
    use statefun_net::client::{Client, ClientConfig};
    use statefun_net::frame::SnapshotOutcome;

    use super::{CallArgs, ConnectArgs, TailArgs};

    fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
    }

    async fn connect(args: &ConnectArgs) -> anyhow::Result<Client> {
        let config = ClientConfig::dev(args.connect, &args.data_dir)?;
        Ok(Client::connect(config).await?)
    }

    fn address(target: &str) -> anyhow::Result<Address> {
        let (function, id) =
            target.rsplit_once('/').ok_or_else(|| anyhow::anyhow!("{target:?}: expected namespace/type/id"))?;
        Ok(Address::new(TypeName::parse(function)?, id)?)
    }

    /// A value as text: built-in types decoded, anything else as UTF-8 (or hex).
    pub fn show(value: &TypedValue) -> String {
        match types::builtin_to_text(value) {
            Some(Ok(text)) => text,
            _ => match value.as_text() {
                Ok(text) => text.to_string(),
                Err(_) => value.value.iter().map(|byte| format!("{byte:02x}")).collect(),
            },
        }
    }

    #[allow(clippy::print_stdout)] // The reply is the command's output.
    pub fn call(args: CallArgs, wants_reply: bool) -> anyhow::Result<()> {
        runtime()?.block_on(async {
            let client = connect(&args.connect).await?;
            let target = address(&args.target)?;
            let value = TypedValue::new(TypeName::parse(&args.typename)?, args.value.clone());
            match (wants_reply, &args.key) {
                (true, Some(key)) => println!("{}", show(&client.call_with_key(&target, &value, key).await?)),
                (true, None) => println!("{}", show(&client.call(&target, &value).await?)),
                (false, _) => client.send(&target, &value).await?,
            }
            Ok(())
        })
    }

    #[allow(clippy::print_stdout)] // The records are the command's output.
    pub fn tail(args: TailArgs) -> anyhow::Result<()> {
        runtime()?.block_on(async {
            let client = connect(&args.connect).await?;
            let egress = TypeName::parse(&args.egress)?;
            let from = vec![args.from; usize::from(client.shards())];
            let mut records = client.subscribe(&egress, from);
            while let Some(record) = records.recv().await {
                let record = record?;
                println!("{}\t{}\t{}", record.shard.0, record.position, show(&record.value));
            }
            Ok(())
        })
    }

    /// How often `snapshot` says it is still waiting.
    const SNAPSHOT_PROGRESS_EVERY: Duration = Duration::from_secs(2);

    /// Asks every shard for a checkpoint at once; prints one line per shard, in shard order,
    /// as soon as it and the shards before it have answered.
    #[allow(clippy::print_stdout, clippy::print_stderr)] // The lines are the command's output; progress goes to stderr.
    pub fn snapshot(args: super::ConnectArgs) -> anyhow::Result<()> {
        runtime()?.block_on(async {
            let client = connect(&args).await?;
            let shards = usize::from(client.shards());
            let mut tasks = tokio::task::JoinSet::new();
            for shard in 0..client.shards() {
                let client = client.clone();
                tasks.spawn(async move { (shard, client.snapshot_shard(ShardId(shard)).await) });
            }
            let mut lines: Vec<Option<(bool, String)>> = vec![None; shards];
            let (mut printed, mut failed) = (0, 0);
            let mut progress = tokio::time::interval_at(
                tokio::time::Instant::now() + SNAPSHOT_PROGRESS_EVERY,
                SNAPSHOT_PROGRESS_EVERY,
            );
            while !tasks.is_empty() {
                tokio::select! {
                    Some(joined) = tasks.join_next() => {
                        let (shard, outcome) = joined?;
                        lines[usize::from(shard)] = Some(match outcome {
                            Ok(outcome) => snapshot_line(shard, &outcome),
                            Err(error) => (false, format!("shard {shard}: failed: {error}")),
                        });
                        while let Some(Some((ok, line))) = lines.get(printed) {
                            println!("{line}");
                            failed += usize::from(!ok);
                            printed += 1;
                        }
                    }
                    _ = progress.tick() => {
                        let waiting = tasks.len();
                        eprintln!("waiting for {waiting} shard{}...", if waiting == 1 { "" } else { "s" });
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {shards} shards took no checkpoint");
            }
            Ok(())
        })
    }

    /// One shard's line of `snapshot`, and whether it took a checkpoint.
    pub fn snapshot_line(shard: u16, outcome: &SnapshotOutcome) -> (bool, String) {
        match outcome {
            SnapshotOutcome::Done { generation, lsn, chunks, bytes, states, base } => {
                let kind = if *base { "base" } else { "delta" };
                let addresses = if *states == 1 { "address" } else { "addresses" };
                let chunks_word = if *chunks == 1 { "chunk" } else { "chunks" };
                let line = format!(
                    "shard {shard}: generation {generation}, LSN {lsn}, {kind} of {} {addresses}, {chunks} {chunks_word}, {} written",
                    thousands(*states),
                    binary_bytes(*bytes)
                );
                (true, line)
            }
            SnapshotOutcome::Failed(why) => (false, format!("shard {shard}: failed: {why}")),
        }
    }

    /// `1200` as `1,200`.
    fn thousands(n: u64) -> String {
        let digits = n.to_string();
        let mut text = String::with_capacity(digits.len() + digits.len() / 3);
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index) % 3 == 0 {
                text.push(',');
            }
            text.push(digit);
        }
        text
    }

    /// A byte count in binary units, one decimal past bytes: `1.2 MiB`.
    fn binary_bytes(bytes: u64) -> String {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if bytes < 1024 {
            return format!("{bytes} B");
        }
        let mut value = bytes as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        format!("{value:.1} {}", UNITS[unit])
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn snapshot_lines_read_as_sentences() {
            let done = SnapshotOutcome::Done {
                generation: 4,
                lsn: 123_456,
                chunks: 3,
                bytes: 1_258_291,
                states: 1_200,
                base: false,
            };
            assert_eq!(
                snapshot_line(0, &done),
                (true, "shard 0: generation 4, LSN 123456, delta of 1,200 addresses, 3 chunks, 1.2 MiB written".into())
            );
            let base = SnapshotOutcome::Done { generation: 1, lsn: 0, chunks: 1, bytes: 900, states: 1, base: true };
            assert_eq!(
                snapshot_line(2, &base).1,
                "shard 2: generation 1, LSN 0, base of 1 address, 1 chunk, 900 B written"
            );
            let failed = SnapshotOutcome::Failed("shard 1: snapshots are not enabled".into());
            assert_eq!(
                snapshot_line(1, &failed),
                (false, "shard 1: failed: shard 1: snapshots are not enabled".into())
            );
            assert_eq!(thousands(0), "0");
            assert_eq!(thousands(999), "999");
            assert_eq!(thousands(1_000), "1,000");
            assert_eq!(thousands(12_345_678), "12,345,678");
            assert_eq!(binary_bytes(1024), "1.0 KiB");
            assert_eq!(binary_bytes(u64::MAX), "16.0 EiB");
        }
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STATEFUN_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let outcome = match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Call(args) => client::call(args, true),
        Command::Send(args) => client::call(args, false),
        Command::Tail(args) => client::tail(args),
        Command::Snapshot(args) => client::snapshot(args),
        Command::Snapshots(SnapshotsCommand::List(args)) => list_snapshots(args),
        Command::Parked(args) => admin(&args, "GET", "/v1/parked"),
        Command::Retry(args) => admin(&args, "POST", "/v1/parked/retry"),
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

/// Prints every manifest in the blob store, shard by shard, oldest first.
#[allow(clippy::print_stdout)] // The list is the command's output.
fn list_snapshots(args: BlobArgs) -> anyhow::Result<()> {
    use statefun_storage::snapshot::{parse_manifest_generation, Manifest};
    let config = Config { data_dir: args.data_dir, blob_url: args.blob_url, ..Config::embedded_default() };
    let url = config.blob_url()?;
    let store = statefun_storage::blob::BlobStore::open(&url)?;
    futures_lite::future::block_on(async {
        let mut manifests: Vec<(String, u64, String)> = store
            .list("")
            .await?
            .into_iter()
            .filter_map(|(path, _)| {
                let generation = parse_manifest_generation(&path)?;
                Some((path.split('/').next().unwrap_or_default().to_string(), generation, path))
            })
            .collect();
        manifests.sort();
        if manifests.is_empty() {
            println!("no checkpoints in {url}");
        }
        for (_, _, path) in manifests {
            let Some(bytes) = store.get(&path).await? else { continue };
            match Manifest::decode(&path, &bytes) {
                Ok(manifest) => println!("{}", statefun::snapshots::describe(&manifest)),
                Err(error) => println!("{path}: cannot be read: {error}"),
            }
        }
        Ok(())
    })
}

/// One plain HTTP/1.1 exchange with the node's ingress; prints the body of a 2xx answer.
#[allow(clippy::print_stdout)] // The node's answer is the command's output.
fn admin(args: &AdminArgs, method: &str, path: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&args.http, Duration::from_secs(5))
        .map_err(|error| anyhow::anyhow!("cannot reach the node at http://{}: {error}", args.http))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let host = args.http;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("none");
    if !status.starts_with('2') {
        anyhow::bail!("http://{host}{path} answered {status}: {}", body.trim());
    }
    println!("{}", body.trim_end());
    Ok(())
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
        listen: args.listen,
        tls: args.tls_cert.zip(args.tls_key),
        durability: args.durability,
        fsync_interval: Duration::from_millis(args.fsync_interval_ms),
        segment_bytes: args.log_segment_mib * 1024 * 1024,
        data_dir: args.data_dir,
        call_timeout: Duration::from_millis(args.call_timeout_ms),
        spin_before_park: args.spin_before_park_us.map(Duration::from_micros),
        retention: Retention { keyed: Duration::from_secs(args.idempotency_retention_s), ..defaults.retention },
        module: args.module.as_deref().map(statefun::module::Module::load).transpose()?,
        blob_url: args.blob_url,
        snapshots: statefun::snapshots::SnapshotConfig {
            interval: args.snapshot_interval,
            log_bytes: args.snapshot_log_mib * 1024 * 1024,
            retained: args.snapshots_retained as usize,
        },
    };
    let durability = config.durability_text();
    // A module brings its own functions; the example application is for trying the node out.
    let registry = match config.module {
        Some(_) => statefun::core::Registry::new(),
        None => statefun::examples::registry(),
    };
    let node = Node::start(config, registry)?;
    let quic = node.quic.first().map_or(String::new(), |address| format!(" and quic://{address}"));
    println!("statefun serving http://{}{quic} with {} shards, durability {durability}", node.http, node.shards);
    node.wait()
}
