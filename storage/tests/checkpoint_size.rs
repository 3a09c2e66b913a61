//! Incremental checkpoints write what changed: a shard of 1,000,000 counters takes a base
//! checkpoint, then 1% of the counters, chosen at random, change, and the delta checkpoint's
//! encoded chunks must be about 1% of the base's bytes. Bytes, not time: the figure does not
//! depend on the machine. The shard is built from a restored state rather than a million
//! invocations, and the 1% go through real ingress requests and invocations.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use statefun_core::{
    sort_run, Address, AddressState, Context, FunctionError, FunctionSpec, LinkState, Registry, RequestKey, Retention,
    Routing, Shard, ShardId, ShardMeta, TypeName, TypedValue, UnixMillis, ValueSpec, ValueState,
};
use statefun_storage::snapshot::{encode_meta, encode_run, ChunkKind};

const KEYS: usize = 1_000_000;
const CHANGED: usize = KEYS / 100;
const COUNT: ValueSpec<i64> = ValueSpec::new("count");

fn counter() -> TypeName {
    TypeName::parse("test/counter").unwrap()
}

fn address(key: usize) -> Address {
    Address::new(counter(), &format!("k{key}")).unwrap()
}

fn registry() -> Arc<Registry> {
    let add = |context: &mut Context<'_>, message: &TypedValue| -> Result<(), FunctionError> {
        let delta: i64 = message.as_text()?.parse().map_err(|_| FunctionError::new("not a number"))?;
        let count = context.get(&COUNT)?.unwrap_or(0) + delta;
        context.set(&COUNT, &count)
    };
    let mut registry = Registry::new();
    registry.register(FunctionSpec::new(counter(), add).with_value(&COUNT)).unwrap();
    Arc::new(registry)
}

/// The bytes of a checkpoint as it would be stored: its meta and its run of chunks.
fn stored_bytes(kind: ChunkKind, meta: &ShardMeta, states: &[AddressState]) -> usize {
    let run = encode_run(kind, meta.shard, meta.shards, 1, states).unwrap();
    encode_meta(meta, 1).unwrap().bytes.len() + run.iter().map(|chunk| chunk.bytes.len()).sum::<usize>()
}

#[test]
fn a_delta_of_one_percent_of_the_keys_is_about_one_percent_of_the_bytes() {
    let meta = ShardMeta {
        shard: ShardId(0),
        shards: 1,
        message_next: 0,
        timer_next: 0,
        links: vec![LinkState { sent_next: 0, outbox: Vec::new(), received_last: None }],
        remote_specs: Vec::new(),
        requests: Vec::new(),
    };
    let states = (0..KEYS).map(|key| AddressState {
        address: address(key),
        values: vec![ValueState {
            name: "count".into(),
            value: TypedValue::of(&(key as i64)),
            written_at: UnixMillis(0),
            called_at: UnixMillis(0),
        }],
        mailbox: Vec::new(),
        timers: Vec::new(),
    });
    let mut shard = Shard::restore(meta, states, Routing::new(1), registry(), Retention::default());
    shard.track_changes();

    let (meta, base) = shard.full_state();
    assert_eq!(base.len(), KEYS);
    let base_bytes = stored_bytes(ChunkKind::Base, &meta, &base);

    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut changed = BTreeSet::new();
    while changed.len() < CHANGED {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        changed.insert((rng % KEYS as u64) as usize);
    }
    for (n, key) in changed.iter().enumerate() {
        let request = RequestKey { key: format!("r{n}").into(), keyed: false };
        shard.request(UnixMillis(1), address(*key), TypedValue::new(counter(), "5"), request, None).unwrap();
    }
    assert_eq!(shard.run(UnixMillis(1), usize::MAX), CHANGED);
    while let Some(record) = shard.poll_record() {
        shard.released(&record);
    }

    let mut meta = shard.checkpoint_begin();
    let mut delta = shard.checkpoint_step(usize::MAX).unwrap();
    sort_run(&mut meta, &mut delta);
    assert_eq!(delta.len(), CHANGED, "exactly the changed addresses");
    assert!(delta.iter().all(|state| changed.contains(&state.address.id[1..].parse().unwrap())));
    let delta_bytes = stored_bytes(ChunkKind::Delta, &meta, &delta);
    let ratio = delta_bytes as f64 / base_bytes as f64;
    eprintln!("base {base_bytes} bytes, delta {delta_bytes} bytes: {:.3}%", ratio * 100.0);
    assert!((0.008..0.013).contains(&ratio), "the delta is {:.3}% of the base", ratio * 100.0);
}
