//! One shard of a node, on its own pinned executor: the core state machine, its mailboxes
//! and timers, the links to the other shards, and the ingress requests waiting for answers.
//!
//! The life of a message here: an ingress request or a peer hands an envelope to the owner
//! ([`ShardNode::submit`]); the core loop ([`ShardNode::run`]) invokes functions and takes
//! their records; each record is released ([`ShardNode::release`]): local messages go
//! straight into a mailbox, others into the outbox of the owning shard, replies to the shard
//! holding the request.
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
    limits as core_limits, Address, Envelope, Error, Record, Registry, Routing, ShardId, TypeName, TypedValue,
    UnixMillis,
};

use crate::rt::{self, Signal};

/// The function type of an ingress request's caller address. A function that replies to
/// its caller, or sends to this address, answers the request.
pub const REQUEST_NAMESPACE: &str = "statefun.ingress";
pub const REQUEST_TYPE: &str = "request";

/// Names an ingress request: the shard holding it and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub shard: ShardId,
    pub seq: u64,
}

impl Ticket {
    /// The caller address under which functions see this request: `statefun.ingress/request/{shard}.{seq}`.
    pub fn address(&self) -> Address {
        let function = request_type();
        let id = format!("{}.{}", self.shard.0, self.seq);
        Address::new(function, &id).unwrap_or_else(|error| panic!("request address {id}: {error}"))
    }

    pub fn from_address(address: &Address) -> Option<Ticket> {
        if address.function.namespace() != REQUEST_NAMESPACE || address.function.name() != REQUEST_TYPE {
            return None;
        }
        let (shard, seq) = address.id.split_once('.')?;
        Some(Ticket { shard: ShardId(shard.parse().ok()?), seq: seq.parse().ok()? })
    }
}

/// The type of ingress requests' addresses, registered as an endpoint by the node.
pub fn request_type() -> TypeName {
    TypeName::new(REQUEST_NAMESPACE, REQUEST_TYPE).unwrap_or_else(|error| panic!("request type: {error}"))
}

/// What happened to an ingress request.
#[derive(Debug)]
pub enum Outcome {
    /// The owner took the message into its mailbox.
    Admitted,
    /// The owner refused the message (unknown function, full mailbox).
    Refused(Error),
    /// The function sent this to the request's address.
    Reply(TypedValue),
    /// The invocation failed; the text says why.
    Failed(String),
}

/// What shards say to each other.
#[derive(Debug)]
pub enum MeshMessage {
    /// An ingress message for the receiving shard; the outcome goes back to the ticket.
    Ingress { envelope: Envelope, ticket: Ticket },
    /// A message released by a committed record.
    Deliver(Envelope),
    /// The outcome of one of the receiving shard's ingress requests.
    Outcome { seq: u64, outcome: Outcome },
}

/// Messages for one peer shard, drained into its channel by a task of their own, so that a
/// slow peer never stalls this shard's core loop.
#[derive(Debug, Default)]
struct Outbox {
    queue: RefCell<VecDeque<MeshMessage>>,
    signal: Rc<Signal>,
}

/// Where an ingress request's outcomes go.
#[derive(Debug)]
struct Pending {
    admitted: Option<oneshot::Sender<Outcome>>,
    answered: Option<oneshot::Sender<Outcome>>,
}

/// Counters of one shard, read by tests and (later) metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub invocations: Cell<u64>,
    /// Ingress requests whose owner was another shard.
    pub forwarded: Cell<u64>,
    pub egress: Cell<u64>,
}

/// One shard's node-side state. See the module documentation.
#[derive(Debug)]
pub struct ShardNode {
    pub id: ShardId,
    pub routing: Routing,
    pub registry: Arc<Registry>,
    pub stats: Stats,
    core: RefCell<statefun_core::Shard>,
    work: Rc<Signal>,
    outboxes: Vec<Option<Outbox>>,
    requests: RefCell<HashMap<u64, Pending>>,
    request_seq_next: Cell<u64>,
}

/// The wall clock, as the core wants it.
pub fn now() -> UnixMillis {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    UnixMillis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

impl ShardNode {
    pub fn new(id: ShardId, routing: Routing, registry: Arc<Registry>) -> Rc<ShardNode> {
        let outboxes = (0..routing.shards()).map(|peer| (peer != id.0).then(Outbox::default)).collect();
        Rc::new(ShardNode {
            id,
            routing,
            core: RefCell::new(statefun_core::Shard::new(id, routing, registry.clone())),
            registry,
            stats: Stats::default(),
            work: Rc::default(),
            outboxes,
            requests: RefCell::default(),
            request_seq_next: Cell::new(0),
        })
    }

    /// Starts the tasks of this shard: the core loop, and a sender and a receiver per peer.
    pub fn start(self: &Rc<Self>, links: Vec<(ShardId, rt::Sender<MeshMessage>, rt::Receiver<MeshMessage>)>) {
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

    /// The core loop: fire due timers, run ready invocations, release their records; sleep
    /// until there is new mail or the next timer is due.
    async fn run(self: Rc<Self>) {
        loop {
            let now = now();
            let ran = {
                let mut core = self.core.borrow_mut();
                core.fire_timers(now);
                core.run(now, core_limits::invocations_per_turn_max)
            };
            self.stats.invocations.set(self.stats.invocations.get() + ran as u64);
            loop {
                // The borrow ends before release: releasing may deliver into this core.
                let record = self.core.borrow_mut().poll_record();
                let Some(record) = record else { break };
                self.release(record);
            }
            if self.core.borrow().has_ready() {
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

    /// Lets a record's effects leave the shard. With `--durability memory` this happens as
    /// soon as the record exists; **with a log, only once the record is durable.**
    fn release(&self, record: Record) {
        if let Some(failure) = &record.failure {
            let text = format!("function {} failed: {failure}", record.address);
            match record.caller().and_then(Ticket::from_address) {
                Some(ticket) => self.answer(ticket, Outcome::Failed(text)),
                None => tracing::warn!("{text}"),
            }
        }
        for envelope in record.sends {
            self.route(envelope);
        }
        for egress in record.egress {
            self.stats.egress.set(self.stats.egress.get() + 1);
            tracing::debug!(egress = %egress.egress, bytes = egress.value.value.len(), "egress record");
        }
    }

    /// Sends a released message on its way: a reply to a request, into a local mailbox, or
    /// to the owning shard.
    fn route(&self, envelope: Envelope) {
        if let Some(ticket) = Ticket::from_address(&envelope.target) {
            return self.answer(ticket, Outcome::Reply(envelope.value));
        }
        let owner = self.routing.shard_of(&envelope.target);
        if owner == self.id {
            self.deliver(envelope);
        } else {
            self.push(owner, MeshMessage::Deliver(envelope));
        }
    }

    fn deliver(&self, envelope: Envelope) {
        let target = envelope.target.clone();
        match self.core.borrow_mut().deliver(envelope) {
            Ok(()) => self.work.notify(),
            // Senders check the registry, which all shards share: this is a programmer error.
            Err(error) => panic!("{}: message for {target} refused: {error}", self.id),
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
        match message {
            MeshMessage::Ingress { envelope, ticket } => self.submit(envelope, ticket),
            MeshMessage::Deliver(envelope) => self.deliver(envelope),
            MeshMessage::Outcome { seq, outcome } => self.settle(seq, outcome),
        }
    }

    /// Takes an ingress message into the mailbox of its target, which this shard owns, and
    /// tells the request whether it was admitted.
    pub fn submit(&self, envelope: Envelope, ticket: Ticket) {
        let admitted = self.core.borrow_mut().admit(envelope);
        let outcome = match admitted {
            Ok(()) => {
                self.work.notify();
                Outcome::Admitted
            }
            Err(error) => Outcome::Refused(error),
        };
        self.answer(ticket, outcome);
    }

    fn answer(&self, ticket: Ticket, outcome: Outcome) {
        if ticket.shard == self.id {
            self.settle(ticket.seq, outcome);
        } else {
            self.push(ticket.shard, MeshMessage::Outcome { seq: ticket.seq, outcome });
        }
    }

    /// Hands an outcome to the request waiting on this shard. The first reply wins; one for
    /// a request that is gone (timed out, client left) is dropped with a note.
    fn settle(&self, seq: u64, outcome: Outcome) {
        let mut requests = self.requests.borrow_mut();
        let Some(pending) = requests.get_mut(&seq) else {
            tracing::debug!("{}: outcome for request {seq}, which is gone", self.id);
            return;
        };
        let slot = match outcome {
            Outcome::Admitted | Outcome::Refused(_) => pending.admitted.take(),
            Outcome::Reply(_) | Outcome::Failed(_) => pending.answered.take(),
        };
        if let Some(slot) = slot {
            // The receiver may have just been dropped; then nobody waits.
            let _ = slot.send(outcome);
        }
    }

    /// Sends an ingress message to `target` and returns the request that tracks it. With
    /// `wants_answer`, the function sees the request as its caller and can reply.
    pub fn ingress(self: &Rc<Self>, target: Address, value: TypedValue, wants_answer: bool) -> Request {
        let seq = self.request_seq_next.get();
        self.request_seq_next.set(seq + 1);
        let ticket = Ticket { shard: self.id, seq };
        let (admitted_sender, admitted) = oneshot::channel();
        let (answered_sender, answered) = oneshot::channel();
        let pending = Pending { admitted: Some(admitted_sender), answered: wants_answer.then_some(answered_sender) };
        self.requests.borrow_mut().insert(seq, pending);
        let caller = wants_answer.then(|| ticket.address());
        let envelope = Envelope { target, caller, value };
        let owner = self.routing.shard_of(&envelope.target);
        if owner == self.id {
            self.submit(envelope, ticket);
        } else {
            self.stats.forwarded.set(self.stats.forwarded.get() + 1);
            self.push(owner, MeshMessage::Ingress { envelope, ticket });
        }
        Request { node: self.clone(), seq, admitted: Some(admitted), answered: Some(answered) }
    }
}

/// An ingress request in flight. Dropping it forgets the request.
#[derive(Debug)]
pub struct Request {
    node: Rc<ShardNode>,
    seq: u64,
    admitted: Option<oneshot::Receiver<Outcome>>,
    answered: Option<oneshot::Receiver<Outcome>>,
}

impl Request {
    /// Waits until the owner admitted or refused the message.
    pub async fn admitted(&mut self) -> Outcome {
        let receiver = self.admitted.take().unwrap_or_else(|| panic!("request {} awaited twice", self.seq));
        receiver.await.unwrap_or_else(|_| Outcome::Failed("the shard dropped the request".into()))
    }

    /// Waits for the function's reply (or failure).
    pub async fn answered(&mut self) -> Outcome {
        let receiver = self.answered.take().unwrap_or_else(|| panic!("request {} awaited twice", self.seq));
        receiver.await.unwrap_or_else(|_| Outcome::Failed("the request expects no answer".into()))
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.node.requests.borrow_mut().remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trips_through_its_address() {
        let ticket = Ticket { shard: ShardId(3), seq: 77 };
        assert_eq!(Ticket::from_address(&ticket.address()), Some(ticket));
        let other = Address::new(TypeName::parse("example/counter").unwrap(), "3.77").unwrap();
        assert_eq!(Ticket::from_address(&other), None);
    }
}
