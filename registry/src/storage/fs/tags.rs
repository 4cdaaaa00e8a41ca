//! Tags: one file per tag holding the digest it points at. They are written by
//! `manifest_put` (see `manifests.rs`).

use async_trait::async_trait;

use super::FsStorage;
use super::durable::{self, blocking};
use super::lock::RepoGuard;
use super::manifests::{corrupt, read_cached};
use super::read::Mode;
use crate::digest::Digest;
use crate::names::{RepoName, Tag};
use crate::storage::{Manifests, Result, StoredManifest, Tags};

#[async_trait]
impl Tags for FsStorage {
    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let path = self.tags_dir(repo).join(tag.as_str());
        read_cached(self.reads == Mode::Map, &self.caches.tags, path, |path, bytes| {
            let text = String::from_utf8(bytes).map_err(|e| corrupt(path, e))?;
            text.parse().map_err(|e| corrupt(path, e))
        })
        .await
    }

    async fn tag_manifest(&self, repo: &RepoName, tag: &Tag) -> Result<Option<(Digest, StoredManifest)>> {
        let Some(digest) = self.tag_get(repo, tag).await? else {
            return Ok(None);
        };
        Ok(self.manifest_get(repo, &digest).await?.map(|m| (digest, m)))
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let path = self.tags_dir(repo).join(tag.as_str());
        if !tokio::fs::try_exists(&path).await? {
            return Ok(false); // and no lock file is made for an unknown repository
        }
        let guard = RepoGuard::lock(self.tags_lock(repo)).await?;
        blocking(move || {
            let removed = durable::remove_if_exists(&path);
            drop(guard);
            removed
        })
        .await
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        let repo_dir = self.repo_dir(repo);
        let tags_dir = self.tags_dir(repo);
        blocking(move || {
            if !repo_dir.join("_manifests/revisions").is_dir() && !repo_dir.join("_layers").is_dir() {
                return Ok(None);
            }
            durable::list_dir(&tags_dir).map(Some)
        })
        .await
    }
}
