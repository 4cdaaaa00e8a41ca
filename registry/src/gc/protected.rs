//! Protected image references: `repo:tag`, `repo@digest` or `repo:tag@digest`,
//! one per line, as the operator collects them from the cluster's Pods (hosts
//! already stripped) or as a standalone user lists them in a file.

use std::collections::HashMap;

use super::plan::Protected;
use crate::digest::Digest;
use crate::names::{RepoName, Tag};

/// Protected references by repository.
#[derive(Clone, Debug, Default)]
pub struct ProtectedSet {
    by_repo: HashMap<String, Protected>,
    /// Lines that were not references, for the log.
    pub invalid: Vec<String>,
}

impl ProtectedSet {
    pub fn parse(text: &str) -> ProtectedSet {
        let mut set = ProtectedSet::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if !set.add(line) {
                set.invalid.push(line.to_owned());
            }
        }
        set
    }

    /// Adds one reference; `false` when it is not one.
    fn add(&mut self, reference: &str) -> bool {
        let (name_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => match d.parse::<Digest>() {
                Ok(d) => (n, Some(d)),
                Err(_) => return false,
            },
            None => (reference, None),
        };
        // A tag follows the last ':' after the last '/'.
        let slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[slash..].rfind(':') {
            Some(i) => (&name_tag[..slash + i], Some(&name_tag[slash + i + 1..])),
            None => (name_tag, None),
        };
        let (Ok(repo), tag) = (name.parse::<RepoName>(), tag.map(str::parse::<Tag>)) else {
            return false;
        };
        if matches!(tag, Some(Err(_))) || (tag.is_none() && digest.is_none()) {
            return false;
        }
        let entry = self.by_repo.entry(repo.as_str().to_owned()).or_default();
        if let Some(Ok(tag)) = tag {
            entry.tags.insert(tag.as_str().to_owned());
        }
        entry.digests.extend(digest);
        true
    }

    /// The references in `gc.protectedFile`, if one is configured; an error when
    /// it cannot be read (then nothing may be collected).
    pub async fn from_config(config: &crate::config::CollectorConfig) -> Result<ProtectedSet, String> {
        let Some(path) = &config.protected_file else {
            return Ok(ProtectedSet::default());
        };
        let text = tokio::fs::read_to_string(path).await.map_err(|e| format!("reading {}: {e}", path.display()))?;
        Ok(ProtectedSet::parse(&text))
    }

    pub fn merge(&mut self, other: ProtectedSet) {
        for (repo, p) in other.by_repo {
            let entry = self.by_repo.entry(repo).or_default();
            entry.tags.extend(p.tags);
            entry.digests.extend(p.digests);
        }
        self.invalid.extend(other.invalid);
    }

    pub fn for_repo(&self, repo: &RepoName) -> Protected {
        self.by_repo.get(repo.as_str()).cloned().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.by_repo.values().map(|p| p.tags.len() + p.digests.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn parses_tags_digests_and_both() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        let text = format!("team/app:v1\nteam/app@{d}\n\n# comment\nother:v2@{d}\nnot a ref\nnotag\nx@sha256:zz\n");
        let set = ProtectedSet::parse(&text);
        let app = set.for_repo(&"team/app".parse().unwrap());
        assert!(app.tags.contains("v1") && app.digests.contains(&d));
        let other = set.for_repo(&"other".parse().unwrap());
        assert!(other.tags.contains("v2") && other.digests.contains(&d));
        assert_eq!(set.invalid, vec!["not a ref", "notag", "x@sha256:zz"]);
        assert_eq!(set.len(), 4);
        assert!(set.for_repo(&"team".parse().unwrap()).tags.is_empty());
    }
}
