//! Pull-through mirrors: repositories under a prefix are copies of another
//! registry's, fetched on first pull and served from storage after.

use std::path::PathBuf;
use std::sync::LazyLock;

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One repository path component or more, as repository names allow.
static PREFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$").unwrap());
/// A registry host as image references name it: a DNS name or IPv4 address
/// with an optional port (`docker.io`, `10.0.0.1:5443`).
static HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]{1,5})?$")
        .unwrap()
});

/// Longest a tag may be trusted: a day.
pub const MAX_TAG_TTL_SECS: u64 = 86_400;

/// An upstream registry mirrored under `prefix`: a pull of
/// `<prefix>/library/nginx:1.27` is answered from storage, or fetched from
/// `<url>/v2/library/nginx/manifests/1.27` and stored. Mirrored repositories
/// are read-only to clients: pushes and deletes are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    /// Repository path prefix that maps to the upstream, e.g. `docker.io`.
    pub prefix: String,
    /// The upstream's base URL, `https://registry-1.docker.io`; `http://` only
    /// for a registry on a trusted network.
    pub url: String,
    /// Docker Hub's rule: a name of one component (`nginx`) is `library/nginx`
    /// upstream. Absent: on when the prefix is `docker.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<bool>,
    /// The registry host as image references name it, which the node's
    /// container runtime looks up (`docker.io`); absent, the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_host: Option<String>,
    /// Files holding the upstream user name and password (a mounted Secret),
    /// sent as Basic credentials or traded for a Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM certificates of the authorities that sign the upstream's
    /// certificate, trusted besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Seconds a tag is served from the cache before the upstream is asked
    /// (one HEAD) whether it moved. Manifests by digest are never re-checked.
    #[serde(default = "default_tag_ttl")]
    #[schemars(with = "i64", range(min = 0, max = 86400))]
    pub tag_ttl_secs: u64,
    /// Bytes this mirror may hold; past it the collector evicts the
    /// least-recently pulled images that no running pod uses. Absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>", range(min = 1))]
    pub max_bytes: Option<u64>,
}

fn default_tag_ttl() -> u64 {
    300
}

impl MirrorConfig {
    /// A mirror of `url` under `prefix` with every default.
    pub fn new(prefix: &str, url: &str) -> Self {
        MirrorConfig {
            prefix: prefix.into(),
            url: url.into(),
            library: None,
            image_host: None,
            username_file: None,
            password_file: None,
            ca_file: None,
            tag_ttl_secs: default_tag_ttl(),
            max_bytes: None,
        }
    }

    /// Whether one-component names get `library/` upstream.
    pub fn library(&self) -> bool {
        self.library.unwrap_or(self.prefix == "docker.io")
    }

    /// The host image references use for this upstream.
    pub fn image_host(&self) -> &str {
        self.image_host.as_deref().unwrap_or(&self.prefix)
    }

    /// The upstream repository for `rest`, the part of a local name after the prefix.
    pub fn upstream_name(&self, rest: &str) -> String {
        if self.library() && !rest.contains('/') { format!("library/{rest}") } else { rest.to_owned() }
    }

    fn validate(&self) -> Result<(), String> {
        let what = format!("mirrors[{}]", self.prefix);
        if !PREFIX.is_match(&self.prefix) || self.prefix.len() > 128 {
            return Err(format!(
                "{what}: prefix must be repository path components (lower-case letters, digits, . _ -)"
            ));
        }
        let url = self.url.trim_end_matches('/');
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        if !rest.is_some_and(|r| HOST.is_match(r)) {
            return Err(format!("{what}: url {:?} must be http(s)://host[:port] with no path", self.url));
        }
        if self.image_host.as_deref().is_some_and(|h| !HOST.is_match(h)) {
            return Err(format!("{what}: imageHost must be host[:port]"));
        }
        if self.username_file.is_some() != self.password_file.is_some() {
            return Err(format!("{what}: usernameFile and passwordFile go together"));
        }
        if self.tag_ttl_secs > MAX_TAG_TTL_SECS {
            return Err(format!("{what}: tagTtlSecs is at most {MAX_TAG_TTL_SECS}"));
        }
        if self.max_bytes == Some(0) {
            return Err(format!("{what}: maxBytes must be positive (leave it out for no cap)"));
        }
        Ok(())
    }
}

/// The mirror whose prefix owns `repository`, with the rest of the name.
pub fn mirror_for<'a>(mirrors: &'a [MirrorConfig], repository: &'a str) -> Option<(&'a MirrorConfig, &'a str)> {
    mirrors.iter().find_map(|m| {
        let rest = repository.strip_prefix(m.prefix.as_str())?.strip_prefix('/')?;
        Some((m, rest))
    })
}

/// Checks each mirror, and that no prefix lies inside another (a repository
/// would have two upstreams).
pub fn validate_mirrors(mirrors: &[MirrorConfig]) -> Result<(), String> {
    for (i, m) in mirrors.iter().enumerate() {
        m.validate()?;
        for other in &mirrors[..i] {
            let nested = |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
            if nested(&m.prefix, &other.prefix) || nested(&other.prefix, &m.prefix) {
                return Err(format!("mirrors: prefixes {} and {} overlap", other.prefix, m.prefix));
            }
            if m.image_host() == other.image_host() {
                return Err(format!("mirrors: two mirrors for the image host {}", m.image_host()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_upstream() {
        let hub = MirrorConfig::new("docker.io", "https://registry-1.docker.io");
        let ghcr = MirrorConfig::new("ghcr.io", "https://ghcr.io");
        let mirrors = [hub.clone(), ghcr.clone()];
        let (m, rest) = mirror_for(&mirrors, "docker.io/nginx").unwrap();
        assert_eq!((m.prefix.as_str(), m.upstream_name(rest)), ("docker.io", "library/nginx".into()));
        assert_eq!(hub.upstream_name("bitnami/redis"), "bitnami/redis");
        assert_eq!(ghcr.upstream_name("app"), "app", "library/ is Docker Hub's rule only");
        assert!(mirror_for(&mirrors, "docker.io").is_none(), "the prefix alone names no upstream repository");
        assert!(mirror_for(&mirrors, "docker.iox/a").is_none());
        assert!(mirror_for(&mirrors, "mine/app").is_none());
        assert_eq!(hub.image_host(), "docker.io");
    }

    #[test]
    fn bad_mirrors_are_refused() {
        let ok = MirrorConfig::new("up", "https://10.0.0.1:5443");
        assert!(validate_mirrors(std::slice::from_ref(&ok)).is_ok());
        let bad = |f: &dyn Fn(&mut MirrorConfig)| {
            let mut m = ok.clone();
            f(&mut m);
            validate_mirrors(&[m]).unwrap_err()
        };
        assert!(bad(&|m| m.prefix = "Up".into()).contains("prefix"));
        assert!(bad(&|m| m.url = "ftp://x".into()).contains("url"));
        assert!(bad(&|m| m.url = "https://x/v2".into()).contains("url"));
        assert!(bad(&|m| m.username_file = Some("/u".into())).contains("together"));
        assert!(bad(&|m| m.tag_ttl_secs = 90_000).contains("tagTtlSecs"));
        assert!(bad(&|m| m.image_host = Some("a b".into())).contains("imageHost"));
        let nested = [ok.clone(), MirrorConfig::new("up/inner", "https://b")];
        assert!(validate_mirrors(&nested).unwrap_err().contains("overlap"));
        let siblings = [ok.clone(), MirrorConfig::new("upper", "https://b")];
        assert!(validate_mirrors(&siblings).is_ok());
    }
}
