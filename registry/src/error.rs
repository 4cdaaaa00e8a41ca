//! The registry's one error type above storage. Every variant is a
//! distribution-spec error; `api/error.rs` maps each onto its code and HTTP
//! status, so handlers never pick status codes by hand.

use crate::digest::Digest;
use crate::storage;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    #[error("blob upload invalid: {0}")]
    UploadInvalid(String),
    /// Another request is writing the same upload session.
    #[error("the upload is being written by another request; retry when it has finished")]
    UploadBusy,
    /// A chunk that does not start where the upload currently ends; the client
    /// learns the current end from `Range` and where to continue from `Location`.
    #[error("chunk starts at byte {start} but the upload has {offset} bytes")]
    ChunkOutOfOrder { start: u64, offset: u64, location: Option<String> },
    /// A `Range` request outside the blob.
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    BlobRangeInvalid { size: u64 },
    #[error("provided digest did not match uploaded content")]
    DigestMismatch,
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    /// Every blob or manifest a pushed manifest references that the repository lacks.
    #[error("manifest references content unknown to this repository")]
    ManifestBlobUnknown(Vec<Digest>),
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
    /// A server-wide limit is reached (uploads, buffered manifests); retry later.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no such endpoint")]
    NotFound,
    /// Credentials are missing or wrong; the client is told how to log in.
    #[error("{message}")]
    Unauthorized { realm: String, message: String },
    /// The client is known but may not do this.
    #[error("{0}")]
    Denied(String),
    /// The filesystem under the storage is full; nothing of the failed write stays.
    #[error("the registry's storage is full")]
    InsufficientStorage,
    /// A service the registry depends on (the Kubernetes API server) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn manifest_unknown() -> Self {
        Error::ManifestUnknown("manifest unknown to registry".into())
    }
}

impl Error {
    /// An access check's refusal; `realm` goes into the challenge of a 401.
    pub fn from_auth(e: crate::auth::AuthError, realm: &str) -> Self {
        use crate::auth::AuthError as A;
        match e {
            A::Unauthenticated(message) => Error::Unauthorized { realm: realm.to_owned(), message },
            A::Denied(message) => Error::Denied(message),
            A::Unavailable(message) => Error::Unavailable(message),
            e @ A::Busy => Error::TooManyRequests(e.to_string()),
        }
    }
}

impl Error {
    /// A mirror's fetch that gave nothing to serve: what the upstream lacks is
    /// unknown here too; an upstream that failed is this server's trouble (503,
    /// with the reason), never the client's.
    pub fn from_fetch(e: crate::mirror::FetchError, blob: bool) -> Self {
        use crate::mirror::FetchError as F;
        match e {
            F::NotFound if blob => Error::BlobUnknown,
            F::NotFound => Error::ManifestUnknown("manifest unknown to the upstream registry".into()),
            F::Storage(e) => match std::sync::Arc::try_unwrap(e) {
                Ok(e) => e.into(),
                Err(e) if matches!(*e, storage::Error::StorageFull(_)) => Error::InsufficientStorage,
                Err(e) if matches!(*e, storage::Error::QuotaExceeded(_)) => Error::Denied(e.to_string()),
                Err(e) => Error::Internal(e.to_string()),
            },
            e => Error::Unavailable(format!("mirror: {e}")),
        }
    }
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        use storage::Error as S;
        match e {
            S::BlobUnknown => Error::BlobUnknown,
            S::UploadUnknown => Error::UploadUnknown,
            S::UploadBusy => Error::UploadBusy,
            S::ChunkOutOfOrder { start, offset } => Error::ChunkOutOfOrder { start, offset, location: None },
            e @ S::ChunkLength { .. } => Error::UploadInvalid(e.to_string()),
            e @ S::Busy(_) => Error::TooManyRequests(e.to_string()),
            S::DigestMismatch => Error::DigestMismatch,
            e @ S::Body(_) => Error::UploadInvalid(e.to_string()),
            S::ReferencesUnknown(missing) => Error::ManifestBlobUnknown(missing),
            S::QuotaExceeded(exceeded) => Error::Denied(exceeded.to_string()),
            S::StorageFull(e) => {
                // The client hears only that the storage is full; the operator, where.
                tracing::error!(error = %e, "the storage is full");
                Error::InsufficientStorage
            }
            e @ (S::Corrupt(..) | S::Io(_) | S::Task(_)) => Error::Internal(e.to_string()),
            // The bucket is down or unreachable: a retry may succeed.
            e @ S::Remote(_) => {
                tracing::error!(error = %e, "object storage request failed");
                Error::Unavailable(e.to_string())
            }
        }
    }
}
