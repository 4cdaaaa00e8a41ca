//! A request body that may carry only so many bytes: the quota's guard for a
//! body whose length nobody announced. It fails before passing on the chunk that
//! would cross the cap, so no backend ever writes a byte past the room left; the
//! backend then drops what it wrote, as for any body that fails.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::Stream;

use super::ByteStream;
use super::error::{Error, Exceeded};
use super::quota::Standing;

/// `body` as a stream that fails once `start` (what the upload holds already)
/// plus the bytes it carried passes the room `limit` leaves.
pub fn capped(body: ByteStream, start: u64, limit: Standing) -> ByteStream {
    Box::pin(Capped { body, total: start, limit, failed: false })
}

struct Capped {
    body: ByteStream,
    total: u64,
    limit: Standing,
    failed: bool,
}

impl Stream for Capped {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let item = ready!(self.body.as_mut().poll_next(cx));
        if let Some(Ok(chunk)) = &item {
            self.total = self.total.saturating_add(chunk.len() as u64);
            if self.total > self.limit.room() {
                self.failed = true;
                return Poll::Ready(Some(Err(io::Error::other(self.limit.refuse(self.total)))));
            }
        }
        Poll::Ready(item)
    }
}

/// The refusal a capped body failed with, back as the error it stands for, once
/// a backend has reported the body's failure as [`Error::Body`].
pub fn refusal(e: Error) -> Error {
    match e {
        Error::Body(io) if io.get_ref().is_some_and(|inner| inner.is::<Exceeded>()) => {
            match io.into_inner().map(|inner| inner.downcast::<Exceeded>()) {
                Some(Ok(exceeded)) => Error::QuotaExceeded(*exceeded),
                _ => Error::Task("a quota refusal lost its reason".into()),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::storage::QuotaScope;

    /// A limit of `room` bytes with nothing used yet.
    fn room(room: u64) -> Standing {
        Standing { scope: QuotaScope::Total, used: 0, limit: room }
    }

    fn body(chunks: &[&'static [u8]]) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    async fn collect(mut s: ByteStream) -> (Vec<u8>, Option<io::Error>) {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn a_body_within_the_room_passes_whole() {
        let (bytes, error) = collect(capped(body(&[b"abc", b"def"]), 4, room(10))).await;
        assert_eq!(bytes, b"abcdef");
        assert!(error.is_none());
    }

    #[tokio::test]
    async fn the_chunk_that_crosses_the_room_is_never_passed_on() {
        let (bytes, error) = collect(capped(body(&[b"abc", b"def", b"ghi"]), 4, room(9))).await;
        assert_eq!(bytes, b"abc", "4 held + 3 fits in 9, 4 + 6 does not");
        let refused = refusal(Error::Body(error.expect("the stream fails")));
        match refused {
            Error::QuotaExceeded(e) => assert_eq!((e.limit, e.needed), (9, 10)),
            other => panic!("not a quota refusal: {other:?}"),
        }
    }

    #[tokio::test]
    async fn after_failing_the_stream_ends() {
        let mut s = capped(body(&[b"abc", b"def"]), 0, room(1));
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.is_none());
    }

    #[test]
    fn other_body_errors_stay_what_they_are() {
        let e = refusal(Error::Body(io::Error::new(io::ErrorKind::TimedOut, "idle")));
        assert!(matches!(e, Error::Body(ref io) if io.kind() == io::ErrorKind::TimedOut), "{e:?}");
    }
}
