//! The stateful-functions model and the shard's invocation logic.
//!
//! **`core` does no I/O, reads no clock and spawns no task.** Time arrives as an argument
//! ([`UnixMillis`]), effects leave as [`Record`]s. The node (root package) is the thin driver
//! that runs this state machine on a glommio executor; the log (`storage`) will persist its
//! records; the network (`net`) will carry its envelopes.
//!
//! The path of one message through this crate:
//! [`Shard::deliver`] puts an [`Envelope`] into its target's mailbox, [`Shard::run`] invokes
//! the target's [`StatefulFunction`] with a [`Context`] that collects every effect, and
//! [`Shard::poll_record`] hands out the invocation's [`Record`] for the driver to commit and
//! then release.

#![forbid(unsafe_code)]

mod address;
mod error;
mod function;
pub mod limits;
mod record;
mod shard;
mod time;
pub mod types;
mod value;

pub use address::{Address, KeyGroup, Routing, ShardId, TypeName};
pub use error::{Error, FunctionError};
pub use function::{Context, Expiration, FunctionSpec, Registry, StatefulFunction, ValueSpec, ValueSpecDescriptor};
pub use record::{Egress, Envelope, Input, Mutation, Record, TimerId, TimerOp};
pub use shard::Shard;
pub use time::UnixMillis;
pub use value::{TypedValue, ValueType};
