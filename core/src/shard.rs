//! The shard's logic: mailboxes, state, delayed messages, links to other shards and the
//! ingress requests it hosts, as one state machine without I/O.
//!
//! Inputs: [`Shard::request`] (ingress), [`Shard::receive`] and [`Shard::acked`] (peer
//! shards), [`Shard::fire_timers`] and [`Shard::tick`] (time). Work: [`Shard::run`] for
//! native functions; [`Shard::begin_remote`], [`Shard::remote_request`] and
//! [`Shard::complete_remote`] for remote ones (see `remote.rs`). Outputs: [`Shard::poll_record`], the records to commit in order; once a record is
//! durable the driver calls [`Shard::released`], and [`Shard::poll_output`] yields what may
//! now leave the shard. [`Shard::replay`] rebuilds the state from committed records.
//!
//! Every change goes through [`Shard::apply`], live and on replay alike: what the log holds
//! is exactly what the shard did.
//!
//! **An address has at most one invocation in flight and takes its messages in arrival
//! order.** **A key group's state is touched only by the shard that owns it.** **Nothing a
//! record produced leaves the shard before the record is durable.**

mod remote;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::function::{Context, Effects, StoredValue};
use crate::record::{Entry, Invocation, MessageId, Route, Send};
use crate::requests::{self, Opened, Outcome, Requests, Waiter, Want};
use crate::{
    limits, Address, Egress, Envelope, Error, FunctionError, Mutation, Record, Registry, RequestKey, Routing, ShardId,
    TimerId, TimerOp, TypeName, TypedValue, UnixMillis, ValueSpecDescriptor,
};

pub use remote::{Batch, Completion};
pub use snapshot::{sort_run, AddressState, LinkState, ShardMeta, TimerState, ValueState};

/// The values of one address, sorted by name.
pub type Values = Vec<(Arc<str>, TypedValue)>;

/// One address's state and queue.
#[derive(Debug, Default)]
struct Instance {
    values: HashMap<Arc<str>, StoredValue>,
    mailbox: VecDeque<(MessageId, Envelope)>,
    /// An invocation of the mailbox's front message is in flight.
    busy: bool,
    /// The address is in the ready queue.
    ready: bool,
}

impl Instance {
    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.mailbox.is_empty() && !self.busy
    }
}

/// A delayed message waiting on the shard of its sender.
#[derive(Debug)]
struct Timer {
    owner: Address,
    token: Option<Arc<str>>,
    envelope: Envelope,
}

/// This shard's side of its link with one peer shard: exactly-once delivery by sequence
/// number, both ways.
#[derive(Debug, Default)]
struct Link {
    /// The sequence number of the next message to the peer.
    sent_next: u64,
    /// Messages to the peer that it has not acknowledged yet, by sequence number.
    outbox: BTreeMap<u64, Envelope>,
    /// The last message from the peer this shard committed: anything up to it is a duplicate.
    received_last: Option<u64>,
}

/// What may leave the shard now that the record that produced it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A message to a peer shard, the `seq`-th on this shard's link to it.
    Transmit {
        peer: ShardId,
        seq: u64,
        envelope: Envelope,
    },
    /// Tells a peer that its messages up to `seq` are committed here.
    Ack {
        peer: ShardId,
        seq: u64,
    },
    /// The outcome of an ingress request, for the exchange waiting on it.
    Answer {
        waiter: Waiter,
        outcome: Outcome,
    },
    Egress(Egress),
}

/// An invocation handed out by [`Shard::begin`], to be finished with [`Shard::complete`].
#[derive(Debug)]
pub struct Pending {
    pub at: UnixMillis,
    pub message: MessageId,
    pub envelope: Envelope,
    /// Values that expired before this invocation: absent to it, deleted by its record.
    expired: Vec<Arc<str>>,
}

/// How long a shard remembers ingress requests.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Requests with a client's idempotency key: retries within this window get the first
    /// outcome.
    pub keyed: Duration,
    /// Requests without one, kept only while someone may still wait for them.
    pub unkeyed: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keyed: Duration::from_secs(24 * 3600), unkeyed: Duration::from_secs(600) }
    }
}

/// The state machine of one shard. See the module documentation.
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    routing: Routing,
    registry: Arc<Registry>,
    instances: HashMap<Address, Instance>,
    /// Idle addresses of native functions with mail.
    ready: VecDeque<Address>,
    /// Idle addresses of remote functions with mail.
    ready_remote: VecDeque<Address>,
    /// The values each remote function type declared (the handshake), in declaration order.
    /// A type is here, perhaps with no values, once any request to it succeeded.
    remote_specs: HashMap<TypeName, Vec<ValueSpecDescriptor>>,
    /// Remote types not known yet with a first request in flight, and the addresses waiting
    /// for it to settle, so that a type's first burst makes one handshake, not one each.
    probes: HashMap<TypeName, Vec<Address>>,
    timers: BTreeMap<(UnixMillis, TimerId), Timer>,
    /// The keys of `timers` by the address that sent them.
    owned_timers: HashMap<Address, BTreeSet<(UnixMillis, TimerId)>>,
    /// Pending delayed messages by (sender, cancellation token).
    tokens: HashMap<Address, HashMap<Arc<str>, (UnixMillis, TimerId)>>,
    timer_next: u64,
    message_next: u64,
    links: Vec<Link>,
    requests: Requests,
    records: VecDeque<Record>,
    outputs: VecDeque<Output>,
    /// Whether records mark the addresses they change, for checkpoints.
    tracking: bool,
    /// Addresses changed since the last checkpoint began.
    dirty: snapshot::Dirty,
    capture: Option<snapshot::Capture>,
}

impl Shard {
    pub fn new(id: ShardId, routing: Routing, registry: Arc<Registry>, retention: Retention) -> Shard {
        assert!(id.0 < routing.shards());
        Shard {
            id,
            routing,
            registry,
            instances: HashMap::new(),
            ready: VecDeque::new(),
            ready_remote: VecDeque::new(),
            remote_specs: HashMap::new(),
            probes: HashMap::new(),
            timers: BTreeMap::new(),
            owned_timers: HashMap::new(),
            tokens: HashMap::new(),
            timer_next: 0,
            message_next: 0,
            links: (0..routing.shards()).map(|_| Link::default()).collect(),
            requests: Requests::new(retention.keyed, retention.unkeyed),
            records: VecDeque::new(),
            outputs: VecDeque::new(),
            tracking: false,
            dirty: snapshot::Dirty::default(),
            capture: None,
        }
    }

    /// From now on, records mark the addresses they change, so that checkpoints can capture
    /// what changed. Call before replay.
    pub fn track_changes(&mut self) {
        self.tracking = true;
    }

    /// The shard that hosts messages to `address`: its key group's owner, or for a request
    /// address the shard named in it.
    pub fn owner_of(&self, address: &Address) -> ShardId {
        match requests::parse_request_address(address) {
            Some((host, _)) => host,
            None => self.routing.shard_of(address),
        }
    }

    // ----- inputs -----

    /// An ingress request for `target`, which this shard owns. A new request admits its
    /// message (the caller is the request's address when an answer is wanted); a retry with a
    /// known key only adds the waiter. A refusal (unknown function, full mailbox, key reused)
    /// is returned and nothing changes.
    pub fn request(
        &mut self,
        now: UnixMillis,
        target: Address,
        value: TypedValue,
        request: RequestKey,
        waiter: Option<(Waiter, Want)>,
    ) -> Result<(), Error> {
        assert_eq!(self.routing.shard_of(&target), self.id, "{target} is not owned by {}", self.id);
        if !self.registry.contains(&target.function) {
            return Err(Error::UnknownFunction(target.function));
        }
        let mut answers = Vec::new();
        let opened = self.requests.open(&request, &target, waiter, &mut answers)?;
        self.push_answers(answers);
        if opened == Opened::Known {
            return Ok(());
        }
        let len = self.instances.get(&target).map_or(0, |instance| instance.mailbox.len());
        if len >= limits::mailbox_messages_max {
            return Err(Error::MailboxFull { address: target.to_string(), len });
        }
        let wants_answer = waiter.is_some_and(|(_, want)| want == Want::Answer);
        let caller = if wants_answer { Some(requests::request_address(self.id, &request)?) } else { None };
        let envelope = Envelope { target, caller, value };
        let key = request.key.clone();
        let id = MessageId(self.message_next);
        self.commit(now, Entry::Admitted { id, envelope, request: Some(request) });
        if let Some(waiter) = waiter {
            self.requests.add_waiter(&key, waiter);
        }
        Ok(())
    }

    /// The `seq`-th message from `from`. A duplicate (a peer resending after a restart) is
    /// acknowledged again at once and otherwise ignored.
    pub fn receive(&mut self, now: UnixMillis, from: ShardId, seq: u64, envelope: Envelope) {
        let link = &self.links[usize::from(from.0)];
        if link.received_last.is_some_and(|last| seq <= last) {
            let last = link.received_last.unwrap_or(seq);
            self.outputs.push_back(Output::Ack { peer: from, seq: last });
            return;
        }
        let expected = link.received_last.map_or(0, |last| last + 1);
        assert_eq!(seq, expected, "{}: message {seq} from {from} skips ahead", self.id);
        assert_eq!(self.owner_of(&envelope.target), self.id, "{} is not hosted by {}", envelope.target, self.id);
        let id = requests::parse_request_address(&envelope.target).is_none().then_some(MessageId(self.message_next));
        self.commit(now, Entry::Received { from, seq, id, envelope });
    }

    /// `peer` committed this shard's messages up to `seq`: they leave the outbox.
    pub fn acked(&mut self, now: UnixMillis, peer: ShardId, seq: u64) {
        let outstanding = self.links[usize::from(peer.0)].outbox.first_key_value().map(|(first, _)| *first);
        if outstanding.is_some_and(|first| first <= seq) {
            self.commit(now, Entry::Acked { peer, seq });
        }
    }

    /// Turns every delayed message due by `now` into a record that sends it.
    pub fn fire_timers(&mut self, now: UnixMillis) -> usize {
        let mut fired = 0;
        while let Some(((fire_at, timer), entry)) = self.timers.first_key_value() {
            if *fire_at > now {
                break;
            }
            let (owner, envelope) = (entry.owner.clone(), entry.envelope.clone());
            let (fire_at, timer) = (*fire_at, *timer);
            let send = self.plan_routes(vec![envelope]).pop().unwrap_or_else(|| panic!("one envelope, one route"));
            self.commit(now, Entry::Fired { owner, timer, fire_at, send });
            fired += 1;
        }
        fired
    }

    /// Forgets ingress requests past their retention.
    pub fn tick(&mut self, now: UnixMillis) -> usize {
        self.requests.purge(now)
    }

    /// A waiter gave up on request `key` (timeout, client gone).
    pub fn forget_waiter(&mut self, key: &str, waiter: Waiter) {
        self.requests.forget_waiter(key, waiter);
    }

    // ----- invocations -----

    /// Takes the front message of the next idle address of a native function with mail and
    /// marks the address busy until [`Shard::complete`].
    pub fn begin(&mut self, now: UnixMillis) -> Option<Pending> {
        loop {
            let address = self.ready.pop_front()?;
            let Some(instance) = self.instances.get_mut(&address) else { continue };
            instance.ready = false;
            if instance.busy {
                continue;
            }
            let Some((message, envelope)) = instance.mailbox.front().cloned() else { continue };
            instance.busy = true;
            let expired = self.expired_values(&address, now);
            return Some(Pending { at: now, message, envelope, expired });
        }
    }

    /// The values a function type declared: a native function's specs, or what a remote one
    /// registered so far.
    fn declared(&self, function: &TypeName) -> &[ValueSpecDescriptor] {
        match self.registry.get(function) {
            Some(spec) => &spec.values,
            None => self.remote_specs.get(function).map_or(&[], Vec::as_slice),
        }
    }

    /// The values of `address` that expired by `now`, sorted by name.
    fn expired_values(&self, address: &Address, now: UnixMillis) -> Vec<Arc<str>> {
        let Some(instance) = self.instances.get(address) else { return Vec::new() };
        let declared = self.declared(&address.function);
        let mut expired: Vec<_> = instance
            .values
            .iter()
            .filter(|(name, stored)| {
                let expiration = declared.iter().find(|spec| spec.name == **name).map(|spec| spec.expiration);
                expiration.is_some_and(|expiration| stored.is_expired(expiration, now))
            })
            .map(|(name, _)| name.clone())
            .collect();
        expired.sort();
        expired
    }

    /// Runs a native function for `pending` and returns the effects it asked for.
    fn invoke(&self, pending: &Pending) -> Result<Effects, FunctionError> {
        let target = &pending.envelope.target;
        let spec =
            self.registry.get(&target.function).ok_or_else(|| Error::UnknownFunction(target.function.clone()))?;
        let mut context = Context {
            now: pending.at,
            address: target,
            caller: pending.envelope.caller.as_ref(),
            declared: &spec.values,
            registry: &self.registry,
            values: self.instances.get(target).map(|instance| &instance.values),
            expired: &pending.expired,
            pending_tokens: self.tokens.get(target),
            effects: Effects::default(),
        };
        spec.function.invoke(&mut context, &pending.envelope.value)?;
        Ok(context.effects)
    }

    /// Runs up to `budget` invocations of native functions; returns how many ran.
    pub fn run(&mut self, now: UnixMillis, budget: usize) -> usize {
        let mut count = 0;
        while count < budget {
            let Some(pending) = self.begin(now) else { break };
            let outcome = self.invoke(&pending);
            self.complete(pending, outcome);
            count += 1;
        }
        count
    }

    /// Commits the outcome of an invocation as one record. The address takes its next
    /// message after this.
    pub(crate) fn complete(&mut self, pending: Pending, outcome: Result<Effects, FunctionError>) {
        let Pending { at, message, envelope, expired } = pending;
        let mut invocation = Invocation {
            address: envelope.target,
            message,
            messages: 1,
            caller: envelope.caller,
            mutations: expired.into_iter().map(|name| Mutation { name, value: None }).collect(),
            sends: Vec::new(),
            timers: Vec::new(),
            egress: Vec::new(),
            failure: None,
        };
        match outcome {
            Ok(effects) => self.record_effects(&mut invocation, effects),
            Err(error) => invocation.failure = Some(error),
        }
        self.commit(at, Entry::Invoked(invocation));
    }

    /// Writes what an invocation asked for into its record: writes replace the deletion of
    /// expired values, timers and messages get their numbers.
    fn record_effects(&self, invocation: &mut Invocation, effects: Effects) {
        for (name, value) in effects.mutations {
            invocation.mutations.retain(|mutation| mutation.name != name);
            invocation.mutations.push(Mutation { name, value });
        }
        for token in effects.cancels {
            let pending = self.tokens.get(&invocation.address).and_then(|tokens| tokens.get(&token));
            let (_, id) = *pending.unwrap_or_else(|| panic!("cancelled token {token:?} is not pending"));
            invocation.timers.push(TimerOp::Cancel { id, token });
        }
        for (offset, delayed) in effects.delayed.into_iter().enumerate() {
            let id = TimerId(self.timer_next + offset as u64);
            let (fire_at, token, envelope) = (delayed.fire_at, delayed.token, delayed.envelope);
            invocation.timers.push(TimerOp::Arm { id, fire_at, token, envelope });
        }
        invocation.sends = self.plan_routes(effects.sends);
        invocation.egress = effects.egress;
    }

    /// Decides where each message goes, numbering them as [`Shard::apply`] will.
    fn plan_routes(&self, envelopes: Vec<Envelope>) -> Vec<Send> {
        let mut message_next = self.message_next;
        let mut sent_next: Vec<u64> = self.links.iter().map(|link| link.sent_next).collect();
        envelopes
            .into_iter()
            .map(|envelope| {
                let owner = self.owner_of(&envelope.target);
                let route = if owner != self.id {
                    let seq = &mut sent_next[usize::from(owner.0)];
                    *seq += 1;
                    Route::Peer { shard: owner, seq: *seq - 1 }
                } else if requests::parse_request_address(&envelope.target).is_some() {
                    Route::Request
                } else {
                    message_next += 1;
                    Route::Local(MessageId(message_next - 1))
                };
                Send { envelope, route }
            })
            .collect()
    }

    // ----- records -----

    fn commit(&mut self, at: UnixMillis, entry: Entry) {
        let record = Record { at, entry };
        self.apply(&record);
        self.records.push_back(record);
    }

    /// Rebuilds state from a committed record, as when it was made.
    pub fn replay(&mut self, record: &Record) {
        self.apply(record);
    }

    /// Applies a record to the shard's state. The one place state changes.
    fn apply(&mut self, record: &Record) {
        let at = record.at;
        match &record.entry {
            Entry::Admitted { id, envelope, request } => {
                self.enqueue(*id, envelope.clone());
                if let Some(request) = request {
                    self.requests.admitted(at, request, &envelope.target);
                }
            }
            Entry::Received { from, seq, id, envelope } => {
                let link = &mut self.links[usize::from(from.0)];
                assert_eq!(link.received_last.map_or(0, |last| last + 1), *seq, "receipt from {from} out of order");
                link.received_last = Some(*seq);
                match id {
                    Some(id) => self.enqueue(*id, envelope.clone()),
                    None => self.answer_request(&envelope.target, Outcome::Reply(envelope.value.clone())),
                }
            }
            Entry::Invoked(invocation) => self.apply_invocation(at, invocation),
            Entry::Fired { owner, timer, fire_at, send } => {
                self.touch(owner);
                self.release_timer(owner, *fire_at, *timer);
                let removed = self.timers.remove(&(*fire_at, *timer));
                let removed = removed.unwrap_or_else(|| panic!("fired timer {timer:?} is not pending"));
                assert_eq!(removed.owner, *owner);
                if let Some(token) = &removed.token {
                    self.release_token(owner, token);
                }
                self.route(send);
            }
            Entry::Acked { peer, seq } => {
                let link = &mut self.links[usize::from(peer.0)];
                link.outbox.retain(|pending, _| pending > seq);
            }
            Entry::Registered { function, values } => {
                let registered = self.remote_specs.entry(function.clone()).or_default();
                for spec in values {
                    let known = registered.iter().find(|known| known.name == spec.name);
                    assert!(known.is_none(), "value {:?} of {function} registered twice", spec.name);
                    registered.push(spec.clone());
                }
                self.type_known(function);
            }
        }
    }

    fn apply_invocation(&mut self, at: UnixMillis, invocation: &Invocation) {
        let address = &invocation.address;
        self.touch(address);
        let instance = self.instances.get_mut(address);
        let instance = instance.unwrap_or_else(|| panic!("invoked address {address} has no instance"));
        let (message, _) =
            instance.mailbox.pop_front().unwrap_or_else(|| panic!("invoked address {address} has no mail"));
        assert_eq!(message, invocation.message, "{address} consumed a message out of order");
        assert!(invocation.messages >= 1 && invocation.messages as usize <= instance.mailbox.len() + 1);
        instance.mailbox.drain(..invocation.messages as usize - 1);
        instance.busy = false;
        for stored in instance.values.values_mut() {
            stored.called_at = at;
        }
        for mutation in &invocation.mutations {
            match &mutation.value {
                Some(value) => {
                    let stored = StoredValue { value: value.clone(), written_at: at, called_at: at };
                    instance.values.insert(mutation.name.clone(), stored);
                }
                None => {
                    instance.values.remove(&mutation.name);
                }
            }
        }
        if !instance.mailbox.is_empty() && !instance.ready {
            self.make_ready(address.clone());
        } else if instance.is_empty() {
            self.instances.remove(address);
        }
        if self.registry.remote(&address.function).is_some() {
            self.type_known(&address.function);
        }
        for op in &invocation.timers {
            match op {
                TimerOp::Arm { id, fire_at, token, envelope } => {
                    assert_eq!(id.0, self.timer_next, "timer ids are assigned in order");
                    self.timer_next += 1;
                    if let Some(token) = token {
                        let tokens = self.tokens.entry(address.clone()).or_default();
                        let previous = tokens.insert(token.clone(), (*fire_at, *id));
                        assert!(previous.is_none(), "token {token:?} armed twice");
                    }
                    let timer = Timer { owner: address.clone(), token: token.clone(), envelope: envelope.clone() };
                    self.timers.insert((*fire_at, *id), timer);
                    self.owned_timers.entry(address.clone()).or_default().insert((*fire_at, *id));
                }
                TimerOp::Cancel { id, token } => {
                    let pending = self.tokens.get(address).and_then(|tokens| tokens.get(token)).copied();
                    let (fire_at, pending_id) =
                        pending.unwrap_or_else(|| panic!("cancelled token {token:?} is not pending"));
                    assert_eq!(pending_id, *id);
                    self.timers.remove(&(fire_at, *id));
                    self.release_timer(address, fire_at, *id);
                    self.release_token(address, token);
                }
            }
        }
        for send in &invocation.sends {
            self.route(send);
        }
        if let Some(failure) = &invocation.failure {
            if let Some(caller) = &invocation.caller {
                let text = format!("function {address} failed: {failure}");
                self.answer_request(caller, Outcome::Failed(text));
            }
        }
    }

    fn release_timer(&mut self, owner: &Address, fire_at: UnixMillis, id: TimerId) {
        if let Some(owned) = self.owned_timers.get_mut(owner) {
            owned.remove(&(fire_at, id));
            if owned.is_empty() {
                self.owned_timers.remove(owner);
            }
        }
    }

    fn release_token(&mut self, owner: &Address, token: &str) {
        if let Some(tokens) = self.tokens.get_mut(owner) {
            tokens.remove(token);
            if tokens.is_empty() {
                self.tokens.remove(owner);
            }
        }
    }

    fn enqueue(&mut self, id: MessageId, envelope: Envelope) {
        assert_eq!(id.0, self.message_next, "message ids are assigned in order");
        self.touch(&envelope.target);
        self.message_next += 1;
        let address = envelope.target.clone();
        let instance = self.instances.entry(address.clone()).or_default();
        instance.mailbox.push_back((id, envelope));
        if !instance.busy && !instance.ready {
            self.make_ready(address);
        }
    }

    /// Queues an idle address with mail for its next invocation.
    fn make_ready(&mut self, address: Address) {
        if let Some(instance) = self.instances.get_mut(&address) {
            instance.ready = true;
        }
        match self.registry.remote(&address.function) {
            Some(_) => self.ready_remote.push_back(address),
            None => self.ready.push_back(address),
        }
    }

    fn route(&mut self, send: &Send) {
        match send.route {
            Route::Local(id) => self.enqueue(id, send.envelope.clone()),
            Route::Peer { shard, seq } => {
                let link = &mut self.links[usize::from(shard.0)];
                assert_eq!(seq, link.sent_next, "link sequence numbers are assigned in order");
                link.sent_next += 1;
                link.outbox.insert(seq, send.envelope.clone());
            }
            Route::Request => self.answer_request(&send.envelope.target, Outcome::Reply(send.envelope.value.clone())),
        }
    }

    fn answer_request(&mut self, address: &Address, outcome: Outcome) {
        if let Some((host, request)) = requests::parse_request_address(address) {
            if host == self.id {
                self.requests.answer(&request.key, outcome);
            }
        }
    }

    /// The next record to commit, in the order the shard made them.
    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.pop_front()
    }

    /// `record` is durable: queue what it lets leave the shard.
    pub fn released(&mut self, record: &Record) {
        let mut answers = Vec::new();
        match &record.entry {
            Entry::Admitted { request: Some(request), .. } => {
                self.requests.admission_durable(&request.key, &mut answers);
            }
            Entry::Admitted { request: None, .. } | Entry::Acked { .. } | Entry::Registered { .. } => {}
            Entry::Received { from, seq, id, envelope } => {
                self.outputs.push_back(Output::Ack { peer: *from, seq: *seq });
                if id.is_none() {
                    self.request_durable(&envelope.target, &mut answers);
                }
            }
            Entry::Invoked(invocation) => {
                for send in &invocation.sends {
                    self.release_send(send, &mut answers);
                }
                for egress in &invocation.egress {
                    self.outputs.push_back(Output::Egress(egress.clone()));
                }
                if let (Some(_), Some(caller)) = (&invocation.failure, &invocation.caller) {
                    self.request_durable(caller, &mut answers);
                }
            }
            Entry::Fired { send, .. } => self.release_send(send, &mut answers),
        }
        self.push_answers(answers);
    }

    fn release_send(&mut self, send: &Send, answers: &mut Vec<(Waiter, Outcome)>) {
        match send.route {
            Route::Local(_) => {}
            Route::Peer { shard, seq } => {
                self.outputs.push_back(Output::Transmit { peer: shard, seq, envelope: send.envelope.clone() });
            }
            Route::Request => self.request_durable(&send.envelope.target, answers),
        }
    }

    fn request_durable(&mut self, address: &Address, answers: &mut Vec<(Waiter, Outcome)>) {
        if let Some((host, request)) = requests::parse_request_address(address) {
            if host == self.id {
                self.requests.outcome_durable(&request.key, answers);
            }
        }
    }

    fn push_answers(&mut self, answers: Vec<(Waiter, Outcome)>) {
        for (waiter, outcome) in answers {
            self.outputs.push_back(Output::Answer { waiter, outcome });
        }
    }

    /// The next thing that may leave the shard.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Replay is over: every replayed record is durable, nobody waits for a request, and
    /// whatever peers have not acknowledged is sent again.
    pub fn recovered(&mut self) {
        self.requests.recovered();
        for (peer, link) in self.links.iter().enumerate() {
            for (seq, envelope) in &link.outbox {
                let peer = ShardId(peer as u16);
                self.outputs.push_back(Output::Transmit { peer, seq: *seq, envelope: envelope.clone() });
            }
        }
    }

    // ----- inspection -----

    /// Messages waiting for idle addresses of native functions: the shard has work to run.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Messages waiting for idle addresses of remote functions: requests to send.
    pub fn has_ready_remote(&self) -> bool {
        !self.ready_remote.is_empty()
    }

    /// The moment the earliest delayed message comes due.
    pub fn next_timer_at(&self) -> Option<UnixMillis> {
        self.timers.keys().next().map(|(fire_at, _)| *fire_at)
    }

    /// The stored value `name` of `address`, as the last applied record left it.
    pub fn value(&self, address: &Address, name: &str) -> Option<&TypedValue> {
        let instance = self.instances.get(address)?;
        instance.values.get(name).map(|stored| &stored.value)
    }

    pub fn mailbox_len(&self, address: &Address) -> usize {
        self.instances.get(address).map_or(0, |instance| instance.mailbox.len())
    }

    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Messages sent to `peer` and not acknowledged yet.
    pub fn outbox_len(&self, peer: ShardId) -> usize {
        self.links[usize::from(peer.0)].outbox.len()
    }

    /// Ingress requests this shard remembers.
    pub fn requests_len(&self) -> usize {
        self.requests.len()
    }

    /// Every address with state, and its values, sorted: for comparing two shards.
    pub fn state(&self) -> Vec<(Address, Values)> {
        let mut state: Vec<_> = self
            .instances
            .iter()
            .filter(|(_, instance)| !instance.values.is_empty())
            .map(|(address, instance)| {
                let mut values: Vec<_> =
                    instance.values.iter().map(|(name, stored)| (name.clone(), stored.value.clone())).collect();
                values.sort_by(|a, b| a.0.cmp(&b.0));
                (address.clone(), values)
            })
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }
}

#[cfg(test)]
mod tests {
    //! The semantics of one shard, driven by hand: state and expiration, delayed messages and
    //! their cancellation, FIFO per pair, one invocation at a time per address, ingress
    //! requests and their retries, exactly-once links between shards, and replay.

    use std::time::Duration;

    use super::*;
    use crate::{FunctionSpec, TypeName, ValueSpec};

    const COUNT: ValueSpec<i64> = ValueSpec::new("count");
    const SHORT: ValueSpec<i64> = ValueSpec::new("short").expire_after_write(Duration::from_millis(100));
    const IDLE: ValueSpec<i64> = ValueSpec::new("idle").expire_after_call(Duration::from_millis(100));
    const LOG: ValueSpec<String> = ValueSpec::new("log");

    fn typename(text: &str) -> TypeName {
        TypeName::parse(text).unwrap()
    }

    fn address(function: &str, id: &str) -> Address {
        Address::new(typename(function), id).unwrap()
    }

    fn text(value: &str) -> TypedValue {
        TypedValue::new(typename("test/text"), value.to_string())
    }

    /// `test/counter` adds its message to `count` (and, unless it is zero, to `short` and
    /// `idle`) and replies with the new count. `test/log` appends `caller:message` to its
    /// log. `test/timer` understands `arm <ms> <token>`, `cancel <token>`, `rearm <ms>
    /// <token>` and, from itself, `fire <token>`. `test/forward` sends `1` to the counter whose
    /// id is the message, and replies `sent`; it ignores the counters' replies.
    fn registry() -> Arc<Registry> {
        let mut registry = Registry::new();
        let counter = |context: &mut Context<'_>, message: &TypedValue| {
            let delta: i64 = message.as_text()?.parse().map_err(|_| FunctionError::new("not a number"))?;
            let count = context.get(&COUNT)?.unwrap_or(0) + delta;
            context.set(&COUNT, &count)?;
            if delta != 0 {
                context.set(&SHORT, &(context.get(&SHORT)?.unwrap_or(0) + delta))?;
                context.set(&IDLE, &(context.get(&IDLE)?.unwrap_or(0) + delta))?;
            }
            context.reply(text(&count.to_string()))
        };
        let spec = FunctionSpec::new(typename("test/counter"), counter)
            .with_value(&COUNT)
            .with_value(&SHORT)
            .with_value(&IDLE);
        registry.register(spec).unwrap();
        let log = |context: &mut Context<'_>, message: &TypedValue| {
            let mut log = context.get(&LOG)?.unwrap_or_default();
            let caller = context.caller().map_or("-".to_string(), |caller| caller.id.to_string());
            log.push_str(&format!("{caller}:{};", message.as_text()?));
            context.set(&LOG, &log)
        };
        registry.register(FunctionSpec::new(typename("test/log"), log).with_value(&LOG)).unwrap();
        let timer = |context: &mut Context<'_>, message: &TypedValue| {
            let words: Vec<&str> = message.as_text()?.split(' ').collect();
            let me = context.self_address().clone();
            match words.as_slice() {
                ["arm", ms, token] | ["rearm", ms, token] => {
                    if words[0] == "rearm" {
                        context.cancel_delayed(token)?;
                    }
                    let delay = Duration::from_millis(ms.parse().unwrap());
                    context.send_after(delay, me, text(&format!("fire {token}")), Some(token))
                }
                ["cancel", token] => context.cancel_delayed(token),
                ["fire", token] => {
                    let mut log = context.get(&LOG)?.unwrap_or_default();
                    log.push_str(token);
                    context.set(&LOG, &log)
                }
                _ => Err(FunctionError::new("unknown command")),
            }
        };
        registry.register(FunctionSpec::new(typename("test/timer"), timer).with_value(&LOG)).unwrap();
        let forward = |context: &mut Context<'_>, message: &TypedValue| {
            if context.caller().is_some_and(|caller| caller.function == typename("test/counter")) {
                return Ok(()); // A counter's reply.
            }
            context.send(address("test/counter", message.as_text()?), text("1"))?;
            context.reply(text("sent"))
        };
        registry.register(FunctionSpec::new(typename("test/forward"), forward)).unwrap();
        registry.register_endpoint(crate::requests::request_type()).unwrap();
        Arc::new(registry)
    }

    fn shard() -> Shard {
        Shard::new(ShardId(0), Routing::new(1), registry(), Retention::default())
    }

    /// Puts a message with any caller into a mailbox, as a committed record would.
    fn inject(shard: &mut Shard, target: &Address, caller: Option<&Address>, value: &str) {
        let envelope = Envelope { target: target.clone(), caller: caller.cloned(), value: text(value) };
        let id = MessageId(shard.message_next);
        shard.replay(&Record { at: UnixMillis(0), entry: Entry::Admitted { id, envelope, request: None } });
    }

    /// Runs everything runnable at `now`, releasing each record as if it were durable at
    /// once. Returns the records and the outputs.
    fn settle(shard: &mut Shard, now: u64) -> (Vec<Record>, Vec<Output>) {
        let (mut records, mut outputs) = (Vec::new(), Vec::new());
        loop {
            shard.fire_timers(UnixMillis(now));
            shard.run(UnixMillis(now), usize::MAX);
            let mut progressed = false;
            while let Some(record) = shard.poll_record() {
                shard.released(&record);
                records.push(record);
                progressed = true;
            }
            outputs.extend(std::iter::from_fn(|| shard.poll_output()));
            if !progressed {
                return (records, outputs);
            }
        }
    }

    fn invocation(record: &Record) -> &Invocation {
        match &record.entry {
            Entry::Invoked(invocation) => invocation,
            other => panic!("not an invocation: {other:?}"),
        }
    }

    fn count(shard: &Shard, target: &Address, spec: &ValueSpec<i64>) -> Option<i64> {
        shard.value(target, spec.name()).map(|value| value.decode::<i64>().unwrap())
    }

    fn log_of(shard: &Shard, target: &Address) -> Option<String> {
        shard.value(target, "log").map(|value| value.decode::<String>().unwrap())
    }

    #[test]
    fn state_accumulates_and_replies_go_to_the_caller() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        let caller = address("test/log", "c");
        inject(&mut shard, &counter, Some(&caller), "2");
        inject(&mut shard, &counter, Some(&caller), "3");
        let (records, _) = settle(&mut shard, 0);
        assert_eq!(count(&shard, &counter, &COUNT), Some(5));
        assert_eq!(log_of(&shard, &caller).unwrap(), "a:2;a:5;");
        assert_eq!(records.len(), 4, "two counter invocations, two log invocations");
    }

    #[test]
    fn failed_invocations_apply_nothing_and_keep_the_failure() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        inject(&mut shard, &counter, None, "1");
        inject(&mut shard, &counter, None, "x");
        let (records, _) = settle(&mut shard, 0);
        assert_eq!(count(&shard, &counter, &COUNT), Some(1));
        let failed = invocation(&records[1]);
        assert_eq!(failed.failure, Some(FunctionError::new("not a number")));
        assert!(failed.mutations.is_empty() && failed.sends.is_empty());
    }

    #[test]
    fn values_expire_after_write_and_after_call() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        let deleted = |record: &Record| -> Vec<String> {
            let mutations = &invocation(record).mutations;
            mutations
                .iter()
                .filter(|mutation| mutation.value.is_none())
                .map(|mutation| mutation.name.to_string())
                .collect()
        };
        inject(&mut shard, &counter, None, "1");
        settle(&mut shard, 1_000);
        // A zero delta writes only `count`: it is a call that touches the other values.
        inject(&mut shard, &counter, None, "0");
        settle(&mut shard, 1_060);
        assert_eq!(count(&shard, &counter, &SHORT), Some(1));
        inject(&mut shard, &counter, None, "0");
        let (records, _) = settle(&mut shard, 1_120);
        assert_eq!(count(&shard, &counter, &SHORT), None, "written at 1000 with a 100 ms life");
        assert_eq!(count(&shard, &counter, &IDLE), Some(1), "called at 1060, alive until 1160");
        assert_eq!(deleted(&records[0]), ["short"]);
        inject(&mut shard, &counter, None, "5");
        let (records, _) = settle(&mut shard, 1_300);
        assert!(deleted(&records[0]).is_empty(), "the expired value is written anew, not deleted");
        assert_eq!(count(&shard, &counter, &IDLE), Some(5), "expired, then started again from 5");
        assert_eq!(count(&shard, &counter, &SHORT), Some(5));
        assert_eq!(count(&shard, &counter, &COUNT), Some(6), "values without expiration stay");
    }

    #[test]
    fn delayed_messages_fire_on_time_and_cancel() {
        let mut shard = shard();
        let timer = address("test/timer", "t");
        for command in ["arm 100 a", "arm 200 b", "arm 300 c", "cancel b"] {
            inject(&mut shard, &timer, None, command);
        }
        settle(&mut shard, 0);
        assert_eq!(shard.pending_timers(), 2);
        assert_eq!(shard.next_timer_at(), Some(UnixMillis(100)));
        settle(&mut shard, 99);
        assert_eq!(log_of(&shard, &timer), None, "nothing fires early");
        settle(&mut shard, 250);
        assert_eq!(log_of(&shard, &timer).unwrap(), "a");
        settle(&mut shard, 1_000);
        assert_eq!(log_of(&shard, &timer).unwrap(), "ac", "b was cancelled");
        assert_eq!(shard.pending_timers(), 0);
        assert!(shard.tokens.is_empty(), "fired tokens are released");
    }

    #[test]
    fn a_pending_token_cannot_be_reused_but_can_be_rearmed() {
        let mut shard = shard();
        let timer = address("test/timer", "t");
        for command in ["arm 100 a", "arm 100 a", "rearm 500 a"] {
            inject(&mut shard, &timer, None, command);
        }
        let (records, _) = settle(&mut shard, 0);
        assert!(invocation(&records[1]).failure.as_ref().unwrap().0.contains("already used"));
        assert!(invocation(&records[2]).failure.is_none());
        assert_eq!(shard.pending_timers(), 1);
        settle(&mut shard, 200);
        assert_eq!(log_of(&shard, &timer), None, "the first arming was cancelled");
        settle(&mut shard, 500);
        assert_eq!(log_of(&shard, &timer).unwrap(), "a");
        inject(&mut shard, &timer, None, "cancel a");
        let (records, _) = settle(&mut shard, 600);
        let cancel = invocation(&records[0]);
        assert!(cancel.failure.is_none() && cancel.timers.is_empty(), "cancelling a fired token is a no-op");
    }

    #[test]
    fn messages_between_a_pair_arrive_in_order() {
        let mut shard = shard();
        let log = address("test/log", "l");
        let senders: Vec<Address> = (0..4).map(|i| address("test/log", &format!("s{i}"))).collect();
        for round in 0..50 {
            for sender in &senders {
                inject(&mut shard, &log, Some(sender), &round.to_string());
            }
        }
        settle(&mut shard, 0);
        let log = log_of(&shard, &log).unwrap();
        for sender in &senders {
            let rounds: Vec<u32> = log
                .split(';')
                .filter_map(|entry| entry.strip_prefix(&format!("{}:", sender.id)))
                .map(|round| round.parse().unwrap())
                .collect();
            assert_eq!(rounds, (0..50).collect::<Vec<u32>>());
        }
    }

    #[test]
    fn an_address_runs_one_invocation_at_a_time() {
        let mut shard = shard();
        let a = address("test/counter", "a");
        let b = address("test/counter", "b");
        inject(&mut shard, &a, None, "1");
        inject(&mut shard, &a, None, "2");
        inject(&mut shard, &b, None, "3");
        let first = shard.begin(UnixMillis(0)).unwrap();
        assert_eq!(first.envelope.target, a);
        let second = shard.begin(UnixMillis(0)).unwrap();
        assert_eq!(second.envelope.target, b, "a is busy: its second message waits");
        assert!(shard.begin(UnixMillis(0)).is_none());
        assert_eq!(shard.mailbox_len(&a), 2, "the message in flight stays at the front");
        shard.complete(first, Ok(Effects::default()));
        let third = shard.begin(UnixMillis(0)).unwrap();
        assert_eq!((third.envelope.target.clone(), third.envelope.value.clone()), (a, text("2")));
        shard.complete(second, Ok(Effects::default()));
        shard.complete(third, Ok(Effects::default()));
        assert!(!shard.has_ready());
    }

    /// Admits `value` for `target` as an ingress request does, making a record.
    fn admit(shard: &mut Shard, target: &Address, value: &str, key: &str) {
        shard.request(UnixMillis(0), target.clone(), text(value), generated(key), None).unwrap();
    }

    /// Applies a checkpoint's delta to the address states of an older one.
    fn merge(base: Vec<AddressState>, delta: Vec<AddressState>) -> Vec<AddressState> {
        let mut merged: BTreeMap<Address, AddressState> =
            base.into_iter().map(|state| (state.address.clone(), state)).collect();
        for state in delta {
            merged.insert(state.address.clone(), state);
        }
        merged.into_values().filter(|state| !state.is_empty()).collect()
    }

    fn everything(shard: &Shard) -> (Vec<(Address, Values)>, usize, Vec<usize>) {
        let mailboxes = (0..8).map(|i| shard.mailbox_len(&address("test/counter", &i.to_string()))).collect();
        (shard.state(), shard.pending_timers(), mailboxes)
    }

    #[test]
    fn a_checkpoint_taken_while_the_shard_runs_plus_the_records_after_it_rebuild_the_shard() {
        let mut shard = shard();
        shard.track_changes();
        let timer = address("test/timer", "t");
        for i in 0..8 {
            admit(&mut shard, &address("test/counter", &i.to_string()), "1", &format!("a{i}"));
        }
        admit(&mut shard, &timer, "arm 100 a", "t1");
        admit(&mut shard, &timer, "arm 5000 b", "t2");
        settle(&mut shard, 0);

        // The first checkpoint holds every address (all changed since they were made),
        // captured one address per step while messages keep coming.
        let meta = shard.checkpoint_begin();
        let (mut after, mut base, mut round) = (Vec::new(), None, 0);
        while base.is_none() {
            admit(&mut shard, &address("test/counter", &(round % 8).to_string()), "2", &format!("b{round}"));
            if round % 3 == 0 {
                // Queued but not run: mailboxes are part of the state too.
                admit(&mut shard, &address("test/counter", &(round % 8).to_string()), "5", &format!("q{round}"));
            } else {
                after.extend(settle(&mut shard, 50 + round).0);
            }
            after.extend(std::iter::from_fn(|| shard.poll_record()));
            base = shard.checkpoint_step(1);
            round += 1;
        }
        let base = base.unwrap();
        assert!(round > 2, "the capture took several steps");
        let mut restored = Shard::restore(meta, base.clone(), Routing::new(1), registry(), Retention::default());
        for record in &after {
            restored.replay(record);
        }
        assert_eq!(everything(&restored), everything(&shard));

        // Deltas hold only what changed since the previous checkpoint began; with the base
        // they rebuild the shard too.
        assert!(shard.dirty_len() > 0, "what changed during the capture is left for the next");
        shard.checkpoint_begin();
        let first = shard.checkpoint_step(usize::MAX).unwrap();
        assert_eq!(shard.dirty_len(), 0);
        admit(&mut shard, &address("test/counter", "3"), "7", "c1");
        settle(&mut shard, 200);
        assert_eq!(shard.dirty_len(), 2, "counter 3 and the timer that fired at 100");
        let meta = shard.checkpoint_begin();
        let second = shard.checkpoint_step(usize::MAX).unwrap();
        assert_eq!(second.len(), 2);
        let merged = merge(merge(base, first), second);
        let restored = Shard::restore(meta, merged, Routing::new(1), registry(), Retention::default());
        assert_eq!(everything(&restored), everything(&shard));
        assert_eq!(log_of(&restored, &timer).unwrap(), "a", "b is still pending");
        assert_eq!(restored.pending_timers(), 1);
    }

    /// Every address's values, the pending timers, and every address's queued messages.
    type Union = (Vec<(Address, Values)>, usize, Vec<(Address, usize)>);

    /// The [`Union`] of what a set of shards holds.
    fn union(shards: &[Shard]) -> Union {
        let mut state: Vec<_> = shards.iter().flat_map(Shard::state).collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        let timers = shards.iter().map(Shard::pending_timers).sum();
        let mut mail: Vec<(Address, usize)> = shards
            .iter()
            .flat_map(|shard| {
                shard.instances.iter().map(|(address, instance)| (address.clone(), instance.mailbox.len()))
            })
            .filter(|(_, len)| *len > 0)
            .collect();
        mail.sort();
        (state, timers, mail)
    }

    /// Full checkpoints of `shards`, rescaled to `to` shards and restored.
    fn rescaled(shards: &mut [Shard], to: u16) -> Vec<Shard> {
        let old = shards.iter_mut().map(|shard| shard.full_state()).collect();
        crate::rescale::rescale(old, Routing::new(to))
            .into_iter()
            .map(|(meta, states)| Shard::restore(meta, states, Routing::new(to), registry(), Retention::default()))
            .collect()
    }

    #[test]
    fn rescaling_two_shards_to_one_and_back_keeps_every_address_and_message() {
        let routing = Routing::new(2);
        let mut shards: Vec<Shard> =
            (0..2).map(|id| Shard::new(ShardId(id), routing, registry(), Retention::default())).collect();
        let admit_to = |shards: &mut Vec<Shard>, target: Address, value: &str, key: &str| {
            let owner = usize::from(routing.shard_of(&target).0);
            shards[owner].request(UnixMillis(0), target, text(value), generated(key), None).unwrap();
        };
        for i in 0..24 {
            admit_to(&mut shards, address("test/counter", &i.to_string()), "1", &format!("c{i}"));
            // Forwards to counters, often on the other shard: those stay in the outboxes.
            admit_to(&mut shards, address("test/forward", &format!("f{i}")), &(i % 7).to_string(), &format!("f{i}"));
        }
        for i in 0..6 {
            admit_to(
                &mut shards,
                address("test/timer", &i.to_string()),
                &format!("arm {} t{i}", 1000 + i),
                &format!("t{i}"),
            );
        }
        let mut transmits = Vec::new();
        for shard in shards.iter_mut() {
            let (_, outputs) = settle(shard, 0);
            transmits.extend(outputs.into_iter().filter(|output| matches!(output, Output::Transmit { .. })));
        }
        assert!(!transmits.is_empty(), "some messages are on their way between the shards");

        // What the two shards come to once their messages arrive, against the same state
        // moved to one shard, and back to two.
        let mut one = rescaled(&mut shards, 1);
        for output in &transmits {
            if let Output::Transmit { peer, seq, envelope } = output {
                let sender = ShardId(1 - peer.0);
                shards[usize::from(peer.0)].receive(UnixMillis(0), sender, *seq, envelope.clone());
            }
        }
        for shard in shards.iter_mut().chain(one.iter_mut()) {
            settle(shard, 0);
        }
        assert_eq!(union(&one), union(&shards));
        let mut two = rescaled(&mut one, 2);
        for shard in two.iter_mut() {
            settle(shard, 500);
        }
        for shard in shards.iter_mut() {
            settle(shard, 500);
        }
        assert_eq!(union(&two), union(&shards));
        for shard in two.iter_mut().chain(shards.iter_mut()) {
            settle(shard, 2_000);
        }
        let fired = |shards: &[Shard]| -> Vec<String> {
            (0..6)
                .filter_map(|i| shards.iter().find_map(|shard| log_of(shard, &address("test/timer", &i.to_string()))))
                .collect()
        };
        assert_eq!(fired(&two), fired(&shards));
        assert_eq!(fired(&two).len(), 6, "every timer fired after the moves");
    }

    fn generated(key: &str) -> RequestKey {
        RequestKey { key: key.into(), keyed: false }
    }

    fn keyed(key: &str) -> RequestKey {
        RequestKey { key: key.into(), keyed: true }
    }

    fn waiter(seq: u64) -> Waiter {
        Waiter { shard: ShardId(0), seq }
    }

    fn answers(outputs: &[Output]) -> Vec<(u64, Outcome)> {
        outputs
            .iter()
            .filter_map(|output| match output {
                Output::Answer { waiter, outcome } => Some((waiter.seq, outcome.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn calls_are_answered_only_once_durable() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        let call = Some((waiter(1), Want::Answer));
        shard.request(UnixMillis(0), counter.clone(), text("4"), generated("g1"), call).unwrap();
        shard.run(UnixMillis(0), usize::MAX);
        assert_eq!(shard.poll_output(), None, "nothing leaves before the records are released");
        let (_, outputs) = settle(&mut shard, 0);
        assert_eq!(answers(&outputs), [(1, Outcome::Reply(text("4")))]);
        assert_eq!(shard.requests_len(), 0, "an answered request without a key is forgotten");
        let send = Some((waiter(2), Want::Admission));
        shard.request(UnixMillis(0), counter.clone(), text("1"), generated("g2"), send).unwrap();
        let (_, outputs) = settle(&mut shard, 0);
        assert_eq!(answers(&outputs), [(2, Outcome::Admitted)]);
        assert_eq!(count(&shard, &counter, &COUNT), Some(5));
    }

    #[test]
    fn retries_with_a_key_get_the_first_outcome_and_apply_once() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        shard.request(UnixMillis(0), counter.clone(), text("4"), keyed("k"), Some((waiter(1), Want::Answer))).unwrap();
        let (_, outputs) = settle(&mut shard, 0);
        assert_eq!(answers(&outputs), [(1, Outcome::Reply(text("4")))]);
        for retry in 2..5 {
            shard
                .request(UnixMillis(1), counter.clone(), text("4"), keyed("k"), Some((waiter(retry), Want::Answer)))
                .unwrap();
            let (records, outputs) = settle(&mut shard, 1);
            assert!(records.is_empty(), "a retry commits nothing");
            assert_eq!(answers(&outputs), [(retry, Outcome::Reply(text("4")))]);
        }
        assert_eq!(count(&shard, &counter, &COUNT), Some(4));
        let other = address("test/counter", "b");
        let reused = shard.request(UnixMillis(1), other, text("1"), keyed("k"), Some((waiter(9), Want::Answer)));
        assert!(matches!(reused, Err(Error::IdempotencyKeyReused { .. })));
        // Past the retention the key is forgotten, and a request with it is new again.
        shard.tick(UnixMillis(0).plus(Retention::default().keyed));
        assert_eq!(shard.requests_len(), 0);
    }

    #[test]
    fn failures_answer_the_caller() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        shard.request(UnixMillis(0), counter, text("x"), generated("g"), Some((waiter(1), Want::Answer))).unwrap();
        let (_, outputs) = settle(&mut shard, 0);
        assert_eq!(answers(&outputs), [(1, Outcome::Failed("function test/counter/a failed: not a number".into()))]);
    }

    #[test]
    fn full_mailboxes_refuse_ingress_but_not_peers() {
        let mut shard = Shard::new(ShardId(0), Routing::new(2), registry(), Retention::default());
        let a =
            (0..).map(|n| address("test/counter", &format!("a{n}"))).find(|a| shard.owner_of(a) == ShardId(0)).unwrap();
        for n in 0..limits::mailbox_messages_max {
            shard.request(UnixMillis(0), a.clone(), text("1"), generated(&n.to_string()), None).unwrap();
        }
        let refused = shard.request(UnixMillis(0), a.clone(), text("1"), generated("over"), None);
        assert!(matches!(refused, Err(Error::MailboxFull { .. })));
        let envelope = Envelope { target: a.clone(), caller: None, value: text("1") };
        shard.receive(UnixMillis(0), ShardId(1), 0, envelope);
        assert_eq!(shard.mailbox_len(&a), limits::mailbox_messages_max + 1);
    }

    #[test]
    fn unknown_functions_are_refused() {
        let mut shard = shard();
        let nobody = address("test/nobody", "a");
        let refused = shard.request(UnixMillis(0), nobody, text("1"), generated("g"), None);
        assert_eq!(refused, Err(Error::UnknownFunction(typename("test/nobody"))));
        let sender = |context: &mut Context<'_>, _: &TypedValue| context.send(address("test/nobody", "x"), text("hi"));
        let mut registry = Registry::new();
        registry.register(FunctionSpec::new(typename("test/sender"), sender)).unwrap();
        let mut shard = Shard::new(ShardId(0), Routing::new(1), Arc::new(registry), Retention::default());
        inject(&mut shard, &address("test/sender", "s"), None, "go");
        let (records, _) = settle(&mut shard, 0);
        assert!(invocation(&records[0]).failure.as_ref().unwrap().0.contains("test/nobody"));
    }

    #[test]
    fn an_invocation_cannot_produce_more_than_its_byte_limit() {
        let flood = |context: &mut Context<'_>, _: &TypedValue| {
            let me = context.self_address().clone();
            for _ in 0..5 {
                let value = TypedValue::new(typename("test/blob"), vec![0u8; limits::value_bytes_max]);
                context.send(me.clone(), value)?;
            }
            Ok(())
        };
        let mut registry = Registry::new();
        registry.register(FunctionSpec::new(typename("test/flood"), flood)).unwrap();
        let mut shard = Shard::new(ShardId(0), Routing::new(1), Arc::new(registry), Retention::default());
        inject(&mut shard, &address("test/flood", "f"), None, "go");
        let (records, _) = settle(&mut shard, 0);
        let failure = invocation(&records[0]).failure.clone().unwrap();
        assert!(failure.0.contains("bytes of effects"), "{failure}");
        assert!(invocation(&records[0]).sends.is_empty());
    }

    /// Two shards wired by hand: every output of one is the other's input. Returns each
    /// shard's records.
    fn exchange(shards: &mut [Shard; 2], now: u64) -> [Vec<Record>; 2] {
        let mut records = [Vec::new(), Vec::new()];
        loop {
            let mut moved = false;
            for from in 0..2 {
                let (made, outputs) = settle(&mut shards[from], now);
                records[from].extend(made);
                for output in outputs {
                    let to = 1 - from;
                    let from = ShardId(from as u16);
                    match output {
                        Output::Transmit { seq, envelope, .. } => {
                            shards[to].receive(UnixMillis(now), from, seq, envelope)
                        }
                        Output::Ack { seq, .. } => shards[to].acked(UnixMillis(now), from, seq),
                        _ => continue,
                    }
                    moved = true;
                }
            }
            if !moved {
                return records;
            }
        }
    }

    fn pair() -> [Shard; 2] {
        let routing = Routing::new(2);
        [0, 1].map(|id| Shard::new(ShardId(id), routing, registry(), Retention::default()))
    }

    fn owned_by(shards: &[Shard; 2], shard: u16, function: &str) -> Address {
        (0..).map(|n| address(function, &format!("x{n}"))).find(|a| shards[0].owner_of(a) == ShardId(shard)).unwrap()
    }

    #[test]
    fn messages_cross_shards_exactly_once() {
        let mut shards = pair();
        let forward = owned_by(&shards, 0, "test/forward");
        let target = owned_by(&shards, 1, "test/counter");
        for n in 0..5 {
            let call = Some((waiter(n), Want::Answer));
            let value = TypedValue::new(typename("test/text"), target.id.to_string());
            shards[0].request(UnixMillis(0), forward.clone(), value, generated(&n.to_string()), call).unwrap();
        }
        exchange(&mut shards, 0);
        assert_eq!(count(&shards[1], &target, &COUNT), Some(5));
        assert_eq!(shards[0].outbox_len(ShardId(1)), 0, "all acknowledged");
        // A peer that restarted sends again what it had not seen acknowledged: duplicates are
        // acknowledged and dropped.
        for seq in 0..5 {
            let envelope = Envelope { target: target.clone(), caller: None, value: text("1") };
            shards[1].receive(UnixMillis(0), ShardId(0), seq, envelope);
        }
        let (records, outputs) = settle(&mut shards[1], 0);
        assert!(records.is_empty());
        assert_eq!(outputs.len(), 5);
        assert!(outputs.iter().all(|output| *output == Output::Ack { peer: ShardId(0), seq: 4 }));
        assert_eq!(count(&shards[1], &target, &COUNT), Some(5));
    }

    #[test]
    fn replies_cross_shards_to_the_request() {
        let mut shards = pair();
        let forward = owned_by(&shards, 0, "test/forward");
        let counter = owned_by(&shards, 1, "test/counter");
        // The forwarder replies itself; a counter on the other shard replies to its caller,
        // the forwarder, which ignores it. Then a call straight to the counter from shard 1.
        let value = TypedValue::new(typename("test/text"), counter.id.to_string());
        shards[0].request(UnixMillis(0), forward, value, keyed("k"), Some((waiter(1), Want::Answer))).unwrap();
        let (_, outputs) = settle(&mut shards[0], 0);
        assert_eq!(answers(&outputs), [(1, Outcome::Reply(text("sent")))]);
    }

    /// A workload over two shards: counters, forwards, timers, failures and requests.
    fn workload(shards: &mut [Shard; 2], records: &mut [Vec<Record>; 2]) {
        let mut now = 0;
        for round in 0..40u64 {
            for (index, function) in ["test/counter", "test/forward", "test/timer", "test/log"].iter().enumerate() {
                let shard = (round as usize + index) % 2;
                let target = owned_by(shards, shard as u16, function);
                let body = match *function {
                    "test/forward" => owned_by(shards, 1 - shard as u16, "test/counter").id.to_string(),
                    "test/timer" => format!("rearm {} t", round % 3 * 10),
                    "test/counter" if round % 7 == 0 => "oops".to_string(),
                    _ => round.to_string(),
                };
                let value = TypedValue::new(typename("test/text"), body);
                let key = if round % 2 == 0 {
                    keyed(&format!("{round}-{index}"))
                } else {
                    generated(&format!("{round}-{index}"))
                };
                shards[shard]
                    .request(UnixMillis(now), target, value, key, Some((waiter(round), Want::Answer)))
                    .unwrap();
            }
            now += 7;
            let [first, second] = exchange(shards, now);
            records[0].extend(first);
            records[1].extend(second);
        }
    }

    #[test]
    fn replay_rebuilds_the_same_shard() {
        let mut shards = pair();
        let mut records = [Vec::new(), Vec::new()];
        workload(&mut shards, &mut records);
        assert!(records[0].len() > 100 && records[1].len() > 100);
        for (index, shard) in shards.iter().enumerate() {
            let mut replayed = Shard::new(ShardId(index as u16), Routing::new(2), registry(), Retention::default());
            for record in &records[index] {
                replayed.replay(record);
            }
            assert_eq!(replayed.state(), shard.state());
            assert_eq!(replayed.pending_timers(), shard.pending_timers());
            assert_eq!(replayed.next_timer_at(), shard.next_timer_at());
            assert_eq!(replayed.outbox_len(ShardId(1 - index as u16)), shard.outbox_len(ShardId(1 - index as u16)));
            assert_eq!(replayed.message_next, shard.message_next);
            assert_eq!(replayed.timer_next, shard.timer_next);
            replayed.recovered();
            let keyed_requests = shard.requests.len();
            assert!(replayed.requests_len() <= keyed_requests && replayed.requests_len() > 0);
        }
    }
}
