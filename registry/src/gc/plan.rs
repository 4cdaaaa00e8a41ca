//! What a collection deletes from one repository: pure, so every rule is tested
//! without a store.
//!
//! 1. Tags: with a rule that has `tags`, a tag stays when it matches a `keep`
//!    pattern, is among the `keepMostRecent` last pushed, was pushed or its
//!    manifest pulled within the given time, was pushed within the grace period,
//!    or is protected. Every other tag goes. Without such a rule every tag stays.
//! 2. Roots: the manifests of the kept tags, protected digests, and, unless the
//!    rule has `untaggedAfter`, every manifest; with it, those pushed more
//!    recently than that (or within the grace period).
//! 3. Everything a root reaches stays: an index's children, the referrers of a
//!    kept manifest, the subject of a kept referrer. The rest of the manifests go.
//! 4. Links to blobs no kept manifest references go (if old enough, which the
//!    store checks again when it removes them).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use super::evict::Eviction;
use crate::config::{RetentionRule, tag_matches};
use crate::digest::Digest;
use crate::storage::lifecycle::{RepoPlan, RepoSnapshot};

/// What a manifest points at, from its content.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct References {
    pub blobs: Vec<Digest>,
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
}

/// References a running workload holds in one repository.
#[derive(Clone, Debug, Default)]
pub struct Protected {
    pub tags: HashSet<String>,
    pub digests: HashSet<Digest>,
}

/// Everything a plan depends on besides the repository itself.
pub struct Inputs<'a> {
    pub rule: Option<&'a RetentionRule>,
    /// Report what the rule would delete, delete none of it.
    pub rule_dry_run: bool,
    pub protected: &'a Protected,
    pub now: SystemTime,
    /// Content and tags younger than this are kept whatever a rule says.
    pub cutoff: SystemTime,
    /// A mirror over its cap: tags that go and manifests that stop being roots.
    pub evict: Option<&'a Eviction>,
}

/// A repository's plan, and what the rule would have deleted in a dry run.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub plan: RepoPlan,
    /// In a rule dry run: the tags and manifests the rule would delete.
    pub would_delete: (Vec<String>, Vec<Digest>),
}

fn within(time: Option<SystemTime>, now: SystemTime, span: Option<crate::config::Span>) -> bool {
    match (time, span) {
        (Some(t), Some(span)) => now.duration_since(t).map_or(true, |age| age <= span.0),
        _ => false,
    }
}

/// The tags that stay under `inputs`.
fn kept_tags(snap: &RepoSnapshot, inputs: &Inputs, with_protected: bool) -> HashSet<String> {
    let mut kept = ruled_tags(snap, inputs, with_protected);
    if let Some(evict) = inputs.evict {
        kept.retain(|t| !evict.tags.contains(t));
    }
    kept
}

fn ruled_tags(snap: &RepoSnapshot, inputs: &Inputs, with_protected: bool) -> HashSet<String> {
    let Some(rules) = inputs.rule.and_then(|r| r.tags.as_ref()) else {
        return snap.tags.iter().map(|t| t.name.clone()).collect();
    };
    let pulled: HashMap<&Digest, Option<SystemTime>> = snap.manifests.iter().map(|m| (&m.digest, m.pulled)).collect();
    let mut newest: Vec<_> = snap.tags.iter().collect();
    newest.sort_by(|a, b| b.pushed.cmp(&a.pushed).then_with(|| a.name.cmp(&b.name)));
    let recent: HashSet<&str> =
        newest.iter().take(rules.keep_most_recent.unwrap_or(0) as usize).map(|t| t.name.as_str()).collect();
    snap.tags
        .iter()
        .filter(|t| {
            rules.keep.iter().any(|p| tag_matches(p, &t.name))
                || recent.contains(t.name.as_str())
                || within(Some(t.pushed), inputs.now, rules.keep_pushed_within)
                || within(pulled.get(&t.digest).copied().flatten(), inputs.now, rules.keep_pulled_within)
                || t.pushed >= inputs.cutoff
                || (with_protected && inputs.protected.tags.contains(&t.name))
        })
        .map(|t| t.name.clone())
        .collect()
}

/// The manifests reachable from `roots` through children, referrers and subjects.
fn reach(
    roots: Vec<&Digest>,
    refs: &HashMap<&Digest, References>,
    referrers: &HashMap<&Digest, Vec<&Digest>>,
) -> HashSet<Digest> {
    let mut reached: HashSet<Digest> = HashSet::new();
    let mut pending = roots;
    while let Some(d) = pending.pop() {
        if !refs.contains_key(d) || !reached.insert(d.clone()) {
            continue;
        }
        let r = &refs[d];
        pending.extend(r.children.iter());
        pending.extend(r.subject.iter());
        pending.extend(referrers.get(d).into_iter().flatten().copied());
    }
    reached
}

/// Decides what to delete. `references` reads a manifest's content; `None`
/// (unreadable content) keeps the manifest and every link of the repository.
pub fn decide(snap: &RepoSnapshot, references: impl Fn(usize) -> Option<References>, inputs: &Inputs) -> Decision {
    let parsed: Vec<Option<References>> = (0..snap.manifests.len()).map(&references).collect();
    let unreadable = parsed.iter().any(Option::is_none);
    let refs: HashMap<&Digest, References> =
        snap.manifests.iter().zip(&parsed).map(|(m, r)| (&m.digest, r.clone().unwrap_or_default())).collect();
    let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for (m, r) in snap.manifests.iter().zip(&parsed) {
        if let Some(subject) = r.as_ref().and_then(|r| r.subject.as_ref()) {
            referrers.entry(subject).or_default().push(&m.digest);
        }
    }
    let tags = kept_tags(snap, inputs, true);
    let unprotected_tags = kept_tags(snap, inputs, false);
    let untagged_after = inputs.rule.and_then(|r| r.untagged_after);
    let is_root = |i: usize, with_protected: bool| {
        let m = &snap.manifests[i];
        let evicted = inputs.evict.is_some_and(|e| e.digests.contains(&m.digest));
        (untagged_after.is_none() && !evicted)
            || parsed[i].is_none()
            || m.pushed >= inputs.cutoff
            || within(Some(m.pushed), inputs.now, untagged_after)
            || (with_protected && inputs.protected.digests.contains(&m.digest))
    };
    let roots = |with_protected: bool| -> Vec<&Digest> {
        let kept = if with_protected { &tags } else { &unprotected_tags };
        let tagged = snap.tags.iter().filter(move |t| kept.contains(&t.name)).map(|t| &t.digest);
        let protected = inputs.protected.digests.iter().filter(move |_| with_protected);
        let direct =
            (0..snap.manifests.len()).filter(|&i| is_root(i, with_protected)).map(|i| &snap.manifests[i].digest);
        tagged.chain(protected).chain(direct).collect()
    };
    // An unreadable manifest may be an index whose children cannot be known: keep all.
    let kept = match unreadable {
        true => snap.manifests.iter().map(|m| m.digest.clone()).collect(),
        false => reach(roots(true), &refs, &referrers),
    };
    let protected_kept = kept.len().saturating_sub(reach(roots(false), &refs, &referrers).len()) as u64;

    let mut dropped_tags: Vec<String> =
        snap.tags.iter().filter(|t| !tags.contains(&t.name)).map(|t| t.name.clone()).collect();
    let mut dropped: Vec<Digest> =
        snap.manifests.iter().filter(|m| !kept.contains(&m.digest)).map(|m| m.digest.clone()).collect();
    dropped_tags.sort();
    dropped.sort();
    let mut would_delete = (Vec::new(), Vec::new());
    if inputs.rule_dry_run {
        would_delete = (std::mem::take(&mut dropped_tags), std::mem::take(&mut dropped));
    }
    let gone: HashSet<&Digest> = dropped.iter().collect();
    let mut keep: BTreeSet<Digest> = BTreeSet::new();
    let mut kept_manifests = Vec::new();
    for m in snap.manifests.iter().filter(|m| !gone.contains(&m.digest)) {
        kept_manifests.push(m.digest.clone());
        keep.insert(m.digest.clone());
        keep.extend(refs[&m.digest].blobs.iter().cloned());
    }
    let links = if unreadable {
        keep.extend(snap.links.iter().map(|(d, _)| d.clone()));
        Vec::new()
    } else {
        snap.links.iter().filter(|(d, t)| !keep.contains(d) && *t < inputs.cutoff).map(|(d, _)| d.clone()).collect()
    };
    // A link too young to go keeps its blob.
    let going: HashSet<&Digest> = links.iter().collect();
    keep.extend(snap.links.iter().filter(|(d, _)| !going.contains(d)).map(|(d, _)| d.clone()));
    let keep = keep.into_iter().collect();
    Decision {
        plan: RepoPlan { tags: dropped_tags, manifests: dropped, links, keep, kept_manifests, protected_kept },
        would_delete,
    }
}

#[cfg(test)]
mod tests;
