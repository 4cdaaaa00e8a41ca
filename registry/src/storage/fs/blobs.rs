//! Blob content and repository links.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::PathBuf;

use async_trait::async_trait;

use super::FsStorage;
use super::catalog;
use super::durable::{self, blocking};
use super::lock::{Session, SweepLock};
use super::{read, write};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::names::RepoName;
use crate::storage::{Blobs, ByteStream, Error, Result};

impl FsStorage {
    async fn is_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.layer_link(repo, digest)).await?)
    }

    /// Links a stored blob into `repo`; `false` when no such blob is stored. The
    /// blob's and the link's times are refreshed under the sweep lock, so a
    /// collection that found them old cannot delete them now (see `collect.rs`).
    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (entry, blob, link) = (self.catalog_entry(repo), self.blob_path(digest), self.layer_link(repo, digest));
        let sweep = self.sweep_lock();
        blocking(move || {
            let _sweep = SweepLock::shared(&sweep)?;
            if !durable::set_modified_now(&blob)? {
                return Ok(false); // and no catalog entry for a failed mount
            }
            catalog::mark(&entry)?;
            if !durable::set_modified_now(&link)? {
                durable::touch(&link)?;
            }
            Ok(true)
        })
        .await
    }

    /// Publishes a complete, synced file whose content hashes to `digest` as that
    /// blob, and links it into `repo`. The file replaces whatever is stored under
    /// the name: the new file is verified, an existing one might not be (a crash of
    /// an older version, a disk error), and a reader of the old file keeps it open.
    /// Both directories are synced after both changes, so one journal commit
    /// usually covers the two. `held` (the session's lock) is released only after.
    /// The sweep lock is held shared meanwhile (see `link_blob`).
    /// The catalog entry comes first: a crash after it leaves an entry the cleanup
    /// prunes, a crash before the link is made leaves nothing to list.
    pub(super) async fn publish_blob(
        &self,
        from: PathBuf,
        repo: &RepoName,
        digest: &Digest,
        held: Option<Session>,
    ) -> Result<()> {
        let entry = self.catalog_entry(repo);
        let target = self.blob_path(digest);
        let link = self.layer_link(repo, digest);
        let sweep = self.sweep_lock();
        blocking(move || {
            catalog::mark(&entry)?;
            let (Some(blob_dir), Some(link_dir)) = (target.parent(), link.parent()) else {
                return Err(io::Error::other("blob paths have parents"));
            };
            let _sweep = SweepLock::shared(&sweep)?;
            durable::in_dir(blob_dir, || std::fs::rename(&from, &target))?;
            // A session idle for long has an old time: the blob is new now.
            durable::set_modified_now(&target)?;
            if !durable::set_modified_now(&link)? {
                durable::in_dir(link_dir, || File::create(&link))?;
            }
            durable::sync_dir(blob_dir)?;
            durable::sync_dir(link_dir)?;
            drop(held);
            Ok(())
        })
        .await
    }

    /// Hashes the first `len` bytes of a file; for the rare upload finished with
    /// another algorithm than the one it was hashed with while streaming.
    pub(super) async fn hash_file(path: PathBuf, len: u64, algorithm: Algorithm) -> Result<Digest> {
        blocking(move || {
            let mut reader = File::open(path)?.take(len);
            let mut hasher = Hasher::new(algorithm);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    return Ok(hasher.finish());
                }
                hasher.update(&buf[..n]);
            }
        })
        .await
    }
}

#[async_trait]
impl Blobs for FsStorage {
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        if !self.is_linked(repo, digest).await? {
            return Ok(None);
        }
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn blob_stored(&self, digest: &Digest) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn blob_read(&self, repo: &RepoName, digest: &Digest, range: Range<u64>) -> Result<ByteStream> {
        if !self.is_linked(repo, digest).await? {
            return Err(Error::BlobUnknown);
        }
        let file = read::open(&self.blob_path(digest)).await?.ok_or(Error::BlobUnknown)?;
        read::stream(file, range, self.reads).await
    }

    async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let link = self.layer_link(repo, digest);
        blocking(move || durable::remove_if_exists(&link)).await
    }

    async fn blob_mount(&self, to: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        if let Some(from) = from
            && self.blob_size(from, digest).await?.is_none()
        {
            return Ok(false);
        }
        self.link_blob(to, digest).await
    }

    async fn blob_put(&self, repo: &RepoName, digest: &Digest, body: ByteStream) -> Result<u64> {
        let tmp_dir = self.tmp_dir();
        let tmp = blocking(move || tempfile::NamedTempFile::new_in(tmp_dir)).await?;
        let file = tmp.as_file().try_clone()?;
        let written = write::write_stream(file, 0, Hasher::new(digest.algorithm()), body).await?;
        if written.hasher.finish() != *digest {
            return Err(Error::DigestMismatch); // dropping `tmp` removes the file
        }
        let (_, path) = tmp.keep().map_err(|e| e.error)?;
        if let Err(e) = self.publish_blob(path.clone(), repo, digest, None).await {
            // Not renamed yet (a full disk making the link, say): nothing may stay in tmp/.
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        Ok(written.len)
    }
}
