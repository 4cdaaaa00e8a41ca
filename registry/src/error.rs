//! The one error type of the registry's HTTP boundary. Every variant maps onto a
//! distribution-spec error code and an HTTP status, so handlers never pick status
//! codes by hand.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    #[error("blob upload invalid: {0}")]
    UploadInvalid(String),
    /// A chunk that does not start where the upload currently ends; the client
    /// learns the current end from `Range` and where to continue from `Location`.
    #[error("chunk starts at byte {start} but the upload has {offset} bytes")]
    ChunkOutOfOrder { start: u64, offset: u64, location: String },
    /// A `Range` request outside the blob.
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    BlobRangeInvalid { size: u64 },
    #[error("provided digest did not match uploaded content")]
    DigestMismatch,
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("manifest references a blob or manifest unknown to this repository: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("{0}")]
    ManifestUnknown(String),
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no such endpoint")]
    NotFound,
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The distribution-spec error code and HTTP status of this error.
    pub fn code_and_status(&self) -> (&'static str, StatusCode) {
        use Error::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            UploadUnknown => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
            UploadInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
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
            Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            BadRequest(_) => ("UNSUPPORTED", StatusCode::BAD_REQUEST),
            NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND),
            Io(_) | Internal(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    pub fn manifest_unknown() -> Self {
        Error::ManifestUnknown("manifest unknown to registry".into())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, code, "request refused");
        }
        let extra: Vec<(header::HeaderName, String)> = match &self {
            Error::ChunkOutOfOrder { offset, location, .. } => {
                vec![(header::RANGE, crate::api::upload_range(*offset)), (header::LOCATION, location.clone())]
            }
            Error::BlobRangeInvalid { size } => vec![(header::CONTENT_RANGE, format!("bytes */{size}"))],
            _ => Vec::new(),
        };
        let body =
            serde_json::to_vec(&Body { errors: [Entry { code, message: self.to_string() }] }).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        for (name, value) in extra {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
