//! The storage lifecycle: garbage collection, retention rules and quotas.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration written as `90s`, `30m`, `12h` or `7d` (units may be combined: `1h30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(secs: u64) -> Span {
        Span(Duration::from_secs(secs))
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        if nanos != 0 {
            return write!(f, "{}ms", self.0.as_millis());
        }
        match secs {
            0 => f.write_str("0s"),
            s if s % 86400 == 0 => write!(f, "{}d", s / 86400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Span, String> {
        humantime::parse_duration(s).map(Span).map_err(|e| format!("{s:?} is not a duration like 90s, 12h or 7d: {e}"))
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Span {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Span".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ns|us|ms|s|m|h|d|w))+$",
            "description": "A duration such as 90s, 30m, 12h or 7d."
        })
    }
}

/// Online garbage collection. A collection marks everything reachable from the
/// repositories' manifests (index children, referrers and their subjects
/// included) and deletes what nothing references once it is older than
/// `gracePeriod`, while pushes and pulls go on. One collector runs at a time
/// across every process sharing the storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Time between scheduled collections; `null`, collections run only on
    /// demand. Absent, the default: once a day. (Written out even when `null`:
    /// skipped, it would read back as the default.)
    pub interval: Option<Span>,
    /// Unreferenced content younger than this is kept: a layer uploaded before
    /// the manifest that will reference it, a tag pushed a moment ago.
    pub grace_period: Span,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// A file of image references (`repo:tag` or `repo@digest`, one per line)
    /// that are never deleted, whatever a retention rule says. Read before every
    /// collection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected_file: Option<PathBuf>,
    /// Under the operator: where protected references and collection requests
    /// come from, and where the report goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<CollectorKubernetes>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            interval: Some(Span::secs(24 * 3600)),
            grace_period: Span::secs(3600),
            dry_run: false,
            protected_file: None,
            kubernetes: None,
        }
    }
}

/// Two ConfigMaps in the registry's namespace: the operator writes `requests`
/// (keys `protected`, one image reference per line, and `collect`, a value that
/// asks for a collection whenever it changes); the registry writes its usage
/// and the last collection's report into `report` (key `report.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectorKubernetes {
    pub namespace: String,
    pub requests: String,
    pub report: String,
    /// A kubeconfig for reaching the API server; absent means the pod's own account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

/// Rules that decide which tags and untagged manifests the collector deletes.
/// The first rule whose `repositories` match a repository applies to it; a
/// repository no rule matches keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Report what the rules would delete, delete none of it (unreferenced
    /// content is still collected unless `gc.dryRun`).
    pub dry_run: bool,
    pub rules: Vec<RetentionRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionRule {
    /// Repository patterns: `team-a/*` matches every repository below `team-a/`,
    /// `*` every repository, anything else exactly one.
    pub repositories: Vec<String>,
    /// Which tags stay; absent, every tag stays. A tag stays when any condition
    /// holds; the others are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagRetention>,
    /// Manifests that no kept tag reaches are deleted once they were pushed this
    /// long ago; absent, untagged manifests stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged_after: Option<Span>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TagRetention {
    /// Tag patterns that always stay, where `*` matches any characters: `v*`, `latest`.
    pub keep: Vec<String>,
    /// Keep this many most recently pushed tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 0, max = 1_000_000))]
    pub keep_most_recent: Option<u32>,
    /// Keep tags pushed within this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_pushed_within: Option<Span>,
    /// Keep tags whose manifest was pulled within this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_pulled_within: Option<Span>,
}

/// Byte limits. A push that would exceed one is refused with `DENIED`, at the
/// start of an upload when its size is known, otherwise while it streams.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// All content stored, counted once however many repositories share it; 0 is no limit.
    #[schemars(with = "i64", range(min = 0))]
    pub total_bytes: u64,
    /// What each repository holds (every blob it links, shared or not); 0 is no limit.
    #[schemars(with = "i64", range(min = 0))]
    pub repository_bytes: u64,
    /// Other limits for some repositories; the first match wins.
    pub overrides: Vec<QuotaOverride>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaOverride {
    /// Repository patterns, as in retention rules.
    pub repositories: Vec<String>,
    /// 0 is no limit.
    #[schemars(with = "i64", range(min = 0))]
    pub bytes: u64,
}

/// `*` matches everything, `team/*` everything below `team/`, anything else
/// exactly itself. The same patterns serve access rules, retention and quotas.
pub fn repository_matches(pattern: &str, repo: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) if prefix.ends_with('/') => repo.starts_with(prefix) && repo.len() > prefix.len(),
        _ => pattern == repo,
    }
}

/// `*` matches any run of characters, everything else itself.
pub fn tag_matches(pattern: &str, tag: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == tag;
    };
    if parts.len() == 1 {
        return pattern == tag;
    }
    let Some(mut rest) = tag.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl QuotaConfig {
    /// The limit for `repo`, `None` when it has none.
    pub fn repository_limit(&self, repo: &str) -> Option<u64> {
        let bytes = self
            .overrides
            .iter()
            .find(|o| o.repositories.iter().any(|p| repository_matches(p, repo)))
            .map_or(self.repository_bytes, |o| o.bytes);
        (bytes > 0).then_some(bytes)
    }
}

impl RetentionConfig {
    /// The rule that applies to `repo`.
    pub fn rule_for(&self, repo: &str) -> Option<&RetentionRule> {
        self.rules.iter().find(|r| r.repositories.iter().any(|p| repository_matches(p, repo)))
    }

    pub fn validate(&self) -> Result<(), String> {
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.repositories.is_empty() {
                return Err(format!("retention.rules[{i}].repositories must not be empty"));
            }
            if rule.tags.is_none() && rule.untagged_after.is_none() {
                return Err(format!("retention.rules[{i}] keeps everything: give tags or untaggedAfter"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print() {
        assert_eq!("90s".parse::<Span>().unwrap(), Span::secs(90));
        assert_eq!("1h30m".parse::<Span>().unwrap(), Span::secs(5400));
        assert_eq!("7d".parse::<Span>().unwrap(), Span::secs(7 * 86400));
        assert_eq!(Span::secs(5400).to_string(), "90m");
        assert_eq!(Span::secs(7 * 86400).to_string(), "7d");
        assert!("soon".parse::<Span>().is_err());
        assert!("-1s".parse::<Span>().is_err());
    }

    #[test]
    fn tag_patterns() {
        for (p, t) in [("v*", "v1.2"), ("*", ""), ("latest", "latest"), ("*-stable", "1-stable"), ("a*b*c", "axxbyc")] {
            assert!(tag_matches(p, t), "{p} {t}");
        }
        for (p, t) in [("v*", "1.2"), ("latest", "latest2"), ("*-stable", "stable"), ("a*b*c", "acb"), ("ab*ba", "aba")]
        {
            assert!(!tag_matches(p, t), "{p} {t}");
        }
    }

    #[test]
    fn quota_overrides_come_first() {
        let q = QuotaConfig {
            repository_bytes: 100,
            overrides: vec![QuotaOverride { repositories: vec!["big/*".into()], bytes: 0 }],
            ..QuotaConfig::default()
        };
        assert_eq!(q.repository_limit("team/app"), Some(100));
        assert_eq!(q.repository_limit("big/app"), None);
        assert_eq!(QuotaConfig::default().repository_limit("x"), None);
    }
}
