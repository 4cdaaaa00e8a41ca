//! Upload sessions, kept on disk so they survive restarts and can continue on
//! another replica that shares the volume: `repositories/<name>/_uploads/<id>`
//! holds the bytes received and `<id>.json` beside it the acknowledged size and
//! the hasher's saved state. A session without a state file has received nothing
//! yet and hashes with SHA-256, so starting an upload creates a single empty file
//! and a blob pushed with POST + PUT allocates no other inode (creating and
//! deleting files per upload is what an ext4 volume handles worst).
//!
//! Every request that changes a session holds an exclusive `flock` on its data
//! file ([`Session`]), so two requests, on one replica or on two, never write it at
//! once. A chunk is acknowledged only after its bytes are synced and the new state
//! is atomically and durably in place. Bytes of a chunk that failed are cut off
//! at once; those of one being written when the process died, before the next write.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::FsStorage;
use super::durable::{self, blocking};
use super::lock::Session;
use super::write::write_stream;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::names::{RepoName, UploadId};
use crate::storage::{ByteStream, Chunk, Error, Result, Uploads};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadState {
    pub algorithm: Algorithm,
    pub offset: u64,
    pub hash_state: String,
}

impl UploadState {
    fn new(algorithm: Algorithm) -> Self {
        UploadState { algorithm, offset: 0, hash_state: Hasher::new(algorithm).save() }
    }

    fn hasher(&self, path: &Path) -> Result<Hasher> {
        Hasher::restore(self.algorithm, &self.hash_state)
            .ok_or_else(|| Error::Corrupt(path.display().to_string(), "unreadable hash state".into()))
    }
}

/// The files of one session.
struct Paths {
    data: PathBuf,
    state: PathBuf,
}

impl FsStorage {
    pub(super) fn uploads_dir(&self, repo: &RepoName) -> PathBuf {
        self.repo_dir(repo).join("_uploads")
    }

    fn session(&self, repo: &RepoName, id: UploadId) -> Paths {
        let dir = self.uploads_dir(repo);
        Paths { data: dir.join(id.to_string()), state: dir.join(format!("{id}.json")) }
    }

    /// The acknowledged state; the caller holds the session's lock if it writes.
    async fn load_state(&self, paths: &Paths) -> Result<UploadState> {
        let (data, state) = (paths.data.clone(), paths.state.clone());
        let (exists, bytes) = blocking(move || Ok((data.exists(), durable::read_optional(&state)?))).await?;
        match (exists, bytes) {
            (false, _) => Err(Error::UploadUnknown),
            (true, None) => Ok(UploadState::new(Algorithm::Sha256)),
            (true, Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(paths.state.display().to_string(), e.to_string())),
        }
    }

    /// Writes a chunk after the acknowledged bytes (cutting off anything beyond
    /// them) and returns the new size and hash state. The caller holds the lock and
    /// decides whether to record the new state.
    async fn append_locked(
        &self,
        session: Session,
        paths: &Paths,
        state: &UploadState,
        chunk: Chunk,
        body: ByteStream,
    ) -> Result<(u64, Hasher, Session)> {
        if let Some(start) = chunk.start
            && start != state.offset
        {
            return Err(Error::ChunkOutOfOrder { start, offset: state.offset });
        }
        let hasher = state.hasher(&paths.state)?;
        let offset = state.offset;
        let mut file = session.file;
        let file = blocking(move || {
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            Ok(file)
        })
        .await?;
        // A descriptor of the same open file: the lock stays held through it after
        // a failed stream dropped the other, while the chunk is cut off.
        let keep = file.try_clone()?;
        let written = match write_stream(file, offset, hasher, body).await {
            Ok(written) => written,
            Err(e) => {
                // At once rather than at the next write: a full disk or a refused
                // push must not keep holding the space. Best effort; the next
                // write cuts them anyway.
                let _ = blocking(move || keep.set_len(offset)).await;
                return Err(e);
            }
        };
        drop(keep);
        if let Some(announced) = chunk.len
            && announced != written.len
        {
            // The recorded offset is unchanged, so the extra bytes are cut next time.
            return Err(Error::ChunkLength { announced, received: written.len });
        }
        let size = offset
            .checked_add(written.len)
            .ok_or_else(|| Error::Io(std::io::Error::other("an upload cannot exceed 2^64 bytes")))?;
        Ok((size, written.hasher, Session { file: written.file }))
    }
}

#[async_trait]
impl Uploads for FsStorage {
    /// A new session. Its creation is not synced: losing an empty session in a
    /// machine crash loses nothing acknowledged (the client starts over).
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadId> {
        let id = UploadId::random();
        let paths = self.session(repo, id);
        let tmp_dir = self.tmp_dir();
        let state = (algorithm != Algorithm::Sha256)
            .then(|| serde_json::to_vec(&UploadState::new(algorithm)))
            .transpose()
            .map_err(|e| Error::Task(e.to_string()))?;
        blocking(move || {
            let dir = paths.data.parent().ok_or_else(|| std::io::Error::other("sessions have a directory"))?;
            durable::in_dir(dir, || std::fs::File::create(&paths.data))?;
            if let Some(json) = state {
                durable::replace(&tmp_dir, &paths.state, &json, false)?;
            }
            Ok(())
        })
        .await?;
        Ok(id)
    }

    async fn upload_offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        Ok(self.load_state(&self.session(repo, id)).await?.offset)
    }

    async fn upload_append(&self, repo: &RepoName, id: UploadId, chunk: Chunk, body: ByteStream) -> Result<u64> {
        let paths = self.session(repo, id);
        let session = Session::lock(&paths.data).await?;
        let mut state = self.load_state(&paths).await?;
        let (offset, hasher, session) = self.append_locked(session, &paths, &state, chunk, body).await?;
        state.offset = offset;
        state.hash_state = hasher.save();
        let json = serde_json::to_vec(&state).map_err(|e| Error::Task(e.to_string()))?;
        let tmp_dir = self.tmp_dir();
        // The lock goes with the step: if the request is dropped meanwhile, no
        // other request writes the session before the state is recorded.
        blocking(move || {
            durable::write_atomic(&tmp_dir, &paths.state, &json)?;
            drop(session);
            Ok(())
        })
        .await?;
        Ok(offset)
    }

    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64> {
        let paths = self.session(repo, id);
        let session = Session::lock(&paths.data).await?;
        let state = self.load_state(&paths).await?;
        // The last chunk needs no state record of its own: the blob is published
        // (or the session dropped) right after it.
        let (size, hasher, session) = match last {
            Some((chunk, body)) => self.append_locked(session, &paths, &state, chunk, body).await?,
            None => (state.offset, state.hasher(&paths.state)?, session),
        };
        let actual = if hasher.algorithm() == digest.algorithm() {
            hasher.finish()
        } else {
            Self::hash_file(paths.data.clone(), size, digest.algorithm()).await?
        };
        if actual != *digest {
            blocking(move || {
                remove_session(&paths.data, &paths.state)?;
                drop(session);
                Ok(())
            })
            .await?;
            return Err(Error::DigestMismatch);
        }
        // Cut off bytes of an earlier failed chunk, so the published file is
        // exactly what was hashed.
        let session = blocking(move || {
            if session.file.metadata()?.len() != size {
                session.file.set_len(size)?;
                session.file.sync_all()?;
            }
            Ok(session)
        })
        .await?;
        // The lock is released only once the session file has become the blob.
        self.publish_blob(paths.data.clone(), repo, digest, Some(session)).await?;
        blocking(move || durable::remove_if_exists(&paths.state).map(|_| ())).await?;
        Ok(size)
    }

    async fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        let paths = self.session(repo, id);
        let session = Session::lock(&paths.data).await?;
        blocking(move || {
            remove_session(&paths.data, &paths.state)?;
            drop(session);
            Ok(())
        })
        .await
    }

    async fn purge(&self, age: Duration) -> Result<usize> {
        self.purge_leftovers(age).await
    }
}

pub(super) fn remove_session(data: &Path, state: &Path) -> std::io::Result<()> {
    durable::remove_if_exists(state)?;
    durable::remove_if_exists(data).map(|_| ())
}
