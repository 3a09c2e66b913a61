//! In-process invocations per second on one core, memory mode, no network: the core state
//! machine running the example counter. Each iteration admits a batch of ingress messages
//! spread over 1,000 keys, runs them, and commits and releases their records (two per
//! message: its admission and its invocation), as a shard's turn does.
//!
//! `cargo bench -p statefun-perf --bench invocations`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use statefun::core::{Address, RequestKey, Retention, Routing, Shard, ShardId, TypeName, TypedValue, UnixMillis};

const BATCH: usize = 256;
const KEYS: usize = 1_000;

fn messages(function: &str, body: &str) -> Vec<(Address, TypedValue)> {
    let function = TypeName::parse(function).expect("type name");
    let value = TypedValue::new(TypeName::parse("example/delta").expect("type name"), body.to_string());
    (0..BATCH)
        .map(|n| (Address::new(function.clone(), &format!("k{}", n * 7 % KEYS)).expect("address"), value.clone()))
        .collect()
}

fn counter(c: &mut Criterion) {
    let registry = Arc::new(statefun::examples::registry());
    let mut shard = Shard::new(ShardId(0), Routing::new(1), registry, Retention::default());
    let batch = messages("example/counter", "1");
    let mut key = 0u64;
    let mut group = c.benchmark_group("invocations");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("counter", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| {
                for (target, value) in batch {
                    key += 1;
                    let request = RequestKey { key: key.to_string().into(), keyed: false };
                    shard.request(UnixMillis(1), target, value, request, None).expect("admit");
                }
                let ran = shard.run(UnixMillis(1), BATCH);
                assert_eq!(ran, BATCH);
                let mut records = 0;
                while let Some(record) = shard.poll_record() {
                    shard.released(&record);
                    records += 1;
                }
                assert_eq!(records, 2 * BATCH);
                while shard.poll_output().is_some() {}
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, counter);
criterion_main!(benches);
