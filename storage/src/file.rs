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

    pub async fn size(&self) -> Result<u64, Error> {
        self.file.file_size().await.map_err(|error| Error::io("reading the size of", &self.path, io_error(error)))
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

/// Makes the entries of a directory (created and renamed files) durable. A blocking call,
/// made once per segment.
pub async fn sync_directory(path: &Path) -> Result<(), Error> {
    let directory = std::fs::File::open(path).map_err(|error| Error::io("opening", path, error))?;
    directory.sync_all().map_err(|error| Error::io("syncing", path, error))
}
