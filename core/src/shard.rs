//! The shard's invocation logic: mailboxes, state, delayed messages, as a state machine.
//!
//! Inputs: [`Shard::admit`] and [`Shard::deliver`] (messages), [`Shard::fire_timers`]
//! (time). Work: [`Shard::run`] for native functions, or [`Shard::begin`] /
//! [`Shard::complete`] for functions whose invocation takes a while (remote functions).
//! Output: [`Shard::poll_record`], one [`Record`] per invocation, in commit order.
//!
//! **An address has at most one invocation in flight, and takes its messages in arrival
//! order.** **A key group's state is touched only by the shard that owns it.**

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::function::{Context, Effects, StoredValue};
use crate::{
    limits, Address, Envelope, Error, FunctionError, Input, Mutation, Record, Registry, Routing, ShardId, TimerId,
    TimerOp, TypedValue, UnixMillis,
};

/// One address's state and queue.
#[derive(Debug, Default)]
struct Instance {
    values: HashMap<Arc<str>, StoredValue>,
    mailbox: VecDeque<Envelope>,
    /// An invocation is in flight: the mailbox waits.
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

/// An invocation handed out by [`Shard::begin`], to be finished with [`Shard::complete`].
#[derive(Debug)]
pub struct Invocation {
    pub at: UnixMillis,
    pub envelope: Envelope,
    /// Values that expired before this invocation; their deletion goes into its record.
    expired: Vec<Arc<str>>,
}

/// The state machine of one shard. See the module documentation.
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    routing: Routing,
    registry: Arc<Registry>,
    instances: HashMap<Address, Instance>,
    ready: VecDeque<Address>,
    timers: BTreeMap<(UnixMillis, TimerId), Timer>,
    /// Pending delayed messages by (sender, cancellation token).
    tokens: HashMap<Address, HashMap<Arc<str>, (UnixMillis, TimerId)>>,
    timer_id_next: u64,
    records: VecDeque<Record>,
}

impl Shard {
    pub fn new(id: ShardId, routing: Routing, registry: Arc<Registry>) -> Shard {
        assert!(id.0 < routing.shards());
        Shard {
            id,
            routing,
            registry,
            instances: HashMap::new(),
            ready: VecDeque::new(),
            timers: BTreeMap::new(),
            tokens: HashMap::new(),
            timer_id_next: 0,
            records: VecDeque::new(),
        }
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn check_target(&self, envelope: &Envelope) -> Result<(), Error> {
        assert_eq!(self.routing.shard_of(&envelope.target), self.id, "{} is not owned by {}", envelope.target, self.id);
        if !self.registry.contains(&envelope.target.function) {
            return Err(Error::UnknownFunction(envelope.target.function.clone()));
        }
        Ok(())
    }

    /// Accepts a message from outside (an ingress), or refuses it when its mailbox is full:
    /// the bound that pushes back to callers.
    pub fn admit(&mut self, envelope: Envelope) -> Result<(), Error> {
        self.check_target(&envelope)?;
        let len = self.instances.get(&envelope.target).map_or(0, |instance| instance.mailbox.len());
        if len >= limits::mailbox_messages_max {
            return Err(Error::MailboxFull { address: envelope.target.to_string(), len });
        }
        self.enqueue(envelope);
        Ok(())
    }

    /// Accepts a message released by a committed record. It is never refused: it is already
    /// part of the history, and refusing it would lose it.
    pub fn deliver(&mut self, envelope: Envelope) -> Result<(), Error> {
        self.check_target(&envelope)?;
        self.enqueue(envelope);
        Ok(())
    }

    fn enqueue(&mut self, envelope: Envelope) {
        let address = envelope.target.clone();
        let instance = self.instances.entry(address.clone()).or_default();
        instance.mailbox.push_back(envelope);
        if !instance.busy && !instance.ready {
            instance.ready = true;
            self.ready.push_back(address);
        }
    }

    /// Takes the next message of the next idle address with mail, and marks the address busy
    /// until [`Shard::complete`]. Values that expired by `now` are removed first.
    pub fn begin(&mut self, now: UnixMillis) -> Option<Invocation> {
        let address = self.ready.pop_front()?;
        let instance = self.instances.get_mut(&address);
        let instance = instance.unwrap_or_else(|| panic!("ready address {address} has no instance"));
        assert!(instance.ready && !instance.busy);
        instance.ready = false;
        instance.busy = true;
        let envelope = instance.mailbox.pop_front().unwrap_or_else(|| panic!("ready address {address} has no mail"));
        let mut expired = Vec::new();
        if let Some(spec) = self.registry.get(&address.function) {
            instance.values.retain(|name, stored| {
                let expiration = spec.value(name).map(|descriptor| descriptor.expiration);
                let keep = !expiration.is_some_and(|expiration| stored.is_expired(expiration, now));
                if !keep {
                    expired.push(name.clone());
                }
                keep
            });
        }
        Some(Invocation { at: now, envelope, expired })
    }

    /// Runs a native function for `invocation` and returns the effects it asked for.
    fn invoke(&self, invocation: &Invocation) -> Result<Effects, FunctionError> {
        let target = &invocation.envelope.target;
        let spec =
            self.registry.get(&target.function).ok_or_else(|| Error::UnknownFunction(target.function.clone()))?;
        let mut context = Context {
            now: invocation.at,
            address: target,
            caller: invocation.envelope.caller.as_ref(),
            spec,
            registry: &self.registry,
            values: self.instances.get(target).map(|instance| &instance.values),
            pending_tokens: self.tokens.get(target),
            effects: Effects::default(),
        };
        spec.function.invoke(&mut context, &invocation.envelope.value)?;
        Ok(context.effects)
    }

    /// Runs up to `budget` invocations of native functions; returns how many ran.
    pub fn run(&mut self, now: UnixMillis, budget: usize) -> usize {
        let mut count = 0;
        while count < budget {
            let Some(invocation) = self.begin(now) else { break };
            let outcome = self.invoke(&invocation);
            self.complete(invocation, outcome);
            count += 1;
        }
        count
    }

    /// Applies the outcome of an invocation: state and timers change at once, and the record
    /// is queued for commit. The address takes its next message after this.
    pub(crate) fn complete(&mut self, invocation: Invocation, outcome: Result<Effects, FunctionError>) {
        let Invocation { at, envelope, expired } = invocation;
        let address = envelope.target.clone();
        let mut record = Record {
            at,
            address: address.clone(),
            input: Input::Message(envelope),
            mutations: expired.into_iter().map(|name| Mutation { name, value: None }).collect(),
            sends: Vec::new(),
            timers: Vec::new(),
            egress: Vec::new(),
            failure: None,
        };
        match outcome {
            Ok(effects) => self.apply(&mut record, effects),
            Err(error) => record.failure = Some(error),
        }
        let instance = self.instances.get_mut(&address);
        let instance = instance.unwrap_or_else(|| panic!("completed address {address} has no instance"));
        assert!(instance.busy);
        instance.busy = false;
        if !instance.mailbox.is_empty() {
            instance.ready = true;
            self.ready.push_back(address.clone());
        } else if instance.is_empty() {
            self.instances.remove(&address);
        }
        self.records.push_back(record);
    }

    fn apply(&mut self, record: &mut Record, effects: Effects) {
        let at = record.at;
        let instance = self.instances.entry(record.address.clone()).or_default();
        for stored in instance.values.values_mut() {
            stored.called_at = at;
        }
        for (name, value) in effects.mutations {
            match &value {
                Some(value) => {
                    let stored = StoredValue { value: value.clone(), written_at: at, called_at: at };
                    instance.values.insert(name.clone(), stored);
                }
                None => {
                    instance.values.remove(&name);
                }
            }
            record.mutations.push(Mutation { name, value });
        }
        for token in effects.cancels {
            let tokens = self.tokens.get_mut(&record.address);
            let pending = tokens.and_then(|tokens| tokens.remove(&token));
            let (fire_at, id) = pending.unwrap_or_else(|| panic!("cancelled token {token:?} is not pending"));
            let removed = self.timers.remove(&(fire_at, id));
            assert!(removed.is_some(), "timer {id:?} of token {token:?} is missing");
            record.timers.push(TimerOp::Cancel { id, token });
        }
        for delayed in effects.delayed {
            let id = TimerId(self.timer_id_next);
            self.timer_id_next += 1;
            if let Some(token) = &delayed.token {
                let previous =
                    self.tokens.entry(record.address.clone()).or_default().insert(token.clone(), (delayed.fire_at, id));
                assert!(previous.is_none(), "token {token:?} armed twice");
            }
            let timer = Timer {
                owner: record.address.clone(),
                token: delayed.token.clone(),
                envelope: delayed.envelope.clone(),
            };
            self.timers.insert((delayed.fire_at, id), timer);
            record.timers.push(TimerOp::Arm {
                id,
                fire_at: delayed.fire_at,
                token: delayed.token,
                envelope: delayed.envelope,
            });
        }
        if self.tokens.get(&record.address).is_some_and(HashMap::is_empty) {
            self.tokens.remove(&record.address);
        }
        record.sends = effects.sends;
        record.egress = effects.egress;
    }

    /// The moment the earliest delayed message comes due.
    pub fn next_timer_at(&self) -> Option<UnixMillis> {
        self.timers.keys().next().map(|(fire_at, _)| *fire_at)
    }

    /// Turns every delayed message due by `now` into a record that sends it.
    pub fn fire_timers(&mut self, now: UnixMillis) -> usize {
        let mut fired = 0;
        while let Some(entry) = self.timers.first_entry() {
            let (fire_at, id) = *entry.key();
            if fire_at > now {
                break;
            }
            let timer = entry.remove();
            if let Some(token) = &timer.token {
                let tokens = self.tokens.get_mut(&timer.owner);
                let removed = tokens.and_then(|tokens| tokens.remove(token));
                assert_eq!(removed, Some((fire_at, id)));
                if self.tokens.get(&timer.owner).is_some_and(HashMap::is_empty) {
                    self.tokens.remove(&timer.owner);
                }
            }
            self.records.push_back(Record {
                at: now,
                address: timer.owner,
                input: Input::Timer(id),
                mutations: Vec::new(),
                sends: vec![timer.envelope],
                timers: Vec::new(),
                egress: Vec::new(),
                failure: None,
            });
            fired += 1;
        }
        fired
    }

    /// The next record to commit, in the order the shard produced them.
    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.pop_front()
    }

    /// Messages waiting for idle addresses: the shard has work to run.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
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
}

#[cfg(test)]
mod tests {
    //! The semantics of one shard, driven by hand: state and expiration, delayed messages and
    //! their cancellation, FIFO per pair, one invocation at a time per address.

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
    /// `idle`) and replies with the new count. `test/log` appends `caller:message` to its log. `test/timer` understands
    /// `arm <ms> <token>`, `cancel <token>`, `rearm <ms> <token>` and, from itself, `fire`.
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
        Arc::new(registry)
    }

    fn shard() -> Shard {
        Shard::new(ShardId(0), Routing::new(1), registry())
    }

    fn message(target: &Address, caller: Option<&Address>, value: &str) -> Envelope {
        Envelope { target: target.clone(), caller: caller.cloned(), value: text(value) }
    }

    /// Runs everything runnable at `now`, delivering local sends after each record, as the
    /// driver does once records are committed. Returns the records.
    fn settle(shard: &mut Shard, now: u64) -> Vec<Record> {
        let mut records = Vec::new();
        loop {
            shard.fire_timers(UnixMillis(now));
            shard.run(UnixMillis(now), usize::MAX);
            let mut progressed = false;
            while let Some(record) = shard.poll_record() {
                for send in &record.sends {
                    if shard.registry().contains(&send.target.function) {
                        shard.deliver(send.clone()).unwrap();
                    }
                }
                records.push(record);
                progressed = true;
            }
            if !progressed {
                return records;
            }
        }
    }

    fn count(shard: &Shard, target: &Address, spec: &ValueSpec<i64>) -> Option<i64> {
        shard.value(target, spec.name()).map(|value| value.decode::<i64>().unwrap())
    }

    #[test]
    fn state_accumulates_and_replies_go_to_the_caller() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        let caller = address("test/log", "c");
        shard.admit(message(&counter, Some(&caller), "2")).unwrap();
        shard.admit(message(&counter, Some(&caller), "3")).unwrap();
        let records = settle(&mut shard, 0);
        assert_eq!(count(&shard, &counter, &COUNT), Some(5));
        let log = shard.value(&caller, "log").unwrap().decode::<String>().unwrap();
        assert_eq!(log, "a:2;a:5;");
        assert_eq!(records.len(), 4, "two counter invocations, two log invocations");
    }

    #[test]
    fn failed_invocations_apply_nothing_and_keep_the_failure() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        shard.admit(message(&counter, None, "1")).unwrap();
        shard.admit(message(&counter, None, "x")).unwrap();
        let records = settle(&mut shard, 0);
        assert_eq!(count(&shard, &counter, &COUNT), Some(1));
        assert_eq!(records[1].failure, Some(FunctionError::new("not a number")));
        assert!(records[1].mutations.is_empty() && records[1].sends.is_empty());
    }

    #[test]
    fn values_expire_after_write_and_after_call() {
        let mut shard = shard();
        let counter = address("test/counter", "a");
        let deleted = |record: &Record| -> Vec<String> {
            record
                .mutations
                .iter()
                .filter(|mutation| mutation.value.is_none())
                .map(|mutation| mutation.name.to_string())
                .collect()
        };
        shard.admit(message(&counter, None, "1")).unwrap();
        settle(&mut shard, 1_000);
        // A zero delta writes only `count`: it is a call that touches the other values.
        shard.admit(message(&counter, None, "0")).unwrap();
        settle(&mut shard, 1_060);
        assert_eq!(count(&shard, &counter, &SHORT), Some(1));
        shard.admit(message(&counter, None, "0")).unwrap();
        let records = settle(&mut shard, 1_120);
        assert_eq!(count(&shard, &counter, &SHORT), None, "written at 1000 with a 100 ms life");
        assert_eq!(count(&shard, &counter, &IDLE), Some(1), "called at 1060, alive until 1160");
        assert_eq!(deleted(&records[0]), ["short"]);
        shard.admit(message(&counter, None, "5")).unwrap();
        let records = settle(&mut shard, 1_300);
        assert_eq!(deleted(&records[0]), ["idle"]);
        assert_eq!(count(&shard, &counter, &IDLE), Some(5), "expired, then started again");
        assert_eq!(count(&shard, &counter, &SHORT), Some(5));
        assert_eq!(count(&shard, &counter, &COUNT), Some(6), "values without expiration stay");
    }

    #[test]
    fn delayed_messages_fire_on_time_and_cancel() {
        let mut shard = shard();
        let timer = address("test/timer", "t");
        shard.admit(message(&timer, None, "arm 100 a")).unwrap();
        shard.admit(message(&timer, None, "arm 200 b")).unwrap();
        shard.admit(message(&timer, None, "arm 300 c")).unwrap();
        shard.admit(message(&timer, None, "cancel b")).unwrap();
        settle(&mut shard, 0);
        assert_eq!(shard.pending_timers(), 2);
        assert_eq!(shard.next_timer_at(), Some(UnixMillis(100)));
        settle(&mut shard, 99);
        assert_eq!(shard.value(&timer, "log"), None, "nothing fires early");
        settle(&mut shard, 250);
        assert_eq!(shard.value(&timer, "log").unwrap().decode::<String>().unwrap(), "a");
        settle(&mut shard, 1_000);
        assert_eq!(shard.value(&timer, "log").unwrap().decode::<String>().unwrap(), "ac", "b was cancelled");
        assert_eq!(shard.pending_timers(), 0);
        assert!(shard.tokens.is_empty(), "fired tokens are released");
    }

    #[test]
    fn a_pending_token_cannot_be_reused_but_can_be_rearmed() {
        let mut shard = shard();
        let timer = address("test/timer", "t");
        shard.admit(message(&timer, None, "arm 100 a")).unwrap();
        shard.admit(message(&timer, None, "arm 100 a")).unwrap();
        shard.admit(message(&timer, None, "rearm 500 a")).unwrap();
        let records = settle(&mut shard, 0);
        assert!(records[1].failure.as_ref().unwrap().0.contains("already used"));
        assert!(records[2].failure.is_none());
        assert_eq!(shard.pending_timers(), 1);
        settle(&mut shard, 200);
        assert_eq!(shard.value(&timer, "log"), None, "the first arming was cancelled");
        settle(&mut shard, 500);
        assert_eq!(shard.value(&timer, "log").unwrap().decode::<String>().unwrap(), "a");
        shard.admit(message(&timer, None, "cancel a")).unwrap();
        let records = settle(&mut shard, 600);
        assert!(records[0].failure.is_none() && records[0].timers.is_empty(), "cancelling a fired token is a no-op");
    }

    #[test]
    fn messages_between_a_pair_arrive_in_order() {
        let mut shard = shard();
        let log = address("test/log", "l");
        let senders: Vec<Address> = (0..4).map(|i| address("test/log", &format!("s{i}"))).collect();
        for round in 0..50 {
            for sender in &senders {
                shard.admit(message(&log, Some(sender), &round.to_string())).unwrap();
            }
        }
        settle(&mut shard, 0);
        let log = shard.value(&log, "log").unwrap().decode::<String>().unwrap();
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
        shard.admit(message(&a, None, "1")).unwrap();
        shard.admit(message(&a, None, "2")).unwrap();
        shard.admit(message(&b, None, "3")).unwrap();
        let first = shard.begin(UnixMillis(0)).unwrap();
        assert_eq!(first.envelope.target, a);
        let second = shard.begin(UnixMillis(0)).unwrap();
        assert_eq!(second.envelope.target, b, "a is busy: its second message waits");
        assert!(shard.begin(UnixMillis(0)).is_none());
        assert_eq!(shard.mailbox_len(&a), 1);
        shard.complete(first, Ok(Effects::default()));
        let third = shard.begin(UnixMillis(0)).unwrap();
        assert_eq!((third.envelope.target.clone(), third.envelope.value.clone()), (a, text("2")));
        shard.complete(second, Ok(Effects::default()));
        shard.complete(third, Ok(Effects::default()));
        assert!(!shard.has_ready());
    }

    #[test]
    fn full_mailboxes_refuse_ingress_but_not_committed_messages() {
        let mut shard = shard();
        let a = address("test/counter", "a");
        for _ in 0..limits::mailbox_messages_max {
            shard.admit(message(&a, None, "1")).unwrap();
        }
        assert!(matches!(shard.admit(message(&a, None, "1")), Err(Error::MailboxFull { .. })));
        shard.deliver(message(&a, None, "1")).unwrap();
        assert_eq!(shard.mailbox_len(&a), limits::mailbox_messages_max + 1);
    }

    #[test]
    fn unknown_functions_are_refused() {
        let mut shard = shard();
        let nobody = address("test/nobody", "a");
        assert_eq!(shard.admit(message(&nobody, None, "1")), Err(Error::UnknownFunction(typename("test/nobody"))));
        let sender = |context: &mut Context<'_>, _: &TypedValue| context.send(address("test/nobody", "x"), text("hi"));
        let mut registry = Registry::new();
        registry.register(FunctionSpec::new(typename("test/sender"), sender)).unwrap();
        let mut shard = Shard::new(ShardId(0), Routing::new(1), Arc::new(registry));
        shard.admit(message(&address("test/sender", "s"), None, "go")).unwrap();
        let records = settle(&mut shard, 0);
        assert!(records[0].failure.as_ref().unwrap().0.contains("test/nobody"));
    }
}
