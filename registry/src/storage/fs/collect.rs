//! The garbage collector's side of the filesystem backend.
//!
//! Why deleting while pushes go on is safe here:
//! - A repository is read, planned and pruned under its lock, which a manifest
//!   push also holds from its reference check to its record: the push either
//!   sees a link the collector removed missing (and is refused), or lands before
//!   the collector reads the repository (and keeps what it references).
//! - Links and blobs are deleted under the exclusive sweep lock, after checking
//!   again that their time is older than the cutoff. Every write that makes
//!   content referenced (an upload finishing, a mount, a manifest's content)
//!   refreshes those times under the shared sweep lock first, so what it needs
//!   is young when the collector looks again, or already gone and recreated.
//! - Each deletion is one `unlink`; a collector killed at any point leaves only
//!   unreferenced files, which the next collection finds.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::FsStorage;
use super::catalog;
use super::durable::{self, blocking};
use super::lock::{RepoGuard, SweepLock, try_collector_lock};
use super::manifests::Revision;
use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::lifecycle::{
    CollectorGuard, Lifecycle, Planner, RepoOutcome, RepoPlan, RepoSnapshot, SnapshotManifest, SnapshotTag, StoredBlob,
};
use crate::storage::{Catalog, Result};

/// Deletions per hold of the exclusive sweep lock: writers wait at most one batch.
const BATCH: usize = 256;
/// How long a repository pass waits for the exclusive sweep lock before leaving
/// its links for the next collection.
const LINK_WAIT: Duration = Duration::from_secs(1);
/// A pull is recorded on disk at most this often per manifest and process.
const PULL_RECORD_EVERY: Duration = Duration::from_secs(3600);

fn modified(path: &Path) -> Option<SystemTime> {
    fs::symlink_metadata(path).and_then(|m| m.modified()).ok()
}

/// A file's time and size as the server has them now, for the checks a
/// deletion rests on: opening a file makes an NFS client revalidate its
/// attributes (close-to-open), where a `stat` may be answered from its cache.
fn fresh_times(path: &Path) -> Option<(SystemTime, u64)> {
    let m = fs::File::open(path).and_then(|f| f.metadata()).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The digests named by `<dir>/<alg>/<hex>` files, with each file's path.
fn digest_files(dir: &Path) -> io::Result<Vec<(Digest, PathBuf)>> {
    let mut out = Vec::new();
    for alg in durable::list_dir(dir)? {
        for hex in durable::list_dir(&dir.join(&alg))? {
            if let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() {
                out.push((digest, dir.join(&alg).join(hex)));
            }
        }
    }
    Ok(out)
}

/// Where one repository's files are, for the blocking steps.
struct RepoFiles {
    dir: PathBuf,
    blobs: PathBuf,
}

impl RepoFiles {
    fn content(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
    }

    fn snapshot(&self) -> io::Result<RepoSnapshot> {
        let mut snap = RepoSnapshot::default();
        let pulled = self.dir.join("_manifests/pulled");
        for (digest, path) in digest_files(&self.dir.join("_manifests/revisions"))? {
            let (Some(json), Some(pushed)) = (durable::read_optional(&path)?, modified(&path)) else {
                continue; // deleted meanwhile
            };
            // A damaged record is kept as unreadable, which keeps the whole repository.
            let (media_type, bytes) = match serde_json::from_slice::<Revision>(&json) {
                Ok(revision) => (revision.media_type, durable::read_optional(&self.content(&digest))?.map(Bytes::from)),
                Err(_) => (String::new(), None),
            };
            let pulled = modified(&pulled.join(digest.algorithm().as_str()).join(digest.hex()));
            snap.manifests.push(SnapshotManifest { digest, media_type, bytes, pushed, pulled });
        }
        let tags = self.dir.join("_manifests/tags");
        for name in durable::list_dir(&tags)? {
            let path = tags.join(&name);
            let (Some(text), Some(pushed)) = (durable::read_optional(&path)?, modified(&path)) else {
                continue;
            };
            if let Ok(digest) = String::from_utf8_lossy(&text).parse() {
                snap.tags.push(SnapshotTag { name, digest, pushed });
            }
        }
        for (digest, path) in digest_files(&self.dir.join("_layers"))? {
            if let Some(time) = modified(&path) {
                snap.links.push((digest, time));
            }
        }
        Ok(snap)
    }

    /// Deletes what `plan` says, in the order that never leaves a tag on a
    /// missing manifest: tags, then manifests (referrers entry, pull marker,
    /// record), then links, each still older than `cutoff`. Returns the links
    /// removed, and those left because the sweep lock stayed shared by writers
    /// (the repository's lock is held meanwhile, so pushes here wait on it).
    fn apply(&self, plan: &RepoPlan, sweep_lock: &Path, cutoff: SystemTime) -> io::Result<(u64, Vec<Digest>)> {
        for tag in &plan.tags {
            durable::remove_if_exists(&self.dir.join("_manifests/tags").join(tag))?;
        }
        for digest in &plan.manifests {
            let (alg, hex) = (digest.algorithm().as_str(), digest.hex());
            let record = self.dir.join("_manifests/revisions").join(alg).join(hex);
            let subject = durable::read_optional(&record)?
                .and_then(|json| serde_json::from_slice::<Revision>(&json).ok())
                .and_then(|r| r.subject);
            if let Some(s) = subject {
                let entry = format!("{alg}-{hex}");
                let _ =
                    fs::remove_file(self.dir.join("_referrers").join(s.algorithm().as_str()).join(s.hex()).join(entry));
            }
            let _ = fs::remove_file(self.dir.join("_manifests/pulled").join(alg).join(hex));
            durable::remove_if_exists(&record)?;
        }
        let (mut removed, mut left) = (0, Vec::new());
        for batch in plan.links.chunks(BATCH) {
            let Some(_sweep) = SweepLock::try_exclusive_for(sweep_lock, LINK_WAIT)? else {
                left.extend(batch.iter().cloned());
                continue;
            };
            for digest in batch {
                let link = self.dir.join("_layers").join(digest.algorithm().as_str()).join(digest.hex());
                if fresh_times(&link).is_some_and(|(t, _)| t < cutoff) && fs::remove_file(&link).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok((removed, left))
    }
}

#[async_trait]
impl Lifecycle for FsStorage {
    async fn collector_lock(&self) -> Result<Option<CollectorGuard>> {
        let path = self.root().join("gc/collector.lock");
        let held = blocking(move || try_collector_lock(&path)).await?;
        Ok(held.map(|file| Box::new(file) as CollectorGuard))
    }

    async fn collectable_repositories(&self) -> Result<Vec<RepoName>> {
        let mut names = self.repositories().await?;
        let repos = self.repos_dir();
        let walked = blocking(move || {
            catalog::walk(&repos, |_, entries| entries.iter().any(|e| e == "_layers" || e == "_manifests"))
        })
        .await?;
        names.extend(walked);
        names.sort();
        names.dedup();
        Ok(names.into_iter().filter_map(|n| n.parse().ok()).collect())
    }

    async fn collect_repository(
        &self,
        repo: &RepoName,
        planner: Planner,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<RepoOutcome> {
        if !tokio::fs::try_exists(self.repo_dir(repo).join("_manifests")).await?
            && !tokio::fs::try_exists(self.repo_dir(repo).join("_layers")).await?
        {
            return Ok(RepoOutcome::default()); // and no lock file made for it
        }
        let guard = RepoGuard::lock(self.tags_lock(repo)).await?;
        let files = RepoFiles { dir: self.repo_dir(repo), blobs: self.root().join("blobs") };
        let (repo, sweep) = (repo.clone(), self.sweep_lock());
        blocking(move || {
            let snapshot = files.snapshot()?;
            let plan = planner(&repo, &snapshot);
            let (links_removed, links_left) =
                if dry_run { (plan.links.len() as u64, Vec::new()) } else { files.apply(&plan, &sweep, cutoff)? };
            drop(guard);
            Ok(RepoOutcome { plan, links_removed, links_left })
        })
        .await
    }

    async fn stored_blobs(&self) -> Result<Vec<StoredBlob>> {
        let blobs = self.root().join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            for alg in durable::list_dir(&blobs)? {
                for prefix in durable::list_dir(&blobs.join(&alg))? {
                    let dir = blobs.join(&alg).join(&prefix);
                    for hex in durable::list_dir(&dir)? {
                        let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() else { continue };
                        if let Ok(m) = fs::symlink_metadata(dir.join(&hex)) {
                            let modified = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                            out.push(StoredBlob { digest, size: m.len(), modified });
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn sweep_blobs(&self, candidates: Vec<Digest>, cutoff: SystemTime) -> Result<Vec<(Digest, u64)>> {
        let mut deleted = Vec::new();
        for batch in candidates.chunks(BATCH) {
            let paths: Vec<(Digest, PathBuf)> = batch.iter().map(|d| (d.clone(), self.blob_path(d))).collect();
            let sweep = self.sweep_lock();
            let gone = blocking(move || {
                let _sweep = SweepLock::exclusive(&sweep)?;
                let mut gone = Vec::new();
                for (digest, path) in paths {
                    let Some((modified, len)) = fresh_times(&path) else { continue };
                    if modified < cutoff && fs::remove_file(&path).is_ok() {
                        gone.push((digest, len));
                    }
                }
                Ok(gone)
            })
            .await?;
            for (digest, _) in &gone {
                self.caches.content.remove(digest);
            }
            deleted.extend(gone);
        }
        Ok(deleted)
    }

    async fn clock(&self) -> Result<SystemTime> {
        let path = self.root().join("gc/clock");
        blocking(move || {
            if !durable::set_modified_now(&path)? {
                fs::File::create(&path)?;
            }
            fs::metadata(&path)?.modified()
        })
        .await
    }

    fn record_pull(&self, repo: &RepoName, digest: &Digest) {
        let marker = self.pulled_marker(repo, digest);
        if self.pulls.get(&marker).is_some_and(|at| at.elapsed() < PULL_RECORD_EVERY) {
            return;
        }
        self.pulls.insert(marker.clone(), Instant::now());
        tokio::task::spawn_blocking(move || {
            if durable::set_modified_now(&marker).is_ok_and(|found| !found)
                && let Some(dir) = marker.parent()
            {
                let _ = durable::in_dir(dir, || fs::File::create(&marker));
            }
        });
    }

    async fn volume(&self) -> Option<(u64, u64)> {
        let root = self.root().to_owned();
        blocking(move || statvfs(&root)).await.ok()
    }

    async fn probe(&self) -> Result<()> {
        // In a directory of its own, where no upload's temporary files are.
        let (root, dir) = (self.root().to_owned(), self.root().join("health"));
        let path = dir.join(format!("probe-{}", uuid::Uuid::new_v4()));
        blocking(move || {
            remove_stale_probes(&dir);
            // Root may write into the blocks kept for it; pushes as anyone
            // else could not, so an exhausted volume fails the probe even then.
            if statvfs(&root)?.1 < PROBE.len() as u64 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let written = probe_file(&path);
            let _ = std::fs::remove_file(&path);
            written
        })
        .await
    }

    async fn load_report(&self) -> Result<Option<Bytes>> {
        let path = self.root().join("gc/report.json");
        Ok(blocking(move || durable::read_optional(&path)).await?.map(Bytes::from))
    }

    async fn save_report(&self, json: Bytes) -> Result<()> {
        // Written through gc/ rather than tmp/: tmp/ holds only content on its way.
        let (dir, path) = (self.root().join("gc"), self.root().join("gc/report.json"));
        blocking(move || durable::write_atomic(&dir, &path, &json)).await
    }
}

/// What the probe writes: a block's worth, so a full filesystem refuses it.
const PROBE: &[u8; 4096] = &[0x5a; 4096];

/// Probe files a killed process left behind (a probe takes milliseconds).
fn remove_stale_probes(dir: &Path) {
    let stale = SystemTime::now() - Duration::from_secs(60);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < stale);
        if old && entry.file_name().to_string_lossy().starts_with("probe-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `PROBE` to a new file at `path`, syncs it and reads it back.
fn probe_file(path: &Path) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create_new(path)?;
    file.write_all(PROBE)?;
    file.sync_all()?;
    if std::fs::read(path)? != PROBE {
        return Err(io::Error::other("the probe file read back differently"));
    }
    Ok(())
}

/// The size of the filesystem holding `path` and the bytes an unprivileged
/// writer may still use there.
fn statvfs(path: &Path) -> io::Result<(u64, u64)> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain data, for which all zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and an out-parameter of the right type.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * block, st.f_bavail as u64 * block))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn links_wait_for_writers_only_so_long() {
        let dir = tempfile::tempdir().unwrap();
        let files = RepoFiles { dir: dir.path().join("repo"), blobs: dir.path().join("blobs") };
        let digest = Digest::of(Algorithm::Sha256, b"layer");
        let link = files.dir.join("_layers/sha256").join(digest.hex());
        durable::touch(&link).unwrap();
        let plan = RepoPlan { links: vec![digest.clone()], ..RepoPlan::default() };
        let (lock, later) = (dir.path().join("gc/sweep.lock"), SystemTime::now() + Duration::from_secs(60));

        // A writer holds the lock shared: the link stays, reported as left.
        let writer = SweepLock::shared(&lock).unwrap();
        let started = Instant::now();
        let (removed, left) = files.apply(&plan, &lock, later).unwrap();
        assert_eq!((removed, left), (0, vec![digest.clone()]));
        assert!(started.elapsed() >= LINK_WAIT && link.exists());

        drop(writer);
        let (removed, left) = files.apply(&plan, &lock, later).unwrap();
        assert_eq!((removed, left.len()), (1, 0));
        assert!(!link.exists());
    }
}
