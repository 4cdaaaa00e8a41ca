//! The bucket as this backend uses it: keys below the prefix, reads that treat a
//! missing object as `None`, and conditional writes that survive the client's
//! retries (a create or replace whose first attempt landed but whose answer was
//! lost is retried and refused; the object then holds exactly our bytes).

use std::ops::Range;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::storage::{ByteStream, Error, Result};

#[derive(Clone)]
pub struct Objects {
    store: AmazonS3,
    prefix: String,
}

/// An object's version (its ETag), for conditional writes.
pub type Version = Option<String>;

/// An object's bytes with the version they were read at.
pub struct Read {
    pub bytes: Bytes,
    pub e_tag: Version,
}

pub(super) fn remote(e: object_store::Error) -> Error {
    Error::Remote(e.to_string())
}

/// Requests in flight at once when many small objects are read or deleted.
pub const FANOUT: usize = 32;

impl Objects {
    pub fn new(store: AmazonS3, prefix: &str) -> Self {
        Objects { store, prefix: prefix.to_owned() }
    }

    pub fn key(&self, relative: &str) -> Path {
        match self.prefix.is_empty() {
            true => Path::from(relative),
            false => Path::from(format!("{}/{relative}", self.prefix)),
        }
    }

    /// `key` without the prefix.
    pub fn relative(&self, key: &Path) -> String {
        let full = key.as_ref();
        match self.prefix.is_empty() {
            true => full.to_owned(),
            false => full.strip_prefix(&self.prefix).map_or(full, |r| r.trim_start_matches('/')).to_owned(),
        }
    }

    pub async fn get_optional(&self, key: &Path) -> Result<Option<Read>> {
        match self.store.get(key).await {
            Ok(result) => {
                let e_tag = result.meta.e_tag.clone();
                let bytes = result.bytes().await.map_err(remote)?;
                Ok(Some(Read { bytes, e_tag }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote(e)),
        }
    }

    pub async fn head_optional(&self, key: &Path) -> Result<Option<ObjectMeta>> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote(e)),
        }
    }

    pub async fn exists(&self, key: &Path) -> Result<bool> {
        Ok(self.head_optional(key).await?.is_some())
    }

    /// Writes unconditionally (last writer wins); returns the new version.
    pub async fn put(&self, key: &Path, bytes: Bytes) -> Result<Version> {
        let result = self.store.put(key, PutPayload::from(bytes)).await.map_err(remote)?;
        Ok(result.e_tag)
    }

    /// Creates `key` unless it exists; `None` when it did (and holds other bytes).
    pub async fn create(&self, key: &Path, bytes: Bytes) -> Result<Option<Version>> {
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(key, PutPayload::from(bytes.clone()), opts).await {
            Ok(result) => Ok(Some(result.e_tag)),
            Err(object_store::Error::AlreadyExists { .. }) => self.ours(key, &bytes).await,
            Err(e) => Err(remote(e)),
        }
    }

    /// Replaces `key` if it is still at `e_tag`; `None` when it changed.
    pub async fn replace(&self, key: &Path, bytes: Bytes, e_tag: Version) -> Result<Option<Version>> {
        let version = UpdateVersion { e_tag, version: None };
        let opts = PutOptions { mode: PutMode::Update(version), ..PutOptions::default() };
        match self.store.put_opts(key, PutPayload::from(bytes.clone()), opts).await {
            Ok(result) => Ok(Some(result.e_tag)),
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => {
                self.ours(key, &bytes).await
            }
            Err(e) => Err(remote(e)),
        }
    }

    /// After a refused conditional write: the version holding exactly `bytes`
    /// (our own earlier attempt), if that is what the object holds.
    async fn ours(&self, key: &Path, bytes: &Bytes) -> Result<Option<Version>> {
        Ok(self.get_optional(key).await?.filter(|read| read.bytes == *bytes).map(|read| read.e_tag))
    }

    /// Deletes `key`; a missing object is no error.
    pub async fn delete(&self, key: &Path) -> Result<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote(e)),
        }
    }

    pub async fn delete_all(&self, keys: Vec<Path>) -> Result<()> {
        futures_util::stream::iter(keys)
            .map(|key| async move { self.delete(&key).await })
            .buffer_unordered(FANOUT)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    /// Every object below `prefix` (a directory: a `/` is implied).
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.store.list(Some(prefix)).try_collect().await.map_err(remote)
    }

    /// Whether anything is stored below `prefix` (one short listing).
    pub async fn any(&self, prefix: &Path) -> Result<bool> {
        Ok(self.store.list(Some(prefix)).next().await.transpose().map_err(remote)?.is_some())
    }

    /// The names directly below `prefix`: objects and common prefixes.
    pub async fn list_names(&self, prefix: &Path) -> Result<(Vec<ObjectMeta>, Vec<String>)> {
        let listed = self.store.list_with_delimiter(Some(prefix)).await.map_err(remote)?;
        let dirs = listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect();
        Ok((listed.objects, dirs))
    }

    /// `range` of an object as a stream; `None` when it is gone.
    pub async fn read(&self, key: &Path, range: Range<u64>) -> Result<Option<ByteStream>> {
        let opts = GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() };
        match self.store.get_opts(key, opts).await {
            Ok(result) => Ok(Some(Box::pin(result.into_stream().map_err(std::io::Error::other)))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote(e)),
        }
    }

    pub async fn start_multipart(&self, key: &Path) -> Result<String> {
        self.store.create_multipart(key).await.map_err(remote)
    }

    pub async fn put_part(&self, key: &Path, id: &str, index: usize, data: Vec<Bytes>) -> Result<String> {
        let payload: PutPayload = data.into_iter().collect();
        let part = self.store.put_part(key, &id.to_owned(), index, payload).await.map_err(remote)?;
        Ok(part.content_id)
    }

    pub async fn complete_multipart(&self, key: &Path, id: &str, parts: &[String]) -> Result<()> {
        let parts = parts.iter().map(|content_id| PartId { content_id: content_id.clone() }).collect();
        self.store.complete_multipart(key, &id.to_owned(), parts).await.map_err(remote)?;
        Ok(())
    }

    /// Best effort: an upload left open is also removed by the bucket's lifecycle rule.
    pub async fn abort_multipart(&self, key: &Path, id: &str) {
        if let Err(e) = self.store.abort_multipart(key, &id.to_owned()).await {
            tracing::debug!(error = %e, %key, "aborting a multipart upload failed");
        }
    }

    pub async fn signed_get(&self, key: &Path, expires: std::time::Duration) -> Result<String> {
        let url = self.store.signed_url(axum::http::Method::GET, key, expires).await.map_err(remote)?;
        Ok(url.to_string())
    }
}
