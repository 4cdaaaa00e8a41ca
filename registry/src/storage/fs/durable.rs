//! Crash-safe file primitives. A file is published by renaming a fully written and
//! synced temporary file into place, and every directory whose entries changed is
//! synced, so an acknowledged write survives power loss and a reader never sees a
//! partial file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use tempfile::NamedTempFile;

use crate::storage::{Error, Result};

/// Runs filesystem work on the blocking pool. Each call is one short step (a few
/// syscalls or one batch of bytes), so no request holds a thread while it waits
/// for its client.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Task(e.to_string()))?.map_err(Error::from)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, syncing each parent that gained an entry.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    ensure_dir(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `bytes` atomically and durably: readers see the old or the
/// new content, and after a crash the new content is there.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(tmp_dir, path, bytes, true)
}

/// Runs `op`, which creates an entry in `dir`, after making sure `dir` exists;
/// again if the directory (or a parent) vanished meanwhile: the cleanup removes
/// empty directories, and `rmdir` may win the race against our `mkdir` or create.
pub fn in_dir<T>(dir: &Path, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match ensure_dir(dir).and_then(|()| op()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => continue,
            other => return other,
        }
    }
}

fn parent_of(path: &Path) -> io::Result<&Path> {
    path.parent().ok_or_else(|| io::Error::other("no parent directory"))
}

/// Replaces `path` atomically, syncing only when `durable`: for state that may be
/// lost in a machine crash without losing anything acknowledged.
pub fn replace(tmp_dir: &Path, path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let parent = parent_of(path)?;
    let mut tmp = NamedTempFile::new_in(tmp_dir)?;
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    let tmp = tmp.into_temp_path();
    in_dir(parent, || std::fs::rename(&tmp, path))?;
    // The temporary name is gone; keeping the handle would try to remove it again.
    let _ = tmp.keep();
    if durable { sync_dir(parent) } else { Ok(()) }
}

/// Creates an empty marker file durably (a repository link). Only its directory
/// entry carries information, so syncing the directory is enough.
pub fn touch(path: &Path) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let parent = parent_of(path)?;
    in_dir(parent, || File::create(path))?;
    sync_dir(parent)
}

/// Sets a file's modification time to now; `false` when it does not exist.
pub fn set_modified_now(path: &Path) -> io::Result<bool> {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err(io::Error::other("a path holds a NUL byte"));
    };
    // SAFETY: the path is NUL-terminated; a null `times` means "now".
    if unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), std::ptr::null(), 0) } == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.kind() == io::ErrorKind::NotFound => Ok(false),
        e => Err(e),
    }
}

/// Removes a file durably; `false` when it did not exist.
pub fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a small file; `None` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => Ok(None),
        Err(e) => Err(e),
    }
}

/// Names of the entries of a directory, sorted; empty when it does not exist.
pub fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Ok(name) = entry?.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
