//! Ingress requests as the shard that owns their target sees them: who waits for what, and
//! the outcomes kept for retries with the same idempotency key.
//!
//! A request is hosted by the shard that owns its target, under the address
//! `statefun.ingress/request/{shard}.{k|g}.{key}` (`k`: the client's idempotency key, `g`:
//! one the node made up). A function that replies to such a caller answers the request, from
//! whichever shard it runs on. The outcome is given to waiters only once the record that
//! produced it is durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::{limits, Address, Error, RequestKey, ShardId, TypeName, TypedValue, UnixMillis};

pub const REQUEST_NAMESPACE: &str = "statefun.ingress";
pub const REQUEST_TYPE: &str = "request";

/// The function type of request addresses.
pub fn request_type() -> TypeName {
    TypeName::new(REQUEST_NAMESPACE, REQUEST_TYPE).unwrap_or_else(|error| panic!("request type: {error}"))
}

/// The address under which functions see a request as their caller.
pub fn request_address(host: ShardId, request: &RequestKey) -> Result<Address, Error> {
    let kind = if request.keyed { 'k' } else { 'g' };
    Address::new(request_type(), &format!("{}.{kind}.{}", host.0, request.key))
}

/// The host shard and key of a request address, or `None` for any other address.
pub fn parse_request_address(address: &Address) -> Option<(ShardId, RequestKey)> {
    if address.function.namespace() != REQUEST_NAMESPACE || address.function.name() != REQUEST_TYPE {
        return None;
    }
    let (shard, rest) = address.id.split_once('.')?;
    let (kind, key) = rest.split_once('.')?;
    let keyed = match kind {
        "k" => true,
        "g" => false,
        _ => return None,
    };
    Some((ShardId(shard.parse().ok()?), RequestKey { key: key.into(), keyed }))
}

/// Someone waiting for a request's outcome: an HTTP exchange on some shard, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Waiter {
    pub shard: ShardId,
    pub seq: u64,
}

/// What a waiter wants to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// That the message is durably in its target's mailbox (`/v1/send`).
    Admission,
    /// The function's answer (`/v1/call`).
    Answer,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Admitted,
    Refused(Error),
    Reply(TypedValue),
    Failed(String),
}

/// A request kept for retries with its key, as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    pub key: Arc<str>,
    pub target: Address,
    /// The function's answer, if it gave one: a reply or a failure.
    pub outcome: Option<StoredOutcome>,
    pub expires_at: UnixMillis,
}

/// The answer a request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredOutcome {
    Reply(TypedValue),
    Failed(String),
}

/// One request hosted by this shard.
#[derive(Debug)]
struct Request {
    target: Address,
    keyed: bool,
    admitted_durable: bool,
    outcome: Option<Outcome>,
    outcome_durable: bool,
    expires_at: UnixMillis,
    waiters: Vec<(Waiter, Want)>,
}

/// The requests a shard hosts. See the module documentation.
#[derive(Debug)]
pub(crate) struct Requests {
    requests: HashMap<Arc<str>, Request>,
    /// Keys by expiry, to purge in order and to evict the oldest at the bound.
    expiry: BTreeMap<(UnixMillis, Arc<str>), ()>,
    retention_keyed: Duration,
    retention_unkeyed: Duration,
}

/// What [`Requests::open`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// A new request: admit its message.
    New,
    /// A retry of a known request: the waiter was added, and may have been answered.
    Known,
}

impl Requests {
    pub fn new(retention_keyed: Duration, retention_unkeyed: Duration) -> Self {
        Requests { requests: HashMap::new(), expiry: BTreeMap::new(), retention_keyed, retention_unkeyed }
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Registers a waiter for `request`. A known key with another target is refused.
    pub fn open(
        &mut self,
        request: &RequestKey,
        target: &Address,
        waiter: Option<(Waiter, Want)>,
        answers: &mut Vec<(Waiter, Outcome)>,
    ) -> Result<Opened, Error> {
        if let Some(known) = self.requests.get_mut(&request.key) {
            if known.target != *target {
                return Err(Error::IdempotencyKeyReused {
                    key: request.key.to_string(),
                    target: known.target.to_string(),
                });
            }
            if let Some(waiter) = waiter {
                known.waiters.push(waiter);
            }
            Self::settle(known, answers);
            return Ok(Opened::Known);
        }
        Ok(Opened::New)
    }

    /// Records that `request`'s message was admitted (live, or on replay).
    pub fn admitted(&mut self, at: UnixMillis, request: &RequestKey, target: &Address) {
        let retention = if request.keyed { self.retention_keyed } else { self.retention_unkeyed };
        let expires_at = at.plus(retention);
        let entry = Request {
            target: target.clone(),
            keyed: request.keyed,
            admitted_durable: false,
            outcome: None,
            outcome_durable: false,
            expires_at,
            waiters: Vec::new(),
        };
        let previous = self.requests.insert(request.key.clone(), entry);
        assert!(previous.is_none(), "request {} admitted twice", request.key);
        self.expiry.insert((expires_at, request.key.clone()), ());
        while self.requests.len() > limits::requests_per_shard_max {
            self.evict_oldest();
        }
    }

    /// Adds a waiter to a request just admitted.
    pub fn add_waiter(&mut self, key: &str, waiter: (Waiter, Want)) {
        if let Some(request) = self.requests.get_mut(key) {
            request.waiters.push(waiter);
        }
    }

    fn evict_oldest(&mut self) {
        let Some(((_, key), ())) = self.expiry.pop_first() else { return };
        self.requests.remove(&key);
    }

    /// Sets the outcome of `key`, if it has none yet: the first answer wins.
    pub fn answer(&mut self, key: &str, outcome: Outcome) {
        if let Some(request) = self.requests.get_mut(key) {
            if request.outcome.is_none() {
                request.outcome = Some(outcome);
            }
        }
    }

    /// The admission of `key` is durable: tell who waits for it.
    pub fn admission_durable(&mut self, key: &str, answers: &mut Vec<(Waiter, Outcome)>) {
        if let Some(request) = self.requests.get_mut(key) {
            request.admitted_durable = true;
            Self::settle(request, answers);
            self.forget_if_done(key);
        }
    }

    /// Whatever outcome `key` has is durable: tell who waits for it.
    pub fn outcome_durable(&mut self, key: &str, answers: &mut Vec<(Waiter, Outcome)>) {
        if let Some(request) = self.requests.get_mut(key) {
            request.outcome_durable = request.outcome.is_some();
            Self::settle(request, answers);
            self.forget_if_done(key);
        }
    }

    fn settle(request: &mut Request, answers: &mut Vec<(Waiter, Outcome)>) {
        request.waiters.retain(|(waiter, want)| {
            let outcome = match want {
                Want::Admission if request.admitted_durable => Some(Outcome::Admitted),
                Want::Answer if request.outcome_durable => request.outcome.clone(),
                _ => None,
            };
            match outcome {
                Some(outcome) => {
                    answers.push((*waiter, outcome));
                    false
                }
                None => true,
            }
        });
    }

    /// A request without a client key is forgotten once nobody waits and its outcome is in.
    fn forget_if_done(&mut self, key: &str) {
        let Some(request) = self.requests.get(key) else { return };
        if !request.keyed && request.waiters.is_empty() && (request.outcome_durable || request.admitted_durable) {
            let expires_at = request.expires_at;
            if let Some((key, _)) = self.requests.remove_entry(key) {
                self.expiry.remove(&(expires_at, key));
            }
        }
    }

    /// Forgets requests past their retention; returns how many.
    pub fn purge(&mut self, now: UnixMillis) -> usize {
        let mut purged = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, key), ()) = entry.remove_entry();
            self.requests.remove(&key);
            purged += 1;
        }
        purged
    }

    /// After recovery nobody waits: requests without a client key are forgotten, and every
    /// recovered outcome is durable.
    pub fn recovered(&mut self) {
        let unkeyed: Vec<(UnixMillis, Arc<str>)> = self
            .requests
            .iter()
            .filter(|(_, request)| !request.keyed)
            .map(|(key, request)| (request.expires_at, key.clone()))
            .collect();
        for (expires_at, key) in unkeyed {
            self.requests.remove(&key);
            self.expiry.remove(&(expires_at, key));
        }
        for request in self.requests.values_mut() {
            request.admitted_durable = true;
            request.outcome_durable = request.outcome.is_some();
            assert!(request.waiters.is_empty());
        }
    }

    /// The keyed requests, in no order: what a checkpoint keeps (nobody waits after a
    /// restart, so requests without a client key are not kept; see [`Requests::recovered`]).
    pub fn stored(&self) -> Vec<StoredRequest> {
        self.requests
            .iter()
            .filter(|(_, request)| request.keyed)
            .map(|(key, request)| StoredRequest {
                key: key.clone(),
                target: request.target.clone(),
                outcome: match &request.outcome {
                    Some(Outcome::Reply(value)) => Some(StoredOutcome::Reply(value.clone())),
                    Some(Outcome::Failed(why)) => Some(StoredOutcome::Failed(why.clone())),
                    Some(Outcome::Refused(error)) => Some(StoredOutcome::Failed(error.to_string())),
                    Some(Outcome::Admitted) | None => None,
                },
                expires_at: request.expires_at,
            })
            .collect()
    }

    /// Puts back the requests of a checkpoint, as recovered (durable, nobody waiting).
    pub fn restore(&mut self, stored: Vec<StoredRequest>) {
        for request in stored {
            let outcome = request.outcome.map(|outcome| match outcome {
                StoredOutcome::Reply(value) => Outcome::Reply(value),
                StoredOutcome::Failed(why) => Outcome::Failed(why),
            });
            let entry = Request {
                target: request.target,
                keyed: true,
                admitted_durable: true,
                outcome_durable: outcome.is_some(),
                outcome,
                expires_at: request.expires_at,
                waiters: Vec::new(),
            };
            self.expiry.insert((request.expires_at, request.key.clone()), ());
            self.requests.insert(request.key, entry);
        }
    }

    /// Drops a waiter that gave up (timeout, client gone).
    pub fn forget_waiter(&mut self, key: &str, waiter: Waiter) {
        if let Some(request) = self.requests.get_mut(key) {
            request.waiters.retain(|(existing, _)| *existing != waiter);
        }
        self.forget_if_done(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_addresses_round_trip() {
        for keyed in [true, false] {
            let request = RequestKey { key: "abc.def-1".into(), keyed };
            let address = request_address(ShardId(7), &request).unwrap();
            assert_eq!(parse_request_address(&address), Some((ShardId(7), request)));
        }
        let other = Address::new(TypeName::parse("example/counter").unwrap(), "7.k.x").unwrap();
        assert_eq!(parse_request_address(&other), None);
    }
}
