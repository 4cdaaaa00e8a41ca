//! Mutual exclusion that also holds between processes sharing the volume: `flock`
//! on a file, which NFS and CephFS clients forward to the server. Locks are
//! taken without blocking and retried until a deadline, so a waiter never parks a
//! thread, a request dropped while it waits leaves nothing behind, and a replica
//! that stalls while holding a lock delays the others for a bounded time.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::durable::{self, blocking};
use crate::storage::{Error, Result};

/// How long a request waits for a lock another request holds.
const WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// Retries `attempt` (on the blocking pool) until it gets the lock or `WAIT`
/// passes, then fails with `busy`.
async fn poll_lock<T: Send + 'static>(
    attempt: impl Fn() -> io::Result<Option<T>> + Clone + Send + 'static,
    busy: Error,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match blocking(attempt.clone()).await? {
            Some(held) => return Ok(held),
            None if tokio::time::Instant::now() < deadline => tokio::time::sleep(POLL).await,
            None => return Err(busy),
        }
    }
}

/// A repository's metadata lock (tags, revisions), held while this value lives.
/// Move it into the blocking step that changes the files, so it is released only
/// after them even if the request is dropped.
pub struct RepoGuard {
    _file: File,
}

impl RepoGuard {
    pub async fn lock(lock_file: PathBuf) -> Result<RepoGuard> {
        let attempt = move || {
            let dir = lock_file.parent().ok_or_else(|| io::Error::other("lock files have a directory"))?;
            let open = || OpenOptions::new().create(true).truncate(false).write(true).open(&lock_file);
            let file = durable::in_dir(dir, open)?;
            Ok(try_flock(&file)?.then_some(RepoGuard { _file: file }))
        };
        poll_lock(attempt, Error::Busy("the repository is being changed by another request")).await
    }
}

/// `LOCK_EX | LOCK_NB`: `false` when another descriptor holds the lock.
fn try_flock(file: &File) -> io::Result<bool> {
    match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An upload session's data file, opened for writing and exclusively locked for
/// as long as this value lives (the lock goes with the descriptor).
pub struct Session {
    pub file: File,
}

impl Session {
    /// Opens and locks the session at `path`. Waits briefly for a concurrent
    /// request (a client retrying while its first attempt is still being
    /// written), then gives up with [`Error::UploadBusy`].
    pub async fn lock(path: &Path) -> Result<Session> {
        let path = path.to_owned();
        match poll_lock(move || try_lock_session(&path), Error::UploadBusy).await {
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => Err(Error::UploadUnknown),
            other => other,
        }
    }
}

/// `None` when another descriptor holds the lock. After locking, the path must
/// still name the locked file: a session finished (renamed into the blob store) or
/// cancelled while we waited is gone, and its old inode must not be written.
pub fn try_lock_session(path: &Path) -> io::Result<Option<Session>> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    if !try_flock(&file)? {
        return Ok(None);
    }
    let (held, now) = (file.metadata()?, std::fs::metadata(path)?);
    if (held.dev(), held.ino()) != (now.dev(), now.ino()) {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    Ok(Some(Session { file }))
}

/// The content sweep lock (`gc/sweep.lock`): shared by every write that makes
/// stored content referenced, exclusive while the collector deletes a batch.
/// Writers hold it for a few syscalls and the collector for one batch, so both
/// wait on the blocking pool rather than polling.
pub struct SweepLock {
    _file: File,
}

impl SweepLock {
    pub fn shared(path: &Path) -> io::Result<SweepLock> {
        Self::take(path, libc::LOCK_SH)
    }

    pub fn exclusive(path: &Path) -> io::Result<SweepLock> {
        Self::take(path, libc::LOCK_EX)
    }

    /// The exclusive lock if it can be had within `wait`. Linux grants new
    /// shared locks while an exclusive one waits, so a steady stream of writers
    /// could otherwise hold a waiter off indefinitely.
    pub fn try_exclusive_for(path: &Path, wait: std::time::Duration) -> io::Result<Option<SweepLock>> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(held) = Self::take_nb(path)? {
                return Ok(Some(held));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn take_nb(path: &Path) -> io::Result<Option<SweepLock>> {
        let dir = path.parent().ok_or_else(|| io::Error::other("lock files have a directory"))?;
        let open = || OpenOptions::new().create(true).truncate(false).write(true).open(path);
        let file = durable::in_dir(dir, open)?;
        Ok(try_flock(&file)?.then_some(SweepLock { _file: file }))
    }

    fn take(path: &Path, op: libc::c_int) -> io::Result<SweepLock> {
        let dir = path.parent().ok_or_else(|| io::Error::other("lock files have a directory"))?;
        let open = || OpenOptions::new().create(true).truncate(false).write(true).open(path);
        let file = durable::in_dir(dir, open)?;
        flock(&file, op)?;
        Ok(SweepLock { _file: file })
    }
}

/// The collector lock (`gc/collector.lock`), taken without waiting: `None`
/// while another process or task collects.
pub fn try_collector_lock(path: &Path) -> io::Result<Option<File>> {
    let dir = path.parent().ok_or_else(|| io::Error::other("lock files have a directory"))?;
    let open = || OpenOptions::new().create(true).truncate(false).write(true).open(path);
    let file = durable::in_dir(dir, open)?;
    Ok(try_flock(&file)?.then_some(file))
}
