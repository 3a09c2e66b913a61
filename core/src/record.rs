//! What an invocation consumes and produces: envelopes in, one record of effects out.

use std::sync::Arc;

use crate::{Address, FunctionError, TypeName, TypedValue, UnixMillis};

/// A message on its way to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub target: Address,
    /// Who sent it: a function, an ingress request (see the node's request addresses), or
    /// nobody for a plain ingress message.
    pub caller: Option<Address>,
    pub value: TypedValue,
}

/// A delayed message, numbered by the shard that holds it (the sender's shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub u64);

/// What a record consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A message taken from the mailbox of the record's address.
    Message(Envelope),
    /// A delayed message of the record's address that came due.
    Timer(TimerId),
}

/// A change to one named value of the record's address; `None` deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    pub name: Arc<str>,
    pub value: Option<TypedValue>,
}

/// A change to the delayed messages of the record's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerOp {
    Arm { id: TimerId, fire_at: UnixMillis, token: Option<Arc<str>>, envelope: Envelope },
    Cancel { id: TimerId, token: Arc<str> },
}

/// A value leaving the system through an egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub egress: TypeName,
    pub value: TypedValue,
}

/// The effects of one invocation (or of one delayed message coming due): the unit of commit.
///
/// State mutations and timer changes are applied by the shard at once; the sends and egress
/// leave the shard only after the record is durable (the driver's job). A failed invocation
/// carries its `failure` and no effects besides the deletion of expired values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The time the invocation ran; replay uses it for expiration bookkeeping.
    pub at: UnixMillis,
    pub address: Address,
    pub input: Input,
    pub mutations: Vec<Mutation>,
    pub sends: Vec<Envelope>,
    pub timers: Vec<TimerOp>,
    pub egress: Vec<Egress>,
    pub failure: Option<FunctionError>,
}

impl Record {
    /// The caller of the consumed message, if it had one: where a failure is reported.
    pub fn caller(&self) -> Option<&Address> {
        match &self.input {
            Input::Message(envelope) => envelope.caller.as_ref(),
            Input::Timer(_) => None,
        }
    }
}
