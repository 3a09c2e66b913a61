//! The blob store: where a node uploads sealed log segments, checkpoint chunks and manifests.
//!
//! Two backends through [`object_store`]: a local directory (`file:///abs/dir`, the default,
//! with fsync turned on) and, with the cargo feature `s3`, S3 or an S3-compatible server
//! (`s3://bucket/prefix`).
//!
//! **object_store never runs on a shard.** It is async on tokio, and its local file system does
//! blocking I/O (inline when no tokio runtime is around), which would stall a shard's glommio
//! loop. So a [`BlobStore`] owns one thread, `blob-uploader`, that runs a tokio current-thread
//! runtime (its blocking pool threads are named `blob-io`). Callers, glommio tasks on any
//! shard or plain threads, send jobs over a bounded channel and await a oneshot reply; both
//! are plain futures that any executor can poll, and a plain thread can wait on them with
//! `futures_lite::future::block_on`. A full queue makes callers wait: a slow store pushes
//! back instead of piling up work. Dropping the future of a call does not cancel its job.
//!
//! **Create-only writes fence stale writers.** [`BlobStore::put_new`] writes only if nothing is
//! at the path (`PutMode::Create`): the local store publishes with a hard link, S3 with
//! `If-None-Match: *`. The loser of a race learns it from `Ok(false)`, which is how a zombie
//! shard owner is kept from publishing a manifest generation that someone else wrote.
//!
//! Paths are relative and '/'-separated (`shard-3/manifest/00000000000000000007`), the same on
//! both backends: no empty segments, no `.` or `..`, no `#` (the local store names uploads in
//! progress `<path>#<n>`; they are invisible to [`BlobStore::list`] and stay behind if the
//! process dies mid-write).

// S3's own limits read as quantities, as those in `crate::limits`.
#![allow(non_upper_case_globals)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_lite::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, WriteMultipart};
use tokio::sync::{mpsc, Semaphore};

use crate::limits::{
    blob_blocking_threads_max, blob_bytes_max, blob_jobs_in_flight_max, blob_jobs_queued_max, blob_list_entries_max,
    blob_multipart_bytes_min, blob_part_bytes, blob_parts_in_flight_max,
};
use crate::Error;

/// S3's smallest part (the last part may be smaller).
const s3_part_bytes_min: usize = 5 * 1024 * 1024;
/// S3's most parts in one multipart upload.
const s3_parts_max: u64 = 10_000;

const _: () = assert!(blob_part_bytes >= s3_part_bytes_min);
const _: () = assert!(blob_multipart_bytes_min >= blob_part_bytes);
const _: () = assert!(blob_bytes_max.div_ceil(blob_part_bytes as u64) <= s3_parts_max);
const _: () = assert!(crate::limits::segment_bytes_default <= blob_bytes_max);
const _: () = assert!(blob_blocking_threads_max >= blob_jobs_in_flight_max);

/// A job for the uploader thread: given the store, the future that does the work and replies.
type Job = Box<dyn FnOnce(Arc<dyn ObjectStore>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Why a job failed, as the uploader saw it.
type Why = Box<dyn std::error::Error + Send + Sync>;

/// A handle on a blob store and its uploader thread. Cheap to clone: every shard holds one.
/// The thread stops once the last handle is dropped and the jobs already queued are done.
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

// Every shard holds a clone, and any executor may poll its futures.
const _: () = {
    const fn shareable<T: Clone + Send + Sync>() {}
    shareable::<BlobStore>();
};

#[derive(Debug)]
struct Inner {
    url: String,
    jobs: mpsc::Sender<Job>,
    bytes_written: AtomicU64,
    /// Dead once the uploader thread has ended.
    #[cfg(test)]
    uploader_alive: std::sync::Weak<()>,
}

impl BlobStore {
    /// Opens `url` and starts the uploader thread.
    ///
    /// - `file:///abs/dir`: a local directory, created if missing, every write fsynced (file and
    ///   directory) before it is acknowledged. The path is taken literally (no `%` escapes).
    /// - `s3://bucket/prefix` (cargo feature `s3`): configured from the usual AWS environment
    ///   variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` or
    ///   `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` for S3-compatible servers,
    ///   `AWS_ALLOW_HTTP=true` for an `http://` endpoint. Create-only writes use
    ///   `If-None-Match: *`, whatever `AWS_CONDITIONAL_PUT` says.
    ///
    /// Does blocking work (directories, a thread): call it at start-up, not on a shard's loop.
    pub fn open(url: &str) -> Result<BlobStore, Error> {
        let aws_env = std::env::vars_os().filter_map(|(key, value)| {
            let (key, value) = (key.into_string().ok()?, value.into_string().ok()?);
            key.starts_with("AWS_").then_some((key, value))
        });
        BlobStore::open_with(url, aws_env)
    }

    /// [`BlobStore::open`] with the S3 options (AWS environment variable names, or
    /// object_store's config keys) given instead of read from the environment.
    fn open_with(url: &str, s3_options: impl IntoIterator<Item = (String, String)>) -> Result<BlobStore, Error> {
        let fail = |why: String| Error::BlobUrl { url: url.to_string(), why };
        let store = backend(url, s3_options)?;
        let (jobs, queue) = mpsc::channel(blob_jobs_queued_max);
        let (started, start) = std::sync::mpsc::sync_channel(1);
        let alive = Arc::new(());
        #[cfg(test)]
        let uploader_alive = Arc::downgrade(&alive);
        std::thread::Builder::new()
            .name("blob-uploader".to_string())
            .spawn(move || {
                let _alive = alive;
                // The runtime lives and dies on this thread: dropping one in a caller's async
                // context would panic.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(blob_blocking_threads_max)
                    .thread_name("blob-io")
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let _ = started.send(Ok(()));
                runtime.block_on(serve(store, queue));
            })
            .map_err(|e| fail(format!("cannot start the uploader thread: {e}")))?;
        match start.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail(format!("cannot start the uploader's tokio runtime: {e}"))),
            Err(_) => return Err(fail("the uploader thread ended as it started".to_string())),
        }
        let inner = Inner {
            url: url.to_string(),
            jobs,
            bytes_written: AtomicU64::new(0),
            #[cfg(test)]
            uploader_alive,
        };
        Ok(BlobStore { inner: Arc::new(inner) })
    }

    /// The URL the store was opened with.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Writes `bytes` at `path` (relative, '/'-separated), replacing what is there. The new
    /// object appears whole or not at all. Bodies of [`blob_multipart_bytes_min`] and more go
    /// up as a multipart upload.
    pub async fn put(&self, path: &str, bytes: Bytes) -> Result<(), Error> {
        let location = self.location("put", path)?;
        let len = self.check_len("put", path, &bytes)?;
        self.run("put", path, move |store| async move {
            if bytes.len() < blob_multipart_bytes_min {
                store.put(&location, PutPayload::from_bytes(bytes)).await?;
            } else {
                put_multipart(store.as_ref(), &location, bytes).await?;
            }
            Ok(())
        })
        .await?;
        self.inner.bytes_written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `bytes` at `path` only if nothing is there (`PutMode::Create`): `Ok(true)` if it
    /// was written, `Ok(false)` if something already was (the caller lost a race: it is
    /// fenced), which is left as it was. Always a single request, so for small objects such as
    /// manifests; S3 takes at most 5 GiB in one request.
    pub async fn put_new(&self, path: &str, bytes: Bytes) -> Result<bool, Error> {
        let location = self.location("put_new", path)?;
        let len = self.check_len("put_new", path, &bytes)?;
        let written = self
            .run("put_new", path, move |store| async move {
                match store.put_opts(&location, PutPayload::from_bytes(bytes), PutMode::Create.into()).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        if written {
            self.inner.bytes_written.fetch_add(len, Ordering::Relaxed);
        }
        Ok(written)
    }

    /// Reads the whole object at `path`; `Ok(None)` if there is none.
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>, Error> {
        let location = self.location("get", path)?;
        self.run("get", path, move |store| async move {
            let found = match store.get(&location).await {
                Ok(found) => found,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if found.meta.size > blob_bytes_max {
                let size = found.meta.size;
                return Err(format!("the object has {size} bytes, more than blob_bytes_max ({blob_bytes_max})").into());
            }
            Ok(Some(found.bytes().await?))
        })
        .await
    }

    /// Every object under `prefix`, with its size in bytes, sorted by path. The prefix is
    /// matched by whole segments: `shard-1` lists `shard-1/x` but not `shard-10/x`; the empty
    /// prefix lists everything.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let prefix = prefix.trim_end_matches('/');
        let location = if prefix.is_empty() { None } else { Some(self.location("list", prefix)?) };
        self.run("list", prefix, move |store| async move {
            let mut objects = Vec::new();
            let mut found = store.list(location.as_ref());
            while let Some(meta) = found.next().await {
                let meta = meta?;
                if objects.len() == blob_list_entries_max {
                    return Err(format!("more than blob_list_entries_max ({blob_list_entries_max}) objects").into());
                }
                objects.push((meta.location.to_string(), meta.size));
            }
            objects.sort_unstable();
            Ok(objects)
        })
        .await
    }

    /// Removes the object at `path`; if there is none, that is fine.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        let location = self.location("delete", path)?;
        self.run("delete", path, move |store| async move {
            match store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Bytes written by [`BlobStore::put`] and [`BlobStore::put_new`] through this store and
    /// its clones since it was opened (for tests and metrics).
    pub fn bytes_written(&self) -> u64 {
        self.inner.bytes_written.load(Ordering::Relaxed)
    }

    /// Sends `work` to the uploader thread and waits for its answer.
    async fn run<T, F, Fut>(&self, op: &'static str, path: &str, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn ObjectStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Why>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            Box::pin(async move {
                // The caller may have stopped waiting; the work is done all the same.
                let _ = reply.send(work(store).await);
            })
        });
        let fail = |why: String| Error::Blob { op, path: self.place(path), why };
        if self.inner.jobs.send(job).await.is_err() {
            return Err(fail("the blob uploader thread has stopped".to_string()));
        }
        match answer.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(why)) => Err(fail(why.to_string())),
            Err(oneshot::Canceled) => Err(fail("the blob uploader thread dropped the job (it panicked)".to_string())),
        }
    }

    /// Checks a blob path and turns it into object_store's.
    fn location(&self, op: &'static str, path: &str) -> Result<Path, Error> {
        let fail = |why: String| Error::Blob { op, path: self.place(path), why };
        if path.is_empty() || path.starts_with('/') || path.ends_with('/') || path.contains("//") {
            return Err(fail(
                "a blob path is relative and '/'-separated, without empty segments, e.g. shard-0/manifest/1"
                    .to_string(),
            ));
        }
        if path.contains('#') {
            return Err(fail(
                "'#' is not allowed in a blob path (the local store marks uploads in progress with it)".into(),
            ));
        }
        Path::parse(path).map_err(|e| fail(e.to_string()))
    }

    /// The length of a body to write, if it is within [`blob_bytes_max`].
    fn check_len(&self, op: &'static str, path: &str, bytes: &Bytes) -> Result<u64, Error> {
        let len = bytes.len() as u64;
        if len > blob_bytes_max {
            let why = format!("a body of {len} bytes is larger than blob_bytes_max ({blob_bytes_max})");
            return Err(Error::Blob { op, path: self.place(path), why });
        }
        Ok(len)
    }

    /// Where `path` is, for error messages.
    fn place(&self, path: &str) -> String {
        format!("{}/{}", self.inner.url.trim_end_matches('/'), path)
    }
}

/// The backend `url` names.
fn backend(url: &str, s3_options: impl IntoIterator<Item = (String, String)>) -> Result<Arc<dyn ObjectStore>, Error> {
    let fail = |why: String| Error::BlobUrl { url: url.to_string(), why };
    let supported = "the supported ones are file:///absolute/dir and s3://bucket/prefix";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(fail(format!("this is not a URL; {supported}")));
    };
    match scheme {
        "file" => local(rest).map_err(fail),
        "s3" => s3(rest, s3_options).map_err(fail),
        _ => Err(fail(format!("unknown scheme {scheme:?}; {supported}"))),
    }
}

/// A local directory as the store, created if missing, with fsync on.
fn local(dir: &str) -> Result<Arc<dyn ObjectStore>, String> {
    if !dir.starts_with('/') {
        return Err(format!("the path must be absolute: file:///absolute/dir (three slashes), not file://{dir}"));
    }
    if dir.contains(['%', '?', '#']) {
        return Err("write the directory literally, without '%' escapes, '?' or '#'".to_string());
    }
    let dir = std::path::Path::new(dir);
    create_dir_durably(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| e.to_string())?.with_fsync(true);
    Ok(Arc::new(store))
}

/// Creates `dir` and its missing parents, and syncs every directory that gained an entry, so
/// that the store's root survives a crash as the objects in it do.
fn create_dir_durably(dir: &std::path::Path) -> std::io::Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    let mut synced = dir;
    while synced != existing {
        std::fs::File::open(synced)?.sync_all()?;
        match synced.parent() {
            Some(parent) => synced = parent,
            None => break,
        }
    }
    if existing != dir {
        std::fs::File::open(existing)?.sync_all()?;
    }
    Ok(())
}

/// S3 as the store: `bucket/prefix`, configured from `options`.
#[cfg(feature = "s3")]
fn s3(rest: &str, options: impl IntoIterator<Item = (String, String)>) -> Result<Arc<dyn ObjectStore>, String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
    use object_store::prefix::PrefixStore;

    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("the bucket is missing: s3://bucket/prefix".to_string());
    }
    // As AmazonS3Builder::from_env does: keys it does not know are not for it.
    let mut builder = AmazonS3Builder::new();
    for (key, value) in options {
        if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    // Fencing depends on conditional puts: never let the environment turn them off.
    let s3 = builder.with_bucket_name(bucket).with_conditional_put(S3ConditionalPut::ETagMatch).build();
    let s3 = s3.map_err(|e| e.to_string())?;
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(Arc::new(s3));
    }
    if prefix.contains("//") || prefix.contains('#') {
        return Err("the prefix must be '/'-separated without empty segments or '#'".to_string());
    }
    let prefix = Path::parse(prefix).map_err(|e| e.to_string())?;
    Ok(Arc::new(PrefixStore::new(s3, prefix)))
}

/// Without the `s3` feature, S3 is an error that says how to get it.
#[cfg(not(feature = "s3"))]
fn s3(_rest: &str, _options: impl IntoIterator<Item = (String, String)>) -> Result<Arc<dyn ObjectStore>, String> {
    Err("this build has no S3 support: build with `--features s3` \
         (from the workspace root: `--features statefun-storage/s3`)"
        .to_string())
}

/// Uploads `bytes` in parts of [`blob_part_bytes`], [`blob_parts_in_flight_max`] at a time.
/// A failed upload is aborted, so no parts are left behind.
async fn put_multipart(store: &dyn ObjectStore, location: &Path, mut bytes: Bytes) -> object_store::Result<()> {
    let mut upload = WriteMultipart::new_with_chunk_size(store.put_multipart(location).await?, blob_part_bytes);
    while !bytes.is_empty() {
        if let Err(e) = upload.wait_for_capacity(blob_parts_in_flight_max).await {
            // The upload's own error is the one to report.
            let _ = upload.abort().await;
            return Err(e);
        }
        upload.put(bytes.split_to(bytes.len().min(blob_part_bytes)));
    }
    // Aborts the upload itself if a part or the completion fails.
    upload.finish().await?;
    Ok(())
}

/// The uploader thread's loop: takes jobs while fewer than [`blob_jobs_in_flight_max`] run,
/// until every handle is gone and the queue is empty, then waits for the jobs in flight.
async fn serve(store: Arc<dyn ObjectStore>, mut queue: mpsc::Receiver<Job>) {
    let in_flight = Arc::new(Semaphore::new(blob_jobs_in_flight_max));
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let Some(job) = queue.recv().await else { break };
        let work = job(Arc::clone(&store));
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
    // Returning drops the runtime, which would cancel the jobs still running.
    let _ = in_flight.acquire_many(blob_jobs_in_flight_max as u32).await;
    tracing::debug!("the blob uploader stops: every handle on the store is gone");
}

#[cfg(test)]
mod tests {
    //! The blob store against a temp directory (and, with feature `s3`, a moto server the test
    //! starts), driven from glommio executors, plain threads and many concurrent callers.

    use std::time::{Duration, Instant};

    use futures_lite::future::block_on;

    use super::*;

    fn directory(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("statefun-blob-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn open_dir(name: &str) -> (BlobStore, std::path::PathBuf) {
        let dir = directory(name);
        let store = BlobStore::open(&format!("file://{}", dir.display())).unwrap();
        (store, dir)
    }

    /// Runs `test` on a glommio executor of its own thread, as a shard would.
    fn on_glommio<T: Send + 'static>(test: impl FnOnce() -> Pin<Box<dyn Future<Output = T>>> + Send + 'static) -> T {
        let executor =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).spawn(move || async move { test().await });
        executor.unwrap().join().unwrap()
    }

    /// A body whose every byte depends on its place and on `seed`.
    fn body(len: usize, seed: u8) -> Bytes {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 16) as u8).wrapping_add(seed)).collect()
    }

    /// Put, get, list and delete, nested paths, the prefix rule, create-only fencing, and
    /// the count of bytes written: the same for every backend.
    async fn round_trip(store: &BlobStore) {
        assert_eq!(store.get("shard-0/manifest/1").await.unwrap(), None);
        assert_eq!(store.list("").await.unwrap(), vec![]);
        assert_eq!(store.list("shard-0").await.unwrap(), vec![]);

        store.put("shard-0/seg/00000000000000000001-00000000000000000009.seg", body(1000, 1)).await.unwrap();
        store.put("shard-0/a/b/c/d/nested", body(10, 2)).await.unwrap();
        store.put("shard-10/x", body(3, 3)).await.unwrap();
        store.put("top", Bytes::new()).await.unwrap();
        assert_eq!(store.bytes_written(), 1013);

        let seg = "shard-0/seg/00000000000000000001-00000000000000000009.seg";
        assert_eq!(store.get(seg).await.unwrap(), Some(body(1000, 1)));
        assert_eq!(store.get("shard-0/a/b/c/d/nested").await.unwrap(), Some(body(10, 2)));
        assert_eq!(store.get("top").await.unwrap(), Some(Bytes::new()));

        // Replacing.
        store.put("shard-0/a/b/c/d/nested", body(20, 4)).await.unwrap();
        assert_eq!(store.get("shard-0/a/b/c/d/nested").await.unwrap(), Some(body(20, 4)));
        assert_eq!(store.bytes_written(), 1033);

        let all = store.list("").await.unwrap();
        let expected = vec![
            ("shard-0/a/b/c/d/nested".to_string(), 20),
            (seg.to_string(), 1000),
            ("shard-10/x".to_string(), 3),
            ("top".to_string(), 0),
        ];
        assert_eq!(all, expected);
        assert_eq!(store.list("shard-0").await.unwrap(), expected[..2].to_vec());
        assert_eq!(store.list("shard-0/").await.unwrap(), expected[..2].to_vec());
        assert_eq!(store.list("shard-1").await.unwrap(), vec![]);
        assert_eq!(store.list("shard-0/seg").await.unwrap(), expected[1..2].to_vec());

        // Create-only: the second writer is fenced and the first content stays.
        assert!(store.put_new("shard-0/manifest/00000000000000000001", body(50, 5)).await.unwrap());
        assert!(!store.put_new("shard-0/manifest/00000000000000000001", body(60, 6)).await.unwrap());
        assert_eq!(store.get("shard-0/manifest/00000000000000000001").await.unwrap(), Some(body(50, 5)));
        assert_eq!(store.bytes_written(), 1083, "a fenced put_new writes nothing");

        store.delete(seg).await.unwrap();
        store.delete(seg).await.unwrap();
        store.delete("never/there").await.unwrap();
        assert_eq!(store.get(seg).await.unwrap(), None);
        let left: Vec<String> = store.list("").await.unwrap().into_iter().map(|(path, _)| path).collect();
        assert_eq!(left, ["shard-0/a/b/c/d/nested", "shard-0/manifest/00000000000000000001", "shard-10/x", "top"]);
    }

    /// A body of 20 MiB goes up in three parts and comes back whole; replacing it works too.
    async fn multipart_round_trip(store: &BlobStore) {
        let before = store.bytes_written();
        let big = body(20 * 1024 * 1024, 7);
        assert!(big.len() >= blob_multipart_bytes_min);
        store.put("big/object", big.clone()).await.unwrap();
        assert_eq!(store.get("big/object").await.unwrap().as_ref(), Some(&big));
        assert_eq!(store.list("big").await.unwrap(), vec![("big/object".to_string(), big.len() as u64)]);
        let bigger = body(blob_part_bytes * 2, 8);
        store.put("big/object", bigger.clone()).await.unwrap();
        assert_eq!(store.get("big/object").await.unwrap().as_ref(), Some(&bigger));
        assert_eq!(store.bytes_written() - before, (big.len() + bigger.len()) as u64);
    }

    /// Racing create-only writers of one path: exactly one wins (at least one where the server
    /// is not `atomic`), and the content is a winner's.
    async fn put_new_race(store: &BlobStore, atomic: bool) {
        let tries: Vec<_> = (0..8u8)
            .map(|n| {
                let store = store.clone();
                std::thread::spawn(move || block_on(store.put_new("race/manifest", body(100, n))).map(|won| (n, won)))
            })
            .collect();
        let results: Vec<(u8, bool)> = tries.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        let winners: Vec<u8> = results.iter().filter(|(_, won)| *won).map(|(n, _)| *n).collect();
        if atomic {
            assert_eq!(winners.len(), 1, "{results:?}");
        } else {
            assert!(!winners.is_empty(), "{results:?}");
        }
        let stored = store.get("race/manifest").await.unwrap();
        assert!(winners.iter().any(|n| stored == Some(body(100, *n))), "{results:?}");
        assert!(!store.put_new("race/manifest", body(100, 99)).await.unwrap());
    }

    #[test]
    fn file_round_trip_from_a_plain_thread() {
        let (store, dir) = open_dir("round-trip");
        assert_eq!(store.url(), format!("file://{}", dir.display()));
        block_on(round_trip(&store));
        // The objects are plain files under the directory.
        assert_eq!(std::fs::read(dir.join("shard-10/x")).unwrap(), body(3, 3));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn file_round_trip_from_glommio() {
        let (store, dir) = open_dir("glommio");
        let moved = store.clone();
        on_glommio(move || Box::pin(async move { round_trip(&moved).await }));
        assert_eq!(store.bytes_written(), 1083);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn file_multipart_round_trip() {
        let (store, dir) = open_dir("multipart");
        on_glommio(move || Box::pin(async move { multipart_round_trip(&store).await }));
        // No upload left in progress.
        let names: Vec<_> = std::fs::read_dir(dir.join("big")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["object"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn file_put_new_race() {
        let (store, dir) = open_dir("race");
        block_on(put_new_race(&store, true));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn file_opens_a_directory_again_and_sees_its_objects() {
        let (store, dir) = open_dir("reopen");
        block_on(store.put("kept", body(5, 9))).unwrap();
        drop(store);
        let again = BlobStore::open(&format!("file://{}/", dir.display())).unwrap();
        assert_eq!(block_on(again.get("kept")).unwrap(), Some(body(5, 9)));
        assert!(!block_on(again.put_new("kept", body(5, 1))).unwrap());
        assert_eq!(again.bytes_written(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Four shards, 100 tasks each, far more than the queue holds: every call is answered.
    #[test]
    fn many_concurrent_calls_from_several_shards() {
        let (store, dir) = open_dir("concurrent");
        let shards: Vec<_> = (0..4u8)
            .map(|shard| {
                let store = store.clone();
                on_glommio_thread(shard, store)
            })
            .collect();
        for shard in shards {
            shard.join().unwrap();
        }
        let listed = block_on(store.list("")).unwrap();
        assert_eq!(listed.len(), 400);
        assert_eq!(store.bytes_written(), 4 * (0..100u64).map(|n| 100 + n).sum::<u64>());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn on_glommio_thread(shard: u8, store: BlobStore) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            on_glommio(move || {
                Box::pin(async move {
                    let tasks: Vec<_> = (0..100usize)
                        .map(|n| {
                            let store = store.clone();
                            glommio::spawn_local(async move {
                                let path = format!("shard-{shard}/seg/{n:020}");
                                store.put(&path, body(100 + n, shard)).await.unwrap();
                                assert_eq!(store.get(&path).await.unwrap(), Some(body(100 + n, shard)));
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await;
                    }
                })
            })
        })
    }

    #[test]
    fn the_futures_are_send() {
        fn send<T: Send>(_: T) {}
        let (store, dir) = open_dir("send");
        send(store.put("x", Bytes::new()));
        send(store.put_new("x", Bytes::new()));
        send(store.get("x"));
        send(store.list(""));
        send(store.delete("x"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_urls_are_refused_with_what_is_supported() {
        let message = |url: &str| BlobStore::open(url).unwrap_err().to_string();
        let unknown = message("gs://bucket/prefix");
        assert!(unknown.contains("\"gs\"") && unknown.contains("file:///") && unknown.contains("s3://"), "{unknown}");
        let not_url = message("/var/lib/blobs");
        assert!(not_url.contains("not a URL") && not_url.contains("file:///"), "{not_url}");
        let relative = message("file://relative/dir");
        assert!(relative.contains("absolute") && relative.contains("three slashes"), "{relative}");
        let escaped = message("file:///tmp/a%20b");
        assert!(escaped.contains("'%'"), "{escaped}");
        #[cfg(not(feature = "s3"))]
        {
            let s3 = message("s3://bucket/prefix");
            assert!(s3.contains("--features s3"), "{s3}");
        }
        #[cfg(feature = "s3")]
        {
            let no_bucket = message("s3:///prefix");
            assert!(no_bucket.contains("bucket is missing"), "{no_bucket}");
        }
    }

    #[test]
    fn bad_paths_are_refused_before_the_store_sees_them() {
        let (store, dir) = open_dir("bad-paths");
        for path in ["", "/abs", "dir/", "a//b", "a/../b", "./a", "upload#1"] {
            let error = block_on(store.put(path, Bytes::from_static(b"x"))).unwrap_err();
            assert!(matches!(error, Error::Blob { op: "put", .. }), "{path:?}: {error}");
            assert!(block_on(store.get(path)).is_err(), "{path:?}");
        }
        assert_eq!(block_on(store.list("")).unwrap(), vec![]);
        assert_eq!(store.bytes_written(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_dead_uploader_is_an_error_not_a_panic() {
        let (store, dir) = open_dir("dead");
        // A job that panics in the uploader's own loop takes the thread down.
        let poison: Job = Box::new(|_| panic!("test: the blob uploader dies"));
        block_on(store.inner.jobs.send(poison)).map_err(drop).unwrap();
        wait_for("the uploader thread to end", || store.inner.uploader_alive.upgrade().is_none());
        let error = block_on(store.put("after", Bytes::from_static(b"x"))).unwrap_err();
        assert!(error.to_string().contains("uploader thread has stopped"), "{error}");
        assert!(block_on(store.list("")).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dropping_the_last_handle_stops_the_thread() {
        let (store, dir) = open_dir("drop");
        let alive = store.inner.uploader_alive.clone();
        let clone = store.clone();
        drop(store);
        block_on(clone.put("x", Bytes::from_static(b"x"))).unwrap();
        assert!(alive.upgrade().is_some(), "a clone keeps the thread");
        drop(clone);
        wait_for("the uploader thread to end", || alive.upgrade().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The same against a real S3-compatible server: moto, started by the test.
    #[cfg(feature = "s3")]
    mod s3 {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::path::PathBuf;
        use std::process::{Child, Command, Stdio};

        use super::*;

        /// A moto server on a free port, killed on drop.
        struct Moto {
            child: Child,
            port: u16,
        }

        impl Drop for Moto {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }

        fn moto_server() -> PathBuf {
            let in_path = std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).map(|dir| dir.join("moto_server")).collect::<Vec<_>>())
                .unwrap_or_default();
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            let venv = target.join("sdk/venv/bin/moto_server");
            in_path.into_iter().chain([venv]).find(|candidate| candidate.is_file()).unwrap_or_else(|| {
                panic!(
                    "the S3 tests need moto_server (an S3-compatible server) and found none in PATH or \
                     target/sdk/venv/bin. Install it with: python3 -m pip install 'moto[server]' \
                     (or: tests/sdk/setup.sh && target/sdk/venv/bin/pip install 'moto[server]')"
                )
            })
        }

        fn start_moto() -> Moto {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = Command::new(moto_server())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut moto = Moto { child, port };
            let deadline = Instant::now() + Duration::from_secs(60);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(moto.child.try_wait().unwrap().is_none(), "moto_server exited at start");
                assert!(Instant::now() < deadline, "moto_server did not listen on port {port} within 60 s");
                std::thread::sleep(Duration::from_millis(50));
            }
            moto
        }

        /// object_store cannot create buckets: one raw, unsigned PUT (moto accepts it).
        fn create_bucket(port: u16, bucket: &str) {
            let mut http = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let request = format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            http.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            http.read_to_string(&mut response).unwrap();
            assert!(response.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {response}");
        }

        fn open_s3(moto: &Moto, url: &str) -> BlobStore {
            let options = [
                ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", moto.port)),
                ("AWS_ALLOW_HTTP", "true".to_string()),
                ("AWS_REGION", "us-east-1".to_string()),
                ("AWS_ACCESS_KEY_ID", "test".to_string()),
                ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
                // Ignored, as it is from the environment: fencing needs conditional puts.
                ("AWS_CONDITIONAL_PUT", "disabled".to_string()),
                ("AWS_NOT_A_KEY", "ignored".to_string()),
            ];
            BlobStore::open_with(url, options.map(|(key, value)| (key.to_string(), value))).unwrap()
        }

        #[test]
        fn s3_round_trip_against_moto() {
            let moto = start_moto();
            create_bucket(moto.port, "statefun");
            let store = open_s3(&moto, "s3://statefun/cluster-1/");
            assert_eq!(store.url(), "s3://statefun/cluster-1/");
            block_on(round_trip(&store));
            // moto checks If-None-Match and then stores, without a lock between
            // (moto/s3/responses.py, put_object): racing writers can both win there. S3 itself
            // decides atomically (one 200, the others 412 or 409), so only there is one winner
            // guaranteed; sequential fencing is checked in round_trip.
            block_on(put_new_race(&store, false));
            let moved = store.clone();
            on_glommio(move || Box::pin(async move { multipart_round_trip(&moved).await }));

            // The prefix is a folder of the bucket, and only that.
            let whole = open_s3(&moto, "s3://statefun");
            block_on(whole.put("elsewhere", Bytes::from_static(b"x"))).unwrap();
            let listed: Vec<String> = block_on(whole.list("")).unwrap().into_iter().map(|(path, _)| path).collect();
            assert!(listed.iter().all(|path| path == "elsewhere" || path.starts_with("cluster-1/")), "{listed:?}");
            assert!(listed.contains(&"cluster-1/top".to_string()), "{listed:?}");
            assert!(block_on(store.list("")).unwrap().iter().all(|(path, _)| path != "elsewhere"));
        }

        #[test]
        fn s3_many_concurrent_calls_against_moto() {
            let moto = start_moto();
            create_bucket(moto.port, "busy");
            let store = open_s3(&moto, "s3://busy/p");
            let shards: Vec<_> = (0..4u8).map(|shard| on_glommio_thread(shard, store.clone())).collect();
            for shard in shards {
                shard.join().unwrap();
            }
            assert_eq!(block_on(store.list("")).unwrap().len(), 400);
        }

        #[test]
        fn s3_missing_bucket_is_an_error() {
            let moto = start_moto();
            let store = open_s3(&moto, "s3://no-such-bucket");
            let error = block_on(store.put("x", Bytes::from_static(b"x"))).unwrap_err();
            assert!(matches!(error, Error::Blob { op: "put", .. }), "{error}");
            assert!(error.to_string().contains("s3://no-such-bucket/x"), "{error}");
        }
    }
}
