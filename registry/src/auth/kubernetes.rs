//! Kubernetes tokens and RBAC: a TokenReview says who a token belongs to (and
//! that it was issued for our audience), a SubjectAccessReview whether that
//! identity may do what it asks. The registry's ServiceAccount needs exactly
//! `create` on both (the built-in ClusterRole `system:auth-delegator`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use tokio::sync::{OnceCell, Semaphore};

use super::AuthError;
use super::scope::{GROUP, RbacTarget};
use crate::config::KubernetesAuthConfig;

/// Reviews of each kind in flight at once: a burst of new tokens queues here
/// instead of flooding the API server, and strangers spraying tokens (token
/// reviews) cannot hold up the access reviews of clients already known.
const MAX_REVIEWS: usize = 64;
/// How long a request waits for a review slot or for the API server.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Kubernetes {
    audience: String,
    kubeconfig: Option<PathBuf>,
    client: OnceCell<kube::Client>,
    token_reviews: Semaphore,
    access_reviews: Semaphore,
}

impl Kubernetes {
    pub fn new(config: &KubernetesAuthConfig) -> Kubernetes {
        Kubernetes {
            audience: config.audience.clone(),
            kubeconfig: config.kubeconfig.clone(),
            client: OnceCell::new(),
            token_reviews: Semaphore::new(MAX_REVIEWS),
            access_reviews: Semaphore::new(MAX_REVIEWS),
        }
    }

    /// The API client, made on first use (and again after a failure), so a
    /// registry starts even while the API server is unreachable.
    pub async fn client(&self) -> Result<&kube::Client, AuthError> {
        self.client
            .get_or_try_init(|| async {
                crate::kube_client::connect(self.kubeconfig.as_deref()).await.map_err(unavailable)
            })
            .await
    }

    /// Who `token` belongs to, or `None` when the API server does not accept it
    /// for our audience.
    pub async fn review_token(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        if expiry(token).is_some_and(|e| e <= SystemTime::now()) {
            return Ok(None);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client().await?.clone());
        let status =
            call(&self.token_reviews, api.create(&PostParams::default(), &review)).await?.status.unwrap_or_default();
        // An authenticator that ignores audiences answers without them: refuse,
        // or a token for the API server itself would be accepted here.
        let for_us = status.audiences.as_ref().is_some_and(|a| a.contains(&self.audience));
        Ok((status.authenticated == Some(true) && for_us).then(|| status.user.unwrap_or_default()))
    }

    /// Whether RBAC lets `user` do `target`.
    pub async fn allowed(&self, user: &UserInfo, target: &RbacTarget) -> Result<bool, AuthError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(target.resource.into()),
                    namespace: target.namespace.clone(),
                    name: target.name.clone(),
                    verb: Some(target.verb.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client().await?.clone());
        let status = call(&self.access_reviews, api.create(&PostParams::default(), &review)).await?.status;
        Ok(status.is_some_and(|s| s.allowed && s.denied != Some(true)))
    }
}

/// Runs one review in a slot of `slots`, within the review timeout.
async fn call<T>(slots: &Semaphore, request: impl Future<Output = kube::Result<T>>) -> Result<T, AuthError> {
    let _slot = tokio::time::timeout(REVIEW_TIMEOUT, slots.acquire())
        .await
        .map_err(|_| AuthError::Busy)?
        .map_err(|_| AuthError::Busy)?;
    tokio::time::timeout(REVIEW_TIMEOUT, request)
        .await
        .map_err(|_| unavailable("no answer in time"))?
        .map_err(unavailable)
}

/// The client learns only that the check could not be made; the cause (which
/// may name the registry's account or the API server) goes to the log.
fn unavailable(e: impl std::fmt::Display) -> AuthError {
    tracing::warn!(error = %e, "reviewing credentials with the Kubernetes API server failed");
    AuthError::Unavailable("credentials cannot be checked right now; retry later".into())
}

/// The `exp` claim of a JWT, read without checking the signature: only used
/// to refuse early and to cache no longer than the token lives. Tokens that are
/// not JWTs have none.
pub fn expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_, claims, _) = (parts.next()?, parts.next()?, parts.next()?);
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn reads_the_expiry_of_jwts_only() {
        assert_eq!(expiry(&jwt(r#"{"exp":100}"#)), Some(UNIX_EPOCH + Duration::from_secs(100)));
        assert_eq!(expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(expiry("opaque-static-token"), None);
        assert_eq!(expiry("a.!!!.c"), None);
        assert_eq!(expiry(&jwt(r#"{"exp":-1}"#)), None);
    }
}
