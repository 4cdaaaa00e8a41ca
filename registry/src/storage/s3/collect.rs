//! The garbage collector's side of the S3 backend. With no lock to share between
//! replicas, the collector announces each step in a marker object that writers
//! read before and after they write:
//!
//! - `gc/passes/<repo>` is active while a pass deletes from the repository, and
//!   `gc/sweep` while blobs are deleted. Each step rewrites its marker when it
//!   starts and when it ends, so a writer that finds the marker's version
//!   unchanged across its writes knows no step overlapped them. Otherwise it
//!   waits for the step to end and checks (and where it can, repairs) what it
//!   wrote before acknowledging (`blobs.rs`, `manifests.rs`).
//! - A step reads the repository or the blob times only after its marker is
//!   written, and deletes a link or blob only if its `at` is still before the
//!   cutoff. A write that references content refreshes `at` first.
//! - Markers carry a lifetime, so a collector killed mid-step holds writers up
//!   for at most that long; a step stops deleting well before it runs out.
//! - The collector lock is a lease object taken with `If-None-Match`/`If-Match`
//!   and renewed while the collection runs.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::blobs::{json, parse};
use super::manifests::Revision;
use super::objects::{FANOUT, Objects};
use super::{S3Storage, now_ms, time_of};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::lifecycle::{
    CollectorGuard, Lifecycle, Planner, RepoOutcome, RepoPlan, RepoSnapshot, SnapshotManifest, SnapshotTag, StoredBlob,
};
use crate::storage::{Error, Result};

/// How long a marker holds writers up if its collector dies.
const MARKER_LIFETIME: Duration = Duration::from_secs(60);
/// A step stops deleting once it has run this long (well within the lifetime).
const STEP_BUDGET: Duration = Duration::from_secs(40);
/// How long the collector lock lasts without renewal.
const LOCK_LIFETIME: Duration = Duration::from_secs(60);
/// How often a writer looks again at an active marker.
const MARKER_POLL: Duration = Duration::from_millis(100);
/// A pull is recorded at most this often per manifest and process.
const PULL_RECORD_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    active: bool,
    /// Milliseconds since the epoch after which an active marker counts as ended.
    until: u64,
}

fn in_ms(d: Duration) -> u64 {
    now_ms() + d.as_millis() as u64
}

/// The versions of the markers a write into one repository depends on.
pub(super) struct Markers {
    repo: RepoName,
    sweep: Option<String>,
    pass: Option<String>,
}

impl Markers {
    /// Read before a write, once no step is running.
    pub async fn before(s: &S3Storage, repo: &RepoName) -> Result<Markers> {
        let (sweep_key, pass_key) = (s.sweep_key(), s.pass_key(repo));
        let (sweep, pass) = futures_util::try_join!(s.settled(&sweep_key), s.settled(&pass_key))?;
        Ok(Markers { repo: repo.clone(), sweep, pass })
    }

    /// After the write: `None` when no step overlapped it; otherwise, once the
    /// steps ended, the markers to compare with after the caller's repairs.
    pub async fn changed(&self, s: &S3Storage) -> Result<Option<Markers>> {
        let version =
            |key: Path| async move { Ok::<_, Error>(s.objects.head_optional(&key).await?.and_then(|m| m.e_tag)) };
        let (sweep, pass) = futures_util::try_join!(version(s.sweep_key()), version(s.pass_key(&self.repo)))?;
        if sweep == self.sweep && pass == self.pass {
            return Ok(None);
        }
        Ok(Some(Markers::before(s, &self.repo).await?))
    }
}

impl S3Storage {
    /// Waits while the marker at `key` is active; returns its version.
    async fn settled(&self, key: &Path) -> Result<Option<String>> {
        loop {
            let Some(read) = self.objects.get_optional(key).await? else {
                return Ok(None);
            };
            let marker: Marker = parse(key, &read.bytes)?;
            if !marker.active || marker.until <= now_ms() {
                return Ok(read.e_tag);
            }
            tokio::time::sleep(MARKER_POLL).await;
        }
    }

    async fn set_marker(&self, key: &Path, active: bool) -> Result<()> {
        self.objects.put(key, json(&Marker { active, until: in_ms(MARKER_LIFETIME) })).await?;
        Ok(())
    }

    /// A repository as the collector sees it.
    async fn snapshot(&self, repo: &RepoName) -> Result<RepoSnapshot> {
        let digests = |prefix: &'static str| async move {
            let listed = self.objects.list(&self.repo_key(repo, prefix)).await?;
            Ok::<_, Error>(listed.into_iter().filter_map(|m| Some((digest_of(&m.location)?, m))).collect::<Vec<_>>())
        };
        let (revisions, pulled, links) =
            futures_util::try_join!(digests("_manifests/revisions"), digests("_manifests/pulled"), digests("_layers"))?;
        let pulled: HashMap<Digest, SystemTime> =
            pulled.into_iter().map(|(d, m)| (d, m.last_modified.into())).collect();
        let pulled = &pulled;
        let manifests = futures_util::stream::iter(revisions)
            .map(|(digest, meta)| async move {
                let read = self.objects.get_optional(&meta.location).await?;
                let revision = read.as_ref().map(|r| Revision::split(&meta.location, &r.bytes)).transpose()?;
                Ok::<_, Error>(revision.map(|(revision, bytes)| SnapshotManifest {
                    pulled: pulled.get(&digest).copied(),
                    digest,
                    media_type: revision.media_type,
                    bytes: Some(bytes),
                    pushed: meta.last_modified.into(),
                }))
            })
            .buffer_unordered(FANOUT)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await?;
        let tags = self.tag_entries(repo).await?;
        let tags = tags.into_iter().map(|(name, digest, pushed)| SnapshotTag { name, digest, pushed }).collect();
        let links = links.into_iter().map(|(d, m)| (d, m.last_modified.into())).collect();
        Ok(RepoSnapshot { manifests, tags, links })
    }

    /// Deletes what `plan` says, checking each link's time again first.
    async fn apply(
        &self,
        repo: &RepoName,
        snapshot: &RepoSnapshot,
        plan: &RepoPlan,
        cutoff: SystemTime,
        started: Instant,
    ) -> Result<(u64, Vec<crate::digest::Digest>)> {
        // Past the budget the marker may have run out and writers no longer
        // wait for this pass: it deletes nothing then (the collection skips its sweep).
        let outlived = || Error::Busy("a repository pass outlived its marker; it deleted nothing");
        if started.elapsed() > STEP_BUDGET {
            return Err(outlived());
        }
        let pointed: HashMap<&str, &Digest> = snapshot.tags.iter().map(|t| (t.name.as_str(), &t.digest)).collect();
        for tag in &plan.tags {
            if let Some(digest) = pointed.get(tag.as_str()) {
                self.delete_tag_if(repo, tag, digest).await?;
            }
        }
        for digest in &plan.manifests {
            if started.elapsed() > STEP_BUDGET {
                return Err(outlived());
            }
            self.remove_manifest(repo, digest).await?;
        }
        let (mut removed, mut left) = (0, Vec::new());
        for digest in &plan.links {
            if started.elapsed() > STEP_BUDGET {
                left.push(digest.clone());
                continue;
            }
            match self.read_link(repo, digest).await? {
                Some(link) if time_of(link.at) < cutoff => {
                    self.links_seen.remove(&format!("{repo}@{digest}"));
                    self.objects.delete(&self.link_key(repo, digest)).await?;
                    removed += 1;
                }
                Some(_) => left.push(digest.clone()),
                None => {}
            }
        }
        Ok((removed, left))
    }

    /// The pointer keys of every blob.
    pub(super) async fn pointer_keys(&self) -> Result<Vec<(Digest, Path)>> {
        let listed = self.objects.list(&self.key("blobs")).await?;
        Ok(listed.into_iter().filter_map(|m| Some((digest_of(&m.location)?, m.location))).collect())
    }

    /// Content objects no pointer names and older than `cutoff`: left by a
    /// crash between a sweep's two deletes, or by an upload whose blob existed.
    async fn sweep_orphans(&self, cutoff: SystemTime, started: Instant) -> Result<()> {
        let named: HashSet<String> = futures_util::stream::iter(self.pointer_keys().await?)
            .map(|(d, _)| async move { self.read_pointer(&d).await })
            .buffer_unordered(FANOUT)
            .try_filter_map(|p| async move { Ok(p.map(|(p, _)| p.data)) })
            .try_collect()
            .await?;
        let data = self.objects.list(&self.key("data")).await?;
        let orphans: Vec<Path> = data
            .into_iter()
            .filter(|m| {
                SystemTime::from(m.last_modified) < cutoff && !named.contains(&self.objects.relative(&m.location))
            })
            .map(|m| m.location)
            .collect();
        if started.elapsed() < STEP_BUDGET {
            self.objects.delete_all(orphans).await?;
        }
        Ok(())
    }
}

/// The digest a `<…>/<alg>/<hex>` key names.
fn digest_of(key: &Path) -> Option<Digest> {
    let mut parts = key.parts().collect::<Vec<_>>().into_iter().rev();
    let hex = parts.next()?;
    let alg = parts.next()?;
    Digest::from_str(&format!("{}:{}", alg.as_ref(), hex.as_ref())).ok()
}

#[derive(Debug, Serialize, Deserialize)]
struct LockState {
    owner: String,
    until: u64,
    released: bool,
}

/// Holds the collector lock: renews it while alive, releases it when dropped.
struct Lease {
    owner: String,
    renewal: tokio::task::JoinHandle<()>,
    version: Arc<std::sync::Mutex<Option<String>>>,
    objects: Arc<Objects>,
    key: Path,
    released: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        // Known released in this process at once; in the bucket shortly.
        self.released.lock().unwrap().push(self.owner.clone());
        let (objects, key, version) = (self.objects.clone(), self.key.clone(), self.version.lock().unwrap().clone());
        let state = LockState { owner: self.owner.clone(), until: 0, released: true };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { objects.replace(&key, json(&state), version).await });
        }
    }
}

impl S3Storage {
    /// One attempt at taking the lock; `None` when someone holds it.
    async fn take_lock(&self, key: &Path, owner: &str) -> Result<Option<Option<String>>> {
        let mine = json(&LockState { owner: owner.to_owned(), until: in_ms(LOCK_LIFETIME), released: false });
        let Some(read) = self.objects.get_optional(key).await? else {
            return self.objects.create(key, mine).await;
        };
        let state: LockState = parse(key, &read.bytes)?;
        let free = state.released || state.until <= now_ms() || self.released.lock().unwrap().contains(&state.owner);
        if !free {
            return Ok(None);
        }
        self.objects.replace(key, mine, read.e_tag).await
    }

    fn renew(
        &self,
        key: Path,
        owner: String,
        version: Arc<std::sync::Mutex<Option<String>>>,
    ) -> tokio::task::JoinHandle<()> {
        let objects = self.objects.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_LIFETIME / 4).await;
                let state = json(&LockState { owner: owner.clone(), until: in_ms(LOCK_LIFETIME), released: false });
                let current = version.lock().unwrap().clone();
                match objects.replace(&key, state, current).await {
                    Ok(Some(next)) => *version.lock().unwrap() = next,
                    Ok(None) => {
                        tracing::error!(target: "gc", "the collector lock was taken over; this collection continues unguarded");
                        return;
                    }
                    Err(e) => tracing::warn!(target: "gc", error = %e, "renewing the collector lock failed"),
                }
            }
        })
    }
}

#[async_trait]
impl Lifecycle for S3Storage {
    async fn collector_lock(&self) -> Result<Option<CollectorGuard>> {
        let key = self.key("gc/collector.lock");
        let owner = uuid::Uuid::new_v4().to_string();
        // A lock this process just released may still be on its way to the bucket.
        for _ in 0..3 {
            let Some(version) = self.take_lock(&key, &owner).await? else {
                let state = self.objects.get_optional(&key).await?;
                let ours_released = state
                    .and_then(|r| serde_json::from_slice::<LockState>(&r.bytes).ok())
                    .is_some_and(|s| s.released || self.released.lock().unwrap().contains(&s.owner));
                if ours_released {
                    continue;
                }
                return Ok(None);
            };
            let version = Arc::new(std::sync::Mutex::new(version));
            let renewal = self.renew(key.clone(), owner.clone(), version.clone());
            let lease =
                Lease { owner, renewal, version, objects: self.objects.clone(), key, released: self.released.clone() };
            return Ok(Some(Box::new(lease)));
        }
        Ok(None)
    }

    async fn collectable_repositories(&self) -> Result<Vec<RepoName>> {
        self.indexed_repositories().await
    }

    async fn collect_repository(
        &self,
        repo: &RepoName,
        planner: Planner,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<RepoOutcome> {
        let (started, key) = (Instant::now(), self.pass_key(repo));
        if dry_run {
            let snapshot = self.snapshot(repo).await?;
            return Ok(RepoOutcome { plan: planner(repo, &snapshot), ..RepoOutcome::default() });
        }
        self.set_marker(&key, true).await?;
        let result = async {
            let snapshot = self.snapshot(repo).await?;
            let plan = planner(repo, &snapshot);
            let (links_removed, links_left) = self.apply(repo, &snapshot, &plan, cutoff, started).await?;
            Ok(RepoOutcome { plan, links_removed, links_left })
        }
        .await;
        self.set_marker(&key, false).await?;
        result
    }

    async fn stored_blobs(&self) -> Result<Vec<StoredBlob>> {
        futures_util::stream::iter(self.pointer_keys().await?)
            .map(|(digest, _)| async move {
                let pointer = self.read_pointer(&digest).await?;
                Ok::<_, Error>(pointer.map(|(p, _)| StoredBlob { digest, size: p.size, modified: time_of(p.at) }))
            })
            .buffer_unordered(FANOUT)
            .try_filter_map(|b| async move { Ok(b) })
            .try_collect()
            .await
    }

    async fn sweep_blobs(&self, candidates: Vec<Digest>, cutoff: SystemTime) -> Result<Vec<(Digest, u64)>> {
        let (started, key) = (Instant::now(), self.sweep_key());
        self.set_marker(&key, true).await?;
        let result = async {
            let mut deleted = Vec::new();
            for digest in candidates {
                if started.elapsed() > STEP_BUDGET {
                    break;
                }
                let Some((pointer, _)) = self.read_pointer(&digest).await? else {
                    continue;
                };
                if time_of(pointer.at) >= cutoff {
                    continue;
                }
                // The pointer first: a crash in between leaves an orphan, found below next time.
                self.objects.delete(&self.pointer_key(&digest)).await?;
                self.pointers.remove(&digest);
                self.objects.delete(&self.key(&pointer.data)).await?;
                deleted.push((digest, pointer.size));
            }
            self.sweep_orphans(cutoff, started).await?;
            Ok(deleted)
        }
        .await;
        self.set_marker(&key, false).await?;
        result
    }

    async fn clock(&self) -> Result<SystemTime> {
        // Times in the bucket that the collector compares are this clock's (`at`).
        Ok(SystemTime::now())
    }

    fn record_pull(&self, repo: &RepoName, digest: &Digest) {
        let key = self.pulled_key(repo, digest);
        let name = key.to_string();
        if self.pulls.get(&name).is_some_and(|at| at.elapsed() < PULL_RECORD_EVERY) {
            return;
        }
        self.pulls.insert(name, Instant::now());
        let objects = self.objects.clone();
        tokio::spawn(async move {
            if let Err(e) = objects.put(&key, Bytes::new()).await {
                tracing::debug!(error = %e, "recording a pull failed");
            }
        });
    }

    async fn volume(&self) -> Option<(u64, u64)> {
        None
    }

    async fn probe(&self) -> Result<()> {
        let key = self.key(&format!("health/{}", self.probe_id));
        let body = Bytes::from_static(b"probe");
        self.objects.put(&key, body.clone()).await?;
        let read = self.objects.get_optional(&key).await;
        self.objects.delete(&key).await?;
        match read? {
            Some(r) if r.bytes == body => Ok(()),
            _ => Err(Error::Remote("the probe object read back differently".into())),
        }
    }

    async fn load_report(&self) -> Result<Option<Bytes>> {
        Ok(self.objects.get_optional(&self.key("gc/report.json")).await?.map(|r| r.bytes))
    }

    async fn save_report(&self, json: Bytes) -> Result<()> {
        self.objects.put(&self.key("gc/report.json"), json).await.map(|_| ())
    }
}
