//! The crate's only unsafe code: mapping an immutable file into memory.

use std::fs::File;
use std::path::Path;

use crate::Error;

/// Maps the whole of the file at `path`, read-only.
///
/// Only for files that no process changes once they are written: checkpoint chunks, which
/// are content-named and never rewritten (`storage/FORMAT.md`, "Checkpoint files").
pub(crate) fn map_immutable(path: &Path) -> Result<memmap2::Mmap, Error> {
    let file = File::open(path).map_err(|source| Error::io("open", path, source))?;
    #[allow(unsafe_code)]
    // SAFETY: memmap2 requires that the file is not truncated or modified while it is mapped
    // (truncation turns reads into SIGBUS, modification changes bytes behind a `&[u8]`). The
    // callers map only content-named checkpoint chunks: a chunk is written once under a
    // temporary name, renamed into place, and never opened for writing again. Removing it
    // (garbage collection) is harmless: an unlinked file stays whole while it is mapped. The
    // map is read-only; a process that ignores all this and truncates a chunk crashes the
    // reader with SIGBUS, which is a stop, not a wrong answer.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::io("mmap", path, source))?;
    // A hint to read the whole file ahead: it is checksummed and then validated in full.
    // Failing to take the hint changes nothing but speed.
    let _ = map.advise(memmap2::Advice::WillNeed);
    Ok(map)
}
