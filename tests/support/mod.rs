//! Starting a real `statefun` process for a test, and talking HTTP to it.

#![allow(dead_code)] // Each test file uses its own part of this module.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `statefun serve` process on a free port, killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// Whether dropping removes the data directory.
    owns_data: bool,
}

/// A fresh data directory for a test.
pub fn data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("statefun-test-{}-{}", std::process::id(), unique()))
}

impl Server {
    /// Starts `statefun serve` with `args` (plus a free HTTP port and a fresh data
    /// directory) and waits until it serves.
    pub fn start(args: &[&str]) -> Server {
        let mut server = Server::start_in(&data_dir(), args);
        server.owns_data = true;
        server
    }

    /// Starts `statefun serve` on `data_dir`, which outlives the server. Without a
    /// `--listen` in `args` the QUIC endpoints take free ports, so tests run side by side.
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Server {
        Server::start_with_env(data_dir, args, &[])
    }

    /// As [`Server::start_in`], with `env` added to the process's environment.
    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, String)]) -> Server {
        Server::try_start(data_dir, args, env).unwrap_or_else(|why| panic!("statefun serve did not start: {why}"))
    }

    fn try_start(data_dir: &Path, args: &[&str], env: &[(&str, String)]) -> Result<Server, String> {
        let data_dir = data_dir.to_owned();
        let mut command = Command::new(env!("CARGO_BIN_EXE_statefun"));
        command.envs(env.iter().map(|(key, value)| (key, value)));
        command.arg("serve").args(["--http", "127.0.0.1:0", "--data-dir"]).arg(&data_dir);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child =
            command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start statefun");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the start-up line");
        let stderr = child.stderr.take().expect("stderr");
        if line.is_empty() {
            let mut errors = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut errors);
            let status = child.wait().expect("wait for statefun");
            return Err(format!("{status}: {errors}"));
        }
        // Keep showing the node's log, as an inherited stderr would.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in the start-up line {line:?}"))
            .to_string();
        Ok(Server { child, url, data_dir, owns_data: false })
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn post(&self, path: &str, content_type: Option<&str>, body: &str) -> Reply {
        post(&format!("{}{path}", self.url), content_type, body)
    }

    /// `/v1/call` with a text body of type `example/text`; panics unless it answers 200.
    pub fn call(&self, target: &str, body: &str) -> String {
        let reply = self.post(&format!("/v1/call/{target}"), Some("application/vnd.example/text"), body);
        assert_eq!(reply.status, 200, "call {target} {body:?}: {}", reply.body);
        reply.body
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_data {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An HTTP answer, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

pub fn post(url: &str, content_type: Option<&str>, body: &str) -> Reply {
    let mut request = ureq::post(url).timeout(Duration::from_secs(30));
    if let Some(content_type) = content_type {
        request = request.set("Content-Type", content_type);
    }
    reply(request.send_string(body))
}

/// A POST with an idempotency key, or the transport error (connection refused or reset,
/// timeout) that a crashing server causes.
pub fn try_post(url: &str, key: &str, body: &str, timeout: Duration) -> Result<Reply, String> {
    let request = ureq::post(url)
        .timeout(timeout)
        .set("Content-Type", "application/vnd.example/text")
        .set("Idempotency-Key", key);
    match request.send_string(body) {
        Ok(response) | Err(ureq::Error::Status(_, response)) => {
            let status = response.status();
            let content_type = response.header("Content-Type").unwrap_or_default().to_string();
            let body = response.into_string().map_err(|error| error.to_string())?;
            Ok(Reply { status, content_type, body })
        }
        Err(error) => Err(error.to_string()),
    }
}

pub fn get(url: &str) -> Reply {
    reply(ureq::get(url).timeout(Duration::from_secs(30)).call())
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("request failed: {error}"),
    };
    let status = response.status();
    let content_type = response.header("Content-Type").unwrap_or_default().to_string();
    let body = response.into_string().expect("a text body");
    Reply { status, content_type, body }
}

/// Polls `check` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// A PUT, whatever its status.
pub fn put(url: &str, content_type: Option<&str>, body: &str) -> Reply {
    let mut request = ureq::put(url).timeout(Duration::from_secs(30));
    if let Some(content_type) = content_type {
        request = request.set("Content-Type", content_type);
    }
    reply(request.send_string(body))
}

/// A DELETE, whatever its status.
pub fn delete(url: &str) -> Reply {
    reply(ureq::delete(url).timeout(Duration::from_secs(30)).call())
}

/// A port that was free a moment ago, for a listener the test configures but does not bind
/// itself (another process may take it in between, which is rare enough for tests).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// An S3-compatible server (moto, from PyPI: `tests/sdk/setup.sh` installs it into
/// `target/sdk/venv`) on a free port, with one bucket; killed when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        let moto = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk/venv/bin/moto_server");
        assert!(moto.is_file(), "{} is missing: run tests/sdk/setup.sh (bash .ci/run does)", moto.display());
        let port = free_port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = S3Server { child, port };
        assert!(
            eventually(Duration::from_secs(60), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "moto_server did not listen on port {port}"
        );
        // object_store cannot create buckets; moto takes an unsigned PUT.
        let created = put(&format!("http://127.0.0.1:{port}/{bucket}"), None, "");
        assert_eq!(created.status, 200, "creating bucket {bucket}: {}", created.body);
        server
    }

    /// The environment a node needs to use it as `--blob-url s3://...`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
