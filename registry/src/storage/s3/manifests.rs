//! Manifests and their referrers. A manifest is one object per repository: a
//! header line (media type, subject) and then the bytes as pushed, so a pull by
//! digest is one GET.
//!
//! With no lock, a push and a delete of one manifest can interleave; each
//! checks after its writes so that no tag is left pointing at a missing
//! manifest: a delete removes the tags naming the manifest before and after the
//! manifest itself, and a push that finds its manifest deleted after writing its
//! tags writes it again (the push then counts as the later of the two).

use std::collections::HashSet;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::S3Storage;
use super::blobs::{json, parse};
use super::collect::Markers;
use crate::digest::Digest;
use crate::manifest::ReferrerDescriptor;
use crate::names::RepoName;
use crate::storage::{Error, ManifestPut, Manifests, Result, StoredManifest};

/// Reference checks in flight at once for one manifest.
const CHECKS: usize = 16;
/// Rounds of checking and repairing after a push before giving up.
const SETTLE_ATTEMPTS: usize = 10;

/// The header line of a stored manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Revision {
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
}

impl Revision {
    fn encode(&self, manifest: &Bytes) -> Bytes {
        let header = json(self);
        let mut out = BytesMut::with_capacity(header.len() + 1 + manifest.len());
        out.put_slice(&header);
        out.put_u8(b'\n');
        out.put_slice(manifest);
        out.freeze()
    }

    /// The header and the manifest's bytes of a stored object.
    pub fn split(key: &Path, stored: &Bytes) -> Result<(Revision, Bytes)> {
        let end = stored
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| Error::Corrupt(key.to_string(), "no header line".into()))?;
        Ok((parse(key, &stored[..end])?, stored.slice(end + 1..)))
    }
}

impl S3Storage {
    async fn revision(&self, repo: &RepoName, digest: &Digest) -> Result<Option<(Revision, Bytes)>> {
        let key = self.revision_key(repo, digest);
        match self.objects.get_optional(&key).await? {
            Some(read) => Revision::split(&key, &read.bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every reference of `put` that `repo` does not hold, each once.
    async fn missing_references(&self, repo: &RepoName, put: &ManifestPut) -> Result<Vec<Digest>> {
        let mut seen = HashSet::new();
        let blobs = put.blobs.iter().map(|d| (d.clone(), true));
        let children = put.children.iter().map(|d| (d.clone(), false));
        let each_once: Vec<(Digest, bool)> = blobs.chain(children).filter(|(d, _)| seen.insert(d.clone())).collect();
        let keys: Vec<(Digest, Path)> = each_once
            .into_iter()
            .map(|(digest, blob)| {
                let key = if blob { self.link_key(repo, &digest) } else { self.revision_key(repo, &digest) };
                (digest, key)
            })
            .collect();
        let objects = self.objects.clone();
        let mut checks = futures_util::stream::iter(keys)
            .map(move |(digest, key)| {
                let objects = objects.clone();
                async move { (digest, objects.exists(&key).await) }
            })
            .buffered(CHECKS);
        let mut missing = Vec::new();
        while let Some((digest, present)) = checks.next().await {
            if !present? {
                missing.push(digest);
            }
        }
        Ok(missing)
    }

    /// The manifest, its referrers entry and its tags.
    async fn write_manifest(&self, repo: &RepoName, put: &ManifestPut, with_tags: bool) -> Result<()> {
        let revision = Revision {
            media_type: put.manifest.media_type.clone(),
            subject: put.referrer.as_ref().map(|r| r.subject.clone()),
        };
        let object = revision.encode(&put.manifest.bytes);
        self.objects.put(&self.revision_key(repo, &put.digest), object.clone()).await?;
        if let Some(r) = &put.referrer {
            self.objects.put(&self.referrer_key(repo, &r.subject, &put.digest), json(&r.descriptor)).await?;
        }
        if with_tags {
            let text = Self::tag_body(&put.digest, &object);
            let tagged = self.objects.relative(&self.tagged_prefix(repo, &put.digest));
            for tag in &put.tags {
                // The index entry first, so a delete that sees the tag also finds it.
                self.objects.put(&self.key(&format!("{tagged}/{tag}")), Bytes::new()).await?;
                self.objects.put(&self.tag_key(repo, tag.as_str()), text.clone()).await?;
            }
        }
        Ok(())
    }

    /// Writes again the tags of `put` that are missing or emptied; `true` if any was.
    async fn restore_emptied_tags(&self, repo: &RepoName, put: &ManifestPut) -> Result<bool> {
        let mut restored = false;
        for tag in &put.tags {
            restored |= self.restore_tag(repo, tag.as_str(), &put.digest).await?;
        }
        Ok(restored)
    }

    /// Points `tag` at `digest` again if it is missing or emptied.
    async fn restore_tag(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<bool> {
        let key = self.tag_key(repo, tag);
        let current = self.objects.get_optional(&key).await?;
        if current.as_ref().is_some_and(|read| !read.bytes.is_empty()) {
            return Ok(false);
        }
        let text = Bytes::from(digest.to_string());
        match current {
            None => self.objects.create(&key, text).await?,
            Some(read) => self.objects.replace(&key, text, read.e_tag).await?,
        };
        Ok(true)
    }

    /// Deletes a manifest: the tags naming it, its referrers entry, the manifest,
    /// and then the tags naming it that a concurrent push wrote meanwhile.
    pub(super) async fn remove_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let Some((revision, _)) = self.revision(repo, digest).await? else {
            return Ok(false);
        };
        self.delete_tags_naming(repo, digest).await?;
        if let Some(subject) = &revision.subject {
            self.objects.delete(&self.referrer_key(repo, subject, digest)).await?;
        }
        let key = self.revision_key(repo, digest);
        self.objects.delete(&key).await?;
        self.objects.delete(&self.pulled_key(repo, digest)).await?;
        if self.objects.exists(&key).await? {
            return Ok(true);
        }
        let emptied = self.delete_tags_naming(repo, digest).await?;
        if self.objects.exists(&key).await? {
            // Pushed again meanwhile: that push is the later one, so the tags
            // this pass emptied are its own.
            for tag in emptied {
                self.restore_tag(repo, &tag, digest).await?;
            }
        }
        Ok(true)
    }
}

#[async_trait]
impl Manifests for S3Storage {
    async fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        Ok(self
            .revision(repo, digest)
            .await?
            .map(|(revision, bytes)| StoredManifest { media_type: revision.media_type, bytes }))
    }

    async fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.objects.exists(&self.revision_key(repo, digest)).await
    }

    /// Checks the references, writes, then settles with the collector and with
    /// concurrent deletes (see the module's documentation and `collect.rs`).
    async fn manifest_put(&self, repo: &RepoName, put: ManifestPut) -> Result<()> {
        let mut markers = Markers::before(self, repo).await?;
        let missing = self.missing_references(repo, &put).await?;
        if !missing.is_empty() {
            return Err(Error::ReferencesUnknown(missing));
        }
        self.mark_index(repo).await?;
        self.write_manifest(repo, &put, true).await?;
        for _ in 0..SETTLE_ATTEMPTS {
            if let Some(next) = markers.changed(self).await? {
                // A pass over the repository ran meanwhile: its references must still be there.
                markers = next;
                let missing = self.missing_references(repo, &put).await?;
                if !missing.is_empty() {
                    self.remove_manifest(repo, &put.digest).await?;
                    return Err(Error::ReferencesUnknown(missing));
                }
            }
            if !self.manifest_exists(repo, &put.digest).await? {
                // Deleted after this push wrote it: written again with its tags,
                // so the push counts as the later of the two.
                self.write_manifest(repo, &put, true).await?;
                continue;
            }
            // A delete's last pass over the tags may have emptied tags this push
            // wrote; tags moved elsewhere meanwhile are left alone.
            if self.restore_emptied_tags(repo, &put).await? {
                continue;
            }
            return Ok(());
        }
        Err(Error::Busy("the manifest kept being deleted while it was pushed"))
    }

    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.remove_manifest(repo, digest).await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerDescriptor>> {
        let mut listed = self.objects.list(&self.referrers_prefix(repo, subject)).await?;
        listed.sort_by(|a, b| a.location.cmp(&b.location));
        futures_util::stream::iter(listed)
            .map(|meta| async move {
                let read = self.objects.get_optional(&meta.location).await?;
                read.map(|r| parse(&meta.location, &r.bytes)).transpose()
            })
            .buffered(CHECKS)
            .filter_map(|r| async move { r.transpose() })
            .collect::<Vec<Result<ReferrerDescriptor>>>()
            .await
            .into_iter()
            .collect()
    }
}
