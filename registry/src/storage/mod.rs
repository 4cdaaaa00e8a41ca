//! Storage, split by concern into [`Blobs`], [`Uploads`], [`Manifests`], [`Tags`]
//! and [`Catalog`], so the HTTP layer does not know whether content lives on a
//! filesystem (a PersistentVolume) or, later, in an object store. [`Storage`] is
//! all of them.
//!
//! Contract for every implementation (checked by `tests/storage_contract.rs`):
//! - a blob becomes readable only once it is complete and hashes to its name;
//! - an acknowledged write (the call returned `Ok`) survives a crash;
//! - a blob or manifest is visible only in the repositories it was pushed or
//!   mounted into;
//! - a session is written by one request at a time, across processes too;
//! - a tag whose write was acknowledged is never lost to a concurrent delete of
//!   another manifest, and never points at a deleted manifest.

mod capped;
mod error;
pub mod fs;
pub mod lifecycle;
mod observed;
mod quota;
pub mod s3;
pub mod usage;

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::digest::{Algorithm, Digest};
use crate::manifest::ReferrerDescriptor;
use crate::names::{RepoName, Tag, UploadId};

pub use error::{Error, Exceeded, QuotaScope, Result};
pub use fs::FsStorage;
pub use lifecycle::Lifecycle;
pub use observed::{Observed, Operations};
pub use quota::Quota;
pub use s3::S3Storage;
pub use usage::{Scan, UsageBook};

/// A request body as it arrives: never collected whole in memory.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A manifest as pushed: its bytes and the media type it was pushed with.
#[derive(Clone, Debug)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

/// A manifest's entry in the referrers list of the manifest it names as `subject`.
#[derive(Clone, Debug)]
pub struct Referrer {
    pub subject: Digest,
    pub descriptor: ReferrerDescriptor,
}

/// Where a chunk goes in an upload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// The first byte's offset, from `Content-Range`; must equal the upload's size.
    pub start: Option<u64>,
    /// The byte count the client announced; a body of another length is refused.
    pub len: Option<u64>,
}

/// A manifest to store in a repository with everything that points at it.
#[derive(Clone, Debug)]
pub struct ManifestPut {
    pub digest: Digest,
    pub manifest: StoredManifest,
    /// Blobs that must be linked into the repository already.
    pub blobs: Vec<Digest>,
    /// Manifests that must be in the repository already (an index's children).
    pub children: Vec<Digest>,
    pub referrer: Option<Referrer>,
    pub tags: Vec<Tag>,
}

#[async_trait]
pub trait Blobs: Send + Sync + 'static {
    /// The size of a blob that is linked into `repo`, or `None`.
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>>;
    /// Reads `range` of a blob linked into `repo` (the caller checked the range).
    async fn blob_read(&self, repo: &RepoName, digest: &Digest, range: Range<u64>) -> Result<ByteStream>;
    /// Unlinks a blob from `repo`; `false` when it was not linked.
    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Links a stored blob into `to` when it is readable from `from` (or, with no
    /// `from`, stored at all); `false` when it is not.
    async fn blob_mount(&self, to: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool>;
    /// Stores a whole blob from one body, verifying `digest`. Returns its size.
    async fn blob_put(&self, repo: &RepoName, digest: &Digest, body: ByteStream) -> Result<u64>;
    /// [`Blobs::blob_put`] of a body whose length the client announced (`len`),
    /// so a layer above (quotas) can refuse it before reading a byte.
    async fn blob_put_sized(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let _ = len;
        self.blob_put(repo, digest, body).await
    }
    /// The size of a blob (or manifest content) stored under `digest` in any
    /// repository, or `None`: one stat, for usage accounting.
    async fn blob_stored(&self, digest: &Digest) -> Result<Option<u64>>;
    /// A URL the client may download the blob from instead (a presigned object
    /// store URL), when the backend is set to redirect; the caller checked that
    /// `repo` holds the blob.
    async fn blob_url(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        let _ = (repo, digest);
        Ok(None)
    }
}

#[async_trait]
pub trait Uploads: Send + Sync + 'static {
    /// Opens an upload session that hashes with `algorithm`.
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadId>;
    /// Bytes received so far.
    async fn upload_offset(&self, repo: &RepoName, id: UploadId) -> Result<u64>;
    /// Appends a chunk and returns the new size. Only returns once the chunk is durable.
    async fn upload_append(&self, repo: &RepoName, id: UploadId, chunk: Chunk, body: ByteStream) -> Result<u64>;
    /// Appends the final chunk, if any, verifies the upload against `digest`,
    /// publishes the blob and links it into `repo`. On a mismatch the session is
    /// cancelled. Returns the blob size.
    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64>;
    async fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<()>;
    /// Removes what clients and crashes left behind: sessions not written to for
    /// `age`, temporary files as old, empty directories. Returns how many sessions.
    async fn purge(&self, age: Duration) -> Result<usize>;
}

#[async_trait]
pub trait Manifests: Send + Sync + 'static {
    async fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>>;
    async fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Checks every reference of `put` (failing with all that are missing), then
    /// stores the manifest, its referrers entry and its tags, in that order.
    async fn manifest_put(&self, repo: &RepoName, put: ManifestPut) -> Result<()>;
    /// Deletes a manifest, the tags that point at it and its referrers entry;
    /// `false` when it was not there.
    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    /// The manifests in `repo` whose `subject` is `subject`, ordered by digest.
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerDescriptor>>;
}

/// Tags are set by [`Manifests::manifest_put`]; these read and remove them.
#[async_trait]
pub trait Tags: Send + Sync + 'static {
    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>>;
    /// The manifest a tag points at, with its digest: what a pull by tag reads
    /// (one request where the backend keeps the two together).
    async fn tag_manifest(&self, repo: &RepoName, tag: &Tag) -> Result<Option<(Digest, StoredManifest)>>;
    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// The repository's tags in lexical order, or `None` for an unknown repository.
    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>>;
}

#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Every repository that holds a blob or a manifest, in lexical order.
    async fn repositories(&self) -> Result<Vec<String>>;
}

/// Everything the registry stores.
pub trait Storage: Blobs + Uploads + Manifests + Tags + Catalog + Lifecycle {}

impl<T: Blobs + Uploads + Manifests + Tags + Catalog + Lifecycle> Storage for T {}
