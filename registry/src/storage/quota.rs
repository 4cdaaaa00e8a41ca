//! Quotas, as a layer over any backend: [`Quota`] implements every storage trait
//! by handing the call on, refusing first a push that would take a repository
//! past its limit or the registry past its total, and recording each successful
//! write in the [`UsageBook`]. Reads pass straight through.
//!
//! A push is refused as early as its size is known: at upload start when the
//! repository (or the registry) is already full, before reading a body whose
//! length was announced, and otherwise while the body streams, as soon as it
//! passes the room left (the backend then drops what it wrote). Finishing an
//! upload and mounting a blob are checked with the blob's size. Bytes of
//! sessions still open are not counted: several uploads running at once may
//! together pass a limit by what each of them holds, and the check at finish
//! catches most of that.
//!
//! Manifests count in the usage but are never refused: they are small, and
//! refusing one would strand the layers the client has just been allowed to
//! push; a repository's bytes are its blobs.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::capped::{capped, refusal};
use super::usage::UsageBook;
use super::{
    Blobs, ByteStream, Catalog, Chunk, Error, Exceeded, ManifestPut, Manifests, QuotaScope, Result, Storage,
    StoredManifest, Tags, Uploads,
};
use crate::config::QuotaConfig;
use crate::digest::{Algorithm, Digest};
use crate::manifest::ReferrerDescriptor;
use crate::names::{RepoName, Tag, UploadId};

pub struct Quota<S: ?Sized> {
    inner: Arc<S>,
    config: QuotaConfig,
    book: Arc<UsageBook>,
}

/// One limit as it stands now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub scope: QuotaScope,
    pub used: u64,
    pub limit: u64,
}

impl Standing {
    /// Bytes a push may still add.
    pub fn room(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    pub fn refuse(&self, needed: u64) -> Exceeded {
        Exceeded { scope: self.scope.clone(), used: self.used, limit: self.limit, needed }
    }
}

/// What a push adds if it succeeds: a link into the repository (when the blob
/// is not linked there yet), content to the store (when it is stored nowhere).
#[derive(Clone, Copy, Debug)]
struct Adds {
    link: bool,
    content: bool,
}

impl Adds {
    const ALL: Adds = Adds { link: true, content: true };
}

impl<S: Storage + ?Sized> Quota<S> {
    pub fn new(inner: Arc<S>, config: QuotaConfig, book: Arc<UsageBook>) -> Self {
        Quota { inner, config, book }
    }

    /// The limit with the least room among those a push that `adds` this runs into.
    fn tightest(&self, repo: &RepoName, adds: Adds) -> Option<Standing> {
        let repository = self.config.repository_limit(repo.as_str()).filter(|_| adds.link).map(|limit| Standing {
            scope: QuotaScope::Repository(repo.to_string()),
            used: self.book.repository_bytes(repo.as_str()),
            limit,
        });
        let total = (adds.content && self.config.total_bytes > 0).then(|| Standing {
            scope: QuotaScope::Total,
            used: self.book.usage().bytes,
            limit: self.config.total_bytes,
        });
        [repository, total].into_iter().flatten().min_by_key(Standing::room)
    }

    /// Refuses a push of `needed` bytes that does not fit.
    fn check(&self, repo: &RepoName, adds: Adds, needed: u64) -> Result<()> {
        match self.tightest(repo, adds) {
            Some(limit) if needed > limit.room() => Err(Error::QuotaExceeded(limit.refuse(needed))),
            _ => Ok(()),
        }
    }

    /// A body that goes after `start` bytes the upload holds: refused now when
    /// its announced length (or what the upload holds) does not fit, otherwise
    /// capped at the room left.
    fn guard(&self, repo: &RepoName, adds: Adds, start: u64, len: Option<u64>, body: ByteStream) -> Result<ByteStream> {
        let Some(limit) = self.tightest(repo, adds) else {
            return Ok(body);
        };
        let needed = start.saturating_add(len.unwrap_or(0));
        if needed > limit.room() {
            return Err(Error::QuotaExceeded(limit.refuse(needed)));
        }
        Ok(capped(body, start, limit))
    }

    /// What storing `digest` into `repo` would add.
    async fn adds(&self, repo: &RepoName, digest: &Digest) -> Result<Adds> {
        let linked = self.inner.blob_size(repo, digest).await?.is_some();
        let stored = self.inner.blob_stored(digest).await?.is_some();
        Ok(Adds { link: !linked, content: !stored })
    }

    fn record(&self, repo: &RepoName, adds: Adds, size: u64) {
        if adds.link {
            self.book.blob_added(repo.as_str(), size, adds.content);
        }
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Blobs for Quota<S> {
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        self.inner.blob_size(repo, digest).await
    }

    async fn blob_read(&self, repo: &RepoName, digest: &Digest, range: Range<u64>) -> Result<ByteStream> {
        self.inner.blob_read(repo, digest, range).await
    }

    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let size = self.inner.blob_size(repo, digest).await?;
        let deleted = self.inner.blob_delete(repo, digest).await?;
        if deleted {
            self.book.link_removed(repo.as_str(), size.unwrap_or(0));
        }
        Ok(deleted)
    }

    /// A mount adds no content, only the blob's size to the target repository.
    async fn blob_mount(&self, to: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        if self.inner.blob_size(to, digest).await?.is_some() {
            return self.inner.blob_mount(to, digest, from).await;
        }
        let size = match from {
            Some(from) => self.inner.blob_size(from, digest).await?,
            None => self.inner.blob_stored(digest).await?,
        };
        let Some(size) = size else {
            return Ok(false);
        };
        self.check(to, Adds { link: true, content: false }, size)?;
        let mounted = self.inner.blob_mount(to, digest, from).await?;
        if mounted {
            self.book.blob_added(to.as_str(), size, false);
        }
        Ok(mounted)
    }

    async fn blob_put(&self, repo: &RepoName, digest: &Digest, body: ByteStream) -> Result<u64> {
        self.blob_put_sized(repo, digest, None, body).await
    }

    async fn blob_put_sized(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let adds = self.adds(repo, digest).await?;
        let body = self.guard(repo, adds, 0, len, body)?;
        let size = self.inner.blob_put_sized(repo, digest, len, body).await.map_err(refusal)?;
        self.record(repo, adds, size);
        Ok(size)
    }

    async fn blob_stored(&self, digest: &Digest) -> Result<Option<u64>> {
        self.inner.blob_stored(digest).await
    }

    async fn blob_url(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        self.inner.blob_url(repo, digest).await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Uploads for Quota<S> {
    /// Refused when the repository or the registry is full already.
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadId> {
        if let Some(limit) = self.tightest(repo, Adds::ALL)
            && limit.room() == 0
        {
            return Err(Error::QuotaExceeded(limit.refuse(0)));
        }
        self.inner.upload_start(repo, algorithm).await
    }

    async fn upload_offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        self.inner.upload_offset(repo, id).await
    }

    /// The blob is not known yet, so the chunk is held to the room for new
    /// content in a new link: a conservative cap for a blob stored already.
    async fn upload_append(&self, repo: &RepoName, id: UploadId, chunk: Chunk, body: ByteStream) -> Result<u64> {
        let body = match self.tightest(repo, Adds::ALL) {
            None => body,
            Some(_) => {
                let offset = self.inner.upload_offset(repo, id).await?;
                self.guard(repo, Adds::ALL, offset, chunk.len, body)?
            }
        };
        self.inner.upload_append(repo, id, chunk, body).await.map_err(refusal)
    }

    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64> {
        let adds = self.adds(repo, digest).await?;
        let last = match (self.tightest(repo, adds), last) {
            (None, last) => last,
            (Some(_), None) => {
                self.check(repo, adds, self.inner.upload_offset(repo, id).await?)?;
                None
            }
            (Some(_), Some((chunk, body))) => {
                let offset = self.inner.upload_offset(repo, id).await?;
                Some((chunk, self.guard(repo, adds, offset, chunk.len, body)?))
            }
        };
        let size = self.inner.upload_finish(repo, id, digest, last).await.map_err(refusal)?;
        self.record(repo, adds, size);
        Ok(size)
    }

    async fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        self.inner.upload_cancel(repo, id).await
    }

    async fn purge(&self, age: Duration) -> Result<usize> {
        self.inner.purge(age).await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Manifests for Quota<S> {
    async fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        self.inner.manifest_get(repo, digest).await
    }

    async fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.inner.manifest_exists(repo, digest).await
    }

    /// Counted, never refused (see the module's documentation).
    async fn manifest_put(&self, repo: &RepoName, put: ManifestPut) -> Result<()> {
        let new_content = self.inner.blob_stored(&put.digest).await?.is_none();
        let size = put.manifest.bytes.len() as u64;
        self.inner.manifest_put(repo, put).await?;
        self.book.manifest_added(repo.as_str(), size, new_content);
        Ok(())
    }

    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.inner.manifest_delete(repo, digest).await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerDescriptor>> {
        self.inner.referrers(repo, subject).await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Tags for Quota<S> {
    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.inner.tag_get(repo, tag).await
    }

    async fn tag_manifest(&self, repo: &RepoName, tag: &Tag) -> Result<Option<(Digest, StoredManifest)>> {
        self.inner.tag_manifest(repo, tag).await
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.inner.tag_delete(repo, tag).await
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        self.inner.tags(repo).await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Catalog for Quota<S> {
    async fn repositories(&self) -> Result<Vec<String>> {
        self.inner.repositories().await
    }
}

// The collector works below the quotas: it only deletes, and hands its
// figures to the book itself.
super::lifecycle::delegate_lifecycle!(Quota);
