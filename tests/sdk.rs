//! The official StateFun SDKs against the runtime: each test starts the Python SDK app
//! (`tests/sdk/functions.py`) and the JavaScript SDK app (`tests/sdk/functions.js`) as
//! real processes, writes a StateFun `module.yaml` that binds them (plus the playground
//! ingress and egress), runs `statefun serve --module` on it, and checks through the HTTP
//! API what the unmodified SDKs make of it: the state handshake, expiring state,
//! function-to-function messages, delayed messages and their cancellation, egress, a
//! function that fails (parked, then retried), and exactly-once state across SIGKILL.
//!
//! Needs `tests/sdk/setup.sh` (a Python venv and the JS SDK under `target/sdk`), which
//! `.ci/run` runs first. `tests/sdk/selfcheck.py` checks the two apps without the runtime.
//! `STATEFUN_SDK_CRASH_KILLS` sets the number of kills of the crash test (default 2).

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use support::{data_dir, delete, eventually, free_port, get, post, put, try_post, Server};

/// Shards of every runtime here: few, so that tests running side by side stay light, and
/// more than one, so that addresses spread.
const SHARDS: &str = "2";
const STRING: &str = "application/vnd.io.statefun.types/string";
const INT: &str = "application/vnd.io.statefun.types/int";
/// A JSON string (`"hello"`): what the playground ingress can carry to the Python SDK,
/// which would read a raw `io.statefun.types/string` body as a protobuf wrapper.
const TEXT: &str = "application/vnd.test/Text";

/// The repository root, where `tests/sdk/setup.sh` installs the SDKs under `target/sdk`.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An SDK app (`functions.py` or `functions.js`) on a free port, killed when dropped.
struct FunctionServer {
    child: Child,
    port: u16,
}

impl FunctionServer {
    /// Runs `program script 0` and waits for its `ready <port>` line.
    fn start(program: &Path, script: &Path) -> FunctionServer {
        let mut child = Command::new(program)
            .arg(script)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("start {} {}: {error}", program.display(), script.display()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(port) = line.strip_prefix("ready ").and_then(|port| port.trim().parse().ok()) else {
            let _ = child.kill();
            let status = child.wait();
            panic!("{} did not get ready: {line:?} ({status:?})", script.display());
        };
        // Keep its stdout drained, so that a stray print cannot block or kill it.
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        FunctionServer { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for FunctionServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two SDK apps, a module.yaml binding them, and the playground ports it names.
struct Rig {
    python: FunctionServer,
    /// Kept for its lifetime: the JS app serves `test/jscounter` until the rig is dropped.
    _node: FunctionServer,
    dir: PathBuf,
    module: PathBuf,
    ingress_port: u16,
    egress_port: u16,
}

impl Rig {
    fn new() -> Rig {
        let python = root().join("target/sdk/venv/bin/python");
        let js_sdk = root().join("target/sdk/js/node_modules/apache-flink-statefun");
        assert!(
            python.exists() && js_sdk.exists(),
            "{} or {} is missing: run tests/sdk/setup.sh first (bash .ci/run does)",
            python.display(),
            js_sdk.display()
        );
        let python = FunctionServer::start(&python, &root().join("tests/sdk/functions.py"));
        let node = FunctionServer::start(Path::new("node"), &root().join("tests/sdk/functions.js"));
        let (ingress_port, egress_port) = (free_port(), free_port());
        let dir = data_dir().with_extension("module");
        std::fs::create_dir_all(&dir).unwrap();
        let module = dir.join("module.yaml");
        std::fs::write(&module, module_yaml(python.port, node.port, ingress_port, egress_port)).unwrap();
        Rig { python, _node: node, dir, module, ingress_port, egress_port }
    }

    fn args(&self) -> [&str; 4] {
        ["--module", self.module.to_str().unwrap(), "--shards", SHARDS]
    }

    /// A runtime with a fresh data directory.
    fn start(&self) -> Server {
        Server::start(&self.args())
    }

    /// A runtime on `data`, which outlives it.
    fn start_in(&self, data: &Path) -> Server {
        Server::start_in(data, &self.args())
    }

    /// The Python app's counters since it started (`GET /stats`): `section` is `handshakes`,
    /// `requests`, `invocations` or `failures`.
    fn stat(&self, section: &str, function: &str) -> u64 {
        let reply = get(&self.python.url("/stats"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        json_count(&reply.body, section, function)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The module: `test/*` on the Python app with a short call budget (a failing function is
/// parked after about 3 s), the exact binding `test/jscounter` on the JS app, and the
/// playground ingress and egress as the StateFun playground examples declare them.
fn module_yaml(python_port: u16, node_port: u16, ingress_port: u16, egress_port: u16) -> String {
    format!(
        "\
kind: io.statefun.endpoints.v2/http
spec:
  functions: test/*
  urlPathTemplate: http://127.0.0.1:{python_port}/statefun
  transport:
    call: 3s
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: test/jscounter
  urlPathTemplate: http://127.0.0.1:{node_port}/statefun
---
kind: io.statefun.playground.v1/ingress
spec:
  port: {ingress_port}
---
kind: io.statefun.playground.v1/egress
spec:
  port: {egress_port}
  topics:
    - greetings
"
    )
}

/// `/v1/call` with a body of `content_type`; panics unless it answers 200.
fn call(server: &Server, target: &str, content_type: &str, body: &str) -> String {
    let reply = server.post(&format!("/v1/call/{target}"), Some(content_type), body);
    assert_eq!(reply.status, 200, "call {target} {body:?}: {}", reply.body);
    reply.body
}

/// `/v1/call` with a string.
fn call_text(server: &Server, target: &str, text: &str) -> String {
    call(server, target, STRING, text)
}

/// `/v1/send` with a string; panics unless it answers 202.
fn send_text(server: &Server, target: &str, text: &str) {
    let reply = server.post(&format!("/v1/send/{target}"), Some(STRING), text);
    assert_eq!(reply.status, 202, "send {target} {text:?}: {}", reply.body);
}

/// N in a counter's reply `count=N ...`.
fn count_of(reply: &str) -> u64 {
    reply
        .split_whitespace()
        .next()
        .and_then(|word| word.strip_prefix("count="))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("not a counter reply: {reply:?}"))
}

/// The number at `"key":` in the flat object that follows `"section":`, 0 when absent
/// (enough JSON for the stats of functions.py).
fn json_count(json: &str, section: &str, key: &str) -> u64 {
    let start = json.find(&format!("\"{section}\"")).unwrap_or_else(|| panic!("no {section:?} in {json}"));
    let object = &json[start..];
    let object = &object[..object.find('}').unwrap_or(object.len())];
    let Some(at) = object.find(&format!("\"{key}\"")) else { return 0 };
    let value = object[at + key.len() + 2..].trim_start().strip_prefix(':').unwrap().trim_start();
    value.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// Every string value of `"key":` in `json`, in order (enough JSON for `/v1/parked`).
fn json_strings(json: &str, key: &str) -> Vec<String> {
    let pattern = format!("\"{key}\"");
    let mut values = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.find(&pattern) {
        rest = rest[at + pattern.len()..].trim_start();
        let Some(after_colon) = rest.strip_prefix(':') else { continue };
        let Some(string) = after_colon.trim_start().strip_prefix('"') else { continue };
        let mut value = String::new();
        let mut chars = string.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => {
                    rest = &string[index + 1..];
                    break;
                }
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                c => value.push(c),
            }
        }
        values.push(value);
    }
    values
}

/// The `/v1/parked` list as (address, error) pairs.
fn parked(server: &Server) -> Vec<(String, String)> {
    let reply = get(&format!("{}/v1/parked", server.url));
    assert_eq!(reply.status, 200, "/v1/parked: {}", reply.body);
    let addresses = json_strings(&reply.body, "address");
    let errors = json_strings(&reply.body, "error");
    assert_eq!(addresses.len(), errors.len(), "an address without an error in {}", reply.body);
    addresses.into_iter().zip(errors).collect()
}

/// The sum of a metric's samples over all label sets (shards), if it is there.
fn metric(server: &Server, name: &str) -> Option<f64> {
    let reply = get(&format!("{}/metrics", server.url));
    assert_eq!(reply.status, 200, "/metrics: {}", reply.body);
    let samples: Vec<f64> = reply
        .body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

#[test]
fn counter_state_and_expiring_state() {
    let rig = Rig::new();
    let server = rig.start();
    for n in 1..=3 {
        assert_eq!(call_text(&server, "test/counter/a", "inc"), format!("count={n} recent={n}"));
    }
    // `recent` expires 1 s after its last write; `count` never does.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(call_text(&server, "test/counter/a", "inc"), "count=4 recent=1");
    assert_eq!(call_text(&server, "test/counter/b", "inc"), "count=1 recent=1", "state is per address");
}

#[test]
fn ping_pong_between_functions() {
    let rig = Rig::new();
    let server = rig.start();
    // test/ping/a sends 41 to test/pong/a, which answers 42 to ping, which answers the caller.
    assert_eq!(call(&server, "test/ping/a", INT, "41"), "pong 42");
    assert_eq!(call(&server, "test/ping/a", INT, "-1"), "pong 0", "ping forgot its last asker");
}

#[test]
fn delayed_messages_and_cancellation() {
    let rig = Rig::new();
    let server = rig.start();
    let timer = "test/timer/t";
    assert_eq!(call_text(&server, timer, "arm 300 a"), "armed a");
    assert_eq!(call_text(&server, timer, "arm 600 b"), "armed b");
    let b_due = Instant::now() + Duration::from_millis(600);
    assert_eq!(call_text(&server, timer, "cancel b"), "cancelled b");
    assert!(
        eventually(Duration::from_secs(5), || call_text(&server, timer, "read") == "a"),
        "the delayed message 'fire a' never arrived: fired = {:?}",
        call_text(&server, timer, "read")
    );
    // Past b's deadline, with a margin: b stays cancelled.
    thread::sleep((b_due + Duration::from_millis(400)).saturating_duration_since(Instant::now()));
    assert_eq!(call_text(&server, timer, "read"), "a", "the cancelled message fired");
    assert_eq!(call_text(&server, "test/timer/other", "read"), "", "timers are per address");
}

#[test]
fn playground_ingress_to_egress() {
    let rig = Rig::new();
    let _server = rig.start();
    let ingress = format!("http://127.0.0.1:{}/test/egress/x", rig.ingress_port);
    let egress = format!("http://127.0.0.1:{}/greetings", rig.egress_port);
    let accepted = put(&ingress, Some(TEXT), "\"hello\"");
    assert!((200..300).contains(&accepted.status), "playground ingress: {} {}", accepted.status, accepted.body);
    let mut record = None;
    let arrived = eventually(Duration::from_secs(10), || {
        let reply = get(&egress);
        assert!(reply.status == 200 || reply.status == 404, "GET /greetings: {} {}", reply.status, reply.body);
        record = (reply.status == 200).then_some(reply.body);
        record.is_some()
    });
    assert!(arrived, "nothing reached the egress topic greetings");
    assert_eq!(record.as_deref(), Some("hello"));
    assert_eq!(get(&egress).status, 404, "a record is popped once");
}

#[test]
fn state_registry_survives_restart_without_handshakes() {
    let rig = Rig::new();
    let data = data_dir();
    let server = rig.start_in(&data);
    let calls = |server: &Server, round: u64| {
        for n in 0..20 {
            let reply = call_text(server, &format!("test/counter/h{}", n % 10), "inc");
            assert_eq!(count_of(&reply), round * 2 + n / 10 + 1, "call {n} of round {round}: {reply}");
        }
    };
    calls(&server, 0);
    let handshakes = rig.stat("handshakes", "test/counter");
    let shards: u64 = SHARDS.parse().unwrap();
    assert!((1..=shards).contains(&handshakes), "{handshakes} handshakes for 10 addresses on {shards} shards");
    assert_eq!(rig.stat("invocations", "test/counter"), 20 + handshakes, "each handshake re-sends its one message");

    server.kill();
    let server = rig.start_in(&data);
    calls(&server, 1);
    assert_eq!(rig.stat("handshakes", "test/counter"), handshakes, "the registered states were forgotten on restart");
    server.kill();
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn a_failing_address_is_parked_and_retried_without_blocking_others() {
    let rig = Rig::new();
    let server = rig.start();
    assert_eq!(post(&rig.python.url("/fail/x"), None, "").status, 200);
    for _ in 0..5 {
        send_text(&server, "test/flaky/x", "inc");
        send_text(&server, "test/flaky/y", "inc");
    }
    // y is served while x fails: a call queues behind y's five messages.
    let started = Instant::now();
    assert_eq!(call_text(&server, "test/flaky/y", "inc"), "count=6");
    assert!(started.elapsed() < Duration::from_secs(3), "y waited for x: {:?}", started.elapsed());

    let mut list = Vec::new();
    let was_parked = eventually(Duration::from_secs(10), || {
        list = parked(&server);
        list.iter().any(|(address, _)| address == "test/flaky/x")
    });
    assert!(was_parked, "test/flaky/x was not parked: {list:?}");
    assert!(list.iter().all(|(address, error)| address == "test/flaky/x" && !error.is_empty()), "{list:?}");
    assert_eq!(metric(&server, "statefun_remote_parked"), Some(1.0));
    assert!(rig.stat("failures", "test/flaky") >= 2, "the runtime retried before parking");

    let listed = statefun(&["parked", "--http", server.url.trim_start_matches("http://")]);
    assert!(listed.contains("\"address\":\"test/flaky/x\""), "statefun parked: {listed}");

    assert_eq!(delete(&rig.python.url("/fail/x")).status, 200);
    let retried = statefun(&["retry", "--http", server.url.trim_start_matches("http://")]);
    assert!(retried.contains("\"retrying\":1"), "statefun retry: {retried}");
    // Exactly the five parked messages were applied, once each, before this one.
    assert_eq!(call_text(&server, "test/flaky/x", "inc"), "count=6");
    let list = parked(&server);
    assert!(list.is_empty(), "still parked after the retry: {list:?}");
    assert!(eventually(Duration::from_secs(5), || metric(&server, "statefun_remote_parked") == Some(0.0)));
}

/// Runs a `statefun` command to its end and returns what it printed; it must succeed.
fn statefun(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_statefun")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "statefun {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn a_module_with_errors_is_refused_naming_the_document_and_field() {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("module.yaml");
    let text =
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: test/*\n  urlPathTemplate: http://127.0.0.1:1/\n\
                ---\nkind: io.statefun.endpoints.v2/http\nspec:\n  functions: other/*\n  urlPathTemplate: http://h/\n  \
                transport:\n    call: two minutes\n";
    std::fs::write(&module, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_statefun"))
        .args(["serve", "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--module"])
        .arg(&module)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("document 2 (io.statefun.endpoints.v2/http), spec.transport.call"), "{stderr}");
    assert!(stderr.contains("expected a duration"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn remote_state_is_exactly_once_across_sigkill() {
    const SENDS: u64 = 300;
    const IDS: u64 = 30;
    // Concurrent senders, so that messages are in flight and backlogged when the kill lands.
    const SENDERS: u64 = 3;
    // `STATEFUN_SDK_CRASH_KILLS` asks for more kills (a single one rarely lands in the short
    // window between a durable accept and its 202).
    let kills: u64 = std::env::var("STATEFUN_SDK_CRASH_KILLS").ok().and_then(|text| text.parse().ok()).unwrap_or(2);
    let rig = Rig::new();
    let data = data_dir();
    let server = rig.start_in(&data);
    let url = Arc::new(RwLock::new(server.url.clone()));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..IDS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (url, acked, done, retries, stop) =
                (url.clone(), acked.clone(), done.clone(), retries.clone(), stop.clone());
            thread::spawn(move || {
                for n in (sender..SENDS).step_by(SENDERS as usize) {
                    let id = n % IDS;
                    let key = format!("sdk-crash-{n}");
                    loop {
                        assert!(!stop.load(Ordering::Relaxed), "send {n} was never acknowledged");
                        let base = url.read().unwrap().clone();
                        let target = format!("{base}/v1/send/test/counter/g{id}");
                        match try_post(&target, &key, "inc", Duration::from_secs(5)) {
                            Ok(reply) if reply.status == 202 => break,
                            Ok(reply) => assert!(reply.status >= 500, "send {n}: {} {}", reply.status, reply.body),
                            Err(_) => {} // The runtime is down or was killed mid-request.
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(20));
                    }
                    acked[id as usize].fetch_add(1, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut server = server;
    for kill in 1..=kills {
        let due = SENDS * kill / (kills + 1);
        let reached = eventually(Duration::from_secs(30), || done.load(Ordering::Relaxed) >= due);
        assert!(reached, "only {} of {due} sends acknowledged", done.load(Ordering::Relaxed));
        server.kill();
        server = rig.start_in(&data);
        *url.write().unwrap() = server.url.clone();
    }
    let finished = eventually(Duration::from_secs(60), || senders.iter().all(|sender| sender.is_finished()));
    stop.store(true, Ordering::Relaxed);
    assert!(finished, "the senders did not finish: {} of {SENDS} acknowledged", done.load(Ordering::Relaxed));
    senders.into_iter().for_each(|sender| sender.join().unwrap());
    assert!(retries.load(Ordering::Relaxed) > 0, "no send ever hit a crash");

    for id in 0..IDS {
        let expected = acked[id as usize].load(Ordering::Relaxed) + 1;
        // The call queues behind the address's earlier messages, so it sees all of them.
        let reply = call_text(&server, &format!("test/counter/g{id}"), "read");
        assert_eq!(count_of(&reply), expected, "test/counter/g{id}: {reply}");
    }
    server.kill();
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn javascript_sdk_counter() {
    let rig = Rig::new();
    let server = rig.start();
    for n in 1..=3 {
        assert_eq!(call_text(&server, "test/jscounter/j", "inc"), format!("count={n}"));
    }
    assert_eq!(call_text(&server, "test/jscounter/k", "inc"), "count=1");
}
