//! Checkpoints of a shard's state, taken without stopping it, and the shard rebuilt from one.
//!
//! A shard's state is its [`ShardMeta`] (counters, links, registered remote values, the
//! ingress requests kept for retries) and one [`AddressState`] per address with state: its
//! values, its mailbox and the delayed messages it sent. Every record marks the addresses it
//! changes as *dirty*; a checkpoint captures the dirty addresses, as they were when it began:
//! a delta of what changed since the previous checkpoint. (Folding deltas into a base is the
//! node's work, off the shard; the first checkpoint of a shard holds every address, all of
//! them dirty since they were made or replayed.)
//!
//! [`Shard::checkpoint_begin`] takes the dirty set over (a move, not a copy) and copies the
//! meta; [`Shard::checkpoint_step`] then captures a bounded number of addresses per call while
//! the shard goes on. An address that a record is about to change before its turn is captured
//! first (copy on write), so the checkpoint is the state at the moment it began. Capturing
//! one address copies its values, mailbox and timers: a step's pause is bounded by its budget
//! of addresses times their size. The meta is copied at the beginning: its size is bounded by
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
    /// The keyed ingress requests kept for retries (in no order; [`sort_run`] sorts them).
    pub requests: Vec<StoredRequest>,
}

/// Addresses changed since the last checkpoint: a set to look up, and a list to walk in
/// bounded steps.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    set: HashSet<Address>,
    /// Emptied entry by entry as a capture walks it, so that no step frees the whole list.
    list: Vec<Option<Address>>,
}

impl Dirty {
    fn insert(&mut self, address: &Address) {
        if self.set.insert(address.clone()) {
            self.list.push(Some(address.clone()));
        }
    }
}

/// A checkpoint being captured.
#[derive(Debug)]
pub(super) struct Capture {
    /// Addresses dirty when it began; `pending.set` holds those not captured yet.
    pending: Dirty,
    /// How far `checkpoint_step` walked `pending.list`.
    cursor: usize,
    states: Vec<AddressState>,
}

/// Puts a captured checkpoint in the order its files want: states by address, requests by
/// key. It takes time in proportion to the checkpoint, so it runs off the shard.
pub fn sort_run(meta: &mut ShardMeta, states: &mut [AddressState]) {
    states.sort_unstable_by(|a, b| a.address.cmp(&b.address));
    meta.requests.sort_unstable_by(|a, b| a.key.cmp(&b.key));
}

impl Shard {
    /// Starts a checkpoint of the addresses changed since the previous one, as they are now.
    /// Returns the meta; the addresses follow from [`Shard::checkpoint_step`]. If the
    /// checkpoint cannot be stored, [`Shard::checkpoint_failed`] hands its addresses back.
    pub fn checkpoint_begin(&mut self) -> ShardMeta {
        assert!(self.capture.is_none(), "{}: a checkpoint is already being captured", self.id);
        let pending = std::mem::take(&mut self.dirty);
        self.capture = Some(Capture { pending, cursor: 0, states: Vec::new() });
        self.meta()
    }

    /// Captures up to `budget` addresses of the checkpoint being taken; once every one is,
    /// returns them (in no order: sorting a large run is for the caller to do off the shard,
    /// [`sort_run`]) and ends the capture.
    pub fn checkpoint_step(&mut self, budget: usize) -> Option<Vec<AddressState>> {
        let mut taken = 0;
        loop {
            let capture = self.capture.as_mut()?;
            let Some(entry) = capture.pending.list.get_mut(capture.cursor) else { break };
            let Some(address) = entry.take() else { break };
            capture.cursor += 1;
            if capture.pending.set.contains(&address) {
                self.capture_address(&address);
                taken += 1;
                if taken == budget {
                    return None;
                }
            }
        }
        self.capture.take().map(|capture| capture.states)
    }

    /// A checkpoint of these addresses could not be stored: they count as changed again, for
    /// the next one.
    pub fn checkpoint_failed(&mut self, addresses: &[Address]) {
        for address in addresses {
            self.dirty.insert(address);
        }
    }

    /// Every address's state and the meta, at once: for moving state between layouts while
    /// the node is stopped (it takes time in proportion to the state).
    pub fn full_state(&self) -> (ShardMeta, Vec<AddressState>) {
        let mut addresses: Vec<&Address> = self.instances.keys().chain(self.owned_timers.keys()).collect();
        addresses.sort();
        addresses.dedup();
        let states = addresses.into_iter().map(|address| self.address_state(address)).collect();
        let mut meta = self.meta();
        sort_run(&mut meta, &mut []);
        (meta, states)
    }

    /// Addresses changed since the last checkpoint began.
    pub fn dirty_len(&self) -> usize {
        self.dirty.set.len()
    }

    /// Marks `address` as changed by the record being applied; a checkpoint that has not
    /// captured it yet does so first.
    pub(super) fn touch(&mut self, address: &Address) {
        if !self.tracking {
            return;
        }
        if self.capture.as_ref().is_some_and(|capture| capture.pending.set.contains(address)) {
            self.capture_address(address);
        }
        self.dirty.insert(address);
    }

    fn capture_address(&mut self, address: &Address) {
        let state = self.address_state(address);
        if let Some(capture) = self.capture.as_mut() {
            if capture.pending.set.remove(address) {
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
