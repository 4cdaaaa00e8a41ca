//! The byte ranges of the wire: `Range` on blob GETs and `Content-Range` on
//! upload chunks. Pure functions of header values, so they are tested directly
//! (`tests/parsers.rs` runs them on arbitrary input).

use std::ops::Range;

use crate::error::{Error, Result};
use crate::storage::Chunk;

/// A single `bytes=` range within a blob of `size` bytes. Ranges this server does
/// not serve (several ranges, other units, malformed) are ignored, as HTTP allows;
/// a range outside the blob or ending before it starts is refused with 416.
pub fn range(value: Option<&str>, size: u64) -> Result<Option<Range<u64>>> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = Error::BlobRangeInvalid { size };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else { return Ok(None) };
        if suffix == 0 {
            return Err(unsatisfiable);
        }
        size.saturating_sub(suffix)..size
    } else {
        let Ok(start) = first.parse::<u64>() else { return Ok(None) };
        let end = if last.is_empty() {
            size
        } else {
            let Ok(last) = last.parse::<u64>() else { return Ok(None) };
            if last < start {
                return Err(unsatisfiable);
            }
            last.saturating_add(1).min(size)
        };
        if start >= size {
            return Err(unsatisfiable);
        }
        start..end
    };
    // A suffix of an empty blob selects nothing: unsatisfiable, as RFC 9110 says.
    if range.is_empty() {
        return Err(unsatisfiable);
    }
    Ok(Some(range))
}

/// Reads an upload chunk's `Content-Range: <start>-<end>` (also with a `bytes `
/// prefix or `/<total>` suffix, as some clients send it) and checks it against
/// `Content-Length`.
pub fn content_range(value: &str, content_length: Option<u64>) -> Result<Chunk> {
    let malformed = || Error::UploadInvalid(format!("malformed Content-Range {value:?}, expected <start>-<end>"));
    let spec = value.trim().trim_start_matches("bytes").trim_start_matches(['=', ' ']);
    let spec = spec.split('/').next().unwrap_or("");
    let (start, end) = spec.split_once('-').ok_or_else(malformed)?;
    let start: u64 = start.trim().parse().map_err(|_| malformed())?;
    let end: u64 = end.trim().parse().map_err(|_| malformed())?;
    // end - start + 1, which does not fit for 0-18446744073709551615.
    let len = end.checked_sub(start).and_then(|n| n.checked_add(1)).ok_or_else(malformed)?;
    if content_length.is_some_and(|l| l != len) {
        return Err(Error::UploadInvalid(format!("Content-Range {value:?} does not match Content-Length")));
    }
    Ok(Chunk { start: Some(start), len: Some(len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, size: u64) -> Result<Option<Range<u64>>> {
        range(Some(v), size)
    }

    #[test]
    fn ranges() {
        assert_eq!(r("bytes=0-9", 100).unwrap(), Some(0..10));
        assert_eq!(r("bytes=90-", 100).unwrap(), Some(90..100));
        assert_eq!(r("bytes=-10", 100).unwrap(), Some(90..100));
        assert_eq!(r("bytes=95-200", 100).unwrap(), Some(95..100));
        assert_eq!(r("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(r("items=0-1", 100).unwrap(), None);
        assert_eq!(r("bytes=x-1", 100).unwrap(), None);
        assert_eq!(range(None, 100).unwrap(), None);
        assert!(r("bytes=100-", 100).is_err());
        assert!(r("bytes=-0", 100).is_err());
        assert!(r("bytes=50-0", 100).is_err());
        assert!(r("bytes=-1", 0).is_err());
        assert!(r("bytes=0-", 0).is_err());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("0-9", Some(10)).unwrap(), Chunk { start: Some(0), len: Some(10) });
        assert_eq!(content_range("bytes 5-5/100", None).unwrap(), Chunk { start: Some(5), len: Some(1) });
        assert!(content_range("0-9", Some(9)).is_err());
        assert!(content_range("9-0", None).is_err());
        assert!(content_range("0-18446744073709551615", None).is_err());
        assert!(content_range("x", None).is_err());
    }
}
