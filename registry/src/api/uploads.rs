//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (monolithic, mount or session
//! start), then `PATCH`, `PUT`, `GET` and `DELETE` on `/v2/<name>/blobs/uploads/<id>`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{App, Req, header_value, parse_digest, upload_location, upload_range};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::names::RepoName;
use crate::storage::Chunk;

fn created(repo: &RepoName, digest: &Digest) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(&format!("/v2/{repo}/blobs/{digest}")));
    h.insert("docker-content-digest", header_value(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    response
}

fn in_progress(app: &App, status: StatusCode, repo: &RepoName, id: &str, offset: u64) -> Response {
    let mut response = status.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, header_value(&upload_location(repo, id)));
    h.insert(header::RANGE, header_value(&upload_range(offset)));
    h.insert("docker-upload-uuid", header_value(id));
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
        let mounted = match &from {
            Some(from) => app.storage.blob_mount(repo, &digest, Some(from)).await?,
            None if app.config.uploads.anonymous_mount => app.storage.blob_mount(repo, &digest, None).await?,
            None => false,
        };
        if mounted {
            return Ok(created(repo, &digest));
        }
        // Not readable from there: fall back to a normal upload session (202).
    } else if let Some(digest) = req.param("digest") {
        let digest = parse_digest(digest)?;
        app.storage.blob_put(repo, &digest, req.into_stream()).await?;
        return Ok(created(repo, &digest));
    }
    let algorithm = match req.param("digest-algorithm") {
        Some(a) => a.parse()?,
        None => Algorithm::Sha256,
    };
    let id = app.storage.upload_start(repo, algorithm).await?;
    Ok(in_progress(app, StatusCode::ACCEPTED, repo, &id, 0))
}

/// Reads `Content-Range: <start>-<end>` (also with a `bytes ` prefix or `/<total>`
/// suffix, as some clients send it) and checks it against `Content-Length`.
fn chunk(req: &Req) -> Result<Chunk> {
    let length = req.content_length()?;
    let Some(value) = req.header(header::CONTENT_RANGE) else {
        return Ok(Chunk { start: None, len: length });
    };
    let malformed = || Error::UploadInvalid(format!("malformed Content-Range {value:?}, expected <start>-<end>"));
    let spec = value.trim().trim_start_matches("bytes").trim_start_matches(['=', ' ']);
    let spec = spec.split('/').next().unwrap_or("");
    let (start, end) = spec.split_once('-').ok_or_else(malformed)?;
    let start: u64 = start.trim().parse().map_err(|_| malformed())?;
    let end: u64 = end.trim().parse().map_err(|_| malformed())?;
    if end < start {
        return Err(malformed());
    }
    let len = end - start + 1;
    if length.is_some_and(|l| l != len) {
        return Err(Error::UploadInvalid(format!("Content-Range {value:?} does not match Content-Length")));
    }
    Ok(Chunk { start: Some(start), len: Some(len) })
}

pub async fn patch(app: &App, repo: &RepoName, id: &str, req: Req) -> Result<Response> {
    app.check_writable()?;
    let chunk = chunk(&req)?;
    let offset = app.storage.upload_append(repo, id, chunk, req.into_stream()).await?;
    Ok(in_progress(app, StatusCode::ACCEPTED, repo, id, offset))
}

pub async fn put(app: &App, repo: &RepoName, id: &str, req: Req) -> Result<Response> {
    app.check_writable()?;
    let digest = req
        .param("digest")
        .ok_or_else(|| Error::DigestInvalid("the digest query parameter is required to finish an upload".into()))?;
    let digest = parse_digest(digest)?;
    let last = if req.body_is_empty() { None } else { Some((chunk(&req)?, req.into_stream())) };
    app.storage.upload_finish(repo, id, &digest, last).await?;
    Ok(created(repo, &digest))
}

pub async fn status(app: &App, repo: &RepoName, id: &str) -> Result<Response> {
    let offset = app.storage.upload_offset(repo, id).await?;
    Ok(in_progress(app, StatusCode::NO_CONTENT, repo, id, offset))
}

pub async fn cancel(app: &App, repo: &RepoName, id: &str) -> Result<Response> {
    app.check_writable()?;
    app.storage.upload_cancel(repo, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
