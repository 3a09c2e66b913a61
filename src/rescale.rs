//! Starting with another shard count than the data was written with: every shard of the old
//! layout is recovered in full (its newest checkpoint, then its log), the state is moved to
//! the new layout's shards by key group (`statefun_core::rescale`), and each new shard gets a
//! base checkpoint at LSN 0 to start from with an empty log.
//!
//! The steps, so that a crash at any point is recovered by starting again:
//!
//! 1. the old shards are read (their logs, wherever step 3 left them), nothing is changed;
//! 2. the new checkpoints are written to the blob store with a generation above every
//!    existing one, marked with the new shard count (recovery passes over the checkpoints of
//!    other layouts), and the old layout's log segments are deleted from the store;
//! 3. every old log directory is renamed `log.rescaled`, so no new shard replays an old log;
//! 4. the layout file is written: the commit point. Until then a restart redoes the move
//!    from the old layout; from then on it starts from the new checkpoints;
//! 5. the `log.rescaled` directories are removed ([`clean_up`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use statefun_core::{Registry, Routing, Shard, ShardId};
use statefun_storage::blob::BlobStore;
use statefun_storage::snapshot::{self as files, ChunkKind, Manifest};
use statefun_storage::{LogConfig, Lsn};

use crate::node::Config;
use crate::rt;
use crate::shard::now;
use crate::snapshots;

/// Where an old shard's log is: renamed by an interrupted move, or still in place.
fn old_log_dir(config: &Config, shard: ShardId) -> PathBuf {
    let renamed = config.log_dir(shard).with_extension("rescaled");
    if renamed.exists() {
        renamed
    } else {
        config.log_dir(shard)
    }
}

/// The shard count of the newest checkpoint of shard 0 in the store, if there is one: the
/// layout of a data directory that was lost.
pub fn stored_layout(store: &BlobStore) -> anyhow::Result<Option<u16>> {
    rt::block_on(async {
        let Some((_, path)) = snapshots::manifests(store, ShardId(0)).await?.pop() else { return Ok(None) };
        let bytes = store.get(&path).await?.with_context(|| format!("{path} vanished"))?;
        Ok(Some(Manifest::decode(&path, &bytes)?.shards))
    })
}

/// Moves the state of `old` shards to `config.shards`. See the module documentation.
pub fn rescale(config: &Config, old: u16, registry: &Arc<Registry>, store: &BlobStore) -> anyhow::Result<()> {
    let new = config.shards;
    tracing::info!("{}: moving the state of {old} shards to {new}", config.data_dir.display());
    let started = std::time::Instant::now();
    rt::block_on(async {
        let routing = Routing::new(old);
        let mut checkpoints = Vec::with_capacity(usize::from(old));
        for index in 0..old {
            let id = ShardId(index);
            let dir = old_log_dir(config, id);
            let restored = snapshots::restore_point(store, id, old, &dir).await.map_err(anyhow::Error::msg)?;
            let after = restored.as_ref().map_or(Lsn(0), |restored| Lsn(restored.manifest.lsn));
            let log = LogConfig { dir: dir.clone(), segment_bytes: config.segment_bytes, after };
            let (recovered, _, _) = statefun_storage::open(&log)
                .await
                .with_context(|| format!("cannot read the log of shard {index} in {}", dir.display()))?;
            let mut shard = match restored {
                Some(restored) => {
                    Shard::restore(restored.meta, restored.states, routing, registry.clone(), config.retention)
                }
                None => Shard::new(id, routing, registry.clone(), config.retention),
            };
            for record in &recovered.records {
                shard.replay(record);
            }
            let (meta, states) = shard.full_state();
            tracing::info!("shard {index} of {old}: {} addresses", states.len());
            checkpoints.push((meta, states));
        }
        let moved = statefun_core::rescale::rescale(checkpoints, Routing::new(new));

        let stored = store.list("").await?;
        let generation =
            1 + stored.iter().filter_map(|(path, _)| files::parse_manifest_generation(path)).max().unwrap_or(0);
        for (meta, states) in moved {
            let shard = meta.shard;
            let meta_chunk = files::encode_meta(&meta, 0)?;
            let run = files::encode_run(ChunkKind::Base, shard, new, 0, &states)?;
            for chunk in std::iter::once(&meta_chunk).chain(&run) {
                store.put(&files::chunk_path(shard, &chunk.name), chunk.bytes.clone()).await?;
            }
            let manifest = Manifest {
                shard,
                shards: new,
                generation,
                lsn: 0,
                meta: meta_chunk.name.clone(),
                base: run.iter().map(|chunk| chunk.name.clone()).collect(),
                deltas: Vec::new(),
                segments: Vec::new(),
                created_ms: now().0,
            };
            let path = files::manifest_path(shard, generation);
            if !store.put_new(&path, manifest.encode()?).await? {
                bail!("{path} exists: another node is writing to {}", store.url());
            }
            tracing::info!("shard {} of {new}: {} addresses, checkpoint {path}", shard.0, states.len());
        }
        for (path, _) in &stored {
            if path.contains("/segments/") {
                store.delete(path).await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    for index in 0..old {
        let dir = config.log_dir(ShardId(index));
        if dir.exists() {
            let renamed = dir.with_extension("rescaled");
            std::fs::rename(&dir, &renamed)
                .with_context(|| format!("cannot rename {} to {}", dir.display(), renamed.display()))?;
        }
    }
    tracing::info!("moved {old} shards to {new} in {} ms", started.elapsed().as_millis());
    Ok(())
}

/// Removes the logs of an old layout, once a new one is committed (step 5; run at every
/// start, so an interrupted clean-up finishes).
pub fn clean_up(config: &Config) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(&config.data_dir) else { return Ok(()) };
    for entry in entries.filter_map(Result::ok) {
        let renamed = entry.path().join("log.rescaled");
        if renamed.is_dir() {
            std::fs::remove_dir_all(&renamed).with_context(|| format!("cannot remove {}", renamed.display()))?;
        }
    }
    Ok(())
}
