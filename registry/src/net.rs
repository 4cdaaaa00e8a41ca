//! Connection plumbing shared by the registry's server and the node-access
//! forwarder: surviving accept errors and noticing connections that went quiet.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// After a failed accept (out of file descriptors, a connection reset before it
/// was accepted), wait this long rather than spin or exit.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accepted connection, or `None` after logging the error and backing off.
pub async fn accepted(result: io::Result<(TcpStream, SocketAddr)>) -> Option<(TcpStream, SocketAddr)> {
    match result {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, "accepting a connection failed; retrying");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}

/// When a connection last moved a byte, shared by both directions, and whether
/// the server is working on one of its requests (hashing or syncing a large
/// upload moves no byte for a while, and is not idleness).
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    working: AtomicUsize,
}

/// A request being handled; the connection counts as active until it is dropped.
pub struct Working(Arc<Activity>);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.touch();
        self.0.working.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0), working: AtomicUsize::new(0) }
    }

    /// Marks a request as being handled until the returned guard is dropped.
    pub fn working(self: &Arc<Self>) -> Working {
        self.working.fetch_add(1, Ordering::Relaxed);
        Working(self.clone())
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit` and no request is being handled.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            if self.working.load(Ordering::Relaxed) > 0 {
                self.touch();
            }
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.start.elapsed().saturating_sub(last);
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

/// A stream that records its reads and writes in an [`Activity`].
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's open-file limit to its hard limit: each connection and
/// each upload in progress holds a descriptor, and the usual soft limit of 1024
/// would refuse clients long before memory runs short (Go programs do the same).
pub fn raise_open_files_limit() -> u64 {
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_with_a_request_in_hand_is_not_idle() {
        let limit = Duration::from_millis(200);
        let activity = Arc::new(Activity::new());
        let working = activity.working();
        let idle = activity.idle_for(limit);
        tokio::pin!(idle);
        assert!(tokio::time::timeout(limit * 4, &mut idle).await.is_err(), "idle while working");
        drop(working);
        let started = Instant::now();
        tokio::time::timeout(limit * 10, &mut idle).await.expect("idle once the request is done");
        assert!(started.elapsed() >= limit / 2, "idle too early: {:?}", started.elapsed());
    }
}
