//! The stateful-functions model and the shard's invocation logic.
//!
//! **`core` does no I/O, reads no clock and spawns no task.** Time arrives as an argument
//! ([`UnixMillis`]), effects leave as [`Record`]s. The node (root package) is the thin driver
//! that runs this state machine on a glommio executor; the log (`storage`) will persist its
//! records; the network (`net`) will carry its envelopes.
//!
//! The path of one message through this crate:
//! [`Shard::request`] admits an ingress message into its target's mailbox, [`Shard::run`]
//! invokes the target's [`StatefulFunction`] with a [`Context`] that collects every effect,
//! [`Shard::poll_record`] hands out the invocation's [`Record`] for the driver to commit, and
//! after the commit [`Shard::released`] and [`Shard::poll_output`] let its effects go.

#![forbid(unsafe_code)]

mod address;
mod error;
mod function;
pub mod limits;
pub mod protocol;
mod record;
pub mod requests;
pub mod rescale;
mod shard;
mod time;
pub mod types;
mod value;

pub use address::{Address, KeyGroup, Routing, ShardId, TypeName};
pub use error::{Error, FunctionError};
pub use function::{
    Context, Expiration, FunctionSpec, Registry, RemoteBinding, StatefulFunction, ValueSpec, ValueSpecDescriptor,
};
pub use record::{
    Egress, Entry, Envelope, Invocation, MessageId, Mutation, Record, RequestKey, Route, Send, TimerId, TimerOp,
};
pub use requests::{Outcome, StoredOutcome, StoredRequest, Waiter, Want};
pub use shard::{
    sort_run, AddressState, Batch, Completion, LinkState, Output, Pending, Retention, Shard, ShardMeta, TimerState,
    ValueState,
};
pub use time::UnixMillis;
pub use value::{TypedValue, ValueType};
