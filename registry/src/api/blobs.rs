//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{App, Req, header_value, parse_digest, ranges};
use crate::auth::{self, AuditEvent};
use crate::error::{Error, Result};
use crate::mirror::BlobAnswer;
use crate::names::RepoName;
use crate::storage::ByteStream;

pub async fn get(app: &App, repo: &RepoName, digest: &str, req: Req, head: bool) -> Result<Response> {
    let digest = parse_digest(digest)?;
    let mut size = None;
    if let Some((mirror, upstream)) = app.mirrors.find(repo) {
        // The first client of a blob not yet stored gets it as it is fetched;
        // ranges and HEADs wait for the whole blob and are served from storage.
        let stream = !head && req.header(header::RANGE).is_none();
        let answer = mirror.blob(&app.storage, repo, &upstream, &digest, stream).await;
        match answer.map_err(|e| Error::from_fetch(e, true))? {
            BlobAnswer::Streaming { len, body } => return Ok(streamed(&digest, len, body)),
            BlobAnswer::Stored(stored) => size = Some(stored),
        }
    }
    let size = match size {
        Some(size) => size,
        None => app.storage.blob_size(repo, &digest).await?.ok_or(Error::BlobUnknown)?,
    };
    if !head && let Some(url) = app.storage.blob_url(repo, &digest).await? {
        return Ok(redirect(&url, &digest));
    }
    let range = ranges::range(req.header(header::RANGE), size)?;
    let (status, span) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..size),
    };
    let body = if head || span.is_empty() {
        Body::empty()
    } else {
        Body::from_stream(app.storage.blob_read(repo, &digest, span.clone()).await?)
    };
    let mut response = (status, body).into_response();
    blob_headers(&mut response, &digest, span.end - span.start);
    let h = response.headers_mut();
    if range.is_some() {
        h.insert(header::CONTENT_RANGE, header_value(&format!("bytes {}-{}/{size}", span.start, span.end - 1)));
    }
    Ok(response)
}

fn blob_headers(response: &mut Response, digest: &crate::digest::Digest, len: u64) {
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(header::CONTENT_TYPE, header_value("application/octet-stream"));
    h.insert("docker-content-digest", header_value(&digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    h.insert(header::ACCEPT_RANGES, header_value("bytes"));
}

/// A blob sent as a mirror fetches it. Its announced length makes a body that
/// ends early (the fetch failed) an error for the client, never a short blob.
fn streamed(digest: &crate::digest::Digest, len: u64, body: ByteStream) -> Response {
    let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
    blob_headers(&mut response, digest, len);
    response
}

pub async fn delete(app: &App, repo: &RepoName, digest: &str, req: Req) -> Result<Response> {
    app.check_deletable()?;
    let digest = parse_digest(digest)?;
    if !app.storage.blob_delete(repo, &digest).await? {
        return Err(Error::BlobUnknown);
    }
    auth::record(AuditEvent::DeleteBlob, &req.identity, repo, None, Some(&digest));
    Ok(StatusCode::ACCEPTED.into_response())
}

/// A blob GET answered with the object store's presigned URL: the client
/// downloads (and ranges) from the bucket directly.
fn redirect(url: &str, digest: &crate::digest::Digest) -> Response {
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(url));
    h.insert("docker-content-digest", header_value(&digest.to_string()));
    response
}
