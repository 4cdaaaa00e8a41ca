//! Blobs through a mirror. A missing blob is fetched once, by a task of its
//! own, into storage, which verifies it against its digest. The client that
//! asked first gets the bytes as they arrive, except the last chunk, which is
//! sent only once the blob verified: a client never receives a whole body that
//! did not match. Everyone else waits for the fetch and reads from storage.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{FetchError, Mirror};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::{ByteStream, Storage};

/// Chunks the first client may fall behind the download before it is let go
/// (its response ends short; it retries and reads the stored blob). Bounds the
/// memory of one fetch to this many chunks.
const CLIENT_BACKLOG: usize = 1024;

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
    chunks: mpsc::Sender<io::Result<Bytes>>,
}

/// The first client's side of a fetch: every chunk but the last goes out as
/// it arrives.
#[derive(Default)]
struct Relay {
    client: Option<mpsc::Sender<io::Result<Bytes>>>,
    held: Option<Bytes>,
}

impl Relay {
    fn pass(&mut self, chunk: Bytes) {
        if let Some(previous) = self.held.replace(chunk)
            && let Some(client) = &self.client
            && client.try_send(Ok(previous)).is_err()
        {
            // Gone, or too far behind: the download does not wait for it.
            self.client = None;
        }
    }

    fn finish(&mut self, verified: bool) {
        if let Some(client) = self.client.take() {
            let last = match (verified, self.held.take()) {
                (true, Some(last)) => Ok(last),
                (true, None) => return,
                (false, _) => Err(io::Error::other("the upstream blob did not verify")),
            };
            let _ = client.try_send(last);
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
        let (chunks_tx, chunks_rx) = mpsc::channel(CLIENT_BACKLOG);
        let tee = stream.then_some(Tee { head: head_tx, chunks: chunks_tx });
        let fetch = {
            let (me, storage, repo, upstream, digest) =
                (self.clone(), storage.clone(), repo.clone(), upstream.to_owned(), digest.clone());
            move || async move { me.fetch_blob(&storage, &repo, &upstream, &digest, tee).await }
        };
        let (flight, leader) = self.blobs.join((repo.clone(), digest.clone()), fetch, || Err(FetchError::Crashed));
        if !leader {
            self.meter.count("blob", "coalesced");
        } else if stream && let Ok(len) = head_rx.await {
            let body = futures_util::stream::unfold(chunks_rx, |mut rx| async { rx.recv().await.map(|c| (c, rx)) });
            return Ok(BlobAnswer::Streaming { len, body: Box::pin(body) });
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
    ) -> Result<u64, FetchError> {
        if !self.upstream.has_blob(upstream, &digest.to_string()).await? {
            return Err(FetchError::NotFound);
        }
        storage.blob_mount(repo, digest, None).await?;
        let size = storage.blob_size(repo, digest).await?.ok_or(FetchError::Crashed)?;
        self.meter.count("blob", "linked");
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
        if storage.blob_stored(digest).await?.is_some() {
            return self.link_stored(storage, repo, upstream, digest).await;
        }
        let slot = self.fetch_slots.acquire().await.map_err(|_| FetchError::Crashed)?;
        let response = match self.upstream.blob(upstream, &digest.to_string()).await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(FetchError::NotFound),
            Err(e) => {
                self.meter.count("blob", "error");
                return Err(e);
            }
        };
        let len = response.content_length();
        let relay = Arc::new(Mutex::new(Relay::default()));
        // Without a length a short body could pass for a whole one: such a
        // client waits and reads the stored blob instead.
        if let (Some(tee), Some(len)) = (tee, len)
            && tee.head.send(len).is_ok()
        {
            relay.lock().unwrap().client = Some(tee.chunks);
        }
        let (passing, bytes) = (relay.clone(), self.meter.bytes.clone());
        let body = response.bytes_stream().map_err(io::Error::other).map(move |item| {
            if let Ok(chunk) = &item {
                bytes.inc_by(chunk.len() as u64);
                passing.lock().unwrap().pass(chunk.clone());
            }
            item
        });
        let stored = storage.blob_put_sized(repo, digest, len, Box::pin(body)).await;
        drop(slot);
        relay.lock().unwrap().finish(stored.is_ok());
        match stored {
            Ok(size) => {
                self.meter.count("blob", "miss");
                Ok(size)
            }
            Err(e) => {
                tracing::warn!(mirror = %self.config.prefix, repository = %repo, %digest, error = %e,
                    "fetching a blob from the upstream failed");
                self.meter.count("blob", "error");
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (Relay, mpsc::Receiver<io::Result<Bytes>>) {
        let (tx, rx) = mpsc::channel(2);
        (Relay { client: Some(tx), held: None }, rx)
    }

    fn drain(rx: &mut mpsc::Receiver<io::Result<Bytes>>) -> Vec<Result<Bytes, String>> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|r| r.map_err(|e| e.to_string())).collect()
    }

    #[test]
    fn the_last_chunk_waits_for_the_verdict() {
        let (mut r, mut rx) = relay();
        r.pass(Bytes::from_static(b"a"));
        r.pass(Bytes::from_static(b"b"));
        assert_eq!(drain(&mut rx), vec![Ok(Bytes::from_static(b"a"))], "b is held back");
        r.finish(true);
        assert_eq!(drain(&mut rx), vec![Ok(Bytes::from_static(b"b"))]);

        let (mut r, mut rx) = relay();
        r.pass(Bytes::from_static(b"a"));
        r.finish(false);
        let got = drain(&mut rx);
        assert!(matches!(got.as_slice(), [Err(e)] if e.contains("did not verify")), "{got:?}");
    }

    #[test]
    fn a_client_that_falls_behind_is_let_go() {
        let (mut r, mut rx) = relay();
        for c in [b"1", b"2", b"3", b"4"] {
            r.pass(Bytes::from_static(c));
        }
        assert!(r.client.is_none(), "the third chunk did not fit");
        r.finish(true);
        assert_eq!(drain(&mut rx).len(), 2, "nothing more is sent, so its body ends short");
    }
}
