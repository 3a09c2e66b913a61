//! Remote functions over StateFun's HTTP request-reply protocol: the node's driver of the
//! core's batches (`statefun_core::Shard::begin_remote`).
//!
//! Each batch is a task on its shard's executor. It sends the batch's `ToFunction` to the
//! endpoint (an HTTP/1.1 keep-alive pool per shard and endpoint, [`http::Pool`]) and hands
//! the `FromFunction` to the core, which commits it as one record. A failure (no connection,
//! a timeout, a status other than 2xx, a reply that is not a `FromFunction`, or one the core
//! refuses) is retried with exponential backoff, honouring `Retry-After`, within the
//! endpoint's call budget (`transport.call`). After that the address is **parked**: listed by
//! `GET /v1/parked`, counted by `statefun_remote_parked`, logged, and retried every
//! `limits::remote_parked_retry_ms` or at once after `POST /v1/parked/retry`. Its messages
//! stay in its mailbox, so nothing is lost or applied twice, and other addresses go on.

pub mod http;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use statefun_core::protocol::{FromFunction, Message};
use statefun_core::{Batch, Completion, TypeName, UnixMillis};

use crate::limits;
use crate::metrics::ShardMetrics;
use crate::module::{Endpoint as EndpointSpec, UrlTemplate};
use crate::rt::{self, Broadcast};
use crate::shard::{now, ShardNode};

/// One endpoint of the module, as one shard reaches it.
#[derive(Debug)]
pub struct Endpoint {
    url: UrlTemplate,
    /// The budget of one batch's attempts before its address is parked.
    call: Duration,
    pool: http::Pool,
}

impl Endpoint {
    /// Opens (lazily) the pool of connections to `spec`: a bad TLS file is an error now.
    pub fn new(spec: &EndpointSpec) -> Result<Endpoint, http::Error> {
        let transport = &spec.transport;
        let tls = transport.tls.clone().unwrap_or_default();
        if let Some(password) = &tls.client_key_password {
            return Err(http::Error::Config {
                endpoint: spec.url.authority(),
                why: format!(
                    "client_key_password {}: encrypted client keys are not supported; give the key unencrypted \
                     (openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8) and drop client_key_password",
                    password.display()
                ),
            });
        }
        let pool = http::Pool::new(http::PoolConfig {
            tls: spec.url.tls,
            host: spec.url.host.clone(),
            port: spec.url.port,
            connect_timeout: transport.connect,
            pool_ttl: transport.pool_ttl,
            pool_size: transport.pool_size,
            response_bytes_max: transport.payload_bytes_max,
            trust_cacerts: tls.trust_cacerts,
            client_cert: tls.client_cert,
            client_key: tls.client_key,
        })?;
        Ok(Endpoint { url: spec.url.clone(), call: transport.call, pool })
    }

    fn url_for(&self, function: &TypeName) -> String {
        let scheme = if self.url.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.url.authority(), self.url.path_for(function))
    }
}

/// A parked address: its last error, since when, and how many attempts failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedAddress {
    pub address: String,
    pub error: String,
    pub since: UnixMillis,
    pub attempts: u32,
}

/// The parked addresses of every shard. It is read by whichever shard serves
/// `GET /v1/parked`, so it sits behind a lock; it changes only when an address parks,
/// fails again while parked, or resumes — never on the path of a healthy call.
#[derive(Debug, Default)]
pub struct Parked {
    addresses: Mutex<BTreeMap<String, ParkedAddress>>,
}

impl Parked {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, ParkedAddress>) -> T) -> T {
        // A panic while holding the lock leaves a map that is still whole.
        let mut addresses = self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut addresses)
    }

    fn park(&self, parked: ParkedAddress) {
        self.with(|addresses| addresses.insert(parked.address.clone(), parked));
    }

    fn unpark(&self, address: &str) {
        self.with(|addresses| addresses.remove(address));
    }

    /// Every parked address, sorted.
    pub fn list(&self) -> Vec<ParkedAddress> {
        self.with(|addresses| addresses.values().cloned().collect())
    }

    pub fn len(&self) -> usize {
        self.with(|addresses| addresses.len())
    }
}

/// One shard's remote functions: its endpoints, its batches in flight, and the wake-up of
/// an explicit retry.
#[derive(Debug, Default)]
pub struct Remote {
    endpoints: Vec<Endpoint>,
    in_flight: Cell<usize>,
    parked: Arc<Parked>,
    retry: Rc<Broadcast>,
}

impl Remote {
    pub fn new(endpoints: Vec<Endpoint>, parked: Arc<Parked>) -> Remote {
        Remote { endpoints, in_flight: Cell::new(0), parked, retry: Rc::default() }
    }

    /// Whether another batch may start: the bound of batches in flight per shard.
    pub fn has_room(&self) -> bool {
        self.in_flight.get() < limits::remote_batches_in_flight_max
    }

    pub fn parked(&self) -> &Arc<Parked> {
        &self.parked
    }

    /// Retries this shard's waiting batches now.
    pub fn retry_now(&self) {
        self.retry.notify_all();
    }
}

/// Why an attempt failed, and how long the endpoint asked us to wait.
struct Failure {
    why: String,
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(why: String) -> Failure {
        Failure { why, retry_after: None }
    }
}

/// Checks an endpoint's answer: 2xx, `application/octet-stream` (or no type), a `FromFunction`.
fn reply(url: &str, response: http::Response) -> Result<FromFunction, Failure> {
    if !(200..300).contains(&response.status) {
        let excerpt =
            String::from_utf8_lossy(&response.body[..response.body.len().min(limits::remote_error_bytes_max)])
                .trim()
                .to_string();
        let why = format!("{url} answered HTTP {}: {excerpt}", response.status);
        return Err(Failure { why, retry_after: response.retry_after });
    }
    if let Some(content_type) = &response.content_type {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/octet-stream") {
            return Err(Failure::new(format!(
                "{url} answered with Content-Type {content_type}, expected application/octet-stream"
            )));
        }
    }
    FromFunction::decode(response.body)
        .map_err(|error| Failure::new(format!("{url} answered with a body that is not a FromFunction: {error}")))
}

/// The pause before attempt `attempts + 1`: 2 ms doubling, at most the cap.
fn backoff(attempts: u32) -> Duration {
    let first = Duration::from_millis(limits::remote_backoff_first_ms);
    first.saturating_mul(1 << attempts.min(20)).min(Duration::from_millis(limits::remote_backoff_max_ms))
}

impl ShardNode {
    /// Starts a task for every batch the core has ready, while there is room.
    pub(crate) fn dispatch_remote(self: &Rc<Self>) {
        while self.remote.has_room() {
            let batch = self.core.borrow_mut().begin_remote();
            let Some(batch) = batch else { return };
            self.remote.in_flight.set(self.remote.in_flight.get() + 1);
            let node = self.clone();
            rt::spawn_local(async move { node.call_remote(batch).await }).detach();
        }
    }

    /// Sends `batch` until a reply is applied. See the module documentation.
    async fn call_remote(self: Rc<Self>, mut batch: Batch) {
        let Some(endpoint) = self.remote.endpoints.get(batch.endpoint) else {
            panic!("{}: no endpoint {} for {}", self.id, batch.endpoint, batch.address)
        };
        let url = endpoint.url_for(&batch.address.function);
        let path = endpoint.url.path_for(&batch.address.function);
        let metrics = self.shard_metrics();
        let mut started = Instant::now();
        let mut attempts = 0u32;
        // Set while the address is parked: since when.
        let mut parked: Option<UnixMillis> = None;
        loop {
            if !self.accepts_work() {
                // The log failed: nothing can be committed until a restart sends the batch again.
                return;
            }
            let request = self.core.borrow().remote_request(&mut batch, now());
            let body = Bytes::from(request.encode_to_vec());
            let timeout = match parked {
                Some(_) => endpoint.call,
                None => endpoint
                    .call
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(limits::remote_attempt_min_ms)),
            };
            ShardMetrics::add(&metrics.remote_requests, 1);
            let answered = endpoint.pool.post(&path, body, timeout).await;
            let answered = answered.map_err(|error| Failure::new(error.to_string()));
            let failure = match answered.and_then(|response| reply(&url, response)) {
                Ok(reply) => {
                    let completion = self.core.borrow_mut().complete_remote(&batch, now(), reply);
                    self.wake();
                    match completion {
                        Ok(Completion::Applied) => {
                            ShardMetrics::add(&metrics.remote_messages, batch.len() as u64);
                            if parked.is_some() {
                                self.remote.parked.unpark(&batch.address.to_string());
                                tracing::info!(
                                    "{}: {} resumed after {attempts} failed attempts",
                                    self.id,
                                    batch.address
                                );
                            }
                            self.remote.in_flight.set(self.remote.in_flight.get() - 1);
                            return;
                        }
                        Ok(Completion::Registered) => {
                            ShardMetrics::add(&metrics.remote_handshakes, 1);
                            continue;
                        }
                        Err(error) => Failure::new(format!("{url} answered for {}: {error}", batch.address)),
                    }
                }
                Err(failure) => failure,
            };
            attempts += 1;
            ShardMetrics::add(&metrics.remote_failures, 1);
            if attempts == 1 {
                self.core.borrow_mut().remote_failed(&batch);
                self.wake();
            }
            let address = batch.address.to_string();
            if parked.is_none() && started.elapsed() >= endpoint.call {
                tracing::warn!(
                    "{}: {address} is parked after {attempts} failed attempts in {:?}: {}; its {} messages wait, \
                     and other addresses go on",
                    self.id,
                    endpoint.call,
                    failure.why,
                    batch.len()
                );
                parked = Some(now());
            }
            let pause = match parked {
                Some(since) => {
                    let error = failure.why.clone();
                    self.remote.parked.park(ParkedAddress { address, error, since, attempts });
                    Duration::from_millis(limits::remote_parked_retry_ms)
                }
                None => {
                    tracing::debug!("{}: attempt {attempts} for {address} failed: {}", self.id, failure.why);
                    backoff(attempts).min(endpoint.call.saturating_sub(started.elapsed()))
                }
            };
            let pause = pause.max(failure.retry_after.unwrap_or_default());
            let retried = futures_lite::future::or(
                async {
                    rt::sleep(pause).await;
                    false
                },
                async {
                    self.remote.retry.wait().await;
                    true
                },
            )
            .await;
            if retried {
                // An operator's retry: a fresh budget.
                started = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The checks on an endpoint's answer and the backoff schedule.

    use super::*;

    fn response(status: u16, content_type: Option<&str>, body: &[u8]) -> http::Response {
        http::Response {
            status,
            content_type: content_type.map(str::to_string),
            retry_after: Some(Duration::from_secs(3)),
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn answers_are_checked_and_failures_say_why() {
        let url = "http://f:8000/statefun";
        assert!(reply(url, response(200, Some("application/octet-stream"), b"")).is_ok(), "an empty body is fine");
        assert!(reply(url, response(200, None, b"")).is_ok());
        let failure = reply(url, response(500, Some("text/plain"), b"boom\n")).err().unwrap();
        assert_eq!(failure.why, "http://f:8000/statefun answered HTTP 500: boom");
        assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));
        let failure = reply(url, response(200, Some("text/html"), b"<html>")).err().unwrap();
        assert!(failure.why.contains("Content-Type text/html"), "{}", failure.why);
        let failure = reply(url, response(200, Some("application/octet-stream"), b"\xff\xff")).err().unwrap();
        assert!(failure.why.contains("not a FromFunction"), "{}", failure.why);
    }

    #[test]
    fn backoff_doubles_from_2_ms_to_its_cap() {
        assert_eq!(backoff(0), Duration::from_millis(2));
        assert_eq!(backoff(3), Duration::from_millis(16));
        assert_eq!(backoff(30), Duration::from_millis(limits::remote_backoff_max_ms));
    }
}
