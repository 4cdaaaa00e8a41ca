//! How each [`Error`] goes over the wire: the distribution-spec code, the HTTP
//! status, and the headers some errors carry.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// The distribution-spec error code and HTTP status of an error.
pub fn code_and_status(e: &Error) -> (&'static str, StatusCode) {
    use Error::*;
    match e {
        BlobUnknown => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
        UploadUnknown => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
        UploadInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
        UploadBusy => ("BLOB_UPLOAD_INVALID", StatusCode::CONFLICT),
        ChunkOutOfOrder { .. } => ("BLOB_UPLOAD_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
        BlobRangeInvalid { .. } => ("BLOB_UNKNOWN", StatusCode::RANGE_NOT_SATISFIABLE),
        DigestMismatch | DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
        ManifestBlobUnknown(_) => ("MANIFEST_BLOB_UNKNOWN", StatusCode::BAD_REQUEST),
        ManifestInvalid(_) | TagInvalid(_) => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST),
        ManifestUnknown(_) => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
        NameInvalid(_) => ("NAME_INVALID", StatusCode::BAD_REQUEST),
        NameUnknown => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
        SizeInvalid(_) => ("SIZE_INVALID", StatusCode::BAD_REQUEST),
        TooLarge { .. } => ("SIZE_INVALID", StatusCode::PAYLOAD_TOO_LARGE),
        TooManyRequests(_) => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
        Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
        BadRequest(_) => ("UNSUPPORTED", StatusCode::BAD_REQUEST),
        NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND),
        Unauthorized { .. } => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
        Denied(_) => ("DENIED", StatusCode::FORBIDDEN),
        Unavailable(_) => ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
        // Distribution answers a full disk with 500; 507 tells the client (and the
        // operator reading logs) that retrying will not help until space is freed.
        // The spec has no code for it, so the code is UNKNOWN.
        InsufficientStorage => ("UNKNOWN", StatusCode::INSUFFICIENT_STORAGE),
        Internal(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
}

/// One entry per missing reference, so a client learns all of them at once.
fn entries(e: &Error, code: &'static str) -> Vec<Entry<'static>> {
    match e {
        Error::ManifestBlobUnknown(missing) => missing
            .iter()
            .map(|d| Entry {
                code,
                message: format!("manifest references {d}, which this repository does not hold"),
                detail: Some(serde_json::json!({ "digest": d.to_string() })),
            })
            .collect(),
        _ => vec![Entry { code, message: e.to_string(), detail: None }],
    }
}

/// Extra headers: where an upload stands, the size of a blob a range missed, when
/// to come back.
fn headers(e: &Error) -> Vec<(header::HeaderName, String)> {
    match e {
        Error::ChunkOutOfOrder { offset, location, .. } => {
            let mut h = vec![(header::RANGE, super::upload_range(*offset))];
            h.extend(location.clone().map(|l| (header::LOCATION, l)));
            h
        }
        Error::BlobRangeInvalid { size } => vec![(header::CONTENT_RANGE, format!("bytes */{size}"))],
        Error::TooManyRequests(_) | Error::UploadBusy => vec![(header::RETRY_AFTER, "1".into())],
        Error::Unavailable(_) => vec![(header::RETRY_AFTER, "5".into())],
        Error::Unauthorized { realm, .. } => vec![(header::WWW_AUTHENTICATE, format!("Basic realm=\"{realm}\""))],
        _ => Vec::new(),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (code, status) = code_and_status(&self);
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, code, "request refused");
        }
        let body = serde_json::to_vec(&Body { errors: entries(&self, code) }).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        for (name, value) in headers(&self) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
