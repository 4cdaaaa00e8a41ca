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
    /// A push that would take a repository or the registry past its quota.
    #[error(transparent)]
    QuotaExceeded(Exceeded),
    /// The filesystem has no room left (ENOSPC, or EDQUOT for a user's disk
    /// quota): the write was undone, and others may succeed once space is freed.
    #[error("the registry's storage is full: {0}")]
    StorageFull(std::io::Error),
    /// Built only through `From`, which sorts out a full disk.
    #[error("storage I/O: {0}")]
    Io(std::io::Error),
    #[error("storage task failed: {0}")]
    Task(String),
    /// The object store failed or could not be reached (after its retries).
    #[error("object storage: {0}")]
    Remote(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if is_storage_full(&e) { Error::StorageFull(e) } else { Error::Io(e) }
    }
}

/// ENOSPC and EDQUOT, also when the platform reports them only by number.
fn is_storage_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The limit a push ran into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaScope {
    Repository(String),
    Total,
}

impl std::fmt::Display for QuotaScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaScope::Repository(repo) => write!(f, "the quota of repository {repo}"),
            QuotaScope::Total => f.write_str("the registry's total quota"),
        }
    }
}

/// Why a push was refused: which limit, what it stood at, what the push needed
/// (at least: a body of unknown length is refused as soon as it passes the room
/// left). It is also the payload of the `io::Error` a capped body fails with, so
/// the refusal survives the trip through a backend's body reader.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Exceeded {
    pub scope: QuotaScope,
    pub used: u64,
    pub limit: u64,
    pub needed: u64,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Exceeded { scope, used, limit, needed } = self;
        write!(f, "push refused by {scope}: {used} of {limit} bytes are used")?;
        if *needed > 0 {
            write!(f, " and this push needs at least {needed} more")?;
        }
        Ok(())
    }
}

fn list(digests: &[Digest]) -> String {
    digests.iter().map(Digest::to_string).collect::<Vec<_>>().join(", ")
}
