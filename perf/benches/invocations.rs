//! In-process invocations per second on one core, memory mode, no network: the core state
//! machine running the example counter. Each iteration admits a batch of messages spread
//! over 1,000 keys, runs them, and takes the records, as a shard's turn does.
//!
//! `cargo bench -p statefun-perf --bench invocations`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use statefun::core::{Address, Envelope, Routing, Shard, ShardId, TypeName, TypedValue, UnixMillis};

const BATCH: usize = 256;
const KEYS: usize = 1_000;

fn envelopes(function: &str, body: &str) -> Vec<Envelope> {
    let function = TypeName::parse(function).expect("type name");
    let value = TypedValue::new(TypeName::parse("example/delta").expect("type name"), body.to_string());
    (0..BATCH)
        .map(|n| Envelope {
            target: Address::new(function.clone(), &format!("k{}", n * 7 % KEYS)).expect("address"),
            caller: None,
            value: value.clone(),
        })
        .collect()
}

fn counter(c: &mut Criterion) {
    let registry = Arc::new(statefun::examples::registry());
    let mut shard = Shard::new(ShardId(0), Routing::new(1), registry);
    let batch = envelopes("example/counter", "1");
    let mut group = c.benchmark_group("invocations");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("counter", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| {
                for envelope in batch {
                    shard.admit(envelope).expect("admit");
                }
                let ran = shard.run(UnixMillis(1), BATCH);
                assert_eq!(ran, BATCH);
                let mut records = 0;
                while shard.poll_record().is_some() {
                    records += 1;
                }
                assert_eq!(records, BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, counter);
criterion_main!(benches);
