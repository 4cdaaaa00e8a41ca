//! `berth-registry forward`: a TCP forwarder for node access. Run on every node
//! with host networking, it listens on `127.0.0.1:<port>` and forwards each
//! connection to the registry's Service, so container runtimes can pull
//! `localhost:<port>/...` images (plain HTTP is allowed for localhost) without
//! TLS or runtime configuration.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The forwarder's time limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A connection that moves no byte either way for this long is closed, so
    /// clients that vanish without a FIN cannot pile up.
    pub idle_timeout: Duration,
    /// How long the upstream may take to accept a connection.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { idle_timeout: Duration::from_secs(120), connect_timeout: Duration::from_secs(10) }
    }
}

/// After a failed accept (out of file descriptors, a connection reset before it
/// was accepted), wait this long rather than spin or exit.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Forwards every accepted connection to `upstream` (resolved per connection,
/// so a changed Service address is picked up) until `shutdown` resolves. Accept
/// errors are logged and survived.
pub async fn run(
    listener: TcpListener,
    upstream: String,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => return Ok(()),
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, &upstream, limits).await {
                tracing::debug!(%peer, %upstream, error = %e, "forwarded connection ended with an error");
            }
        });
    }
}

async fn forward(mut client: TcpStream, upstream: &str, limits: Limits) -> io::Result<()> {
    let mut server = tokio::time::timeout(limits.connect_timeout, TcpStream::connect(upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting upstream timed out"))??;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let activity = Activity::new();
    let mut client = Tracked { inner: &mut client, activity: &activity };
    let mut server = Tracked { inner: &mut server, activity: &activity };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => copied.map(|_| ()),
        _ = activity.idle_for(limits.idle_timeout) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
    }
}

/// When a connection last moved a byte, shared by both directions.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
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
struct Tracked<'a> {
    inner: &'a mut TcpStream,
    activity: &'a Activity,
}

impl AsyncRead for Tracked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
