//! Manifests, tags, referrers and the repository list.

use std::path::{Path, PathBuf};

use quick_cache::sync::Cache;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::FsStorage;
use super::cache::{FileId, validated};
use super::durable::{self, blocking};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::ReferrerDescriptor;
use crate::names::{RepoName, Tag};
use crate::storage::{Referrer, StoredManifest};

/// What a repository records about one of its manifests.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{} is damaged: {e}", path.display()))
}

/// Reads a small metadata file through `cache`, where an entry counts only while
/// the file keeps the identity it had when the entry was made.
async fn read_cached<V: Clone>(
    cache: &Cache<String, (FileId, V)>,
    path: PathBuf,
    parse: impl FnOnce(&Path, Vec<u8>) -> Result<V>,
) -> Result<Option<V>> {
    let Some(id) = FileId::of(&path)? else {
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

impl FsStorage {
    pub(super) async fn revision(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Revision>> {
        let path = self.revision_link(repo, digest);
        read_cached(&self.caches.revisions, path, |path, bytes| {
            serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e))
        })
        .await
    }

    pub(super) async fn get_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
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

    pub(super) async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        manifest: StoredManifest,
        referrer: Option<Referrer>,
    ) -> Result<()> {
        let revision =
            Revision { media_type: manifest.media_type, subject: referrer.as_ref().map(|r| r.subject.clone()) };
        let revision_json = serde_json::to_vec(&revision).map_err(|e| Error::Internal(e.to_string()))?;
        let referrer = referrer
            .map(|r| {
                let json = serde_json::to_vec(&r.descriptor).map_err(|e| Error::Internal(e.to_string()))?;
                Ok::<_, Error>((self.referrer_path(repo, &r.subject, digest), json))
            })
            .transpose()?;
        let tmp_dir = self.tmp_dir();
        let blob = self.blob_path(digest);
        let link = self.revision_link(repo, digest);
        let bytes = manifest.bytes;
        // Content first, then the repository's record, then the referrers entry: a
        // crash in between leaves only unreferenced content behind.
        blocking(move || {
            if !blob.exists() {
                durable::write_atomic(&tmp_dir, &blob, &bytes)?;
            }
            durable::write_atomic(&tmp_dir, &link, &revision_json)?;
            if let Some((path, json)) = referrer {
                durable::write_atomic(&tmp_dir, &path, &json)?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let Some(revision) = self.revision(repo, digest).await? else {
            return Ok(false);
        };
        let tags_dir = self.tags_dir(repo);
        let referrer = revision.subject.map(|s| self.referrer_path(repo, &s, digest));
        let link = self.revision_link(repo, digest);
        let wanted = digest.to_string();
        // Tags first, so no tag ever points at a manifest that is gone.
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
            durable::remove_if_exists(&link)
        })
        .await
    }

    pub(super) async fn get_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let path = self.tags_dir(repo).join(tag.as_str());
        read_cached(&self.caches.tags, path, |path, bytes| {
            let text = String::from_utf8(bytes).map_err(|e| corrupt(path, e))?;
            text.parse().map_err(|e| corrupt(path, e))
        })
        .await
    }

    pub(super) async fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let path = self.tags_dir(repo).join(tag.as_str());
        let tmp_dir = self.tmp_dir();
        let text = digest.to_string();
        blocking(move || durable::write_atomic(&tmp_dir, &path, text.as_bytes())).await
    }

    pub(super) async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let path = self.tags_dir(repo).join(tag.as_str());
        blocking(move || durable::remove_if_exists(&path)).await
    }

    pub(super) async fn list_tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        let repo_dir = self.repo_dir(repo);
        let tags_dir = self.tags_dir(repo);
        blocking(move || {
            if !repo_dir.join("_manifests").is_dir() && !repo_dir.join("_layers").is_dir() {
                return Ok(None);
            }
            durable::list_dir(&tags_dir).map(Some)
        })
        .await
    }

    pub(super) async fn list_repositories(&self) -> Result<Vec<String>> {
        self.walk_repositories(|entries| entries.iter().any(|e| e == "_manifests" || e == "_layers")).await
    }

    /// The `_uploads` directories of every repository.
    pub(super) async fn list_upload_dirs(&self) -> Result<Vec<PathBuf>> {
        let root = self.root.join("repositories");
        let repos = self.walk_repositories(|entries| entries.iter().any(|e| e == "_uploads")).await?;
        Ok(repos.into_iter().map(|r| root.join(r).join("_uploads")).collect())
    }

    /// Repository paths (relative, `/`-separated, sorted) whose directory entries satisfy `wanted`.
    async fn walk_repositories(&self, wanted: fn(&[String]) -> bool) -> Result<Vec<String>> {
        let root = self.root.join("repositories");
        blocking(move || {
            let mut found = Vec::new();
            let mut pending = vec![String::new()];
            while let Some(prefix) = pending.pop() {
                let dir = root.join(&prefix);
                let entries = durable::list_dir(&dir)?;
                if wanted(&entries) {
                    found.push(prefix.clone());
                }
                for entry in entries.into_iter().filter(|e| !e.starts_with('_')) {
                    if dir.join(&entry).is_dir() {
                        pending.push(if prefix.is_empty() { entry } else { format!("{prefix}/{entry}") });
                    }
                }
            }
            found.sort();
            Ok(found)
        })
        .await
    }

    pub(super) async fn list_referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerDescriptor>> {
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
