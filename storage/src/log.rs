//! A shard's log on disk: recovery at start, the batcher that fills the next batch, and the
//! segments that take one batch at a time.
//!
//! Files: `{dir}/{index:08}.seg`, each zero-filled to its full size before it is first used
//! (overwriting zeroed blocks syncs about twice as fast as growing a file), prepared as
//! `.seg.tmp` and renamed, so a half-prepared segment is never mistaken for part of the log.

use std::collections::VecDeque;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;
use statefun_core::Record;

use crate::file::{self, File};
use crate::format::{self, BatchBuilder, SealedBatch};
use crate::limits::{
    batch_bytes_max, block_bytes, read_chunk_bytes, record_bytes_max, segment_bytes_min, zero_chunk_bytes,
};
use crate::{codec, Error, Lsn};

/// Where a shard's log lives and how big its segments are.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    /// The records up to this LSN are in a checkpoint: recovery skips them, and the log may
    /// start after them (segments below a checkpoint are removed). `Lsn(0)` without one.
    pub after: Lsn,
}

/// A segment the log has moved past: complete, never written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    pub index: u32,
    pub path: PathBuf,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    /// Every committed record, in order.
    pub records: Vec<Record>,
    pub next_lsn: Lsn,
    pub segments: usize,
    /// A torn final batch that was cut, said in a sentence.
    pub cut: Option<String>,
}

/// The file of segment `index` in `dir`.
pub fn segment_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("{index:08}.seg"))
}

fn segment_index(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

fn corrupt(segment: &Path, offset: u64, why: String) -> Error {
    let fix = format!("statefun log truncate {} {offset}", segment.display());
    Error::Corrupt { segment: segment.to_owned(), offset, why, fix }
}

/// The segment being written.
#[derive(Debug)]
struct Current {
    index: u32,
    file: File,
    offset: u64,
    size: u64,
}

/// Opens the log in `config.dir`, creating it if needed, and recovers what it holds.
pub async fn open(config: &LogConfig) -> Result<(Recovered, Batcher, Segments), Error> {
    assert!(config.segment_bytes % block_bytes == 0 && config.segment_bytes >= segment_bytes_min);
    std::fs::create_dir_all(&config.dir).map_err(|error| Error::io("creating", &config.dir, error))?;
    let mut indexes = Vec::new();
    let entries = std::fs::read_dir(&config.dir).map_err(|error| Error::io("listing", &config.dir, error))?;
    for entry in entries {
        let path = entry.map_err(|error| Error::io("listing", &config.dir, error))?.path();
        if path.extension().is_some_and(|extension| extension == "tmp") {
            // A segment whose preparation was interrupted: never part of the log.
            std::fs::remove_file(&path).map_err(|error| Error::io("removing", &path, error))?;
        } else if let Some(index) = segment_index(&path) {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    file::probe_device(&config.dir).await?;

    let mut recovery = Recovery::new(&config.dir, config.after);
    let mut files = Vec::new();
    for index in indexes.iter().copied() {
        let file = File::open(&segment_path(&config.dir, index)).await?;
        let bytes = read_whole(&file).await?;
        recovery.segment(index, &bytes)?;
        files.push((index, file, bytes.len() as u64));
    }
    let plan = recovery.finish();
    let mut cut = None;
    if let Some((index, offset, why)) = &plan.torn {
        // Zero the reach of the torn write, so no fragment of it is read again later.
        let (_, file, size) =
            files.iter().find(|(candidate, _, _)| candidate == index).unwrap_or_else(|| panic!("torn segment {index}"));
        zero(file, *offset, (offset + batch_bytes_max).min(*size)).await?;
        file.sync().await?;
        cut = Some(format!(
            "cut a torn final batch in {} at offset {offset}: {why}",
            segment_path(&config.dir, *index).display()
        ));
    }
    let mut take = |wanted: u32| {
        let at = files.iter().position(|(index, _, _)| *index == wanted);
        at.map(|at| files.swap_remove(at)).unwrap_or_else(|| panic!("segment {wanted} was read"))
    };
    let spare = plan.spare.map(|index| {
        let (index, file, _) = take(index);
        (index, file)
    });
    let (current, spare) = match plan.tail {
        Some((index, offset)) => {
            let (index, file, size) = take(index);
            (Current { index, file, offset, size }, spare)
        }
        None => {
            let (index, file) = match spare {
                Some(spare) => spare,
                None => (0, prepare(&config.dir, 0, config.segment_bytes).await?),
            };
            let size = file.size()?;
            (Current { index, file, offset: 0, size }, None)
        }
    };
    let mut firsts = plan.firsts;
    if firsts.last().is_none_or(|(index, _)| *index != current.index) {
        // The log goes on in a segment without batches yet: its first record is the next.
        firsts.push((current.index, plan.next_lsn));
    }
    let (records, next_lsn) = (plan.records, plan.next_lsn);
    let recovered = Recovered { records, next_lsn, segments: indexes.len(), cut };
    let batch_bytes_limit = batch_bytes_max.min(config.segment_bytes / 2);
    let batcher =
        Batcher { builder: BatchBuilder::new(next_lsn), sealed: VecDeque::new(), pending_bytes: 0, batch_bytes_limit };
    let segments = Segments {
        dir: config.dir.clone(),
        segment_bytes: config.segment_bytes,
        firsts: firsts.into(),
        current,
        spare,
        preparing: None,
        poisoned: None,
    };
    Ok((recovered, batcher, segments))
}

/// What recovery decided, before any file is touched.
#[derive(Debug)]
pub struct Plan {
    /// Every committed record, in order.
    pub records: Vec<Record>,
    pub next_lsn: Lsn,
    /// The segment the log goes on in, and the offset of its end there.
    pub tail: Option<(u32, u64)>,
    /// The first zeroed segment after the tail: the next one to write.
    pub spare: Option<u32>,
    /// A torn final batch to cut: its segment, offset, and what was wrong with it.
    pub torn: Option<(u32, u64, String)>,
    /// Each segment with batches, and the LSN of its first record.
    pub firsts: Vec<(u32, Lsn)>,
}

/// Recovery without I/O: segments go in one at a time, in order, and a [`Plan`] comes out.
/// The log runs through consecutive segments and ends at the first block without a valid
/// batch; past its end only zeroed segments may follow.
#[derive(Debug)]
pub struct Recovery {
    dir: PathBuf,
    plan: Plan,
    ended: bool,
    /// Records up to this LSN are in a checkpoint: skipped.
    after: Lsn,
}

impl Recovery {
    /// Recovery of the log in `dir`, whose records up to `after` are in a checkpoint.
    pub fn new(dir: &Path, after: Lsn) -> Recovery {
        let plan = Plan {
            records: Vec::new(),
            next_lsn: Lsn(after.0 + 1),
            tail: None,
            spare: None,
            torn: None,
            firsts: Vec::new(),
        };
        Recovery { dir: dir.to_owned(), plan, ended: false, after }
    }

    /// Takes the next segment, by ascending index.
    pub fn segment(&mut self, index: u32, bytes: &[u8]) -> Result<(), Error> {
        let path = segment_path(&self.dir, index);
        let first = format::first_lsn(bytes);
        let continues = first.is_some();
        if let (None, Some(first)) = (self.plan.tail, first) {
            // The log's first segment: it may begin anywhere up to just after the checkpoint.
            if first.0 > self.after.0 + 1 {
                let why = format!(
                    "the log starts at LSN {} but the checkpoint covers only up to LSN {}: records {} to {} are missing",
                    first.0,
                    self.after.0,
                    self.after.0 + 1,
                    first.0 - 1
                );
                return Err(corrupt(&path, 0, why));
            }
            self.plan.next_lsn = first;
        }
        if self.ended || (self.plan.tail.is_some() && !continues) {
            if continues {
                let why = "the log ended in an earlier segment, yet this one holds batches".to_string();
                return Err(corrupt(&path, 0, why));
            }
            self.ended = true;
            self.plan.spare = self.plan.spare.or(Some(index));
            return Ok(());
        }
        if let Some((previous, _)) = self.plan.tail {
            if previous + 1 != index {
                return Err(corrupt(&path, 0, format!("segment {} is missing before this one", previous + 1)));
            }
        }
        let scan = format::scan_segment(bytes, self.plan.next_lsn)
            .map_err(|damage| corrupt(&path, damage.offset, damage.why))?;
        if let Some(first) = first {
            self.plan.firsts.push((index, first));
        }
        for (lsn, range, version) in &scan.records {
            self.plan.next_lsn = Lsn(lsn.0 + 1);
            if *lsn <= self.after {
                continue;
            }
            let mut payload = AlignedVec::<16>::with_capacity(range.len());
            payload.extend_from_slice(&bytes[range.clone()]);
            let record = codec::decode(*version, &payload).map_err(|why| {
                corrupt(&path, range.start as u64, format!("record {} does not decode: {why}", lsn.0))
            })?;
            self.plan.records.push(record);
        }
        if let Some((offset, why)) = scan.torn {
            self.plan.torn = Some((index, offset, why));
            self.ended = true;
        }
        self.plan.tail = Some((index, scan.end));
        Ok(())
    }

    pub fn finish(self) -> Plan {
        self.plan
    }
}

async fn read_whole(file: &File) -> Result<Vec<u8>, Error> {
    let size = file.size()?;
    if size % block_bytes != 0 {
        let why = format!("its size of {size} bytes is not a whole number of {block_bytes}-byte blocks");
        return Err(corrupt(file.path(), size, why));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    let mut offset = 0;
    while offset < size {
        let len = read_chunk_bytes.min(size - offset);
        bytes.extend_from_slice(&file.read(offset, len as usize).await?);
        offset += len;
    }
    Ok(bytes)
}

async fn zero(file: &File, from: u64, to: u64) -> Result<(), Error> {
    let zeros = vec![0u8; zero_chunk_bytes as usize];
    let mut offset = from;
    while offset < to {
        let len = zero_chunk_bytes.min(to - offset);
        file.write(offset, &zeros[..len as usize]).await?;
        offset += len;
    }
    Ok(())
}

/// Creates segment `index`, zero-filled and durable, under its final name.
async fn prepare(dir: &Path, index: u32, size: u64) -> Result<File, Error> {
    let path = segment_path(dir, index);
    let mut temporary = path.clone();
    temporary.set_extension("seg.tmp");
    let mut file = File::create(&temporary).await?;
    zero(&file, 0, size).await?;
    file.sync().await?;
    file.rename(&path).await?;
    file::sync_directory(dir).await?;
    Ok(file)
}

/// Fills batches: records go in as they are made, batches come out for [`Segments::write`].
#[derive(Debug)]
pub struct Batcher {
    builder: BatchBuilder,
    /// Batches closed because the next record would not fit.
    sealed: VecDeque<SealedBatch>,
    pending_bytes: u64,
    /// The largest batch: `batch_bytes_max`, or half a segment if segments are small.
    batch_bytes_limit: u64,
}

impl Batcher {
    /// Adds a record to the current batch; returns its LSN.
    pub fn append(&mut self, record: &Record) -> Result<Lsn, Error> {
        let payload = codec::encode(record)?;
        let max = record_bytes_max.min(self.batch_bytes_limit as usize - 64);
        if payload.len() > max {
            return Err(Error::RecordTooLarge { bytes: payload.len(), max });
        }
        if self.builder.len_with(payload.len()) > self.batch_bytes_limit {
            self.sealed.push_back(self.builder.seal());
        }
        let before = self.builder.len_with(0);
        let lsn = self.builder.push(&payload);
        self.pending_bytes += self.builder.len_with(0) - before;
        Ok(lsn)
    }

    /// The LSN of the last record appended (`Lsn(0)` before the first).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.builder.next_lsn().0 - 1)
    }

    /// Whether any record waits to be written.
    pub fn has_records(&self) -> bool {
        !self.sealed.is_empty() || !self.builder.is_empty()
    }

    /// Bytes appended and not yet handed out for writing: what the caller may bound.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// The next batch to write, if any record waits.
    pub fn next_batch(&mut self) -> Option<SealedBatch> {
        let batch = match self.sealed.pop_front() {
            Some(batch) => batch,
            None if !self.builder.is_empty() => self.builder.seal(),
            None => return None,
        };
        self.pending_bytes = self.pending_bytes.saturating_sub(batch.bytes.len() as u64);
        if self.sealed.is_empty() && self.builder.is_empty() {
            self.pending_bytes = 0;
        }
        Some(batch)
    }
}

/// The segment files: one batch at a time goes in with one write and one sync.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    segment_bytes: u64,
    /// Every segment of the log, oldest first, with the LSN of its first record; the last
    /// is the current one.
    firsts: VecDeque<(u32, Lsn)>,
    current: Current,
    /// The next segment, zero-filled ahead of need.
    spare: Option<(u32, File)>,
    /// The next segment while it is being zero-filled: its file and how far it got.
    preparing: Option<(u32, File, u64)>,
    poisoned: Option<String>,
}

impl Segments {
    /// Writes a batch and makes it durable. A failure poisons the log for good.
    pub async fn write(&mut self, batch: &SealedBatch) -> Result<(), Error> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        let outcome = self.write_unpoisoned(batch).await;
        if let Err(error) = &outcome {
            self.poisoned = Some(error.to_string());
        }
        outcome
    }

    async fn write_unpoisoned(&mut self, batch: &SealedBatch) -> Result<(), Error> {
        let len = batch.bytes.len() as u64;
        assert!(len % block_bytes == 0 && len <= batch_bytes_max);
        if self.current.offset + len > self.current.size {
            while self.spare.is_none() {
                self.prepare_step().await?;
            }
            let (index, file) = self.spare.take().unwrap_or_else(|| unreachable!("prepared above"));
            let size = file.size()?;
            self.current = Current { index, file, offset: 0, size };
            self.firsts.push_back((index, batch.first_lsn));
        }
        self.current.file.write(self.current.offset, &batch.bytes).await?;
        self.current.file.sync().await?;
        self.current.offset += len;
        Ok(())
    }

    /// Does one step of preparing the next segment, once the current one is half full, so
    /// that rolling over does not wait for zero-filling: one chunk of zeros per call, so a
    /// batch never waits behind more than one chunk. Returns whether there is more to do.
    pub async fn prepare_spare(&mut self) -> Result<bool, Error> {
        if self.spare.is_some() || self.poisoned.is_some() || self.current.offset < self.current.size / 2 {
            return Ok(false);
        }
        let step = self.prepare_step().await;
        if let Err(error) = &step {
            self.poisoned = Some(error.to_string());
        }
        step
    }

    async fn prepare_step(&mut self) -> Result<bool, Error> {
        let (index, file, done) = match self.preparing.take() {
            Some(preparing) => preparing,
            None => {
                let index = self.current.index + 1;
                let mut temporary = segment_path(&self.dir, index);
                temporary.set_extension("seg.tmp");
                (index, File::create(&temporary).await?, 0)
            }
        };
        if done < self.segment_bytes {
            let len = zero_chunk_bytes.min(self.segment_bytes - done);
            zero(&file, done, done + len).await?;
            self.preparing = Some((index, file, done + len));
            return Ok(true);
        }
        let mut file = file;
        file.sync().await?;
        file.rename(&segment_path(&self.dir, index)).await?;
        file::sync_directory(&self.dir).await?;
        self.spare = Some((index, file));
        Ok(false)
    }

    /// Why the log refuses work, if it does.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Segments in the log, the current one included.
    pub fn count(&self) -> usize {
        self.firsts.len()
    }

    /// The segments the log has moved past, oldest first.
    pub fn sealed(&self) -> Vec<SealedSegment> {
        self.firsts
            .iter()
            .zip(self.firsts.iter().skip(1))
            .map(|((index, first_lsn), (_, next))| SealedSegment {
                index: *index,
                path: segment_path(&self.dir, *index),
                first_lsn: *first_lsn,
                last_lsn: Lsn(next.0 - 1),
            })
            .filter(|segment| segment.last_lsn >= segment.first_lsn)
            .collect()
    }

    /// Removes the sealed segments whose records are all at or below `lsn` (a stored
    /// checkpoint holds them); returns their paths.
    pub fn remove_below(&mut self, lsn: Lsn) -> Result<Vec<PathBuf>, Error> {
        let mut removed = Vec::new();
        while self.firsts.len() > 1 {
            let next_first = self.firsts[1].1;
            if next_first.0 > lsn.0 + 1 {
                break;
            }
            let Some((index, _)) = self.firsts.pop_front() else { break };
            let path = segment_path(&self.dir, index);
            std::fs::remove_file(&path).map_err(|error| Error::io("removing", &path, error))?;
            removed.push(path);
        }
        if !removed.is_empty() {
            std::fs::File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|error| Error::io("syncing", &self.dir, error))?;
        }
        Ok(removed)
    }
}

/// Drops everything from `offset` in `segment` on: zeroes the rest of that segment and
/// removes the segments after it. The explicit, operator-run answer to damage in the middle
/// of a log; records after the offset are lost.
pub fn truncate(segment: &Path, offset: u64) -> Result<Vec<PathBuf>, Error> {
    let index = segment_index(segment).ok_or_else(|| {
        let why = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a segment file (NNNNNNNN.seg)");
        Error::io("truncating", segment, why)
    })?;
    let mut file =
        std::fs::OpenOptions::new().write(true).open(segment).map_err(|error| Error::io("opening", segment, error))?;
    let size = file.metadata().map_err(|error| Error::io("reading the size of", segment, error))?.len();
    file.seek(SeekFrom::Start(offset)).map_err(|error| Error::io("seeking in", segment, error))?;
    let zeros = vec![0u8; zero_chunk_bytes as usize];
    let mut at = offset;
    while at < size {
        let len = zero_chunk_bytes.min(size - at) as usize;
        file.write_all(&zeros[..len]).map_err(|error| Error::io("zeroing", segment, error))?;
        at += len as u64;
    }
    file.sync_all().map_err(|error| Error::io("syncing", segment, error))?;
    let dir = segment.parent().unwrap_or(Path::new("."));
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|error| Error::io("listing", dir, error))?;
    for entry in entries {
        let path = entry.map_err(|error| Error::io("listing", dir, error))?.path();
        if segment_index(&path).is_some_and(|later| later > index) {
            std::fs::remove_file(&path).map_err(|error| Error::io("removing", &path, error))?;
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    //! The log against real files through glommio: records come back after a restart, a
    //! torn final batch is cut, damage in the middle stops recovery with its place and the
    //! command that truncates there, segments roll over.

    use std::future::Future;

    use statefun_core::{Entry, UnixMillis};

    use super::*;

    fn run<T: Send + 'static>(test: impl FnOnce() -> Box<dyn Future<Output = T>> + Send + 'static) -> T {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move { Box::into_pin(test()).await });
        executor.unwrap().join().unwrap()
    }

    fn directory(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("statefun-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn record(n: u64, bytes: usize) -> Record {
        let mut record = crate::codec::tests::samples()[(n % 10) as usize].clone();
        record.at = UnixMillis(n);
        if let Entry::Admitted { envelope, .. } = &mut record.entry {
            envelope.value.value = vec![n as u8; bytes].into();
        }
        record
    }

    /// Appends `count` records in batches of `per_batch`, each batch written and synced.
    async fn write(config: &LogConfig, from: u64, count: u64, per_batch: u64, bytes: usize) -> Vec<Record> {
        let (_, mut batcher, mut segments) = open(config).await.unwrap();
        let mut written = Vec::new();
        for n in from..from + count {
            let record = record(n, bytes);
            batcher.append(&record).unwrap();
            written.push(record);
            if (n + 1) % per_batch == 0 {
                while let Some(batch) = batcher.next_batch() {
                    segments.write(&batch).await.unwrap();
                }
            }
        }
        while let Some(batch) = batcher.next_batch() {
            segments.write(&batch).await.unwrap();
        }
        written
    }

    fn config(dir: &Path) -> LogConfig {
        LogConfig { dir: dir.to_owned(), segment_bytes: segment_bytes_min, after: Lsn(0) }
    }

    #[test]
    fn records_come_back_across_restarts_and_segments() {
        let dir = directory("restart");
        let config = config(&dir);
        let (recovered, written) = run(move || {
            Box::new(async move {
                let mut written = write(&config, 0, 300, 7, 100).await;
                // Enough bytes to fill several 1 MiB segments.
                written.extend(write(&config, 300, 240, 3, 60_000).await);
                let (recovered, _, _) = open(&config).await.unwrap();
                (recovered, written)
            })
        });
        assert_eq!(recovered.records, written);
        assert_eq!(recovered.next_lsn, Lsn(541));
        assert!(recovered.cut.is_none());
        assert!(recovered.segments >= 3, "rolled over into {} segments", recovered.segments);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn segments_below_a_checkpoint_go_and_the_log_starts_after_it() {
        let dir = directory("checkpoint");
        let config = config(&dir);
        let (sealed, removed, recovered, written) = run({
            let config = config.clone();
            move || {
                Box::new(async move {
                    let written = write(&config, 0, 400, 3, 60_000).await;
                    let (_, _, mut segments) = open(&config).await.unwrap();
                    let sealed = segments.sealed();
                    // A checkpoint at the last record of the second segment.
                    let checkpoint = sealed[1].last_lsn;
                    let removed = segments.remove_below(checkpoint).unwrap();
                    let config = LogConfig { after: checkpoint, ..config };
                    let (recovered, _, _) = open(&config).await.unwrap();
                    (sealed, removed, recovered, written)
                })
            }
        });
        assert!(sealed.len() >= 3, "{sealed:?}");
        assert_eq!(sealed[0].first_lsn, Lsn(1));
        assert_eq!(sealed[1].first_lsn.0, sealed[0].last_lsn.0 + 1, "segments are consecutive");
        assert_eq!(removed, [sealed[0].path.clone(), sealed[1].path.clone()]);
        let checkpoint = sealed[1].last_lsn.0 as usize;
        assert_eq!(recovered.records, written[checkpoint..], "only the records after the checkpoint");
        assert_eq!(recovered.next_lsn, Lsn(401));

        // A checkpoint older than the log's first remaining record leaves a gap: an error.
        let config = LogConfig { after: Lsn(sealed[0].last_lsn.0 - 1), ..config };
        let error = run(move || Box::new(async move { open(&config).await.map(|_| ()).unwrap_err() }));
        assert!(error.to_string().contains("are missing"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn damage(path: &Path, offset: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x5a;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported() {
        let dir = directory("torn");
        let config = config(&dir);
        let segment = segment_path(&dir, 0);
        let written = run({
            let config = config.clone();
            move || Box::new(async move { write(&config, 0, 40, 10, 200).await })
        });
        // The fourth batch: find it by scanning, then damage it as a torn write would.
        let bytes = std::fs::read(&segment).unwrap();
        let scan = format::scan_segment(&bytes, Lsn(1)).unwrap();
        let last_batch = (scan.records[30].1.start as u64 / block_bytes) * block_bytes;
        damage(&segment, last_batch + 200);
        let (recovered, after) = run(move || {
            Box::new(async move {
                let (recovered, _, _) = open(&config).await.unwrap();
                let after = write(&config, 30, 5, 5, 10).await;
                (recovered, after)
            })
        });
        assert_eq!(recovered.records, written[..30]);
        let cut = recovered.cut.unwrap();
        assert!(cut.contains(&format!("at offset {last_batch}")) && cut.contains("00000000.seg"), "{cut}");
        let bytes = std::fs::read(&segment).unwrap();
        let scan = format::scan_segment(&bytes, Lsn(1)).unwrap();
        assert_eq!(scan.records.len(), 35, "the log goes on where it was cut");
        assert_eq!(after.len(), 5);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn damage_in_the_middle_stops_recovery_until_truncated() {
        let dir = directory("middle");
        let config = config(&dir);
        let segment = segment_path(&dir, 0);
        run({
            let config = config.clone();
            move || Box::new(async move { write(&config, 0, 40, 10, 200).await })
        });
        let bytes = std::fs::read(&segment).unwrap();
        let scan = format::scan_segment(&bytes, Lsn(1)).unwrap();
        let second_batch = (scan.records[10].1.start as u64 / block_bytes) * block_bytes;
        damage(&segment, second_batch + 300);
        let error = run({
            let config = config.clone();
            move || Box::new(async move { open(&config).await.unwrap_err() })
        });
        let text = error.to_string();
        assert!(matches!(error, Error::Corrupt { offset, .. } if offset == second_batch), "{text}");
        let fix = format!("statefun log truncate {} {second_batch}", segment.display());
        assert!(text.contains("00000000.seg") && text.contains(&fix), "{text}");
        truncate(&segment, second_batch).unwrap();
        let recovered = run(move || Box::new(async move { open(&config).await.unwrap().0 }));
        assert_eq!(recovered.records.len(), 10);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_poisoned_log_refuses_writes() {
        let dir = directory("poison");
        let config = config(&dir);
        let (first, second) = run(move || {
            Box::new(async move {
                let (_, mut batcher, mut segments) = open(&config).await.unwrap();
                segments.poisoned = Some("fdatasync failed: EIO".into());
                batcher.append(&record(1, 10)).unwrap();
                let batch = batcher.next_batch().unwrap();
                (segments.write(&batch).await.unwrap_err().to_string(), segments.poisoned().map(str::to_string))
            })
        });
        assert!(first.contains("refuses new work") && first.contains("EIO"), "{first}");
        assert!(second.is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod fixtures {
    //! The committed logs in `storage/tests/fixtures/`: every format version this code has
    //! written must still load, record for record. Fixture v1 holds one record of every kind
    //! of version 1 (`codec::tests::samples_v1`) in two batches, fixture v2 those of version 2
    //! (`codec::tests::samples`) in three. Damaged copies of v1 stand for a torn tail and for
    //! damage in the middle. `STATEFUN_WRITE_FIXTURES=1` writes the fixture of the current
    //! version anew (only ever for a new format version).

    use super::*;
    use crate::codec::tests::{samples, samples_v1};

    const FIXTURE_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1/00000000.seg");
    const FIXTURE_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v2/00000000.seg");
    const FIXTURE_BYTES: usize = 16 * 1024;

    fn write_fixture() {
        let mut bytes = vec![0u8; FIXTURE_BYTES];
        let mut builder = BatchBuilder::new(Lsn(1));
        let mut at = 0;
        for batch in samples().chunks(4) {
            for record in batch {
                builder.push(&codec::encode(record).unwrap());
            }
            let sealed = builder.seal();
            bytes[at..at + sealed.bytes.len()].copy_from_slice(&sealed.bytes);
            at += sealed.bytes.len();
        }
        std::fs::create_dir_all(Path::new(FIXTURE_V2).parent().unwrap()).unwrap();
        std::fs::write(FIXTURE_V2, bytes).unwrap();
    }

    fn recover(bytes: &[u8]) -> Result<Plan, Error> {
        let mut recovery = Recovery::new(Path::new("fixture"), Lsn(0));
        recovery.segment(0, bytes)?;
        Ok(recovery.finish())
    }

    #[test]
    fn format_v1_still_loads() {
        let bytes = std::fs::read(FIXTURE_V1).unwrap();
        let plan = recover(&bytes).unwrap();
        assert_eq!(plan.records, samples_v1());
        assert_eq!(plan.next_lsn, Lsn(9));
        assert_eq!(plan.tail, Some((0, 2 * block_bytes)));
        assert!(plan.torn.is_none());
    }

    #[test]
    fn format_v2_loads() {
        if std::env::var_os("STATEFUN_WRITE_FIXTURES").is_some() {
            write_fixture();
        }
        let bytes = std::fs::read(FIXTURE_V2).unwrap();
        let plan = recover(&bytes).unwrap();
        assert_eq!(plan.records, samples());
        assert_eq!(plan.next_lsn, Lsn(11));
        assert_eq!(plan.tail, Some((0, 3 * block_bytes)));
    }

    #[test]
    fn a_torn_tail_of_the_fixture_is_cut() {
        let mut bytes = std::fs::read(FIXTURE_V1).unwrap();
        bytes[block_bytes as usize + 100] ^= 0x20;
        let plan = recover(&bytes).unwrap();
        assert_eq!(plan.records, samples_v1()[..4]);
        let (segment, offset, why) = plan.torn.unwrap();
        assert_eq!((segment, offset), (0, block_bytes));
        assert!(why.contains("checksum"), "{why}");
    }

    #[test]
    fn damage_in_the_middle_of_the_fixture_is_an_error() {
        let mut bytes = std::fs::read(FIXTURE_V1).unwrap();
        bytes[100] ^= 0x20;
        let error = recover(&bytes).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::Corrupt { offset: 0, .. }), "{text}");
        assert!(text.contains("statefun log truncate fixture/00000000.seg 0"), "{text}");
    }
}
