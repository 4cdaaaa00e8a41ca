//! Streaming a request body into a file while hashing it. The body is read on the
//! async runtime and handed to the blocking pool in batches, one batch writing
//! while the next arrives: a client that sends slowly costs a few bytes of memory
//! and no thread, and a fast one keeps network reads and disk writes overlapped.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

use futures_util::StreamExt;

use super::durable::blocking;
use crate::digest::Hasher;
use crate::storage::{ByteStream, Error, Result};

/// Bytes collected before a batch goes to the disk.
/// Chunks are copied into the batch rather than kept: a network chunk can pin a
/// much larger receive buffer, and a client sending tiny chunks must not make the
/// server hold many of them.
const BATCH: usize = 512 * 1024;
/// Bytes per writeback window: dirty data stays bounded and the final sync waits
/// only for the tail.
const WRITEBACK_WINDOW: u64 = 8 << 20;

/// What a stream left: its hash and length, and the synced file.
pub struct Written {
    pub file: File,
    pub hasher: Hasher,
    pub len: u64,
}

/// The writer's state, moved to a blocking thread for each batch and back.
struct Sink {
    file: File,
    hasher: Hasher,
    len: u64,
    start: u64,
    kicked: u64,
    previous: Option<(u64, u64)>,
}

impl Sink {
    fn write(mut self, batch: Vec<u8>) -> io::Result<Sink> {
        self.hasher.update(&batch);
        self.file.write_all(&batch)?;
        self.len += batch.len() as u64;
        if self.len - self.kicked >= WRITEBACK_WINDOW {
            self.kick();
        }
        Ok(self)
    }

    /// Starts writeback of the window just written and waits for the one before.
    fn kick(&mut self) {
        let fd = self.file.as_raw_fd();
        let (from, to) = (self.start + self.kicked, self.start + self.len);
        // Best effort: an error here only means the final fsync does all the work.
        // SAFETY: plain syscalls on a file descriptor we own; no memory is passed.
        unsafe {
            if let Some((a, b)) = self.previous {
                libc::sync_file_range(fd, a as i64, (b - a) as i64, libc::SYNC_FILE_RANGE_WAIT_BEFORE);
            }
            libc::sync_file_range(fd, from as i64, (to - from) as i64, libc::SYNC_FILE_RANGE_WRITE);
        }
        self.previous = Some((from, to));
        self.kicked = self.len;
    }
}

/// Writes `body` to `file` from its current position (`start`) while hashing it;
/// the data is synced before this returns. A body that fails or goes quiet ends
/// with [`Error::Body`]; whatever it wrote is not acknowledged.
pub async fn write_stream(file: File, start: u64, hasher: Hasher, mut body: ByteStream) -> Result<Written> {
    let mut idle = Some(Sink { file, hasher, len: 0, start, kicked: 0, previous: None });
    let mut busy: Option<tokio::task::JoinHandle<io::Result<Sink>>> = None;
    let mut batch = Vec::new();
    loop {
        let next = body.next().await;
        let done = match next {
            Some(Ok(chunk)) => {
                batch.extend_from_slice(&chunk);
                false
            }
            Some(Err(e)) => {
                if let Some(writing) = busy {
                    let _ = writing.await;
                }
                return Err(Error::Body(e));
            }
            None => true,
        };
        if !done && batch.len() < BATCH {
            continue;
        }
        let sink = match busy.take() {
            Some(writing) => writing.await.map_err(|e| Error::Task(e.to_string()))??,
            None => idle.take().ok_or_else(|| Error::Task("writer lost its file".into()))?,
        };
        // A fresh, empty batch: a body that slows down holds only what it sent.
        let full = std::mem::take(&mut batch);
        busy = Some(tokio::task::spawn_blocking(move || sink.write(full)));
        if done {
            break;
        }
    }
    let sink = match busy {
        Some(writing) => writing.await.map_err(|e| Error::Task(e.to_string()))??,
        None => idle.ok_or_else(|| Error::Task("writer lost its file".into()))?,
    };
    blocking(move || {
        sink.file.sync_data()?;
        Ok(Written { file: sink.file, hasher: sink.hasher, len: sink.len })
    })
    .await
}
