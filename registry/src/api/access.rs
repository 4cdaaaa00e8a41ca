//! The permission each request needs, checked before anything else is looked
//! at, so an unauthenticated client learns nothing about what the registry holds.

use axum::http::{HeaderMap, Method, header};

use super::{App, Endpoint};
use crate::auth::{AuthError, Identity, Scope};
use crate::config::Action;
use crate::error::{Error, Result};
use crate::observe::metrics::{Decision, DecisionLabels};

/// What `method` on `endpoint` asks for; `None` for methods no endpoint allows
/// (they are refused as unsupported, which reveals nothing).
pub fn scope(endpoint: &Endpoint, method: &Method) -> Option<Scope> {
    let action = match *method {
        Method::GET | Method::HEAD => match endpoint {
            Endpoint::Catalog => return Some(Scope::Catalog),
            Endpoint::Upload(..) => Action::Push,
            _ => Action::Pull,
        },
        Method::PUT | Method::POST | Method::PATCH => Action::Push,
        Method::DELETE => match endpoint {
            Endpoint::Upload(..) => Action::Push,
            _ => Action::Delete,
        },
        _ => return None,
    };
    let repo = match endpoint {
        Endpoint::Catalog => return None,
        Endpoint::Tags(r)
        | Endpoint::Manifest(r, _)
        | Endpoint::Blob(r, _)
        | Endpoint::UploadStart(r)
        | Endpoint::Upload(r, _)
        | Endpoint::Referrers(r, _) => r.clone(),
    };
    Some(Scope::Repository(repo, action))
}

/// Who the client is, if it may do `scope`; otherwise 401 or 403.
pub async fn check(app: &App, headers: &HeaderMap, scope: &Scope) -> Result<Identity> {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("\u{0}"));
    let checked = app.auth.check(authorization, scope).await;
    let decision = match &checked {
        Ok(_) => Some(Decision::allowed),
        Err(AuthError::Unauthenticated(_)) => Some(Decision::unauthenticated),
        Err(AuthError::Denied(_)) => Some(Decision::denied),
        // The check could not be made: no decision.
        Err(AuthError::Unavailable(_) | AuthError::Busy) => None,
    };
    if let Some(decision) = decision {
        app.metrics.access.get_or_create(&DecisionLabels { decision }).inc();
    }
    checked.map_err(|e| Error::from_auth(e, app.auth.realm()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> crate::names::RepoName {
        "ns/app".parse().unwrap()
    }

    #[test]
    fn every_endpoint_needs_the_right_action() {
        let id = crate::names::UploadId::random();
        let cases = [
            (Endpoint::Manifest(repo(), "v1".into()), Method::GET, Action::Pull),
            (Endpoint::Manifest(repo(), "v1".into()), Method::HEAD, Action::Pull),
            (Endpoint::Manifest(repo(), "v1".into()), Method::PUT, Action::Push),
            (Endpoint::Manifest(repo(), "v1".into()), Method::DELETE, Action::Delete),
            (Endpoint::Blob(repo(), "d".into()), Method::GET, Action::Pull),
            (Endpoint::Blob(repo(), "d".into()), Method::DELETE, Action::Delete),
            (Endpoint::UploadStart(repo()), Method::POST, Action::Push),
            (Endpoint::Upload(repo(), id), Method::GET, Action::Push),
            (Endpoint::Upload(repo(), id), Method::PATCH, Action::Push),
            (Endpoint::Upload(repo(), id), Method::DELETE, Action::Push),
            (Endpoint::Tags(repo()), Method::GET, Action::Pull),
            (Endpoint::Referrers(repo(), "d".into()), Method::GET, Action::Pull),
        ];
        for (endpoint, method, action) in cases {
            assert_eq!(scope(&endpoint, &method), Some(Scope::Repository(repo(), action)), "{endpoint:?} {method}");
        }
        assert_eq!(scope(&Endpoint::Catalog, &Method::GET), Some(Scope::Catalog));
        assert_eq!(scope(&Endpoint::Catalog, &Method::DELETE), None);
        assert_eq!(scope(&Endpoint::Tags(repo()), &Method::OPTIONS), None);
    }
}
