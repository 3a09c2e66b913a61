//! The log's vocabulary: what enters a shard, what an invocation did, where its messages
//! went. One [`Record`] is the unit of commit: the shard applies it at once, and its effects
//! leave the shard only once it is durable.

use std::sync::Arc;

use crate::{Address, FunctionError, ShardId, TypeName, TypedValue, UnixMillis, ValueSpecDescriptor};

/// A message on its way to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub target: Address,
    /// Who sent it: a function, an ingress request (`statefun.ingress/request/...`), or
    /// nobody for a plain ingress message.
    pub caller: Option<Address>,
    pub value: TypedValue,
}

/// The place of a message among all messages that entered this shard's mailboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// A delayed message, numbered by the shard that holds it (the sender's shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub u64);

/// Where a sent message goes, decided when the record is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Into a mailbox of this shard.
    Local(MessageId),
    /// To another shard, as the `seq`-th message of this shard's link to it. It stays in the
    /// outbox until that shard acknowledges it.
    Peer { shard: ShardId, seq: u64 },
    /// The answer to an ingress request held by this shard.
    Request,
}

/// A message and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub envelope: Envelope,
    pub route: Route,
}

/// A change to one named value of the invoked address; `None` deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    pub name: Arc<str>,
    pub value: Option<TypedValue>,
}

/// A change to the delayed messages of the invoked address.
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

/// An ingress request, as a record knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// The client's idempotency key, or one the node made up for a request without.
    pub key: Arc<str>,
    /// Whether the client gave the key: only then is the outcome kept for retries.
    pub keyed: bool,
}

/// What one invocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub address: Address,
    /// The first message consumed: the front of the address's mailbox.
    pub message: MessageId,
    /// How many messages were consumed from the front of the mailbox: one for a native
    /// function, a whole batch for a remote one.
    pub messages: u32,
    /// The caller of a single message (native functions): a failure is reported to it.
    pub caller: Option<Address>,
    pub mutations: Vec<Mutation>,
    pub sends: Vec<Send>,
    pub timers: Vec<TimerOp>,
    pub egress: Vec<Egress>,
    /// A failed invocation carries no effects besides the deletion of expired values.
    pub failure: Option<FunctionError>,
}

/// One entry of a shard's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An ingress message entered the mailbox of its target.
    Admitted { id: MessageId, envelope: Envelope, request: Option<RequestKey> },
    /// The `seq`-th message of `from`'s link to this shard arrived.
    Received { from: ShardId, seq: u64, id: Option<MessageId>, envelope: Envelope },
    /// A function ran.
    Invoked(Invocation),
    /// A delayed message of `owner` came due and was sent.
    Fired { owner: Address, timer: TimerId, fire_at: UnixMillis, send: Send },
    /// `peer` committed this shard's messages up to `seq`.
    Acked { peer: ShardId, seq: u64 },
    /// A remote function declared values (the missing-state handshake): from now on they are
    /// sent with every request to its addresses. Kept in the log so that a restart does not
    /// ask again.
    Registered { function: TypeName, values: Vec<ValueSpecDescriptor> },
}

/// An entry and the time it happened (replay uses the time for expiration bookkeeping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at: UnixMillis,
    pub entry: Entry,
}
