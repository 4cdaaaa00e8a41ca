//! Who may do what (`auth`) and how the connection is encrypted (`tls`).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Authentication and authorization. With no authenticator configured and
/// `anonymous: all` (the standalone default) the registry is open, as before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthConfig {
    /// What a client that sends no credentials may do.
    pub anonymous: Anonymous,
    /// The realm named in `WWW-Authenticate: Basic realm="..."`.
    pub realm: String,
    /// Users and bcrypt password hashes from an htpasswd file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<HtpasswdConfig>,
    /// Kubernetes tokens, checked with TokenReview; access decided by RBAC
    /// through SubjectAccessReview.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuthConfig>,
    /// Seconds an identity or an access decision is remembered. A revoked
    /// RoleBinding or a deleted ServiceAccount may be honoured this long.
    #[schemars(with = "i64", range(min = 0, max = 300))]
    pub cache_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: Anonymous::All,
            realm: "berth".into(),
            htpasswd: None,
            kubernetes: None,
            cache_secs: 10,
        }
    }
}

impl AuthConfig {
    /// True when a stranger may push and delete.
    pub fn is_open(&self) -> bool {
        self.anonymous == Anonymous::All
    }

    /// True when at least one way to log in is configured.
    pub fn has_authenticators(&self) -> bool {
        self.htpasswd.is_some() || self.kubernetes.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.cache_secs > 300 {
            return Err("auth.cacheSecs is at most 300".into());
        }
        if self.realm.is_empty() || self.realm.contains(['"', '\\']) || self.realm.chars().any(char::is_control) {
            return Err("auth.realm must be non-empty, without quotes, backslashes or control characters".into());
        }
        if self.anonymous == Anonymous::None && !self.has_authenticators() {
            return Err("auth.anonymous: none needs htpasswd or kubernetes, or nobody could use the registry".into());
        }
        if let Some(k) = &self.kubernetes
            && k.audience.is_empty()
        {
            return Err("auth.kubernetes.audience must not be empty".into());
        }
        if let Some(h) = &self.htpasswd {
            for rule in &h.access {
                if rule.users.is_empty() || rule.repositories.is_empty() || rule.actions.is_empty() {
                    return Err("auth.htpasswd.access: every rule names users, repositories and actions".into());
                }
            }
        }
        Ok(())
    }
}

/// What anonymous clients may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Nothing: every request needs credentials.
    None,
    /// Pull (manifests, blobs, tags, referrers); not the catalog.
    Pull,
    /// Everything, pushes and deletes included: for throwaway dev setups.
    #[default]
    All,
}

/// An action on a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs, push manifests and tags.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HtpasswdConfig {
    /// The htpasswd file (`user:$2y$...` lines, bcrypt only). Re-read when it
    /// changes, e.g. when the kubelet updates a mounted Secret.
    pub path: PathBuf,
    /// Who may do what. Empty: every user may pull, push and delete everywhere.
    pub access: Vec<AccessRule>,
}

impl Default for HtpasswdConfig {
    fn default() -> Self {
        HtpasswdConfig { path: PathBuf::from("/etc/berth/htpasswd/htpasswd"), access: Vec::new() }
    }
}

/// Grants `actions` on the repositories matching `repositories` to `users`.
/// Rules add up; what no rule grants is denied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    /// User names; `*` is every htpasswd user.
    pub users: Vec<String>,
    /// Repository patterns: `team-a/*` matches every repository below `team-a/`,
    /// `*` every repository, anything else exactly one.
    pub repositories: Vec<String>,
    pub actions: Vec<Action>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct KubernetesAuthConfig {
    /// The audience a token must be issued for (`kubectl create token --audience`).
    /// A token for the API server's own audience is refused, so a registry
    /// token cannot be replayed against the cluster and the other way round.
    pub audience: String,
    /// A kubeconfig for reaching the API server; empty means the pod's own
    /// ServiceAccount (in cluster) or `KUBECONFIG`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

impl Default for KubernetesAuthConfig {
    fn default() -> Self {
        KubernetesAuthConfig { audience: "berth-registry".into(), kubeconfig: None }
    }
}

/// HTTPS with HTTP/2 through ALPN. Both files are re-read when they change;
/// connections already open keep their certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (`tls.crt` of a `kubernetes.io/tls` Secret).
    pub cert_file: PathBuf,
    /// PEM private key (`tls.key`).
    pub key_file: PathBuf,
}
