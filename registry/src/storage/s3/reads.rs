//! Reading a blob's content. One GET streams at the speed of one connection to
//! the store, which on a fast store is below what the client could take; a
//! large read therefore fetches consecutive segments two at a time, each whole
//! in memory, and hands them out in order. Such reads are bounded in number (a
//! share of `bufferBytes`); past the bound, and for small reads, one GET streams.

use std::ops::Range;

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;

use super::S3Storage;
use crate::storage::{ByteStream, Result};

/// The size of a segment fetched whole.
const SEGMENT: u64 = 8 << 20;
/// Segments in flight per read.
const AHEAD: usize = 2;
/// Reads smaller than this stream through one GET.
const PARALLEL_FROM: u64 = 4 * SEGMENT;

/// How many reads may fetch in parallel: a quarter of `bufferBytes`.
pub fn parallel_reads(buffer_bytes: u64) -> usize {
    ((buffer_bytes / 4) / (SEGMENT * AHEAD as u64)).max(1) as usize
}

impl S3Storage {
    /// `range` of the content at `key`; `None` when the object is gone.
    pub(super) async fn read_content(&self, key: &Path, range: Range<u64>) -> Result<Option<ByteStream>> {
        let permit = match range.end - range.start >= PARALLEL_FROM {
            true => self.parallel_reads.clone().try_acquire_owned().ok(),
            false => None,
        };
        let Some(permit) = permit else {
            return self.objects.read(key, range).await;
        };
        // The first segment is fetched here, so a missing object is `None`
        // rather than an error in the middle of the body.
        let first = range.start..(range.start + SEGMENT).min(range.end);
        let head = match self.objects.read_bytes(key, first.clone()).await {
            Ok(bytes) => bytes,
            Err(_) if !self.objects.exists(key).await? => return Ok(None),
            Err(e) => return Err(e),
        };
        let rest: Vec<Range<u64>> = (first.end..range.end)
            .step_by(SEGMENT as usize)
            .map(|start| start..(start + SEGMENT).min(range.end))
            .collect();
        let (objects, key) = (self.objects.clone(), key.clone());
        let tail = futures_util::stream::iter(rest)
            .map(move |segment| {
                let (objects, key) = (objects.clone(), key.clone());
                async move { objects.read_bytes(&key, segment).await.map_err(std::io::Error::other) }
            })
            .buffered(AHEAD)
            // The permit goes when the body is done or dropped.
            .inspect(move |_| {
                let _ = &permit;
            });
        let body = futures_util::stream::once(async move { Ok(head) }).chain(tail).into_stream();
        Ok(Some(Box::pin(body)))
    }
}
