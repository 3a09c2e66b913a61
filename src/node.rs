//! A node: one shard per core, wired into a full mesh, each serving the HTTP ingress.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context as _};
use statefun_core::{limits as core_limits, Registry, RemoteBinding, Retention, Routing, ShardId};

use statefun_net::frame::ShardEndpoint;
use statefun_net::tls::DevFiles;
use statefun_storage::blob::BlobStore;
use statefun_storage::{Batcher, LogConfig, Lsn, Recovered, Segments};

use crate::limits;
use crate::metrics::Metrics;
use crate::module::{FunctionPattern, Module};
use crate::native::NativeConfig;
use crate::playground::PlaygroundTopics;
use crate::remote::{self, Parked, Remote};
use crate::rt::{self, ExecutorJoinHandle};
use crate::shard::{Journal, MeshMessage, Services, ShardNode};
use crate::snapshots::{self, SnapshotConfig, Snapshots};

/// How committed a record is before its effects leave the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Every batch of records is written and fdatasync'ed before its effects leave.
    Fsync,
    /// As `fsync`, but at most one fdatasync per `--fsync-interval-ms`: fewer, larger batches.
    Interval,
    /// No log: effects leave as soon as the invocation ran. State is lost on exit.
    Memory,
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shards, one executor each, pinned to cores in order.
    pub shards: u16,
    /// Where the HTTP ingress listens; port 0 picks a free port.
    pub http: SocketAddr,
    /// Where shard 0's QUIC endpoint listens; shard `i` listens on the port after it plus
    /// `i`. Port 0 picks free ports.
    pub listen: SocketAddr,
    /// The server certificate chain and key (PEM); `None` uses the development certificate
    /// in the data directory, generated on first start.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub durability: Durability,
    /// The period of `interval` durability.
    pub fsync_interval: Duration,
    /// The size of a log segment file.
    pub segment_bytes: u64,
    pub data_dir: PathBuf,
    /// How long `/v1/call` waits for the function's reply.
    pub call_timeout: Duration,
    /// Busy-poll this long before an idle executor parks: trades idle CPU for wake-up latency.
    pub spin_before_park: Option<Duration>,
    /// How long ingress requests are remembered for idempotent retries.
    pub retention: Retention,
    /// A StateFun module: remote functions, the playground ingress and egress.
    pub module: Option<Module>,
    /// Where checkpoints and sealed log segments go: `file:///dir` or (with the `s3`
    /// feature) `s3://bucket/prefix`; `None` is `{data_dir}/blobs`.
    pub blob_url: Option<String>,
    pub snapshots: SnapshotConfig,
}

impl Config {
    /// The embedded default: all cores, loopback, `./data`.
    pub fn embedded_default() -> Config {
        Config {
            shards: u16::try_from(rt::online_cpus()).unwrap_or(1),
            http: SocketAddr::from(([127, 0, 0, 1], 8070)),
            listen: SocketAddr::from(([127, 0, 0, 1], 8071)),
            tls: None,
            durability: Durability::Fsync,
            fsync_interval: Duration::from_millis(5),
            segment_bytes: statefun_storage::limits::segment_bytes_default,
            data_dir: PathBuf::from("data"),
            call_timeout: Duration::from_secs(10),
            spin_before_park: None,
            retention: Retention::default(),
            module: None,
            blob_url: None,
            snapshots: SnapshotConfig { interval: Duration::from_secs(60), log_bytes: 256 * 1024 * 1024, retained: 3 },
        }
    }
}

impl Config {
    /// The durability in words, for the start-up line.
    pub fn durability_text(&self) -> String {
        match self.durability {
            Durability::Fsync => "fsync (every commit is fdatasync'ed before its effects leave)".to_string(),
            Durability::Interval => {
                format!("interval (fdatasync every {} ms; effects leave after it)", self.fsync_interval.as_millis())
            }
            Durability::Memory => "memory (no log: state is lost on exit)".to_string(),
        }
    }

    /// The blob store's URL: `--blob-url`, or a directory in the data directory.
    pub fn blob_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.blob_url {
            return Ok(url.clone());
        }
        let data_dir = std::path::absolute(&self.data_dir)
            .with_context(|| format!("cannot resolve the data directory {}", self.data_dir.display()))?;
        Ok(format!("file://{}", data_dir.join("blobs").display()))
    }

    /// The log directory of a shard.
    pub fn log_dir(&self, shard: ShardId) -> PathBuf {
        self.data_dir.join(format!("shard-{}", shard.0)).join("log")
    }
}

/// The layout file says which shard count wrote the data directory. A node started with
/// another count moves the state to it first ([`rescale`]); the layout file is the commit
/// point of that move.
fn layout_text(shards: u16) -> String {
    format!("shards={shards}\nkey_groups={}\n", core_limits::key_groups_max)
}

/// The shard count of the data directory's layout file, if it has one.
fn written_layout(config: &Config) -> anyhow::Result<Option<u16>> {
    let path = config.data_dir.join("layout");
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            let shards = existing.lines().find_map(|line| line.strip_prefix("shards=")).and_then(|n| n.parse().ok());
            let shards =
                shards.with_context(|| format!("{} does not say its shard count: {existing:?}", path.display()))?;
            if existing != layout_text(shards) {
                bail!("{} is of another layout: {}", path.display(), existing.trim().replace('\n', ", "));
            }
            Ok(Some(shards))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the layout file for `shards`, atomically.
fn write_layout(config: &Config, shards: u16) -> anyhow::Result<()> {
    let path = config.data_dir.join("layout");
    let temporary = config.data_dir.join("layout.tmp");
    std::fs::write(&temporary, layout_text(shards)).with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::File::open(&temporary).and_then(|file| file.sync_all())?;
    std::fs::rename(&temporary, &path).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(&config.data_dir).and_then(|dir| dir.sync_all())?;
    Ok(())
}

/// A started node. Its shards run until the process ends.
#[derive(Debug)]
pub struct Node {
    /// The address the HTTP ingress listens on (with the port resolved).
    pub http: SocketAddr,
    /// Every shard's QUIC endpoint, in shard order.
    pub quic: Vec<SocketAddr>,
    pub shards: u16,
    executors: Vec<ExecutorJoinHandle<()>>,
}

impl Node {
    /// Starts every shard and returns once all of them serve.
    pub fn start(config: Config, mut registry: Registry) -> anyhow::Result<Node> {
        if config.shards == 0 || config.shards > core_limits::shards_max {
            bail!("--shards {} is out of range: give 1 to {}", config.shards, core_limits::shards_max);
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
        // Bind once without SO_REUSEPORT: this fails if anyone else holds the port (the
        // shards' own sockets share it), and resolves port 0 to a real port.
        let probe = bind_patiently(|| std::net::TcpListener::bind(config.http))
            .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
        let http = probe.local_addr()?;
        drop(probe);

        let shards = config.shards;
        let quic = quic_addresses(config.listen, shards)?;
        let dev = DevFiles::in_data_dir(&config.data_dir);
        dev.ensure()?;
        let (cert, key) = config.tls.clone().unwrap_or_else(|| (dev.cert.clone(), dev.key.clone()));
        let server_tls = statefun_net::tls::server_config(&cert, &key)?;
        let reset_key = dev.read_reset_key()?;
        let native = NativeConfig {
            token: dev.read_token()?,
            shards: quic
                .iter()
                .enumerate()
                .map(|(shard, address)| ShardEndpoint { shard: shard as u16, address: address.to_string() })
                .collect(),
            call_timeout: config.call_timeout,
        };
        let routing = Routing::new(shards);
        registry.register_endpoint(statefun_core::requests::request_type())?;
        let module = Arc::new(config.module.clone().unwrap_or_default());
        for (endpoint, spec) in module.endpoints.iter().enumerate() {
            let binding = RemoteBinding { endpoint, batch_max: spec.batch_max };
            match &spec.functions {
                FunctionPattern::Exact(typename) => registry.bind_remote(typename.clone(), binding),
                FunctionPattern::Namespace(namespace) => registry.bind_remote_namespace(namespace, binding),
            }
            .context("cannot bind the module's functions")?;
        }
        let playground = Playground::bind(&module, http.ip())?;
        let store = match config.durability {
            Durability::Memory => None,
            _ => {
                let url = config.blob_url()?;
                Some(BlobStore::open(&url).with_context(|| format!("cannot open the blob store {url}"))?)
            }
        };
        let parked = Arc::new(Parked::default());
        let registry = Arc::new(registry);
        if let Some(store) = &store {
            let written = match written_layout(&config)? {
                Some(shards) => Some(shards),
                // An empty data directory: the blob store may hold another layout's checkpoints.
                None => crate::rescale::stored_layout(store)?,
            };
            match written {
                Some(old) if old != config.shards => {
                    crate::rescale::rescale(&config, old, &registry, store)?;
                    write_layout(&config, config.shards)?;
                }
                Some(_) => {}
                None => write_layout(&config, config.shards)?,
            }
            crate::rescale::clean_up(&config)?;
        }
        let metrics = Arc::new(Metrics::new(shards));
        let mut links = mesh(shards);
        let (ready_sender, ready) = mpsc::channel::<Result<ShardId, String>>();
        let mut executors = Vec::with_capacity(usize::from(shards));
        for (index, shard_links) in links.drain(..).enumerate() {
            let id = ShardId(u16::try_from(index)?);
            let registry = registry.clone();
            let ready = ready_sender.clone();
            let call_timeout = config.call_timeout;
            let retention = config.retention;
            let (native, server_tls, quic_address) = (native.clone(), server_tls.clone(), quic[index]);
            let reset_key = reset_key.clone();
            let metrics = metrics.clone();
            let (module, parked, playground) = (module.clone(), parked.clone(), playground.clone());
            let (store, snapshot_config) = (store.clone(), config.snapshots.clone());
            let log = (config.durability != Durability::Memory).then(|| LogConfig {
                dir: config.log_dir(id),
                segment_bytes: config.segment_bytes,
                after: Lsn(0),
            });
            let interval = (config.durability == Durability::Interval).then_some(config.fsync_interval);
            let executor =
                rt::start_pinned(&format!("shard-{index}"), index, config.spin_before_park, move || async move {
                    // Every channel end waits for its other end: connect them all at once, or two
                    // shards each waiting on their first peer would wait forever.
                    let connecting: Vec<_> = shard_links
                        .into_iter()
                        .map(|(peer, sender, receiver)| {
                            let both = futures_lite::future::zip(sender.connect(), receiver.connect());
                            rt::spawn_local(async move { (peer, both.await) })
                        })
                        .collect();
                    let mut connected = Vec::with_capacity(connecting.len());
                    for link in connecting {
                        let (peer, (sender, receiver)) = link.await;
                        connected.push((peer, sender, receiver));
                    }
                    tracing::debug!("{id}: mesh connected");
                    let (journal, segments, records, restored, next_lsn) = match &log {
                        None => (None, None, Vec::new(), None, Lsn(1)),
                        Some(log) => {
                            let restored = match &store {
                                Some(store) => match snapshots::restore_point(store, id, routing.shards(), &log.dir)
                                    .await
                                {
                                    Ok(restored) => restored,
                                    Err(error) => {
                                        let _ = ready.send(Err(format!("{id}: cannot restore a checkpoint: {error}")));
                                        return;
                                    }
                                },
                                None => None,
                            };
                            let after = restored.as_ref().map_or(Lsn(0), |restored| Lsn(restored.manifest.lsn));
                            let log = LogConfig { after, ..log.clone() };
                            match recover(id, &log).await {
                                Ok((recovered, batcher, segments)) => (
                                    Some(Journal::new(batcher, interval)),
                                    Some(segments),
                                    recovered.records,
                                    restored,
                                    recovered.next_lsn,
                                ),
                                Err(error) => {
                                    let dir = log.dir.display();
                                    let _ = ready.send(Err(format!("{id}: cannot recover the log in {dir}: {error}")));
                                    return;
                                }
                            }
                        }
                    };
                    let endpoints: Result<Vec<_>, _> = module.endpoints.iter().map(remote::Endpoint::new).collect();
                    let endpoints = match endpoints {
                        Ok(endpoints) => endpoints,
                        Err(error) => {
                            let _ = ready.send(Err(format!("a function endpoint of the module: {error}")));
                            return;
                        }
                    };
                    let snapshots = store.map(|store| Snapshots::new(store, snapshot_config, restored.as_ref()));
                    let services = Services {
                        remote: Remote::new(endpoints, parked),
                        playground: playground.egress.as_ref().map(|(_, topics)| topics.clone()),
                        snapshots,
                    };
                    let node = ShardNode::new(id, routing, registry, retention, journal, metrics, services);
                    if let Err(error) = node.recover(restored, &records, next_lsn) {
                        let _ = ready.send(Err(error));
                        return;
                    }
                    drop(records);
                    node.start(connected, segments);
                    let listener = match rt::TcpListener::bind(http) {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = ready.send(Err(format!("{id}: cannot listen for HTTP on {http}: {error}")));
                            return;
                        }
                    };
                    let endpoint = match statefun_net::server::start(quic_address, server_tls, &reset_key) {
                        Ok(endpoint) => endpoint,
                        Err(error) => {
                            let _ = ready.send(Err(format!("{id}: cannot listen for QUIC on {quic_address}: {error}")));
                            return;
                        }
                    };
                    rt::spawn_local(crate::native::serve(node.clone(), endpoint, native)).detach();
                    if let Err(error) = playground.serve(&node) {
                        let _ = ready.send(Err(format!("{id}: {error}")));
                        return;
                    }
                    let _ = ready.send(Ok(id));
                    crate::ingress::serve(node, listener, call_timeout).await;
                })
                .with_context(|| format!("cannot start the executor of shard {index}"))?;
            executors.push(executor);
        }
        drop(ready_sender);
        for _ in 0..shards {
            match ready.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => bail!(error),
                Err(_) => bail!("a shard stopped before it served"),
            }
        }
        Ok(Node { http, quic, shards, executors })
    }

    /// Waits for the shards, which run until the process ends.
    pub fn wait(self) -> anyhow::Result<()> {
        for executor in self.executors {
            executor.join().map_err(|error| anyhow::anyhow!("a shard failed: {error}"))?;
        }
        Ok(())
    }
}

/// The playground's ingress and egress ports of a module, checked free before the shards
/// start, and the egress's topics, shared by every shard.
#[derive(Debug, Clone, Default)]
struct Playground {
    ingress: Option<SocketAddr>,
    egress: Option<(SocketAddr, Arc<PlaygroundTopics>)>,
}

impl Playground {
    /// Checks the ports now (they listen on the HTTP ingress's address), for a clear error.
    fn bind(module: &Module, ip: std::net::IpAddr) -> anyhow::Result<Playground> {
        let check = |port: u16, what: &str| -> anyhow::Result<SocketAddr> {
            let address = SocketAddr::new(ip, port);
            let probe = bind_patiently(|| std::net::TcpListener::bind(address))
                .with_context(|| format!("cannot listen for the playground {what} on {address}"))?;
            Ok(probe.local_addr()?)
        };
        let ingress = module.playground_ingress.as_ref().map(|spec| check(spec.port, "ingress")).transpose()?;
        let egress = match &module.playground_egress {
            Some(spec) => {
                let address = check(spec.port, "egress")?;
                Some((address, Arc::new(PlaygroundTopics::new(spec.topics.clone()))))
            }
            None => None,
        };
        Ok(Playground { ingress, egress })
    }

    /// Starts this shard's side of the playground servers.
    fn serve(&self, node: &std::rc::Rc<ShardNode>) -> anyhow::Result<()> {
        if let Some(address) = self.ingress {
            let listener = rt::TcpListener::bind(address)
                .map_err(|error| anyhow::anyhow!("cannot listen for the playground ingress on {address}: {error}"))?;
            rt::spawn_local(crate::playground::serve_ingress(node.clone(), listener)).detach();
        }
        if let Some((address, topics)) = &self.egress {
            let listener = rt::TcpListener::bind(*address)
                .map_err(|error| anyhow::anyhow!("cannot listen for the playground egress on {address}: {error}"))?;
            rt::spawn_local(crate::playground::serve_egress(topics.clone(), listener)).detach();
        }
        Ok(())
    }
}

/// How long a port in use may take to come free: after a crash, the kernel tears the dead
/// process's io_uring (and the sockets it holds) down in the background, so a node restarted
/// at once can find its own ports still taken for a moment.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Binds, retrying while the address is in use, for at most `PORT_RELEASE_WAIT`.
fn bind_patiently<T>(mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    loop {
        match bind() {
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            outcome => return outcome,
        }
    }
}

/// Every shard's QUIC address: consecutive ports from `listen`'s, or free ones for port 0.
fn quic_addresses(listen: SocketAddr, shards: u16) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addresses = Vec::with_capacity(usize::from(shards));
    let mut probes = Vec::new();
    for shard in 0..shards {
        let wanted = match listen.port() {
            0 => listen,
            port => {
                let port =
                    port.checked_add(shard).with_context(|| format!("--listen {listen}: no port for shard {shard}"))?;
                SocketAddr::new(listen.ip(), port)
            }
        };
        // Binding says now, clearly, if a port is taken; port 0 becomes a real one.
        let probe = bind_patiently(|| std::net::UdpSocket::bind(wanted)).with_context(|| {
            format!("cannot listen for QUIC on {wanted} (shard {shard}; --listen gives shard 0's port)")
        })?;
        addresses.push(probe.local_addr()?);
        probes.push(probe);
    }
    Ok(addresses)
}

/// Opens a shard's log and reports what recovery found.
async fn recover(id: ShardId, log: &LogConfig) -> Result<(Recovered, Batcher, Segments), statefun_storage::Error> {
    let started = std::time::Instant::now();
    let (recovered, batcher, segments) = statefun_storage::open(log).await?;
    if let Some(cut) = &recovered.cut {
        tracing::warn!("{id}: {cut}");
    }
    tracing::info!(
        "{id}: recovered {} records from {} segments in {} ms",
        recovered.records.len(),
        recovered.segments,
        started.elapsed().as_millis()
    );
    Ok((recovered, batcher, segments))
}

/// One shard's ends of the mesh: for every peer, the sender to it and the receiver from it.
type ShardLinks = Vec<(ShardId, rt::SharedSender<MeshMessage>, rt::SharedReceiver<MeshMessage>)>;

/// A bounded channel for every ordered pair of shards (a full mesh).
fn mesh(shards: u16) -> Vec<ShardLinks> {
    let n = usize::from(shards);
    let mut senders: Vec<Vec<Option<rt::SharedSender<MeshMessage>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<Option<rt::SharedReceiver<MeshMessage>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..n {
        for to in (0..n).filter(|to| *to != from) {
            let (sender, receiver) = rt::channel(limits::mesh_channel_messages_max);
            senders[from][to] = Some(sender);
            receivers[to][from] = Some(receiver);
        }
    }
    let mut links = Vec::with_capacity(n);
    for (me, (senders, receivers)) in senders.into_iter().zip(receivers).enumerate() {
        let mut shard_links = Vec::with_capacity(n.saturating_sub(1));
        for (peer, (sender, receiver)) in senders.into_iter().zip(receivers).enumerate() {
            if let (Some(sender), Some(receiver)) = (sender, receiver) {
                shard_links.push((ShardId(peer as u16), sender, receiver));
            } else {
                assert_eq!(peer, me, "only the diagonal of the mesh is empty");
            }
        }
        links.push(shard_links);
    }
    links
}
