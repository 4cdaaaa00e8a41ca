//! What the storage holds, in figures: the bytes of content stored (each blob or
//! manifest counted once), how many blobs, manifests and repositories, and the
//! bytes each repository holds (the sizes of the blobs linked into it, shared or
//! not). A scan (the garbage collector's) sets exact figures with
//! [`UsageBook::replace`]; between scans this process's writes keep them up to
//! date. Writes by other replicas, and content the collector deletes, show only
//! at the next scan, so the figures may drift a little from the truth until then.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::report::Usage;

/// Exact figures from a walk of the storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    /// Bytes linked into each repository.
    pub repositories: BTreeMap<String, u64>,
}

/// Shared by every request and the collector; each call holds a mutex for a map
/// lookup or two, so it can sit on the push path.
#[derive(Debug, Default)]
pub struct UsageBook {
    figures: Mutex<Figures>,
}

#[derive(Debug, Default)]
struct Figures {
    scanned: bool,
    scan: Scan,
}

impl UsageBook {
    /// An empty book: nothing counted, not scanned.
    pub fn new() -> Self {
        UsageBook::default()
    }

    /// The figures are plain numbers, consistent after every statement, so a
    /// panic elsewhere while the lock was held leaves nothing half-done.
    fn figures(&self) -> MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the figures of a scan as they are.
    pub fn replace(&self, scan: Scan) {
        *self.figures() = Figures { scanned: true, scan };
    }

    /// Whether a scan has set the figures yet; before one, they count only what
    /// this process wrote.
    pub fn scanned(&self) -> bool {
        self.figures().scanned
    }

    /// A blob newly linked into `repo`; `new_content` when it was stored nowhere before.
    pub fn blob_added(&self, repo: &str, size: u64, new_content: bool) {
        let mut f = self.figures();
        add(repo_entry(&mut f.scan.repositories, repo), size);
        if new_content {
            add(&mut f.scan.bytes, size);
            add(&mut f.scan.blobs, 1);
        }
    }

    /// A blob unlinked from `repo`. Its content stays stored (and counted) until
    /// the collector deletes it and scans again.
    pub fn link_removed(&self, repo: &str, size: u64) {
        if let Some(bytes) = self.figures().scan.repositories.get_mut(repo) {
            *bytes = bytes.saturating_sub(size);
        }
    }

    /// A manifest stored in `repo`. Manifests count towards the bytes stored,
    /// not towards a repository's bytes (those are its blobs).
    pub fn manifest_added(&self, repo: &str, size: u64, new_content: bool) {
        let mut f = self.figures();
        repo_entry(&mut f.scan.repositories, repo);
        if new_content {
            add(&mut f.scan.bytes, size);
            add(&mut f.scan.manifests, 1);
        }
    }

    /// Bytes linked into `repo`.
    pub fn repository_bytes(&self, repo: &str) -> u64 {
        self.figures().scan.repositories.get(repo).copied().unwrap_or(0)
    }

    /// The figures as reported; the volume's size is not the book's to know.
    pub fn usage(&self) -> Usage {
        let f = self.figures();
        Usage {
            bytes: f.scan.bytes,
            blobs: f.scan.blobs,
            manifests: f.scan.manifests,
            repositories: f.scan.repositories.len() as u64,
            volume_bytes: None,
            volume_available_bytes: None,
        }
    }
}

/// The entry of `repo`, looked up without allocating when it exists (the usual case).
fn repo_entry<'a>(repositories: &'a mut BTreeMap<String, u64>, repo: &str) -> &'a mut u64 {
    if !repositories.contains_key(repo) {
        repositories.insert(repo.to_owned(), 0);
    }
    repositories.get_mut(repo).expect("inserted above")
}

/// Counters saturate: a wrapped figure would be wildly wrong, a capped one is
/// only stale until the next scan.
fn add(figure: &mut u64, n: u64) {
    *figure = figure.saturating_add(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_empty_and_unscanned() {
        let book = UsageBook::new();
        assert!(!book.scanned());
        assert_eq!(book.usage(), Usage::default());
        assert_eq!(book.repository_bytes("a"), 0);
    }

    #[test]
    fn shared_content_counts_once_in_total_and_in_every_repository() {
        let book = UsageBook::new();
        book.blob_added("a", 100, true);
        book.blob_added("b", 100, false); // mounted: the same content
        book.blob_added("a", 20, true);
        let usage = book.usage();
        assert_eq!((usage.bytes, usage.blobs, usage.repositories), (120, 2, 2));
        assert_eq!(book.repository_bytes("a"), 120);
        assert_eq!(book.repository_bytes("b"), 100);
    }

    #[test]
    fn manifests_count_in_total_not_in_repository_bytes() {
        let book = UsageBook::new();
        book.manifest_added("a", 500, true);
        book.manifest_added("b", 500, false);
        let usage = book.usage();
        assert_eq!((usage.bytes, usage.manifests, usage.blobs, usage.repositories), (500, 1, 0, 2));
        assert_eq!(book.repository_bytes("a"), 0);
    }

    #[test]
    fn a_removed_link_frees_the_repository_not_the_total() {
        let book = UsageBook::new();
        book.blob_added("a", 100, true);
        book.link_removed("a", 100);
        book.link_removed("a", 100); // never below zero
        book.link_removed("unknown", 5);
        assert_eq!(book.repository_bytes("a"), 0);
        assert_eq!(book.usage().bytes, 100);
        assert_eq!(book.usage().repositories, 1, "an unknown repository is not invented");
    }

    #[test]
    fn a_scan_replaces_everything_and_later_writes_add_to_it() {
        let book = UsageBook::new();
        book.blob_added("gone", 7, true);
        let repositories = BTreeMap::from([("a".to_owned(), 1000), ("b".to_owned(), 10)]);
        book.replace(Scan { bytes: 1010, blobs: 3, manifests: 2, repositories });
        assert!(book.scanned());
        assert_eq!(book.repository_bytes("gone"), 0);
        book.blob_added("a", 5, true);
        let usage = book.usage();
        assert_eq!((usage.bytes, usage.blobs, usage.manifests, usage.repositories), (1015, 4, 2, 2));
        assert_eq!(book.repository_bytes("a"), 1005);
    }

    #[test]
    fn figures_saturate_instead_of_wrapping() {
        let book = UsageBook::new();
        book.blob_added("a", u64::MAX, true);
        book.blob_added("a", 1, true);
        assert_eq!(book.repository_bytes("a"), u64::MAX);
        assert_eq!(book.usage().bytes, u64::MAX);
    }
}
