//! A full check of the bucket's blobs: every pointer names content that exists,
//! has the recorded size and hashes to the pointer's digest. Reads everything.

use futures_util::StreamExt;

use super::S3Storage;
use crate::digest::Hasher;
use crate::storage::{Error, Result};

impl S3Storage {
    /// How many blobs were checked, and what is wrong with the others.
    pub async fn verify_blobs(&self) -> Result<(usize, Vec<String>)> {
        let (mut checked, mut bad) = (0, Vec::new());
        for (digest, _) in self.pointer_keys().await? {
            let Some((pointer, _)) = self.read_pointer(&digest).await? else {
                continue;
            };
            checked += 1;
            let key = self.key(&pointer.data);
            let Some(meta) = self.objects.head_optional(&key).await? else {
                bad.push(format!("{digest}: its content {} is missing", pointer.data));
                continue;
            };
            if meta.size != pointer.size {
                bad.push(format!("{digest}: {} holds {} bytes, not {}", pointer.data, meta.size, pointer.size));
                continue;
            }
            let mut hasher = Hasher::new(digest.algorithm());
            if meta.size > 0 {
                let mut stream = self.objects.read(&key, 0..meta.size).await?.ok_or(Error::BlobUnknown)?;
                while let Some(chunk) = stream.next().await {
                    hasher.update(&chunk.map_err(|e| Error::Remote(e.to_string()))?);
                }
            }
            let actual = hasher.finish();
            if actual != digest {
                bad.push(format!("{digest}: {} hashes to {actual}", pointer.data));
            }
        }
        Ok((checked, bad))
    }
}
