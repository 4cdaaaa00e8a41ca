//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`

use std::ops::Range;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{App, Req, header_value, parse_digest};
use crate::error::{Error, Result};
use crate::names::RepoName;

pub async fn get(app: &App, repo: &RepoName, digest: &str, req: Req, head: bool) -> Result<Response> {
    let digest = parse_digest(digest)?;
    let size = app.storage.blob_size(repo, &digest).await?.ok_or(Error::BlobUnknown)?;
    let range = requested_range(&req.headers, size)?;
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
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, (span.end - span.start).into());
    h.insert(header::CONTENT_TYPE, header_value("application/octet-stream"));
    h.insert("docker-content-digest", header_value(&digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    h.insert(header::ACCEPT_RANGES, header_value("bytes"));
    if range.is_some() {
        h.insert(header::CONTENT_RANGE, header_value(&format!("bytes {}-{}/{size}", span.start, span.end - 1)));
    }
    Ok(response)
}

/// A single `bytes=` range within a blob of `size` bytes. Ranges this server does
/// not serve (several ranges, other units, malformed) are ignored, as HTTP allows;
/// a range outside the blob or ending before it starts is refused with 416.
fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<Range<u64>>> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else { return Ok(None) };
        if suffix == 0 {
            return Err(Error::BlobRangeInvalid { size });
        }
        size.saturating_sub(suffix)..size
    } else {
        let Ok(start) = first.parse::<u64>() else { return Ok(None) };
        let end = if last.is_empty() {
            size
        } else {
            let Ok(last) = last.parse::<u64>() else { return Ok(None) };
            if last < start {
                return Err(Error::BlobRangeInvalid { size });
            }
            last.saturating_add(1).min(size)
        };
        if start >= size {
            return Err(Error::BlobRangeInvalid { size });
        }
        start..end
    };
    // A suffix of an empty blob selects nothing: unsatisfiable, as RFC 9110 says.
    if range.is_empty() {
        return Err(Error::BlobRangeInvalid { size });
    }
    Ok(Some(range))
}

pub async fn delete(app: &App, repo: &RepoName, digest: &str) -> Result<Response> {
    app.check_deletable()?;
    let digest = parse_digest(digest)?;
    if !app.storage.blob_delete(repo, &digest).await? {
        return Err(Error::BlobUnknown);
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn range(v: &str, size: u64) -> Result<Option<Range<u64>>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        requested_range(&h, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some(0..10));
        assert_eq!(range("bytes=90-", 100).unwrap(), Some(90..100));
        assert_eq!(range("bytes=-10", 100).unwrap(), Some(90..100));
        assert_eq!(range("bytes=95-200", 100).unwrap(), Some(95..100));
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(range("items=0-1", 100).unwrap(), None);
        assert_eq!(range("bytes=x-1", 100).unwrap(), None);
        assert!(range("bytes=100-", 100).is_err());
        assert!(range("bytes=-0", 100).is_err());
        assert!(range("bytes=50-0", 100).is_err());
        assert!(range("bytes=-1", 0).is_err());
        assert!(range("bytes=0-", 0).is_err());
    }
}
