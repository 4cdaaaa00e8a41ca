//! Cleaning up what clients and crashes leave behind, at start and periodically:
//! abandoned upload sessions, temporary files, catalog entries of repositories
//! that hold nothing, and directories with no file left in them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::FsStorage;
use super::catalog;
use super::durable::{self, blocking};
use super::lock::try_lock_session;
use super::uploads::remove_session;
use crate::names::UploadId;
use crate::storage::Result;

/// A temporary file untouched this long belongs to a writer that died. A slow
/// writer touches its file only once per batch (512 KiB), so this is generous.
const TMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// True when `path` was last modified before `cutoff`.
fn older(path: &Path, cutoff: SystemTime) -> bool {
    std::fs::symlink_metadata(path).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff)
}

/// Removes the sessions in `dir` last written before `cutoff` that no request
/// holds, and state files whose data file is gone. Returns the sessions removed.
fn purge_sessions(dir: &Path, cutoff: SystemTime) -> std::io::Result<usize> {
    let mut purged = 0;
    for name in durable::list_dir(dir)? {
        let path = dir.join(&name);
        if let Some(id) = name.strip_suffix(".json") {
            if id.parse::<UploadId>().is_ok() && !dir.join(id).exists() && older(&path, cutoff) {
                durable::remove_if_exists(&path)?;
            }
        } else if name.parse::<UploadId>().is_ok() && older(&path, cutoff) {
            // Removed while locked, so no request can start writing it meanwhile;
            // one that was waiting finds it gone.
            // A session finished (renamed away) since the listing is simply gone.
            let locked = match try_lock_session(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                other => other?,
            };
            if let Some(session) = locked {
                remove_session(&path, &dir.join(format!("{name}.json")))?;
                drop(session);
                purged += 1;
            }
        }
    }
    Ok(purged)
}

/// Removes every directory below `dir` (and `dir` itself) that holds no file,
/// deepest first. `rmdir` refuses a directory that gained an entry meanwhile, and
/// a writer whose directory went between its `mkdir` and its create makes it
/// again (`durable::in_dir`).
fn remove_empty_dirs(dir: &Path) -> std::io::Result<bool> {
    let mut empty = true;
    for name in durable::list_dir(dir)? {
        let path = dir.join(&name);
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !(is_dir && remove_empty_dirs(&path)?) {
            empty = false;
        }
    }
    if empty && std::fs::remove_dir(dir).is_ok() {
        return Ok(true);
    }
    Ok(false)
}

impl FsStorage {
    pub(super) async fn purge_leftovers(&self, age: Duration) -> Result<usize> {
        let (repos, tmp) = (self.repos_dir(), self.tmp_dir());
        let before = |age| SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
        let (sessions_before, tmp_before) = (before(age), before(TMP_AGE.min(age)));
        blocking(move || {
            let mut purged = 0;
            for entry in durable::list_dir(&tmp)? {
                let path = tmp.join(entry);
                if older(&path, tmp_before) {
                    let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
                }
            }
            for repo in catalog::walk(&repos, |_, entries| entries.iter().any(|e| e == "_uploads"))? {
                purged += purge_sessions(&repos.join(&repo).join("_uploads"), sessions_before)?;
            }
            for entry in durable::list_dir(&repos)?.into_iter().filter(|e| !e.starts_with('_')) {
                remove_empty_dirs(&repos.join(entry))?;
            }
            catalog::reconcile(&repos, age)?;
            Ok(purged)
        })
        .await
    }
}
