//! Upload sessions, kept in the bucket so a chunked upload continues on any
//! replica and survives restarts. A session's state object holds the bytes
//! acknowledged, the saved hash, the multipart upload and its parts, and the
//! generation of its tail: the bytes after the last full part, stored as their
//! own small object (`<id>.tail.<n>`), since S3 parts but the last must be at
//! least 5 MiB. A request reads the tail back, streams on, sends full parts, and
//! writes the new tail under the next generation before it commits the state;
//! what it wrote is acknowledged only by that commit.
//!
//! A request that writes a session holds a lease in its state, taken and
//! renewed with `If-Match`: two requests, on one replica or on two, never write
//! one session at once, and a lease left by a killed replica expires.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::blobs::{json, parse};
use super::objects::Objects;
use super::parts::Parts;
use super::{S3Storage, now_ms};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::names::{RepoName, UploadId};
use crate::storage::{ByteStream, Chunk, Error, Result, Uploads};

/// How long a lease lasts unless renewed; it is renewed as parts go out.
const LEASE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    algorithm: Algorithm,
    offset: u64,
    hash_state: String,
    /// The key (below the prefix) the blob's content is written to.
    data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload: Option<String>,
    #[serde(default)]
    parts: Vec<String>,
    /// Bytes in the tail object of `generation`.
    tail: u64,
    generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<Held>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Held {
    owner: String,
    until: u64,
}

/// A session held by this request.
pub struct Lease {
    objects: std::sync::Arc<Objects>,
    key: Path,
    state: State,
    e_tag: Option<String>,
    renewed: Instant,
}

impl Lease {
    async fn take(objects: std::sync::Arc<Objects>, key: Path) -> Result<Lease> {
        let read = objects.get_optional(&key).await?.ok_or(Error::UploadUnknown)?;
        let mut state: State = parse(&key, &read.bytes)?;
        if state.lease.as_ref().is_some_and(|held| held.until > now_ms()) {
            return Err(Error::UploadBusy);
        }
        let owner = uuid::Uuid::new_v4().to_string();
        state.lease = Some(Held { owner, until: now_ms() + LEASE.as_millis() as u64 });
        let e_tag = objects.replace(&key, json(&state), read.e_tag).await?.ok_or(Error::UploadBusy)?;
        Ok(Lease { objects, key, state, e_tag, renewed: Instant::now() })
    }

    /// Renews the lease once a third of it has passed; fails if it was lost.
    pub async fn renew_if_due(&mut self) -> Result<()> {
        if self.renewed.elapsed() < LEASE / 3 {
            return Ok(());
        }
        if let Some(held) = &mut self.state.lease {
            held.until = now_ms() + LEASE.as_millis() as u64;
        }
        let e_tag = self.objects.replace(&self.key, json(&self.state), self.e_tag.clone()).await?;
        self.e_tag = e_tag.ok_or(Error::UploadBusy)?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Records `next` and lets the session go.
    async fn commit(self, mut next: State) -> Result<()> {
        next.lease = None;
        self.objects.replace(&self.key, json(&next), self.e_tag).await?.ok_or(Error::UploadBusy)?;
        Ok(())
    }

    /// Lets the session go unchanged (best effort: the lease also expires).
    async fn release(self) {
        let mut state = self.state;
        state.lease = None;
        let _ = self.objects.replace(&self.key, json(&state), self.e_tag).await;
    }
}

impl S3Storage {
    fn session_key(&self, repo: &RepoName, id: UploadId) -> Path {
        self.repo_key(repo, &format!("_uploads/{id}"))
    }

    fn tail_key(&self, session: &Path, generation: u64) -> Path {
        Path::from(format!("{session}.tail.{generation}"))
    }

    /// The session's parts so far, ready to take more bytes, and its hasher.
    async fn reopen(&self, key: &Path, state: &State) -> Result<(Parts, Hasher)> {
        let hasher = Hasher::restore(state.algorithm, &state.hash_state)
            .ok_or_else(|| Error::Corrupt(key.to_string(), "unreadable hash state".into()))?;
        let tail = match state.tail {
            0 => Bytes::new(),
            len => {
                let tail_key = self.tail_key(key, state.generation);
                let read = self.objects.get_optional(&tail_key).await?;
                let bytes = read.map(|r| r.bytes).filter(|b| b.len() as u64 == len);
                bytes.ok_or_else(|| Error::Corrupt(tail_key.to_string(), "the tail is missing or short".into()))?
            }
        };
        let parts = self.parts(self.key(&state.data));
        Ok((parts.resume(state.upload.clone(), state.parts.clone(), tail).await?, hasher))
    }

    /// Streams a chunk into the held session; the parts, hasher and length.
    async fn take_chunk(&self, lease: &mut Lease, chunk: Chunk, body: ByteStream) -> Result<(Parts, Hasher, u64)> {
        let offset = lease.state.offset;
        if let Some(start) = chunk.start
            && start != offset
        {
            return Err(Error::ChunkOutOfOrder { start, offset });
        }
        let state = lease.state.clone();
        let (mut parts, mut hasher) = self.reopen(&lease.key, &state).await?;
        let len = parts.pump(&mut hasher, body, Some(lease)).await?;
        if let Some(announced) = chunk.len
            && announced != len
        {
            return Err(Error::ChunkLength { announced, received: len });
        }
        offset
            .checked_add(len)
            .ok_or_else(|| Error::Io(std::io::Error::other("an upload cannot exceed 2^64 bytes")))?;
        Ok((parts, hasher, len))
    }

    /// Removes a session's objects (its content, if any, is the caller's).
    async fn remove_session(&self, key: &Path, state: &State) -> Result<()> {
        if state.tail > 0 {
            self.objects.delete(&self.tail_key(key, state.generation)).await?;
        }
        self.objects.delete(key).await
    }

    /// Hashes a stored object with `algorithm` (a session finished with another
    /// algorithm than it hashed with).
    async fn hash_object(&self, key: &Path, size: u64, algorithm: Algorithm) -> Result<Digest> {
        let mut hasher = Hasher::new(algorithm);
        if size > 0 {
            let mut stream = self.objects.read(key, 0..size).await?.ok_or(Error::BlobUnknown)?;
            while let Some(chunk) = stream.next().await {
                hasher.update(&chunk.map_err(|e| Error::Remote(e.to_string()))?);
            }
        }
        Ok(hasher.finish())
    }
}

#[async_trait]
impl Uploads for S3Storage {
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadId> {
        let id = UploadId::random();
        let state = State {
            algorithm,
            offset: 0,
            hash_state: Hasher::new(algorithm).save(),
            data: self.objects.relative(&self.new_data_key()),
            upload: None,
            parts: Vec::new(),
            tail: 0,
            generation: 0,
            lease: None,
        };
        // The catalog entry lets the purge find the session (the catalog itself
        // lists only repositories holding content).
        self.mark_index(repo).await?;
        self.objects.create(&self.session_key(repo, id), json(&state)).await?.ok_or(Error::UploadBusy)?;
        Ok(id)
    }

    async fn upload_offset(&self, repo: &RepoName, id: UploadId) -> Result<u64> {
        let key = self.session_key(repo, id);
        let read = self.objects.get_optional(&key).await?.ok_or(Error::UploadUnknown)?;
        Ok(parse::<State>(&key, &read.bytes)?.offset)
    }

    async fn upload_append(&self, repo: &RepoName, id: UploadId, chunk: Chunk, body: ByteStream) -> Result<u64> {
        let mut lease = Lease::take(self.objects.clone(), self.session_key(repo, id)).await?;
        let (mut parts, hasher, len) = match self.take_chunk(&mut lease, chunk, body).await {
            Ok(taken) => taken,
            Err(e) => {
                lease.release().await;
                return Err(e);
            }
        };
        let previous = lease.state.clone();
        let tail = parts.settle().await?;
        let generation = previous.generation + 1;
        let tail_key = self.tail_key(&lease.key, generation);
        if !tail.is_empty() {
            self.objects.put(&tail_key, tail.clone()).await?;
        }
        let next = State {
            offset: previous.offset + len,
            hash_state: hasher.save(),
            upload: parts.upload.clone(),
            parts: parts.sent.clone(),
            tail: tail.len() as u64,
            generation,
            ..previous.clone()
        };
        let key = lease.key.clone();
        if let Err(e) = lease.commit(next.clone()).await {
            self.objects.delete(&tail_key).await?;
            return Err(e);
        }
        if previous.tail > 0 {
            self.objects.delete(&self.tail_key(&key, previous.generation)).await?;
        }
        Ok(next.offset)
    }

    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        last: Option<(Chunk, ByteStream)>,
    ) -> Result<u64> {
        let mut lease = Lease::take(self.objects.clone(), self.session_key(repo, id)).await?;
        let taken = match last {
            Some((chunk, body)) => self.take_chunk(&mut lease, chunk, body).await,
            None => self.reopen(&lease.key, &lease.state).await.map(|(parts, hasher)| (parts, hasher, 0)),
        };
        let (parts, hasher, len) = match taken {
            Ok(taken) => taken,
            Err(e) => {
                lease.release().await;
                return Err(e);
            }
        };
        let state = lease.state.clone();
        let size = state.offset + len;
        let data = self.key(&state.data);
        parts.complete().await?;
        let actual = match hasher.algorithm() == digest.algorithm() {
            true => hasher.finish(),
            false => self.hash_object(&data, size, digest.algorithm()).await?,
        };
        if actual != *digest {
            self.objects.delete(&data).await?;
            self.remove_session(&lease.key, &state).await?;
            return Err(Error::DigestMismatch);
        }
        self.publish(repo, digest, &data, size).await?;
        self.remove_session(&lease.key, &state).await?;
        Ok(size)
    }

    async fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<()> {
        let lease = Lease::take(self.objects.clone(), self.session_key(repo, id)).await?;
        if let Some(upload) = &lease.state.upload {
            self.objects.abort_multipart(&self.key(&lease.state.data), upload).await;
        }
        self.remove_session(&lease.key, &lease.state).await
    }

    /// Sessions not written to for `age` are cancelled, in every repository.
    async fn purge(&self, age: Duration) -> Result<usize> {
        let cutoff = std::time::SystemTime::now().checked_sub(age).unwrap_or(std::time::UNIX_EPOCH);
        let mut purged = 0;
        for repo in self.indexed_repositories().await? {
            for meta in self.objects.list(&self.repo_key(&repo, "_uploads")).await? {
                let name = meta.location.filename().unwrap_or_default().to_owned();
                let old = std::time::SystemTime::from(meta.last_modified) <= cutoff;
                if !old || name.contains(".tail.") {
                    continue;
                }
                let Ok(id) = name.parse::<UploadId>() else { continue };
                match self.upload_cancel(&repo, id).await {
                    Ok(()) => purged += 1,
                    Err(Error::UploadBusy | Error::UploadUnknown) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(purged)
    }
}
