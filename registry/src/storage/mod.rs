//! Storage behind one trait, so the HTTP layer does not know whether blobs live on
//! a filesystem (a PersistentVolume) or, later, in an object store.
//!
//! Contract for every implementation:
//! - a blob becomes readable only once it is complete and its digest verified;
//! - an acknowledged write (the call returned `Ok`) survives a crash;
//! - a blob or manifest is visible only in the repositories it was pushed or
//!   mounted into.

pub mod fs;

use std::io;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::digest::{Algorithm, Digest};
use crate::error::Result;
use crate::manifest::ReferrerDescriptor;
use crate::names::{RepoName, Tag};

pub use fs::FsStorage;

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
#[derive(Clone, Copy, Debug, Default)]
pub struct Chunk {
    /// The first byte's offset, from `Content-Range`; must equal the upload's size.
    pub start: Option<u64>,
    /// The byte count the client announced; a body of another length is refused.
    pub len: Option<u64>,
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
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

    /// Opens an upload session that hashes with `algorithm`; returns its id.
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<String>;
    /// Bytes received so far.
    async fn upload_offset(&self, repo: &RepoName, id: &str) -> Result<u64>;
    /// Appends a chunk and returns the new size. Only returns once the chunk is durable.
    async fn upload_append(&self, repo: &RepoName, id: &str, chunk: Chunk, body: ByteStream) -> Result<u64>;
    /// Appends the final chunk, if any, verifies the upload against `digest`,
    /// publishes the blob and links it into `repo`. On a mismatch the session is
    /// cancelled. Returns the blob size.
    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64>;
    async fn upload_cancel(&self, repo: &RepoName, id: &str) -> Result<()>;
    /// Deletes upload sessions not written to for `age`; returns how many.
    async fn purge_uploads(&self, age: std::time::Duration) -> Result<usize>;

    async fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>>;
    async fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Stores a verified manifest (its digest is over exactly `bytes`).
    async fn manifest_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        manifest: StoredManifest,
        referrer: Option<Referrer>,
    ) -> Result<()>;
    /// Deletes a manifest, the tags that point at it and its referrers entry;
    /// `false` when it was not there.
    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>>;
    /// Points `tag` at a manifest; the last writer wins.
    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()>;
    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// The repository's tags in lexical order, or `None` for an unknown repository.
    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>>;

    /// Every repository, in lexical order.
    async fn repositories(&self) -> Result<Vec<String>>;
    /// The manifests in `repo` whose `subject` is `subject`, ordered by digest.
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerDescriptor>>;
}
