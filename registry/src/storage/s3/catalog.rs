//! The catalog: `index/` holds one empty object per repository ever written
//! (its name with `/` as `+`, which names cannot contain). Entries are never
//! removed, since a removal could race a push that counts on its entry; the
//! catalog lists the entries whose repository still holds a blob or a manifest.

use std::str::FromStr;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::S3Storage;
use super::objects::FANOUT;
use crate::names::RepoName;
use crate::storage::{Catalog, Error, Result};

impl S3Storage {
    /// Writes the repository's entry, once per process.
    pub(super) async fn mark_index(&self, repo: &RepoName) -> Result<()> {
        if self.indexed.get(repo.as_str()).is_some() {
            return Ok(());
        }
        self.objects.put(&self.index_key(repo.as_str()), Bytes::new()).await?;
        self.indexed.insert(repo.as_str().to_owned(), ());
        Ok(())
    }

    /// Every repository with an entry.
    pub(super) async fn indexed_repositories(&self) -> Result<Vec<RepoName>> {
        let listed = self.objects.list(&self.key("index")).await?;
        let mut names: Vec<RepoName> = listed
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|name| RepoName::from_str(&name.replace('+', "/")).ok())
            .collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    async fn has_content(&self, repo: &RepoName) -> Result<bool> {
        let (layers, revisions) = (self.repo_key(repo, "_layers"), self.repo_key(repo, "_manifests/revisions"));
        let (layers, revisions) = futures_util::try_join!(self.objects.any(&layers), self.objects.any(&revisions))?;
        Ok(layers || revisions)
    }
}

#[async_trait]
impl Catalog for S3Storage {
    async fn repositories(&self) -> Result<Vec<String>> {
        futures_util::stream::iter(self.indexed_repositories().await?)
            .map(|repo| async move { Ok::<_, Error>(self.has_content(&repo).await?.then(|| repo.as_str().to_owned())) })
            .buffered(FANOUT)
            .try_filter_map(|r| async move { Ok(r) })
            .try_collect()
            .await
    }
}
