//! What can go wrong below the HTTP layer. The API maps these onto the
//! distribution-spec's codes; storage itself knows nothing of HTTP.

use crate::digest::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    /// Another request (in this process or another replica) is writing the session.
    #[error("the upload is being written by another request; retry when it has finished")]
    UploadBusy,
    #[error("chunk starts at byte {start} but the upload has {offset} bytes")]
    ChunkOutOfOrder { start: u64, offset: u64 },
    /// A lock stayed taken (another request or replica) past the wait.
    #[error("{0}; retry shortly")]
    Busy(&'static str),
    #[error("chunk announced {announced} bytes but carried {received}")]
    ChunkLength { announced: u64, received: u64 },
    #[error("provided digest did not match uploaded content")]
    DigestMismatch,
    /// The request body failed or went quiet; what was acknowledged before stays.
    #[error("request body ended early: {0}")]
    Body(std::io::Error),
    /// References of a manifest that the repository does not hold, all of them.
    #[error("manifest references content unknown to this repository: {}", list(.0))]
    ReferencesUnknown(Vec<Digest>),
    #[error("{0} is damaged: {1}")]
    Corrupt(String, String),
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage task failed: {0}")]
    Task(String),
}

fn list(digests: &[Digest]) -> String {
    digests.iter().map(Digest::to_string).collect::<Vec<_>>().join(", ")
}
