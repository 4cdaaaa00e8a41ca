//! In-memory caches for the manifest read path (every node pulls manifests on
//! every pod start). Manifest content is immutable per digest, so it is cached
//! as is. Tags and repository revisions can change under us, also from another
//! replica on the same volume, so each cached entry is revalidated with one
//! `stat` of the file it came from: an atomic replace gives the file a new
//! identity, a delete makes the `stat` fail.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::manifests::Revision;
use crate::digest::Digest;

/// Total size of cached manifest bytes.
const CONTENT_BYTES: u64 = 64 << 20;
pub const ENTRIES: usize = 16_384;

/// What identifies one version of a small metadata file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

impl FileId {
    /// The identity of the file at `path` now; `None` when it does not exist. This
    /// is a single metadata syscall on a hot directory, cheap enough to make inline.
    pub fn of(path: &Path) -> std::io::Result<Option<FileId>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(FileId {
                ino: m.ino(),
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                len: m.len(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[derive(Clone)]
pub struct ByLength;

impl Weighter<Digest, Bytes> for ByLength {
    fn weight(&self, _: &Digest, bytes: &Bytes) -> u64 {
        bytes.len() as u64 + 64
    }
}

pub struct Caches {
    pub content: Cache<Digest, Bytes, ByLength>,
    /// Keyed by the metadata file's path.
    pub revisions: Cache<String, (FileId, Revision)>,
    pub tags: Cache<String, (FileId, Digest)>,
}

impl Default for Caches {
    fn default() -> Self {
        Caches {
            content: Cache::with_weighter(ENTRIES, CONTENT_BYTES, ByLength),
            revisions: Cache::new(ENTRIES),
            tags: Cache::new(ENTRIES),
        }
    }
}

/// Looks `path` up in `cache`, valid only while the file keeps the same identity.
pub fn validated<V: Clone>(cache: &Cache<String, (FileId, V)>, path: &Path, now: FileId) -> Option<V> {
    let key = path.to_str()?;
    cache.get(key).filter(|(id, _)| *id == now).map(|(_, v)| v)
}
