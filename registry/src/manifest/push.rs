//! A manifest push, from the bytes a client sent to what the storage records:
//! check the digest, parse with the policy's handler, list what must already be
//! in the repository, and hand it all to storage as one [`ManifestPut`], which
//! reports every missing reference at once.

use bytes::Bytes;

use super::Policy;
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::names::{Reference, RepoName, Tag};
use crate::storage::{ManifestPut, Manifests, Referrer, StoredManifest};

/// A manifest as pushed to `reference`, with any further `tags`.
pub struct Push<'a> {
    pub reference: &'a Reference,
    pub tags: Vec<Tag>,
    pub content_type: Option<&'a str>,
    pub bytes: Bytes,
}

/// What was stored.
#[derive(Debug)]
pub struct Pushed {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// Every tag now pointing at the manifest.
    pub tags: Vec<Tag>,
}

/// The digest of a pushed manifest: the one named, if its bytes match it.
fn digest_of(reference: &Reference, bytes: &[u8]) -> Result<Digest> {
    match reference {
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), bytes);
            if actual != *expected {
                return Err(Error::DigestInvalid(format!("manifest digest is {actual}, not {expected}")));
            }
            Ok(actual)
        }
        Reference::Tag(_) => Ok(Digest::of(Algorithm::Sha256, bytes)),
    }
}

pub async fn push(
    storage: &(impl Manifests + ?Sized),
    policy: &Policy,
    repo: &RepoName,
    push: Push<'_>,
) -> Result<Pushed> {
    let digest = digest_of(push.reference, &push.bytes)?;
    let mut tags = push.tags;
    if let Reference::Tag(tag) = push.reference {
        tags.insert(0, tag.clone());
    }
    let parsed = policy.parse(push.content_type, &push.bytes)?;
    let size = push.bytes.len() as u64;
    let referrer = parsed
        .subject
        .clone()
        .map(|subject| Referrer { subject, descriptor: parsed.referrer_descriptor(&digest, size) });
    let put = ManifestPut {
        digest: digest.clone(),
        manifest: StoredManifest { media_type: parsed.media_type.to_owned(), bytes: push.bytes },
        blobs: unique(policy.required_blobs(&parsed).iter()),
        children: unique(policy.required_manifests(&parsed).into_iter()),
        referrer,
        tags: tags.clone(),
    };
    storage.manifest_put(repo, put).await?;
    Ok(Pushed { digest, subject: parsed.subject, tags })
}

/// Each digest once, in the order of first mention.
fn unique<'a>(digests: impl Iterator<Item = &'a Digest>) -> Vec<Digest> {
    let mut seen = std::collections::HashSet::new();
    digests.filter(|d| seen.insert(*d)).cloned().collect()
}
