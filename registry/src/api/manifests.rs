//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{App, Req, header_value};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::manifest::negotiate::{self, Accepts, Outcome};
use crate::manifest::{Kind, docker_manifest_list};
use crate::names::{Reference, RepoName, Tag};
use crate::storage::{Referrer, StoredManifest};

pub async fn get(app: &App, repo: &RepoName, reference: &str, req: Req, head: bool) -> Result<Response> {
    let reference: Reference = reference.parse()?;
    let (digest, by_tag) = match reference {
        Reference::Digest(d) => (d, false),
        Reference::Tag(t) => (app.storage.tag_get(repo, &t).await?.ok_or_else(Error::manifest_unknown)?, true),
    };
    let stored = app.storage.manifest_get(repo, &digest).await?.ok_or_else(Error::manifest_unknown)?;
    let accepts = Accepts::from_headers(&req.headers);
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
    let stored = app.storage.manifest_get(repo, &child.digest).await?.ok_or_else(Error::manifest_unknown)?;
    if let Some((kind, _)) = Kind::from_media_type(&stored.media_type) {
        negotiate::check_default_platform(kind, accepts)?;
    }
    Ok((child.digest.clone(), stored))
}

/// Reads a manifest body, refusing it as soon as it passes the size limit.
async fn read_limited(req: Req, limit: u64) -> Result<Bytes> {
    let too_large = || Error::TooLarge { what: "manifest", limit };
    if req.content_length()?.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut stream = req.into_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::ManifestInvalid(format!("reading the request body: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub async fn put(app: &App, repo: &RepoName, reference: &str, req: Req) -> Result<Response> {
    app.check_writable()?;
    let reference: Reference = reference.parse()?;
    let mut tags: Vec<Tag> = req.params("tag").map(str::parse).collect::<Result<_>>()?;
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_owned);
    let bytes = read_limited(req, app.policy.max_size()).await?;
    let digest = match &reference {
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), &bytes);
            if actual != *expected {
                return Err(Error::DigestInvalid(format!("manifest digest is {actual}, not {expected}")));
            }
            actual
        }
        Reference::Tag(tag) => {
            tags.insert(0, tag.clone());
            Digest::of(Algorithm::Sha256, &bytes)
        }
    };
    let parsed = app.policy.parse(content_type.as_deref(), &bytes)?;
    for blob in app.policy.required_blobs(&parsed) {
        if app.storage.blob_size(repo, blob).await?.is_none() {
            return Err(Error::ManifestBlobUnknown(blob.to_string()));
        }
    }
    for child in app.policy.required_manifests(&parsed) {
        if !app.storage.manifest_exists(repo, child).await? {
            return Err(Error::ManifestBlobUnknown(child.to_string()));
        }
    }
    let referrer = parsed
        .subject
        .clone()
        .map(|subject| Referrer { subject, descriptor: parsed.referrer_descriptor(&digest, bytes.len() as u64) });
    let stored = StoredManifest { media_type: parsed.media_type.to_owned(), bytes };
    app.storage.manifest_put(repo, &digest, stored, referrer).await?;
    for tag in &tags {
        app.storage.tag_set(repo, tag, &digest).await?;
    }

    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(&format!("/v2/{repo}/manifests/{digest}")));
    h.insert("docker-content-digest", header_value(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(subject) = &parsed.subject {
        h.insert("oci-subject", header_value(&subject.to_string()));
    }
    if matches!(reference, Reference::Digest(_)) {
        for tag in &tags {
            h.append("oci-tag", header_value(tag.as_str()));
        }
    }
    Ok(response)
}

pub async fn delete(app: &App, repo: &RepoName, reference: &str) -> Result<Response> {
    app.check_deletable()?;
    let deleted = match reference.parse()? {
        Reference::Tag(tag) => app.storage.tag_delete(repo, &tag).await?,
        Reference::Digest(digest) => app.storage.manifest_delete(repo, &digest).await?,
    };
    if !deleted {
        return Err(Error::manifest_unknown());
    }
    Ok(StatusCode::ACCEPTED.into_response())
}
