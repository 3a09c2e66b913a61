//! Checkpoints of every shard to the blob store, log truncation below them, and recovery
//! from them.
//!
//! Each shard runs its own checkpointer task. Every `--snapshot-interval`, once its log grew
//! by `--snapshot-log-mib`, or when an operator asks (`statefun snapshot`), it:
//!
//! 1. appends every record the core made so far and begins a checkpoint at the last one's LSN
//!    `L` (`Shard::checkpoint_begin`, in constant time): of the addresses changed since the
//!    previous checkpoint began (the first checkpoint of a shard: all of them);
//! 2. captures them a bounded step at a time (`checkpoint_addresses_per_step`), yielding to
//!    the core loop in between; a record that changes an address not captured yet captures it
//!    first, so the checkpoint is the state at `L`;
//! 3. waits until the log is durable up to `L`, encodes the run as content-named chunks on a
//!    blocking thread, and uploads the chunks the store does not have;
//! 4. writes the manifest of the next generation create-only: a second writer of the same
//!    generation (a stale node on the same store) is fenced and stops checkpointing;
//! 5. only then removes the local log segments below `L`, and deletes from the store the
//!    manifests past the last `--snapshots-retained`, the chunks none of the kept ones names,
//!    and the segments wholly below the oldest kept one.
//!
//! The first checkpoint is a base; later ones are deltas. Once the deltas' bytes pass half the
//! base's (`checkpoint_deltas_fold_ratio`) or there are `checkpoint_deltas_max` of them, the
//! next checkpoint folds them: the stored base and deltas are read back and merged with the
//! new delta into a new base, all off the shard (LSM-style compaction).
//!
//! Sealed log segments are uploaded as soon as the log moves past them, so that a node on an
//! empty disk can replay what came after its newest checkpoint (up to the last sealed
//! segment: the segment being written is lost with its disk).
//!
//! Recovery ([`restore_point`]) takes the newest manifest that loads. It falls back to an
//! older generation only when the log still holds every record after that generation's LSN
//! up to the newer one's; otherwise it stops with the error of each.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use statefun_core::{Address, AddressState, ShardId, ShardMeta};
use statefun_storage::blob::BlobStore;
use statefun_storage::snapshot::{self as files, Chunk, ChunkKind, EncodedChunk, Manifest, SegmentRef};
use statefun_storage::{Lsn, SealedSegment};

use crate::limits;
use crate::rt::{self, Signal};
use crate::shard::{now, ShardNode};

/// What a checkpoint of one shard stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub generation: u64,
    /// The LSN of the last record it holds.
    pub lsn: u64,
    /// Chunks written by this checkpoint: its meta and its run.
    pub chunks: u32,
    /// Bytes written by this checkpoint: its new chunks and its manifest.
    pub bytes: u64,
    /// Addresses captured: all of them for a base, the changed ones for a delta.
    pub states: u64,
    /// Whether it is a base (every address) rather than a delta.
    pub base: bool,
}

/// How a node takes checkpoints.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    pub interval: Duration,
    /// Log bytes written since the last checkpoint that start the next one.
    pub log_bytes: u64,
    /// Manifests kept per shard in the store; older ones and what only they name go.
    pub retained: usize,
}

/// The last stored manifest and the sizes behind it, for the next checkpoint.
#[derive(Debug, Default)]
struct Latest {
    manifest: Option<Manifest>,
    base_bytes: u64,
    deltas_bytes: u64,
}

/// One shard's checkpoints: its store, its schedule, the operators waiting for one.
#[derive(Debug)]
pub struct Snapshots {
    store: BlobStore,
    config: SnapshotConfig,
    latest: RefCell<Latest>,
    /// Operators waiting for the next checkpoint.
    waiters: RefCell<Vec<oneshot::Sender<Result<Checkpoint, String>>>>,
    /// Wakes the checkpointer: an operator asked.
    asked: Rc<Signal>,
    /// Wakes the segment uploader: the log moved past a segment.
    sealed: Rc<Signal>,
    /// The highest LSN of the sealed segments uploaded so far.
    uploaded_through: Cell<Lsn>,
    /// Another writer stored a manifest of our next generation: this node stops.
    fenced: Cell<bool>,
}

impl Snapshots {
    pub fn new(store: BlobStore, config: SnapshotConfig, restored: Option<&Restored>) -> Snapshots {
        let latest = match restored {
            Some(restored) => Latest {
                manifest: Some(restored.manifest.clone()),
                base_bytes: restored.base_bytes,
                deltas_bytes: restored.deltas_bytes,
            },
            None => Latest::default(),
        };
        Snapshots {
            store,
            config,
            latest: RefCell::new(latest),
            waiters: RefCell::default(),
            asked: Rc::default(),
            sealed: Rc::default(),
            uploaded_through: Cell::new(Lsn(0)),
            fenced: Cell::new(false),
        }
    }

    /// The log moved past a segment: upload it.
    pub fn segment_sealed(&self) {
        self.sealed.notify();
    }
}

/// A shard's state as its newest usable checkpoint left it.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    pub meta: ShardMeta,
    pub states: Vec<AddressState>,
    base_bytes: u64,
    deltas_bytes: u64,
    /// The newest manifest did not load; this is an older one, usable only if the log reaches
    /// the newer one's LSN.
    pub must_reach: Option<(u64, String)>,
}

impl ShardNode {
    /// Takes a checkpoint of this shard now, and returns once its manifest is durable in the
    /// blob store.
    pub async fn snapshot_now(self: &Rc<Self>) -> Result<Checkpoint, String> {
        let Some(snapshots) = &self.snapshots else {
            return Err(format!("{}: snapshots are off (durability memory)", self.id));
        };
        let (sender, receiver) = oneshot::channel();
        snapshots.waiters.borrow_mut().push(sender);
        snapshots.asked.notify();
        receiver.await.unwrap_or_else(|_| Err(format!("{}: the checkpointer stopped", self.id)))
    }

    /// The checkpointer task of this shard. See the module documentation.
    pub(crate) async fn checkpointer(self: Rc<Self>) {
        let Some(snapshots) = &self.snapshots else { return };
        let mut last = Instant::now();
        loop {
            let due = snapshots.config.interval.saturating_sub(last.elapsed());
            let poll = Duration::from_millis(limits::checkpoint_poll_ms).min(due);
            futures_lite::future::or(snapshots.asked.wait(), rt::sleep(poll)).await;
            let asked = !snapshots.waiters.borrow().is_empty();
            let grown = self.log_bytes_since_checkpoint() >= snapshots.config.log_bytes;
            if !(asked || grown || last.elapsed() >= snapshots.config.interval) {
                continue;
            }
            let stored_lsn = snapshots.latest.borrow().manifest.as_ref().map(|manifest| manifest.lsn);
            if !asked && stored_lsn == Some(self.appended_lsn().0) {
                // Nothing happened since the last checkpoint.
                last = Instant::now();
                continue;
            }
            if !self.accepts_work() || snapshots.fenced.get() {
                let why = format!("{}: no checkpoint: the shard refuses work", self.id);
                for waiter in snapshots.waiters.take() {
                    let _ = waiter.send(Err(why.clone()));
                }
                last = Instant::now();
                continue;
            }
            let waiters = snapshots.waiters.take();
            let outcome = self.checkpoint(snapshots).await;
            last = Instant::now();
            match &outcome {
                Ok(checkpoint) => tracing::info!(
                    "{}: checkpoint generation {} at LSN {}: {} {} addresses, {} chunks, {} bytes",
                    self.id,
                    checkpoint.generation,
                    checkpoint.lsn,
                    if checkpoint.base { "base of" } else { "delta of" },
                    checkpoint.states,
                    checkpoint.chunks,
                    checkpoint.bytes
                ),
                Err(why) => tracing::warn!("{}: checkpoint failed: {why}", self.id),
            }
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
    }

    async fn checkpoint(self: &Rc<Self>, snapshots: &Snapshots) -> Result<Checkpoint, String> {
        // The first checkpoint is a base (every address is dirty since it was made or
        // replayed); later ones are deltas, folded into a new base off the shard once they
        // pass the bound.
        let (first, fold) = {
            let latest = snapshots.latest.borrow();
            let fold = latest.manifest.as_ref().is_some_and(|manifest| {
                manifest.deltas.len() >= limits::checkpoint_deltas_max
                    || latest.deltas_bytes * limits::checkpoint_deltas_fold_ratio >= latest.base_bytes
            });
            (latest.manifest.is_none(), fold)
        };
        let full = first || fold;
        // Everything the core made is in the log's batcher: the checkpoint is the state
        // after the last appended record.
        self.commit();
        let lsn = self.appended_lsn();
        let meta = self.core.borrow_mut().checkpoint_begin();
        let states = loop {
            let step = self.core.borrow_mut().checkpoint_step(limits::checkpoint_addresses_per_step);
            match step {
                Some(states) => break states,
                None => futures_lite::future::yield_now().await,
            }
        };
        let captured = states.len() as u64;
        let addresses: Vec<Address> = states.iter().map(|state| state.address.clone()).collect();
        let outcome = self.store_checkpoint(snapshots, lsn, meta, states, first, fold).await;
        match outcome {
            Ok((generation, new_chunks, written)) => {
                self.checkpoint_durable(lsn);
                if let Err(why) = self.collect_garbage(snapshots).await {
                    tracing::warn!(
                        "{}: cleaning the blob store failed (it is tried again after the next checkpoint): {why}",
                        self.id
                    );
                }
                Ok(Checkpoint {
                    generation,
                    lsn: lsn.0,
                    chunks: new_chunks,
                    bytes: written,
                    states: captured,
                    base: full,
                })
            }
            Err(why) => {
                // What it captured counts as changed again, for the next checkpoint.
                self.core.borrow_mut().checkpoint_failed(&addresses);
                Err(why)
            }
        }
    }

    /// Encodes and stores a captured checkpoint, then its manifest: the first one as a base,
    /// a delta, or (`fold`) a new base merged from the stored one and this delta off the
    /// shard. Returns its generation, chunks written and bytes written.
    async fn store_checkpoint(
        &self,
        snapshots: &Snapshots,
        lsn: Lsn,
        meta: ShardMeta,
        states: Vec<AddressState>,
        first: bool,
        fold: bool,
    ) -> Result<(u64, u32, u64), String> {
        let (shard, shards) = (self.id, self.routing.shards());
        self.wait_durable(lsn).await?;
        let previous = match (fold, snapshots.latest.borrow().manifest.clone()) {
            (true, Some(manifest)) => Some(manifest),
            _ => None,
        };
        let stored = match previous {
            Some(manifest) => {
                let path = files::manifest_path(shard, manifest.generation);
                let restored = load(&snapshots.store, shard, shards, &path).await?;
                Some(restored.ok_or_else(|| format!("{path} is of another layout"))?.states)
            }
            None => None,
        };
        let kind = if first || fold { ChunkKind::Base } else { ChunkKind::Delta };
        let encoded = rt::spawn_blocking(move || -> Result<Vec<EncodedChunk>, String> {
            let (mut meta, mut states) = (meta, states);
            statefun_core::sort_run(&mut meta, &mut states);
            let states = match stored {
                Some(stored) => files::merge(stored, [states]),
                None => states,
            };
            let mut chunks = vec![files::encode_meta(&meta, lsn.0).map_err(|error| error.to_string())?];
            chunks.extend(files::encode_run(kind, shard, shards, lsn.0, &states).map_err(|error| error.to_string())?);
            Ok(chunks)
        })
        .await?;
        let full = first || fold;
        let store = &snapshots.store;
        // Every chunk is new: its name hashes its content, which holds the checkpoint's LSN.
        let mut written = 0u64;
        for (done, chunk) in encoded.iter().enumerate() {
            store
                .put(&files::chunk_path(shard, &chunk.name), chunk.bytes.clone())
                .await
                .map_err(|error| error.to_string())?;
            written += chunk.bytes.len() as u64;
            if (done + 1) % limits::checkpoint_progress_chunks == 0 {
                tracing::info!("{shard}: checkpoint at LSN {}: {} of {} chunks stored", lsn.0, done + 1, encoded.len());
            }
        }
        let new_chunks = encoded.len() as u32;
        let run: Vec<String> = encoded[1..].iter().map(|chunk| chunk.name.clone()).collect();
        let run_bytes: u64 = encoded[1..].iter().map(|chunk| chunk.bytes.len() as u64).sum();
        let (generation, base, deltas, base_bytes, deltas_bytes) = {
            let latest = snapshots.latest.borrow();
            let generation = latest.manifest.as_ref().map_or(1, |manifest| manifest.generation + 1);
            match (&latest.manifest, full) {
                (Some(previous), false) => {
                    let mut deltas = previous.deltas.clone();
                    deltas.extend(run);
                    (generation, previous.base.clone(), deltas, latest.base_bytes, latest.deltas_bytes + run_bytes)
                }
                _ => (generation, run, Vec::new(), run_bytes, 0),
            }
        };
        let manifest = Manifest {
            shard,
            shards,
            generation,
            lsn: lsn.0,
            meta: encoded[0].name.clone(),
            base,
            deltas,
            segments: self.uploaded_after(snapshots, lsn),
            created_ms: now().0,
        };
        let bytes = manifest.encode().map_err(|error| error.to_string())?;
        written += bytes.len() as u64;
        let path = files::manifest_path(shard, generation);
        if !store.put_new(&path, bytes).await.map_err(|error| error.to_string())? {
            snapshots.fenced.set(true);
            return Err(format!(
                "{path} exists: another node writes this shard's checkpoints to {}; this one stops taking them",
                store.url()
            ));
        }
        *snapshots.latest.borrow_mut() = Latest { manifest: Some(manifest), base_bytes, deltas_bytes };
        Ok((generation, new_chunks, written))
    }

    /// The uploaded segments that carry the log on from `lsn`, in order and without gaps (the
    /// manifest names them; recovery also finds those uploaded later).
    fn uploaded_after(&self, snapshots: &Snapshots, lsn: Lsn) -> Vec<SegmentRef> {
        let mut next = lsn.0 + 1;
        let mut segments = Vec::new();
        for segment in self.sealed_segments() {
            if segment.last_lsn.0 < next || segment.last_lsn > snapshots.uploaded_through.get() {
                continue;
            }
            if segment.first_lsn.0 > next {
                break;
            }
            next = segment.last_lsn.0 + 1;
            segments.push(SegmentRef {
                name: segment_name(&segment),
                first_lsn: segment.first_lsn.0,
                last_lsn: segment.last_lsn.0,
            });
        }
        segments
    }

    /// Deletes the manifests past the retained ones, and the chunks and segments that no kept
    /// manifest needs.
    async fn collect_garbage(&self, snapshots: &Snapshots) -> Result<(), String> {
        let store = &snapshots.store;
        let shard = self.id;
        let error = |error: statefun_storage::Error| error.to_string();
        let manifests = manifests(store, shard).await.map_err(error)?;
        if manifests.len() <= snapshots.config.retained {
            return Ok(());
        }
        let cut = manifests.len() - snapshots.config.retained;
        let (old, kept) = manifests.split_at(cut);
        let mut needed = BTreeSet::new();
        let mut oldest_lsn = u64::MAX;
        for (_, path) in kept {
            let bytes = store.get(path).await.map_err(error)?.ok_or_else(|| format!("{path} vanished"))?;
            let manifest = Manifest::decode(path, &bytes).map_err(error)?;
            needed.extend(manifest.chunks().map(|name| files::chunk_path(shard, name)));
            oldest_lsn = oldest_lsn.min(manifest.lsn);
        }
        // Manifests first: a crash in between leaves only orphans, never a dangling name.
        for (_, path) in old {
            store.delete(path).await.map_err(error)?;
        }
        for (path, _) in store.list(&format!("{}/chunks/", files::shard_dir(shard))).await.map_err(error)? {
            if !needed.contains(&path) {
                store.delete(&path).await.map_err(error)?;
            }
        }
        for (path, _) in store.list(&format!("{}/segments/", files::shard_dir(shard))).await.map_err(error)? {
            if parse_segment_name(&path).is_some_and(|(_, _, last)| last <= oldest_lsn) {
                store.delete(&path).await.map_err(error)?;
            }
        }
        Ok(())
    }

    /// The segment uploader task of this shard: every sealed segment goes to the store.
    pub(crate) async fn segment_uploader(self: Rc<Self>) {
        let Some(snapshots) = &self.snapshots else { return };
        loop {
            snapshots.sealed.wait().await;
            for segment in self.sealed_segments() {
                if segment.last_lsn <= snapshots.uploaded_through.get() {
                    continue;
                }
                let name = segment_name(&segment);
                let path = segment.path.clone();
                let bytes = match rt::spawn_blocking(move || std::fs::read(&path)).await {
                    Ok(bytes) => Bytes::from(bytes),
                    // Removed below a checkpoint meanwhile: the checkpoint holds its records.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => {
                        tracing::warn!("{}: cannot read {}: {error}", self.id, segment.path.display());
                        break;
                    }
                };
                match snapshots.store.put(&files::segment_blob_path(self.id, &name), bytes).await {
                    Ok(()) => snapshots.uploaded_through.set(segment.last_lsn),
                    Err(error) => {
                        tracing::warn!(
                            "{}: uploading {name} failed; it is tried again with the next: {error}",
                            self.id
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// The generations and paths of `shard`'s manifests in the store, oldest first.
pub async fn manifests(store: &BlobStore, shard: ShardId) -> Result<Vec<(u64, String)>, statefun_storage::Error> {
    let mut manifests: Vec<(u64, String)> = store
        .list(&format!("{}/", files::manifest_dir(shard)))
        .await?
        .into_iter()
        .filter_map(|(path, _)| files::parse_manifest_generation(&path).map(|generation| (generation, path)))
        .collect();
    manifests.sort();
    Ok(manifests)
}

/// `{index:08}-{first_lsn:020}-{last_lsn:020}.seg`: a listing tells what each segment holds.
fn segment_name(segment: &SealedSegment) -> String {
    format!("{:08}-{:020}-{:020}.seg", segment.index, segment.first_lsn.0, segment.last_lsn.0)
}

/// The index, first and last LSN in a segment's name in the store.
fn parse_segment_name(path: &str) -> Option<(u32, u64, u64)> {
    let name = path.rsplit('/').next()?.strip_suffix(".seg")?;
    let mut parts = name.split('-');
    let index = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    (parts.next().is_none() && first <= last).then_some((index, first, last))
}

/// The newest usable checkpoint of `shard` of a layout of `shards` in `store`, if any (those
/// of other layouts are passed over); with an empty local log, the stored segments after it
/// are downloaded into `log_dir` first.
pub async fn restore_point(
    store: &BlobStore,
    shard: ShardId,
    shards: u16,
    log_dir: &Path,
) -> Result<Option<Restored>, String> {
    let manifests = manifests(store, shard).await.map_err(|error| error.to_string())?;
    let mut failures: Vec<String> = Vec::new();
    let mut newest_lsn: Option<u64> = None;
    for (_, path) in manifests.iter().rev() {
        match load(store, shard, shards, path).await {
            Ok(None) => continue,
            Ok(Some(mut restored)) => {
                if let Some(newest) = newest_lsn {
                    restored.must_reach = Some((newest, failures.join("; ")));
                }
                download_segments(store, shard, restored.manifest.lsn, log_dir).await?;
                return Ok(Some(restored));
            }
            Err(why) => {
                tracing::error!("shard {}: checkpoint {path} cannot be used: {why}", shard.0);
                if newest_lsn.is_none() {
                    // The LSN a fallback must still reach, if the manifest itself reads.
                    newest_lsn = manifest_lsn(store, path).await.or(Some(u64::MAX));
                }
                failures.push(format!("{path}: {why}"));
            }
        }
    }
    match failures.is_empty() {
        true => Ok(None),
        false => Err(format!("no checkpoint of shard {} can be used: {}", shard.0, failures.join("; "))),
    }
}

async fn manifest_lsn(store: &BlobStore, path: &str) -> Option<u64> {
    let bytes = store.get(path).await.ok()??;
    Manifest::decode(path, &bytes).ok().map(|manifest| manifest.lsn)
}

/// Loads a manifest and its chunks (mapped in place when the store is a local directory);
/// `None` if it is of another layout than `shards`.
async fn load(store: &BlobStore, shard: ShardId, shards: u16, path: &str) -> Result<Option<Restored>, String> {
    let error = |error: statefun_storage::Error| error.to_string();
    let bytes = store.get(path).await.map_err(error)?.ok_or_else(|| format!("{path} vanished"))?;
    let manifest = Manifest::decode(path, &bytes).map_err(error)?;
    if manifest.shard != shard {
        return Err(format!("{path} is a checkpoint of shard {}", manifest.shard.0));
    }
    if manifest.shards != shards {
        return Ok(None);
    }
    let mut meta = None;
    let mut base = Vec::new();
    let mut deltas: Vec<(u64, Vec<AddressState>)> = Vec::new();
    let (mut base_bytes, mut deltas_bytes) = (0, 0);
    let chunks = manifest.chunks().count();
    for (done, name) in manifest.chunks().enumerate() {
        if (done + 1) % limits::checkpoint_progress_chunks == 0 {
            tracing::info!("{shard}: restoring {path}: {} of {chunks} chunks read", done + 1);
        }
        let chunk_path = files::chunk_path(shard, name);
        let (chunk, bytes) = read_chunk(store, &chunk_path).await?;
        match chunk {
            Chunk::Meta { meta: loaded, .. } => meta = Some(loaded),
            Chunk::States { kind: ChunkKind::Base, states, .. } => {
                base_bytes += bytes;
                base.extend(states);
            }
            Chunk::States { lsn, states, .. } => {
                deltas_bytes += bytes;
                match deltas.last_mut() {
                    Some((run_lsn, run)) if *run_lsn == lsn => run.extend(states),
                    _ => deltas.push((lsn, states)),
                }
            }
        }
    }
    let meta = meta.ok_or_else(|| format!("{path} names no meta chunk"))?;
    if meta.shard != shard {
        return Err(format!("{path}: its meta is of shard {}", meta.shard.0));
    }
    let states = rt::spawn_blocking(move || files::merge(base, deltas.into_iter().map(|(_, run)| run))).await;
    Ok(Some(Restored { manifest, meta, states, base_bytes, deltas_bytes, must_reach: None }))
}

/// A chunk from the store, validated: mapped in place from a local store's file, otherwise
/// read whole. Returns it and its size.
async fn read_chunk(store: &BlobStore, path: &str) -> Result<(Chunk, u64), String> {
    if let Some(file) = store.url().strip_prefix("file://").map(|dir| PathBuf::from(dir).join(path)) {
        let size = std::fs::metadata(&file).map_err(|error| format!("{}: {error}", file.display()))?.len();
        let chunk = rt::spawn_blocking(move || files::load_chunk(&file)).await.map_err(|error| error.to_string())?;
        return Ok((chunk, size));
    }
    let bytes =
        store.get(path).await.map_err(|error| error.to_string())?.ok_or_else(|| format!("{path} is missing"))?;
    let size = bytes.len() as u64;
    let name = path.rsplit('/').next().unwrap_or(path).to_string();
    let chunk =
        rt::spawn_blocking(move || files::decode_chunk(&name, &bytes)).await.map_err(|error| error.to_string())?;
    Ok((chunk, size))
}

/// With no local log, fetches the stored segments that carry on from `lsn`, in order and
/// without gaps, as the local log's segments.
async fn download_segments(store: &BlobStore, shard: ShardId, lsn: u64, log_dir: &Path) -> Result<(), String> {
    let has_local = std::fs::read_dir(log_dir)
        .map(|entries| entries.filter_map(Result::ok).any(|entry| entry.path().extension().is_some_and(|e| e == "seg")))
        .unwrap_or(false);
    if has_local {
        return Ok(());
    }
    let mut stored: Vec<(u32, u64, u64, String)> = store
        .list(&format!("{}/segments/", files::shard_dir(shard)))
        .await
        .map_err(|error| error.to_string())?
        .into_iter()
        .filter_map(|(path, _)| parse_segment_name(&path).map(|(index, first, last)| (index, first, last, path)))
        .collect();
    stored.sort();
    let mut next = lsn + 1;
    let mut wanted: VecDeque<(u32, String)> = VecDeque::new();
    for (index, first, last, path) in stored {
        if last < next {
            continue;
        }
        if first > next {
            break;
        }
        wanted.push_back((index, path));
        next = last + 1;
    }
    if wanted.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(log_dir).map_err(|error| format!("{}: {error}", log_dir.display()))?;
    let count = wanted.len();
    for (done, (index, path)) in wanted.into_iter().enumerate() {
        let bytes =
            store.get(&path).await.map_err(|error| error.to_string())?.ok_or_else(|| format!("{path} vanished"))?;
        let file = statefun_storage::segment_path(log_dir, index);
        rt::spawn_blocking(move || -> std::io::Result<()> {
            let mut temporary = file.clone();
            temporary.set_extension("seg.download");
            std::fs::write(&temporary, &bytes)?;
            std::fs::File::open(&temporary)?.sync_all()?;
            std::fs::rename(&temporary, &file)
        })
        .await
        .map_err(|error| format!("writing segment {index} into {}: {error}", log_dir.display()))?;
        tracing::info!("shard {}: restored log segment {} of {count} from the blob store", shard.0, done + 1);
    }
    std::fs::File::open(log_dir).and_then(|dir| dir.sync_all()).map_err(|error| error.to_string())?;
    Ok(())
}

/// A manifest in a line, for `statefun snapshots list`.
pub fn describe(manifest: &Manifest) -> String {
    format!(
        "shard {} generation {}: LSN {}, a base of {} chunks and {} delta chunks, {} log segments after it, written at {} (Unix ms)",
        manifest.shard.0,
        manifest.generation,
        manifest.lsn,
        manifest.base.len(),
        manifest.deltas.len(),
        manifest.segments.len(),
        manifest.created_ms
    )
}

#[cfg(test)]
mod tests {
    //! The names of segments in the store.

    use super::*;

    #[test]
    fn segment_names_carry_their_lsns() {
        let segment = SealedSegment { index: 3, path: PathBuf::from("x"), first_lsn: Lsn(10), last_lsn: Lsn(99) };
        let name = segment_name(&segment);
        assert_eq!(parse_segment_name(&format!("shard-0/segments/{name}")), Some((3, 10, 99)));
        assert_eq!(parse_segment_name("shard-0/segments/junk.seg"), None);
    }
}
