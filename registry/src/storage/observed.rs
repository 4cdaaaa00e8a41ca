//! Tracing and timing, as a layer over the storage the API uses: each
//! operation runs in a span named after it, with the repository and the
//! reference (digest, tag or upload) as fields, and its time goes into the
//! `storage_operation_duration_seconds` histogram under the operation's name.

use std::fmt::Display;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::histogram::Histogram;
use tracing::Instrument;

use super::{
    Blobs, ByteStream, Catalog, Chunk, ManifestPut, Manifests, Result, Storage, StoredManifest, Tags, Uploads,
};
use crate::digest::{Algorithm, Digest};
use crate::manifest::ReferrerDescriptor;
use crate::names::{RepoName, Tag, UploadId};
use crate::observe::metrics::{Operation, OperationLabels};
use crate::observe::series::Indexed;

/// The operations' time histograms, by operation.
pub type Operations = Arc<Indexed<OperationLabels, Histogram>>;

pub struct Observed<S: ?Sized> {
    inner: Arc<S>,
    /// `None` when metrics are off.
    operations: Option<Operations>,
}

impl<S: Storage + ?Sized> Observed<S> {
    pub fn new(inner: Arc<S>, operations: Option<Operations>) -> Self {
        Observed { inner, operations }
    }

    async fn run<T>(
        &self,
        operation: Operation,
        repo: Option<&RepoName>,
        reference: Option<&(dyn Display + Sync)>,
        work: impl Future<Output = T>,
    ) -> T {
        // Only inside a traced request: one left out by sampling has no span.
        let span = if tracing::Span::current().is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "storage",
                otel.name = operation.as_str(),
                repository = tracing::field::Empty,
                reference = tracing::field::Empty,
            )
        };
        if !span.is_disabled() {
            if let Some(repo) = repo {
                span.record("repository", repo.as_str());
            }
            if let Some(reference) = reference {
                span.record("reference", tracing::field::display(reference));
            }
        }
        let start = Instant::now();
        let out = work.instrument(span).await;
        if let Some(operations) = &self.operations {
            let elapsed = start.elapsed().as_secs_f64();
            operations.record(operation as usize, || OperationLabels { operation }, |h| h.observe(elapsed));
        }
        out
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Blobs for Observed<S> {
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        self.run(Operation::blob_size, Some(repo), Some(digest), self.inner.blob_size(repo, digest)).await
    }
    async fn blob_read(&self, repo: &RepoName, digest: &Digest, range: Range<u64>) -> Result<ByteStream> {
        self.run(Operation::blob_read, Some(repo), Some(digest), self.inner.blob_read(repo, digest, range)).await
    }
    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.run(Operation::blob_delete, Some(repo), Some(digest), self.inner.blob_delete(repo, digest)).await
    }
    async fn blob_mount(&self, to: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        self.run(Operation::blob_mount, Some(to), Some(digest), self.inner.blob_mount(to, digest, from)).await
    }
    async fn blob_put(&self, repo: &RepoName, digest: &Digest, body: ByteStream) -> Result<u64> {
        self.run(Operation::blob_put, Some(repo), Some(digest), self.inner.blob_put(repo, digest, body)).await
    }
    async fn blob_put_sized(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        self.run(Operation::blob_put, Some(repo), Some(digest), self.inner.blob_put_sized(repo, digest, len, body))
            .await
    }
    async fn blob_stored(&self, digest: &Digest) -> Result<Option<u64>> {
        self.run(Operation::blob_stored, None, Some(digest), self.inner.blob_stored(digest)).await
    }
    async fn blob_url(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        self.run(Operation::blob_url, Some(repo), Some(digest), self.inner.blob_url(repo, digest)).await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Uploads for Observed<S> {
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadId> {
        self.run(Operation::upload_start, Some(repo), None, self.inner.upload_start(repo, algorithm)).await
    }
    async fn upload_offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        self.run(Operation::upload_offset, Some(repo), Some(&id), self.inner.upload_offset(repo, id)).await
    }
    async fn upload_append(&self, repo: &RepoName, id: UploadId, chunk: Chunk, body: ByteStream) -> Result<u64> {
        self.run(Operation::upload_append, Some(repo), Some(&id), self.inner.upload_append(repo, id, chunk, body)).await
    }
    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64> {
        self.run(Operation::upload_finish, Some(repo), Some(digest), self.inner.upload_finish(repo, id, digest, last))
            .await
    }
    async fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        self.run(Operation::upload_cancel, Some(repo), Some(&id), self.inner.upload_cancel(repo, id)).await
    }
    async fn purge(&self, age: Duration) -> Result<usize> {
        self.run(Operation::purge, None, None, self.inner.purge(age)).await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Manifests for Observed<S> {
    async fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        self.run(Operation::manifest_get, Some(repo), Some(digest), self.inner.manifest_get(repo, digest)).await
    }
    async fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.run(Operation::manifest_exists, Some(repo), Some(digest), self.inner.manifest_exists(repo, digest)).await
    }
    async fn manifest_put(&self, repo: &RepoName, put: ManifestPut) -> Result<()> {
        let digest = put.digest.clone();
        self.run(Operation::manifest_put, Some(repo), Some(&digest), self.inner.manifest_put(repo, put)).await
    }
    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.run(Operation::manifest_delete, Some(repo), Some(digest), self.inner.manifest_delete(repo, digest)).await
    }
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerDescriptor>> {
        self.run(Operation::referrers, Some(repo), Some(subject), self.inner.referrers(repo, subject)).await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Tags for Observed<S> {
    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.run(Operation::tag_get, Some(repo), Some(tag), self.inner.tag_get(repo, tag)).await
    }
    async fn tag_manifest(&self, repo: &RepoName, tag: &Tag) -> Result<Option<(Digest, StoredManifest)>> {
        self.run(Operation::tag_manifest, Some(repo), Some(tag), self.inner.tag_manifest(repo, tag)).await
    }
    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.run(Operation::tag_delete, Some(repo), Some(tag), self.inner.tag_delete(repo, tag)).await
    }
    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        self.run(Operation::tags, Some(repo), None, self.inner.tags(repo)).await
    }
}

#[async_trait]
impl<S: Storage + ?Sized> Catalog for Observed<S> {
    async fn repositories(&self) -> Result<Vec<String>> {
        self.run(Operation::repositories, None, None, self.inner.repositories()).await
    }
}

super::lifecycle::delegate_lifecycle!(Observed);
