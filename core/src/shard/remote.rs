//! The shard's side of remote functions, without I/O: the node sends the requests.
//!
//! [`Shard::begin_remote`] takes a [`Batch`]: the front of an idle address's mailbox, up to
//! its binding's `batch_max` messages, which stay in the mailbox (and in the log) until a
//! reply is applied. [`Shard::remote_request`] builds StateFun's `ToFunction` for it with
//! every value the type registered; [`Shard::complete_remote`] applies the `FromFunction`:
//! a handshake registers the missing values (a `Registered` record) and asks for the same
//! batch to be sent again; a result becomes one `Invoked` record that consumes the whole
//! batch. A reply the function got wrong changes nothing and is returned as an error: the
//! node retries the batch, and parks the address if that keeps failing. A batch in flight
//! at a crash is still at the front of its mailbox after replay, and is sent again.
//!
//! A type's first request on a shard is a *probe*: the other addresses of the type wait
//! until it is settled, so a burst of first messages makes one handshake, not one each.

use std::sync::Arc;
use std::time::Duration;

use super::Shard;
use crate::function::{Context, Effects};
use crate::protocol::{self, from_function, to_function, FromFunction, ToFunction};
use crate::record::{Entry, Invocation, MessageId};
use crate::{Address, Envelope, Expiration, FunctionError, Mutation, TypeName, UnixMillis, ValueSpecDescriptor};

/// Messages for one remote address, sent as one request.
#[derive(Debug)]
pub struct Batch {
    pub address: Address,
    /// The node's endpoint that serves the address's type.
    pub endpoint: usize,
    messages: Vec<(MessageId, Envelope)>,
    /// Values that had expired when the request was built: sent as absent, deleted when the
    /// reply is applied (unless the reply writes them).
    expired: Vec<Arc<str>>,
    /// The first request of a type not known yet.
    probe: bool,
}

impl Batch {
    /// How many messages the batch carries.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// What a reply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The batch is consumed: its record is made.
    Applied,
    /// The function declared values it was not sent; they are registered now. Send the same
    /// batch again.
    Registered,
}

impl Shard {
    /// Takes the next batch for an idle address of a remote function, and marks the address
    /// busy until [`Shard::complete_remote`] applies a reply.
    pub fn begin_remote(&mut self) -> Option<Batch> {
        loop {
            let address = self.ready_remote.pop_front()?;
            let Some(instance) = self.instances.get_mut(&address) else { continue };
            instance.ready = false;
            if instance.busy || instance.mailbox.is_empty() {
                continue;
            }
            // A type that lost its binding keeps its mail until it is bound again.
            let Some(binding) = self.registry.remote(&address.function) else { continue };
            let mut probe = false;
            if !self.remote_specs.contains_key(&address.function) {
                match self.probes.get_mut(&address.function) {
                    Some(waiting) => {
                        waiting.push(address);
                        continue;
                    }
                    None => {
                        self.probes.insert(address.function.clone(), Vec::new());
                        probe = true;
                    }
                }
            }
            let Some(instance) = self.instances.get_mut(&address) else { continue };
            instance.busy = true;
            let messages = instance.mailbox.iter().take(binding.batch_max.max(1) as usize).cloned().collect();
            return Some(Batch { address, endpoint: binding.endpoint, messages, expired: Vec::new(), probe });
        }
    }

    /// The request for `batch` at `now`: its messages, and every value the type registered
    /// (absent ones, and ones expired by `now`, without a value).
    pub fn remote_request(&self, batch: &mut Batch, now: UnixMillis) -> ToFunction {
        batch.expired = self.expired_values(&batch.address, now);
        let values = self.instances.get(&batch.address).map(|instance| &instance.values);
        let state = self
            .declared(&batch.address.function)
            .iter()
            .map(|spec| {
                let stored = values.and_then(|values| values.get(&spec.name));
                let stored = stored.filter(|_| !batch.expired.contains(&spec.name));
                to_function::PersistedValue {
                    state_name: spec.name.to_string(),
                    state_value: stored.map(|stored| protocol::value_to_proto(&stored.value)),
                }
            })
            .collect();
        let invocations = batch
            .messages
            .iter()
            .map(|(_, envelope)| to_function::Invocation {
                caller: envelope.caller.as_ref().map(protocol::address_to_proto),
                argument: Some(protocol::value_to_proto(&envelope.value)),
            })
            .collect();
        let request = to_function::InvocationBatchRequest {
            target: Some(protocol::address_to_proto(&batch.address)),
            state,
            invocations,
        };
        ToFunction { request: Some(to_function::Request::Invocation(request)) }
    }

    /// Applies the function's reply to `batch` at `now`. An error says what the function got
    /// wrong; nothing changed, and the batch is still in flight.
    pub fn complete_remote(
        &mut self,
        batch: &Batch,
        now: UnixMillis,
        reply: FromFunction,
    ) -> Result<Completion, FunctionError> {
        let result = match reply.response {
            None => from_function::InvocationResponse::default(),
            Some(from_function::Response::InvocationResult(result)) => result,
            Some(from_function::Response::IncompleteInvocationContext(context)) => {
                self.register(now, &batch.address.function, context.missing_values)?;
                return Ok(Completion::Registered);
            }
        };
        let effects = self.collect(batch, now, result)?;
        let Some((first, _)) = batch.messages.first() else { panic!("an empty batch for {}", batch.address) };
        let mut invocation = Invocation {
            address: batch.address.clone(),
            message: *first,
            messages: batch.messages.len() as u32,
            caller: None,
            mutations: batch.expired.iter().map(|name| Mutation { name: name.clone(), value: None }).collect(),
            sends: Vec::new(),
            timers: Vec::new(),
            egress: Vec::new(),
            failure: None,
        };
        self.record_effects(&mut invocation, effects);
        self.commit(now, Entry::Invoked(invocation));
        Ok(Completion::Applied)
    }

    /// A request for `batch` failed (the node retries it): if it was its type's probe, the
    /// addresses waiting for the probe go on by themselves.
    pub fn remote_failed(&mut self, batch: &Batch) {
        if batch.probe {
            self.type_known(&batch.address.function);
        }
    }

    /// Readies the addresses that waited for the probe of `function`.
    pub(super) fn type_known(&mut self, function: &TypeName) {
        for address in self.probes.remove(function).unwrap_or_default() {
            let idle = self
                .instances
                .get(&address)
                .is_some_and(|instance| !instance.busy && !instance.ready && !instance.mailbox.is_empty());
            if idle {
                self.make_ready(address);
            }
        }
    }

    /// The handshake: registers what `function` declared and was not sent.
    fn register(
        &mut self,
        now: UnixMillis,
        function: &TypeName,
        missing: Vec<from_function::PersistedValueSpec>,
    ) -> Result<(), FunctionError> {
        let registered = self.remote_specs.get(function).map_or(&[][..], Vec::as_slice);
        let mut new: Vec<ValueSpecDescriptor> = Vec::new();
        for spec in missing {
            let descriptor = descriptor(spec)?;
            let known = registered.iter().chain(&new).find(|known| known.name == descriptor.name);
            match known {
                Some(known) if known.typename != descriptor.typename => {
                    return Err(FunctionError(format!(
                        "{function} declares value {:?} as {}, but it is registered as {}",
                        descriptor.name, descriptor.typename, known.typename
                    )));
                }
                Some(_) => {}
                None => new.push(descriptor),
            }
        }
        if new.is_empty() {
            let names: Vec<&str> = registered.iter().map(|spec| &*spec.name).collect();
            return Err(FunctionError(format!(
                "{function} asked for values it is already sent ({}): is the SDK's declaration of its values \
                 different from the one it checks?",
                names.join(", ")
            )));
        }
        self.commit(now, Entry::Registered { function: function.clone(), values: new });
        Ok(())
    }

    /// Runs a function's result through the same checks as a native function's effects, in
    /// StateFun's order: messages, delayed messages and cancellations, egress, state.
    fn collect(
        &self,
        batch: &Batch,
        now: UnixMillis,
        result: from_function::InvocationResponse,
    ) -> Result<Effects, FunctionError> {
        let address = &batch.address;
        let mut context = Context {
            now,
            address,
            caller: None,
            declared: self.declared(&address.function),
            registry: &self.registry,
            values: self.instances.get(address).map(|instance| &instance.values),
            expired: &batch.expired,
            pending_tokens: self.tokens.get(address),
            effects: Effects::default(),
        };
        for (index, message) in result.outgoing_messages.into_iter().enumerate() {
            let field = format!("outgoing_messages[{index}]");
            let target = protocol::address_from_proto(message.target, &format!("{field}.target"))?;
            let value = protocol::value_from_proto(message.argument, &format!("{field}.argument"))?;
            let value = value.ok_or_else(|| FunctionError(format!("{field}.argument: the value is missing")))?;
            context.send(target, value)?;
        }
        for (index, delayed) in result.delayed_invocations.into_iter().enumerate() {
            let field = format!("delayed_invocations[{index}]");
            if delayed.is_cancellation_request {
                context.cancel_delayed(&delayed.cancellation_token)?;
                continue;
            }
            let delay = u64::try_from(delayed.delay_in_ms)
                .map_err(|_| FunctionError(format!("{field}.delay_in_ms: {} is negative", delayed.delay_in_ms)))?;
            let target = protocol::address_from_proto(delayed.target, &format!("{field}.target"))?;
            let value = protocol::value_from_proto(delayed.argument, &format!("{field}.argument"))?;
            let value = value.ok_or_else(|| FunctionError(format!("{field}.argument: the value is missing")))?;
            let token = Some(delayed.cancellation_token.as_str()).filter(|token| !token.is_empty());
            context.send_after(Duration::from_millis(delay), target, value, token)?;
        }
        for (index, egress) in result.outgoing_egresses.into_iter().enumerate() {
            let field = format!("outgoing_egresses[{index}]");
            let id = TypeName::new(&egress.egress_namespace, &egress.egress_type)
                .map_err(|error| FunctionError(format!("{field}: {error}")))?;
            let value = protocol::value_from_proto(egress.argument, &format!("{field}.argument"))?;
            let value = value.ok_or_else(|| FunctionError(format!("{field}.argument: the value is missing")))?;
            context.egress(id, value)?;
        }
        for (index, mutation) in result.state_mutations.into_iter().enumerate() {
            let field = format!("state_mutations[{index}]");
            let modify = mutation.mutation_type == from_function::persisted_value_mutation::MutationType::Modify as i32;
            let value = if modify { protocol::value_from_proto(mutation.state_value, &field)? } else { None };
            match value {
                Some(value) => context.set_value(&mutation.state_name, value)?,
                None => context.delete_value(&mutation.state_name)?,
            }
        }
        Ok(context.effects)
    }
}

/// A value spec as a function declared it, checked.
fn descriptor(spec: from_function::PersistedValueSpec) -> Result<ValueSpecDescriptor, FunctionError> {
    use from_function::expiration_spec::ExpireMode;
    if spec.state_name.is_empty() {
        return Err(FunctionError::new("a declared value has an empty name"));
    }
    let typename = if spec.type_typename.is_empty() { protocol::UNSET_TYPENAME } else { &spec.type_typename };
    let typename =
        TypeName::parse(typename).map_err(|error| FunctionError(format!("value {:?}: {error}", spec.state_name)))?;
    let expiration = spec.expiration_spec.unwrap_or_default();
    let ttl = u64::try_from(expiration.expire_after_millis).map_err(|_| {
        FunctionError(format!(
            "value {:?}: a negative expiration of {} ms",
            spec.state_name, expiration.expire_after_millis
        ))
    })?;
    let expiration = match ExpireMode::try_from(expiration.mode) {
        Ok(ExpireMode::None) => Expiration::Never,
        Ok(ExpireMode::AfterWrite) => Expiration::AfterWrite(Duration::from_millis(ttl)),
        Ok(ExpireMode::AfterInvoke) => Expiration::AfterCall(Duration::from_millis(ttl)),
        Err(_) => {
            return Err(FunctionError(format!(
                "value {:?}: unknown expiration mode {}",
                spec.state_name, expiration.mode
            )))
        }
    };
    Ok(ValueSpecDescriptor { name: spec.state_name.into(), typename, expiration })
}

#[cfg(test)]
mod tests {
    //! Remote functions driven by hand with the protocol's messages: the handshake and its
    //! persistence, batches of the mailbox's front, one probe per unknown type, replies the
    //! function got wrong, and StateFun's order of effects.

    use std::sync::Arc;

    use super::*;
    use crate::protocol::{from_function as from, Address as ProtoAddress, TypedValue as ProtoValue};
    use crate::shard::Retention;
    use crate::{Record, Registry, RemoteBinding, Routing, ShardId, TypedValue};

    const INT: &str = "io.statefun.types/int";

    fn registry() -> Arc<Registry> {
        let mut registry = Registry::new();
        registry.bind_remote_namespace("test", RemoteBinding { endpoint: 0, batch_max: 2 }).unwrap();
        registry.register_endpoint(crate::requests::request_type()).unwrap();
        Arc::new(registry)
    }

    fn shard() -> Shard {
        Shard::new(ShardId(0), Routing::new(1), registry(), Retention::default())
    }

    fn address(text: &str) -> Address {
        let (function, id) = text.rsplit_once('/').unwrap();
        Address::new(TypeName::parse(function).unwrap(), id).unwrap()
    }

    fn int(value: i32) -> TypedValue {
        TypedValue::of(&value)
    }

    fn inject(shard: &mut Shard, target: &str, value: TypedValue) {
        let envelope = Envelope { target: address(target), caller: None, value };
        let id = MessageId(shard.message_next);
        shard.replay(&Record { at: UnixMillis(0), entry: Entry::Admitted { id, envelope, request: None } });
    }

    fn records(shard: &mut Shard) -> Vec<Record> {
        std::iter::from_fn(|| shard.poll_record()).collect()
    }

    fn handshake(names: &[(&str, &str)]) -> FromFunction {
        let missing_values = names
            .iter()
            .map(|(name, typename)| from::PersistedValueSpec {
                state_name: name.to_string(),
                expiration_spec: Some(from::ExpirationSpec { mode: 2, expire_after_millis: 60_000 }),
                type_typename: typename.to_string(),
            })
            .collect();
        let context = from::IncompleteInvocationContext { missing_values };
        FromFunction { response: Some(from::Response::IncompleteInvocationContext(context)) }
    }

    fn result(result: from::InvocationResponse) -> FromFunction {
        FromFunction { response: Some(from::Response::InvocationResult(result)) }
    }

    fn modify(name: &str, value: &TypedValue) -> from::PersistedValueMutation {
        from::PersistedValueMutation {
            mutation_type: from::persisted_value_mutation::MutationType::Modify as i32,
            state_name: name.to_string(),
            state_value: Some(protocol::value_to_proto(value)),
        }
    }

    fn proto_address(text: &str) -> ProtoAddress {
        protocol::address_to_proto(&address(text))
    }

    fn batch_request(request: &ToFunction) -> &to_function::InvocationBatchRequest {
        let Some(to_function::Request::Invocation(batch)) = &request.request else { panic!("no batch") };
        batch
    }

    #[test]
    fn the_handshake_registers_values_once_and_the_log_keeps_them() {
        let mut shard = shard();
        inject(&mut shard, "test/counter/a", int(1));
        let mut batch = shard.begin_remote().unwrap();
        assert!(batch_request(&shard.remote_request(&mut batch, UnixMillis(0))).state.is_empty());
        let completion = shard.complete_remote(&batch, UnixMillis(1), handshake(&[("seen", INT)])).unwrap();
        assert_eq!(completion, Completion::Registered);
        let request = shard.remote_request(&mut batch, UnixMillis(2));
        let state = &batch_request(&request).state;
        assert_eq!((state.len(), state[0].state_name.as_str(), state[0].state_value.is_none()), (1, "seen", true));
        let reply = from::InvocationResponse { state_mutations: vec![modify("seen", &int(1))], ..Default::default() };
        assert_eq!(shard.complete_remote(&batch, UnixMillis(3), result(reply)).unwrap(), Completion::Applied);
        assert_eq!(shard.value(&address("test/counter/a"), "seen"), Some(&int(1)));

        let log = records(&mut shard);
        let mut replayed = self::shard();
        inject(&mut replayed, "test/counter/a", int(1));
        for record in &log {
            replayed.replay(record);
        }
        assert_eq!(replayed.state(), shard.state());
        inject(&mut replayed, "test/counter/a", int(1));
        let mut batch = replayed.begin_remote().unwrap();
        let request = replayed.remote_request(&mut batch, UnixMillis(4));
        let state = &batch_request(&request).state;
        assert_eq!(state[0].state_value.as_ref().unwrap().value, int(1).value, "no new handshake after replay");
    }

    #[test]
    fn a_batch_is_the_front_of_the_mailbox_up_to_the_bound() {
        let mut shard = shard();
        for n in 0..3 {
            inject(&mut shard, "test/counter/a", int(n));
        }
        let mut batch = shard.begin_remote().unwrap();
        assert_eq!(batch.len(), 2, "batch_max is 2");
        assert!(shard.begin_remote().is_none(), "one request in flight per address");
        shard.remote_request(&mut batch, UnixMillis(0));
        shard.complete_remote(&batch, UnixMillis(0), FromFunction::default()).unwrap();
        let Entry::Invoked(invocation) = &records(&mut shard)[0].entry else { panic!("not an invocation") };
        assert_eq!((invocation.message, invocation.messages), (MessageId(0), 2));
        let batch = shard.begin_remote().unwrap();
        assert_eq!(batch.messages[0].0, MessageId(2), "the rest follows");
    }

    #[test]
    fn other_addresses_of_an_unknown_type_wait_for_its_first_request() {
        let mut shard = shard();
        inject(&mut shard, "test/counter/a", int(1));
        inject(&mut shard, "test/counter/b", int(1));
        inject(&mut shard, "test/other/c", int(1));
        let mut probe = shard.begin_remote().unwrap();
        let other = shard.begin_remote().unwrap();
        assert_eq!(other.address, address("test/other/c"), "b waits for a; other types do not");
        assert!(shard.begin_remote().is_none());
        shard.remote_request(&mut probe, UnixMillis(0));
        shard.remote_failed(&probe);
        assert_eq!(shard.begin_remote().unwrap().address, address("test/counter/b"), "a failed probe frees them");
    }

    #[test]
    fn a_reply_the_function_got_wrong_changes_nothing() {
        let mut shard = shard();
        inject(&mut shard, "test/counter/a", int(1));
        let mut batch = shard.begin_remote().unwrap();
        shard.remote_request(&mut batch, UnixMillis(0));
        shard.complete_remote(&batch, UnixMillis(0), handshake(&[("seen", INT)])).unwrap();
        records(&mut shard);
        let text = TypedValue::new(TypeName::parse("test/text").unwrap(), "x");
        let wrong = [
            from::InvocationResponse { state_mutations: vec![modify("seen", &text)], ..Default::default() },
            from::InvocationResponse { state_mutations: vec![modify("unknown", &int(1))], ..Default::default() },
            from::InvocationResponse {
                outgoing_messages: vec![from::Invocation {
                    target: Some(proto_address("nobody/here/x")),
                    argument: Some(protocol::value_to_proto(&int(1))),
                }],
                ..Default::default()
            },
            from::InvocationResponse {
                delayed_invocations: vec![from::DelayedInvocation { delay_in_ms: -1, ..Default::default() }],
                ..Default::default()
            },
        ];
        for reply in wrong {
            let error = shard.complete_remote(&batch, UnixMillis(1), result(reply)).unwrap_err();
            assert!(!error.0.is_empty());
            assert!(shard.poll_record().is_none(), "{error}: nothing is recorded");
        }
        let error = shard.complete_remote(&batch, UnixMillis(1), handshake(&[("seen", "test/text")])).unwrap_err();
        assert!(error.0.contains("registered as io.statefun.types/int"), "{error}");
        let error = shard.complete_remote(&batch, UnixMillis(1), handshake(&[("seen", INT)])).unwrap_err();
        assert!(error.0.contains("already sent"), "{error}");
        assert_eq!(shard.complete_remote(&batch, UnixMillis(1), FromFunction::default()), Ok(Completion::Applied));
    }

    #[test]
    fn effects_apply_in_statefuns_order_and_tokens_work_across_batches() {
        let mut shard = shard();
        inject(&mut shard, "test/timer/t", int(1));
        let mut batch = shard.begin_remote().unwrap();
        shard.remote_request(&mut batch, UnixMillis(0));
        let delayed = |token: &str, cancel: bool| from::DelayedInvocation {
            delay_in_ms: 100,
            target: Some(proto_address("test/counter/a")),
            argument: Some(protocol::value_to_proto(&int(7))),
            is_cancellation_request: cancel,
            cancellation_token: token.to_string(),
        };
        let reply = from::InvocationResponse {
            delayed_invocations: vec![delayed("x", false), delayed("y", false)],
            outgoing_egresses: vec![from::EgressMessage {
                egress_namespace: "test".into(),
                egress_type: "out".into(),
                argument: Some(ProtoValue { typename: INT.into(), has_value: true, value: int(3).value }),
            }],
            ..Default::default()
        };
        shard.complete_remote(&batch, UnixMillis(1_000), result(reply)).unwrap();
        assert_eq!(shard.pending_timers(), 2);
        assert_eq!(shard.next_timer_at(), Some(UnixMillis(1_100)), "the delay runs from the reply");
        inject(&mut shard, "test/timer/t", int(2));
        let mut batch = shard.begin_remote().unwrap();
        shard.remote_request(&mut batch, UnixMillis(1_010));
        let reuse = from::InvocationResponse { delayed_invocations: vec![delayed("x", false)], ..Default::default() };
        let error = shard.complete_remote(&batch, UnixMillis(1_010), result(reuse)).unwrap_err();
        assert!(error.0.contains("already used"), "{error}");
        let cancel = from::InvocationResponse {
            delayed_invocations: vec![delayed("x", true), delayed("unknown", true)],
            ..Default::default()
        };
        shard.complete_remote(&batch, UnixMillis(1_010), result(cancel)).unwrap();
        assert_eq!(shard.pending_timers(), 1, "x is cancelled, an unknown token is a no-op");
        let egress: Vec<_> = records(&mut shard)
            .iter()
            .filter_map(|record| match &record.entry {
                Entry::Invoked(invocation) => Some(invocation.egress.len()),
                _ => None,
            })
            .collect();
        assert_eq!(egress, [1, 0]);
    }
}
