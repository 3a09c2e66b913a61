//! The native client, for applications (on tokio, with quinn).
//!
//! It connects to one shard, learns the cluster map from its `Welcome`, and sends every
//! request straight to the shard that owns the request's key group, over one connection per
//! shard with many requests in flight. Every request carries an idempotency key; when a
//! connection breaks, the client reconnects and sends the request again with the same key, so
//! it is applied once.
//!
//! Operators' commands go to every shard: [`Client::snapshot`] asks each for a checkpoint.
//!
//! ```no_run
//! # async fn example() -> Result<(), statefun_net::Error> {
//! use statefun_core::{Address, TypeName, TypedValue};
//! use statefun_net::client::{Client, ClientConfig};
//!
//! let client = Client::connect(ClientConfig::dev("127.0.0.1:8071".parse().unwrap(), "data".as_ref())?).await?;
//! let counter = Address::new(TypeName::parse("example/counter")?, "alice")?;
//! let delta = TypedValue::new(TypeName::parse("example/delta")?, "5");
//! let total = client.call(&counter, &delta).await?;
//! println!("{}", total.as_text()?);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use statefun_core::{Address, Routing, ShardId, TypeName, TypedValue};
use tokio::sync::{mpsc, oneshot};

use crate::frame::{self, Kind};
use crate::tls::{self, DevFiles};
use crate::Error;

/// How long a request keeps trying (reconnecting, resending) before it gives up.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// The pause between attempts after a failure.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Frames waiting to be written on one connection.
const WRITE_QUEUE_FRAMES_MAX: usize = 4096;
/// Egress records waiting for the subscriber to take them.
const SUBSCRIPTION_QUEUE_MAX: usize = 4096;
/// How long a snapshot request waits for its shard's answer: a checkpoint uploads the
/// shard's changed state to the blob store, minutes for a large shard on a slow link.
pub const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Any shard's endpoint (shard 0's is what `statefun serve --listen` was given).
    pub connect: SocketAddr,
    pub tls: quinn::ClientConfig,
    /// The name the server's certificate must carry.
    pub server_name: String,
    pub token: String,
}

impl ClientConfig {
    /// Trusts the development certificate of a node's data directory and takes its token:
    /// for a client on the same machine.
    pub fn dev(connect: SocketAddr, data_dir: &Path) -> Result<ClientConfig, Error> {
        let files = DevFiles::in_data_dir(data_dir);
        Ok(ClientConfig {
            connect,
            tls: tls::client_config(&files.cert)?,
            server_name: tls::DEV_SERVER_NAME.to_string(),
            token: files.read_token()?,
        })
    }
}

/// An egress record, with its place in its shard's egress.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressRecord {
    pub shard: ShardId,
    pub position: u64,
    pub value: TypedValue,
}

/// One shard's answer to [`Client::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub shard: ShardId,
    /// The checkpoint taken, or why the shard took none.
    pub outcome: frame::SnapshotOutcome,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<frame::Outcome>>>>;
type Subscribers = Arc<Mutex<HashMap<u64, mpsc::Sender<frame::Egress>>>>;
type SnapshotWaiters = Arc<Mutex<HashMap<u64, oneshot::Sender<frame::SnapshotOutcome>>>>;

/// One live connection to a shard.
struct Link {
    writer: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    subscribers: Subscribers,
    snapshots: SnapshotWaiters,
    id_next: AtomicU64,
    connection: quinn::Connection,
}

impl Link {
    fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }
}

/// A connected client. Cheap to clone; all clones share the connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("shards", &self.inner.shards.len()).finish()
    }
}

struct Inner {
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    routing: Routing,
    shards: Vec<(SocketAddr, tokio::sync::Mutex<Option<Arc<Link>>>)>,
    /// Idempotency keys: a prefix unique to this client, and a counter.
    key_prefix: String,
    key_next: AtomicU64,
}

impl Client {
    /// Connects to `config.connect` and learns the cluster map.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let bind: SocketAddr = if config.connect.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|error| Error::Connect { address: config.connect, why: error.to_string() })?;
        endpoint.set_default_client_config(config.tls.clone());
        let (link, welcome) = open_link(&endpoint, &config, config.connect).await?;
        let mut shards = Vec::with_capacity(welcome.shards.len());
        for (index, shard) in welcome.shards.iter().enumerate() {
            if usize::from(shard.shard) != index {
                return Err(Error::Protocol("the cluster map is not in shard order".into()));
            }
            let address = resolve(&shard.address, config.connect)?;
            let slot = if shard.shard == welcome.shard { Some(link.clone()) } else { None };
            shards.push((address, tokio::sync::Mutex::new(slot)));
        }
        let shard_count = u16::try_from(shards.len()).map_err(|_| Error::Protocol("too many shards".into()))?;
        if shard_count == 0 {
            return Err(Error::Protocol("an empty cluster map".into()));
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let key_prefix = format!("c{nanos:x}-{}", std::process::id());
        let inner = Inner {
            config,
            endpoint,
            routing: Routing::new(shard_count),
            shards,
            key_prefix,
            key_next: AtomicU64::new(0),
        };
        Ok(Client { inner: Arc::new(inner) })
    }

    /// The number of shards of the cluster.
    pub fn shards(&self) -> u16 {
        self.inner.routing.shards()
    }

    /// Sends `value` to `target` and waits for the function's reply to its caller.
    pub async fn call(&self, target: &Address, value: &TypedValue) -> Result<TypedValue, Error> {
        match self.request(target, value, frame::Want::Answer, None).await? {
            frame::Outcome::Reply { typename, value } => Ok(TypedValue::new(TypeName::parse(&typename)?, value)),
            other => Err(Error::Protocol(format!("a call ended with {other:?}"))),
        }
    }

    /// Sends `value` to `target`; returns once the message is durably in the target's mailbox.
    pub async fn send(&self, target: &Address, value: &TypedValue) -> Result<(), Error> {
        match self.request(target, value, frame::Want::Admission, None).await? {
            frame::Outcome::Admitted => Ok(()),
            other => Err(Error::Protocol(format!("a send ended with {other:?}"))),
        }
    }

    /// As [`Client::call`], with the caller's own idempotency key.
    pub async fn call_with_key(&self, target: &Address, value: &TypedValue, key: &str) -> Result<TypedValue, Error> {
        match self.request(target, value, frame::Want::Answer, Some(key)).await? {
            frame::Outcome::Reply { typename, value } => Ok(TypedValue::new(TypeName::parse(&typename)?, value)),
            other => Err(Error::Protocol(format!("a call ended with {other:?}"))),
        }
    }

    async fn request(
        &self,
        target: &Address,
        value: &TypedValue,
        want: frame::Want,
        key: Option<&str>,
    ) -> Result<frame::Outcome, Error> {
        let key = match key {
            Some(key) => key.to_string(),
            None => format!("{}-{}", self.inner.key_prefix, self.inner.key_next.fetch_add(1, Ordering::Relaxed)),
        };
        let shard = self.inner.routing.shard_of(target);
        let started = tokio::time::Instant::now();
        let mut last_error = String::new();
        while started.elapsed() < REQUEST_DEADLINE {
            match self.attempt(shard, target, value, want, &key).await {
                Ok(frame::Outcome::Failed(why)) => return Err(Error::Failed(why)),
                Ok(frame::Outcome::Refused { reason, retry: false }) => return Err(Error::RequestRefused(reason)),
                Ok(frame::Outcome::Refused { reason, retry: true }) => last_error = reason,
                Ok(outcome) => return Ok(outcome),
                Err(error) if error.is_permanent() => return Err(error),
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(Error::GaveUp(REQUEST_DEADLINE, last_error))
    }

    async fn attempt(
        &self,
        shard: ShardId,
        target: &Address,
        value: &TypedValue,
        want: frame::Want,
        key: &str,
    ) -> Result<frame::Outcome, Error> {
        let link = self.link(shard).await?;
        let id = link.id_next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&link.pending).insert(id, sender);
        let request = frame::Request {
            id,
            function: target.function.to_string(),
            target_id: target.id.to_string(),
            typename: value.typename.to_string(),
            value: value.value.to_vec(),
            key: key.to_string(),
            want,
        };
        if link.writer.send(frame::encode(Kind::Request, &request)).await.is_err() {
            lock(&link.pending).remove(&id);
            return Err(Error::Failed("the connection closed".into()));
        }
        let closed = || Error::Failed("the connection closed before the reply".into());
        tokio::select! {
            outcome = receiver => outcome.map_err(|_| closed()),
            _ = link.connection.closed() => {
                lock(&link.pending).remove(&id);
                Err(closed())
            }
        }
    }

    /// The live connection to `shard`, connecting (again) if needed.
    async fn link(&self, shard: ShardId) -> Result<Arc<Link>, Error> {
        let (address, slot) = &self.inner.shards[usize::from(shard.0)];
        let mut slot = slot.lock().await;
        if let Some(link) = slot.as_ref().filter(|link| link.is_open()) {
            return Ok(link.clone());
        }
        let (link, welcome) = open_link(&self.inner.endpoint, &self.inner.config, *address).await?;
        if welcome.shard != shard.0 || usize::from(self.inner.routing.shards()) != welcome.shards.len() {
            return Err(Error::Protocol(format!("{address} is no longer shard {} of the same cluster", shard.0)));
        }
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Asks every shard for a checkpoint now, all at once, and waits for them all (each for up
    /// to [`SNAPSHOT_DEADLINE`]). Returns one entry per shard, in shard order; a shard that
    /// took no checkpoint says why in its entry. A shard that cannot be reached, or whose
    /// connection breaks before it answers, makes the whole call an error: whether that
    /// shard's checkpoint was taken is unknown.
    pub async fn snapshot(&self) -> Result<Vec<ShardSnapshot>, Error> {
        let mut tasks = tokio::task::JoinSet::new();
        for shard in 0..self.shards() {
            let client = self.clone();
            tasks.spawn(async move { (shard, client.snapshot_shard(ShardId(shard)).await) });
        }
        let mut outcomes: Vec<Option<frame::SnapshotOutcome>> = vec![None; usize::from(self.shards())];
        // Dropping the set on an early return ends the other shards' waits.
        while let Some(joined) = tasks.join_next().await {
            let (shard, outcome) = joined.map_err(|error| Error::Failed(format!("a snapshot task failed: {error}")))?;
            outcomes[usize::from(shard)] = Some(outcome?);
        }
        Ok(outcomes
            .into_iter()
            .zip(0..)
            .filter_map(|(outcome, shard)| Some(ShardSnapshot { shard: ShardId(shard), outcome: outcome? }))
            .collect())
    }

    /// Asks one shard for a checkpoint now and waits up to [`SNAPSHOT_DEADLINE`] for it. The
    /// shard's failure to take one is `Ok(Failed(why))`; an error means the shard could not be
    /// asked or did not answer. Requests that reach a shard while a checkpoint runs share
    /// the next one. A server older than these frames closes the connection: "unknown frame
    /// kind 8".
    pub async fn snapshot_shard(&self, shard: ShardId) -> Result<frame::SnapshotOutcome, Error> {
        if shard.0 >= self.shards() {
            return Err(Error::Protocol(format!("no shard {}: the cluster has {}", shard.0, self.shards())));
        }
        let link = self.link(shard).await?;
        let id = link.id_next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&link.snapshots).insert(id, sender);
        let closed = |link: &Link| {
            let why = link.connection.close_reason().map_or_else(|| "it closed".to_string(), |error| error.to_string());
            Error::Failed(format!("shard {}: the connection broke before the snapshot's answer: {why}", shard.0))
        };
        if link.writer.send(frame::encode(Kind::Snapshot, &frame::Snapshot { id })).await.is_err() {
            lock(&link.snapshots).remove(&id);
            return Err(closed(&link));
        }
        tokio::select! {
            // An answer that arrived just before the connection closed still counts.
            biased;
            outcome = receiver => outcome.map_err(|_| closed(&link)),
            _ = link.connection.closed() => {
                lock(&link.snapshots).remove(&id);
                Err(closed(&link))
            }
            _ = tokio::time::sleep(SNAPSHOT_DEADLINE) => {
                lock(&link.snapshots).remove(&id);
                Err(Error::Failed(format!(
                    "shard {}: no answer to the snapshot within {} s",
                    shard.0,
                    SNAPSHOT_DEADLINE.as_secs()
                )))
            }
        }
    }

    /// Streams `egress` from every shard, starting at each shard's position in `from` (0 for
    /// the oldest record still kept). Records of one shard come in order; after a broken
    /// connection the subscription resumes where it was.
    pub fn subscribe(&self, egress: &TypeName, from: Vec<u64>) -> mpsc::Receiver<Result<EgressRecord, Error>> {
        let (sender, receiver) = mpsc::channel(SUBSCRIPTION_QUEUE_MAX);
        for shard in 0..self.shards() {
            let client = self.clone();
            let (egress, sender) = (egress.to_string(), sender.clone());
            let mut position = from.get(usize::from(shard)).copied().unwrap_or(0);
            tokio::spawn(async move {
                loop {
                    match client.follow(ShardId(shard), &egress, &mut position, &sender).await {
                        Ok(()) => return, // The subscriber is gone.
                        Err(Error::Refused(why)) => {
                            let _ = sender.send(Err(Error::Refused(why))).await;
                            return;
                        }
                        Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                    }
                }
            });
        }
        receiver
    }

    async fn follow(
        &self,
        shard: ShardId,
        egress: &str,
        position: &mut u64,
        sender: &mpsc::Sender<Result<EgressRecord, Error>>,
    ) -> Result<(), Error> {
        let link = self.link(shard).await?;
        let id = link.id_next.fetch_add(1, Ordering::Relaxed);
        let (records, mut incoming) = mpsc::channel(SUBSCRIPTION_QUEUE_MAX);
        lock(&link.subscribers).insert(id, records);
        let subscribe = frame::Subscribe { id, egress: egress.to_string(), from: *position };
        link.writer
            .send(frame::encode(Kind::Subscribe, &subscribe))
            .await
            .map_err(|_| Error::Failed("closed".into()))?;
        loop {
            let record = tokio::select! {
                record = incoming.recv() => record,
                _ = link.connection.closed() => None,
            };
            let Some(record) = record else { break };
            *position = record.position + 1;
            let value = TypedValue::new(TypeName::parse(&record.typename)?, record.value);
            if sender.send(Ok(EgressRecord { shard, position: record.position, value })).await.is_err() {
                return Ok(());
            }
        }
        Err(Error::Failed("the connection closed".into()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn resolve(address: &str, fallback: SocketAddr) -> Result<SocketAddr, Error> {
    let parsed: SocketAddr =
        address.parse().map_err(|_| Error::Protocol(format!("a bad shard address {address:?}")))?;
    // A shard listening on every interface is reached where the client reached the first.
    if parsed.ip().is_unspecified() {
        return Ok(SocketAddr::new(fallback.ip(), parsed.port()));
    }
    Ok(parsed)
}

/// Connects to one shard, says hello, and starts the tasks that write and read its stream.
async fn open_link(
    endpoint: &quinn::Endpoint,
    config: &ClientConfig,
    address: SocketAddr,
) -> Result<(Arc<Link>, frame::Welcome), Error> {
    let failed = |why: String| Error::Connect { address, why };
    let connecting = endpoint.connect(address, &config.server_name).map_err(|error| failed(error.to_string()))?;
    let connection = connecting.await.map_err(|error| failed(error.to_string()))?;
    let (mut send, mut receive) = connection.open_bi().await.map_err(|error| failed(error.to_string()))?;
    let hello = frame::encode(Kind::Hello, &frame::Hello { token: config.token.clone() });
    send.write_all(&hello).await.map_err(|error| failed(error.to_string()))?;
    let mut reader = frame::Reader::default();
    let welcome = loop {
        if let Some((kind, payload)) = reader.next_frame().map_err(|error| Error::Protocol(error.to_string()))? {
            match kind {
                Kind::Welcome => {
                    break frame::decode::<frame::Welcome>(kind, &payload)
                        .map_err(|error| Error::Protocol(error.to_string()))?
                }
                Kind::Refused => {
                    let refused: frame::Refused =
                        frame::decode(kind, &payload).map_err(|error| Error::Protocol(error.to_string()))?;
                    return Err(Error::Refused(refused.reason));
                }
                other => return Err(Error::Protocol(format!("expected a Welcome, got {other:?}"))),
            }
        }
        match receive.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => reader.extend(&chunk.bytes),
            Ok(None) => return Err(failed("the server closed the stream".into())),
            Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(close))) => {
                return Err(Error::Refused(String::from_utf8_lossy(&close.reason).into_owned()));
            }
            Err(error) => return Err(failed(error.to_string())),
        }
    };
    let (writer, mut frames) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES_MAX);
    tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if send.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let waiters = Waiters {
        pending: Pending::default(),
        subscribers: Subscribers::default(),
        snapshots: SnapshotWaiters::default(),
    };
    let reading = (waiters.clone(), connection.clone());
    let writer_closer = writer.clone();
    tokio::spawn(async move {
        let (waiters, connection) = reading;
        let bad = 'read: loop {
            loop {
                match reader.next_frame() {
                    Ok(Some((kind, payload))) => {
                        if let Err(why) = waiters.deliver(kind, &payload).await {
                            break 'read Some(why);
                        }
                    }
                    Ok(None) => break,
                    Err(error) => break 'read Some(error.to_string()),
                }
            }
            match receive.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => reader.extend(&chunk.bytes),
                _ => break None,
            }
        };
        // A frame this side cannot read ends the connection, so that no waiter waits for an
        // answer that will not come.
        if let Some(why) = bad {
            connection.close(crate::server::CLOSE_PROTOCOL.into(), format!("bad frame: {why}").as_bytes());
        }
        // The connection is gone: waiters see their senders dropped and retry elsewhere.
        lock(&waiters.pending).clear();
        lock(&waiters.subscribers).clear();
        lock(&waiters.snapshots).clear();
        drop(writer_closer);
    });
    let Waiters { pending, subscribers, snapshots } = waiters;
    let link = Link { writer, pending, subscribers, snapshots, id_next: AtomicU64::new(0), connection };
    Ok((Arc::new(link), welcome))
}

/// Who waits for the frames a connection's reader task receives.
#[derive(Clone)]
struct Waiters {
    pending: Pending,
    subscribers: Subscribers,
    snapshots: SnapshotWaiters,
}

impl Waiters {
    /// Hands a frame from the server to whoever waits for it; a frame that does not decode,
    /// or that a server does not send, is an error.
    async fn deliver(&self, kind: Kind, payload: &rkyv::util::AlignedVec) -> Result<(), String> {
        match kind {
            Kind::Reply => {
                let reply = frame::decode::<frame::Reply>(kind, payload).map_err(|error| error.to_string())?;
                if let Some(waiter) = lock(&self.pending).remove(&reply.id) {
                    let _ = waiter.send(reply.outcome);
                }
            }
            Kind::Egress => {
                let record = frame::decode::<frame::Egress>(kind, payload).map_err(|error| error.to_string())?;
                let subscriber = lock(&self.subscribers).get(&record.id).cloned();
                if let Some(subscriber) = subscriber {
                    let _ = subscriber.send(record).await;
                }
            }
            Kind::Snapshotted => {
                let answer = frame::decode::<frame::Snapshotted>(kind, payload).map_err(|error| error.to_string())?;
                if let Some(waiter) = lock(&self.snapshots).remove(&answer.id) {
                    let _ = waiter.send(answer.outcome);
                }
            }
            other => return Err(format!("a server does not send {other:?} frames")),
        }
        Ok(())
    }
}
