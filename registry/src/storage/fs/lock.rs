//! Mutual exclusion that also holds between processes sharing the volume: `flock`
//! on a file, which NFS and CephFS clients forward to the server. Inside one
//! process, an async mutex first, so at most one blocking thread per lock waits
//! on the kernel.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::durable::{self, blocking};
use crate::names::RepoName;
use crate::storage::{Error, Result};

const STRIPES: usize = 64;

/// Serialises short metadata changes of one repository (tags, revisions) within
/// this process; held only around a few file operations, never around a body.
pub struct RepoLocks([Arc<Mutex<()>>; STRIPES]);

impl Default for RepoLocks {
    fn default() -> Self {
        RepoLocks(std::array::from_fn(|_| Arc::new(Mutex::new(()))))
    }
}

/// A repository's metadata lock: the in-process guard and the `flock`ed file.
pub struct RepoGuard {
    _local: OwnedMutexGuard<()>,
    _file: File,
}

impl RepoLocks {
    pub async fn lock(&self, repo: &RepoName, lock_file: PathBuf) -> Result<RepoGuard> {
        let stripe = repo.as_str().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % STRIPES;
        let local = self.0[stripe].clone().lock_owned().await;
        let file = blocking(move || {
            let dir = lock_file.parent().ok_or_else(|| io::Error::other("lock files have a directory"))?;
            let open = || OpenOptions::new().create(true).truncate(false).write(true).open(&lock_file);
            let file = durable::in_dir(dir, open)?;
            flock(&file, libc::LOCK_EX)?;
            Ok(file)
        })
        .await?;
        Ok(RepoGuard { _local: local, _file: file })
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

/// How long a request waits for another request on the same session to finish.
const SESSION_WAIT: Duration = Duration::from_secs(5);
const SESSION_POLL: Duration = Duration::from_millis(25);

impl Session {
    /// Opens and locks the session at `path`. Waits briefly for a concurrent
    /// request (a client retrying while its first attempt is still being
    /// written), then gives up with [`Error::UploadBusy`]; never blocks a thread.
    pub async fn lock(path: &Path) -> Result<Session> {
        let deadline = tokio::time::Instant::now() + SESSION_WAIT;
        loop {
            let p = path.to_owned();
            let attempt = blocking(move || try_lock_session(&p)).await;
            match attempt {
                Ok(Some(session)) => return Ok(session),
                Ok(None) if tokio::time::Instant::now() < deadline => tokio::time::sleep(SESSION_POLL).await,
                Ok(None) => return Err(Error::UploadBusy),
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Err(Error::UploadUnknown),
                Err(e) => return Err(e),
            }
        }
    }
}

/// `None` when another descriptor holds the lock. After locking, the path must
/// still name the locked file: a session finished (renamed into the blob store) or
/// cancelled while we waited is gone, and its old inode must not be written.
fn try_lock_session(path: &Path) -> io::Result<Option<Session>> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    }
    let (held, now) = (file.metadata()?, std::fs::metadata(path)?);
    if (held.dev(), held.ino()) != (now.dev(), now.ino()) {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    Ok(Some(Session { file }))
}

/// True when some descriptor holds the session's lock (a request is writing it).
pub fn session_in_use(path: &Path) -> io::Result<bool> {
    // Opened for writing: NFS emulates flock with POSIX locks, which need it.
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    }
}
