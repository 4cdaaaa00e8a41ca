//! Storage on a local filesystem, laid out like the Distribution registry's:
//!
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>                      content (blobs and manifests)
//! repositories/<name>/_layers/<alg>/<hex>           blob linked into the repository
//! repositories/<name>/_manifests/revisions/<alg>/<hex>   manifest in the repository (JSON)
//! repositories/<name>/_manifests/tags/<tag>         digest the tag points at
//! repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>   referrer descriptor
//! repositories/<name>/_uploads/<id>[.json]       upload sessions: data and state
//! tmp/                                              files being written
//! ```
//! Repository names never have components starting with `_` or `.`, so they cannot
//! collide with the `_` directories.

mod blobs;
mod cache;
mod durable;
mod meta;
mod uploads;

use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{ByteStream, Chunk, Referrer, Storage, StoredManifest};
use crate::digest::{Algorithm, Digest};
use crate::error::Result;
use crate::manifest::ReferrerDescriptor;
use crate::names::{RepoName, Tag};

pub struct FsStorage {
    root: PathBuf,
    upload_locks: uploads::Locks,
    caches: cache::Caches,
}

impl FsStorage {
    /// Opens (creating if needed) a storage root.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        for dir in ["blobs", "repositories", "tmp"] {
            durable::ensure_dir(&root.join(dir))?;
        }
        Ok(FsStorage { root, upload_locks: uploads::Locks::default(), caches: cache::Caches::default() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        self.root.join("repositories").join(repo.as_str())
    }

    fn layer_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo).join("_layers").join(d.algorithm().as_str()).join(d.hex())
    }

    fn revision_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo).join("_manifests/revisions").join(d.algorithm().as_str()).join(d.hex())
    }

    fn tags_dir(&self, repo: &RepoName) -> PathBuf {
        self.repo_dir(repo).join("_manifests/tags")
    }

    fn referrers_dir(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo_dir(repo).join("_referrers").join(subject.algorithm().as_str()).join(subject.hex())
    }

    fn referrer_path(&self, repo: &RepoName, subject: &Digest, d: &Digest) -> PathBuf {
        self.referrers_dir(repo, subject).join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        self.linked_blob_size(repo, digest).await
    }

    async fn blob_read(&self, repo: &RepoName, digest: &Digest, range: Range<u64>) -> Result<ByteStream> {
        self.read_blob(repo, digest, range).await
    }

    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.unlink_blob(repo, digest).await
    }

    async fn blob_mount(&self, to: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        self.mount_blob(to, digest, from).await
    }

    async fn blob_put(&self, repo: &RepoName, digest: &Digest, body: ByteStream) -> Result<u64> {
        self.put_blob(repo, digest, body).await
    }

    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<String> {
        self.start_upload(repo, algorithm).await
    }

    async fn upload_offset(&self, repo: &RepoName, id: &str) -> Result<u64> {
        Ok(self.load_upload(repo, id).await?.offset)
    }

    async fn upload_append(&self, repo: &RepoName, id: &str, chunk: Chunk, body: ByteStream) -> Result<u64> {
        self.append_upload(repo, id, chunk, body).await
    }

    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64> {
        self.finish_upload(repo, id, digest, last).await
    }

    async fn upload_cancel(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.cancel_upload(repo, id).await
    }

    async fn purge_uploads(&self, age: std::time::Duration) -> Result<usize> {
        self.purge_stale_uploads(age).await
    }

    async fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        self.get_manifest(repo, digest).await
    }

    async fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.revision(repo, digest).await?.is_some())
    }

    async fn manifest_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        manifest: StoredManifest,
        referrer: Option<Referrer>,
    ) -> Result<()> {
        self.put_manifest(repo, digest, manifest, referrer).await
    }

    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.delete_manifest(repo, digest).await
    }

    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.get_tag(repo, tag).await
    }

    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        self.set_tag(repo, tag, digest).await
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.delete_tag(repo, tag).await
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        self.list_tags(repo).await
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        self.list_repositories().await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerDescriptor>> {
        self.list_referrers(repo, subject).await
    }
}
