//! Records as bytes: rkyv archives of a versioned mirror of the core's [`Record`].
//!
//! The mirror types (`*V1`, `*V2`) are the on-disk contract: they change only with a new
//! format version, never with the core's types. Version 2 reuses version 1's parts and adds
//! batched invocations and registered value specs; a version 1 record is read by lifting it
//! to version 2. Decoding validates the archive (bytecheck) and then every name, so a
//! damaged or foreign record is an error, never a panic.

use std::sync::Arc;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use statefun_core::{
    Address, Egress, Entry, Envelope, Expiration, FunctionError, Invocation, MessageId, Mutation, Record, RequestKey,
    Route, Send, ShardId, TimerId, TimerOp, TypeName, TypedValue, UnixMillis, ValueSpecDescriptor,
};

use crate::format::FORMAT_VERSION;

/// A record of format version 2, the one this code writes.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RecordV2 {
    at: u64,
    entry: EntryV2,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum EntryV2 {
    Admitted {
        id: u64,
        envelope: EnvelopeV1,
        request: Option<RequestKeyV1>,
    },
    Received {
        from: u16,
        seq: u64,
        id: Option<u64>,
        envelope: EnvelopeV1,
    },
    /// `messages` consumed from the front of the mailbox, the first being `invocation.message`.
    Invoked {
        invocation: InvocationV1,
        messages: u32,
    },
    Fired {
        owner: AddressV1,
        timer: u64,
        fire_at: u64,
        send: SendV1,
    },
    Acked {
        peer: u16,
        seq: u64,
    },
    Registered {
        function: String,
        values: Vec<ValueSpecV2>,
    },
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct ValueSpecV2 {
    pub(crate) name: String,
    pub(crate) typename: String,
    pub(crate) expiration: ExpirationV2,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum ExpirationV2 {
    Never,
    AfterWriteMs(u64),
    AfterCallMs(u64),
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RecordV1 {
    at: u64,
    entry: EntryV1,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum EntryV1 {
    Admitted { id: u64, envelope: EnvelopeV1, request: Option<RequestKeyV1> },
    Received { from: u16, seq: u64, id: Option<u64>, envelope: EnvelopeV1 },
    Invoked(InvocationV1),
    Fired { owner: AddressV1, timer: u64, fire_at: u64, send: SendV1 },
    Acked { peer: u16, seq: u64 },
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct AddressV1 {
    pub(crate) function: String,
    pub(crate) id: String,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct TypedValueV1 {
    pub(crate) typename: String,
    pub(crate) value: Vec<u8>,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct EnvelopeV1 {
    pub(crate) target: AddressV1,
    pub(crate) caller: Option<AddressV1>,
    pub(crate) value: TypedValueV1,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct RequestKeyV1 {
    key: String,
    keyed: bool,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum RouteV1 {
    Local(u64),
    Peer { shard: u16, seq: u64 },
    Request,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SendV1 {
    envelope: EnvelopeV1,
    route: RouteV1,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct MutationV1 {
    name: String,
    value: Option<TypedValueV1>,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum TimerOpV1 {
    Arm { id: u64, fire_at: u64, token: Option<String>, envelope: EnvelopeV1 },
    Cancel { id: u64, token: String },
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EgressV1 {
    egress: String,
    value: TypedValueV1,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct InvocationV1 {
    address: AddressV1,
    message: u64,
    caller: Option<AddressV1>,
    mutations: Vec<MutationV1>,
    sends: Vec<SendV1>,
    timers: Vec<TimerOpV1>,
    egress: Vec<EgressV1>,
    failure: Option<String>,
}

pub(crate) fn spec_v2(spec: &ValueSpecDescriptor) -> ValueSpecV2 {
    ValueSpecV2 {
        name: spec.name.to_string(),
        typename: spec.typename.to_string(),
        expiration: match spec.expiration {
            Expiration::Never => ExpirationV2::Never,
            Expiration::AfterWrite(ttl) => ExpirationV2::AfterWriteMs(millis(ttl)),
            Expiration::AfterCall(ttl) => ExpirationV2::AfterCallMs(millis(ttl)),
        },
    }
}

pub(crate) fn spec(mirror: ValueSpecV2) -> Result<ValueSpecDescriptor, String> {
    let expiration = match mirror.expiration {
        ExpirationV2::Never => Expiration::Never,
        ExpirationV2::AfterWriteMs(ms) => Expiration::AfterWrite(std::time::Duration::from_millis(ms)),
        ExpirationV2::AfterCallMs(ms) => Expiration::AfterCall(std::time::Duration::from_millis(ms)),
    };
    Ok(ValueSpecDescriptor { name: mirror.name.into(), typename: typename(&mirror.typename)?, expiration })
}

/// Encodes a record as an rkyv archive of the current format version.
pub fn encode(record: &Record) -> Result<AlignedVec, crate::Error> {
    let mirror = RecordV2 { at: record.at.0, entry: entry_v2(&record.entry) };
    rkyv::to_bytes::<rancor::Error>(&mirror).map_err(|error| crate::Error::Encode(error.to_string()))
}

/// Decodes a record of format `version` from an archive. `bytes` must be 16-byte aligned.
pub fn decode(version: u16, bytes: &[u8]) -> Result<Record, String> {
    let bad = |error: rancor::Error| format!("bad archive: {error}");
    let mirror = match version {
        1 => {
            let archived = rkyv::access::<ArchivedRecordV1, rancor::Error>(bytes).map_err(bad)?;
            let mirror = rkyv::deserialize::<RecordV1, rancor::Error>(archived).map_err(bad)?;
            RecordV2 { at: mirror.at, entry: lift(mirror.entry) }
        }
        FORMAT_VERSION => {
            let archived = rkyv::access::<ArchivedRecordV2, rancor::Error>(bytes).map_err(bad)?;
            rkyv::deserialize::<RecordV2, rancor::Error>(archived).map_err(bad)?
        }
        other => return Err(format!("no decoder for format version {other}")),
    };
    Ok(Record { at: UnixMillis(mirror.at), entry: entry(mirror.entry)? })
}

/// A version 1 entry as version 2 writes it: an invocation consumed one message.
fn lift(entry: EntryV1) -> EntryV2 {
    match entry {
        EntryV1::Admitted { id, envelope, request } => EntryV2::Admitted { id, envelope, request },
        EntryV1::Received { from, seq, id, envelope } => EntryV2::Received { from, seq, id, envelope },
        EntryV1::Invoked(invocation) => EntryV2::Invoked { invocation, messages: 1 },
        EntryV1::Fired { owner, timer, fire_at, send } => EntryV2::Fired { owner, timer, fire_at, send },
        EntryV1::Acked { peer, seq } => EntryV2::Acked { peer, seq },
    }
}

pub(crate) fn address_v1(address: &Address) -> AddressV1 {
    AddressV1 { function: address.function.to_string(), id: address.id.to_string() }
}

pub(crate) fn value_v1(value: &TypedValue) -> TypedValueV1 {
    TypedValueV1 { typename: value.typename.to_string(), value: value.value.to_vec() }
}

pub(crate) fn envelope_v1(envelope: &Envelope) -> EnvelopeV1 {
    EnvelopeV1 {
        target: address_v1(&envelope.target),
        caller: envelope.caller.as_ref().map(address_v1),
        value: value_v1(&envelope.value),
    }
}

fn send_v1(send: &Send) -> SendV1 {
    let route = match send.route {
        Route::Local(id) => RouteV1::Local(id.0),
        Route::Peer { shard, seq } => RouteV1::Peer { shard: shard.0, seq },
        Route::Request => RouteV1::Request,
    };
    SendV1 { envelope: envelope_v1(&send.envelope), route }
}

fn entry_v2(entry: &Entry) -> EntryV2 {
    match entry {
        Entry::Admitted { id, envelope, request } => EntryV2::Admitted {
            id: id.0,
            envelope: envelope_v1(envelope),
            request: request
                .as_ref()
                .map(|request| RequestKeyV1 { key: request.key.to_string(), keyed: request.keyed }),
        },
        Entry::Received { from, seq, id, envelope } => {
            EntryV2::Received { from: from.0, seq: *seq, id: id.map(|id| id.0), envelope: envelope_v1(envelope) }
        }
        Entry::Invoked(invocation) => {
            EntryV2::Invoked { invocation: invocation_v1(invocation), messages: invocation.messages }
        }
        Entry::Fired { owner, timer, fire_at, send } => {
            EntryV2::Fired { owner: address_v1(owner), timer: timer.0, fire_at: fire_at.0, send: send_v1(send) }
        }
        Entry::Acked { peer, seq } => EntryV2::Acked { peer: peer.0, seq: *seq },
        Entry::Registered { function, values } => {
            EntryV2::Registered { function: function.to_string(), values: values.iter().map(spec_v2).collect() }
        }
    }
}

pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn invocation_v1(invocation: &Invocation) -> InvocationV1 {
    InvocationV1 {
        address: address_v1(&invocation.address),
        message: invocation.message.0,
        caller: invocation.caller.as_ref().map(address_v1),
        mutations: invocation
            .mutations
            .iter()
            .map(|mutation| MutationV1 {
                name: mutation.name.to_string(),
                value: mutation.value.as_ref().map(value_v1),
            })
            .collect(),
        sends: invocation.sends.iter().map(send_v1).collect(),
        timers: invocation
            .timers
            .iter()
            .map(|op| match op {
                TimerOp::Arm { id, fire_at, token, envelope } => TimerOpV1::Arm {
                    id: id.0,
                    fire_at: fire_at.0,
                    token: token.as_ref().map(|token| token.to_string()),
                    envelope: envelope_v1(envelope),
                },
                TimerOp::Cancel { id, token } => TimerOpV1::Cancel { id: id.0, token: token.to_string() },
            })
            .collect(),
        egress: invocation
            .egress
            .iter()
            .map(|egress| EgressV1 { egress: egress.egress.to_string(), value: value_v1(&egress.value) })
            .collect(),
        failure: invocation.failure.as_ref().map(|failure| failure.0.clone()),
    }
}

pub(crate) fn typename(text: &str) -> Result<TypeName, String> {
    TypeName::parse(text).map_err(|error| error.to_string())
}

pub(crate) fn address(mirror: AddressV1) -> Result<Address, String> {
    Address::new(typename(&mirror.function)?, &mirror.id).map_err(|error| error.to_string())
}

pub(crate) fn value(mirror: TypedValueV1) -> Result<TypedValue, String> {
    Ok(TypedValue::new(typename(&mirror.typename)?, mirror.value))
}

pub(crate) fn envelope(mirror: EnvelopeV1) -> Result<Envelope, String> {
    Ok(Envelope {
        target: address(mirror.target)?,
        caller: mirror.caller.map(address).transpose()?,
        value: value(mirror.value)?,
    })
}

fn send(mirror: SendV1) -> Result<Send, String> {
    let route = match mirror.route {
        RouteV1::Local(id) => Route::Local(MessageId(id)),
        RouteV1::Peer { shard, seq } => Route::Peer { shard: ShardId(shard), seq },
        RouteV1::Request => Route::Request,
    };
    Ok(Send { envelope: envelope(mirror.envelope)?, route })
}

fn entry(mirror: EntryV2) -> Result<Entry, String> {
    Ok(match mirror {
        EntryV2::Admitted { id, envelope: mirror, request } => Entry::Admitted {
            id: MessageId(id),
            envelope: envelope(mirror)?,
            request: request.map(|request| RequestKey { key: Arc::from(request.key), keyed: request.keyed }),
        },
        EntryV2::Received { from, seq, id, envelope: mirror } => {
            Entry::Received { from: ShardId(from), seq, id: id.map(MessageId), envelope: envelope(mirror)? }
        }
        EntryV2::Invoked { invocation: mirror, messages } => Entry::Invoked(Invocation {
            address: address(mirror.address)?,
            message: MessageId(mirror.message),
            messages,
            caller: mirror.caller.map(address).transpose()?,
            mutations: mirror
                .mutations
                .into_iter()
                .map(|mutation| {
                    Ok(Mutation { name: Arc::from(mutation.name), value: mutation.value.map(value).transpose()? })
                })
                .collect::<Result<_, String>>()?,
            sends: mirror.sends.into_iter().map(send).collect::<Result<_, String>>()?,
            timers: mirror
                .timers
                .into_iter()
                .map(|op| {
                    Ok(match op {
                        TimerOpV1::Arm { id, fire_at, token, envelope: mirror } => TimerOp::Arm {
                            id: TimerId(id),
                            fire_at: UnixMillis(fire_at),
                            token: token.map(Arc::from),
                            envelope: envelope(mirror)?,
                        },
                        TimerOpV1::Cancel { id, token } => TimerOp::Cancel { id: TimerId(id), token: Arc::from(token) },
                    })
                })
                .collect::<Result<_, String>>()?,
            egress: mirror
                .egress
                .into_iter()
                .map(|egress| Ok(Egress { egress: typename(&egress.egress)?, value: value(egress.value)? }))
                .collect::<Result<_, String>>()?,
            failure: mirror.failure.map(FunctionError),
        }),
        EntryV2::Fired { owner, timer, fire_at, send: mirror } => Entry::Fired {
            owner: address(owner)?,
            timer: TimerId(timer),
            fire_at: UnixMillis(fire_at),
            send: send(mirror)?,
        },
        EntryV2::Acked { peer, seq } => Entry::Acked { peer: ShardId(peer), seq },
        EntryV2::Registered { function, values } => Entry::Registered {
            function: typename(&function)?,
            values: values.into_iter().map(spec).collect::<Result<_, String>>()?,
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn address(text: &str) -> Address {
        let (function, id) = text.rsplit_once('/').unwrap();
        Address::new(TypeName::parse(function).unwrap(), id).unwrap()
    }

    pub(crate) fn value(text: &str) -> TypedValue {
        TypedValue::new(TypeName::parse("a/text").unwrap(), text.to_string())
    }

    pub(crate) fn envelope(target: &str, caller: Option<&str>) -> Envelope {
        Envelope { target: address(target), caller: caller.map(address), value: value("v") }
    }

    /// One record of every kind of the current version: those of version 1, then the kinds
    /// version 2 added.
    pub(crate) fn samples() -> Vec<Record> {
        let mut records = samples_v1();
        let Entry::Invoked(invocation) = &records[4].entry else { panic!("record 4 is an invocation") };
        let batch = Invocation { messages: 3, caller: None, ..invocation.clone() };
        let registered = Entry::Registered {
            function: TypeName::parse("a/remote").unwrap(),
            values: vec![
                ValueSpecDescriptor {
                    name: "seen".into(),
                    typename: TypeName::parse("io.statefun.types/int").unwrap(),
                    expiration: Expiration::AfterCall(std::time::Duration::from_millis(86_400_000)),
                },
                ValueSpecDescriptor {
                    name: "note".into(),
                    typename: TypeName::parse("a/text").unwrap(),
                    expiration: Expiration::AfterWrite(std::time::Duration::from_millis(1_500)),
                },
                ValueSpecDescriptor {
                    name: "plain".into(),
                    typename: TypeName::parse("io.statefun.types/unset").unwrap(),
                    expiration: Expiration::Never,
                },
            ],
        };
        records.push(Record { at: UnixMillis(8_000), entry: Entry::Invoked(batch) });
        records.push(Record { at: UnixMillis(9_000), entry: registered });
        records
    }

    /// One record of every kind of version 1, with every optional part present and absent.
    pub(crate) fn samples_v1() -> Vec<Record> {
        let invocation = Invocation {
            address: address("a/f/x"),
            message: MessageId(9),
            messages: 1,
            caller: Some(address("a/g/y")),
            mutations: vec![
                Mutation { name: "count".into(), value: Some(value("5")) },
                Mutation { name: "gone".into(), value: None },
            ],
            sends: vec![
                Send { envelope: envelope("a/f/z", Some("a/f/x")), route: Route::Local(MessageId(10)) },
                Send { envelope: envelope("a/f/w", Some("a/f/x")), route: Route::Peer { shard: ShardId(1), seq: 4 } },
                Send { envelope: envelope("statefun.ingress/request/0.k.q", None), route: Route::Request },
            ],
            timers: vec![
                TimerOp::Arm {
                    id: TimerId(3),
                    fire_at: UnixMillis(77),
                    token: Some("t".into()),
                    envelope: envelope("a/f/x", None),
                },
                TimerOp::Arm {
                    id: TimerId(4),
                    fire_at: UnixMillis(78),
                    token: None,
                    envelope: envelope("a/f/x", None),
                },
                TimerOp::Cancel { id: TimerId(2), token: "u".into() },
            ],
            egress: vec![Egress { egress: TypeName::parse("a/out").unwrap(), value: value("e") }],
            failure: None,
        };
        let failed = Invocation { failure: Some(FunctionError::new("bad")), sends: vec![], ..invocation.clone() };
        let entries = vec![
            Entry::Admitted { id: MessageId(1), envelope: envelope("a/f/x", None), request: None },
            Entry::Admitted {
                id: MessageId(2),
                envelope: envelope("a/f/x", Some("statefun.ingress/request/0.g.1")),
                request: Some(RequestKey { key: "1".into(), keyed: false }),
            },
            Entry::Received {
                from: ShardId(3),
                seq: 8,
                id: Some(MessageId(3)),
                envelope: envelope("a/f/x", Some("a/f/q")),
            },
            Entry::Received {
                from: ShardId(3),
                seq: 9,
                id: None,
                envelope: envelope("statefun.ingress/request/0.k.q", None),
            },
            Entry::Invoked(invocation),
            Entry::Invoked(failed),
            Entry::Fired {
                owner: address("a/f/x"),
                timer: TimerId(3),
                fire_at: UnixMillis(77),
                send: Send { envelope: envelope("a/f/x", Some("a/f/x")), route: Route::Local(MessageId(11)) },
            },
            Entry::Acked { peer: ShardId(1), seq: 4 },
        ];
        entries.into_iter().enumerate().map(|(at, entry)| Record { at: UnixMillis(at as u64 * 1000), entry }).collect()
    }

    #[test]
    fn every_kind_of_record_round_trips() {
        for record in samples() {
            let bytes = encode(&record).unwrap();
            assert_eq!(decode(FORMAT_VERSION, &bytes).unwrap(), record);
        }
    }

    #[test]
    fn damaged_archives_are_errors_not_panics() {
        let bytes = encode(&samples()[4]).unwrap();
        assert!(decode(FORMAT_VERSION, &bytes[..bytes.len() / 2]).is_err(), "half an archive is an error");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2_000 {
            let mut damaged = AlignedVec::<16>::new();
            damaged.extend_from_slice(&bytes);
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % damaged.len() as u64) as usize;
                damaged[at] ^= (state >> 32) as u8 | 1;
            }
            // Either outcome is fine; a panic is not.
            let _ = decode(FORMAT_VERSION, &damaged);
            let cut = (state % bytes.len() as u64) as usize;
            let mut truncated = AlignedVec::<16>::new();
            truncated.extend_from_slice(&bytes[..cut]);
            let _ = decode(FORMAT_VERSION, &truncated);
        }
    }
}
