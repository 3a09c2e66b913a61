//! statefun: stateful functions on a thread-per-core server.
//!
//! This crate is the node: shards wired to the network and (soon) storage, the HTTP
//! ingress, the example application and the `statefun` command line. Embed it to serve your
//! own native functions:
//!
//! ```no_run
//! use statefun::core::{Context, FunctionError, FunctionSpec, Registry, TypeName, TypedValue, ValueSpec};
//!
//! const SEEN: ValueSpec<i64> = ValueSpec::new("seen");
//!
//! fn greeter(context: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError> {
//!     let seen = context.get(&SEEN)?.unwrap_or(0) + 1;
//!     context.set(&SEEN, &seen)?;
//!     let greeting = format!("hello {} for the {seen}. time", message.as_text()?);
//!     context.reply(TypedValue::new(TypeName::parse("greeter/text")?, greeting))
//! }
//!
//! # fn main() -> anyhow::Result<()> {
//! let mut registry = Registry::new();
//! registry.register(FunctionSpec::new(TypeName::parse("greeter/greet")?, greeter).with_value(&SEEN))?;
//! statefun::Node::start(statefun::Config::embedded_default(), registry)?.wait()
//! # }
//! ```

#![forbid(unsafe_code)]

mod egress;
pub mod examples;
mod ingress;
pub mod limits;
mod metrics;
pub mod module;
mod native;
mod node;
mod playground;
mod remote;
mod rescale;
mod rt;
pub mod shard;
pub mod snapshots;

pub use node::{Config, Durability, Node};
pub use statefun_core as core;
