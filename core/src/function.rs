//! The API of native functions: value specs, the function trait, the registry and the
//! invocation context that collects effects.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::{limits, Address, Envelope, Error, FunctionError, TimerId, TypeName, TypedValue, UnixMillis, ValueType};

/// When a value expires. Expired values read as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiration {
    Never,
    /// Expires this long after it was last written.
    AfterWrite(Duration),
    /// Expires this long after the last invocation of its address (StateFun's `AFTER_CALL`:
    /// every invocation reads all values, so any call keeps them alive).
    AfterCall(Duration),
}

/// The untyped description of a persisted value, as registered with a function type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSpecDescriptor {
    pub name: Arc<str>,
    pub typename: TypeName,
    pub expiration: Expiration,
}

/// A named, typed value of a function's state, declared once and used from the context.
#[derive(Debug)]
pub struct ValueSpec<T> {
    name: &'static str,
    expiration: Expiration,
    value_type: PhantomData<fn() -> T>,
}

impl<T: ValueType> ValueSpec<T> {
    pub const fn new(name: &'static str) -> Self {
        ValueSpec { name, expiration: Expiration::Never, value_type: PhantomData }
    }

    pub const fn expire_after_write(self, ttl: Duration) -> Self {
        ValueSpec { expiration: Expiration::AfterWrite(ttl), ..self }
    }

    pub const fn expire_after_call(self, ttl: Duration) -> Self {
        ValueSpec { expiration: Expiration::AfterCall(ttl), ..self }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn descriptor(&self) -> ValueSpecDescriptor {
        ValueSpecDescriptor { name: self.name.into(), typename: T::typename(), expiration: self.expiration }
    }
}

/// A function: called once per message, one invocation at a time per address.
///
/// Effects go through the [`Context`]; returning an error discards them all.
pub trait StatefulFunction: Send + Sync + 'static {
    fn invoke(&self, context: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError>;
}

impl<F> StatefulFunction for F
where
    F: Fn(&mut Context<'_>, &TypedValue) -> Result<(), FunctionError> + Send + Sync + 'static,
{
    fn invoke(&self, context: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError> {
        self(context, message)
    }
}

/// A function type with its value specs, ready to register.
pub struct FunctionSpec {
    pub typename: TypeName,
    pub values: Vec<ValueSpecDescriptor>,
    pub function: Box<dyn StatefulFunction>,
}

impl FunctionSpec {
    pub fn new(typename: TypeName, function: impl StatefulFunction) -> Self {
        FunctionSpec { typename, values: Vec::new(), function: Box::new(function) }
    }

    pub fn with_value<T: ValueType>(mut self, spec: &ValueSpec<T>) -> Self {
        self.values.push(spec.descriptor());
        self
    }

    pub fn value(&self, name: &str) -> Option<&ValueSpecDescriptor> {
        self.values.iter().find(|spec| &*spec.name == name)
    }
}

impl std::fmt::Debug for FunctionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionSpec").field("typename", &self.typename).field("values", &self.values).finish()
    }
}

/// Where the functions of a remote binding are served: the node's endpoint number (its
/// place in the module) and the most messages one request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteBinding {
    pub endpoint: usize,
    pub batch_max: u32,
}

/// All function types a node serves. Built before the shards start, then shared read-only.
///
/// Functions are native (Rust code in the node) or remote (served over StateFun's HTTP
/// protocol, bound by exact type or by namespace; an exact binding wins, and a native
/// function wins over a namespace binding). Besides functions it knows *endpoints*: types of
/// addresses that are not functions but can take messages, such as the node's ingress
/// requests waiting for a reply.
#[derive(Debug, Default)]
pub struct Registry {
    functions: HashMap<TypeName, FunctionSpec>,
    remote_types: HashMap<TypeName, RemoteBinding>,
    remote_namespaces: HashMap<String, RemoteBinding>,
    endpoints: HashSet<TypeName>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    pub fn register(&mut self, spec: FunctionSpec) -> Result<(), Error> {
        let typename = &spec.typename;
        if self.functions.contains_key(typename)
            || self.endpoints.contains(typename)
            || self.remote_types.contains_key(typename)
        {
            return Err(Error::DuplicateFunction(spec.typename));
        }
        self.functions.insert(spec.typename.clone(), spec);
        Ok(())
    }

    pub fn get(&self, typename: &TypeName) -> Option<&FunctionSpec> {
        self.functions.get(typename)
    }

    /// Serves the function type `typename` remotely.
    pub fn bind_remote(&mut self, typename: TypeName, binding: RemoteBinding) -> Result<(), Error> {
        if self.functions.contains_key(&typename) || self.endpoints.contains(&typename) {
            return Err(Error::DuplicateFunction(typename));
        }
        if self.remote_types.insert(typename.clone(), binding).is_some() {
            return Err(Error::DuplicateFunction(typename));
        }
        Ok(())
    }

    /// Serves every function type of `namespace` that has no binding of its own remotely.
    pub fn bind_remote_namespace(&mut self, namespace: &str, binding: RemoteBinding) -> Result<(), Error> {
        if self.remote_namespaces.insert(namespace.to_string(), binding).is_some() {
            return Err(Error::DuplicateNamespace(namespace.to_string()));
        }
        Ok(())
    }

    /// The remote binding of `typename`, if it is a remote function.
    pub fn remote(&self, typename: &TypeName) -> Option<RemoteBinding> {
        if let Some(binding) = self.remote_types.get(typename) {
            return Some(*binding);
        }
        if self.functions.contains_key(typename) || self.endpoints.contains(typename) {
            return None;
        }
        self.remote_namespaces.get(typename.namespace()).copied()
    }

    /// Declares `typename` as an endpoint: functions may send to its addresses.
    pub fn register_endpoint(&mut self, typename: TypeName) -> Result<(), Error> {
        if self.functions.contains_key(&typename)
            || self.remote_types.contains_key(&typename)
            || !self.endpoints.insert(typename.clone())
        {
            return Err(Error::DuplicateFunction(typename));
        }
        Ok(())
    }

    /// Whether `typename` is a function, native or remote.
    pub fn contains(&self, typename: &TypeName) -> bool {
        self.functions.contains_key(typename) || self.remote(typename).is_some()
    }

    /// Whether messages to addresses of `typename` have somewhere to go.
    pub fn accepts(&self, typename: &TypeName) -> bool {
        self.contains(typename) || self.endpoints.contains(typename)
    }
}

/// A value at rest in a shard, with the times its expiration is measured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredValue {
    pub value: TypedValue,
    pub written_at: UnixMillis,
    pub called_at: UnixMillis,
}

impl StoredValue {
    pub fn is_expired(&self, expiration: Expiration, now: UnixMillis) -> bool {
        match expiration {
            Expiration::Never => false,
            Expiration::AfterWrite(ttl) => now >= self.written_at.plus(ttl),
            Expiration::AfterCall(ttl) => now >= self.written_at.max(self.called_at).plus(ttl),
        }
    }
}

/// A delayed message asked for by an invocation, before the shard numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DelayedSend {
    pub fire_at: UnixMillis,
    pub token: Option<Arc<str>>,
    pub envelope: Envelope,
}

/// Everything one invocation asked for, in the order it asked.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Latest write per value name, in first-write order.
    pub mutations: Vec<(Arc<str>, Option<TypedValue>)>,
    pub sends: Vec<Envelope>,
    pub delayed: Vec<DelayedSend>,
    pub cancels: Vec<Arc<str>>,
    pub egress: Vec<crate::Egress>,
    /// The bytes the invocation's record will carry, near enough: values and names.
    pub bytes: usize,
}

impl Effects {
    fn count(&self) -> usize {
        self.sends.len() + self.delayed.len() + self.cancels.len() + self.egress.len()
    }
}

/// The window an invocation has on the world: its address, its caller, its state, and the
/// effects it collects. Nothing happens until the invocation returns `Ok`.
#[derive(Debug)]
pub struct Context<'a> {
    pub(crate) now: UnixMillis,
    pub(crate) address: &'a Address,
    pub(crate) caller: Option<&'a Address>,
    /// The values the function type declared.
    pub(crate) declared: &'a [ValueSpecDescriptor],
    pub(crate) registry: &'a Registry,
    pub(crate) values: Option<&'a HashMap<Arc<str>, StoredValue>>,
    /// Values that expired before this invocation: they read as absent.
    pub(crate) expired: &'a [Arc<str>],
    pub(crate) pending_tokens: Option<&'a HashMap<Arc<str>, (UnixMillis, TimerId)>>,
    pub(crate) effects: Effects,
}

impl<'a> Context<'a> {
    /// The address being invoked.
    pub fn self_address(&self) -> &Address {
        self.address
    }

    /// Who sent the message: `None` for a plain ingress message.
    pub fn caller(&self) -> Option<&Address> {
        self.caller
    }

    /// The time of this invocation, as the shard saw it.
    pub fn now(&self) -> UnixMillis {
        self.now
    }

    /// The declared value `name`, checked to be of `typename`.
    fn registered(&self, name: &str, typename: &TypeName) -> Result<&'a ValueSpecDescriptor, FunctionError> {
        let function = &self.address.function;
        let descriptor = self
            .declared
            .iter()
            .find(|descriptor| &*descriptor.name == name)
            .ok_or_else(|| FunctionError(format!("value {name:?} is not registered with function {function}")))?;
        if descriptor.typename != *typename {
            return Err(FunctionError(format!(
                "value {name:?} of {function} is registered as {}, used as {typename}",
                descriptor.typename
            )));
        }
        Ok(descriptor)
    }

    /// Reads a value: this invocation's own writes first, then the stored state.
    pub fn get<T: ValueType>(&self, spec: &ValueSpec<T>) -> Result<Option<T>, FunctionError> {
        self.registered(spec.name, &T::typename())?;
        if let Some((_, written)) = self.effects.mutations.iter().find(|(name, _)| &**name == spec.name) {
            return written.as_ref().map(TypedValue::decode).transpose();
        }
        if self.expired.iter().any(|name| &**name == spec.name) {
            return Ok(None);
        }
        let stored = self.values.and_then(|values| values.get(spec.name));
        stored.map(|stored| stored.value.decode()).transpose()
    }

    pub fn set<T: ValueType>(&mut self, spec: &ValueSpec<T>, value: &T) -> Result<(), FunctionError> {
        self.set_value(spec.name, TypedValue::of(value))
    }

    pub fn delete<T: ValueType>(&mut self, spec: &ValueSpec<T>) -> Result<(), FunctionError> {
        let descriptor = self.registered(spec.name, &T::typename())?;
        self.write(descriptor.name.clone(), None);
        Ok(())
    }

    /// Writes the declared value `name`; `value` must be of its declared type.
    pub(crate) fn set_value(&mut self, name: &str, value: TypedValue) -> Result<(), FunctionError> {
        let descriptor = self.registered(name, &value.typename)?;
        check_size(&value)?;
        self.charge(descriptor.name.len() + value.value.len(), false)?;
        self.write(descriptor.name.clone(), Some(value));
        Ok(())
    }

    /// Deletes the declared value `name`, whatever its type.
    pub(crate) fn delete_value(&mut self, name: &str) -> Result<(), FunctionError> {
        let descriptor = self.declared.iter().find(|descriptor| &*descriptor.name == name).ok_or_else(|| {
            FunctionError(format!("value {name:?} is not registered with function {}", self.address.function))
        })?;
        self.write(descriptor.name.clone(), None);
        Ok(())
    }

    fn write(&mut self, name: Arc<str>, value: Option<TypedValue>) {
        match self.effects.mutations.iter_mut().find(|(existing, _)| *existing == name) {
            Some(slot) => slot.1 = value,
            None => self.effects.mutations.push((name, value)),
        }
    }

    fn envelope(&self, target: Address, value: TypedValue) -> Result<Envelope, FunctionError> {
        if !self.registry.accepts(&target.function) {
            return Err(Error::UnknownFunction(target.function).into());
        }
        check_size(&value)?;
        Ok(Envelope { target, caller: Some(self.address.clone()), value })
    }

    /// Counts an effect of about `bytes` bytes against the invocation's limits.
    fn charge(&mut self, bytes: usize, counts: bool) -> Result<(), FunctionError> {
        self.effects.bytes += bytes + 64;
        if self.effects.bytes >= limits::invocation_bytes_max {
            return Err(FunctionError(format!(
                "invocation of {} produced more than {} bytes of effects",
                self.address,
                limits::invocation_bytes_max
            )));
        }
        if counts && self.effects.count() >= limits::effects_per_invocation_max {
            return Err(FunctionError(format!(
                "invocation of {} exceeded {} messages, delayed messages and egress records",
                self.address,
                limits::effects_per_invocation_max
            )));
        }
        Ok(())
    }

    /// Sends a message to any address, this one included. Messages from one address to
    /// another arrive in the order they were sent.
    pub fn send(&mut self, target: Address, value: TypedValue) -> Result<(), FunctionError> {
        self.charge(target.id.len() + value.value.len(), true)?;
        let envelope = self.envelope(target, value)?;
        self.effects.sends.push(envelope);
        Ok(())
    }

    /// Sends a message to the caller. A message without a caller (a plain ingress send) has
    /// nobody to answer, and the reply is not sent.
    pub fn reply(&mut self, value: TypedValue) -> Result<(), FunctionError> {
        let Some(caller) = self.caller else { return Ok(()) };
        self.charge(caller.id.len() + value.value.len(), true)?;
        check_size(&value)?;
        // The caller may be an ingress request rather than a function, so it is not looked
        // up in the registry: it sent us a message, so it can take one back.
        let envelope = Envelope { target: caller.clone(), caller: Some(self.address.clone()), value };
        self.effects.sends.push(envelope);
        Ok(())
    }

    /// Sends a message after `delay`. With a `token`, the message can be cancelled until it
    /// fires; a token names at most one pending message of this address at a time.
    pub fn send_after(
        &mut self,
        delay: Duration,
        target: Address,
        value: TypedValue,
        token: Option<&str>,
    ) -> Result<(), FunctionError> {
        self.charge(target.id.len() + value.value.len() + token.map_or(0, str::len), true)?;
        let envelope = self.envelope(target, value)?;
        let token: Option<Arc<str>> = token.map(Into::into);
        if let Some(token) = &token {
            if token.is_empty() {
                return Err(FunctionError::new("a cancellation token must not be empty"));
            }
            if self.token_is_pending(token) {
                return Err(FunctionError(format!(
                    "cancellation token {token:?} of {} is already used by a pending delayed message",
                    self.address
                )));
            }
        }
        let fire_at = self.now.plus(delay);
        self.effects.delayed.push(DelayedSend { fire_at, token, envelope });
        Ok(())
    }

    fn token_is_pending(&self, token: &str) -> bool {
        let armed_now = self.effects.delayed.iter().any(|delayed| delayed.token.as_deref() == Some(token));
        let stored = self.pending_tokens.is_some_and(|tokens| tokens.contains_key(token));
        let cancelled_now = self.effects.cancels.iter().any(|cancelled| &**cancelled == token);
        armed_now || (stored && !cancelled_now)
    }

    /// Cancels the pending delayed message with `token`, if there is one. Cancelling a token
    /// that already fired, or never existed, does nothing.
    pub fn cancel_delayed(&mut self, token: &str) -> Result<(), FunctionError> {
        if token.is_empty() {
            return Err(FunctionError::new("a cancellation token must not be empty"));
        }
        self.charge(token.len(), true)?;
        if let Some(index) = self.effects.delayed.iter().position(|delayed| delayed.token.as_deref() == Some(token)) {
            // Armed by this very invocation: it never reaches the shard.
            self.effects.delayed.remove(index);
        }
        let stored = self.pending_tokens.is_some_and(|tokens| tokens.contains_key(token));
        if stored && !self.effects.cancels.iter().any(|cancelled| &**cancelled == token) {
            self.effects.cancels.push(token.into());
        }
        Ok(())
    }

    /// Publishes a value to an egress once this invocation is committed.
    pub fn egress(&mut self, egress: TypeName, value: TypedValue) -> Result<(), FunctionError> {
        self.charge(egress.as_str().len() + value.value.len(), true)?;
        check_size(&value)?;
        self.effects.egress.push(crate::Egress { egress, value });
        Ok(())
    }
}

fn check_size(value: &TypedValue) -> Result<(), FunctionError> {
    if value.value.len() > limits::value_bytes_max {
        return Err(Error::ValueTooLarge { bytes: value.value.len(), max: limits::value_bytes_max }.into());
    }
    Ok(())
}
