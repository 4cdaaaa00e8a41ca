//! Blob content: streaming writes that hash as they go, reads, repository links.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;

use super::FsStorage;
use super::durable::{self, blocking};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::names::RepoName;
use crate::storage::ByteStream;

/// Reads up to this size are copied instead of mapped.
const SMALL_READ: u64 = 256 * 1024;
/// Bytes handed to the HTTP layer at a time when serving a mapped blob.
const SEND_CHUNK: usize = 1 << 20;
/// Large writes keep syscalls few while a body streams in.
const WRITE_BUFFER: usize = 1 << 20;
/// Chunks in flight between the network task and the writer thread.
const CHANNEL_DEPTH: usize = 16;

pub struct Written {
    pub hasher: Hasher,
    pub len: u64,
}

/// Streams `body` to `file` at its current position while hashing it, on a
/// blocking thread so network reads and disk writes overlap. Writeback is started
/// every few MiB, so the final sync waits only for the tail instead of the whole
/// blob; the data is synced before returning.
pub async fn write_stream(file: File, mut hasher: Hasher, mut body: ByteStream) -> Result<Written> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<Written> {
        let mut file = file;
        let mut writeback = Writeback::new(file.stream_position()?);
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut len = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            out.write_all(&chunk)?;
            len += chunk.len() as u64;
            if writeback.due(len) {
                out.flush()?;
                writeback.kick(out.get_ref(), len);
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        Ok(Written { hasher, len })
    });
    let mut body_error = None;
    while let Some(item) = body.next().await {
        match item {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                body_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| Error::Internal(format!("writer task failed: {e}")))??;
    if let Some(e) = body_error {
        return Err(Error::UploadInvalid(format!("request body ended early: {e}")));
    }
    Ok(written)
}

/// Starts writeback of each written window and waits for the one before it, so
/// dirty data stays bounded and the disk works while the next window is hashed.
struct Writeback {
    start: u64,
    kicked: u64,
    previous: Option<(u64, u64)>,
}

/// Bytes per writeback window.
const WRITEBACK_WINDOW: u64 = 8 << 20;

impl Writeback {
    fn new(start: u64) -> Self {
        Writeback { start, kicked: 0, previous: None }
    }

    fn due(&self, written: u64) -> bool {
        written - self.kicked >= WRITEBACK_WINDOW
    }

    fn kick(&mut self, file: &File, written: u64) {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let (from, to) = (self.start + self.kicked, self.start + written);
        // Best effort: an error here only means the final fsync does all the work.
        // SAFETY: plain syscalls on a file descriptor we own; no memory is passed.
        unsafe {
            if let Some((a, b)) = self.previous {
                libc::sync_file_range(fd, a as i64, (b - a) as i64, libc::SYNC_FILE_RANGE_WAIT_BEFORE);
            }
            libc::sync_file_range(fd, from as i64, (to - from) as i64, libc::SYNC_FILE_RANGE_WRITE);
        }
        self.previous = Some((from, to));
        self.kicked = written;
    }
}

impl FsStorage {
    pub(super) async fn linked_blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let link = self.layer_link(repo, digest);
        let blob = self.blob_path(digest);
        blocking(move || {
            if !link.exists() {
                return Ok(None);
            }
            match std::fs::metadata(&blob) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Maps the blob into memory and hands out slices of the mapping, so serving it
    /// copies the bytes once (into the socket) as sendfile would. Small reads are
    /// plain reads.
    pub(super) async fn read_blob(&self, repo: &RepoName, digest: &Digest, range: Range<u64>) -> Result<ByteStream> {
        if !self.layer_link(repo, digest).exists() {
            return Err(Error::BlobUnknown);
        }
        let path = self.blob_path(digest);
        let bytes = blocking(move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let len = range.end - range.start;
            if len <= SMALL_READ {
                let mut buf = vec![0u8; len as usize];
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, range.start)?;
                return Ok(Some(Bytes::from(buf)));
            }
            // SAFETY: a published blob is never written again, only unlinked, and a
            // mapping of an unlinked file stays valid; so the mapped bytes cannot
            // change or vanish while they are being sent.
            let map = unsafe { memmap2::MmapOptions::new().offset(range.start).len(len as usize).map(&file)? };
            let _ = map.advise(memmap2::Advice::Sequential);
            Ok(Some(Bytes::from_owner(map)))
        })
        .await?
        .ok_or(Error::BlobUnknown)?;
        let chunks =
            (0..bytes.len()).step_by(SEND_CHUNK).map(move |at| Ok(bytes.slice(at..(at + SEND_CHUNK).min(bytes.len()))));
        Ok(Box::pin(futures_util::stream::iter(chunks.collect::<Vec<_>>())))
    }

    pub(super) async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let link = self.layer_link(repo, digest);
        blocking(move || durable::remove_if_exists(&link)).await
    }

    pub(super) async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let link = self.layer_link(repo, digest);
        blocking(move || durable::touch(&link)).await
    }

    /// Publishes a complete, synced file as blob `digest` and links it into `repo`.
    /// Both directories are synced after both changes, so one journal commit
    /// usually covers the two. A blob that is already stored (the same content,
    /// pushed concurrently or earlier) is kept and `from` dropped.
    pub(super) async fn publish_blob(&self, from: PathBuf, repo: &RepoName, digest: &Digest) -> Result<()> {
        let target = self.blob_path(digest);
        let link = self.layer_link(repo, digest);
        blocking(move || {
            let (Some(blob_dir), Some(link_dir)) = (target.parent(), link.parent()) else {
                return Err(io::Error::other("blob paths have parents"));
            };
            durable::ensure_dir(blob_dir)?;
            durable::ensure_dir(link_dir)?;
            if target.exists() {
                std::fs::remove_file(&from)?;
            } else {
                std::fs::rename(&from, &target)?;
            }
            if !link.exists() {
                File::create(&link)?;
            }
            durable::sync_dir(blob_dir)?;
            durable::sync_dir(link_dir)
        })
        .await
    }

    pub(super) async fn mount_blob(&self, to: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        let readable = match from {
            Some(from) => self.linked_blob_size(from, digest).await?.is_some(),
            None => tokio::fs::try_exists(self.blob_path(digest)).await?,
        };
        if readable {
            self.link_blob(to, digest).await?;
        }
        Ok(readable)
    }

    pub(super) async fn put_blob(&self, repo: &RepoName, digest: &Digest, body: ByteStream) -> Result<u64> {
        let tmp_dir = self.tmp_dir();
        let tmp = blocking(move || tempfile::NamedTempFile::new_in(tmp_dir)).await?;
        let file = tmp.as_file().try_clone()?;
        let written = write_stream(file, Hasher::new(digest.algorithm()), body).await?;
        if written.hasher.finish() != *digest {
            return Err(Error::DigestMismatch); // dropping `tmp` removes the file
        }
        let (_, path) = tmp.keep().map_err(|e| e.error)?;
        self.publish_blob(path, repo, digest).await?;
        Ok(written.len)
    }

    /// Hashes a file from its start; for the rare upload finished with another
    /// algorithm than the one it was hashed with while streaming.
    pub(super) async fn hash_file(path: PathBuf, len: u64, algorithm: crate::digest::Algorithm) -> Result<Digest> {
        blocking(move || {
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(0))?;
            let mut hasher = Hasher::new(algorithm);
            let mut reader = io::Read::take(file, len);
            let mut buf = vec![0u8; WRITE_BUFFER];
            loop {
                let n = io::Read::read(&mut reader, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(hasher.finish())
        })
        .await
    }
}
