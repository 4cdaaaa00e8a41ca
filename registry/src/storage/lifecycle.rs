//! What the garbage collector needs of a backend. The collector decides (pure,
//! in `crate::gc`); the backend reads a repository and carries out the decision
//! under the repository's lock, so no push can slip between the two.
//!
//! Contract (checked by `tests/storage_contract.rs` and `tests/gc_race.rs`):
//! - a write that makes content referenced (an upload finishing, a mount, a
//!   manifest's content) refreshes the content's time first, so content a
//!   collection found unreferenced and old is either still old when it is
//!   deleted, or kept;
//! - a manifest push checks its references under the repository's lock, so it
//!   either sees a link the collector is about to remove kept, or is refused;
//! - one collector at a time across every process sharing the storage.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::Result;
use crate::digest::Digest;
use crate::names::RepoName;

/// A repository as the collector sees it, read under its lock.
#[derive(Clone, Debug, Default)]
pub struct RepoSnapshot {
    pub manifests: Vec<SnapshotManifest>,
    pub tags: Vec<SnapshotTag>,
    /// Blobs linked into the repository, with the time of the link.
    pub links: Vec<(Digest, SystemTime)>,
}

#[derive(Clone, Debug)]
pub struct SnapshotManifest {
    pub digest: Digest,
    pub media_type: String,
    /// `None` when the content is missing (a damaged store): such a manifest is kept.
    pub bytes: Option<Bytes>,
    pub pushed: SystemTime,
    pub pulled: Option<SystemTime>,
}

#[derive(Clone, Debug)]
pub struct SnapshotTag {
    pub name: String,
    pub digest: Digest,
    pub pushed: SystemTime,
}

/// What to delete from one repository.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepoPlan {
    pub tags: Vec<String>,
    pub manifests: Vec<Digest>,
    /// Links to remove if they are still older than the cutoff when removed.
    pub links: Vec<Digest>,
    /// What stays referenced: surviving manifests' content and blobs.
    pub keep: Vec<Digest>,
    /// The manifests that stay.
    pub kept_manifests: Vec<Digest>,
    /// How many of those stay only because a protected reference names them.
    pub protected_kept: u64,
}

/// What a repository pass did (in a dry run, would have done).
#[derive(Clone, Debug, Default)]
pub struct RepoOutcome {
    pub plan: RepoPlan,
    pub links_removed: u64,
    /// Planned links the pass could not remove this time; their blobs stay.
    pub links_left: Vec<Digest>,
}

/// A stored blob (content of a blob or a manifest).
#[derive(Clone, Debug)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// Decides a repository's plan from its snapshot; runs under the repository's lock.
pub type Planner = std::sync::Arc<dyn Fn(&RepoName, &RepoSnapshot) -> RepoPlan + Send + Sync>;

/// Held while a collection runs; dropping it lets the next collector in.
pub type CollectorGuard = Box<dyn Send + Sync>;

#[async_trait]
pub trait Lifecycle: Send + Sync + 'static {
    /// The collector lock, or `None` while another collector holds it.
    async fn collector_lock(&self) -> Result<Option<CollectorGuard>>;
    /// Every repository that holds or held content.
    async fn collectable_repositories(&self) -> Result<Vec<RepoName>>;
    /// Under the repository's lock: reads it, asks `planner`, and unless
    /// `dry_run` deletes the plan's tags and manifests and those of its links
    /// still older than `cutoff`.
    async fn collect_repository(
        &self,
        repo: &RepoName,
        planner: Planner,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<RepoOutcome>;
    /// Every stored blob.
    async fn stored_blobs(&self) -> Result<Vec<StoredBlob>>;
    /// Deletes those of `candidates` still older than `cutoff`; returns the
    /// ones deleted with their sizes.
    async fn sweep_blobs(&self, candidates: Vec<Digest>, cutoff: SystemTime) -> Result<Vec<(Digest, u64)>>;
    /// Now, by the clock that stamps the storage's times (the kernel's coarse
    /// clock, an NFS server's): the collector's cutoff is compared with those.
    async fn clock(&self) -> Result<SystemTime>;
    /// Notes that a manifest was pulled (cheap; recorded at most hourly).
    fn record_pull(&self, repo: &RepoName, digest: &Digest);
    /// The volume's size and free bytes, when the backend has a volume.
    async fn volume(&self) -> Option<(u64, u64)>;
    /// The last report, as saved by [`Lifecycle::save_report`] (any process).
    async fn load_report(&self) -> Result<Option<Bytes>>;
    /// Writes a small object, reads it back and deletes it: whether the
    /// storage can take writes now (the readiness probe).
    async fn probe(&self) -> Result<()>;
    async fn save_report(&self, json: Bytes) -> Result<()>;
}

/// `Lifecycle` for a layer (`$layer<S>` with a field `inner: Arc<S>`) that
/// adds nothing to it: the collector works on the backend below the layers.
macro_rules! delegate_lifecycle {
    ($layer:ident) => {
        #[async_trait::async_trait]
        impl<S: $crate::storage::Storage + ?Sized> $crate::storage::Lifecycle for $layer<S> {
            async fn collector_lock(
                &self,
            ) -> $crate::storage::Result<Option<$crate::storage::lifecycle::CollectorGuard>> {
                self.inner.collector_lock().await
            }
            async fn collectable_repositories(&self) -> $crate::storage::Result<Vec<$crate::names::RepoName>> {
                self.inner.collectable_repositories().await
            }
            async fn collect_repository(
                &self,
                repo: &$crate::names::RepoName,
                planner: $crate::storage::lifecycle::Planner,
                cutoff: std::time::SystemTime,
                dry_run: bool,
            ) -> $crate::storage::Result<$crate::storage::lifecycle::RepoOutcome> {
                self.inner.collect_repository(repo, planner, cutoff, dry_run).await
            }
            async fn stored_blobs(&self) -> $crate::storage::Result<Vec<$crate::storage::lifecycle::StoredBlob>> {
                self.inner.stored_blobs().await
            }
            async fn sweep_blobs(
                &self,
                candidates: Vec<$crate::digest::Digest>,
                cutoff: std::time::SystemTime,
            ) -> $crate::storage::Result<Vec<($crate::digest::Digest, u64)>> {
                self.inner.sweep_blobs(candidates, cutoff).await
            }
            async fn clock(&self) -> $crate::storage::Result<std::time::SystemTime> {
                self.inner.clock().await
            }
            fn record_pull(&self, repo: &$crate::names::RepoName, digest: &$crate::digest::Digest) {
                self.inner.record_pull(repo, digest)
            }
            async fn volume(&self) -> Option<(u64, u64)> {
                self.inner.volume().await
            }
            async fn load_report(&self) -> $crate::storage::Result<Option<bytes::Bytes>> {
                self.inner.load_report().await
            }
            async fn probe(&self) -> $crate::storage::Result<()> {
                self.inner.probe().await
            }
            async fn save_report(&self, json: bytes::Bytes) -> $crate::storage::Result<()> {
                self.inner.save_report(json).await
            }
        }
    };
}
pub(crate) use delegate_lifecycle;
