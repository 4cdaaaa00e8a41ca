//! Upload sessions, kept on disk so they survive restarts and can continue on
//! another replica that shares the volume: `repositories/<name>/_uploads/<id>`
//! holds the bytes received and `<id>.json` beside it the acknowledged size and
//! the hasher's saved state. A session without a state file has received nothing
//! yet and hashes with SHA-256, so starting an upload creates a single empty file
//! and a blob pushed with POST + PUT allocates no other inode (creating and
//! deleting files per upload is what an ext4 volume handles worst).
//!
//! A chunk is acknowledged only after its bytes are synced and the new state is
//! atomically and durably in place. Bytes beyond the recorded size (a chunk that
//! was being written when the process died) are cut off before the next write.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::FsStorage;
use super::blobs::write_stream;
use super::durable::{self, blocking};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::names::RepoName;
use crate::storage::{ByteStream, Chunk};

const STRIPES: usize = 64;

/// Serialises requests on one upload within this process (striped by id).
pub struct Locks([Arc<Mutex<()>>; STRIPES]);

impl Default for Locks {
    fn default() -> Self {
        Locks(std::array::from_fn(|_| Arc::new(Mutex::new(()))))
    }
}

impl Locks {
    async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let stripe = id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % STRIPES;
        self.0[stripe].clone().lock_owned().await
    }
}

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
}

/// Upload ids are UUIDs; anything else never reaches the filesystem.
fn valid_id(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

impl FsStorage {
    fn session(&self, repo: &RepoName, id: &str) -> (PathBuf, PathBuf) {
        let dir = self.repo_dir(repo).join("_uploads");
        (dir.join(id), dir.join(format!("{id}.json")))
    }

    /// A new session. Its creation is not synced: losing an empty session in a
    /// machine crash loses nothing acknowledged (the client starts over).
    pub(super) async fn start_upload(&self, repo: &RepoName, algorithm: Algorithm) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let (data, state_path) = self.session(repo, &id);
        let tmp_dir = self.tmp_dir();
        let state = (algorithm != Algorithm::Sha256)
            .then(|| serde_json::to_vec(&UploadState::new(algorithm)))
            .transpose()
            .map_err(|e| Error::Internal(e.to_string()))?;
        blocking(move || {
            if let Some(parent) = data.parent() {
                durable::ensure_dir(parent)?;
            }
            std::fs::File::create(&data)?;
            if let Some(json) = state {
                durable::replace(&tmp_dir, &state_path, &json, false)?;
            }
            Ok(())
        })
        .await?;
        Ok(id)
    }

    pub(super) async fn load_upload(&self, repo: &RepoName, id: &str) -> Result<UploadState> {
        if !valid_id(id) {
            return Err(Error::UploadUnknown);
        }
        let (data, state_path) = self.session(repo, id);
        let (exists, bytes) = blocking(move || Ok((data.exists(), durable::read_optional(&state_path)?))).await?;
        match (exists, bytes) {
            (false, _) => Err(Error::UploadUnknown),
            (true, None) => Ok(UploadState::new(Algorithm::Sha256)),
            (true, Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Internal(format!("upload {id} has a damaged state file: {e}"))),
        }
    }

    /// Writes a chunk after the acknowledged bytes (cutting off anything a crashed
    /// write left beyond them) and returns the new size and hash state. The caller
    /// holds the session's lock and decides whether to record the new state.
    async fn append_locked(
        &self,
        repo: &RepoName,
        id: &str,
        state: &UploadState,
        chunk: Chunk,
        body: ByteStream,
    ) -> Result<(u64, Hasher)> {
        if let Some(start) = chunk.start
            && start != state.offset
        {
            return Err(Error::ChunkOutOfOrder {
                start,
                offset: state.offset,
                location: crate::api::upload_location(repo, id),
            });
        }
        let hasher = Hasher::restore(state.algorithm, &state.hash_state)
            .ok_or_else(|| Error::Internal(format!("upload {id} has a damaged hash state")))?;
        let (data, _) = self.session(repo, id);
        let offset = state.offset;
        let file = blocking(move || {
            let mut file = OpenOptions::new().write(true).open(&data)?;
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            Ok(file)
        })
        .await?;
        let written = write_stream(file, hasher, body).await?;
        if let Some(expected) = chunk.len
            && expected != written.len
        {
            // The recorded offset is unchanged, so the extra bytes are cut next time.
            return Err(Error::UploadInvalid(format!("chunk announced {expected} bytes but carried {}", written.len)));
        }
        Ok((offset + written.len, written.hasher))
    }

    /// A chunk is acknowledged once its bytes are synced and the new state is
    /// durably in place.
    pub(super) async fn append_upload(&self, repo: &RepoName, id: &str, chunk: Chunk, body: ByteStream) -> Result<u64> {
        let _guard = self.upload_locks.lock(id).await;
        let mut state = self.load_upload(repo, id).await?;
        let (offset, hasher) = self.append_locked(repo, id, &state, chunk, body).await?;
        state.offset = offset;
        state.hash_state = hasher.save();
        let (_, state_path) = self.session(repo, id);
        let tmp_dir = self.tmp_dir();
        let json = serde_json::to_vec(&state).map_err(|e| Error::Internal(e.to_string()))?;
        blocking(move || durable::write_atomic(&tmp_dir, &state_path, &json)).await?;
        Ok(state.offset)
    }

    pub(super) async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64> {
        let _guard = self.upload_locks.lock(id).await;
        let state = self.load_upload(repo, id).await?;
        // The last chunk needs no state record of its own: the blob is published
        // (or the session dropped) right after it.
        let (size, hasher) = match last {
            Some((chunk, body)) => {
                let (size, hasher) = self.append_locked(repo, id, &state, chunk, body).await?;
                (size, Some(hasher))
            }
            None => (state.offset, Hasher::restore(state.algorithm, &state.hash_state)),
        };
        let (data, state_path) = self.session(repo, id);
        let actual = match hasher {
            Some(h) if h.algorithm() == digest.algorithm() => h.finish(),
            Some(_) => Self::hash_file(data.clone(), size, digest.algorithm()).await?,
            None => return Err(Error::Internal(format!("upload {id} has a damaged hash state"))),
        };
        if actual != *digest {
            blocking(move || remove_session(&data, &state_path)).await?;
            return Err(Error::DigestMismatch);
        }
        let check = data.clone();
        blocking(move || {
            let file = OpenOptions::new().write(true).open(&check)?;
            if file.metadata()?.len() != size {
                file.set_len(size)?;
                file.sync_all()?;
            }
            Ok(())
        })
        .await?;
        self.publish_blob(data, repo, digest).await?;
        blocking(move || durable::remove_if_exists(&state_path).map(|_| ())).await?;
        Ok(size)
    }

    /// Removes sessions whose data file was last written before `age` ago.
    pub(super) async fn purge_stale_uploads(&self, age: std::time::Duration) -> Result<usize> {
        let repos = self.list_upload_dirs().await?;
        blocking(move || {
            let cutoff = std::time::SystemTime::now() - age;
            let mut purged = 0;
            for dir in repos {
                for name in durable::list_dir(&dir)? {
                    if !valid_id(&name) {
                        continue;
                    }
                    let data = dir.join(&name);
                    let stale = std::fs::metadata(&data).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
                    if stale {
                        remove_session(&data, &dir.join(format!("{name}.json")))?;
                        purged += 1;
                    }
                }
            }
            Ok(purged)
        })
        .await
    }

    pub(super) async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        let _guard = self.upload_locks.lock(id).await;
        self.load_upload(repo, id).await?;
        let (data, state_path) = self.session(repo, id);
        blocking(move || remove_session(&data, &state_path)).await
    }
}

fn remove_session(data: &std::path::Path, state: &std::path::Path) -> std::io::Result<()> {
    for path in [state, data] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
