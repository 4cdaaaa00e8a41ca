//! Keeping a mirror under its byte cap: the images of its repositories,
//! least recently used first, are chosen for eviction until what stays fits.
//! Pure, so the choice is tested without a store. Protected images (those
//! running pods use) and images younger than the grace period are never chosen.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use super::plan::{Protected, References};
use crate::digest::Digest;
use crate::storage::lifecycle::RepoSnapshot;

/// One image of a mirrored repository: a tag, or an untagged manifest no
/// other manifest lists.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub repo: String,
    pub tag: Option<String>,
    /// The root manifest and the children it lists.
    pub manifests: Vec<Digest>,
    /// Every blob they reference, with the manifests' own content.
    pub blobs: Vec<Digest>,
    /// The last pull of any of its manifests, or when it was fetched.
    pub last_used: SystemTime,
    /// Never chosen: protected, or within the grace period.
    pub pinned: bool,
}

/// What to evict from one repository.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Eviction {
    pub tags: HashSet<String>,
    /// Manifests that stop being roots (they go unless something kept reaches them).
    pub digests: HashSet<Digest>,
}

/// The images of a repository, from its snapshot.
pub fn images(
    repo: &str,
    snap: &RepoSnapshot,
    references: impl Fn(usize) -> Option<References>,
    protected: &Protected,
    cutoff: SystemTime,
) -> Vec<Image> {
    let refs: HashMap<&Digest, (References, &crate::storage::lifecycle::SnapshotManifest)> = (0..snap.manifests.len())
        .filter_map(|i| Some((&snap.manifests[i].digest, (references(i)?, &snap.manifests[i]))))
        .collect();
    let listed: HashSet<&Digest> = refs.values().flat_map(|(r, _)| r.children.iter()).collect();
    let image = |tag: Option<&str>, root: &Digest, tagged_at: Option<SystemTime>| -> Option<Image> {
        let (r, m) = refs.get(root)?;
        let mut manifests = vec![root.clone()];
        let mut blobs: Vec<Digest> = r.blobs.clone();
        let mut last_used = m.pulled.unwrap_or(m.pushed).max(tagged_at.unwrap_or(m.pushed));
        let mut young = m.pushed >= cutoff || tagged_at.is_some_and(|t| t >= cutoff);
        for child in &r.children {
            if let Some((cr, cm)) = refs.get(child) {
                manifests.push(child.clone());
                blobs.extend(cr.blobs.iter().cloned());
                last_used = last_used.max(cm.pulled.unwrap_or(cm.pushed));
                young |= cm.pushed >= cutoff;
            }
        }
        blobs.extend(manifests.iter().cloned());
        let guarded =
            tag.is_some_and(|t| protected.tags.contains(t)) || manifests.iter().any(|d| protected.digests.contains(d));
        Some(Image {
            repo: repo.to_owned(),
            tag: tag.map(str::to_owned),
            manifests,
            blobs,
            last_used,
            pinned: guarded || young,
        })
    };
    let tagged: HashSet<&Digest> = snap.tags.iter().map(|t| &t.digest).collect();
    let mut out: Vec<Image> =
        snap.tags.iter().filter_map(|t| image(Some(&t.name), &t.digest, Some(t.pushed))).collect();
    out.extend(
        snap.manifests
            .iter()
            .filter(|m| !tagged.contains(&m.digest) && !listed.contains(&m.digest))
            .filter_map(|m| image(None, &m.digest, None)),
    );
    out
}

/// Chooses images to evict, least recently used first, until the bytes the
/// rest reference fit in `cap`. Returns the evictions by repository and the
/// bytes they free.
pub fn choose(mut images: Vec<Image>, sizes: &HashMap<Digest, u64>, cap: u64) -> (HashMap<String, Eviction>, u64) {
    images.sort_by(|a, b| a.last_used.cmp(&b.last_used).then_with(|| (&a.repo, &a.tag).cmp(&(&b.repo, &b.tag))));
    let mut refcount: HashMap<&Digest, usize> = HashMap::new();
    for d in images.iter().flat_map(|i| unique(&i.blobs)) {
        *refcount.entry(d).or_default() += 1;
    }
    let size = |d: &Digest| sizes.get(d).copied().unwrap_or(0);
    let mut used: u64 = refcount.keys().map(|d| size(d)).sum();
    let mut evictions: HashMap<String, Eviction> = HashMap::new();
    let mut freed = 0;
    let mut chosen = Vec::new();
    for image in images.iter().filter(|i| !i.pinned) {
        if used <= cap {
            break;
        }
        for d in unique(&image.blobs) {
            let n = refcount.get_mut(d).expect("counted above");
            *n -= 1;
            if *n == 0 {
                used -= size(d);
                freed += size(d);
            }
        }
        chosen.push(image);
    }
    for image in chosen {
        let e = evictions.entry(image.repo.clone()).or_default();
        e.tags.extend(image.tag.clone());
        e.digests.extend(image.manifests.iter().cloned());
    }
    (evictions, freed)
}

fn unique(digests: &[Digest]) -> HashSet<&Digest> {
    digests.iter().collect()
}

#[cfg(test)]
mod tests;
