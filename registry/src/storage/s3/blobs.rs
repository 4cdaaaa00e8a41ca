//! Blobs: a pointer per digest names the object holding the content, and a link
//! per repository makes it visible there.
//!
//! Publishing (an upload finishing, a mount) refreshes the pointer's and the
//! link's `at` and then checks the collector's markers (`collect.rs`): if a
//! sweep or a pass over the repository ran meanwhile, it waits for it to end and
//! makes sure that the pointer, its content and the link are still there, writing
//! them again where it can. So a blob the collector found old and unreferenced is
//! either still old when it is deleted, or the write that referenced it finds out
//! before it is acknowledged.

use std::ops::Range;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::collect::Markers;
use super::parts::Parts;
use super::{S3Storage, now_ms};
use crate::digest::{Digest, Hasher};
use crate::names::RepoName;
use crate::storage::{Blobs, ByteStream, Error, Result};

/// A blob: where its content is and how large it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Pointer {
    /// The content's key, below the prefix.
    pub data: String,
    pub size: u64,
    /// Milliseconds since the epoch of the last write that referenced the blob.
    pub at: u64,
}

/// A blob linked into a repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Link {
    pub size: u64,
    pub at: u64,
}

/// Attempts at settling a publish that collector steps keep interleaving with.
const SETTLE_ATTEMPTS: usize = 10;
/// How long a link this process just read counts as checked for a read.
const LINK_SEEN: Duration = Duration::from_secs(1);

pub(super) fn json(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("plain data serialises"))
}

pub(super) fn parse<T: for<'a> Deserialize<'a>>(key: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(key.to_string(), e.to_string()))
}

impl S3Storage {
    pub(super) fn parts(&self, key: Path) -> Parts {
        Parts::new(self.objects.clone(), key, self.part_size, self.buffers.clone())
    }

    /// The pointer as stored now, with its version.
    pub(super) async fn read_pointer(&self, d: &Digest) -> Result<Option<(Pointer, Option<String>)>> {
        let key = self.pointer_key(d);
        let Some(read) = self.objects.get_optional(&key).await? else {
            self.pointers.remove(d);
            return Ok(None);
        };
        let pointer: Pointer = parse(&key, &read.bytes)?;
        self.pointers.insert(d.clone(), (pointer.data.clone(), pointer.size));
        Ok(Some((pointer, read.e_tag)))
    }

    /// Where a blob's content is (cached: a pointer never changes while it exists).
    async fn content(&self, d: &Digest) -> Result<Option<(String, u64)>> {
        if let Some(found) = self.pointers.get(d) {
            return Ok(Some(found));
        }
        Ok(self.read_pointer(d).await?.map(|(p, _)| (p.data, p.size)))
    }

    pub(super) async fn read_link(&self, repo: &RepoName, d: &Digest) -> Result<Option<Link>> {
        let key = self.link_key(repo, d);
        match self.objects.get_optional(&key).await? {
            Some(read) => Ok(Some(parse(&key, &read.bytes)?)),
            None => Ok(None),
        }
    }

    async fn write_link(&self, repo: &RepoName, d: &Digest, size: u64) -> Result<()> {
        self.mark_index(repo).await?;
        self.objects.put(&self.link_key(repo, d), json(&Link { size, at: now_ms() })).await?;
        Ok(())
    }

    /// Refreshes the pointer's `at` (rewriting it as read).
    async fn touch_pointer(&self, d: &Digest, pointer: &Pointer) -> Result<()> {
        let fresh = Pointer { at: now_ms(), ..pointer.clone() };
        self.objects.put(&self.pointer_key(d), json(&fresh)).await?;
        Ok(())
    }

    /// The pointer, if it names content that exists.
    async fn live_pointer(&self, d: &Digest) -> Result<Option<(Pointer, Option<String>)>> {
        let Some((pointer, e_tag)) = self.read_pointer(d).await? else {
            return Ok(None);
        };
        let exists = self.objects.exists(&self.key(&pointer.data)).await?;
        Ok(exists.then_some((pointer, e_tag)))
    }

    /// Makes `data` (complete, verified to hash to `digest`, `size` bytes) the
    /// blob `digest`, unless the blob exists (then `data` is deleted), and links
    /// it into `repo`.
    pub(super) async fn publish(&self, repo: &RepoName, digest: &Digest, data: &Path, size: u64) -> Result<()> {
        let mut markers = Markers::before(self, repo).await?;
        let mut ours_used = self.point_at(digest, data, size).await?;
        self.write_link(repo, digest, size).await?;
        for _ in 0..SETTLE_ATTEMPTS {
            let Some(next) = markers.changed(self).await? else {
                if !ours_used {
                    self.objects.delete(data).await?;
                }
                return Ok(());
            };
            // A collector step ran meanwhile: what it deleted is written again.
            markers = next;
            ours_used |= self.point_at(digest, data, size).await?;
            if self.read_link(repo, digest).await?.is_none() {
                self.write_link(repo, digest, size).await?;
            }
        }
        Err(Error::Busy("the garbage collector kept running while a blob was published"))
    }

    /// Creates the pointer to `data`, or refreshes the existing one when its
    /// content exists; `true` when the pointer now names `data`.
    async fn point_at(&self, digest: &Digest, data: &Path, size: u64) -> Result<bool> {
        let mine = Pointer { data: self.objects.relative(data), size, at: now_ms() };
        let key = self.pointer_key(digest);
        if self.objects.create(&key, json(&mine)).await?.is_some() {
            return Ok(true);
        }
        let Some((existing, e_tag)) = self.read_pointer(digest).await? else {
            // Swept between the two requests: ours, then.
            self.objects.put(&key, json(&mine)).await?;
            return Ok(true);
        };
        if existing.data == mine.data {
            return Ok(true);
        }
        if self.objects.exists(&self.key(&existing.data)).await? {
            self.touch_pointer(digest, &existing).await?;
            return Ok(false);
        }
        // A pointer whose content is gone (a sweep interrupted between its two
        // deletes): replaced, unless someone else replaced it first.
        match self.objects.replace(&key, json(&mine), e_tag).await? {
            Some(_) => {
                self.pointers.insert(digest.clone(), (mine.data, size));
                Ok(true)
            }
            None => Box::pin(self.point_at(digest, data, size)).await,
        }
    }

    /// Writes `body` into a fresh content object, hashing it: the content and
    /// its hash, or nothing when the body failed.
    pub(super) async fn write_content(
        &self,
        body: ByteStream,
        algorithm: crate::digest::Algorithm,
    ) -> Result<(Path, Digest, u64)> {
        let mut parts = self.parts(self.new_data_key());
        let mut hasher = Hasher::new(algorithm);
        let len = match parts.pump(&mut hasher, body, None).await {
            Ok(len) => len,
            Err(e) => {
                parts.abort().await;
                return Err(e);
            }
        };
        let key = parts.key.clone();
        parts.complete().await?;
        Ok((key, hasher.finish(), len))
    }
}

#[async_trait]
impl Blobs for S3Storage {
    /// The link, and the pointer (cached: only a sweep removes one, and a sweep
    /// removes only blobs no repository links).
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let Some(link) = self.read_link(repo, digest).await? else {
            return Ok(None);
        };
        let size = self.content(digest).await?.map(|_| link.size);
        if size.is_some() {
            self.links_seen.insert(format!("{repo}@{digest}"), Instant::now());
        }
        Ok(size)
    }

    async fn blob_read(&self, repo: &RepoName, digest: &Digest, range: Range<u64>) -> Result<ByteStream> {
        let seen = self.links_seen.get(&format!("{repo}@{digest}")).is_some_and(|at| at.elapsed() < LINK_SEEN);
        if !seen && !self.objects.exists(&self.link_key(repo, digest)).await? {
            return Err(Error::BlobUnknown);
        }
        if range.is_empty() {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        for _ in 0..2 {
            let Some((data, _)) = self.content(digest).await? else {
                return Err(Error::BlobUnknown);
            };
            if let Some(stream) = self.objects.read(&self.key(&data), range.clone()).await? {
                return Ok(stream);
            }
            // The cached pointer named content that is gone: read the pointer again.
            self.pointers.remove(digest);
        }
        Err(Error::BlobUnknown)
    }

    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.links_seen.remove(&format!("{repo}@{digest}"));
        let key = self.link_key(repo, digest);
        if !self.objects.exists(&key).await? {
            return Ok(false);
        }
        self.objects.delete(&key).await?;
        Ok(true)
    }

    async fn blob_mount(&self, to: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        if let Some(from) = from
            && self.read_link(from, digest).await?.is_none()
        {
            return Ok(false);
        }
        let mut markers = Markers::before(self, to).await?;
        let Some((pointer, _)) = self.live_pointer(digest).await? else {
            return Ok(false);
        };
        self.touch_pointer(digest, &pointer).await?;
        self.write_link(to, digest, pointer.size).await?;
        for _ in 0..SETTLE_ATTEMPTS {
            let Some(next) = markers.changed(self).await? else {
                return Ok(true);
            };
            markers = next;
            if self.live_pointer(digest).await?.is_none() {
                // Swept meanwhile: the mount did not happen.
                self.objects.delete(&self.link_key(to, digest)).await?;
                return Ok(false);
            }
            if self.read_link(to, digest).await?.is_none() {
                self.write_link(to, digest, pointer.size).await?;
            }
        }
        Err(Error::Busy("the garbage collector kept running while a blob was mounted"))
    }

    async fn blob_put(&self, repo: &RepoName, digest: &Digest, body: ByteStream) -> Result<u64> {
        let (data, actual, size) = self.write_content(body, digest.algorithm()).await?;
        if actual != *digest {
            self.objects.delete(&data).await?;
            return Err(Error::DigestMismatch);
        }
        self.publish(repo, digest, &data, size).await?;
        Ok(size)
    }

    async fn blob_stored(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.content(digest).await?.map(|(_, size)| size))
    }

    async fn blob_url(&self, _repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        if !self.redirect {
            return Ok(None);
        }
        let Some((data, _)) = self.content(digest).await? else {
            return Err(Error::BlobUnknown);
        };
        self.objects.signed_get(&self.key(&data), super::REDIRECT_EXPIRY).await.map(Some)
    }
}
