//! The catalog: `repositories/_index/` holds one empty file per repository (its
//! name with `/` written as `+`, a character names cannot contain), so listing the
//! repositories reads one directory instead of walking the whole tree. An entry is
//! made before a repository gains its first blob link or manifest; the periodic
//! cleanup walks the tree once and makes the index agree with it, removing the
//! entries of repositories that hold neither.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::FsStorage;
use super::durable::{self, blocking};
use crate::names::RepoName;
use crate::storage::{Catalog, Result};

fn entry_name(repo: &str) -> String {
    repo.replace('/', "+")
}

/// True when the repository directory holds a blob link or a manifest (a file
/// below `_layers/<alg>/` or `_manifests/revisions/<alg>/`; the directories alone
/// stay behind after deletes).
pub(super) fn has_content(repo_dir: &Path) -> bool {
    let holds_file = |dir: PathBuf| {
        std::fs::read_dir(dir).is_ok_and(|algs| {
            algs.flatten().any(|alg| std::fs::read_dir(alg.path()).is_ok_and(|mut d| d.next().is_some()))
        })
    };
    holds_file(repo_dir.join("_layers")) || holds_file(repo_dir.join("_manifests/revisions"))
}

/// The repository directories below `root` (relative, `/`-separated) for which
/// `wanted(dir, entries)` holds, found by walking the tree.
pub(super) fn walk(root: &Path, wanted: fn(&Path, &[String]) -> bool) -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(prefix) = pending.pop() {
        let dir = root.join(&prefix);
        let entries = durable::list_dir(&dir)?;
        if !prefix.is_empty() && wanted(&dir, &entries) {
            found.push(prefix.clone());
        }
        for entry in entries.into_iter().filter(|e| !e.starts_with('_')) {
            if dir.join(&entry).is_dir() {
                pending.push(if prefix.is_empty() { entry } else { format!("{prefix}/{entry}") });
            }
        }
    }
    Ok(found)
}

impl FsStorage {
    fn index_dir(&self) -> PathBuf {
        self.repos_dir().join("_index")
    }

    /// Builds the index of a storage root written before it existed, by one walk,
    /// in a temporary directory renamed into place (another replica may race us).
    pub(super) fn ensure_catalog(&self) -> std::io::Result<()> {
        let index = self.index_dir();
        if index.is_dir() {
            return Ok(());
        }
        let building = tempfile::Builder::new().prefix("index-").tempdir_in(self.tmp_dir())?;
        for repo in walk(&self.repos_dir(), |dir, _| has_content(dir))? {
            std::fs::File::create(building.path().join(entry_name(&repo)))?;
        }
        durable::sync_dir(building.path())?;
        let path = building.keep();
        match std::fs::rename(&path, &index) {
            Ok(()) => durable::sync_dir(&self.repos_dir()),
            Err(_) if index.is_dir() => std::fs::remove_dir_all(&path),
            Err(e) => Err(e),
        }
    }

    /// The catalog entry of `repo`, which the first step of every write that can
    /// give a repository content marks ([`mark`]), inside its own blocking call
    /// rather than in one more.
    pub(super) fn catalog_entry(&self, repo: &RepoName) -> PathBuf {
        self.index_dir().join(entry_name(repo.as_str()))
    }
}

/// Creates a catalog entry, or sets its time to now: a write is about to give the
/// repository content, so the cleanup must not drop the entry meanwhile.
pub(super) fn mark(entry: &Path) -> std::io::Result<()> {
    if durable::set_modified_now(entry)? {
        return Ok(());
    }
    durable::touch(entry)
}

/// An entry marked this recently may belong to a write still on its way.
const MARK_GRACE: Duration = Duration::from_secs(600);

/// Makes the catalog agree with the tree: adds the entries of repositories that
/// hold content without one, and drops those of repositories that hold nothing
/// and that no write has marked for `grace` (at most ten minutes).
pub(super) fn reconcile(repos_dir: &Path, grace: Duration) -> std::io::Result<()> {
    let index = repos_dir.join("_index");
    for repo in walk(repos_dir, |dir, _| has_content(dir))? {
        durable::touch(&index.join(entry_name(&repo)))?;
    }
    let cutoff = SystemTime::now().checked_sub(grace.min(MARK_GRACE)).unwrap_or(SystemTime::UNIX_EPOCH);
    for entry in durable::list_dir(&index)? {
        let path = index.join(&entry);
        let old = std::fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
        if old && !has_content(&repos_dir.join(entry.replace('+', "/"))) {
            durable::remove_if_exists(&path)?;
        }
    }
    Ok(())
}

#[async_trait]
impl Catalog for FsStorage {
    async fn repositories(&self) -> Result<Vec<String>> {
        let index = self.index_dir();
        blocking(move || {
            let mut repos: Vec<String> = durable::list_dir(&index)?.iter().map(|e| e.replace('+', "/")).collect();
            repos.sort();
            Ok(repos)
        })
        .await
    }
}
