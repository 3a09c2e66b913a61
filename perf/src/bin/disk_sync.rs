//! The disk's own limit for a durable append, measured the way the log appends: a 4 KiB
//! O_DIRECT write through glommio's io_uring file into a pre-zeroed file, then fdatasync.
//! Prints p50, p99 and max in microseconds.
//!
//! `disk-sync [DIR] [COUNT]` (defaults: `./data`, 2000)

#![allow(clippy::print_stdout)] // The figures are the program's output.

use std::time::Instant;

use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

const BLOCK: usize = 4096;
const FILE_BYTES: u64 = 64 * 1024 * 1024;

async fn measure(dir: std::path::PathBuf, count: u64) -> std::io::Result<Histogram<u64>> {
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("disk-sync.tmp");
    // Pre-zero with real writes and sync, as the log prepares its segments.
    {
        let mut file = std::fs::File::create(&path)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..FILE_BYTES / (1 << 20) {
            std::io::Write::write_all(&mut file, &zeros)?;
        }
        file.sync_all()?;
    }
    let file: DmaFile = OpenOptions::new().read(true).write(true).dma_open(&path).await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?;
    for n in 0..count {
        let mut buffer = file.alloc_dma_buffer(BLOCK);
        buffer.as_bytes_mut().fill((n % 251) as u8 + 1);
        let offset = (n * BLOCK as u64) % FILE_BYTES;
        let started = Instant::now();
        file.write_at(buffer, offset).await?;
        file.fdatasync().await?;
        histogram.record(started.elapsed().as_micros() as u64).map_err(std::io::Error::other)?;
    }
    file.close().await?;
    std::fs::remove_file(&path)?;
    Ok(histogram)
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "data".into()));
    let count: u64 = args.next().and_then(|count| count.parse().ok()).unwrap_or(2_000);
    let executor = LocalExecutorBuilder::new(Placement::Unbound).spawn(move || measure(dir, count));
    let outcome = executor
        .map_err(|error| error.to_string())
        .and_then(|handle| handle.join().map_err(|error| error.to_string()))
        .and_then(|measured| measured.map_err(|error| error.to_string()));
    match outcome {
        Ok(histogram) => {
            println!(
                "disk 4KiB write+fdatasync (pre-zeroed, O_DIRECT via io_uring): n={} p50_us={} p99_us={} max_us={}",
                histogram.len(),
                histogram.value_at_quantile(0.5),
                histogram.value_at_quantile(0.99),
                histogram.max()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("disk-sync: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
