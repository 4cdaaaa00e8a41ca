//! A body streamed into one object: into a multipart upload one part at a time
//! (at most one part being filled and one being sent), or, when it stays under
//! one part, into a single PUT. The object appears only when the upload is
//! completed, whole.
//!
//! Memory is bounded by `storage.s3.bufferBytes`, counted in MiB: a buffer past
//! its first MiB reserves a whole part at once (so every holder can finish its
//! part and nobody waits on a half-filled buffer of another), and the
//! reservation travels with the part until it is sent.

use std::sync::Arc;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::path::Path;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::Objects;
use super::uploads::Lease;
use crate::digest::Hasher;
use crate::storage::{ByteStream, Error, Result};

/// A buffer holds up to this much without a reservation.
const FREE: usize = 1 << 20;
/// How long an upload waits for memory before it is turned away (429).
const MEMORY_WAIT: Duration = Duration::from_secs(10);

/// Whole MiB needed for `bytes`.
pub fn mib(bytes: usize) -> usize {
    bytes.div_ceil(1 << 20)
}

/// The parts of one object so far.
pub struct Parts {
    objects: Arc<Objects>,
    pub key: Path,
    part_size: usize,
    memory: Arc<Semaphore>,
    /// The buffer's reservation, once it grew past [`FREE`].
    reserved: Option<OwnedSemaphorePermit>,
    /// The multipart upload, once the first part was sent.
    pub upload: Option<String>,
    /// Content ids of the parts sent, in order.
    pub sent: Vec<String>,
    buffer: BytesMut,
    sending: Option<JoinHandle<Result<String>>>,
}

impl Parts {
    pub fn new(objects: Arc<Objects>, key: Path, part_size: usize, memory: Arc<Semaphore>) -> Self {
        Parts {
            objects,
            key,
            part_size,
            memory,
            reserved: None,
            upload: None,
            sent: Vec::new(),
            buffer: BytesMut::new(),
            sending: None,
        }
    }

    /// Reserves a part's memory once the buffer is to grow past [`FREE`].
    async fn reserve(&mut self, growing_to: usize) -> Result<()> {
        if self.reserved.is_some() || growing_to <= FREE {
            return Ok(());
        }
        let wanted = mib(self.part_size + FREE) as u32;
        let acquire = self.memory.clone().acquire_many_owned(wanted);
        match tokio::time::timeout(MEMORY_WAIT, acquire).await {
            Ok(Ok(permit)) => {
                self.reserved = Some(permit);
                Ok(())
            }
            _ => Err(Error::Busy("uploads hold all of storage.s3.bufferBytes")),
        }
    }

    /// Continues an upload whose parts `sent` are in `upload`, with `tail` (the
    /// bytes after them) not sent yet.
    pub async fn resume(mut self, upload: Option<String>, sent: Vec<String>, tail: Bytes) -> Result<Self> {
        self.upload = upload;
        self.sent = sent;
        self.reserve(tail.len()).await?;
        self.buffer.extend_from_slice(&tail);
        Ok(self)
    }

    /// Streams `body` in, hashing it; returns its length. A failing body ends
    /// with [`Error::Body`]; what it sent is then not acknowledged by anyone.
    /// `lease`, when given, is renewed as parts go out.
    pub async fn pump(
        &mut self,
        hasher: &mut Hasher,
        mut body: ByteStream,
        mut lease: Option<&mut Lease>,
    ) -> Result<u64> {
        let mut len = 0u64;
        while let Some(item) = body.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.settle_sending().await?;
                    return Err(Error::Body(e));
                }
            };
            hasher.update(&chunk);
            len += chunk.len() as u64;
            if let Err(e) = self.reserve(self.buffer.len() + chunk.len()).await {
                self.settle_sending().await?;
                return Err(e);
            }
            // Copied, not kept: a network chunk can pin a larger receive buffer.
            self.buffer.extend_from_slice(&chunk);
            if self.buffer.len() >= self.part_size {
                if let Some(lease) = lease.as_deref_mut() {
                    lease.renew_if_due().await?;
                }
                self.send_part().await?;
            }
        }
        Ok(len)
    }

    /// Sends the buffer as the next part, after the part before has gone.
    async fn send_part(&mut self) -> Result<()> {
        self.settle_sending().await?;
        let upload = match &self.upload {
            Some(id) => id.clone(),
            None => {
                let id = self.objects.start_multipart(&self.key).await?;
                self.upload = Some(id.clone());
                id
            }
        };
        let data = self.buffer.split().freeze();
        // A fresh buffer: the sent one is freed with its reservation once sent.
        self.buffer = BytesMut::new();
        let reservation = self.reserved.take();
        let (objects, key, index) = (self.objects.clone(), self.key.clone(), self.sent.len());
        self.sending = Some(tokio::spawn(async move {
            let sent = objects.put_part(&key, &upload, index, vec![data]).await;
            drop(reservation);
            sent
        }));
        Ok(())
    }

    /// Waits for the part in flight and records it.
    async fn settle_sending(&mut self) -> Result<()> {
        if let Some(sending) = self.sending.take() {
            let content_id = sending.await.map_err(|e| Error::Task(e.to_string()))??;
            self.sent.push(content_id);
        }
        Ok(())
    }

    /// Every part sent; returns the bytes not sent (less than a part).
    pub async fn settle(&mut self) -> Result<Bytes> {
        self.settle_sending().await?;
        Ok(self.buffer.split().freeze())
    }

    /// Makes the object: the rest as the last part, or everything as one PUT.
    pub async fn complete(mut self) -> Result<()> {
        let rest = self.settle().await?;
        match self.upload.clone() {
            None => {
                self.objects.put(&self.key, rest).await?;
            }
            Some(upload) => {
                if !rest.is_empty() {
                    let id = self.objects.put_part(&self.key, &upload, self.sent.len(), vec![rest]).await?;
                    self.sent.push(id);
                }
                self.objects.complete_multipart(&self.key, &upload, &self.sent).await?;
            }
        }
        Ok(())
    }

    /// Drops what was sent (best effort).
    pub async fn abort(mut self) {
        let _ = self.settle_sending().await;
        if let Some(upload) = &self.upload {
            self.objects.abort_multipart(&self.key, upload).await;
        }
    }
}
