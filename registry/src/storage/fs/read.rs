//! Reading blob content. On a local filesystem a blob is memory-mapped and sent
//! from the mapping, which copies the bytes once (into the socket) as sendfile
//! would. On a network filesystem (the usual ReadWriteMany volume) a mapping is
//! unsafe: an I/O error or a truncation by another client raises SIGBUS and kills
//! the process. There the blob is read in chunks, so an error fails one request.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::durable::blocking;
use crate::storage::{ByteStream, Result};

/// Reads up to this size are one plain read.
const SMALL_READ: u64 = 256 * 1024;
/// Bytes per chunk handed to the HTTP layer.
const SEND_CHUNK: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Map,
    Read,
}

/// Filesystems whose pages are local, where a mapped file fails only with the
/// machine. Anything else (NFS, CephFS, SMB, FUSE, ...) is read.
const LOCAL: [i64; 8] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x794C_7630, // overlayfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
    0x8584_58F6, // ramfs
];

impl Mode {
    pub fn for_filesystem(root: &Path) -> Mode {
        let Ok(path) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
            return Mode::Read;
        };
        // SAFETY: an all-zero statfs is a valid value of this plain C struct.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: statfs fills the struct we pass; the path is NUL-terminated.
        if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
            return Mode::Read;
        }
        if LOCAL.contains(&(st.f_type as i64)) { Mode::Map } else { Mode::Read }
    }
}

/// Opens the blob at `path`; `None` when it does not exist.
pub async fn open(path: &Path) -> Result<Option<File>> {
    let path = path.to_owned();
    blocking(move || match File::open(&path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await
}

/// A stream of `range` of `file`.
pub async fn stream(file: File, range: Range<u64>, mode: Mode) -> Result<ByteStream> {
    let len = range.end - range.start;
    if len <= SMALL_READ {
        let bytes = blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, range.start)?;
            Ok(Bytes::from(buf))
        })
        .await?;
        return Ok(Box::pin(futures_util::stream::iter([Ok(bytes)])));
    }
    match mode {
        Mode::Map => mapped(file, range).await,
        Mode::Read => Ok(chunked(file, range)),
    }
}

async fn mapped(file: File, range: Range<u64>) -> Result<ByteStream> {
    let len = (range.end - range.start) as usize;
    let bytes = blocking(move || {
        // SAFETY: a published blob is never written again, only replaced by rename
        // or unlinked, and a mapping of a replaced or unlinked file stays valid; on
        // a local filesystem nothing else can change the mapped pages.
        let map = unsafe { memmap2::MmapOptions::new().offset(range.start).len(len).map(&file)? };
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Bytes::from_owner(map))
    })
    .await?;
    let chunks = (0..len).step_by(SEND_CHUNK).map(move |at| Ok(bytes.slice(at..(at + SEND_CHUNK).min(len))));
    Ok(Box::pin(futures_util::stream::iter(chunks.collect::<Vec<_>>())))
}

/// Reads one chunk at a time, only when the client has taken the one before.
fn chunked(file: File, range: Range<u64>) -> ByteStream {
    let file = std::sync::Arc::new(file);
    Box::pin(futures_util::stream::unfold(range.start, move |at| {
        let file = file.clone();
        let end = range.end;
        async move {
            if at >= end {
                return None;
            }
            let n = (end - at).min(SEND_CHUNK as u64) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, at)?;
                Ok::<_, io::Error>(Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            match read {
                Ok(bytes) => Some((Ok(bytes), at + n as u64)),
                // Ends the stream after the error: the response is cut short.
                Err(e) => Some((Err(e), end)),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    async fn read_all(mode: Mode, data: &[u8], range: Range<u64>) -> Vec<u8> {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, data).unwrap();
        let chunks: Vec<Bytes> = stream(file, range, mode).await.unwrap().try_collect().await.unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn both_modes_read_the_same_bytes() {
        let data: Vec<u8> = (0..3 * SEND_CHUNK + 12345).map(|i| (i * 7 % 251) as u8).collect();
        for range in [0..data.len() as u64, 1..data.len() as u64 - 1, 100..200, 5..(SEND_CHUNK as u64 * 2 + 3)] {
            let want = &data[range.start as usize..range.end as usize];
            assert_eq!(read_all(Mode::Map, &data, range.clone()).await, want);
            assert_eq!(read_all(Mode::Read, &data, range.clone()).await, want);
        }
    }

    #[tokio::test]
    async fn a_read_error_fails_the_stream_instead_of_the_process() {
        // The file is shorter than the range: as when another client truncated it.
        let file = tempfile::tempfile().unwrap();
        file.set_len(SMALL_READ * 8).unwrap();
        let mut s = stream(file.try_clone().unwrap(), 0..SMALL_READ * 8, Mode::Read).await.unwrap();
        file.set_len(10).unwrap();
        let result: std::result::Result<Vec<Bytes>, _> = futures_util::TryStreamExt::try_collect(&mut s).await;
        assert!(result.is_err());
    }

    #[test]
    fn local_filesystems_are_mapped() {
        assert_eq!(Mode::for_filesystem(Path::new("/proc")), Mode::Read);
        assert_eq!(Mode::for_filesystem(Path::new("/dev/shm")), Mode::Map, "tmpfs");
        assert_eq!(Mode::for_filesystem(Path::new("/no/such/dir")), Mode::Read);
    }
}
