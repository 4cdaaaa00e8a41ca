//! Who made a request.

use std::fmt;

use k8s_openapi::api::authentication::v1::UserInfo;

use super::cache;

#[derive(Clone, Debug, PartialEq)]
pub enum Identity {
    Anonymous,
    /// An htpasswd user.
    User(String),
    /// A Kubernetes identity from a TokenReview; `key` identifies it (user, uid,
    /// groups and extra) in the decision cache.
    Kubernetes {
        user: UserInfo,
        key: cache::Key,
    },
}

impl Identity {
    pub fn kubernetes(user: UserInfo) -> Identity {
        let key = cache::key(&[serde_json::to_vec(&user).unwrap_or_default().as_slice()]);
        Identity::Kubernetes { user, key }
    }
}

impl Identity {
    /// Where the identity comes from, for the audit trail.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Anonymous => "anonymous",
            Identity::User(_) => "htpasswd",
            Identity::Kubernetes { .. } => "kubernetes",
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::User(name) => write!(f, "{name}"),
            Identity::Kubernetes { user, .. } => f.write_str(user.username.as_deref().unwrap_or("unknown")),
        }
    }
}
