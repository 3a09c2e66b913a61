//! The byte layout of a segment (see `storage/FORMAT.md`), without I/O: building batches and
//! scanning segments back.
//!
//! A segment is a run of batches, each starting on a block boundary and padded with zeros to
//! the next one; the unused rest of a segment is zeros. A batch is a 32-byte header and then
//! its records, each a 16-byte frame header and its payload padded to 16 bytes, so that
//! payloads stay 16-byte aligned for rkyv.

use std::ops::Range;

use crate::limits::{batch_bytes_max, block_bytes};
use crate::Lsn;

/// "SFLB", little-endian: a statefun log batch.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"SFLB");
/// The format version this code writes.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format version this code still reads (see `storage/FORMAT.md`).
pub const FORMAT_VERSION_MIN: u16 = 1;
pub const BATCH_HEADER_BYTES: usize = 32;
pub const RECORD_HEADER_BYTES: usize = 16;
/// Payloads start and end on this alignment.
pub const RECORD_ALIGN_BYTES: usize = 16;

const _: () = assert!(BATCH_HEADER_BYTES % RECORD_ALIGN_BYTES == 0 && RECORD_HEADER_BYTES % RECORD_ALIGN_BYTES == 0);

fn align_up(value: usize, to: usize) -> usize {
    value.div_ceil(to) * to
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Collects records into one batch.
#[derive(Debug)]
pub struct BatchBuilder {
    bytes: Vec<u8>,
    records: u32,
    first_lsn: Lsn,
    next_lsn: Lsn,
}

/// A batch ready to write: `bytes` is a whole number of blocks.
#[derive(Debug)]
pub struct SealedBatch {
    pub bytes: Vec<u8>,
    pub first_lsn: Lsn,
    pub records: u32,
}

impl BatchBuilder {
    pub fn new(next_lsn: Lsn) -> Self {
        assert!(next_lsn.0 >= 1, "LSNs start at 1");
        BatchBuilder { bytes: vec![0; BATCH_HEADER_BYTES], records: 0, first_lsn: next_lsn, next_lsn }
    }

    /// The LSN the next record will get.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The bytes the batch would take with one more payload of `len` bytes.
    pub fn len_with(&self, len: usize) -> u64 {
        (self.bytes.len() + RECORD_HEADER_BYTES + align_up(len, RECORD_ALIGN_BYTES)) as u64
    }

    /// Appends a record; returns its LSN. The caller keeps the batch under `batch_bytes_max`.
    pub fn push(&mut self, payload: &[u8]) -> Lsn {
        assert!(self.len_with(payload.len()) <= batch_bytes_max, "batch overflow");
        let lsn = self.next_lsn;
        let len = u32::try_from(payload.len()).unwrap_or_else(|_| panic!("payload of {} bytes", payload.len()));
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        self.bytes.extend_from_slice(&lsn.0.to_le_bytes());
        self.bytes.extend_from_slice(payload);
        self.bytes.resize(align_up(self.bytes.len(), RECORD_ALIGN_BYTES), 0);
        self.records += 1;
        self.next_lsn = Lsn(lsn.0 + 1);
        lsn
    }

    /// Closes the batch: fills in its header and pads it to a block. The builder starts the
    /// next batch.
    pub fn seal(&mut self) -> SealedBatch {
        assert!(!self.is_empty(), "sealing an empty batch");
        let mut bytes = std::mem::replace(&mut self.bytes, vec![0; BATCH_HEADER_BYTES]);
        let batch_bytes = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        bytes[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        bytes[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[8..12].copy_from_slice(&batch_bytes.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.records.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        bytes.resize(align_up(bytes.len(), block_bytes as usize), 0);
        let sealed = SealedBatch { bytes, first_lsn: self.first_lsn, records: self.records };
        self.records = 0;
        self.first_lsn = self.next_lsn;
        sealed
    }
}

/// A valid batch header at some offset.
#[derive(Debug, PartialEq, Eq)]
struct BatchHeader {
    version: u16,
    batch_bytes: usize,
    records: u32,
    first_lsn: Lsn,
}

/// Reads and checks the batch at `at`: `Ok(None)` for zeros (no batch), `Err` with the
/// reason for anything else that is not a whole, valid batch.
fn batch_at(segment: &[u8], at: usize) -> Result<Option<BatchHeader>, String> {
    let Some(header) = segment.get(at..at + BATCH_HEADER_BYTES) else {
        return Ok(None);
    };
    if header.iter().all(|byte| *byte == 0) {
        return Ok(None);
    }
    if u32_at(header, 0) != BATCH_MAGIC {
        return Err("no batch header here".into());
    }
    let version = u16_at(header, 4);
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(format!("format version {version}, this build reads {FORMAT_VERSION_MIN} to {FORMAT_VERSION}"));
    }
    let batch_bytes = u32_at(header, 8) as usize;
    if batch_bytes < BATCH_HEADER_BYTES + RECORD_HEADER_BYTES || batch_bytes as u64 > batch_bytes_max {
        return Err(format!("a batch length of {batch_bytes} bytes"));
    }
    let Some(batch) = segment.get(at..at + batch_bytes) else {
        return Err(format!("a batch of {batch_bytes} bytes runs past the end of the segment"));
    };
    let mut check = batch.to_vec();
    check[24..28].fill(0);
    if crc32c::crc32c(&check) != u32_at(header, 24) {
        return Err("the batch checksum does not match".into());
    }
    Ok(Some(BatchHeader { version, batch_bytes, records: u32_at(header, 12), first_lsn: Lsn(u64_at(header, 16)) }))
}

/// What a segment holds.
#[derive(Debug)]
pub struct Scan {
    /// Each record's LSN, the range of its payload in the segment, and the format version of
    /// its batch (which says how to decode the payload).
    pub records: Vec<(Lsn, Range<usize>, u16)>,
    /// Where the next batch goes: the end of the last valid batch, on a block boundary.
    pub end: u64,
    /// A torn final batch that was cut: its offset and what was wrong with it.
    pub torn: Option<(u64, String)>,
}

/// Damage that is not a torn final batch: the offset and the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub why: String,
}

/// Reads a segment whose first record should be `next_lsn`.
///
/// The log ends at the first block boundary without a valid batch. That end is accepted only
/// if no valid batch follows it in the segment: a batch in flight when the machine stopped can
/// leave garbage anywhere in its own span, but never a valid batch after it. Anything else
/// (a bad batch followed by good ones, an LSN out of sequence, a bad record inside a good
/// batch) is damage.
pub fn scan_segment(segment: &[u8], mut next_lsn: Lsn) -> Result<Scan, Damage> {
    let mut records = Vec::new();
    let mut at = 0usize;
    let block = block_bytes as usize;
    let problem = loop {
        match batch_at(segment, at) {
            Ok(None) => break None,
            Err(why) => break Some(why),
            Ok(Some(header)) => {
                if header.first_lsn != next_lsn {
                    let why =
                        format!("a batch starting at LSN {} where {} was expected", header.first_lsn.0, next_lsn.0);
                    return Err(Damage { offset: at as u64, why });
                }
                let mut record_at = at + BATCH_HEADER_BYTES;
                for _ in 0..header.records {
                    let damage = |why: String| Damage { offset: record_at as u64, why };
                    let frame = segment.get(record_at..record_at + RECORD_HEADER_BYTES);
                    let frame = frame.ok_or_else(|| damage("a record frame past the batch".into()))?;
                    let len = u32_at(frame, 0) as usize;
                    let payload = record_at + RECORD_HEADER_BYTES..record_at + RECORD_HEADER_BYTES + len;
                    if payload.end > at + header.batch_bytes {
                        return Err(damage(format!("a record of {len} bytes runs past its batch")));
                    }
                    if crc32c::crc32c(&segment[payload.clone()]) != u32_at(frame, 4) {
                        return Err(damage("a record checksum does not match inside a valid batch".into()));
                    }
                    if u64_at(frame, 8) != next_lsn.0 {
                        return Err(damage(format!(
                            "record LSN {} where {} was expected",
                            u64_at(frame, 8),
                            next_lsn.0
                        )));
                    }
                    records.push((next_lsn, payload.clone(), header.version));
                    next_lsn = Lsn(next_lsn.0 + 1);
                    record_at = align_up(payload.end, RECORD_ALIGN_BYTES);
                }
                if record_at != at + header.batch_bytes {
                    return Err(Damage {
                        offset: at as u64,
                        why: "the batch length disagrees with its records".into(),
                    });
                }
                at = align_up(at + header.batch_bytes, block);
            }
        }
    };
    // Nothing valid may follow the end.
    let mut later = at + block;
    while later + BATCH_HEADER_BYTES <= segment.len() {
        if let Ok(Some(header)) = batch_at(segment, later).map(|header| header.filter(|h| h.first_lsn >= next_lsn)) {
            let why = match &problem {
                Some(why) => format!("{why}, yet a valid batch (LSN {}) follows at offset {later}", header.first_lsn.0),
                None => format!("zeros, yet a valid batch (LSN {}) follows at offset {later}", header.first_lsn.0),
            };
            return Err(Damage { offset: at as u64, why });
        }
        later += block;
    }
    Ok(Scan { records, end: at as u64, torn: problem.map(|why| (at as u64, why)) })
}

/// The LSN of the first record of a segment, if it starts with a valid batch: does the log
/// go on into it?
pub fn first_lsn(segment: &[u8]) -> Option<Lsn> {
    batch_at(segment, 0).ok().flatten().map(|header| header.first_lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: usize = 64 * 1024;

    /// A segment with `batches` batches of `per_batch` records each; returns the bytes and the
    /// offset of each batch.
    fn segment(batches: usize, per_batch: usize) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = vec![0u8; SEGMENT];
        let mut builder = BatchBuilder::new(Lsn(1));
        let (mut at, mut offsets) = (0, Vec::new());
        for batch in 0..batches {
            for record in 0..per_batch {
                builder.push(format!("record {batch}.{record}").repeat(record + 1).as_bytes());
            }
            let sealed = builder.seal();
            bytes[at..at + sealed.bytes.len()].copy_from_slice(&sealed.bytes);
            offsets.push(at);
            at += sealed.bytes.len();
        }
        (bytes, offsets)
    }

    #[test]
    fn batches_scan_back_in_order() {
        let (bytes, _) = segment(5, 7);
        let scan = scan_segment(&bytes, Lsn(1)).unwrap();
        assert_eq!(scan.records.len(), 35);
        assert!(scan.torn.is_none());
        assert_eq!(scan.end, 5 * block_bytes);
        for (index, (lsn, range, _)) in scan.records.iter().enumerate() {
            assert_eq!(lsn.0, index as u64 + 1);
            assert_eq!(range.start % RECORD_ALIGN_BYTES, 0, "payloads are aligned");
            let (batch, record) = (index / 7, index % 7);
            assert_eq!(&bytes[range.clone()], format!("record {batch}.{record}").repeat(record + 1).as_bytes());
        }
    }

    #[test]
    fn a_torn_final_batch_is_cut() {
        let (mut bytes, offsets) = segment(3, 5);
        bytes[offsets[2] + 100] ^= 0xff;
        let scan = scan_segment(&bytes, Lsn(1)).unwrap();
        assert_eq!(scan.records.len(), 10);
        let (offset, why) = scan.torn.unwrap();
        assert_eq!(offset, offsets[2] as u64);
        assert!(why.contains("checksum"), "{why}");
    }

    #[test]
    fn damage_before_good_batches_is_an_error_naming_the_offset() {
        let (mut bytes, offsets) = segment(3, 5);
        bytes[offsets[1] + 40] ^= 0x01;
        let damage = scan_segment(&bytes, Lsn(1)).unwrap_err();
        assert_eq!(damage.offset, offsets[1] as u64);
        assert!(damage.why.contains("valid batch (LSN 11) follows"), "{}", damage.why);
        let (mut bytes, offsets) = segment(3, 5);
        bytes[offsets[1]..offsets[1] + 4096].fill(0);
        let damage = scan_segment(&bytes, Lsn(1)).unwrap_err();
        assert!(damage.why.starts_with("zeros, yet"), "{}", damage.why);
    }

    #[test]
    fn lsns_must_continue() {
        let (bytes, _) = segment(2, 2);
        let damage = scan_segment(&bytes, Lsn(5)).unwrap_err();
        assert_eq!(damage.offset, 0);
        assert!(damage.why.contains("LSN 1 where 5"), "{}", damage.why);
    }

    #[test]
    fn every_torn_write_of_the_last_batch_is_cut_cleanly() {
        let (complete, offsets) = segment(3, 40);
        let last = offsets[2];
        let end = last + 3 * 4096;
        // Any subset of the last batch's sectors reaching the disk.
        let mut state = 7u64;
        for _ in 0..500 {
            let mut bytes = complete.clone();
            for sector in (last..end).step_by(512) {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if state >> 63 == 1 {
                    bytes[sector..sector + 512].fill(0);
                }
            }
            let scan = scan_segment(&bytes, Lsn(1)).unwrap();
            assert!(scan.records.len() == 80 || scan.records.len() == 120, "{}", scan.records.len());
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 1u64;
        for _ in 0..300 {
            let mut bytes = vec![0u8; 16 * 1024];
            for byte in bytes.iter_mut().take(8 * 1024) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            bytes[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
            bytes[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            let _ = scan_segment(&bytes, Lsn(1));
        }
    }
}
