//! Manifests through a mirror: by digest from storage or fetched once; by tag
//! from storage while the tag is trusted, then checked upstream with a HEAD.

use std::sync::Arc;

use super::{FetchError, Mirror, RETRY_AFTER_ERROR};
use crate::digest::{Algorithm, Digest};
use crate::manifest::Policy;
use crate::names::{Reference, RepoName, Tag};
use crate::storage::{ManifestPut, Referrer, Storage, StoredManifest};

pub(super) type Found = Result<(Digest, StoredManifest), FetchError>;

impl Mirror {
    /// The manifest `reference` names in the mirrored repository `repo`
    /// (`upstream` upstream).
    pub async fn manifest(
        self: &Arc<Self>,
        storage: &Arc<dyn Storage>,
        policy: &Arc<Policy>,
        repo: &RepoName,
        upstream: &str,
        reference: &Reference,
    ) -> Found {
        if let Ok(found) = self.cached(storage, repo, reference).await? {
            return Ok(found);
        }
        let key = (repo.clone(), reference.to_string());
        let fetch = {
            let (me, storage, policy) = (self.clone(), storage.clone(), policy.clone());
            let (repo, upstream, reference) = (repo.clone(), upstream.to_owned(), reference.clone());
            move || async move {
                // A fetch that finished just before this one started may have
                // stored (or confirmed) it.
                match me.cached(&storage, &repo, &reference).await? {
                    Ok(found) => Ok(found),
                    Err(local) => me.refresh(&storage, &policy, &repo, &upstream, &reference, local).await,
                }
            }
        };
        let (flight, leader) = self.manifests.join(key, fetch, || Err(FetchError::Crashed));
        if !leader {
            self.meter.count("manifest", "coalesced");
        }
        flight.await
    }

    /// What storage holds for `reference`: `Ok` when it may be served as is
    /// (counted as a hit), `Err` with what is there when the upstream must be asked.
    async fn cached(
        &self,
        storage: &Arc<dyn Storage>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Result<(Digest, StoredManifest), Option<(Digest, StoredManifest)>>, FetchError> {
        let (local, trusted) = match reference {
            Reference::Digest(d) => (storage.manifest_get(repo, d).await?.map(|m| (d.clone(), m)), true),
            Reference::Tag(t) => (storage.tag_manifest(repo, t).await?, self.tag_fresh(repo, t)),
        };
        Ok(match local {
            Some(found) if trusted => {
                self.meter.count("manifest", "hit");
                Ok(found)
            }
            local => Err(local),
        })
    }

    /// One upstream round for a manifest not in storage, or a tag due for a check.
    async fn refresh(
        &self,
        storage: &Arc<dyn Storage>,
        policy: &Policy,
        repo: &RepoName,
        upstream: &str,
        reference: &Reference,
        local: Option<(Digest, StoredManifest)>,
    ) -> Found {
        let Reference::Tag(tag) = reference else {
            return self.fetch(storage, policy, repo, upstream, reference).await;
        };
        let Some((digest, stored)) = local else {
            return self.fetch(storage, policy, repo, upstream, reference).await;
        };
        // A HEAD costs no pull on rate-limited registries and moves no body.
        let checked = self.upstream.manifest(upstream, tag.as_str(), &self.accept, true, self.max_manifest).await;
        match checked {
            Ok(Some(head)) if head.digest.as_deref() == Some(&digest.to_string()) => {
                self.tag_checked(repo, tag, self.ttl());
                self.meter.count("manifest", "revalidated");
                Ok((digest, stored))
            }
            Ok(None) => Err(FetchError::NotFound),
            Ok(Some(_)) => match self.fetch(storage, policy, repo, upstream, reference).await {
                Err(e @ (FetchError::NotFound | FetchError::Storage(_))) => Err(e),
                Err(e) => Ok(self.stale(repo, tag, (digest, stored), &e)),
                found => found,
            },
            Err(e) => Ok(self.stale(repo, tag, (digest, stored), &e)),
        }
    }

    /// The cached manifest of a tag the upstream could not confirm.
    fn stale(
        &self,
        repo: &RepoName,
        tag: &Tag,
        cached: (Digest, StoredManifest),
        e: &FetchError,
    ) -> (Digest, StoredManifest) {
        tracing::warn!(mirror = %self.config.prefix, repository = %repo, %tag, error = %e,
            "serving the cached manifest: the upstream could not confirm the tag");
        self.meter.count("manifest", "stale");
        self.tag_checked(repo, tag, RETRY_AFTER_ERROR.min(self.ttl()));
        cached
    }

    /// GETs a manifest upstream, checks it, stores it (with its tag).
    async fn fetch(
        &self,
        storage: &Arc<dyn Storage>,
        policy: &Policy,
        repo: &RepoName,
        upstream: &str,
        reference: &Reference,
    ) -> Found {
        let got =
            self.upstream.manifest(upstream, &reference.to_string(), &self.accept, false, self.max_manifest).await;
        let got = match got {
            Ok(Some(got)) => got,
            Ok(None) => return Err(FetchError::NotFound),
            Err(e) => {
                self.meter.count("manifest", "error");
                return Err(e);
            }
        };
        self.meter.bytes.inc_by(got.bytes.len() as u64);
        let algorithm = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => match got.digest.as_deref().and_then(|d| d.parse::<Digest>().ok()) {
                Some(d) => d.algorithm(),
                None => Algorithm::Sha256,
            },
        };
        let digest = Digest::of(algorithm, &got.bytes);
        let announced = got.digest.as_deref().is_some_and(|d| d != digest.to_string());
        if announced || matches!(reference, Reference::Digest(d) if *d != digest) {
            return Err(FetchError::DigestMismatch);
        }
        let media_type = got.media_type.split(';').next().unwrap_or("").trim().to_owned();
        let parsed = policy.parse(Some(&media_type), &got.bytes).map_err(|e| FetchError::Invalid(e.to_string()))?;
        let manifest = StoredManifest { media_type: parsed.media_type.to_owned(), bytes: got.bytes };
        let referrer = parsed.subject.clone().map(|subject| Referrer {
            subject,
            descriptor: parsed.referrer_descriptor(&digest, manifest.bytes.len() as u64),
        });
        let tags: Vec<Tag> = match reference {
            Reference::Tag(t) => vec![t.clone()],
            Reference::Digest(_) => Vec::new(),
        };
        // Blobs and children come when clients ask for them: nothing is
        // required to be here already.
        let put = ManifestPut {
            digest: digest.clone(),
            manifest: manifest.clone(),
            blobs: vec![],
            children: vec![],
            referrer,
            tags,
        };
        storage.manifest_put(repo, put).await?;
        if let Reference::Tag(t) = reference {
            self.tag_checked(repo, t, self.ttl());
        }
        self.meter.count("manifest", "miss");
        Ok((digest, manifest))
    }
}
