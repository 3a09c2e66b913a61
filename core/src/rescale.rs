//! Moving the state of `M` shards to `N`: every key group goes to its owner under the new
//! routing, as whole checkpoints, while the node is stopped.
//!
//! The input is one full checkpoint per old shard (meta and every address's state, taken
//! after replaying its whole log). The output is one checkpoint per new shard, to start from
//! with an empty log:
//!
//! - every address's values, mailbox and delayed messages go to the owner of its key group;
//! - messages in the old links' outboxes (sent, not yet acknowledged) are delivered: they go
//!   at the end of their target's mailbox, in the order they were sent;
//! - message and timer ids are numbered anew per shard, mailboxes keep their order;
//! - the links start fresh (nothing is in flight between the new shards);
//! - keyed ingress requests move to the owner of their target, and the request addresses in
//!   envelopes (callers waiting for a reply) are rewritten to name the new host. An answer in
//!   an old outbox to a request (a reply on its way to the request's host) is applied to that
//!   request's outcome;
//! - what remote function types registered is the union over the old shards.

use std::collections::BTreeMap;

use crate::record::MessageId;
use crate::requests::{self, StoredOutcome, StoredRequest};
use crate::shard::{AddressState, LinkState, ShardMeta};
use crate::{Address, Envelope, RequestKey, Routing, ShardId, TimerId, TypeName, ValueSpecDescriptor};

/// Checkpoints of the old shards (each complete: its meta and all its addresses), to the
/// checkpoints of `routing.shards()` new shards, in shard order.
pub fn rescale(old: Vec<(ShardMeta, Vec<AddressState>)>, routing: Routing) -> Vec<(ShardMeta, Vec<AddressState>)> {
    let mut addresses: BTreeMap<Address, AddressState> = BTreeMap::new();
    let mut requests: BTreeMap<std::sync::Arc<str>, StoredRequest> = BTreeMap::new();
    let mut remote_specs: BTreeMap<TypeName, Vec<ValueSpecDescriptor>> = BTreeMap::new();
    let mut in_flight: Vec<Envelope> = Vec::new();
    for (meta, states) in old {
        for state in states {
            if !state.is_empty() {
                addresses.insert(state.address.clone(), state);
            }
        }
        for request in meta.requests {
            requests.insert(request.key.clone(), request);
        }
        for (function, specs) in meta.remote_specs {
            let known = remote_specs.entry(function).or_default();
            for spec in specs {
                if !known.iter().any(|existing| existing.name == spec.name) {
                    known.push(spec);
                }
            }
        }
        for link in meta.links {
            in_flight.extend(link.outbox.into_iter().map(|(_, envelope)| envelope));
        }
    }
    for envelope in in_flight {
        match requests::parse_request_address(&envelope.target) {
            Some((_, request)) => {
                if let Some(stored) = requests.get_mut(&request.key) {
                    stored.outcome.get_or_insert(StoredOutcome::Reply(envelope.value));
                }
            }
            None => {
                let target = envelope.target.clone();
                let state = addresses.entry(target.clone()).or_insert_with(|| AddressState {
                    address: target,
                    values: Vec::new(),
                    mailbox: Vec::new(),
                    timers: Vec::new(),
                });
                state.mailbox.push((MessageId(0), envelope));
            }
        }
    }

    // Where each request lives now: with the owner of its target.
    let host_of = |key: &RequestKey, fallback: ShardId| -> ShardId {
        requests.get(&key.key).map_or(fallback, |stored| routing.shard_of(&stored.target))
    };
    let rehost = |address: &Address, fallback: ShardId| -> Address {
        match requests::parse_request_address(address) {
            Some((_, key)) => requests::request_address(host_of(&key, fallback), &key)
                .unwrap_or_else(|error| panic!("a request address that was valid is no longer: {error}")),
            None => address.clone(),
        }
    };

    let shards = routing.shards();
    let mut new: Vec<(ShardMeta, Vec<AddressState>)> = (0..shards)
        .map(|shard| {
            let meta = ShardMeta {
                shard: ShardId(shard),
                shards,
                message_next: 0,
                timer_next: 0,
                links: (0..shards)
                    .map(|_| LinkState { sent_next: 0, outbox: Vec::new(), received_last: None })
                    .collect(),
                remote_specs: remote_specs.iter().map(|(function, specs)| (function.clone(), specs.clone())).collect(),
                requests: Vec::new(),
            };
            (meta, Vec::new())
        })
        .collect();
    for (address, mut state) in addresses {
        let owner = routing.shard_of(&address);
        let (meta, states) = &mut new[usize::from(owner.0)];
        for (id, envelope) in &mut state.mailbox {
            *id = MessageId(meta.message_next);
            meta.message_next += 1;
            envelope.caller = envelope.caller.as_ref().map(|caller| rehost(caller, owner));
        }
        for timer in &mut state.timers {
            timer.id = TimerId(meta.timer_next);
            meta.timer_next += 1;
            timer.envelope.target = rehost(&timer.envelope.target, owner);
            timer.envelope.caller = timer.envelope.caller.as_ref().map(|caller| rehost(caller, owner));
        }
        states.push(state);
    }
    for request in requests.into_values() {
        let owner = routing.shard_of(&request.target);
        new[usize::from(owner.0)].0.requests.push(request);
    }
    new
}
