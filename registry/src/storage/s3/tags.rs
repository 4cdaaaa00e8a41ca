//! Tags: one object each holding the digest, last writer wins, and after it (as
//! a push writes it) a copy of the manifest object, so a pull by tag is one GET:
//! `<digest>\n<header line>\n<manifest>`. A deleted tag is emptied rather than
//! removed, conditionally on what was read (S3 has no conditional delete), so a
//! tag moved meanwhile by another push is kept.

use std::str::FromStr;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::S3Storage;
use super::manifests::Revision;
use super::objects::FANOUT;
use crate::digest::Digest;
use crate::names::{RepoName, Tag};
use crate::storage::{Error, Manifests, Result, StoredManifest, Tags};

impl S3Storage {
    /// A tag's digest and the version it was read at.
    async fn read_tag(&self, repo: &RepoName, tag: &str) -> Result<Option<(Digest, Option<String>)>> {
        Ok(self.read_tag_object(repo, tag).await?.map(|(digest, _, version)| (digest, version)))
    }

    /// A tag's digest, the manifest copy after it (if any) and its version.
    async fn read_tag_object(&self, repo: &RepoName, tag: &str) -> Result<Option<(Digest, Bytes, Option<String>)>> {
        let key = self.tag_key(repo, tag);
        let Some(read) = self.objects.get_optional(&key).await? else {
            return Ok(None);
        };
        if read.bytes.is_empty() {
            return Ok(None);
        }
        let corrupt = |e: String| Error::Corrupt(key.to_string(), e);
        let end = read.bytes.iter().position(|&b| b == b'\n').unwrap_or(read.bytes.len());
        let text = std::str::from_utf8(&read.bytes[..end]).map_err(|e| corrupt(e.to_string()))?;
        let digest = Digest::from_str(text.trim()).map_err(|e| corrupt(e.to_string()))?;
        let rest = read.bytes.slice((end + 1).min(read.bytes.len())..);
        Ok(Some((digest, rest, read.e_tag)))
    }

    /// What a push writes to a tag: the digest, then the manifest object.
    pub(super) fn tag_body(digest: &Digest, manifest_object: &Bytes) -> Bytes {
        let mut body = Vec::with_capacity(72 + manifest_object.len());
        body.extend_from_slice(digest.to_string().as_bytes());
        body.push(b'\n');
        body.extend_from_slice(manifest_object);
        Bytes::from(body)
    }

    /// Empties `tag` if it still names `digest`.
    pub(super) async fn delete_tag_if(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<()> {
        let mut attempts = 0;
        while let Some((current, e_tag)) = self.read_tag(repo, tag).await? {
            if current != *digest || attempts == 5 {
                break;
            }
            if self.objects.replace(&self.tag_key(repo, tag), Bytes::new(), e_tag).await?.is_some() {
                break;
            }
            attempts += 1;
        }
        Ok(())
    }

    /// The names of the repository's tags (deleted ones left out) with their times.
    async fn tag_names(&self, repo: &RepoName) -> Result<Vec<(String, SystemTime)>> {
        let listed = self.objects.list(&self.repo_key(repo, "_manifests/tags")).await?;
        Ok(listed
            .into_iter()
            .filter(|m| m.size > 0)
            .filter_map(|m| Some((m.location.filename()?.to_owned(), m.last_modified.into())))
            .collect())
    }

    /// Every tag with its digest and time.
    pub(super) async fn tag_entries(&self, repo: &RepoName) -> Result<Vec<(String, Digest, SystemTime)>> {
        futures_util::stream::iter(self.tag_names(repo).await?)
            .map(|(name, time)| async move {
                Ok::<_, Error>(self.read_tag(repo, &name).await?.map(|(digest, _)| (name, digest, time)))
            })
            .buffer_unordered(FANOUT)
            .try_filter_map(|t| async move { Ok(t) })
            .try_collect()
            .await
    }

    /// Empties the tags naming `digest`; returns their names. Only the tags
    /// ever pointed at it are read (its `tagged` index, written before each tag).
    pub(super) async fn delete_tags_naming(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>> {
        let listed = self.objects.list(&self.tagged_prefix(repo, digest)).await?;
        let names: Vec<String> = listed.iter().filter_map(|m| m.location.filename().map(str::to_owned)).collect();
        futures_util::stream::iter(names)
            .map(|name| async move {
                let names_it = self.read_tag(repo, &name).await?.is_some_and(|(d, _)| d == *digest);
                if names_it {
                    self.delete_tag_if(repo, &name, digest).await?;
                }
                Ok::<_, Error>(names_it.then_some(name))
            })
            .buffer_unordered(FANOUT)
            .try_filter_map(|name| async move { Ok(name) })
            .try_collect()
            .await
    }
}

#[async_trait]
impl Tags for S3Storage {
    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        Ok(self.read_tag(repo, tag.as_str()).await?.map(|(d, _)| d))
    }

    /// One GET when the tag carries the manifest; a tag restored without it
    /// reads the manifest object too.
    async fn tag_manifest(&self, repo: &RepoName, tag: &Tag) -> Result<Option<(Digest, StoredManifest)>> {
        let Some((digest, copy, _)) = self.read_tag_object(repo, tag.as_str()).await? else {
            return Ok(None);
        };
        if copy.is_empty() {
            return Ok(self.manifest_get(repo, &digest).await?.map(|m| (digest, m)));
        }
        let (revision, bytes) = Revision::split(&self.tag_key(repo, tag.as_str()), &copy)?;
        Ok(Some((digest, StoredManifest { media_type: revision.media_type, bytes })))
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let Some((digest, _)) = self.read_tag(repo, tag.as_str()).await? else {
            return Ok(false);
        };
        self.delete_tag_if(repo, tag.as_str(), &digest).await?;
        Ok(true)
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        let mut names: Vec<String> = self.tag_names(repo).await?.into_iter().map(|(name, _)| name).collect();
        if names.is_empty() && !self.objects.exists(&self.index_key(repo.as_str())).await? {
            return Ok(None);
        }
        names.sort();
        Ok(Some(names))
    }
}
