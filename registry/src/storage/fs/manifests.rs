//! Manifests and their referrers. A manifest's content is stored like a blob; the
//! repository records it with a revision file, and its tags and referrers entry
//! change together with that record under the repository's lock.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};

use super::FsStorage;
use super::cache::{FileId, validated};
use super::catalog;
use super::durable::{self, blocking};
use super::lock::{RepoGuard, SweepLock};
use super::read::Mode;
use crate::digest::Digest;
use crate::manifest::ReferrerDescriptor;
use crate::names::RepoName;
use crate::storage::{Blobs, Error, ManifestPut, Manifests, Result, StoredManifest};

/// Reference checks in flight at once for one manifest.
const CHECKS: usize = 16;

/// What a repository records about one of its manifests.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
}

pub(super) fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(path.display().to_string(), e.to_string())
}

/// Reads a small metadata file through `cache`, where an entry counts only while
/// the file keeps the identity it had when the entry was made. The check is one
/// `stat`, made on the runtime thread when `inline` (a local filesystem answers it
/// from memory) and on the blocking pool otherwise (a network filesystem may stall).
pub(super) async fn read_cached<V: Clone>(
    inline: bool,
    cache: &Cache<String, (FileId, V)>,
    path: PathBuf,
    parse: impl FnOnce(&Path, Vec<u8>) -> Result<V>,
) -> Result<Option<V>> {
    let id = if inline {
        FileId::of(&path)?
    } else {
        let path = path.clone();
        blocking(move || FileId::of(&path)).await?
    };
    let Some(id) = id else {
        return Ok(None);
    };
    if let Some(value) = validated(cache, &path, id) {
        return Ok(Some(value));
    }
    let Some(bytes) = blocking({
        let path = path.clone();
        move || durable::read_optional(&path)
    })
    .await?
    else {
        return Ok(None);
    };
    let value = parse(&path, bytes)?;
    if let Some(key) = path.to_str() {
        cache.insert(key.to_owned(), (id, value.clone()));
    }
    Ok(Some(value))
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Task(e.to_string()))
}

impl FsStorage {
    async fn revision(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Revision>> {
        let path = self.revision_link(repo, digest);
        read_cached(self.reads == Mode::Map, &self.caches.revisions, path, |path, bytes| {
            serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e))
        })
        .await
    }

    /// Every reference of `put` that `repo` does not hold.
    async fn missing_references(&self, repo: &RepoName, put: &ManifestPut) -> Result<Vec<Digest>> {
        let mut seen = std::collections::HashSet::new();
        let blobs = put.blobs.iter().cloned().map(|d| (d, true));
        let children = put.children.iter().cloned().map(|d| (d, false));
        let each_once: Vec<_> = blobs.chain(children).filter(|check| seen.insert(check.clone())).collect();
        let mut checks = futures_util::stream::iter(each_once)
            .map(|(digest, blob)| async move {
                let present = if blob {
                    self.blob_size(repo, &digest).await.map(|s| s.is_some())
                } else {
                    self.manifest_exists(repo, &digest).await
                };
                (digest, present)
            })
            .buffered(CHECKS);
        let (mut missing, mut reported) = (Vec::new(), std::collections::HashSet::new());
        while let Some((digest, present)) = checks.next().await {
            if !present? && reported.insert(digest.clone()) {
                missing.push(digest);
            }
        }
        Ok(missing)
    }

    /// Stores manifest content under its digest unless the same bytes are there
    /// (then refreshes their time, under the sweep lock as `link_blob` does),
    /// after the repository's catalog `entry`.
    async fn store_content(&self, digest: &Digest, bytes: Bytes, entry: PathBuf) -> Result<()> {
        let (tmp_dir, path, sweep) = (self.tmp_dir(), self.blob_path(digest), self.sweep_lock());
        blocking(move || {
            catalog::mark(&entry)?;
            let _sweep = SweepLock::shared(&sweep)?;
            if durable::read_optional(&path)?.is_some_and(|stored| stored == bytes) {
                return durable::set_modified_now(&path).map(|_| ());
            }
            durable::write_atomic(&tmp_dir, &path, &bytes)
        })
        .await
    }
}

#[async_trait]
impl Manifests for FsStorage {
    async fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        let Some(revision) = self.revision(repo, digest).await? else {
            return Ok(None);
        };
        if let Some(bytes) = self.caches.content.get(digest) {
            return Ok(Some(StoredManifest { media_type: revision.media_type, bytes }));
        }
        let path = self.blob_path(digest);
        let Some(bytes) = blocking(move || durable::read_optional(&path)).await? else {
            return Ok(None);
        };
        let bytes = Bytes::from(bytes);
        self.caches.content.insert(digest.clone(), bytes.clone());
        Ok(Some(StoredManifest { media_type: revision.media_type, bytes }))
    }

    async fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.revision(repo, digest).await?.is_some())
    }

    /// Under the repository's lock, so the collector cannot remove a link
    /// between the check and the record: the references, the content, then the
    /// repository's record, the referrers entry and the tags. A crash in between
    /// leaves only unreferenced content or an untagged manifest behind.
    async fn manifest_put(&self, repo: &RepoName, put: ManifestPut) -> Result<()> {
        // Once before the lock, so a push that is refused anyway (often into a
        // repository that does not exist) takes no lock and leaves no file.
        let missing = self.missing_references(repo, &put).await?;
        if !missing.is_empty() {
            return Err(Error::ReferencesUnknown(missing));
        }
        let guard = RepoGuard::lock(self.tags_lock(repo)).await?;
        let missing = self.missing_references(repo, &put).await?;
        if !missing.is_empty() {
            return Err(Error::ReferencesUnknown(missing));
        }
        let revision = Revision {
            media_type: put.manifest.media_type.clone(),
            subject: put.referrer.as_ref().map(|r| r.subject.clone()),
        };
        let revision_json = to_json(&revision)?;
        let referrer = match &put.referrer {
            Some(r) => Some((self.referrer_path(repo, &r.subject, &put.digest), to_json(&r.descriptor)?)),
            None => None,
        };
        let tags: Vec<PathBuf> = put.tags.iter().map(|t| self.tags_dir(repo).join(t.as_str())).collect();
        self.store_content(&put.digest, put.manifest.bytes.clone(), self.catalog_entry(repo)).await?;
        let (tmp_dir, link, text) = (self.tmp_dir(), self.revision_link(repo, &put.digest), put.digest.to_string());
        blocking(move || {
            durable::write_atomic(&tmp_dir, &link, &revision_json)?;
            if let Some((path, json)) = referrer {
                durable::write_atomic(&tmp_dir, &path, &json)?;
            }
            for path in tags {
                durable::write_atomic(&tmp_dir, &path, text.as_bytes())?;
            }
            drop(guard);
            Ok(())
        })
        .await
    }

    /// Tags first, so no tag ever points at a manifest that is gone; under the
    /// repository's lock, so a tag written meanwhile is not removed unseen.
    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let Some(revision) = self.revision(repo, digest).await? else {
            return Ok(false);
        };
        let tags_dir = self.tags_dir(repo);
        let referrer = revision.subject.map(|s| self.referrer_path(repo, &s, digest));
        let link = self.revision_link(repo, digest);
        let pulled = self.pulled_marker(repo, digest);
        let wanted = digest.to_string();
        let guard = RepoGuard::lock(self.tags_lock(repo)).await?;
        blocking(move || {
            for tag in durable::list_dir(&tags_dir)? {
                let path = tags_dir.join(&tag);
                if durable::read_optional(&path)?.is_some_and(|d| d == wanted.as_bytes()) {
                    durable::remove_if_exists(&path)?;
                }
            }
            if let Some(path) = referrer {
                durable::remove_if_exists(&path)?;
            }
            let removed = durable::remove_if_exists(&link);
            let _ = std::fs::remove_file(&pulled);
            drop(guard);
            removed
        })
        .await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerDescriptor>> {
        let dir = self.referrers_dir(repo, subject);
        blocking(move || {
            let mut out = Vec::new();
            for name in durable::list_dir(&dir)? {
                let path = dir.join(&name);
                if let Some(bytes) = durable::read_optional(&path)? {
                    out.push(
                        serde_json::from_slice(&bytes)
                            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
                    );
                }
            }
            Ok(out)
        })
        .await
    }
}
