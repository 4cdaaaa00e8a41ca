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
//! repositories/_index/<name with / as +>            the catalog: one entry per repository
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
    /// How blob content is read: mapped on local filesystems, read on others.
    reads: read::Mode,
}

impl FsStorage {
    /// Opens (creating if needed) a storage root.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        for dir in ["blobs", "repositories", "tmp"] {
            durable::ensure_dir(&root.join(dir))?;
        }
        let reads = read::Mode::for_filesystem(&root);
        let storage = FsStorage { root, caches: cache::Caches::default(), reads };
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
