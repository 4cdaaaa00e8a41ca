//! Pull-through mirrors: repositories under a configured prefix are copies of
//! another registry's. A pull answers from storage when it can and otherwise
//! fetches from the upstream, storing what it fetched:
//! - manifests by digest are kept for good; a tag is trusted for the mirror's
//!   TTL, then checked with one HEAD;
//! - a blob streams to the first client while it is written and verified; its
//!   last bytes go out only once the whole blob matched its digest;
//! - concurrent pulls of one missing thing make one upstream request;
//! - when the upstream fails, what is cached is served (stale if error).
//!
//! Mirrored repositories are read-only to clients (the API refuses writes).

mod blobs;
mod challenge;
mod flight;
mod manifests;
mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;

pub use blobs::BlobAnswer;
use flight::Flights;
use upstream::Upstream;

use crate::config::{MirrorConfig, mirror_for};
use crate::digest::Digest;
use crate::manifest::Policy;
use crate::names::{RepoName, Tag};
use crate::observe::metrics::{MirrorBytesLabels, MirrorLabels};
use crate::storage;

/// Blob downloads from one upstream at once; more wait their turn.
const FETCH_SLOTS: usize = 32;
/// Tags whose last check is remembered; past it the oldest half is forgotten
/// (they are checked again on their next pull).
const MAX_CHECKED_TAGS: usize = 100_000;
/// After a failed check, a stale tag is served this long before the next try.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(30);

/// A mirror that cannot be set up: the registry does not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("the CA file {0} holds no usable certificate: {1}")]
    Ca(PathBuf, String),
    #[error("the upstream client: {0}")]
    Client(String),
}

/// Why a fetch from the upstream gave nothing to serve. Cloned to every client
/// of a coalesced fetch.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the upstream does not have it")]
    NotFound,
    #[error("the upstream cannot be reached: {0}")]
    Unreachable(String),
    #[error("the upstream answered HTTP {0}")]
    Status(u16),
    #[error("the upstream refused the mirror: {0}")]
    Refused(String),
    #[error("the upstream's answer exceeds {0} bytes")]
    TooLarge(u64),
    #[error("the upstream sent content that does not match its digest")]
    DigestMismatch,
    #[error("the upstream sent an invalid manifest: {0}")]
    Invalid(String),
    #[error("storing what the upstream sent: {0}")]
    Storage(Arc<storage::Error>),
    #[error("too many downloads from the upstream at once; retry later")]
    Busy,
    #[error("the fetch failed")]
    Crashed,
}

impl FetchError {
    /// A short name of the kind of failure (a span's `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::NotFound => "not_found",
            FetchError::Unreachable(_) => "unreachable",
            FetchError::Status(_) => "status",
            FetchError::Refused(_) => "refused",
            FetchError::TooLarge(_) => "too_large",
            FetchError::DigestMismatch => "digest_mismatch",
            FetchError::Invalid(_) => "invalid",
            FetchError::Storage(_) => "storage",
            FetchError::Busy => "busy",
            FetchError::Crashed => "crashed",
        }
    }
}

impl From<storage::Error> for FetchError {
    fn from(e: storage::Error) -> Self {
        match e {
            storage::Error::DigestMismatch => FetchError::DigestMismatch,
            e => FetchError::Storage(Arc::new(e)),
        }
    }
}

/// The counters of one mirror, labelled with its prefix.
struct Meter {
    requests: Family<MirrorLabels, Counter>,
    bytes: Counter,
    prefix: String,
}

impl Meter {
    fn count(&self, kind: &'static str, result: &'static str) {
        self.requests.get_or_create(&MirrorLabels { mirror: self.prefix.clone(), kind, result }).inc();
    }
}

pub struct Mirror {
    pub config: MirrorConfig,
    upstream: Upstream,
    /// The `Accept` header sent upstream: every manifest type this registry serves.
    accept: String,
    max_manifest: u64,
    manifests: Arc<Flights<(RepoName, String), manifests::Found>>,
    blobs: Arc<Flights<(RepoName, Digest), Result<u64, FetchError>>>,
    /// When each tag is due for its next check upstream.
    due: Mutex<HashMap<(RepoName, Tag), Instant>>,
    fetch_slots: Semaphore,
    meter: Meter,
}

impl Mirror {
    fn tag_fresh(&self, repo: &RepoName, tag: &Tag) -> bool {
        let due = self.due.lock().unwrap();
        due.get(&(repo.clone(), tag.clone())).is_some_and(|at| Instant::now() < *at)
    }

    fn tag_checked(&self, repo: &RepoName, tag: &Tag, trust: Duration) {
        let mut due = self.due.lock().unwrap();
        if due.len() >= MAX_CHECKED_TAGS {
            let now = Instant::now();
            due.retain(|_, at| *at > now);
            if due.len() >= MAX_CHECKED_TAGS {
                due.clear();
            }
        }
        due.insert((repo.clone(), tag.clone()), Instant::now() + trust);
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.tag_ttl_secs)
    }

    pub fn upstream_url(&self) -> &str {
        self.upstream.base()
    }
}

/// Every configured mirror.
#[derive(Default)]
pub struct Mirrors {
    list: Vec<Arc<Mirror>>,
}

impl Mirrors {
    pub fn new(
        configs: &[MirrorConfig],
        policy: &Policy,
        requests: &Family<MirrorLabels, Counter>,
        bytes: &Family<MirrorBytesLabels, Counter>,
    ) -> Result<Self, SetupError> {
        let mut list = Vec::new();
        for config in configs {
            let prefix = config.prefix.clone();
            for kind in ["manifest", "blob"] {
                for result in ["hit", "miss", "linked", "revalidated", "stale", "coalesced", "error"] {
                    drop(requests.get_or_create(&MirrorLabels { mirror: prefix.clone(), kind, result }));
                }
            }
            let meter = Meter {
                requests: requests.clone(),
                bytes: bytes.get_or_create(&MirrorBytesLabels { mirror: prefix.clone() }).clone(),
                prefix,
            };
            list.push(Arc::new(Mirror {
                config: config.clone(),
                upstream: Upstream::new(config)?,
                accept: policy.accept_header(),
                max_manifest: policy.max_size(),
                manifests: Arc::default(),
                blobs: Arc::default(),
                due: Mutex::default(),
                fetch_slots: Semaphore::new(FETCH_SLOTS),
                meter,
            }));
        }
        Ok(Mirrors { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The mirror that owns `repo`, with the repository's name upstream.
    pub fn find(&self, repo: &RepoName) -> Option<(&Arc<Mirror>, String)> {
        if self.list.is_empty() {
            return None;
        }
        self.list.iter().find_map(|m| {
            let (config, rest) = mirror_for(std::slice::from_ref(&m.config), repo.as_str())?;
            Some((m, config.upstream_name(rest)))
        })
    }
}
