//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::limits::ManifestBudget;
use super::{App, Req, header_value};
use crate::auth::{self, AuditEvent, Identity};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::negotiate::{self, Accepts, Outcome};
use crate::manifest::push::{self, Push};
use crate::manifest::{Kind, docker_manifest_list};
use crate::names::{Reference, RepoName, Tag};
use crate::storage::StoredManifest;

pub async fn get(app: &App, repo: &RepoName, reference: &str, req: Req, head: bool) -> Result<Response> {
    let reference: Reference = reference.parse()?;
    let by_tag = matches!(reference, Reference::Tag(_));
    let (digest, stored) = load(app, repo, &reference).await?.ok_or_else(Error::manifest_unknown)?;
    let accepts = Accepts::from_values(req.headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()));
    let (digest, stored) = match Kind::from_media_type(&stored.media_type) {
        Some((kind, _)) => match negotiate::decide(kind, accepts, by_tag)? {
            Outcome::Serve => (digest, stored),
            Outcome::DefaultPlatform => default_platform(app, repo, &stored, accepts).await?,
        },
        None => (digest, stored),
    };
    // Only for a manifest that exists and would be served: its ETag is the digest.
    if etag_matches(&req.headers, &digest) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, header_value(&format!("\"{digest}\"")));
        response.headers_mut().insert("docker-content-digest", header_value(&digest.to_string()));
        return Ok(response);
    }
    if !head {
        app.storage.record_pull(repo, &digest);
    }
    let len = stored.bytes.len();
    let body = if head { Body::empty() } else { Body::from(stored.bytes) };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&stored.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("docker-content-digest", header_value(&digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    Ok(response)
}

/// The manifest `reference` names: from storage, or through the repository's mirror.
async fn load(app: &App, repo: &RepoName, reference: &Reference) -> Result<Option<(Digest, StoredManifest)>> {
    if let Some((mirror, upstream)) = app.mirrors.find(repo) {
        let found = mirror.manifest(&app.storage, &app.policy, repo, &upstream, reference).await;
        return found.map(Some).map_err(|e| Error::from_fetch(e, false));
    }
    Ok(match reference {
        Reference::Digest(d) => app.storage.manifest_get(repo, d).await?.map(|m| (d.clone(), m)),
        Reference::Tag(t) => app.storage.tag_manifest(repo, t).await?,
    })
}

fn etag_matches(headers: &HeaderMap, digest: &Digest) -> bool {
    let wanted = digest.to_string();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|v| v == wanted || v == "*")
}

/// The linux/amd64 manifest of a Docker manifest list, for clients that cannot
/// read manifest lists.
async fn default_platform(
    app: &App,
    repo: &RepoName,
    list: &StoredManifest,
    accepts: Accepts,
) -> Result<(Digest, StoredManifest)> {
    let parsed = docker_manifest_list::parse(&list.bytes)?;
    let child = parsed
        .manifests
        .iter()
        .find(|c| {
            c.platform
                .as_ref()
                .is_some_and(|p| p.os == negotiate::DEFAULT_OS && p.architecture == negotiate::DEFAULT_ARCHITECTURE)
        })
        .ok_or_else(|| Error::ManifestUnknown("the manifest list has no linux/amd64 manifest".into()))?;
    let child = Reference::Digest(child.digest.clone());
    let (digest, stored) = load(app, repo, &child).await?.ok_or_else(Error::manifest_unknown)?;
    if let Some((kind, _)) = Kind::from_media_type(&stored.media_type) {
        negotiate::check_default_platform(kind, accepts)?;
    }
    Ok((digest, stored))
}

/// Reads a manifest body, refusing it as soon as it passes the size limit or the
/// server's budget for buffered manifests. The budget is held until the request
/// ends.
async fn read_limited(app: &App, req: Req) -> Result<(Bytes, ManifestBudget)> {
    let limit = app.policy.max_size();
    let too_large = || Error::TooLarge { what: "manifest", limit };
    if req.content_length()?.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut budget = app.limits.manifest_budget();
    let mut stream = req.into_stream(app.limits.body_idle);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::ManifestInvalid(format!("reading the request body: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        budget.take(chunk.len())?;
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), budget))
}

/// `?tag=` parameters one push may carry: each is a synced file written under the
/// repository's lock.
const MAX_TAGS: usize = 100;

pub async fn put(app: &App, repo: &RepoName, reference: &str, req: Req) -> Result<Response> {
    app.check_writable()?;
    let reference: Reference = reference.parse()?;
    if req.params("tag").count() > MAX_TAGS {
        return Err(Error::TagInvalid(format!("at most {MAX_TAGS} tag parameters per push")));
    }
    let tags: Vec<Tag> = req.params("tag").map(str::parse).collect::<Result<_>>()?;
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_owned);
    let who = req.identity.clone();
    let (bytes, _budget) = read_limited(app, req).await?;
    let manifest = Push { reference: &reference, tags, content_type: content_type.as_deref(), bytes };
    let pushed = push::push(app.storage.as_ref(), &app.policy, repo, manifest).await?;
    audit_push(&who, repo, &pushed);

    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(&format!("/v2/{repo}/manifests/{}", pushed.digest)));
    h.insert("docker-content-digest", header_value(&pushed.digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(subject) = &pushed.subject {
        h.insert("oci-subject", header_value(&subject.to_string()));
    }
    if matches!(reference, Reference::Digest(_)) {
        for tag in &pushed.tags {
            h.append("oci-tag", header_value(tag.as_str()));
        }
    }
    Ok(response)
}

/// One audit line for the manifest and one per tag it was given (the tag it
/// was pushed to included).
fn audit_push(who: &Identity, repo: &RepoName, pushed: &push::Pushed) {
    auth::record(AuditEvent::Push, who, repo, None, Some(&pushed.digest));
    for tag in &pushed.tags {
        auth::record(AuditEvent::Tag, who, repo, Some(tag.as_str()), Some(&pushed.digest));
    }
}

pub async fn delete(app: &App, repo: &RepoName, reference: &str, req: Req) -> Result<Response> {
    app.check_deletable()?;
    let reference: Reference = reference.parse()?;
    let deleted = match &reference {
        Reference::Tag(tag) => app.storage.tag_delete(repo, tag).await?,
        Reference::Digest(digest) => app.storage.manifest_delete(repo, digest).await?,
    };
    if !deleted {
        return Err(Error::manifest_unknown());
    }
    match &reference {
        Reference::Tag(tag) => auth::record(AuditEvent::DeleteTag, &req.identity, repo, Some(tag.as_str()), None),
        Reference::Digest(d) => auth::record(AuditEvent::DeleteManifest, &req.identity, repo, None, Some(d)),
    }
    Ok(StatusCode::ACCEPTED.into_response())
}
