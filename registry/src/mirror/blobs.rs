//! Blobs through a mirror. A missing blob is fetched once, by a task of its
//! own, into storage, which verifies it against its digest. The client that
//! asked first gets the bytes as they arrive, except the last chunk, which is
//! sent only once the blob verified: a client never receives a whole body that
//! did not match. Everyone else waits for the fetch and reads from storage.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{FetchError, Mirror};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::{self, ByteStream, Storage};

/// Bytes the first client may fall behind the download before it is let go
/// (its response ends short; it retries and reads the stored blob): the most
/// memory one fetch holds for its client.
const CLIENT_BACKLOG: usize = 16 << 20;
/// Longest wait for one of the upstream's download slots.
const SLOT_WAIT: Duration = Duration::from_secs(60);
/// A download may take this long, plus the time its length takes at
/// [`MIN_RATE`]: an upstream trickling bytes cannot hold a slot forever.
const DOWNLOAD_BASE: Duration = Duration::from_secs(300);
const MIN_RATE: u64 = 64 << 10;

fn download_deadline(len: u64) -> Duration {
    DOWNLOAD_BASE + Duration::from_secs(len / MIN_RATE)
}

pub enum BlobAnswer {
    /// The blob is in storage now, this many bytes: serve it from there.
    Stored(u64),
    /// The blob streams as it is fetched: `len` bytes, as the upstream said.
    /// A body that ends short means the fetch failed or the client fell behind.
    Streaming { len: u64, body: ByteStream },
}

/// What the first client is handed: the upstream's length, then the chunks.
struct Tee {
    head: oneshot::Sender<u64>,
    chunks: Backlog,
}

/// The chunks on their way to the first client, and their bytes.
#[derive(Clone)]
struct Backlog {
    sender: mpsc::UnboundedSender<io::Result<Bytes>>,
    queued: Arc<AtomicUsize>,
}

impl Backlog {
    fn new() -> (Backlog, ByteStream) {
        let (sender, receiver) = mpsc::unbounded_channel::<io::Result<Bytes>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let body = futures_util::stream::unfold(receiver, move |mut rx| {
            let taken = taken.clone();
            async move {
                let item = rx.recv().await?;
                if let Ok(chunk) = &item {
                    taken.fetch_sub(chunk.len(), Ordering::Relaxed);
                }
                Some((item, rx))
            }
        });
        (Backlog { sender, queued }, Box::pin(body))
    }

    /// `false` when the client is gone or too far behind.
    fn send(&self, chunk: Bytes) -> bool {
        let len = chunk.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > CLIENT_BACKLOG {
            return false;
        }
        self.sender.send(Ok(chunk)).is_ok()
    }
}

/// The first client's side of a fetch: every chunk with data but the last
/// goes out as it arrives.
#[derive(Default)]
struct Relay {
    client: Option<Backlog>,
    held: Option<Bytes>,
}

impl Relay {
    fn pass(&mut self, chunk: Bytes) {
        // An empty chunk (HTTP/2 ends bodies with an empty frame) must not
        // become the held one: the last bytes would go out unverified.
        if chunk.is_empty() {
            return;
        }
        if let Some(previous) = self.held.replace(chunk)
            && let Some(client) = &self.client
            && !client.send(previous)
        {
            // Gone, or too far behind: the download does not wait for it.
            self.client = None;
        }
    }

    fn finish(&mut self, verified: bool) {
        if let Some(client) = self.client.take() {
            match (verified, self.held.take()) {
                (true, Some(last)) => {
                    client.send(last);
                }
                (true, None) => {}
                (false, _) => {
                    let _ = client.sender.send(Err(io::Error::other("the upstream blob did not verify")));
                }
            }
        }
    }
}

impl Mirror {
    /// Makes `digest` readable from `repo`; with `stream`, the client that
    /// starts the fetch is given the bytes as they come.
    pub async fn blob(
        self: &Arc<Self>,
        storage: &Arc<dyn Storage>,
        repo: &RepoName,
        upstream: &str,
        digest: &Digest,
        stream: bool,
    ) -> Result<BlobAnswer, FetchError> {
        if let Some(size) = storage.blob_size(repo, digest).await? {
            self.meter.count("blob", "hit");
            return Ok(BlobAnswer::Stored(size));
        }
        let (head_tx, head_rx) = oneshot::channel();
        let (backlog, body) = Backlog::new();
        let tee = stream.then_some(Tee { head: head_tx, chunks: backlog });
        let fetch = {
            let (me, storage, repo, upstream, digest) =
                (self.clone(), storage.clone(), repo.clone(), upstream.to_owned(), digest.clone());
            move || async move { me.fetch_blob(&storage, &repo, &upstream, &digest, tee).await }
        };
        let (flight, leader) = self.blobs.join((repo.clone(), digest.clone()), fetch, || Err(FetchError::Crashed));
        if !leader {
            self.meter.count("blob", "coalesced");
        } else if stream && let Ok(len) = head_rx.await {
            return Ok(BlobAnswer::Streaming { len, body });
        }
        flight.await.map(BlobAnswer::Stored)
    }

    /// A blob another image already brought (a shared base layer): once the
    /// upstream confirms this repository has it too (a HEAD, so no client
    /// reads content through a repository that lacks it), it is linked, not
    /// downloaded again.
    async fn link_stored(
        &self,
        storage: &Arc<dyn Storage>,
        repo: &RepoName,
        upstream: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, FetchError> {
        if !self.upstream.has_blob(upstream, &digest.to_string()).await? {
            return Err(FetchError::NotFound);
        }
        // `false`: collected in between; then it is downloaded after all.
        if !storage.blob_mount(repo, digest, None).await? {
            return Ok(None);
        }
        let size = storage.blob_size(repo, digest).await?;
        if size.is_some() {
            self.meter.count("blob", "linked");
        }
        Ok(size)
    }

    async fn fetch_blob(
        &self,
        storage: &Arc<dyn Storage>,
        repo: &RepoName,
        upstream: &str,
        digest: &Digest,
        tee: Option<Tee>,
    ) -> Result<u64, FetchError> {
        // A fetch that finished just before this one started stored it.
        if let Some(size) = storage.blob_size(repo, digest).await? {
            self.meter.count("blob", "hit");
            return Ok(size);
        }
        if storage.blob_stored(digest).await?.is_some()
            && let Some(size) = self.link_stored(storage, repo, upstream, digest).await?
        {
            return Ok(size);
        }
        let slot = tokio::time::timeout(SLOT_WAIT, self.fetch_slots.acquire())
            .await
            .map_err(|_| FetchError::Busy)?
            .map_err(|_| FetchError::Crashed)?;
        let result = self.download(storage, repo, upstream, digest, tee).await;
        drop(slot);
        match &result {
            Ok(_) => self.meter.count("blob", "miss"),
            Err(FetchError::NotFound) => {}
            Err(e) => {
                tracing::warn!(mirror = %self.config.prefix, repository = %repo, %digest, error = %e,
                    "fetching a blob from the upstream failed");
                self.meter.count("blob", "error");
            }
        }
        result
    }

    /// GETs the blob and stores it, relaying it to the first client.
    async fn download(
        &self,
        storage: &Arc<dyn Storage>,
        repo: &RepoName,
        upstream: &str,
        digest: &Digest,
        tee: Option<Tee>,
    ) -> Result<u64, FetchError> {
        let response = self.upstream.blob(upstream, &digest.to_string()).await?.ok_or(FetchError::NotFound)?;
        // Without a length nothing bounds the body before it is hashed, and a
        // client could take a short body for a whole one.
        let len =
            response.content_length().ok_or_else(|| FetchError::Invalid("a blob without Content-Length".into()))?;
        if let Some(cap) = self.config.max_bytes.filter(|cap| len > *cap) {
            return Err(FetchError::TooLarge(cap));
        }
        let relay = Arc::new(Mutex::new(Relay::default()));
        if let Some(tee) = tee
            && tee.head.send(len).is_ok()
        {
            relay.lock().unwrap().client = Some(tee.chunks);
        }
        let (passing, bytes, mut seen) = (relay.clone(), self.meter.bytes.clone(), 0u64);
        let body = response.bytes_stream().map_err(io::Error::other).map(move |item| {
            let chunk = item?;
            seen += chunk.len() as u64;
            if seen > len {
                return Err(io::Error::other(format!("the upstream sent more than the {len} bytes it announced")));
            }
            bytes.inc_by(chunk.len() as u64);
            passing.lock().unwrap().pass(chunk.clone());
            Ok(chunk)
        });
        let stored = tokio::time::timeout(
            download_deadline(len),
            storage.blob_put_sized(repo, digest, Some(len), Box::pin(body)),
        )
        .await;
        let stored = match stored {
            Ok(stored) => stored.map_err(|e| match e {
                // The upstream's body broke off, ran long or short: its fault.
                e @ (storage::Error::Body(_) | storage::Error::ChunkLength { .. }) => {
                    FetchError::Unreachable(e.to_string())
                }
                e => e.into(),
            }),
            Err(_) => Err(FetchError::Unreachable(format!("the download took over {:?}", download_deadline(len)))),
        };
        relay.lock().unwrap().finish(stored.is_ok());
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (Relay, ByteStream) {
        let (backlog, body) = Backlog::new();
        (Relay { client: Some(backlog), held: None }, body)
    }

    /// What the client has been sent so far.
    fn drain(body: &mut ByteStream) -> Vec<Result<Bytes, String>> {
        let mut out = Vec::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        while let std::task::Poll::Ready(Some(item)) = body.as_mut().poll_next(&mut cx) {
            out.push(item.map_err(|e| e.to_string()));
        }
        out
    }

    #[test]
    fn the_last_bytes_wait_for_the_verdict() {
        let (mut r, mut body) = relay();
        r.pass(Bytes::from_static(b"a"));
        r.pass(Bytes::from_static(b"b"));
        // HTTP/2 ends a body with an empty frame: it must not free "b".
        r.pass(Bytes::new());
        assert_eq!(drain(&mut body), vec![Ok(Bytes::from_static(b"a"))], "b is held back");
        r.finish(true);
        assert_eq!(drain(&mut body), vec![Ok(Bytes::from_static(b"b"))]);

        let (mut r, mut body) = relay();
        r.pass(Bytes::from_static(b"a"));
        r.pass(Bytes::from_static(b"b"));
        r.finish(false);
        let got = drain(&mut body);
        assert!(matches!(got.as_slice(), [Ok(_), Err(e)] if e.contains("did not verify")), "{got:?}");
    }

    #[test]
    fn a_client_that_falls_behind_is_let_go() {
        let (mut r, mut body) = relay();
        let big = Bytes::from(vec![0u8; CLIENT_BACKLOG / 2 + 1]);
        for _ in 0..4 {
            r.pass(big.clone());
        }
        assert!(r.client.is_none(), "the second unread chunk passed the backlog");
        r.finish(true);
        assert_eq!(drain(&mut body).len(), 1, "nothing more is sent, so its body ends short");

        // A client that keeps up is never let go.
        let (mut r, mut body) = relay();
        for _ in 0..10 {
            r.pass(big.clone());
            drain(&mut body);
        }
        assert!(r.client.is_some());
    }
}
