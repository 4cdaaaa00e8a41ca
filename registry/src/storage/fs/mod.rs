//! Storage on a local or shared filesystem, laid out like the Distribution
//! registry's:
//!
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>                      content (blobs and manifests)
//! repositories/<name>/_layers/<alg>/<hex>           blob linked into the repository
//! repositories/<name>/_manifests/revisions/<alg>/<hex>   manifest in the repository (JSON)
//! repositories/<name>/_manifests/tags/<tag>         digest the tag points at
//! repositories/<name>/_manifests/lock               flock'ed while tags change
//! repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>   referrer descriptor
//! repositories/<name>/_uploads/<id>[.json]          upload sessions: data and state
//! repositories/<name>/_manifests/pulled/<alg>/<hex>     empty; its time is the last pull
//! repositories/_index/<name with / as +>            the catalog: one entry per repository
//! gc/collector.lock, gc/sweep.lock, gc/report.json  the garbage collector's (see `collect.rs`)
//! tmp/                                              files being written
//! ```
//! Repository names never have components starting with `_` or `.`, so they cannot
//! collide with the `_` entries. Several processes may share the directory (replicas
//! on a ReadWriteMany volume): what must not interleave is serialised with `flock`,
//! which network filesystems forward to the server.
//!
//! Each concern implements its trait in the file of its name: `blobs.rs`,
//! `uploads.rs`, `manifests.rs`, `tags.rs` and `catalog.rs`.

mod blobs;
mod cache;
mod catalog;
mod collect;
mod durable;
mod hygiene;
mod lock;
mod manifests;
mod read;
mod tags;
mod uploads;
mod write;

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::names::RepoName;

pub struct FsStorage {
    root: PathBuf,
    caches: cache::Caches,
    /// When this process last recorded a pull of a manifest, by its marker path.
    pulls: quick_cache::sync::Cache<PathBuf, std::time::Instant>,
    /// How blob content is read: mapped on local filesystems, read on others.
    reads: read::Mode,
}

impl FsStorage {
    /// Opens (creating if needed) a storage root.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        for dir in ["blobs", "repositories", "tmp", "gc", "health"] {
            durable::ensure_dir(&root.join(dir))?;
        }
        let reads = read::Mode::for_filesystem(&root);
        let pulls = quick_cache::sync::Cache::new(cache::ENTRIES);
        let storage = FsStorage { root, caches: cache::Caches::default(), pulls, reads };
        storage.ensure_catalog()?;
        Ok(storage)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
    }

    fn repos_dir(&self) -> PathBuf {
        self.root.join("repositories")
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        self.repos_dir().join(repo.as_str())
    }

    fn layer_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo).join("_layers").join(d.algorithm().as_str()).join(d.hex())
    }

    fn revision_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo).join("_manifests/revisions").join(d.algorithm().as_str()).join(d.hex())
    }

    fn pulled_marker(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo).join("_manifests/pulled").join(d.algorithm().as_str()).join(d.hex())
    }

    /// Taken shared by every write that makes stored content referenced.
    fn sweep_lock(&self) -> PathBuf {
        self.root.join("gc/sweep.lock")
    }

    fn tags_dir(&self, repo: &RepoName) -> PathBuf {
        self.repo_dir(repo).join("_manifests/tags")
    }

    fn tags_lock(&self, repo: &RepoName) -> PathBuf {
        self.repo_dir(repo).join("_manifests/lock")
    }

    fn referrers_dir(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo_dir(repo).join("_referrers").join(subject.algorithm().as_str()).join(subject.hex())
    }

    fn referrer_path(&self, repo: &RepoName, subject: &Digest, d: &Digest) -> PathBuf {
        self.referrers_dir(repo, subject).join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }
}
