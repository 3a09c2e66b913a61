//! The example application, served by a plain `statefun serve`:
//!
//! - `example/counter/{id}`: adds the message (an ASCII decimal delta, any type name) to its
//!   `count` and replies with the new total as ASCII decimal text.
//! - `example/chain/{id}`: a message `H` (ASCII decimal) travels `H` hops, from `{id}` to
//!   `{id}+`, `{id}++` and so on (different ids, so usually other shards); the last hop
//!   answers `0`, and each hop relays the answer plus one to whoever asked it, so the caller
//!   gets `H` back. Each hop keeps its askers in a FIFO: replies from the next hop come back
//!   in the order the requests went out.
//! - `example/forward/{id}`: `COUNTER DELTA` sends `DELTA` on to `example/counter/COUNTER`
//!   (usually on another shard) and replies `forwarded`: once the reply is out, the increment
//!   is bound to be applied exactly once.
//! - `example/reminder/{id}`: `remind MS TEXT` schedules `TEXT` in `MS` milliseconds,
//!   replacing a pending reminder (a delayed message with a cancellation token); `cancel`
//!   cancels it; `status` replies with the reminders that fired so far, comma-separated.
//!   Fired reminders are also published to the `example/reminders` egress. `wait MS`
//!   answers `waited` after `MS` milliseconds: a delayed message straight to the caller.

use std::time::Duration;

use statefun_core::{Address, Context, Error, FunctionError, FunctionSpec, Registry, TypeName, TypedValue, ValueSpec};

const COUNT: ValueSpec<i64> = ValueSpec::new("count");
const ASKERS: ValueSpec<String> = ValueSpec::new("askers");
const FIRED: ValueSpec<String> = ValueSpec::new("fired");

/// The token of the one pending reminder of a `example/reminder` address.
const REMINDER_TOKEN: &str = "reminder";

fn typename(name: &str) -> TypeName {
    TypeName::new("example", name).unwrap_or_else(|error| panic!("example type name {name}: {error}"))
}

fn text(name: &str, body: String) -> TypedValue {
    TypedValue::new(typename(name), body)
}

fn number(message: &TypedValue) -> Result<i64, FunctionError> {
    let body = message.as_text()?.trim();
    body.parse().map_err(|_| FunctionError(format!("expected an ASCII decimal number, got {body:?}")))
}

/// Registers the example functions.
pub fn register(registry: &mut Registry) -> Result<(), Error> {
    registry.register(FunctionSpec::new(typename("counter"), counter).with_value(&COUNT))?;
    registry.register(FunctionSpec::new(typename("chain"), chain).with_value(&ASKERS))?;
    registry.register(FunctionSpec::new(typename("reminder"), reminder).with_value(&FIRED))?;
    registry.register(FunctionSpec::new(typename("forward"), forward))?;
    Ok(())
}

/// A registry with just the example application.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    register(&mut registry).unwrap_or_else(|error| panic!("example registration: {error}"));
    registry
}

fn counter(context: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError> {
    let delta = number(message)?;
    let count = context.get(&COUNT)?.unwrap_or(0);
    let count = count.checked_add(delta).ok_or_else(|| FunctionError(format!("{count} + {delta} overflows")))?;
    context.set(&COUNT, &count)?;
    context.reply(text("count", count.to_string()))
}

fn forward(context: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError> {
    let body = message.as_text()?.trim();
    let usage = || FunctionError(format!("expected `COUNTER DELTA`, got {body:?}"));
    let (counter, delta) = body.split_once(' ').ok_or_else(usage)?;
    delta.parse::<i64>().map_err(|_| usage())?;
    let target = Address::new(typename("counter"), counter)?;
    context.send(target, text("delta", delta.to_string()))?;
    context.reply(text("forward", "forwarded".to_string()))
}

/// Askers are kept as `namespace/type` and id pairs, separated by control characters that
/// names cannot contain; an empty entry stands for an asker without an address.
const FIELD_SEPARATOR: char = '\u{1f}';
const ENTRY_SEPARATOR: char = '\u{1e}';

fn chain(context: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError> {
    let me = context.self_address().clone();
    let next = Address::new(me.function.clone(), &format!("{}+", me.id))?;
    let mut askers = context.get(&ASKERS)?.unwrap_or_default();
    if context.caller() == Some(&next) {
        // The next hop answered: relay the answer, plus this hop, to the oldest asker.
        let (asker, rest) = askers.split_once(ENTRY_SEPARATOR).unwrap_or((askers.as_str(), ""));
        let asker = decode_asker(asker)?;
        let rest = rest.to_string();
        if rest.is_empty() {
            context.delete(&ASKERS)?
        } else {
            context.set(&ASKERS, &rest)?
        }
        let answer = number(message)? + 1;
        if let Some(asker) = asker {
            context.send(asker, text("hops", answer.to_string()))?;
        }
        return Ok(());
    }
    let hops = number(message)?;
    if hops <= 0 {
        return context.reply(text("hops", "0".to_string()));
    }
    if !askers.is_empty() {
        askers.push(ENTRY_SEPARATOR);
    }
    if let Some(caller) = context.caller() {
        askers.push_str(&format!("{}{FIELD_SEPARATOR}{}", caller.function, caller.id));
    }
    context.set(&ASKERS, &askers)?;
    context.send(next, text("hops", (hops - 1).to_string()))
}

fn decode_asker(entry: &str) -> Result<Option<Address>, FunctionError> {
    if entry.is_empty() {
        return Ok(None);
    }
    let (function, id) = entry.split_once(FIELD_SEPARATOR).ok_or_else(|| FunctionError::new("corrupt asker entry"))?;
    Ok(Some(Address::new(TypeName::parse(function)?, id)?))
}

fn reminder(context: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError> {
    let body = message.as_text()?.trim().to_string();
    let me = context.self_address().clone();
    let (command, rest) = body.split_once(' ').unwrap_or((body.as_str(), ""));
    match command {
        "remind" => {
            let (millis, reminder) = rest.split_once(' ').unwrap_or((rest, ""));
            let millis: u64 =
                millis.parse().map_err(|_| FunctionError(format!("expected `remind MS TEXT`, got {body:?}")))?;
            context.cancel_delayed(REMINDER_TOKEN)?;
            let fire = text("reminder", format!("fire {reminder}"));
            context.send_after(Duration::from_millis(millis), me, fire, Some(REMINDER_TOKEN))?;
            context.reply(text("reminder", "scheduled".to_string()))
        }
        "cancel" => {
            context.cancel_delayed(REMINDER_TOKEN)?;
            context.reply(text("reminder", "cancelled".to_string()))
        }
        "fire" if context.caller() == Some(&me) => {
            let mut fired = context.get(&FIRED)?.unwrap_or_default();
            if !fired.is_empty() {
                fired.push(',');
            }
            fired.push_str(rest);
            context.set(&FIRED, &fired)?;
            context.egress(typename("reminders"), text("reminder", rest.to_string()))
        }
        "wait" => {
            let millis: u64 = rest.parse().map_err(|_| FunctionError(format!("expected `wait MS`, got {body:?}")))?;
            let Some(caller) = context.caller().cloned() else { return Ok(()) };
            context.send_after(Duration::from_millis(millis), caller, text("reminder", "waited".to_string()), None)
        }
        "status" => {
            let fired = context.get(&FIRED)?.unwrap_or_default();
            context.reply(text("reminder", fired))
        }
        _ => Err(FunctionError(format!("expected `remind MS TEXT`, `cancel`, `status` or `wait MS`, got {body:?}"))),
    }
}
