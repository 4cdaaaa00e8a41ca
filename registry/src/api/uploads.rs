//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (monolithic, mount or session
//! start), then `PATCH`, `PUT`, `GET` and `DELETE` on `/v2/<name>/blobs/uploads/<id>`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{App, Req, header_value, parse_digest, ranges, upload_location, upload_range};
use crate::auth::Scope;
use crate::config::Action;
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::names::{RepoName, UploadId};
use crate::storage::Chunk;

fn created(repo: &RepoName, digest: &Digest) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(&format!("/v2/{repo}/blobs/{digest}")));
    h.insert("docker-content-digest", header_value(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    response
}

fn in_progress(app: &App, status: StatusCode, repo: &RepoName, id: UploadId, offset: u64) -> Response {
    let mut response = status.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(&upload_location(repo, id)));
    h.insert(header::RANGE, header_value(&upload_range(offset)));
    h.insert("docker-upload-uuid", header_value(&id.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    if app.config.uploads.chunk_min_length > 0 {
        h.insert("oci-chunk-min-length", HeaderValue::from(app.config.uploads.chunk_min_length));
    }
    response
}

pub async fn start(app: &App, repo: &RepoName, req: Req) -> Result<Response> {
    app.check_writable()?;
    if let Some(mount) = req.param("mount") {
        let digest = parse_digest(mount)?;
        let from = req.param("from").map(str::parse::<RepoName>).transpose()?;
        // A mount reads the source: only from a repository the client may pull,
        // and, without `from`, only where no access is checked at all (the blob
        // could come from any repository).
        let mounted = match &from {
            Some(from) if app.auth.may(&req.identity, &Scope::Repository(from.clone(), Action::Pull)).await => {
                app.storage.blob_mount(repo, &digest, Some(from)).await?
            }
            None if app.config.uploads.anonymous_mount && app.auth.is_off() => {
                app.storage.blob_mount(repo, &digest, None).await?
            }
            _ => false,
        };
        if mounted {
            return Ok(created(repo, &digest));
        }
        // Not readable from there: fall back to a normal upload session (202).
    } else if let Some(digest) = req.param("digest") {
        let digest = parse_digest(digest)?;
        let _slot = app.limits.upload()?;
        // The announced length lets a quota refuse the push before its body is read.
        let len = req.content_length()?;
        app.storage.blob_put_sized(repo, &digest, len, req.into_stream(app.limits.body_idle)).await?;
        return Ok(created(repo, &digest));
    }
    let algorithm = match req.param("digest-algorithm") {
        Some(a) => a.parse()?,
        None => Algorithm::Sha256,
    };
    let id = app.storage.upload_start(repo, algorithm).await?;
    Ok(in_progress(app, StatusCode::ACCEPTED, repo, id, 0))
}

/// The chunk a request carries, from its `Content-Range` and `Content-Length`.
fn chunk(req: &Req) -> Result<Chunk> {
    let length = req.content_length()?;
    match req.header(header::CONTENT_RANGE) {
        Some(value) => ranges::content_range(value, length),
        None => Ok(Chunk { start: None, len: length }),
    }
}

/// Tells the client of an out-of-order chunk where the session is.
fn located(e: crate::storage::Error, repo: &RepoName, id: UploadId) -> Error {
    match Error::from(e) {
        Error::ChunkOutOfOrder { start, offset, .. } => {
            Error::ChunkOutOfOrder { start, offset, location: Some(upload_location(repo, id)) }
        }
        other => other,
    }
}

pub async fn patch(app: &App, repo: &RepoName, id: UploadId, req: Req) -> Result<Response> {
    app.check_writable()?;
    let chunk = chunk(&req)?;
    let _slot = app.limits.upload()?;
    let body = req.into_stream(app.limits.body_idle);
    let offset = app.storage.upload_append(repo, id, chunk, body).await.map_err(|e| located(e, repo, id))?;
    Ok(in_progress(app, StatusCode::ACCEPTED, repo, id, offset))
}

pub async fn put(app: &App, repo: &RepoName, id: UploadId, req: Req) -> Result<Response> {
    app.check_writable()?;
    let digest = req
        .param("digest")
        .ok_or_else(|| Error::DigestInvalid("the digest query parameter is required to finish an upload".into()))?;
    let digest = parse_digest(digest)?;
    let _slot = app.limits.upload()?;
    let last = if req.body_is_empty() { None } else { Some((chunk(&req)?, req.into_stream(app.limits.body_idle))) };
    app.storage.upload_finish(repo, id, &digest, last).await.map_err(|e| located(e, repo, id))?;
    Ok(created(repo, &digest))
}

pub async fn status(app: &App, repo: &RepoName, id: UploadId) -> Result<Response> {
    let offset = app.storage.upload_offset(repo, id).await?;
    Ok(in_progress(app, StatusCode::NO_CONTENT, repo, id, offset))
}

pub async fn cancel(app: &App, repo: &RepoName, id: UploadId) -> Result<Response> {
    app.check_writable()?;
    app.storage.upload_cancel(repo, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
