//! The runtime facade: the few things the node needs from glommio, in one place, so that the
//! executor could be swapped (compio is the maintained alternative).
//!
//! Executors pinned to cores, local tasks, sleeping, a wake-up signal, TCP for the HTTP
//! ingress (with the adapter hyper needs) and the cross-shard channels.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::{CpuSet, LocalExecutorBuilder, Placement};

use crate::limits;

pub use glommio::channels::local_channel::LocalSender;
pub use glommio::channels::shared_channel::{
    new_bounded as channel, ConnectedReceiver as Receiver, ConnectedSender as Sender, SharedReceiver, SharedSender,
};
pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::sync::Semaphore;
pub use glommio::{spawn_local, ExecutorJoinHandle, Task};

/// Starts an executor pinned to `cpu` (modulo the online CPUs) running `main`.
pub fn start_pinned<F, Fut>(
    name: &str,
    cpu: usize,
    spin_before_park: Option<Duration>,
    main: F,
) -> anyhow::Result<ExecutorJoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let cpus: Vec<usize> = CpuSet::online()
        .map_err(|error| anyhow::anyhow!("cannot list the online CPUs: {error}"))?
        .into_iter()
        .map(|location| location.cpu)
        .collect();
    let cpu = cpus.get(cpu % cpus.len().max(1)).copied().unwrap_or(0);
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu)).name(name);
    if let Some(spin) = spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    builder.spawn(main).map_err(|error| anyhow::anyhow!("cannot start an executor on CPU {cpu}: {error}"))
}

/// The number of CPUs this process may run on.
pub fn online_cpus() -> usize {
    CpuSet::online().map(|set| set.len()).unwrap_or(1).max(1)
}

/// Runs a blocking `f` on the executor's blocking thread, so the shard keeps serving.
pub async fn spawn_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(f).await
}

/// Runs `future` to completion on a fresh executor on this thread (start-up work before the
/// shards run, tests).
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    glommio::LocalExecutor::default().run(future)
}

/// Sleeps for `duration` on the current executor.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Runs `future` for at most `duration`; `None` if it did not finish in time.
pub async fn timeout<T>(duration: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep(duration).await;
        None
    })
    .await
}

/// A wake-up flag for one waiting task on the same executor: `notify` sets it, `wait`
/// returns once it is set and clears it. Notifications before the wait are not lost.
#[derive(Debug, Default)]
pub struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn wait(self: &Rc<Self>) -> SignalWait {
        SignalWait { signal: self.clone() }
    }
}

#[derive(Debug)]
pub struct SignalWait {
    signal: Rc<Signal>,
}

impl Future for SignalWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.set.replace(false) {
            return Poll::Ready(());
        }
        *self.signal.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A wake-up for every task waiting on the same executor: [`Broadcast::wait`] returns at the
/// next [`Broadcast::notify_all`] after it was called.
#[derive(Debug, Default)]
pub struct Broadcast {
    epoch: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Broadcast {
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn wait(self: &Rc<Self>) -> BroadcastWait {
        BroadcastWait { broadcast: self.clone(), epoch: self.epoch.get() }
    }
}

#[derive(Debug)]
pub struct BroadcastWait {
    broadcast: Rc<Broadcast>,
    epoch: u64,
}

impl Future for BroadcastWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.broadcast.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        self.broadcast.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// A glommio TCP stream, or any byte stream over one (TLS), seen through hyper's I/O traits.
#[derive(Debug)]
pub struct HyperStream<S = TcpStream> {
    stream: S,
    /// Bytes are read here, then copied into hyper's buffer: that keeps this module free of
    /// `unsafe`, and the copy is cheap next to the system call.
    chunk: Box<[u8]>,
}

impl<S> HyperStream<S> {
    pub fn new(stream: S) -> Self {
        HyperStream { stream, chunk: vec![0; limits::http_read_chunk_bytes_max].into_boxed_slice() }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let want = buf.remaining().min(this.chunk.len());
        match Pin::new(&mut this.stream).poll_read(cx, &mut this.chunk[..want]) {
            Poll::Ready(Ok(read)) => {
                buf.put_slice(&this.chunk[..read]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}
