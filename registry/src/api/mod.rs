//! The HTTP API: `/v2/` and everything below it. axum cannot route a wildcard in
//! the middle of a path (repository names contain `/`), so `/v2/{*rest}` is parsed
//! here into an [`Endpoint`] and dispatched to one module per API resource.

mod access;
mod base;
mod blobs;
mod catalog;
pub mod error;
mod limits;
mod manifests;
mod pagination;
pub mod ranges;
mod referrers;
mod tags;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::TryStreamExt;
use percent_encoding::percent_decode_str;

use crate::auth::{Auth, Identity, Lookups};
use crate::config::Config;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::Policy;
use crate::mirror::Mirrors;
use crate::names::{RepoName, UploadId};
use crate::observe::{Health, Metrics};
use crate::storage::{ByteStream, Storage};

/// Everything a request handler needs.
pub struct App {
    pub config: Config,
    pub policy: Arc<Policy>,
    pub storage: Arc<dyn Storage>,
    pub mirrors: Mirrors,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    limits: limits::Limits,
}

impl App {
    pub fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Arc<Self>, String> {
        let policy = Arc::new(Policy::new(&config.manifests)?);
        let mirrors = Mirrors::new(&config.mirrors, &policy, &metrics.mirror_requests, &metrics.mirror_upstream_bytes)
            .map_err(|e| format!("mirrors: {e}"))?;
        let limits = limits::Limits::new(&config.limits, metrics.uploads_in_flight.clone());
        let auth = Auth::new(&config.auth, Lookups::of(&metrics.auth_cache)).map_err(|e| e.to_string())?;
        Ok(Arc::new(App { config, policy, storage, mirrors, auth, metrics, health, limits }))
    }

    fn check_writable(&self) -> Result<()> {
        if self.config.read_only {
            return Err(Error::Unsupported("this registry is read-only".into()));
        }
        Ok(())
    }

    /// Mirrored repositories hold copies of the upstream's: no client writes them.
    fn check_not_mirrored(&self, repo: &RepoName) -> Result<()> {
        match self.mirrors.find(repo) {
            Some((mirror, _)) => {
                Err(Error::Denied(format!("repository {repo} mirrors {}; it is read-only", mirror.upstream_url())))
            }
            None => Ok(()),
        }
    }

    fn check_deletable(&self) -> Result<()> {
        self.check_writable()?;
        if !self.config.delete_enabled {
            return Err(Error::Unsupported("deletes are disabled on this registry".into()));
        }
        Ok(())
    }
}

/// The API, with the probes, and the metrics unless they have a listener of
/// their own ([`side_router`]).
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/v2", get(base::get))
        .route("/v2/", get(base::get))
        .route("/v2/{*rest}", any(dispatch))
        .route("/healthz", get(base::health))
        .route("/readyz", get(base::ready));
    let metrics = &app.config.metrics;
    if metrics.enabled && metrics.listen.is_none() {
        router = router.route(&metrics.path, get(base::metrics));
    }
    router
        .fallback(|| async { Error::NotFound })
        .layer(axum::middleware::map_response(api_version_header))
        .with_state(app)
}

/// What `metrics.listen` serves: the metrics and the probes, nothing of the API.
pub fn side_router(app: Arc<App>) -> Router {
    let mut router = Router::new().route("/healthz", get(base::health)).route("/readyz", get(base::ready));
    if app.config.metrics.enabled {
        router = router.route(&app.config.metrics.path, get(base::metrics));
    }
    router.fallback(|| async { Error::NotFound }).with_state(app)
}

async fn api_version_header(mut response: Response) -> Response {
    response.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    response
}

/// The API resource a `/v2/...` path names.
#[derive(Debug, PartialEq)]
enum Endpoint {
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, String),
    Blob(RepoName, String),
    UploadStart(RepoName),
    Upload(RepoName, UploadId),
    Referrers(RepoName, String),
}

impl Endpoint {
    /// The repository a request with `method` writes, if it writes one.
    fn written(&self, method: &Method) -> Option<&RepoName> {
        match (self, method) {
            (Endpoint::Manifest(r, _) | Endpoint::Blob(r, _), &Method::PUT | &Method::DELETE) => Some(r),
            (Endpoint::UploadStart(r) | Endpoint::Upload(r, _), _) => Some(r),
            _ => None,
        }
    }

    /// Puts the repository and the reference into the request's span (when
    /// anything wants spans).
    fn record_in_span(&self) {
        let span = tracing::Span::current();
        if span.is_disabled() {
            return;
        }
        let (repo, reference) = match self {
            Endpoint::Catalog => return,
            Endpoint::Tags(r) | Endpoint::UploadStart(r) => (r, None),
            Endpoint::Manifest(r, s) | Endpoint::Blob(r, s) | Endpoint::Referrers(r, s) => (r, Some(s.as_str())),
            Endpoint::Upload(r, id) => {
                span.record("reference", tracing::field::display(id));
                (r, None)
            }
        };
        span.record("repository", repo.as_str());
        if let Some(reference) = reference {
            span.record("reference", reference);
        }
    }
}

fn decode(segment: &str) -> Result<String> {
    percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::NameInvalid("path is not valid UTF-8".into()))
}

fn name(segments: &[&str]) -> Result<RepoName> {
    let decoded: Vec<String> = segments.iter().map(|s| decode(s)).collect::<Result<_>>()?;
    decoded.join("/").parse()
}

/// Parses the part of the path after `/v2/`, from the right, since repository
/// names may themselves contain `blobs`, `manifests` or `tags`.
fn parse_path(rest: &str) -> Result<Endpoint> {
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let s: Vec<&str> = rest.split('/').collect();
    let n = s.len();
    let last = || decode(s[n - 1]);
    Ok(match s.as_slice() {
        [.., "tags", "list"] if n >= 3 => Endpoint::Tags(name(&s[..n - 2])?),
        [.., "blobs", "uploads", ""] if n >= 4 => Endpoint::UploadStart(name(&s[..n - 3])?),
        [.., "blobs", "uploads"] if n >= 3 => Endpoint::UploadStart(name(&s[..n - 2])?),
        [.., "blobs", "uploads", _] if n >= 4 => Endpoint::Upload(name(&s[..n - 3])?, last()?.parse()?),
        [.., "blobs", _] if n >= 3 => Endpoint::Blob(name(&s[..n - 2])?, last()?),
        [.., "manifests", _] if n >= 3 => Endpoint::Manifest(name(&s[..n - 2])?, last()?),
        [.., "referrers", _] if n >= 3 => Endpoint::Referrers(name(&s[..n - 2])?, last()?),
        _ => return Err(Error::NotFound),
    })
}

/// The parts of a request the resource handlers read.
pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Vec<(String, String)>,
    pub body: Body,
    /// Who sent the request (checked before the handler runs).
    pub identity: Identity,
}

impl Req {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn params<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Content-Length` the client announced, if any.
    pub fn content_length(&self) -> Result<Option<u64>> {
        self.header(header::CONTENT_LENGTH)
            .map(|v| v.trim().parse().map_err(|_| Error::BadRequest(format!("invalid Content-Length {v:?}"))))
            .transpose()
    }

    /// True when the request certainly carries no body.
    pub fn body_is_empty(&self) -> bool {
        axum::body::HttpBody::size_hint(&self.body).exact() == Some(0)
    }

    /// The body as a stream that ends with an error after `idle` without data.
    pub fn into_stream(self, idle: std::time::Duration) -> ByteStream {
        Box::pin(limits::with_idle_timeout(self.body.into_data_stream().map_err(std::io::Error::other), idle))
    }
}

async fn dispatch(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let rest = parts.uri.path().strip_prefix("/v2/").unwrap_or_default().to_owned();
    let query =
        parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let req = Req { method: parts.method, headers: parts.headers, query, body, identity: Identity::Anonymous };
    route(&app, &rest, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn route(app: &App, rest: &str, mut req: Req) -> Result<Response> {
    let endpoint = parse_path(rest)?;
    endpoint.record_in_span();
    let method = req.method.clone();
    // An open registry checks nothing: no scope is built on its hot path.
    if !app.auth.is_off()
        && let Some(scope) = access::scope(&endpoint, &method)
    {
        req.identity = access::check(app, &req.headers, &scope).await?;
    }
    if let Some(repo) = endpoint.written(&method) {
        app.check_not_mirrored(repo)?;
    }
    match (endpoint, method) {
        (Endpoint::Catalog, Method::GET) => catalog::list(app, req).await,
        (Endpoint::Tags(repo), Method::GET) => tags::list(app, &repo, req).await,
        (Endpoint::Manifest(repo, r), Method::GET) => manifests::get(app, &repo, &r, req, false).await,
        (Endpoint::Manifest(repo, r), Method::HEAD) => manifests::get(app, &repo, &r, req, true).await,
        (Endpoint::Manifest(repo, r), Method::PUT) => manifests::put(app, &repo, &r, req).await,
        (Endpoint::Manifest(repo, r), Method::DELETE) => manifests::delete(app, &repo, &r, req).await,
        (Endpoint::Blob(repo, d), Method::GET) => blobs::get(app, &repo, &d, req, false).await,
        (Endpoint::Blob(repo, d), Method::HEAD) => blobs::get(app, &repo, &d, req, true).await,
        (Endpoint::Blob(repo, d), Method::DELETE) => blobs::delete(app, &repo, &d, req).await,
        (Endpoint::UploadStart(repo), Method::POST) => uploads::start(app, &repo, req).await,
        (Endpoint::Upload(repo, id), Method::GET) => uploads::status(app, &repo, id).await,
        (Endpoint::Upload(repo, id), Method::PATCH) => uploads::patch(app, &repo, id, req).await,
        (Endpoint::Upload(repo, id), Method::PUT) => uploads::put(app, &repo, id, req).await,
        (Endpoint::Upload(repo, id), Method::DELETE) => uploads::cancel(app, &repo, id).await,
        (Endpoint::Referrers(repo, d), Method::GET) => referrers::list(app, &repo, &d, req).await,
        (_, method) => Err(Error::Unsupported(format!("method {method} is not allowed on this endpoint"))),
    }
}

pub fn parse_digest(s: &str) -> Result<Digest> {
    s.parse()
}

pub fn upload_location(repo: &RepoName, id: UploadId) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// The `Range` header of upload responses: the inclusive range received so far.
/// Like Distribution, an empty upload reports `0-0`.
pub fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("_catalog").unwrap(), Endpoint::Catalog);
        assert_eq!(parse_path("a/b/tags/list").unwrap(), Endpoint::Tags(repo("a/b")));
        assert_eq!(parse_path("a/blobs/uploads/").unwrap(), Endpoint::UploadStart(repo("a")));
        assert_eq!(parse_path("a/blobs/uploads").unwrap(), Endpoint::UploadStart(repo("a")));
        let id = "0d7e0b3e-51a4-4b5c-9a36-4e2a2b4fb3a1";
        assert_eq!(
            parse_path(&format!("a/blobs/uploads/{id}")).unwrap(),
            Endpoint::Upload(repo("a"), id.parse().unwrap())
        );
        assert!(matches!(parse_path("a/blobs/uploads/x"), Err(Error::UploadUnknown)));
        assert_eq!(parse_path("a/blobs/sha256%3Aab").unwrap(), Endpoint::Blob(repo("a"), "sha256:ab".into()));
        assert_eq!(
            parse_path("manifests/blobs/manifests/latest").unwrap(),
            Endpoint::Manifest(repo("manifests/blobs"), "latest".into())
        );
        assert_eq!(parse_path("a/referrers/d").unwrap(), Endpoint::Referrers(repo("a"), "d".into()));
        assert!(matches!(parse_path("a/b"), Err(Error::NotFound)));
        assert!(matches!(parse_path("%2e%2e/manifests/x"), Err(Error::NameInvalid(_))));
        assert!(matches!(parse_path("../manifests/x"), Err(Error::NameInvalid(_))));
        assert!(matches!(parse_path("A/manifests/x"), Err(Error::NameInvalid(_))));
    }
}
