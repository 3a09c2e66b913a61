//! Deterministic simulation of two shards and their logs on a simulated disk that tears
//! unsynced writes when the machine stops: the sans-I/O core, the real batch format, codec
//! and recovery, driven by a seeded scheduler. Clients send increments with idempotency keys
//! (straight to a counter, or through a forwarder that sends them on after a delay, usually to
//! the other shard) and resend every unanswered one after a crash. At the end every request
//! is answered, and each counter equals the number of distinct increments sent to it: nothing
//! acknowledged was lost, nothing was applied twice. A failing seed is printed;
//! `STATEFUN_SIM_SEED=N` replays it alone, `STATEFUN_SIM_SEEDS=N` runs more.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use statefun_core::{
    Address, Context, Envelope, FunctionError, FunctionSpec, Outcome, Output, Record, Registry, RequestKey, Retention,
    Routing, Shard, ShardId, TypeName, TypedValue, UnixMillis, ValueSpec, Waiter, Want,
};
use statefun_storage::format::{BatchBuilder, SealedBatch};
use statefun_storage::limits::{batch_bytes_max, segment_bytes_min};
use statefun_storage::{codec, Lsn, Recovery};

const SHARDS: u16 = 2;
const COUNTERS: u64 = 6;
const SECTOR: usize = 512;
const SEGMENT: usize = segment_bytes_min as usize;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^ (x >> 33)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One shard's disk: what is durable, and the writes not yet synced.
#[derive(Default)]
struct Disk {
    segments: BTreeMap<u32, Vec<u8>>,
    pending: Vec<(u32, usize, Vec<u8>)>,
}

impl Disk {
    fn write(&mut self, segment: u32, offset: usize, bytes: Vec<u8>) {
        self.segments.entry(segment).or_insert_with(|| vec![0; SEGMENT]);
        self.pending.push((segment, offset, bytes));
    }

    fn sync(&mut self) {
        for (segment, offset, bytes) in self.pending.drain(..) {
            let target = self.segments.get_mut(&segment).unwrap();
            target[offset..offset + bytes.len()].copy_from_slice(&bytes);
        }
    }

    /// The machine stops: each sector of an unsynced write reached the disk, or not.
    fn crash(&mut self, rng: &mut Rng) {
        for (segment, offset, bytes) in std::mem::take(&mut self.pending) {
            let target = self.segments.get_mut(&segment).unwrap();
            for at in (0..bytes.len()).step_by(SECTOR) {
                if rng.chance(50) {
                    target[offset + at..offset + at + SECTOR].copy_from_slice(&bytes[at..at + SECTOR]);
                }
            }
        }
    }
}

const COUNT: ValueSpec<i64> = ValueSpec::new("count");

fn typename(text: &str) -> TypeName {
    TypeName::parse(text).unwrap()
}

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    let counter = |context: &mut Context<'_>, _: &TypedValue| {
        let count = context.get(&COUNT)?.unwrap_or(0) + 1;
        context.set(&COUNT, &count)?;
        context.reply(TypedValue::new(typename("sim/count"), count.to_string()))
    };
    registry.register(FunctionSpec::new(typename("sim/counter"), counter).with_value(&COUNT)).unwrap();
    // `COUNTER DELAY_MS`: sends an increment to the counter after the delay.
    let forward = |context: &mut Context<'_>, message: &TypedValue| {
        let text = message.as_text()?;
        let (counter, delay) = text.split_once(' ').ok_or_else(|| FunctionError::new("bad forward"))?;
        let target = Address::new(typename("sim/counter"), counter)?;
        let one = TypedValue::new(typename("sim/one"), "1");
        context.send_after(Duration::from_millis(delay.parse().unwrap()), target, one, None)?;
        context.reply(TypedValue::new(typename("sim/ok"), "ok"))
    };
    registry.register(FunctionSpec::new(typename("sim/forward"), forward)).unwrap();
    registry.register_endpoint(statefun_core::requests::request_type()).unwrap();
    Arc::new(registry)
}

/// A client's increment.
struct Request {
    key: String,
    target: Address,
    value: TypedValue,
    counter: u64,
    answered: bool,
}

/// What travels between shards; lost when the machine stops.
enum Message {
    Deliver { from: ShardId, seq: u64, envelope: Envelope },
    Ack { from: ShardId, seq: u64 },
}

struct Node {
    core: Shard,
    builder: BatchBuilder,
    /// Records appended and not yet durable.
    unsynced: VecDeque<Record>,
    /// The batch written and not yet synced.
    in_flight: Option<SealedBatch>,
    segment: u32,
    offset: usize,
}

impl Node {
    /// Recovers a shard from its disk, as `storage::open` does.
    fn recover(id: ShardId, disk: &mut Disk, registry: &Arc<Registry>) -> Node {
        let mut recovery = Recovery::new(Path::new("sim"), Lsn(0));
        for (index, bytes) in &disk.segments {
            recovery.segment(*index, bytes).unwrap_or_else(|error| panic!("{id}: {error}"));
        }
        let plan = recovery.finish();
        if let Some((segment, offset, _)) = &plan.torn {
            let bytes = disk.segments.get_mut(segment).unwrap();
            let end = (*offset as usize + batch_bytes_max as usize).min(bytes.len());
            bytes[*offset as usize..end].fill(0);
        }
        let mut core = Shard::new(id, Routing::new(SHARDS), registry.clone(), Retention::default());
        for record in &plan.records {
            core.replay(record);
        }
        core.recovered();
        let (segment, offset) = plan.tail.map_or((0, 0), |(segment, offset)| (segment, offset as usize));
        Node {
            core,
            builder: BatchBuilder::new(plan.next_lsn),
            unsynced: VecDeque::new(),
            in_flight: None,
            segment,
            offset,
        }
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    registry: Arc<Registry>,
    disks: Vec<Disk>,
    nodes: Vec<Node>,
    mesh: Vec<VecDeque<Message>>,
    requests: Vec<Request>,
    /// Which request each waiter number stands for.
    waiters: BTreeMap<u64, usize>,
    waiter_next: u64,
    crashes: u32,
    torn: u32,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let registry = registry();
        let mut disks: Vec<Disk> = (0..SHARDS).map(|_| Disk::default()).collect();
        let nodes = (0..SHARDS).map(|id| Node::recover(ShardId(id), &mut disks[usize::from(id)], &registry)).collect();
        Sim {
            rng: Rng(seed),
            now: 1_000,
            registry,
            disks,
            nodes,
            mesh: (0..SHARDS).map(|_| VecDeque::new()).collect(),
            requests: Vec::new(),
            waiters: BTreeMap::new(),
            waiter_next: 0,
            crashes: 0,
            torn: 0,
        }
    }

    fn owner(address: &Address) -> usize {
        usize::from(Routing::new(SHARDS).shard_of(address).0)
    }

    fn new_request(&mut self) {
        let counter = self.rng.below(COUNTERS);
        let n = self.requests.len();
        let (target, body) = if self.rng.chance(50) {
            (Address::new(typename("sim/counter"), &format!("c{counter}")).unwrap(), "1".to_string())
        } else {
            let forwarder = Address::new(typename("sim/forward"), &format!("f{}", self.rng.below(5))).unwrap();
            (forwarder, format!("c{counter} {}", self.rng.below(20)))
        };
        let value = TypedValue::new(typename("sim/text"), body);
        self.requests.push(Request { key: format!("r{n}"), target, value, counter, answered: false });
        self.send_request(n);
    }

    fn send_request(&mut self, index: usize) {
        let request = &self.requests[index];
        let waiter = Waiter { shard: ShardId(0), seq: self.waiter_next };
        self.waiters.insert(self.waiter_next, index);
        self.waiter_next += 1;
        let owner = Self::owner(&request.target);
        let key = RequestKey { key: request.key.as_str().into(), keyed: true };
        let (target, value) = (request.target.clone(), request.value.clone());
        // A refusal (a full mailbox) leaves the request unanswered: it is sent again later.
        let _ = self.nodes[owner].core.request(UnixMillis(self.now), target, value, key, Some((waiter, Want::Answer)));
        self.route_outputs(owner);
    }

    fn route_outputs(&mut self, shard: usize) {
        while let Some(output) = self.nodes[shard].core.poll_output() {
            let from = ShardId(shard as u16);
            match output {
                Output::Transmit { peer, seq, envelope } => {
                    self.mesh[usize::from(peer.0)].push_back(Message::Deliver { from, seq, envelope })
                }
                Output::Ack { peer, seq } => self.mesh[usize::from(peer.0)].push_back(Message::Ack { from, seq }),
                Output::Answer { waiter, outcome } => {
                    let index = self.waiters[&waiter.seq];
                    match outcome {
                        Outcome::Reply(_) => self.requests[index].answered = true,
                        other => panic!("request {index} ended with {other:?}"),
                    }
                }
                Output::Egress(_) => {}
            }
        }
    }

    fn run(&mut self, shard: usize) {
        let now = UnixMillis(self.now);
        let node = &mut self.nodes[shard];
        node.core.fire_timers(now);
        let budget = 1 + self.rng.below(8) as usize;
        node.core.run(now, budget);
        while let Some(record) = node.core.poll_record() {
            let payload = codec::encode(&record).unwrap();
            node.builder.push(&payload);
            node.unsynced.push_back(record);
        }
        self.route_outputs(shard);
    }

    fn write(&mut self, shard: usize) {
        let node = &mut self.nodes[shard];
        if node.in_flight.is_some() || node.builder.is_empty() {
            return;
        }
        let batch = node.builder.seal();
        if node.offset + batch.bytes.len() > SEGMENT {
            node.segment += 1;
            node.offset = 0;
            self.disks[shard].segments.insert(node.segment, vec![0; SEGMENT]);
        }
        self.disks[shard].write(node.segment, node.offset, batch.bytes.clone());
        node.offset += batch.bytes.len();
        node.in_flight = Some(batch);
    }

    fn sync(&mut self, shard: usize) {
        let Some(batch) = self.nodes[shard].in_flight.take() else { return };
        self.disks[shard].sync();
        let node = &mut self.nodes[shard];
        for _ in 0..batch.records {
            let record = node.unsynced.pop_front().unwrap();
            node.core.released(&record);
        }
        self.route_outputs(shard);
    }

    fn deliver(&mut self, shard: usize) {
        let Some(message) = self.mesh[shard].pop_front() else { return };
        let now = UnixMillis(self.now);
        match message {
            Message::Deliver { from, seq, envelope } => self.nodes[shard].core.receive(now, from, seq, envelope),
            Message::Ack { from, seq } => self.nodes[shard].core.acked(now, from, seq),
        }
        self.route_outputs(shard);
    }

    fn crash(&mut self) {
        self.crashes += 1;
        for shard in 0..usize::from(SHARDS) {
            if !self.disks[shard].pending.is_empty() {
                self.torn += 1;
            }
            self.disks[shard].crash(&mut self.rng);
        }
        self.mesh.iter_mut().for_each(VecDeque::clear);
        self.waiters.clear();
        self.nodes = (0..SHARDS)
            .map(|id| Node::recover(ShardId(id), &mut self.disks[usize::from(id)], &self.registry))
            .collect();
        // Clients send every unanswered request again, with its key.
        for index in 0..self.requests.len() {
            if !self.requests[index].answered {
                self.send_request(index);
            }
        }
    }

    fn step(&mut self, crashes: bool) {
        self.now += self.rng.below(3);
        let shard = self.rng.below(u64::from(SHARDS)) as usize;
        match self.rng.below(100) {
            0..=14 => self.new_request(),
            15..=44 => self.run(shard),
            45..=59 => self.write(shard),
            60..=74 => self.sync(shard),
            75..=97 => self.deliver(shard),
            _ if crashes => self.crash(),
            _ => {}
        }
    }

    /// Runs without crashes until every request is answered and nothing moves.
    fn settle(&mut self) {
        for round in 0..10_000 {
            let unanswered: Vec<usize> = (0..self.requests.len()).filter(|i| !self.requests[*i].answered).collect();
            if round % 50 == 0 {
                for index in unanswered.iter().copied() {
                    self.send_request(index);
                }
            }
            self.now += 5;
            for shard in 0..usize::from(SHARDS) {
                self.run(shard);
                self.write(shard);
                self.sync(shard);
                while !self.mesh[shard].is_empty() {
                    self.deliver(shard);
                }
            }
            let quiet = self.mesh.iter().all(VecDeque::is_empty)
                && self
                    .nodes
                    .iter()
                    .all(|node| node.builder.is_empty() && node.in_flight.is_none() && !node.core.has_ready())
                && self.nodes.iter().all(|node| node.core.pending_timers() == 0);
            if unanswered.is_empty() && quiet {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    fn counts(&self) -> Vec<i64> {
        (0..COUNTERS)
            .map(|counter| {
                let address = Address::new(typename("sim/counter"), &format!("c{counter}")).unwrap();
                let value = self.nodes[Self::owner(&address)].core.value(&address, "count");
                value.map_or(0, |value| value.decode::<i64>().unwrap())
            })
            .collect()
    }
}

fn simulate(seed: u64, steps: u32) -> (u32, u32, usize) {
    let mut sim = Sim::new(seed);
    for _ in 0..steps {
        sim.step(true);
    }
    sim.settle();
    let expected: Vec<i64> = (0..COUNTERS)
        .map(|counter| sim.requests.iter().filter(|request| request.counter == counter).count() as i64)
        .collect();
    assert_eq!(sim.counts(), expected, "counters after settling");
    // Every request once more, answered or not: retries apply nothing.
    for index in 0..sim.requests.len() {
        sim.requests[index].answered = false;
        sim.send_request(index);
    }
    sim.settle();
    assert_eq!(sim.counts(), expected, "counters after resending every request");
    // And after one more stop, the same from the disk alone.
    sim.crash();
    sim.settle();
    assert_eq!(sim.counts(), expected, "counters after a last recovery");
    (sim.crashes, sim.torn, sim.requests.len())
}

#[test]
fn nothing_acknowledged_is_lost_and_nothing_applies_twice() {
    let seeds: Vec<u64> = match std::env::var("STATEFUN_SIM_SEED") {
        Ok(seed) => vec![seed.parse().unwrap()],
        Err(_) => {
            let count = std::env::var("STATEFUN_SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(30);
            (1..=count).collect()
        }
    };
    let (mut crashes, mut torn, mut requests) = (0, 0, 0);
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| simulate(seed, 3_000));
        match outcome {
            Ok((c, t, r)) => {
                crashes += c;
                torn += t;
                requests += r;
            }
            Err(panic) => {
                eprintln!("simulation failed with seed {seed}: replay with STATEFUN_SIM_SEED={seed}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    eprintln!("simulation: {requests} requests, {crashes} crashes, {torn} with unsynced writes torn");
    assert!(crashes > 0 && torn > 0, "the simulation never tore a write: it tested nothing");
}
