//! The example application, served by a plain `statefun serve`:
//!
//! - `example/counter/{id}`: adds the message (an ASCII decimal delta, any type name) to its
//!   `count` and replies with the new total as ASCII decimal text.
//! - `example/chain/{id}`: a message `H` (ASCII decimal) travels `H` hops, from `{id}` to
//!   `{id}+`, `{id}++` and so on (different ids, so usually other shards); the last hop
//!   answers `0`, and each hop relays the answer plus one to whoever asked it, so the caller
//!   gets `H` back. Each hop keeps its askers in a FIFO: replies from the next hop come back
//!   in the order the requests went out.
//! - `example/fanout/{id}`: a message `N` (ASCII decimal, 0 to 4096) sends `1` to the `N`
//!   counters `example/counter/{id}.0` to `example/counter/{id}.{N-1}` (different ids, so
//!   spread over the shards) and answers `N` once all of them have replied. Its values keep
//!   the fan-outs still waiting, in the order they were asked, and how many of them each
//!   counter has answered: a counter answers in the order it was asked, so its next reply
//!   belongs to the first waiting fan-out that includes it and that it has not answered yet.
//!   Concurrent callers of one id, with any mix of `N`, each get their own answer.
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
const FANOUTS: ValueSpec<String> = ValueSpec::new("fanouts");
const ANSWERED: ValueSpec<String> = ValueSpec::new("answered");
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
    registry.register(FunctionSpec::new(typename("fanout"), fanout).with_value(&FANOUTS).with_value(&ANSWERED))?;
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
        set_or_delete(context, &ASKERS, rest)?;
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
    askers.push_str(&encode_asker(context.caller()));
    context.set(&ASKERS, &askers)?;
    context.send(next, text("hops", (hops - 1).to_string()))
}

/// An asker as kept in state: `namespace/type` and id, or empty for none.
fn encode_asker(asker: Option<&Address>) -> String {
    asker.map_or_else(String::new, |asker| format!("{}{FIELD_SEPARATOR}{}", asker.function, asker.id))
}

fn decode_asker(entry: &str) -> Result<Option<Address>, FunctionError> {
    if entry.is_empty() {
        return Ok(None);
    }
    let (function, id) = entry.split_once(FIELD_SEPARATOR).ok_or_else(|| FunctionError::new("corrupt asker entry"))?;
    Ok(Some(Address::new(TypeName::parse(function)?, id)?))
}

/// Stores a text value, or deletes it when empty: an idle address keeps no state.
fn set_or_delete(context: &mut Context<'_>, spec: &ValueSpec<String>, value: String) -> Result<(), FunctionError> {
    if value.is_empty() {
        context.delete(spec)
    } else {
        context.set(spec, &value)
    }
}

fn fanout(context: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError> {
    let me = context.self_address().clone();
    let mut fanouts =
        Fanouts::decode(&context.get(&FANOUTS)?.unwrap_or_default(), &context.get(&ANSWERED)?.unwrap_or_default())?;
    let counter = typename("counter");
    if let Some(caller) = context.caller().filter(|caller| caller.function == counter) {
        // A counter's reply: it may complete one waiting fan-out, not necessarily the oldest.
        let index = caller
            .id
            .strip_prefix(&*me.id)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|index| index.parse().ok())
            .ok_or_else(|| FunctionError(format!("{me} does not fan out to {caller}")))?;
        if let Some((width, asker)) = fanouts.answer(index)? {
            if let Some(asker) = decode_asker(&asker)? {
                context.send(asker, text("fanout", width.to_string()))?;
            }
        }
    } else {
        let width = number(message)?;
        let max = statefun_core::limits::effects_per_invocation_max;
        let width = usize::try_from(width)
            .ok()
            .filter(|&width| width <= max)
            .ok_or_else(|| FunctionError(format!("expected a fan-out of 0 to {max}, got {width}")))?;
        if width == 0 {
            return context.reply(text("fanout", "0".to_string()));
        }
        for index in 0..width {
            let target = Address::new(counter.clone(), &format!("{}.{index}", me.id))?;
            context.send(target, text("delta", "1".to_string()))?;
        }
        fanouts.ask(width, encode_asker(context.caller()));
    }
    let (waiting, answered) = fanouts.encode();
    set_or_delete(context, &FANOUTS, waiting)?;
    set_or_delete(context, &ANSWERED, answered)
}

/// The fan-outs of one `example/fanout` address that wait for their counters.
///
/// Counter `i` gets the fan-outs of width above `i`, in the order they were asked, and
/// answers them in that order. So `answered[i]` replies from counter `i` have gone to the
/// first `answered[i]` waiting fan-outs of width above `i`, and its next reply is for the one
/// after them. A completed fan-out leaves the list, and each counter's count drops by the
/// one reply it had given it. The list is as long as the fan-outs whose messages or replies
/// are still on their way: bounded as the mailboxes they travel through are.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fanouts {
    /// In the order asked.
    waiting: Vec<Fanout>,
    /// Indexed by counter, as long as the widest waiting fan-out.
    answered: Vec<usize>,
}

#[derive(Debug, PartialEq, Eq)]
struct Fanout {
    width: usize,
    /// Counters that have not answered yet.
    remaining: usize,
    /// The encoded asker (`encode_asker`).
    asker: String,
}

impl Fanouts {
    /// Reads the two values: fan-outs as `width remaining asker` entries, and the counts of
    /// answers as comma-separated numbers.
    fn decode(waiting: &str, answered: &str) -> Result<Fanouts, FunctionError> {
        let corrupt = || FunctionError::new("corrupt fan-out state");
        let number = |text: &str| text.parse::<usize>().map_err(|_| corrupt());
        let waiting = waiting
            .split(ENTRY_SEPARATOR)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let mut fields = entry.splitn(3, FIELD_SEPARATOR);
                let (width, remaining, asker) = (fields.next(), fields.next(), fields.next());
                let (Some(width), Some(remaining), Some(asker)) = (width, remaining, asker) else {
                    return Err(corrupt());
                };
                let (width, remaining) = (number(width)?, number(remaining)?);
                if remaining == 0 || remaining > width {
                    return Err(corrupt());
                }
                Ok(Fanout { width, remaining, asker: asker.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let answered: Vec<usize> =
            answered.split(',').filter(|count| !count.is_empty()).map(number).collect::<Result<_, _>>()?;
        let widest = waiting.iter().map(|fanout: &Fanout| fanout.width).max().unwrap_or(0);
        if answered.len() != widest {
            return Err(corrupt());
        }
        Ok(Fanouts { waiting, answered })
    }

    fn encode(&self) -> (String, String) {
        let waiting: Vec<String> = self
            .waiting
            .iter()
            .map(|fanout| {
                format!("{}{FIELD_SEPARATOR}{}{FIELD_SEPARATOR}{}", fanout.width, fanout.remaining, fanout.asker)
            })
            .collect();
        let answered: Vec<String> = self.answered.iter().map(usize::to_string).collect();
        (waiting.join(&ENTRY_SEPARATOR.to_string()), answered.join(","))
    }

    /// A new fan-out to counters `0..width`, after the waiting ones.
    fn ask(&mut self, width: usize, asker: String) {
        self.waiting.push(Fanout { width, remaining: width, asker });
        if self.answered.len() < width {
            self.answered.resize(width, 0);
        }
    }

    /// Counter `index` answered: returns the width and asker of the fan-out this completes.
    fn answer(&mut self, index: usize) -> Result<Option<(usize, String)>, FunctionError> {
        let unexpected = || FunctionError(format!("an answer from counter {index} that no fan-out waits for"));
        let answered = *self.answered.get(index).ok_or_else(unexpected)?;
        let (position, fanout) = self
            .waiting
            .iter_mut()
            .enumerate()
            .filter(|(_, fanout)| fanout.width > index)
            .nth(answered)
            .ok_or_else(unexpected)?;
        fanout.remaining -= 1;
        self.answered[index] += 1;
        if fanout.remaining > 0 {
            return Ok(None);
        }
        // Each counter of the completed fan-out gave it one of its replies.
        let done = self.waiting.remove(position);
        for count in &mut self.answered[..done.width] {
            *count = count.checked_sub(1).ok_or_else(|| FunctionError::new("corrupt fan-out state"))?;
        }
        let widest = self.waiting.iter().map(|fanout| fanout.width).max().unwrap_or(0);
        self.answered.truncate(widest);
        Ok(Some((done.width, done.asker)))
    }
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

#[cfg(test)]
mod tests {
    //! The fan-out bookkeeping on its own: interleavings of counter replies that keep each
    //! counter's order, checked against which fan-out each reply belongs to, with the state
    //! written out and read back between steps as the function does.

    use super::*;

    /// The state after a round trip through its two values.
    fn stored(fanouts: &Fanouts) -> Fanouts {
        let (waiting, answered) = fanouts.encode();
        Fanouts::decode(&waiting, &answered).unwrap()
    }

    #[test]
    fn replies_complete_the_fanout_they_belong_to_in_any_interleaving() {
        let mut fanouts = Fanouts::default();
        fanouts.ask(3, "a".into());
        fanouts.ask(1, "b".into());
        fanouts.ask(2, "c".into());
        // Counter 0 serves a, b, c; counter 1 serves a, c; counter 2 serves a.
        let steps = [(0, None), (0, Some((1, "b"))), (1, None), (1, None), (0, Some((2, "c"))), (2, Some((3, "a")))];
        for (counter, expected) in steps {
            fanouts = stored(&fanouts);
            let done = fanouts.answer(counter).unwrap();
            assert_eq!(done, expected.map(|(width, asker)| (width, asker.to_string())), "counter {counter}");
        }
        assert_eq!(fanouts, Fanouts::default());
        assert_eq!(fanouts.encode(), (String::new(), String::new()), "an idle fan-out keeps no state");
    }

    #[test]
    fn random_interleavings_match_a_model_of_per_counter_queues() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        let counters = 6;
        let fanouts_per_round = 12;
        for round in 0..200 {
            let mut fanouts = Fanouts::default();
            // The model: each counter's queue of the fan-outs it has yet to answer, in the
            // order they were asked; each fan-out's width and the answers it still needs.
            let mut queues: Vec<Vec<usize>> = vec![Vec::new(); counters];
            let (mut widths, mut remaining) = (Vec::new(), Vec::new());
            let mut completed = 0;
            while completed < fanouts_per_round {
                let busy: Vec<usize> = (0..counters).filter(|&counter| !queues[counter].is_empty()).collect();
                let asked = widths.len();
                if asked < fanouts_per_round && (busy.is_empty() || random(3) == 0) {
                    let width = 1 + random(counters);
                    fanouts.ask(width, asked.to_string());
                    for queue in &mut queues[..width] {
                        queue.push(asked);
                    }
                    widths.push(width);
                    remaining.push(width);
                    continue;
                }
                let counter = busy[random(busy.len())];
                let owner = queues[counter].remove(0);
                remaining[owner] -= 1;
                fanouts = stored(&fanouts);
                let done = fanouts.answer(counter).unwrap();
                let expected = (remaining[owner] == 0).then(|| (widths[owner], owner.to_string()));
                assert_eq!(done, expected, "round {round}, counter {counter}");
                completed += usize::from(done.is_some());
            }
            assert_eq!(fanouts, Fanouts::default(), "round {round}");
        }
    }

    #[test]
    fn replies_nobody_waits_for_and_corrupt_state_are_errors() {
        let mut fanouts = Fanouts::default();
        assert!(fanouts.answer(0).is_err(), "nothing waits");
        fanouts.ask(1, String::new());
        assert!(fanouts.answer(1).is_err(), "counter 1 was not asked");
        assert_eq!(fanouts.answer(0).unwrap(), Some((1, String::new())));
        assert!(fanouts.answer(0).is_err(), "counter 0 answered its one question already");

        let entry = |fields: &[&str]| fields.join(&FIELD_SEPARATOR.to_string());
        for (waiting, answered) in [
            (entry(&["2", "1", ""]), "1"),
            (entry(&["2", "0", ""]), "0,0"),
            (entry(&["2", "3", ""]), "0,0"),
            (entry(&["x", "1", ""]), "0"),
            (entry(&["2", "1"]), "1,0"),
            (String::new(), "1"),
        ] {
            assert!(Fanouts::decode(&waiting, answered).is_err(), "{waiting:?} {answered:?}");
        }
        let asker = encode_asker(Some(&Address::new(typename("chain"), "x").unwrap()));
        let valid = Fanouts::decode(&entry(&["2", "1", &asker]), "1,0").unwrap();
        assert_eq!(valid.waiting[0].asker, asker);
        assert_eq!(decode_asker(&asker).unwrap().unwrap().to_string(), "example/chain/x");
    }
}
