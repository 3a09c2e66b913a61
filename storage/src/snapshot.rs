//! Checkpoint files: a shard's state at one LSN as immutable chunks plus a manifest per
//! checkpoint, the same files on local disk and in a blob store.
//!
//! A checkpoint at LSN `L` is a *meta* chunk (the shard's [`ShardMeta`]), the *base* (every
//! address with state, as sorted runs of [`AddressState`]s split into chunks of at most
//! [`chunk_states_max`] states) and zero or more *deltas* (the addresses changed since the
//! previous checkpoint, a tombstone for each one deleted). A chunk is named by the SHA-256
//! of its bytes, so it is written once, shared between checkpoints by name and checked when
//! read. A [`Manifest`], one per generation, lists the chunks of one checkpoint and the log
//! segments that follow it; writing it is the commit point of the checkpoint.
//!
//! Every file is a 32-byte header (magic, version, kind, payload length, CRC-32C) and then an
//! rkyv archive of a versioned mirror type (`ChunkV1`, `ManifestV1`), starting at offset 32 so
//! that a mapped file can be validated in place. The mirror types reuse the log's
//! ([`crate::codec`]); decoding validates the archive (bytecheck), re-parses every name and
//! checks the order of the states, so a damaged or foreign file is an error naming it, never
//! a panic. The byte layout is in `storage/FORMAT.md`, "Checkpoint files".

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use statefun_core::{
    AddressState, Envelope, LinkState, MessageId, ShardId, ShardMeta, StoredOutcome, StoredRequest, TimerId,
    TimerState, UnixMillis, ValueState,
};

use crate::codec::{self, AddressV1, EnvelopeV1, TypedValueV1, ValueSpecV2};
use crate::limits::{chunk_bytes_target, chunk_states_max};
use crate::Error;

/// "SFSC", little-endian: a statefun snapshot chunk.
pub const CHUNK_MAGIC: u32 = u32::from_le_bytes(*b"SFSC");
/// "SFSM", little-endian: a statefun snapshot manifest.
pub const MANIFEST_MAGIC: u32 = u32::from_le_bytes(*b"SFSM");
/// The version of chunk and manifest files this code writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
/// The header before every chunk's and manifest's payload.
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// The alignment of the payload: rkyv archives are read in place.
const PAYLOAD_ALIGN_BYTES: usize = 16;
/// The kind byte of a manifest's header.
const MANIFEST_KIND: u8 = 0;
const CHUNK_SUFFIX: &str = ".chunk";
const MANIFEST_SUFFIX: &str = ".manifest";
/// Hex digits of a SHA-256 digest.
const DIGEST_HEX_LEN: usize = 64;
/// Digits of a manifest's generation in its file name.
const GENERATION_DIGITS: usize = 20;
/// The longest segment name a manifest may hold: a file name on common file systems.
const SEGMENT_NAME_BYTES_MAX: usize = 255;

const _: () = assert!(SNAPSHOT_HEADER_BYTES % PAYLOAD_ALIGN_BYTES == 0);

// ---------------------------------------------------------------------------------------------
// The on-disk mirror types: they change only with a new format version.

/// The payload of a chunk file, version 1.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ChunkV1 {
    shard: u16,
    shards: u16,
    /// The LSN of the checkpoint: its state is that after this record.
    lsn: u64,
    body: BodyV1,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum BodyV1 {
    Meta(ShardMetaV1),
    /// Sorted by address, strictly.
    States(Vec<AddressStateV1>),
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ShardMetaV1 {
    message_next: u64,
    timer_next: u64,
    links: Vec<LinkStateV1>,
    remote_specs: Vec<RemoteSpecsV1>,
    requests: Vec<StoredRequestV1>,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct LinkStateV1 {
    sent_next: u64,
    outbox: Vec<OutboxEntryV1>,
    received_last: Option<u64>,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct OutboxEntryV1 {
    seq: u64,
    envelope: EnvelopeV1,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct RemoteSpecsV1 {
    function: String,
    values: Vec<ValueSpecV2>,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct StoredRequestV1 {
    key: String,
    target: AddressV1,
    outcome: Option<StoredOutcomeV1>,
    expires_at: u64,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum StoredOutcomeV1 {
    Reply(TypedValueV1),
    Failed(String),
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct AddressStateV1 {
    address: AddressV1,
    values: Vec<ValueStateV1>,
    mailbox: Vec<MailV1>,
    timers: Vec<TimerStateV1>,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ValueStateV1 {
    name: String,
    value: TypedValueV1,
    written_at: u64,
    called_at: u64,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct MailV1 {
    id: u64,
    envelope: EnvelopeV1,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct TimerStateV1 {
    id: u64,
    fire_at: u64,
    token: Option<String>,
    envelope: EnvelopeV1,
}

/// The payload of a manifest file, version 1.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ManifestV1 {
    shard: u16,
    shards: u16,
    generation: u64,
    lsn: u64,
    meta: String,
    base: Vec<String>,
    deltas: Vec<String>,
    segments: Vec<SegmentRefV1>,
    created_ms: u64,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SegmentRefV1 {
    name: String,
    first_lsn: u64,
    last_lsn: u64,
}

// ---------------------------------------------------------------------------------------------
// Chunks.

/// What a chunk holds, also the kind byte of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// The shard's [`ShardMeta`] (kind byte 1).
    Meta,
    /// A slice of the run of every address with state (kind byte 2).
    Base,
    /// A slice of the run of the addresses changed since the previous checkpoint, with a
    /// tombstone (an empty state) for each one deleted (kind byte 3).
    Delta,
}

impl ChunkKind {
    fn code(self) -> u8 {
        match self {
            ChunkKind::Meta => 1,
            ChunkKind::Base => 2,
            ChunkKind::Delta => 3,
        }
    }

    fn from_code(code: u8) -> Option<ChunkKind> {
        match code {
            1 => Some(ChunkKind::Meta),
            2 => Some(ChunkKind::Base),
            3 => Some(ChunkKind::Delta),
            _ => None,
        }
    }
}

/// A chunk ready to store under its name (in [`chunk_path`]).
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    /// The lowercase hex SHA-256 of `bytes`, then `.chunk`.
    pub name: String,
    /// The whole file: header and archive.
    pub bytes: Bytes,
    pub kind: ChunkKind,
    /// Address states in the chunk (0 for the meta).
    pub states: usize,
}

/// A decoded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// The meta of the checkpoint at `lsn`.
    Meta { lsn: u64, meta: ShardMeta },
    /// A slice of a base or delta run of the checkpoint at `lsn`, sorted by address.
    States { kind: ChunkKind, shard: ShardId, shards: u16, lsn: u64, states: Vec<AddressState> },
}

/// Encodes the meta of a shard's checkpoint at `lsn`.
pub fn encode_meta(meta: &ShardMeta, lsn: u64) -> Result<EncodedChunk, Error> {
    let mirror = ChunkV1 { shard: meta.shard.0, shards: meta.shards, lsn, body: BodyV1::Meta(meta_v1(meta)) };
    seal_chunk(ChunkKind::Meta, &mirror, 0)
}

/// Encodes one chunk of a base or delta run of `shard`'s checkpoint at `lsn`. `states` must
/// be sorted by address without duplicates, as `Shard::checkpoint_step` returns them; a run
/// longer than [`chunk_states_max`] belongs in several chunks ([`encode_run`]). An archive
/// must stay under 2 GiB (rkyv's 32-bit offsets); a larger one is an error.
pub fn encode_states(
    kind: ChunkKind,
    shard: ShardId,
    shards: u16,
    lsn: u64,
    states: &[AddressState],
) -> Result<EncodedChunk, Error> {
    assert!(kind != ChunkKind::Meta, "a run of address states is a base or a delta chunk");
    assert!(
        states.windows(2).all(|pair| pair[0].address < pair[1].address),
        "the states of a checkpoint chunk must be sorted by address without duplicates"
    );
    let mirror = ChunkV1 { shard: shard.0, shards, lsn, body: BodyV1::States(states.iter().map(state_v1).collect()) };
    seal_chunk(kind, &mirror, states.len())
}

/// Encodes a whole base or delta run as consecutive chunks of at most [`chunk_states_max`]
/// states, each closed early once its estimated size reaches [`chunk_bytes_target`] (one
/// state always fits). An empty run is no chunk.
pub fn encode_run(
    kind: ChunkKind,
    shard: ShardId,
    shards: u16,
    lsn: u64,
    states: &[AddressState],
) -> Result<Vec<EncodedChunk>, Error> {
    encode_run_bounded(kind, shard, shards, lsn, states, chunk_states_max, chunk_bytes_target)
}

fn encode_run_bounded(
    kind: ChunkKind,
    shard: ShardId,
    shards: u16,
    lsn: u64,
    states: &[AddressState],
    states_max: usize,
    bytes_target: usize,
) -> Result<Vec<EncodedChunk>, Error> {
    assert!(states_max > 0);
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < states.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < states.len() && end - start < states_max {
            let size = state_bytes(&states[end]);
            if end > start && bytes + size > bytes_target {
                break;
            }
            bytes += size;
            end += 1;
        }
        chunks.push(encode_states(kind, shard, shards, lsn, &states[start..end])?);
        start = end;
    }
    Ok(chunks)
}

/// Decodes the chunk stored as `name`. Checks the header, the length, the checksum, that
/// `name` is the SHA-256 of `bytes`, the archive, every name in it and the order of its
/// states. `bytes` need not be aligned (an unaligned payload is copied once).
pub fn decode_chunk(name: &str, bytes: &[u8]) -> Result<Chunk, Error> {
    decode_chunk_unnamed(name, bytes).map_err(|why| Error::Snapshot { name: name.to_string(), why })
}

/// Maps the chunk file at `path` and decodes it in place; its file name is its chunk name.
/// Blocking: the pages are read as the checksum and validation touch them.
pub fn load_chunk(path: &Path) -> Result<Chunk, Error> {
    let named = |why: String| Error::Snapshot { name: path.display().to_string(), why };
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return Err(named("the file name is not a chunk name".to_string()));
    };
    let map = crate::mmap::map_immutable(path)?;
    decode_chunk_unnamed(name, &map).map_err(named)
}

/// Whether `name` is a chunk's name: 64 lowercase hex digits, then `.chunk`.
pub fn is_chunk_name(name: &str) -> bool {
    name.strip_suffix(CHUNK_SUFFIX).is_some_and(|stem| {
        stem.len() == DIGEST_HEX_LEN && stem.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn seal_chunk(kind: ChunkKind, mirror: &ChunkV1, states: usize) -> Result<EncodedChunk, Error> {
    let bytes =
        seal(CHUNK_MAGIC, kind.code(), mirror).map_err(|why| Error::Encode(format!("checkpoint chunk: {why}")))?;
    let name = format!("{}{CHUNK_SUFFIX}", sha256_hex(&bytes));
    Ok(EncodedChunk { name, bytes: Bytes::from(bytes), kind, states })
}

fn decode_chunk_unnamed(name: &str, bytes: &[u8]) -> Result<Chunk, String> {
    if !is_chunk_name(name) {
        return Err("the name is not a chunk name (64 lowercase hex digits, then .chunk)".to_string());
    }
    let (code, payload) = unseal(CHUNK_MAGIC, bytes)?;
    let kind = ChunkKind::from_code(code).ok_or_else(|| format!("unknown chunk kind {code}"))?;
    let digest = sha256_hex(bytes);
    if name[..DIGEST_HEX_LEN] != digest {
        return Err(format!("its contents are those of {digest}{CHUNK_SUFFIX}"));
    }
    with_aligned(payload, |payload| {
        let archived = rkyv::access::<ArchivedChunkV1, rancor::Error>(payload).map_err(bad_archive)?;
        let (shard, shards, lsn) = (archived.shard.to_native(), archived.shards.to_native(), archived.lsn.to_native());
        check_shard(shard, shards)?;
        match (&archived.body, kind) {
            (ArchivedBodyV1::Meta(archived), ChunkKind::Meta) => {
                let mirror = rkyv::deserialize::<ShardMetaV1, rancor::Error>(archived).map_err(bad_archive)?;
                Ok(Chunk::Meta { lsn, meta: meta(mirror, ShardId(shard), shards)? })
            }
            (ArchivedBodyV1::States(archived), ChunkKind::Base | ChunkKind::Delta) => {
                // One state at a time: the mirror of the whole run is never held.
                let mut states: Vec<AddressState> = Vec::with_capacity(archived.len());
                for archived in archived.iter() {
                    let mirror = rkyv::deserialize::<AddressStateV1, rancor::Error>(archived).map_err(bad_archive)?;
                    let state = state(mirror)?;
                    if let Some(last) = states.last() {
                        if last.address >= state.address {
                            return Err(format!(
                                "address {} follows {}: a run must be sorted",
                                state.address, last.address
                            ));
                        }
                    }
                    states.push(state);
                }
                Ok(Chunk::States { kind, shard: ShardId(shard), shards, lsn, states })
            }
            (_, kind) => Err(format!("the header says {kind:?} but the archive holds the other kind of chunk")),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Manifests.

/// One checkpoint of a shard: what to load and what to replay after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub shard: ShardId,
    /// The shard count of the node that wrote it.
    pub shards: u16,
    /// Increases by one per checkpoint of the shard; the name of the file ([`manifest_path`]).
    pub generation: u64,
    /// The checkpoint's LSN: its state is that after this record.
    pub lsn: u64,
    /// The meta chunk's name.
    pub meta: String,
    /// The base run's chunks, in address order.
    pub base: Vec<String>,
    /// The delta runs' chunks, oldest first; each run's chunks in address order. Later runs
    /// override earlier ones ([`merge`]).
    pub deltas: Vec<String>,
    /// The log segments in the blob store after the checkpoint, in LSN order and without
    /// gaps, the first holding `lsn + 1`.
    pub segments: Vec<SegmentRef>,
    /// When the manifest was written, Unix milliseconds.
    pub created_ms: u64,
}

/// A log segment stored in the blob store ([`segment_blob_path`]) and the records it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef {
    /// A plain file name.
    pub name: String,
    pub first_lsn: u64,
    pub last_lsn: u64,
}

impl Manifest {
    /// The manifest file. Refuses a manifest that [`Manifest::decode`] would refuse.
    pub fn encode(&self) -> Result<Bytes, Error> {
        self.check().map_err(|why| Error::Encode(format!("manifest of generation {}: {why}", self.generation)))?;
        let mirror = ManifestV1 {
            shard: self.shard.0,
            shards: self.shards,
            generation: self.generation,
            lsn: self.lsn,
            meta: self.meta.clone(),
            base: self.base.clone(),
            deltas: self.deltas.clone(),
            segments: self
                .segments
                .iter()
                .map(|segment| SegmentRefV1 {
                    name: segment.name.clone(),
                    first_lsn: segment.first_lsn,
                    last_lsn: segment.last_lsn,
                })
                .collect(),
            created_ms: self.created_ms,
        };
        let bytes = seal(MANIFEST_MAGIC, MANIFEST_KIND, &mirror)
            .map_err(|why| Error::Encode(format!("manifest of generation {}: {why}", self.generation)))?;
        Ok(Bytes::from(bytes))
    }

    /// Decodes the manifest stored as `name` (a path or a file name). Checks the header, the
    /// checksum, the archive, the names of its chunks and segments, the order of its
    /// segments, and that a generation in `name` is the manifest's own.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Manifest, Error> {
        Manifest::decode_unnamed(name, bytes).map_err(|why| Error::Snapshot { name: name.to_string(), why })
    }

    /// The names of its chunks: the meta, the base, then the deltas.
    pub fn chunks(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.meta.as_str())
            .chain(self.base.iter().map(String::as_str))
            .chain(self.deltas.iter().map(String::as_str))
    }

    fn decode_unnamed(name: &str, bytes: &[u8]) -> Result<Manifest, String> {
        let (kind, payload) = unseal(MANIFEST_MAGIC, bytes)?;
        if kind != MANIFEST_KIND {
            return Err(format!("kind {kind} in a manifest's header, expected {MANIFEST_KIND}"));
        }
        let manifest = with_aligned(payload, |payload| {
            let archived = rkyv::access::<ArchivedManifestV1, rancor::Error>(payload).map_err(bad_archive)?;
            rkyv::deserialize::<ManifestV1, rancor::Error>(archived).map_err(bad_archive)
        })?;
        let manifest = Manifest {
            shard: ShardId(manifest.shard),
            shards: manifest.shards,
            generation: manifest.generation,
            lsn: manifest.lsn,
            meta: manifest.meta,
            base: manifest.base,
            deltas: manifest.deltas,
            segments: manifest
                .segments
                .into_iter()
                .map(|segment| SegmentRef {
                    name: segment.name,
                    first_lsn: segment.first_lsn,
                    last_lsn: segment.last_lsn,
                })
                .collect(),
            created_ms: manifest.created_ms,
        };
        manifest.check()?;
        if let Some(generation) = parse_manifest_generation(name) {
            if generation != manifest.generation {
                return Err(format!("it holds generation {}, its name says {generation}", manifest.generation));
            }
        }
        Ok(manifest)
    }

    /// What a manifest must be, written or read.
    fn check(&self) -> Result<(), String> {
        check_shard(self.shard.0, self.shards)?;
        if let Some(chunk) = self.chunks().find(|chunk| !is_chunk_name(chunk)) {
            return Err(format!("{:?} is not a chunk name", truncated(chunk)));
        }
        let mut next_lsn = self.lsn.checked_add(1).ok_or("the checkpoint LSN is the last one")?;
        for (at, segment) in self.segments.iter().enumerate() {
            let plain = !segment.name.is_empty()
                && segment.name.len() <= SEGMENT_NAME_BYTES_MAX
                && segment.name != "."
                && segment.name != ".."
                && !segment.name.contains(['/', '\\', '\0']);
            if !plain {
                return Err(format!("segment {:?} is not a plain file name", truncated(&segment.name)));
            }
            let starts = if at == 0 { segment.first_lsn <= next_lsn } else { segment.first_lsn == next_lsn };
            if !starts || segment.last_lsn < segment.first_lsn || segment.last_lsn < next_lsn {
                return Err(format!(
                    "segment {} holds LSNs {}..={} where LSN {next_lsn} comes next",
                    segment.name, segment.first_lsn, segment.last_lsn
                ));
            }
            next_lsn = segment.last_lsn.saturating_add(1);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Paths in a store: `{data_dir}/snapshots/` on local disk, the bucket's prefix in a blob store.

/// Where a shard's files live: `shard-{i}`.
pub fn shard_dir(shard: ShardId) -> String {
    format!("shard-{}", shard.0)
}

/// `shard-{i}/chunks/{name}`.
pub fn chunk_path(shard: ShardId, name: &str) -> String {
    format!("shard-{}/chunks/{name}", shard.0)
}

/// The folder of a shard's manifests, to list: `shard-{i}/manifests`.
pub fn manifest_dir(shard: ShardId) -> String {
    format!("shard-{}/manifests", shard.0)
}

/// `shard-{i}/manifests/{generation:020}.manifest`: names sort as generations do.
pub fn manifest_path(shard: ShardId, generation: u64) -> String {
    format!("shard-{}/manifests/{generation:020}{MANIFEST_SUFFIX}", shard.0)
}

/// `shard-{i}/segments/{name}`: a log segment in the blob store.
pub fn segment_blob_path(shard: ShardId, name: &str) -> String {
    format!("shard-{}/segments/{name}", shard.0)
}

/// The generation of a manifest from its path or file name (`{generation:020}.manifest`),
/// or `None` for any other name.
pub fn parse_manifest_generation(path: &str) -> Option<u64> {
    let file = path.rsplit('/').next()?;
    let digits = file.strip_suffix(MANIFEST_SUFFIX)?;
    if digits.len() != GENERATION_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Merging runs.

/// The state after a base and its deltas: each of `base` and `deltas` is a run sorted by
/// address, later runs override earlier ones address by address, and tombstones (empty
/// states) remove. Returns a sorted run without empty states. A k-way merge: no run is
/// copied, each state is moved once.
pub fn merge(base: Vec<AddressState>, deltas: impl IntoIterator<Item = Vec<AddressState>>) -> Vec<AddressState> {
    let runs: Vec<Vec<AddressState>> = std::iter::once(base).chain(deltas).collect();
    for run in &runs {
        assert!(
            run.windows(2).all(|pair| pair[0].address < pair[1].address),
            "a run to merge must be sorted by address without duplicates"
        );
    }
    let mut merged = Vec::with_capacity(runs.iter().map(Vec::len).max().unwrap_or(0));
    let mut runs: Vec<std::vec::IntoIter<AddressState>> = runs.into_iter().map(Vec::into_iter).collect();
    let mut heads = BinaryHeap::with_capacity(runs.len());
    for (run, states) in runs.iter_mut().enumerate() {
        if let Some(state) = states.next() {
            heads.push(Head { state, run });
        }
    }
    while let Some(Head { state, run }) = heads.pop() {
        if let Some(next) = runs[run].next() {
            heads.push(Head { state: next, run });
        }
        // Heads of one address leave the heap in run order: the last one wins.
        let mut winner = state;
        while heads.peek().is_some_and(|head| head.state.address == winner.address) {
            let Some(Head { state, run }) = heads.pop() else { break };
            if let Some(next) = runs[run].next() {
                heads.push(Head { state: next, run });
            }
            winner = state;
        }
        if !winner.is_empty() {
            merged.push(winner);
        }
    }
    merged
}

/// The next state of one run in [`merge`]; the heap's greatest is the smallest address, of
/// the earliest run.
#[derive(Debug)]
struct Head {
    state: AddressState,
    run: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Head) -> Ordering {
        other.state.address.cmp(&self.state.address).then(other.run.cmp(&self.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Head) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

// ---------------------------------------------------------------------------------------------
// The header.

/// A file of `magic` and `kind`: the header, then the archive of `mirror` from offset 32.
fn seal<T>(magic: u32, kind: u8, mirror: &T) -> Result<Vec<u8>, String>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<Vec<u8>, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    // The archive is written after a zeroed header: its padding counts from the start of the
    // file, which gives the same bytes as an archive of its own, since 32 is a multiple of 16.
    let mut bytes = rkyv::api::high::to_bytes_in::<_, rancor::Error>(mirror, vec![0u8; SNAPSHOT_HEADER_BYTES])
        .map_err(|error| error.to_string())?;
    let length = (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64;
    let crc = crc32c::crc32c(&bytes[SNAPSHOT_HEADER_BYTES..]);
    bytes[0..4].copy_from_slice(&magic.to_le_bytes());
    bytes[4..6].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    bytes[6] = kind;
    bytes[8..16].copy_from_slice(&length.to_le_bytes());
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// Checks the header of a file of `magic`; returns its kind byte and its payload.
fn unseal(magic: u32, bytes: &[u8]) -> Result<(u8, &[u8]), String> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(format!("{} bytes is shorter than the {SNAPSHOT_HEADER_BYTES}-byte header", bytes.len()));
    }
    let found = u32::from_le_bytes(le_bytes(bytes, 0));
    if found != magic {
        return Err(format!("bad magic {found:#010x}, expected {magic:#010x}"));
    }
    let version = u16::from_le_bytes(le_bytes(bytes, 4));
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(format!("format version {version}; this build reads version {SNAPSHOT_FORMAT_VERSION}"));
    }
    if bytes[7] != 0 || bytes[20..SNAPSHOT_HEADER_BYTES].iter().any(|&byte| byte != 0) {
        return Err("reserved bytes of the header are not zero".to_string());
    }
    let payload = &bytes[SNAPSHOT_HEADER_BYTES..];
    let length = u64::from_le_bytes(le_bytes(bytes, 8));
    if length != payload.len() as u64 {
        return Err(format!("the header gives a payload of {length} bytes, the file holds {}", payload.len()));
    }
    let crc = u32::from_le_bytes(le_bytes(bytes, 16));
    let actual = crc32c::crc32c(payload);
    if crc != actual {
        return Err(format!("the payload's CRC-32C is {actual:#010x}, the header says {crc:#010x}"));
    }
    Ok((bytes[6], payload))
}

fn le_bytes<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut word = [0u8; N];
    word.copy_from_slice(&bytes[at..at + N]);
    word
}

/// Runs `read` on `payload`, in place when it is aligned for rkyv, else on an aligned copy.
fn with_aligned<T>(payload: &[u8], read: impl FnOnce(&[u8]) -> T) -> T {
    if (payload.as_ptr() as usize) % PAYLOAD_ALIGN_BYTES == 0 {
        read(payload)
    } else {
        let mut copy = AlignedVec::<PAYLOAD_ALIGN_BYTES>::with_capacity(payload.len());
        copy.extend_from_slice(payload);
        read(&copy)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hex = String::with_capacity(DIGEST_HEX_LEN);
    for byte in digest.as_ref() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

fn bad_archive(error: rancor::Error) -> String {
    format!("bad archive: {error}")
}

fn check_shard(shard: u16, shards: u16) -> Result<(), String> {
    let max = statefun_core::limits::shards_max;
    if shards == 0 || shards > max {
        return Err(format!("a shard count of {shards}, out of 1..={max}"));
    }
    if shard >= shards {
        return Err(format!("shard {shard} of {shards}"));
    }
    Ok(())
}

/// The start of a name that may be long or odd, for an error message.
fn truncated(text: &str) -> String {
    text.chars().take(80).collect()
}

/// A rough size of a state's archive, to close chunks near [`chunk_bytes_target`].
fn state_bytes(state: &AddressState) -> usize {
    fn address(address: &statefun_core::Address) -> usize {
        16 + address.function.as_str().len() + address.id.len()
    }
    fn envelope(envelope: &Envelope) -> usize {
        32 + address(&envelope.target)
            + envelope.caller.as_ref().map_or(0, address)
            + envelope.value.typename.as_str().len()
            + envelope.value.value.len()
    }
    let values: usize = state
        .values
        .iter()
        .map(|value| 40 + value.name.len() + value.value.typename.as_str().len() + value.value.value.len())
        .sum();
    let mailbox: usize = state.mailbox.iter().map(|(_, mail)| 8 + envelope(mail)).sum();
    let timers: usize = state
        .timers
        .iter()
        .map(|timer| 32 + timer.token.as_ref().map_or(0, |token| token.len()) + envelope(&timer.envelope))
        .sum();
    32 + address(&state.address) + values + mailbox + timers
}

// ---------------------------------------------------------------------------------------------
// Conversions from and to the core's types.

fn meta_v1(meta: &ShardMeta) -> ShardMetaV1 {
    ShardMetaV1 {
        message_next: meta.message_next,
        timer_next: meta.timer_next,
        links: meta
            .links
            .iter()
            .map(|link| LinkStateV1 {
                sent_next: link.sent_next,
                outbox: link
                    .outbox
                    .iter()
                    .map(|(seq, envelope)| OutboxEntryV1 { seq: *seq, envelope: codec::envelope_v1(envelope) })
                    .collect(),
                received_last: link.received_last,
            })
            .collect(),
        remote_specs: meta
            .remote_specs
            .iter()
            .map(|(function, specs)| RemoteSpecsV1 {
                function: function.to_string(),
                values: specs.iter().map(codec::spec_v2).collect(),
            })
            .collect(),
        requests: meta
            .requests
            .iter()
            .map(|request| StoredRequestV1 {
                key: request.key.to_string(),
                target: codec::address_v1(&request.target),
                outcome: request.outcome.as_ref().map(|outcome| match outcome {
                    StoredOutcome::Reply(value) => StoredOutcomeV1::Reply(codec::value_v1(value)),
                    StoredOutcome::Failed(why) => StoredOutcomeV1::Failed(why.clone()),
                }),
                expires_at: request.expires_at.0,
            })
            .collect(),
    }
}

fn meta(mirror: ShardMetaV1, shard: ShardId, shards: u16) -> Result<ShardMeta, String> {
    if mirror.links.len() != usize::from(shards) {
        return Err(format!("{} links in a meta of {shards} shards", mirror.links.len()));
    }
    Ok(ShardMeta {
        shard,
        shards,
        message_next: mirror.message_next,
        timer_next: mirror.timer_next,
        links: mirror
            .links
            .into_iter()
            .map(|link| {
                Ok(LinkState {
                    sent_next: link.sent_next,
                    outbox: link
                        .outbox
                        .into_iter()
                        .map(|entry| Ok((entry.seq, codec::envelope(entry.envelope)?)))
                        .collect::<Result<_, String>>()?,
                    received_last: link.received_last,
                })
            })
            .collect::<Result<_, String>>()?,
        remote_specs: mirror
            .remote_specs
            .into_iter()
            .map(|specs| {
                let values = specs.values.into_iter().map(codec::spec).collect::<Result<_, String>>()?;
                Ok((codec::typename(&specs.function)?, values))
            })
            .collect::<Result<_, String>>()?,
        requests: mirror
            .requests
            .into_iter()
            .map(|request| {
                Ok(StoredRequest {
                    key: Arc::from(request.key),
                    target: codec::address(request.target)?,
                    outcome: match request.outcome {
                        Some(StoredOutcomeV1::Reply(value)) => Some(StoredOutcome::Reply(codec::value(value)?)),
                        Some(StoredOutcomeV1::Failed(why)) => Some(StoredOutcome::Failed(why)),
                        None => None,
                    },
                    expires_at: UnixMillis(request.expires_at),
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

fn state_v1(state: &AddressState) -> AddressStateV1 {
    AddressStateV1 {
        address: codec::address_v1(&state.address),
        values: state
            .values
            .iter()
            .map(|value| ValueStateV1 {
                name: value.name.to_string(),
                value: codec::value_v1(&value.value),
                written_at: value.written_at.0,
                called_at: value.called_at.0,
            })
            .collect(),
        mailbox: state
            .mailbox
            .iter()
            .map(|(id, envelope)| MailV1 { id: id.0, envelope: codec::envelope_v1(envelope) })
            .collect(),
        timers: state
            .timers
            .iter()
            .map(|timer| TimerStateV1 {
                id: timer.id.0,
                fire_at: timer.fire_at.0,
                token: timer.token.as_ref().map(|token| token.to_string()),
                envelope: codec::envelope_v1(&timer.envelope),
            })
            .collect(),
    }
}

fn state(mirror: AddressStateV1) -> Result<AddressState, String> {
    Ok(AddressState {
        address: codec::address(mirror.address)?,
        values: mirror
            .values
            .into_iter()
            .map(|value| {
                Ok(ValueState {
                    name: Arc::from(value.name),
                    value: codec::value(value.value)?,
                    written_at: UnixMillis(value.written_at),
                    called_at: UnixMillis(value.called_at),
                })
            })
            .collect::<Result<_, String>>()?,
        mailbox: mirror
            .mailbox
            .into_iter()
            .map(|mail| Ok((MessageId(mail.id), codec::envelope(mail.envelope)?)))
            .collect::<Result<_, String>>()?,
        timers: mirror
            .timers
            .into_iter()
            .map(|timer| {
                Ok(TimerState {
                    id: TimerId(timer.id),
                    fire_at: UnixMillis(timer.fire_at),
                    token: timer.token.map(Arc::from),
                    envelope: codec::envelope(timer.envelope)?,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

/// Checkpoint files round-trip, refuse every damage they can detect without panicking, and
/// runs split and merge as the recovery path needs: built from hand-made core states.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use statefun_core::{Expiration, TypeName, ValueSpecDescriptor};

    use super::*;
    use crate::codec::tests::{address, envelope, value};

    fn value_state(name: &str, text: &str) -> ValueState {
        ValueState { name: name.into(), value: value(text), written_at: UnixMillis(10), called_at: UnixMillis(20) }
    }

    fn timer(id: u64, token: Option<&str>) -> TimerState {
        TimerState {
            id: TimerId(id),
            fire_at: UnixMillis(1_000 + id),
            token: token.map(Arc::from),
            envelope: envelope("a/f/x", Some("a/f/y")),
        }
    }

    /// An address with values, mail and timers, every optional part present and absent.
    fn full(id: &str) -> AddressState {
        AddressState {
            address: address(&format!("a/f/{id}")),
            values: vec![value_state("count", "5"), value_state("empty", "")],
            mailbox: vec![
                (MessageId(7), envelope(&format!("a/f/{id}"), None)),
                (MessageId(8), envelope(&format!("a/f/{id}"), Some("a/g/z"))),
            ],
            timers: vec![timer(3, Some("t")), timer(4, None)],
        }
    }

    fn values_only(id: &str, text: &str) -> AddressState {
        AddressState {
            address: address(&format!("a/f/{id}")),
            values: vec![value_state("count", text)],
            mailbox: vec![],
            timers: vec![],
        }
    }

    fn tombstone(id: &str) -> AddressState {
        AddressState { address: address(&format!("a/f/{id}")), values: vec![], mailbox: vec![], timers: vec![] }
    }

    fn sorted(mut states: Vec<AddressState>) -> Vec<AddressState> {
        states.sort_by(|a, b| a.address.cmp(&b.address));
        states
    }

    fn sample_meta() -> ShardMeta {
        let spec = |name: &str, expiration| ValueSpecDescriptor {
            name: name.into(),
            typename: TypeName::parse("io.statefun.types/int").unwrap(),
            expiration,
        };
        ShardMeta {
            shard: ShardId(1),
            shards: 3,
            message_next: 42,
            timer_next: 9,
            links: vec![
                LinkState {
                    sent_next: 5,
                    outbox: vec![(3, envelope("a/f/x", None)), (4, envelope("a/f/y", Some("a/f/x")))],
                    received_last: Some(11),
                },
                LinkState { sent_next: 0, outbox: vec![], received_last: None },
                LinkState { sent_next: 1, outbox: vec![], received_last: Some(0) },
            ],
            remote_specs: vec![
                (
                    TypeName::parse("a/remote").unwrap(),
                    vec![
                        spec("seen", Expiration::AfterCall(Duration::from_millis(86_400_000))),
                        spec("note", Expiration::AfterWrite(Duration::from_millis(1_500))),
                        spec("plain", Expiration::Never),
                    ],
                ),
                (TypeName::parse("b/none").unwrap(), vec![]),
            ],
            requests: vec![
                StoredRequest {
                    key: "k1".into(),
                    target: address("a/f/x"),
                    outcome: Some(StoredOutcome::Reply(value("r"))),
                    expires_at: UnixMillis(5_000),
                },
                StoredRequest {
                    key: "k2".into(),
                    target: address("a/f/y"),
                    outcome: Some(StoredOutcome::Failed("bad".into())),
                    expires_at: UnixMillis(6_000),
                },
                StoredRequest { key: "k3".into(), target: address("a/f/z"), outcome: None, expires_at: UnixMillis(0) },
            ],
        }
    }

    fn empty_meta() -> ShardMeta {
        ShardMeta {
            shard: ShardId(0),
            shards: 1,
            message_next: 0,
            timer_next: 0,
            links: vec![LinkState { sent_next: 0, outbox: vec![], received_last: None }],
            remote_specs: vec![],
            requests: vec![],
        }
    }

    fn sample_states() -> Vec<AddressState> {
        sorted(vec![
            full("a"),
            values_only("b", "1"),
            AddressState { mailbox: full("c").mailbox, ..tombstone("c") },
            AddressState { timers: full("d").timers, ..tombstone("d") },
            AddressState { values: vec![], ..full("e") },
        ])
    }

    /// The same bytes with the header's CRC and the name fixed up: damage that only the
    /// archive's validation can catch.
    fn reseal(bytes: &mut [u8]) -> String {
        let crc = crc32c::crc32c(&bytes[SNAPSHOT_HEADER_BYTES..]);
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        format!("{}.chunk", sha256_hex(bytes))
    }

    fn directory(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("statefun-snapshot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn snapshot_meta_chunks_round_trip() {
        for (meta, lsn) in [(sample_meta(), 77), (empty_meta(), 0)] {
            let chunk = encode_meta(&meta, lsn).unwrap();
            assert_eq!((chunk.kind, chunk.states), (ChunkKind::Meta, 0));
            assert_eq!(decode_chunk(&chunk.name, &chunk.bytes).unwrap(), Chunk::Meta { lsn, meta });
        }
    }

    #[test]
    fn snapshot_state_chunks_round_trip() {
        let mut delta = sample_states();
        delta.push(tombstone("z"));
        for (kind, states) in [(ChunkKind::Base, sample_states()), (ChunkKind::Delta, delta), (ChunkKind::Base, vec![])]
        {
            let chunk = encode_states(kind, ShardId(2), 4, 99, &states).unwrap();
            assert_eq!((chunk.kind, chunk.states), (kind, states.len()));
            let decoded = decode_chunk(&chunk.name, &chunk.bytes).unwrap();
            assert_eq!(decoded, Chunk::States { kind, shard: ShardId(2), shards: 4, lsn: 99, states });
        }
    }

    #[test]
    fn snapshot_unaligned_bytes_decode() {
        let chunk = encode_states(ChunkKind::Base, ShardId(0), 1, 5, &sample_states()).unwrap();
        let mut shifted = AlignedVec::<16>::new();
        shifted.extend_from_slice(&[0]);
        shifted.extend_from_slice(&chunk.bytes);
        let decoded = decode_chunk(&chunk.name, &shifted[1..]).unwrap();
        assert_eq!(decoded, decode_chunk(&chunk.name, &chunk.bytes).unwrap());
    }

    #[test]
    fn snapshot_chunk_name_is_the_sha256_and_a_renamed_chunk_is_refused() {
        let chunk = encode_states(ChunkKind::Delta, ShardId(0), 1, 5, &sample_states()).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &chunk.bytes);
        let hex: String = digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(chunk.name, format!("{hex}.chunk"));
        assert!(is_chunk_name(&chunk.name));

        let other = encode_meta(&empty_meta(), 5).unwrap();
        let error = decode_chunk(&other.name, &chunk.bytes).unwrap_err().to_string();
        assert!(error.contains(&other.name) && error.contains(&chunk.name), "{error}");
        let upper = chunk.name.to_uppercase().replace(".CHUNK", ".chunk");
        for bad in [upper.as_str(), &chunk.name[1..], "x.chunk", "", &format!("dir/{}", chunk.name), &hex] {
            assert!(!is_chunk_name(bad), "{bad}");
            assert!(decode_chunk(bad, &chunk.bytes).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_every_byte_flip_is_an_error_not_a_panic() {
        let chunk = encode_states(ChunkKind::Base, ShardId(0), 1, 5, &[full("a")]).unwrap();
        for at in 0..chunk.bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = chunk.bytes.to_vec();
                damaged[at] ^= flip;
                let error = decode_chunk(&chunk.name, &damaged).unwrap_err();
                assert!(matches!(&error, Error::Snapshot { name, .. } if *name == chunk.name), "{error}");
                if at >= SNAPSHOT_HEADER_BYTES {
                    // With the checksum and the name fixed up, only the archive's validation
                    // and the conversion stand between the damage and the caller.
                    let name = reseal(&mut damaged);
                    let _ = decode_chunk(&name, &damaged);
                }
            }
        }
    }

    #[test]
    fn snapshot_truncation_is_an_error() {
        let chunk = encode_meta(&sample_meta(), 3).unwrap();
        for cut in 0..chunk.bytes.len() {
            assert!(decode_chunk(&chunk.name, &chunk.bytes[..cut]).is_err(), "cut at {cut}");
            let mut shorter = chunk.bytes[..cut].to_vec();
            if cut >= SNAPSHOT_HEADER_BYTES {
                shorter[8..16].copy_from_slice(&((cut - SNAPSHOT_HEADER_BYTES) as u64).to_le_bytes());
                let name = reseal(&mut shorter);
                assert!(decode_chunk(&name, &shorter).is_err(), "resealed cut at {cut}");
            }
        }
    }

    #[test]
    fn snapshot_kind_in_the_header_must_match_the_archive() {
        let chunk = encode_meta(&sample_meta(), 3).unwrap();
        let mut bytes = chunk.bytes.to_vec();
        bytes[6] = ChunkKind::Base.code();
        let name = reseal(&mut bytes);
        let error = decode_chunk(&name, &bytes).unwrap_err().to_string();
        assert!(error.contains("other kind"), "{error}");
    }

    #[test]
    fn snapshot_payload_is_the_archive_on_its_own() {
        let mirror = ChunkV1 { shard: 0, shards: 1, lsn: 1, body: BodyV1::Meta(meta_v1(&sample_meta())) };
        let alone = rkyv::to_bytes::<rancor::Error>(&mirror).unwrap();
        let sealed = seal(CHUNK_MAGIC, ChunkKind::Meta.code(), &mirror).unwrap();
        assert_eq!(&sealed[SNAPSHOT_HEADER_BYTES..], alone.as_slice());
    }

    #[test]
    fn snapshot_unsorted_runs_in_a_chunk_are_refused() {
        // Written around the encoder's assertion, as a foreign writer could.
        let states = [values_only("b", "1"), values_only("a", "1")];
        let mirror =
            ChunkV1 { shard: 0, shards: 1, lsn: 1, body: BodyV1::States(states.iter().map(state_v1).collect()) };
        let bytes = seal(CHUNK_MAGIC, ChunkKind::Base.code(), &mirror).unwrap();
        let name = format!("{}.chunk", sha256_hex(&bytes));
        let error = decode_chunk(&name, &bytes).unwrap_err().to_string();
        assert!(error.contains("sorted"), "{error}");
    }

    #[test]
    fn snapshot_load_chunk_maps_a_real_file() {
        let dir = directory("load");
        let chunk = encode_states(ChunkKind::Base, ShardId(0), 1, 8, &sample_states()).unwrap();
        let path = dir.join(&chunk.name);
        std::fs::write(&path, &chunk.bytes).unwrap();
        assert_eq!(load_chunk(&path).unwrap(), decode_chunk(&chunk.name, &chunk.bytes).unwrap());

        let renamed = dir.join(encode_meta(&empty_meta(), 1).unwrap().name);
        std::fs::rename(&path, &renamed).unwrap();
        let error = load_chunk(&renamed).unwrap_err();
        assert!(matches!(&error, Error::Snapshot { name, .. } if *name == renamed.display().to_string()), "{error}");
        assert!(matches!(load_chunk(&path), Err(Error::Io { .. })));
        let empty = dir.join(&chunk.name);
        std::fs::write(&empty, b"").unwrap();
        assert!(load_chunk(&empty).unwrap_err().to_string().contains("shorter than"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn sample_manifest() -> Manifest {
        let meta = encode_meta(&sample_meta(), 10).unwrap().name;
        let base: Vec<String> = encode_run(ChunkKind::Base, ShardId(1), 3, 10, &sample_states())
            .unwrap()
            .into_iter()
            .map(|chunk| chunk.name)
            .collect();
        let deltas = vec![encode_states(ChunkKind::Delta, ShardId(1), 3, 10, &[tombstone("a")]).unwrap().name];
        Manifest {
            shard: ShardId(1),
            shards: 3,
            generation: 7,
            lsn: 10,
            meta,
            base,
            deltas,
            segments: vec![
                SegmentRef { name: "00000003.seg".into(), first_lsn: 9, last_lsn: 20 },
                SegmentRef { name: "00000004.seg".into(), first_lsn: 21, last_lsn: 21 },
            ],
            created_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn snapshot_manifests_round_trip() {
        let full = sample_manifest();
        let bare = Manifest { base: vec![], deltas: vec![], segments: vec![], generation: 0, ..full.clone() };
        for manifest in [full, bare] {
            let name = manifest_path(manifest.shard, manifest.generation);
            let decoded = Manifest::decode(&name, &manifest.encode().unwrap()).unwrap();
            assert_eq!(decoded, manifest);
            let chunks: Vec<&str> = decoded.chunks().collect();
            let expected: Vec<&str> = std::iter::once(&manifest.meta)
                .chain(&manifest.base)
                .chain(&manifest.deltas)
                .map(String::as_str)
                .collect();
            assert_eq!(chunks, expected);
        }
    }

    #[test]
    fn snapshot_a_damaged_manifest_is_an_error_naming_it() {
        let manifest = sample_manifest();
        let name = manifest_path(ShardId(1), 7);
        let bytes = manifest.encode().unwrap();
        for at in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x20;
            let error = Manifest::decode(&name, &damaged).unwrap_err();
            assert!(matches!(&error, Error::Snapshot { name: named, .. } if *named == name), "{error}");
            if at >= SNAPSHOT_HEADER_BYTES {
                let _ = reseal(&mut damaged);
                let _ = Manifest::decode(&name, &damaged);
            }
        }
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&name, &bytes[..cut]).is_err());
        }
        let error = Manifest::decode(&manifest_path(ShardId(1), 8), &bytes).unwrap_err().to_string();
        assert!(error.contains("generation 7"), "{error}");
        let chunk = encode_meta(&empty_meta(), 0).unwrap();
        assert!(Manifest::decode(&name, &chunk.bytes).unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn snapshot_manifests_that_would_not_load_are_not_written() {
        let good = sample_manifest();
        let segment = |name: &str, first_lsn, last_lsn| SegmentRef { name: name.into(), first_lsn, last_lsn };
        let bad = [
            Manifest { meta: "meta".into(), ..good.clone() },
            Manifest { deltas: vec!["../x.chunk".into()], ..good.clone() },
            Manifest { shards: 0, ..good.clone() },
            Manifest { shard: ShardId(3), ..good.clone() },
            Manifest { segments: vec![segment("../up", 11, 12)], ..good.clone() },
            Manifest { segments: vec![segment("gap", 12, 20)], ..good.clone() },
            Manifest { segments: vec![segment("a", 11, 20), segment("b", 22, 30)], ..good.clone() },
            Manifest { segments: vec![segment("a", 11, 20), segment("b", 15, 30)], ..good.clone() },
            Manifest { segments: vec![segment("old", 1, 5)], ..good.clone() },
            Manifest { segments: vec![segment("backwards", 11, 10)], ..good.clone() },
            Manifest { lsn: u64::MAX, ..good.clone() },
        ];
        for manifest in bad {
            assert!(matches!(manifest.encode(), Err(Error::Encode(_))), "{manifest:?}");
        }
    }

    #[test]
    fn snapshot_paths() {
        let shard = ShardId(3);
        assert_eq!(chunk_path(shard, "ab.chunk"), "shard-3/chunks/ab.chunk");
        assert_eq!(segment_blob_path(shard, "00000001.seg"), "shard-3/segments/00000001.seg");
        assert_eq!(manifest_path(shard, 42), "shard-3/manifests/00000000000000000042.manifest");
        assert!(manifest_path(shard, 42).starts_with(&manifest_dir(shard)));
        assert!(manifest_path(shard, 9) < manifest_path(shard, 10));
        assert_eq!(parse_manifest_generation(&manifest_path(shard, 42)), Some(42));
        assert_eq!(parse_manifest_generation(&manifest_path(shard, u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_manifest_generation("00000000000000000007.manifest"), Some(7));
        for bad in [
            "",
            "7.manifest",
            "0000000000000000007x.manifest",
            "00000000000000000007.manifest.tmp",
            "99999999999999999999.manifest",
            "shard-3/manifests/",
        ] {
            assert_eq!(parse_manifest_generation(bad), None, "{bad}");
        }
    }

    #[test]
    fn snapshot_merge_applies_overrides_and_tombstones() {
        let base = vec![values_only("a", "1"), values_only("b", "1"), values_only("c", "1"), values_only("f", "1")];
        let first = vec![values_only("b", "2"), tombstone("c"), values_only("d", "2"), tombstone("x")];
        let second = vec![values_only("b", "3"), values_only("c", "3"), tombstone("d"), values_only("e", "3")];
        let third = vec![tombstone("f")];
        let merged = merge(base.clone(), vec![first.clone(), second, third]);
        let expected = vec![values_only("a", "1"), values_only("b", "3"), values_only("c", "3"), values_only("e", "3")];
        assert_eq!(merged, expected);

        assert_eq!(merge(base.clone(), Vec::new()), base);
        assert_eq!(
            merge(base, vec![first]),
            vec![values_only("a", "1"), values_only("b", "2"), values_only("d", "2"), values_only("f", "1")]
        );
        assert_eq!(merge(vec![], vec![vec![], vec![tombstone("a")]]), vec![]);
        assert_eq!(merge(vec![tombstone("a")], vec![vec![values_only("b", "1")]]), vec![values_only("b", "1")]);
    }

    #[test]
    fn snapshot_encode_run_splits_at_the_bound() {
        let states: Vec<AddressState> = sorted((0..10).map(|i| values_only(&format!("k{i}"), "v")).collect());
        let decode_all = |chunks: &[EncodedChunk]| -> Vec<AddressState> {
            chunks
                .iter()
                .flat_map(|chunk| match decode_chunk(&chunk.name, &chunk.bytes).unwrap() {
                    Chunk::States { states, .. } => states,
                    Chunk::Meta { .. } => panic!("a meta chunk in a run"),
                })
                .collect()
        };
        let chunks = encode_run_bounded(ChunkKind::Base, ShardId(0), 1, 4, &states, 4, usize::MAX).unwrap();
        assert_eq!(chunks.iter().map(|chunk| chunk.states).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(decode_all(&chunks), states);

        let chunks = encode_run_bounded(ChunkKind::Delta, ShardId(0), 1, 4, &states, 4, 1).unwrap();
        assert_eq!(chunks.len(), 10, "a chunk over the byte target still holds one state");
        assert_eq!(decode_all(&chunks), states);

        let chunks = encode_run(ChunkKind::Base, ShardId(0), 1, 4, &states).unwrap();
        assert_eq!(chunks.len(), 1);
        assert!(encode_run(ChunkKind::Base, ShardId(0), 1, 4, &[]).unwrap().is_empty());
    }

    fn arbitrary_archive() -> impl Strategy<Value = (u8, Vec<u8>)> {
        (0u8..5, proptest::collection::vec(any::<u8>(), 0..512))
    }

    proptest! {
        #[test]
        fn snapshot_decode_chunk_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let name = format!("{}.chunk", sha256_hex(&bytes));
            prop_assert!(decode_chunk(&name, &bytes).is_err());
            let _ = Manifest::decode("x.manifest", &bytes);
        }

        #[test]
        fn snapshot_decode_of_arbitrary_payloads_never_panics((kind, payload) in arbitrary_archive()) {
            // A well-formed header over arbitrary bytes: only the archive's validation is left.
            let mut bytes = vec![0u8; SNAPSHOT_HEADER_BYTES];
            bytes[0..4].copy_from_slice(&CHUNK_MAGIC.to_le_bytes());
            bytes[4..6].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
            bytes[6] = kind;
            bytes[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&payload);
            let name = reseal(&mut bytes);
            let _ = decode_chunk(&name, &bytes);
            bytes[0..4].copy_from_slice(&MANIFEST_MAGIC.to_le_bytes());
            bytes[6] = MANIFEST_KIND;
            let _ = Manifest::decode("x.manifest", &bytes);
        }

        #[test]
        fn snapshot_decode_of_damaged_chunks_never_panics(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            meta in any::<bool>(),
        ) {
            let chunk = if meta {
                encode_meta(&sample_meta(), 1).unwrap()
            } else {
                encode_states(ChunkKind::Delta, ShardId(0), 1, 1, &sample_states()).unwrap()
            };
            let mut bytes = chunk.bytes.to_vec();
            let payload = bytes.len() - SNAPSHOT_HEADER_BYTES;
            for (at, byte) in edits {
                bytes[SNAPSHOT_HEADER_BYTES + at.index(payload)] = byte;
            }
            let name = reseal(&mut bytes);
            let _ = decode_chunk(&name, &bytes);
        }
    }
}
