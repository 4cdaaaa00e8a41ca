//! Who a client is and whether it may do what it asks. Knows nothing of HTTP
//! beyond the value of the `Authorization` header; `api/` turns the outcome into
//! 401 (with the challenge) or 403.
//!
//! Order: no credentials are anonymous; Basic credentials of an htpasswd user are
//! checked against the file; any other Basic password, and any Bearer token, is
//! a Kubernetes token. Anonymous clients get what `auth.anonymous` allows;
//! everyone else gets that too, plus what their rules or RBAC grant.

mod audit;
mod cache;
mod credentials;
mod htpasswd;
mod identity;
mod kubernetes;
pub mod scope;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use audit::{Event as AuditEvent, record};
pub use cache::Lookups;
pub use credentials::Credentials;
pub use identity::Identity;
pub use scope::Scope;

use crate::config::{Action, Anonymous, AuthConfig};
use cache::TtlCache;
use htpasswd::Htpasswd;
use kubernetes::Kubernetes;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials where they are needed, or credentials that are wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known identity without the permission.
    #[error("{0}")]
    Denied(String),
    /// The API server cannot be asked; not the client's fault.
    #[error("{0}")]
    Unavailable(String),
    /// Too many reviews waiting.
    #[error("too many credential checks in flight; retry shortly")]
    Busy,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth.htpasswd: {0}")]
    Htpasswd(#[from] htpasswd::HtpasswdError),
}

pub struct Auth {
    config: AuthConfig,
    htpasswd: Option<Htpasswd>,
    kubernetes: Option<Kubernetes>,
    /// Credential hash to who it is (or that it was refused).
    identities: TtlCache<Result<Identity, AuthError>>,
    /// Identity and scope to the decision.
    decisions: TtlCache<bool>,
}

impl Auth {
    /// `lookups` counts the hits and misses of its caches.
    pub fn new(config: &AuthConfig, lookups: cache::Lookups) -> Result<Arc<Auth>, AuthSetupError> {
        let htpasswd = config.htpasswd.as_ref().map(|h| Htpasswd::load(&h.path)).transpose()?;
        let ttl = Duration::from_secs(config.cache_secs);
        let auth = Arc::new(Auth {
            config: config.clone(),
            htpasswd,
            kubernetes: config.kubernetes.as_ref().map(Kubernetes::new),
            identities: TtlCache::new(ttl, lookups.clone()),
            decisions: TtlCache::new(ttl, lookups),
        });
        if auth.htpasswd.is_some() {
            tokio::spawn(reload(Arc::downgrade(&auth)));
        }
        Ok(auth)
    }

    /// True when nothing is checked: no way to log in and strangers may do anything.
    pub fn is_off(&self) -> bool {
        self.config.is_open() && !self.config.has_authenticators()
    }

    pub fn realm(&self) -> &str {
        &self.config.realm
    }

    /// Who the client is, if it may do `scope`.
    pub async fn check(&self, authorization: Option<&str>, scope: &Scope) -> Result<Identity, AuthError> {
        if self.is_off() {
            return Ok(Identity::Anonymous);
        }
        let identity = self.authenticate(authorization).await?;
        if anonymous_allows(self.config.anonymous, scope) {
            return Ok(identity);
        }
        if identity == Identity::Anonymous {
            return Err(AuthError::Unauthenticated("authentication required".into()));
        }
        if self.authorize(&identity, scope).await? {
            Ok(identity)
        } else {
            Err(AuthError::Denied(format!("{identity} may not {}", describe(scope))))
        }
    }

    async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        let Some(header) = authorization else {
            return Ok(Identity::Anonymous);
        };
        // Looked up before parsing: a known header costs one hash and one lookup.
        let key = cache::key(&[header.as_bytes()]);
        if let Some(known) = self.identities.get(&key) {
            return known;
        }
        let credentials = Credentials::parse(Some(header)).map_err(|e| AuthError::Unauthenticated(e.to_string()))?;
        if credentials == Credentials::None {
            return Ok(Identity::Anonymous);
        }
        let fingerprint = self.htpasswd.as_ref().map(Htpasswd::fingerprint);
        let (outcome, valid_for) = self.identify(credentials).await;
        // Not remembered: failures to check, and answers given against an
        // htpasswd file that changed meanwhile (its reload already forgot the rest).
        let current = fingerprint == self.htpasswd.as_ref().map(Htpasswd::fingerprint);
        if current && !matches!(outcome, Err(AuthError::Unavailable(_) | AuthError::Busy)) {
            self.identities.insert(key, outcome.clone(), valid_for);
        }
        outcome
    }

    /// Checks credentials; also says how long the answer may be remembered.
    async fn identify(&self, credentials: Credentials) -> (Result<Identity, AuthError>, Option<Duration>) {
        let wrong = || AuthError::Unauthenticated("invalid username, password or token".into());
        let token = match credentials {
            Credentials::None => return (Ok(Identity::Anonymous), None),
            Credentials::Basic { user, password } => {
                let found = self.htpasswd.as_ref().and_then(|h| Some((h, h.users().hash(&user)?.to_owned())));
                if let Some((htpasswd, hash)) = found {
                    return match htpasswd.verify(password, hash).await {
                        Some(true) => (Ok(Identity::User(user)), None),
                        Some(false) => (Err(wrong()), None),
                        None => (Err(AuthError::Busy), None),
                    };
                }
                password
            }
            Credentials::Bearer(token) => token,
        };
        let Some(kubernetes) = &self.kubernetes else {
            return (Err(wrong()), None);
        };
        let valid_for = kubernetes::expiry(&token).map(|e| e.duration_since(SystemTime::now()).unwrap_or_default());
        match kubernetes.review_token(&token).await {
            Ok(Some(user)) => (Ok(Identity::kubernetes(user)), valid_for),
            Ok(None) => (Err(wrong()), valid_for),
            Err(e) => (Err(e), None),
        }
    }

    async fn authorize(&self, identity: &Identity, scope: &Scope) -> Result<bool, AuthError> {
        match identity {
            Identity::Anonymous => Ok(false),
            Identity::User(name) => {
                let rules = self.config.htpasswd.as_ref().map(|h| h.access.as_slice()).unwrap_or_default();
                Ok(scope::rules_allow(rules, name, scope))
            }
            Identity::Kubernetes { user, key } => {
                let Some(target) = scope::rbac_target(scope) else {
                    return Ok(true);
                };
                let decision_key = cache::key(&[key, scope.describe().as_bytes()]);
                if let Some(allowed) = self.decisions.get(&decision_key) {
                    return Ok(allowed);
                }
                let kubernetes = self.kubernetes.as_ref().ok_or(AuthError::Denied("Kubernetes auth is off".into()))?;
                let allowed = kubernetes.allowed(user, &target).await?;
                self.decisions.insert(decision_key, allowed, None);
                Ok(allowed)
            }
        }
    }

    /// Whether an authenticated identity may also read from `repo` (a cross-repository mount's source).
    pub async fn may(&self, identity: &Identity, scope: &Scope) -> bool {
        self.is_off()
            || anonymous_allows(self.config.anonymous, scope)
            || self.authorize(identity, scope).await.unwrap_or(false)
    }
}

fn anonymous_allows(policy: Anonymous, scope: &Scope) -> bool {
    match policy {
        Anonymous::All => true,
        Anonymous::Pull => matches!(scope, Scope::Repository(_, Action::Pull)),
        Anonymous::None => false,
    }
}

fn describe(scope: &Scope) -> String {
    match scope {
        Scope::Base => "use this registry".into(),
        Scope::Catalog => "list repositories".into(),
        Scope::Repository(repo, action) => format!("{} {repo}", format!("{action:?}").to_lowercase()),
    }
}

/// Re-reads the htpasswd file every few seconds while the registry runs; a
/// change forgets every remembered identity, so a removed user is out at once.
async fn reload(auth: std::sync::Weak<Auth>) {
    let mut every = tokio::time::interval(htpasswd::RELOAD_EVERY);
    let mut last_error = None;
    loop {
        every.tick().await;
        let Some(auth) = auth.upgrade() else { return };
        let Some(h) = &auth.htpasswd else { return };
        let path = h.path().to_owned();
        let result = {
            let auth = auth.clone();
            tokio::task::spawn_blocking(move || auth.htpasswd.as_ref().map(|h| h.reload())).await
        };
        match result {
            Ok(Some(Ok(true))) => {
                auth.identities.clear();
                last_error = None;
                tracing::info!(path = %path.display(), "htpasswd users reloaded");
            }
            Ok(Some(Err(e))) if last_error.as_ref() != Some(&e.to_string()) => {
                tracing::warn!(error = %e, "htpasswd file not reloaded; keeping the previous users");
                last_error = Some(e.to_string());
            }
            _ => {}
        }
    }
}
