//! One shard of a node, on its own pinned executor: the core state machine, its mailboxes
//! and timers, the links to the other shards, and the ingress requests waiting for answers.
//!
//! The life of a request here: the HTTP exchange registers itself and hands the request to
//! the owner of its target ([`ShardNode::ingress`], [`ShardNode::submit`]); the core loop
//! ([`ShardNode::run`]) invokes functions, commits their records, and lets out what the
//! committed records released ([`ShardNode::let_out`]): messages to peers, acknowledgements,
//! the answers to exchanges, which go back to the shard holding them.
//!
//! **Only this shard's executor touches its core**: everything here is `!Send`, shared with
//! `Rc`, and reached from other shards only through the mesh channels.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;
use statefun_core::{
    limits as core_limits, Address, Envelope, Error, Outcome, Output, Record, Registry, RequestKey, Retention, Routing,
    ShardId, TypedValue, UnixMillis, Waiter, Want,
};

use statefun_storage::{Batcher, Lsn, SealedSegment, Segments};

use crate::egress::EgressLog;
use crate::limits;
use crate::metrics::{Metrics, ShardMetrics};
use crate::playground::PlaygroundTopics;
use crate::remote::Remote;
use crate::rt::{self, Broadcast, Signal};
use crate::snapshots::{Restored, Snapshots};

/// What shards say to each other.
#[derive(Debug)]
pub enum MeshMessage {
    /// An ingress request for a target the receiving shard owns.
    Request { target: Address, value: TypedValue, request: RequestKey, waiter: Waiter, want: Want },
    /// The `seq`-th message of the sender's link to the receiver.
    Deliver { from: ShardId, seq: u64, envelope: Envelope },
    /// The receiver's messages to the sender are committed up to `seq`.
    Ack { from: ShardId, seq: u64 },
    /// The outcome of one of the receiving shard's ingress exchanges.
    Answer { seq: u64, outcome: Outcome },
    /// An operator asked parked remote addresses to try again now.
    RetryParked,
}

/// Messages for one peer shard, drained into its channel by a task of their own, so that a
/// slow peer never stalls this shard's core loop.
#[derive(Debug, Default)]
struct Outbox {
    queue: RefCell<VecDeque<MeshMessage>>,
    signal: Rc<Signal>,
}

/// The log of a shard in `fsync` or `interval` durability: records wait here from the
/// moment they are made until they are durable.
#[derive(Debug)]
pub struct Journal {
    batcher: RefCell<Batcher>,
    /// Records appended and not yet released, in log order.
    unsynced: RefCell<VecDeque<Record>>,
    /// How many of `unsynced` the committer has made durable.
    durable: Cell<usize>,
    /// Wakes the committer.
    pending: Rc<Signal>,
    /// `interval` durability: at most one sync per this period.
    interval: Option<Duration>,
    /// The last record on disk, synced.
    durable_lsn: Cell<Lsn>,
    /// Notified whenever `durable_lsn` moves.
    synced: Rc<Broadcast>,
    /// A checkpoint holds the records up to here: the committer removes the segments below.
    checkpointed: Cell<Lsn>,
    /// Log bytes written in all, and when the last checkpoint was stored.
    written_bytes: Cell<u64>,
    written_bytes_at_checkpoint: Cell<u64>,
    /// The segments the log has moved past.
    sealed: RefCell<Vec<SealedSegment>>,
}

impl Journal {
    pub fn new(batcher: Batcher, interval: Option<Duration>) -> Journal {
        Journal {
            batcher: RefCell::new(batcher),
            unsynced: RefCell::default(),
            durable: Cell::new(0),
            pending: Rc::default(),
            interval,
            durable_lsn: Cell::new(Lsn(0)),
            synced: Rc::default(),
            checkpointed: Cell::new(Lsn(0)),
            written_bytes: Cell::new(0),
            written_bytes_at_checkpoint: Cell::new(0),
            sealed: RefCell::default(),
        }
    }
}

/// One shard's node-side state. See the module documentation.
#[derive(Debug)]
pub struct ShardNode {
    pub id: ShardId,
    pub routing: Routing,
    pub registry: Arc<Registry>,
    retention: Retention,
    metrics: Arc<Metrics>,
    pub(crate) core: RefCell<statefun_core::Shard>,
    /// Remote functions: endpoints, batches in flight, parked addresses.
    pub(crate) remote: Remote,
    /// The playground egress, when the module has one.
    playground: Option<Arc<PlaygroundTopics>>,
    /// Checkpoints to the blob store; `None` in `memory` durability.
    pub(crate) snapshots: Option<Snapshots>,
    /// `None` in `memory` durability.
    journal: Option<Journal>,
    /// Why the log failed; from then on the shard refuses work.
    poisoned: RefCell<Option<String>>,
    /// Committed egress records, for subscribers.
    pub egress: RefCell<EgressLog>,
    work: Rc<Signal>,
    outboxes: Vec<Option<Outbox>>,
    /// HTTP exchanges of this shard waiting for an outcome, by number.
    exchanges: RefCell<HashMap<u64, oneshot::Sender<Outcome>>>,
    exchange_next: Cell<u64>,
    /// Makes up request keys that no earlier run of the node used.
    boot: u64,
}

/// What a shard serves besides its native functions.
#[derive(Debug, Default)]
pub struct Services {
    pub remote: Remote,
    pub playground: Option<Arc<PlaygroundTopics>>,
    pub snapshots: Option<Snapshots>,
}

/// The wall clock, as the core wants it.
pub fn now() -> UnixMillis {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    UnixMillis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

impl ShardNode {
    pub fn new(
        id: ShardId,
        routing: Routing,
        registry: Arc<Registry>,
        retention: Retention,
        journal: Option<Journal>,
        metrics: Arc<Metrics>,
        services: Services,
    ) -> Rc<ShardNode> {
        let outboxes = (0..routing.shards()).map(|peer| (peer != id.0).then(Outbox::default)).collect();
        let boot = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as u64;
        Rc::new(ShardNode {
            id,
            routing,
            core: RefCell::new(statefun_core::Shard::new(id, routing, registry.clone(), retention)),
            retention,
            registry,
            metrics,
            remote: services.remote,
            playground: services.playground,
            snapshots: services.snapshots,
            journal,
            poisoned: RefCell::default(),
            egress: RefCell::default(),
            work: Rc::default(),
            outboxes,
            exchanges: RefCell::default(),
            exchange_next: Cell::new(0),
            boot,
        })
    }

    /// Every shard's counters in Prometheus text.
    pub fn metrics_text(&self) -> String {
        let mut text = self.metrics.render();
        text.push_str("# HELP statefun_remote_parked Remote addresses parked after their call budget.\n");
        text.push_str("# TYPE statefun_remote_parked gauge\n");
        text.push_str(&format!("statefun_remote_parked {}\n", self.remote.parked().len()));
        text
    }

    pub(crate) fn shard_metrics(&self) -> &ShardMetrics {
        &self.metrics.shards[usize::from(self.id.0)]
    }

    /// Wakes the core loop: there are records to commit or work to start.
    pub(crate) fn wake(&self) {
        self.work.notify();
    }

    /// The LSN of the last record appended to the log.
    pub(crate) fn appended_lsn(&self) -> Lsn {
        self.journal.as_ref().map_or(Lsn(0), |journal| journal.batcher.borrow().last_lsn())
    }

    /// Waits until the log is durable up to `lsn`; fails if the log fails first.
    pub(crate) async fn wait_durable(&self, lsn: Lsn) -> Result<(), String> {
        let Some(journal) = &self.journal else { return Ok(()) };
        while journal.durable_lsn.get() < lsn {
            if let Some(why) = self.poisoned.borrow().clone() {
                return Err(format!("{}: the log failed: {why}", self.id));
            }
            let synced = journal.synced.wait();
            futures_lite::future::or(synced, rt::sleep(Duration::from_millis(100))).await;
        }
        Ok(())
    }

    /// A checkpoint holding the records up to `lsn` is stored: the segments below it may go.
    pub(crate) fn checkpoint_durable(&self, lsn: Lsn) {
        if let Some(journal) = &self.journal {
            journal.checkpointed.set(lsn);
            journal.written_bytes_at_checkpoint.set(journal.written_bytes.get());
            journal.pending.notify();
        }
    }

    /// Log bytes written since the last checkpoint.
    pub(crate) fn log_bytes_since_checkpoint(&self) -> u64 {
        self.journal
            .as_ref()
            .map_or(0, |journal| journal.written_bytes.get().saturating_sub(journal.written_bytes_at_checkpoint.get()))
    }

    /// The segments the log has moved past.
    pub(crate) fn sealed_segments(&self) -> Vec<SealedSegment> {
        self.journal.as_ref().map_or(Vec::new(), |journal| journal.sealed.borrow().clone())
    }

    /// Asks every shard's parked remote addresses to try again now.
    pub fn retry_parked(&self) {
        for peer in 0..self.routing.shards() {
            if peer != self.id.0 {
                self.push(ShardId(peer), MeshMessage::RetryParked);
            }
        }
        self.remote.retry_now();
    }

    /// Rebuilds the shard from its checkpoint, if it has one, and the committed records
    /// after it, before it starts. Fails if the checkpoint is an older one than the newest
    /// (which did not load) and the log does not reach the newest's LSN.
    pub fn recover(&self, restored: Option<Restored>, records: &[Record], next_lsn: Lsn) -> Result<(), String> {
        self.egress.borrow_mut().recover(records);
        let mut core = self.core.borrow_mut();
        if let Some(restored) = restored {
            if let Some((newest, why)) = &restored.must_reach {
                if next_lsn.0 <= *newest {
                    return Err(format!(
                        "{}: the newest checkpoint cannot be used ({why}), and the log does not reach its LSN {newest} \
                         from generation {}'s: restore the blob store or the data directory",
                        self.id, restored.manifest.generation
                    ));
                }
            }
            *core = statefun_core::Shard::restore(
                restored.meta,
                restored.states,
                self.routing,
                self.registry.clone(),
                self.retention,
            );
        }
        if self.snapshots.is_some() {
            core.track_changes();
        }
        for record in records {
            core.replay(record);
        }
        core.recovered();
        if let Some(journal) = &self.journal {
            journal.durable_lsn.set(Lsn(next_lsn.0 - 1));
        }
        Ok(())
    }

    /// Starts the tasks of this shard: the core loop, the committer of its log, and a
    /// sender and a receiver per peer.
    pub fn start(
        self: &Rc<Self>,
        links: Vec<(ShardId, rt::Sender<MeshMessage>, rt::Receiver<MeshMessage>)>,
        segments: Option<Segments>,
    ) {
        if let Some(segments) = segments {
            let node = self.clone();
            rt::spawn_local(async move { node.committer(segments).await }).detach();
        }
        if self.snapshots.is_some() {
            rt::spawn_local(self.clone().checkpointer()).detach();
            rt::spawn_local(self.clone().segment_uploader()).detach();
        }
        for (peer, sender, receiver) in links {
            let node = self.clone();
            rt::spawn_local(async move { node.drain_outbox(peer, sender).await }).detach();
            let node = self.clone();
            rt::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
                    node.handle(message);
                }
            })
            .detach();
        }
        let node = self.clone();
        rt::spawn_local(async move { node.run().await }).detach();
    }

    /// The core loop: fire due timers, run ready invocations, commit their records and let
    /// out what committed records released; sleep until there is new work or a timer is due.
    async fn run(self: Rc<Self>) {
        let mut ticked_at = UnixMillis(0);
        loop {
            let now = now();
            if self.accepts_work() {
                let ran = {
                    let mut core = self.core.borrow_mut();
                    if now.0 >= ticked_at.0 + 1_000 {
                        core.tick(now);
                        ticked_at = now;
                    }
                    core.fire_timers(now);
                    core.run(now, core_limits::invocations_per_turn_max)
                };
                ShardMetrics::add(&self.shard_metrics().invocations, ran as u64);
                self.dispatch_remote();
            }
            self.commit();
            self.let_out();
            if self.core.borrow().has_ready() && self.accepts_work() {
                // A full turn: let the network tasks in before the next one.
                futures_lite::future::yield_now().await;
                continue;
            }
            let next_timer_at = self.core.borrow().next_timer_at();
            match next_timer_at {
                Some(at) => futures_lite::future::or(self.work.wait(), rt::sleep(now.until(at))).await,
                None => self.work.wait().await,
            }
        }
    }

    /// Whether the loop may make new records: not after the log failed, and not while the
    /// log is behind by more than `unsynced_bytes_max` (the pushback of a slow disk).
    pub(crate) fn accepts_work(&self) -> bool {
        if self.poisoned.borrow().is_some() {
            return false;
        }
        self.journal
            .as_ref()
            .is_none_or(|journal| journal.batcher.borrow().pending_bytes() <= limits::unsynced_bytes_max)
    }

    /// Moves the core's new records into the log and releases the ones the log made durable.
    /// With `--durability memory` a record counts as committed as soon as it exists.
    pub(crate) fn commit(&self) {
        let mut core = self.core.borrow_mut();
        let Some(journal) = &self.journal else {
            while let Some(record) = core.poll_record() {
                core.released(&record);
            }
            return;
        };
        let mut appended = false;
        while let Some(record) = core.poll_record() {
            if let Err(error) = journal.batcher.borrow_mut().append(&record) {
                // The record is applied in memory but can never be durable: stop here.
                drop(core);
                return self.poison(&error.to_string());
            }
            journal.unsynced.borrow_mut().push_back(record);
            appended = true;
        }
        if appended {
            journal.pending.notify();
        }
        let durable = journal.durable.replace(0);
        let mut unsynced = journal.unsynced.borrow_mut();
        for record in unsynced.drain(..durable) {
            core.released(&record);
        }
    }

    /// The log failed: refuse work from now on, and never let out anything it did not make
    /// durable.
    fn poison(&self, why: &str) {
        if self.poisoned.borrow().is_none() {
            tracing::error!("{}: the log failed; this shard refuses new work until restarted: {why}", self.id);
            *self.poisoned.borrow_mut() = Some(why.to_string());
            ShardMetrics::add(&self.shard_metrics().poisoned, 1);
        }
    }

    /// Writes the log's batches, one write and one sync at a time, while the next batch
    /// fills; between batches, prepares the next segment.
    async fn committer(self: Rc<Self>, mut segments: Segments) {
        let Some(journal) = &self.journal else { return };
        let mut synced_at = std::time::Instant::now();
        loop {
            if self.poisoned.borrow().is_some() {
                return;
            }
            let checkpointed = journal.checkpointed.get();
            if checkpointed > Lsn(0) {
                journal.checkpointed.set(Lsn(0));
                match segments.remove_below(checkpointed) {
                    Ok(removed) if !removed.is_empty() => {
                        tracing::info!(
                            "{}: removed {} log segments below checkpoint LSN {}",
                            self.id,
                            removed.len(),
                            checkpointed.0
                        );
                        *journal.sealed.borrow_mut() = segments.sealed();
                    }
                    Ok(_) => {}
                    Err(error) => return self.poison(&error.to_string()),
                }
            }
            if !journal.batcher.borrow().has_records() {
                match segments.prepare_spare().await {
                    Ok(true) => continue,
                    Ok(false) => journal.pending.wait().await,
                    Err(error) => return self.poison(&error.to_string()),
                }
                continue;
            }
            if let Some(interval) = journal.interval {
                let wait = interval.saturating_sub(synced_at.elapsed());
                if !wait.is_zero() {
                    rt::sleep(wait).await;
                }
            }
            let batch = journal.batcher.borrow_mut().next_batch();
            let Some(batch) = batch else { continue };
            match segments.write(&batch).await {
                Ok(()) => {
                    synced_at = std::time::Instant::now();
                    journal.durable.set(journal.durable.get() + batch.records as usize);
                    journal.durable_lsn.set(Lsn(batch.first_lsn.0 + u64::from(batch.records) - 1));
                    journal.written_bytes.set(journal.written_bytes.get() + batch.bytes.len() as u64);
                    journal.synced.notify_all();
                    if segments.count() != journal.sealed.borrow().len() + 1 {
                        *journal.sealed.borrow_mut() = segments.sealed();
                        if let Some(snapshots) = &self.snapshots {
                            snapshots.segment_sealed();
                        }
                    }
                    let metrics = self.shard_metrics();
                    ShardMetrics::add(&metrics.log_batches, 1);
                    ShardMetrics::add(&metrics.log_records, u64::from(batch.records));
                    ShardMetrics::add(&metrics.log_bytes, batch.bytes.len() as u64);
                    self.work.notify();
                }
                Err(error) => return self.poison(&error.to_string()),
            }
        }
    }

    /// Lets out what committed records released: messages to peers, acknowledgements,
    /// answers to ingress exchanges, egress.
    fn let_out(&self) {
        loop {
            // The borrow ends before the output is handled: answering may reach back in.
            let output = self.core.borrow_mut().poll_output();
            let Some(output) = output else { return };
            match output {
                Output::Transmit { peer, seq, envelope } => {
                    self.push(peer, MeshMessage::Deliver { from: self.id, seq, envelope });
                }
                Output::Ack { peer, seq } => self.push(peer, MeshMessage::Ack { from: self.id, seq }),
                Output::Answer { waiter, outcome } => self.answer(waiter, outcome),
                Output::Egress(egress) => {
                    ShardMetrics::add(&self.shard_metrics().egress, 1);
                    if let Some(playground) = &self.playground {
                        if let Err(why) = playground.offer(&egress) {
                            tracing::warn!("{}: a playground egress record is dropped: {why}", self.id);
                        }
                    }
                    self.egress.borrow_mut().push(egress);
                }
            }
        }
    }

    fn push(&self, peer: ShardId, message: MeshMessage) {
        let outbox = self.outboxes[usize::from(peer.0)].as_ref();
        let outbox = outbox.unwrap_or_else(|| panic!("{} has no outbox to {peer}", self.id));
        outbox.queue.borrow_mut().push_back(message);
        outbox.signal.notify();
    }

    async fn drain_outbox(self: Rc<Self>, peer: ShardId, sender: rt::Sender<MeshMessage>) {
        let outbox = self.outboxes[usize::from(peer.0)].as_ref();
        let outbox = outbox.unwrap_or_else(|| panic!("{} has no outbox to {peer}", self.id));
        loop {
            let next = outbox.queue.borrow_mut().pop_front();
            match next {
                Some(message) => {
                    if sender.send(message).await.is_err() {
                        tracing::error!("{}: the channel to {peer} closed", self.id);
                        return;
                    }
                }
                None => outbox.signal.wait().await,
            }
        }
    }

    fn handle(&self, message: MeshMessage) {
        if self.poisoned.borrow().is_some() {
            // Nothing can be committed: peers keep their messages until this shard restarts,
            // and requests are refused.
            if let MeshMessage::Request { waiter, .. } = message {
                self.refuse_poisoned(waiter);
            } else if let MeshMessage::Answer { seq, outcome } = message {
                self.settle(seq, outcome);
            }
            return;
        }
        match message {
            MeshMessage::Request { target, value, request, waiter, want } => {
                self.submit(target, value, request, waiter, want);
            }
            MeshMessage::Deliver { from, seq, envelope } => {
                self.core.borrow_mut().receive(now(), from, seq, envelope);
                self.work.notify();
            }
            MeshMessage::Ack { from, seq } => {
                self.core.borrow_mut().acked(now(), from, seq);
                self.work.notify();
            }
            MeshMessage::Answer { seq, outcome } => self.settle(seq, outcome),
            MeshMessage::RetryParked => self.remote.retry_now(),
        }
    }

    fn refuse_poisoned(&self, waiter: Waiter) {
        let why = self.poisoned.borrow().clone().unwrap_or_default();
        self.answer(waiter, Outcome::Refused(Error::Poisoned(format!("{}: {why}", self.id))));
    }

    /// Hands an ingress request to the core of this shard, which owns its target.
    fn submit(&self, target: Address, value: TypedValue, request: RequestKey, waiter: Waiter, want: Want) {
        if self.poisoned.borrow().is_some() {
            return self.refuse_poisoned(waiter);
        }
        let submitted = self.core.borrow_mut().request(now(), target, value, request, Some((waiter, want)));
        match submitted {
            Ok(()) => self.work.notify(),
            Err(error) => self.answer(waiter, Outcome::Refused(error)),
        }
    }

    fn answer(&self, waiter: Waiter, outcome: Outcome) {
        if waiter.shard == self.id {
            self.settle(waiter.seq, outcome);
        } else {
            self.push(waiter.shard, MeshMessage::Answer { seq: waiter.seq, outcome });
        }
    }

    /// Hands an outcome to the exchange waiting on this shard; one for an exchange that is
    /// gone (timed out, client left) is dropped with a note.
    fn settle(&self, seq: u64, outcome: Outcome) {
        match self.exchanges.borrow_mut().remove(&seq) {
            // The receiver may have just been dropped; then nobody waits.
            Some(sender) => drop(sender.send(outcome)),
            None => tracing::debug!("{}: outcome for exchange {seq}, which is gone", self.id),
        }
    }

    /// Sends an ingress message to `target` and returns the exchange that waits for its
    /// outcome: its admission (`Want::Admission`) or the function's answer (`Want::Answer`).
    /// With an idempotency `key`, a retry is answered with the first outcome.
    pub fn ingress(self: &Rc<Self>, target: Address, value: TypedValue, want: Want, key: Option<&str>) -> Exchange {
        let seq = self.exchange_next.get();
        self.exchange_next.set(seq + 1);
        let (sender, receiver) = oneshot::channel();
        self.exchanges.borrow_mut().insert(seq, sender);
        let waiter = Waiter { shard: self.id, seq };
        let request = match key {
            Some(key) => RequestKey { key: key.into(), keyed: true },
            None => RequestKey { key: format!("{}-{}-{seq}", self.boot, self.id.0).into(), keyed: false },
        };
        let owner = self.routing.shard_of(&target);
        if owner == self.id {
            self.submit(target, value, request, waiter, want);
        } else {
            ShardMetrics::add(&self.shard_metrics().forwarded, 1);
            self.push(owner, MeshMessage::Request { target, value, request, waiter, want });
        }
        Exchange { node: self.clone(), seq, receiver }
    }
}

/// An ingress exchange waiting for its outcome. Dropping it forgets the exchange.
#[derive(Debug)]
pub struct Exchange {
    node: Rc<ShardNode>,
    seq: u64,
    receiver: oneshot::Receiver<Outcome>,
}

impl Exchange {
    pub async fn outcome(&mut self) -> Outcome {
        (&mut self.receiver).await.unwrap_or_else(|_| Outcome::Failed("the shard dropped the request".into()))
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.node.exchanges.borrow_mut().remove(&self.seq);
    }
}
