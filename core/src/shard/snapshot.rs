//! Checkpoints of a shard's state, taken without stopping it, and the shard rebuilt from one.
//!
//! A shard's state is its [`ShardMeta`] (counters, links, registered remote values, the
//! ingress requests kept for retries) and one [`AddressState`] per address with state: its
//! values, its mailbox and the delayed messages it sent. Every record marks the addresses it
//! changes as *dirty*; a checkpoint captures the dirty addresses (a delta) or all of them (a
//! base) as they were when it began.
//!
//! [`Shard::checkpoint_begin`] copies the meta at once and notes which addresses to capture;
//! [`Shard::checkpoint_step`] then captures a bounded number of them per call while the shard
//! goes on. An address that a record is about to change before its turn is captured first
//! (copy on write), so the checkpoint is the state at the moment it began. Capturing one
//! address copies its values, mailbox and timers: the slice a step takes is bounded by its
//! budget of addresses times their size. The meta is copied in one go: its size is bounded by
//! `requests_per_shard_max` keyed requests and the links' outboxes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Instance, Link, Shard, Timer};
use crate::function::StoredValue;
use crate::record::MessageId;
use crate::requests::StoredRequest;
use crate::{
    Address, Envelope, Registry, Retention, Routing, ShardId, TimerId, TypeName, TypedValue, UnixMillis,
    ValueSpecDescriptor,
};

/// One stored value of an address, with the times its expiration counts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueState {
    pub name: Arc<str>,
    pub value: TypedValue,
    pub written_at: UnixMillis,
    pub called_at: UnixMillis,
}

/// A delayed message waiting on the shard of its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerState {
    pub id: TimerId,
    pub fire_at: UnixMillis,
    pub token: Option<Arc<str>>,
    pub envelope: Envelope,
}

/// Everything a shard holds for one address. All empty: the address has no state (in a
/// delta, it was deleted since the previous checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressState {
    pub address: Address,
    /// Sorted by name.
    pub values: Vec<ValueState>,
    pub mailbox: Vec<(MessageId, Envelope)>,
    /// Sorted by (fire_at, id).
    pub timers: Vec<TimerState>,
}

impl AddressState {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.mailbox.is_empty() && self.timers.is_empty()
    }
}

/// This shard's side of its link with one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub sent_next: u64,
    pub outbox: Vec<(u64, Envelope)>,
    pub received_last: Option<u64>,
}

/// The part of a shard's state that is not any one address's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMeta {
    pub shard: ShardId,
    /// The shard count of the node that wrote it.
    pub shards: u16,
    pub message_next: u64,
    pub timer_next: u64,
    /// One per shard of the node, this one's own included (unused).
    pub links: Vec<LinkState>,
    /// Sorted by type name.
    pub remote_specs: Vec<(TypeName, Vec<ValueSpecDescriptor>)>,
    /// The keyed ingress requests kept for retries, sorted by key.
    pub requests: Vec<StoredRequest>,
}

/// A checkpoint being captured.
#[derive(Debug)]
pub(super) struct Capture {
    /// Addresses still to capture.
    pending: HashSet<Address>,
    states: Vec<AddressState>,
}

/// A checkpoint's identity, to say it is safely stored ([`Shard::checkpoint_stored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointEpoch(u64);

impl Shard {
    /// Starts a checkpoint of the state as it is now: a `full` one of every address, or one
    /// of the addresses changed since the last stored checkpoint. Returns the meta; the
    /// addresses follow from [`Shard::checkpoint_step`].
    pub fn checkpoint_begin(&mut self, full: bool) -> (CheckpointEpoch, ShardMeta) {
        assert!(self.capture.is_none(), "{}: a checkpoint is already being captured", self.id);
        self.epoch += 1;
        let mut pending: HashSet<Address> = self.dirty.keys().cloned().collect();
        if full {
            pending.extend(self.instances.keys().cloned());
            pending.extend(self.owned_timers.keys().cloned());
        }
        self.capture = Some(Capture { pending, states: Vec::new() });
        (CheckpointEpoch(self.epoch), self.meta())
    }

    /// Captures up to `budget` addresses of the checkpoint being taken; once every one is,
    /// returns them sorted by address and ends the capture.
    pub fn checkpoint_step(&mut self, budget: usize) -> Option<Vec<AddressState>> {
        let capture = self.capture.as_mut()?;
        let next: Vec<Address> = capture.pending.iter().take(budget).cloned().collect();
        for address in next {
            self.capture_address(&address);
        }
        if self.capture.as_ref().is_some_and(|capture| !capture.pending.is_empty()) {
            return None;
        }
        let mut states = self.capture.take().map(|capture| capture.states).unwrap_or_default();
        states.sort_by(|a, b| a.address.cmp(&b.address));
        Some(states)
    }

    /// The checkpoint of `epoch` is stored: the addresses it captured are clean, unless they
    /// changed since it began.
    pub fn checkpoint_stored(&mut self, epoch: CheckpointEpoch) {
        self.dirty.retain(|_, dirty_in| *dirty_in >= epoch.0);
    }

    /// Addresses changed since the last stored checkpoint.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Marks `address` as changed by the record being applied; a checkpoint that has not
    /// captured it yet does so first.
    pub(super) fn touch(&mut self, address: &Address) {
        if !self.tracking {
            return;
        }
        if self.capture.as_ref().is_some_and(|capture| capture.pending.contains(address)) {
            self.capture_address(address);
        }
        self.dirty.insert(address.clone(), self.epoch);
    }

    fn capture_address(&mut self, address: &Address) {
        let state = self.address_state(address);
        if let Some(capture) = self.capture.as_mut() {
            if capture.pending.remove(address) {
                capture.states.push(state);
            }
        }
    }

    /// Everything the shard holds for `address`.
    pub fn address_state(&self, address: &Address) -> AddressState {
        let instance = self.instances.get(address);
        let mut values: Vec<ValueState> = instance
            .map(|instance| {
                instance
                    .values
                    .iter()
                    .map(|(name, stored)| ValueState {
                        name: name.clone(),
                        value: stored.value.clone(),
                        written_at: stored.written_at,
                        called_at: stored.called_at,
                    })
                    .collect()
            })
            .unwrap_or_default();
        values.sort_by(|a, b| a.name.cmp(&b.name));
        let mailbox = instance.map(|instance| instance.mailbox.iter().cloned().collect()).unwrap_or_default();
        let timers = self
            .owned_timers
            .get(address)
            .into_iter()
            .flatten()
            .filter_map(|key| {
                let timer = self.timers.get(key)?;
                Some(TimerState {
                    id: key.1,
                    fire_at: key.0,
                    token: timer.token.clone(),
                    envelope: timer.envelope.clone(),
                })
            })
            .collect();
        AddressState { address: address.clone(), values, mailbox, timers }
    }

    fn meta(&self) -> ShardMeta {
        let links = self
            .links
            .iter()
            .map(|link| LinkState {
                sent_next: link.sent_next,
                outbox: link.outbox.iter().map(|(seq, envelope)| (*seq, envelope.clone())).collect(),
                received_last: link.received_last,
            })
            .collect();
        let mut remote_specs: Vec<_> =
            self.remote_specs.iter().map(|(function, specs)| (function.clone(), specs.clone())).collect();
        remote_specs.sort_by(|a, b| a.0.cmp(&b.0));
        ShardMeta {
            shard: self.id,
            shards: self.routing.shards(),
            message_next: self.message_next,
            timer_next: self.timer_next,
            links,
            remote_specs,
            requests: self.requests.stored(),
        }
    }

    /// A shard rebuilt from a checkpoint: its meta and its addresses' states (the records
    /// after the checkpoint are replayed next, then [`Shard::recovered`]).
    pub fn restore(
        meta: ShardMeta,
        states: impl IntoIterator<Item = AddressState>,
        routing: Routing,
        registry: Arc<Registry>,
        retention: Retention,
    ) -> Shard {
        assert_eq!(
            meta.shards,
            routing.shards(),
            "a checkpoint of {} shards restored into {}",
            meta.shards,
            routing.shards()
        );
        let mut shard = Shard::new(meta.shard, routing, registry, retention);
        shard.message_next = meta.message_next;
        shard.timer_next = meta.timer_next;
        for (link, state) in shard.links.iter_mut().zip(meta.links) {
            *link = Link {
                sent_next: state.sent_next,
                outbox: state.outbox.into_iter().collect(),
                received_last: state.received_last,
            };
        }
        shard.remote_specs = meta.remote_specs.into_iter().collect();
        shard.requests.restore(meta.requests);
        for state in states {
            shard.restore_address(state);
        }
        shard
    }

    /// Puts one address's state in place (replacing what it had).
    fn restore_address(&mut self, state: AddressState) {
        let AddressState { address, values, mailbox, timers } = state;
        for timer in timers {
            if let Some(token) = &timer.token {
                let tokens = self.tokens.entry(address.clone()).or_default();
                tokens.insert(token.clone(), (timer.fire_at, timer.id));
            }
            self.owned_timers.entry(address.clone()).or_default().insert((timer.fire_at, timer.id));
            let entry = Timer { owner: address.clone(), token: timer.token, envelope: timer.envelope };
            self.timers.insert((timer.fire_at, timer.id), entry);
        }
        if values.is_empty() && mailbox.is_empty() {
            return;
        }
        let values: HashMap<Arc<str>, StoredValue> = values
            .into_iter()
            .map(|value| {
                let stored =
                    StoredValue { value: value.value, written_at: value.written_at, called_at: value.called_at };
                (value.name, stored)
            })
            .collect();
        let has_mail = !mailbox.is_empty();
        let instance = Instance { values, mailbox: mailbox.into_iter().collect(), busy: false, ready: false };
        self.instances.insert(address.clone(), instance);
        if has_mail {
            self.make_ready(address);
        }
    }
}
