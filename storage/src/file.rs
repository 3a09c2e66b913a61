//! The log's I/O facade: the few glommio file operations it uses, with errors that keep the
//! operating system's error code. **Only this module of `storage` names glommio.**

use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};
use glommio::GlommioError;

use crate::Error;

fn io_error(error: GlommioError<()>) -> io::Error {
    match error {
        GlommioError::EnhancedIoError { source, .. } => source,
        other => other.into(),
    }
}

/// A file opened for O_DIRECT reads and writes at block-aligned offsets.
#[derive(Debug)]
pub struct File {
    file: DmaFile,
    path: PathBuf,
}

impl File {
    /// Opens an existing file for reading and writing.
    pub async fn open(path: &Path) -> Result<File, Error> {
        let file = OpenOptions::new().read(true).write(true).dma_open(path).await;
        let file = file.map_err(|error| Error::io("opening", path, io_error(error)))?;
        Ok(File { file, path: path.to_owned() })
    }

    /// Creates a file for reading and writing (empty if it existed).
    pub async fn create(path: &Path) -> Result<File, Error> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).dma_open(path).await;
        let file = file.map_err(|error| Error::io("creating", path, io_error(error)))?;
        Ok(File { file, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size. A `stat` of the path (glommio's own size query fails on some
    /// descriptors here); the path is this file's as long as only this process renames it.
    pub fn size(&self) -> Result<u64, Error> {
        let metadata = std::fs::metadata(&self.path);
        Ok(metadata.map_err(|error| Error::io("reading the size of", &self.path, error))?.len())
    }

    /// Reads `len` bytes at `offset`; both are block-aligned.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let read = self.file.read_at_aligned(offset, len).await;
        let read = read.map_err(|error| Error::io("reading", &self.path, io_error(error)))?;
        if read.len() != len {
            let short =
                io::Error::new(io::ErrorKind::UnexpectedEof, format!("read {} of {len} bytes at {offset}", read.len()));
            return Err(Error::io("reading", &self.path, short));
        }
        Ok(read.to_vec())
    }

    /// Writes `bytes` (a whole number of blocks) at `offset`, a block boundary.
    pub async fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), Error> {
        let mut buffer = self.file.alloc_dma_buffer(bytes.len());
        buffer.as_bytes_mut().copy_from_slice(bytes);
        let written = self.file.write_at(buffer, offset).await;
        let written = written.map_err(|error| Error::io("writing", &self.path, io_error(error)))?;
        if written != bytes.len() {
            let short = io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {written} of {} bytes at {offset}", bytes.len()),
            );
            return Err(Error::io("writing", &self.path, short));
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn sync(&self) -> Result<(), Error> {
        self.file.fdatasync().await.map_err(|error| Error::io("syncing", &self.path, io_error(error)))
    }

    pub async fn rename(&mut self, to: &Path) -> Result<(), Error> {
        self.file.rename(to).await.map_err(|error| Error::io("renaming", &self.path, io_error(error)))?;
        self.path = to.to_owned();
        Ok(())
    }
}

/// Lets glommio learn, from a file with real data on the device of `dir`, whether the device
/// can be polled. glommio probes the device with a read on the first file it opens there
/// (per executor) and caches the answer; on an empty file that read succeeds without touching
/// the device, glommio wrongly concludes it can poll, and every later read fails with
/// EOPNOTSUPP. Call this before the first file of a directory is opened.
pub async fn probe_device(dir: &Path) -> Result<(), Error> {
    let path = dir.join(".device-probe");
    let block = vec![0u8; crate::limits::block_bytes as usize];
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut file, &block)?;
        file.sync_all()
    };
    write().map_err(|error| Error::io("writing", &path, error))?;
    let probed = File::open(&path).await.map(drop);
    std::fs::remove_file(&path).map_err(|error| Error::io("removing", &path, error))?;
    probed
}

/// Makes the entries of a directory (created and renamed files) durable. A blocking call,
/// made once per segment.
pub async fn sync_directory(path: &Path) -> Result<(), Error> {
    let directory = std::fs::File::open(path).map_err(|error| Error::io("opening", path, error))?;
    directory.sync_all().map_err(|error| Error::io("syncing", path, error))
}
