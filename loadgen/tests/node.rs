//! The load generator against a real node: `statefun serve` on free ports and, for each
//! example workload (counter, chain, fanout) over HTTP and over QUIC, a short closed-loop run of the
//! `statefun-loadgen` binary. Each run must exit cleanly, complete requests without a single
//! error, and write its JSON summary with every field and its SVG plot.
//!
//! The node's binary is the one `cargo test --workspace` builds beside the load generator's;
//! when it is missing or older than the node's sources, the test has cargo build it.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

/// The summary's fields, in the order `--json` writes them.
const SUMMARY_FIELDS: [&str; 8] =
    ["throughput_rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "completed", "errors"];

#[test]
fn every_workload_runs_against_the_node_without_errors() {
    let node = Node::start();
    let output = node.data_dir.with_extension("out");
    std::fs::create_dir_all(&output).unwrap();
    let targets = [&node.url, &node.quic];
    for (workload, target) in
        ["counter", "chain", "fanout"].into_iter().flat_map(|workload| targets.map(|target| (workload, target)))
    {
        let protocol = target.split(':').next().unwrap();
        let (json, plot) =
            (output.join(format!("{workload}-{protocol}.json")), output.join(format!("{workload}-{protocol}.svg")));
        let run = Command::new(env!("CARGO_BIN_EXE_statefun-loadgen"))
            .args(["--target", target, "--workload", workload, "--concurrency", "4", "--threads", "2"])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--duration", "1", "--warmup", "0.2", "--json"])
            .arg(&json)
            .arg("--plot")
            .arg(&plot)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{workload}: {}\n{stderr}", run.status);

        let summary = std::fs::read_to_string(&json).unwrap();
        let fields = fields(&summary);
        let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, SUMMARY_FIELDS, "{workload}: {summary}");
        let field = |name: &str| fields.iter().find(|(field, _)| field == name).unwrap().1;
        assert_eq!(field("errors"), 0.0, "{workload}: {summary}\n{stderr}");
        assert!(field("completed") > 0.0 && field("throughput_rps") > 0.0, "{workload}: {summary}");
        assert!(field("p50_us") <= field("p99_us") && field("p99_us") <= field("max_us"), "{workload}: {summary}");

        let svg = std::fs::read_to_string(&plot).unwrap();
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"), "{workload}: {svg}");
        assert!(svg.contains(&format!("example/{workload}")) && svg.contains(">99%<"), "{workload}: {svg}");
    }
    std::fs::remove_dir_all(&output).unwrap();
}

/// The flat JSON object of `--json`: its fields in order, each value a number.
fn fields(json: &str) -> Vec<(String, f64)> {
    let body = json.trim().strip_prefix('{').and_then(|body| body.strip_suffix('}')).unwrap();
    body.split(',')
        .map(|field| {
            let (name, value) = field.split_once(':').unwrap();
            let value = value.trim().parse().unwrap_or_else(|_| panic!("{name} is not a number: {json}"));
            (name.trim().trim_matches('"').to_string(), value)
        })
        .collect()
}

/// A `statefun serve` with two shards on free ports, killed and its data removed on drop.
struct Node {
    child: Child,
    url: String,
    /// Shard 0's native endpoint, `quic://127.0.0.1:PORT`.
    quic: String,
    data_dir: PathBuf,
}

impl Node {
    fn start() -> Node {
        let data_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("loadgen-node-{}", std::process::id()));
        let mut child = Command::new(statefun_binary())
            .args(["serve", "--shards", "2", "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The first line says where it serves: `statefun serving http://127.0.0.1:PORT ...`.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = |scheme: &str| line.split_whitespace().find(|word| word.starts_with(scheme)).map(str::to_string);
        let (Some(http), Some(quic)) = (url("http://"), url("quic://")) else {
            let _ = child.kill();
            panic!("statefun serve did not say where it serves: {line:?}, {:?}", child.wait());
        };
        Node { child, url: http, quic, data_dir }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The `statefun` binary beside the load generator's. `cargo test --workspace` has just built
/// it (the node's own tests need it); when it is missing or older than the node's sources
/// (after `cargo test -p statefun-loadgen`, say), cargo builds it first.
fn statefun_binary() -> PathBuf {
    let beside = Path::new(env!("CARGO_BIN_EXE_statefun-loadgen")).with_file_name("statefun");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let built = std::fs::metadata(&beside).and_then(|metadata| metadata.modified()).ok();
    let sources = ["src", "core/src", "storage/src", "net/src", "Cargo.lock"].map(|source| workspace.join(source));
    if built.is_some_and(|built| sources.iter().all(|source| newest(source) <= built)) {
        return beside;
    }
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build.current_dir(workspace).args(["build", "--quiet", "--locked", "--package", "statefun", "--bin", "statefun"]);
    build.args(["--message-format", "json"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let output = build.stderr(Stdio::inherit()).output().unwrap();
    assert!(output.status.success(), "cargo build --package statefun: {}", output.status);
    // One JSON message per line; the binary's is the one with an executable.
    let messages = String::from_utf8(output.stdout).unwrap();
    let executable = messages
        .lines()
        .filter_map(|message| message.split_once(r#""executable":""#))
        .map(|(_, rest)| rest.split('"').next().unwrap())
        .next_back();
    PathBuf::from(executable.unwrap_or_else(|| panic!("no executable in cargo's messages:\n{messages}")))
}

/// The last modification of `path` or of anything under it.
fn newest(path: &Path) -> SystemTime {
    let Ok(metadata) = std::fs::metadata(path) else { return SystemTime::UNIX_EPOCH };
    let own = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let Ok(entries) = std::fs::read_dir(path) else { return own };
    entries.filter_map(Result::ok).map(|entry| newest(&entry.path())).fold(own, SystemTime::max)
}
