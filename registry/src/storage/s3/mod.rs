//! Storage in an S3-compatible bucket, shared by any number of replicas. Nothing
//! is serialised by a process-local lock: races between replicas are settled by
//! the store's conditional writes (`If-None-Match: *` to create, `If-Match` to
//! replace what was read) and by the order of writes and checks, as each file
//! explains. Keys, below the configured prefix:
//!
//! ```text
//! blobs/<alg>/<hex>                         pointer: {"data": <key>, "size", "at"}; the blob exists
//! data/<uuid>                               blob content, immutable once complete
//! repositories/<name>/_layers/<alg>/<hex>   link: {"size", "at"}
//! repositories/<name>/_manifests/revisions/<alg>/<hex>   header line (media type, subject), then the manifest
//! repositories/<name>/_manifests/tags/<tag> the digest; empty once deleted
//! repositories/<name>/_manifests/pulled/<alg>/<hex>      empty; its time is the last pull
//! repositories/<name>/_manifests/tagged/<alg>/<hex>/<tag> empty; the tag was pointed at the manifest
//! repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>   referrer descriptor
//! repositories/<name>/_uploads/<id>         upload session state; <id>.tail.<n> its last bytes
//! index/<name with / as +>                  the catalog: one entry per repository ever written
//! gc/collector.lock, gc/sweep, gc/passes/<name as +>, gc/report.json   the collector's
//! ```
//!
//! A blob's content is written once, under a key of its own, and becomes a blob
//! only when its pointer is created after the content was verified: a finished
//! upload is never copied, and two uploads of one digest leave one pointer.
//! Times that the collector compares (`at`) are written by the replicas' clocks
//! in milliseconds, so those clocks must agree to well within the grace period.

mod blobs;
mod catalog;
mod collect;
mod credentials;
mod manifests;
mod objects;
mod parts;
mod tags;
mod uploads;
mod verify;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ClientOptions, RetryConfig};

use crate::config::S3Config;
use crate::digest::Digest;
use crate::names::RepoName;

pub use objects::Objects;

/// How long a presigned blob URL stays valid (as Distribution's default).
const REDIRECT_EXPIRY: Duration = Duration::from_secs(20 * 60);

pub struct S3Storage {
    objects: Arc<Objects>,
    part_size: usize,
    /// Memory for parts, in MiB (see `parts.rs`).
    buffers: Arc<tokio::sync::Semaphore>,
    redirect: bool,
    /// Pointers never change while they exist: digest → (data key, size).
    pointers: quick_cache::sync::Cache<Digest, (String, u64)>,
    /// Repositories whose catalog entry this process has written.
    indexed: quick_cache::sync::Cache<String, ()>,
    /// Links this process just found, by `repo@digest`: a blob GET reads the
    /// link for its size and then the content, and the second check would
    /// answer what the first did a moment ago.
    links_seen: quick_cache::sync::Cache<String, std::time::Instant>,
    /// When this process last recorded a pull, by marker key.
    pulls: quick_cache::sync::Cache<String, std::time::Instant>,
    /// This process's probe object, `health/<id>`: one key, overwritten by
    /// each probe, so a probe cut short leaves one object at most.
    probe_id: uuid::Uuid,
    /// Collector locks this process released, by token (see `collect.rs`).
    released: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Why the bucket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("storage.s3: {0}")]
    Client(#[from] object_store::Error),
    #[error("storage.s3: bucket {bucket} is not reachable or not usable: {source}")]
    Unreachable { bucket: String, source: crate::storage::Error },
}

impl S3Storage {
    /// Builds the client and checks that the bucket answers (a read of a key
    /// that may or may not exist).
    pub async fn open(config: &S3Config) -> Result<Self, OpenError> {
        let storage = Self::new(config)?;
        storage
            .objects
            .get_optional(&storage.key("gc/report.json"))
            .await
            .map_err(|source| OpenError::Unreachable { bucket: config.bucket.clone(), source })?;
        Ok(storage)
    }

    pub fn new(config: &S3Config) -> Result<Self, OpenError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    // A part upload or a blob read is one request: time out idleness, not length.
                    .with_timeout_disabled()
                    .with_pool_idle_timeout(Duration::from_secs(30))
                    .with_pool_max_idle_per_host(256),
            )
            .with_retry(RetryConfig { max_retries: 5, retry_timeout: Duration::from_secs(60), ..Default::default() });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(dir) = &config.credentials_dir {
            builder = builder.with_credentials(Arc::new(credentials::Files::new(dir.clone())));
        }
        let store: AmazonS3 = builder.build()?;
        Ok(S3Storage {
            objects: Arc::new(Objects::new(store, config.prefix.trim_end_matches('/'))),
            part_size: config.part_size_bytes as usize,
            buffers: Arc::new(tokio::sync::Semaphore::new(parts::mib(config.buffer_bytes as usize))),
            redirect: config.redirect,
            pointers: quick_cache::sync::Cache::new(100_000),
            indexed: quick_cache::sync::Cache::new(100_000),
            pulls: quick_cache::sync::Cache::new(100_000),
            links_seen: quick_cache::sync::Cache::new(10_000),
            released: Arc::default(),
            probe_id: uuid::Uuid::new_v4(),
        })
    }

    fn key(&self, relative: &str) -> Path {
        self.objects.key(relative)
    }

    fn pointer_key(&self, d: &Digest) -> Path {
        self.key(&format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn repo_key(&self, repo: &RepoName, rest: &str) -> Path {
        self.key(&format!("repositories/{}/{rest}", repo.as_str()))
    }

    fn link_key(&self, repo: &RepoName, d: &Digest) -> Path {
        self.repo_key(repo, &format!("_layers/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn revision_key(&self, repo: &RepoName, d: &Digest) -> Path {
        self.repo_key(repo, &format!("_manifests/revisions/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn tag_key(&self, repo: &RepoName, tag: &str) -> Path {
        self.repo_key(repo, &format!("_manifests/tags/{tag}"))
    }

    /// Below it, one empty object per tag ever pointed at the manifest `d`: a
    /// delete reads those tags instead of every tag of the repository.
    fn tagged_prefix(&self, repo: &RepoName, d: &Digest) -> Path {
        self.repo_key(repo, &format!("_manifests/tagged/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn pulled_key(&self, repo: &RepoName, d: &Digest) -> Path {
        self.repo_key(repo, &format!("_manifests/pulled/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn referrers_prefix(&self, repo: &RepoName, subject: &Digest) -> Path {
        self.repo_key(repo, &format!("_referrers/{}/{}", subject.algorithm().as_str(), subject.hex()))
    }

    fn referrer_key(&self, repo: &RepoName, subject: &Digest, d: &Digest) -> Path {
        let name = format!("{}-{}", d.algorithm().as_str(), d.hex());
        self.key(&format!("{}/{name}", self.objects.relative(&self.referrers_prefix(repo, subject))))
    }

    fn index_key(&self, repo: &str) -> Path {
        self.key(&format!("index/{}", repo.replace('/', "+")))
    }

    fn pass_key(&self, repo: &RepoName) -> Path {
        self.key(&format!("gc/passes/{}", repo.as_str().replace('/', "+")))
    }

    fn sweep_key(&self) -> Path {
        self.key("gc/sweep")
    }

    fn new_data_key(&self) -> Path {
        self.key(&format!("data/{}", uuid::Uuid::new_v4()))
    }
}

/// Milliseconds since the epoch: the `at` of pointers and links.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
