//! Table keys. Every table that holds per-bucket rows keys them by the bucket name, a `0x00`
//! separator, then the row's own part:
//!
//! ```text
//!  records, tombstones:   bucket | 00 | user key bytes
//!  changes:               bucket | 00 | rev (u64 big-endian)
//! ```
//!
//! Bucket names never contain `0x00` (see `bucket::validate_bucket_name`), and `0x00` sorts
//! below every byte a name may hold, so plain byte order sorts rows by bucket, then by key (or
//! by revision), and all rows of one bucket are the one range `[bucket 00, bucket 01)`.

use std::ops::Bound;

pub(crate) const SEP: u8 = 0x00;

pub(crate) fn row(bucket: &str, part: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + part.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(SEP);
    k.extend_from_slice(part);
    k
}

pub(crate) fn change(bucket: &str, rev: u64) -> Vec<u8> {
    row(bucket, &rev.to_be_bytes())
}

/// Splits a row key into bucket and part; `None` if the key has no separator or the bucket
/// part is not UTF-8 (only a corrupt file can hold such a key).
pub(crate) fn split(row: &[u8]) -> Option<(&str, &[u8])> {
    let at = row.iter().position(|b| *b == SEP)?;
    let bucket = std::str::from_utf8(&row[..at]).ok()?;
    Some((bucket, &row[at + 1..]))
}

pub(crate) fn change_rev(part: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(part.try_into().ok()?))
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None`
/// when there is none (the prefix is all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Row-key bounds of the rows of `bucket` whose part starts with `prefix`, beginning after
/// `after` (an exclusive resume point, itself a part) when given.
pub(crate) fn bucket_range(
    bucket: &str,
    prefix: &[u8],
    after: Option<&[u8]>,
) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = match after {
        Some(a) if a >= prefix => Bound::Excluded(row(bucket, a)),
        _ => Bound::Included(row(bucket, prefix)),
    };
    let end = match prefix_end(prefix) {
        Some(e) => Bound::Excluded(row(bucket, &e)),
        None => {
            // Every part starting with 0xff..: up to the end of the bucket.
            let mut e = bucket.as_bytes().to_vec();
            e.push(SEP + 1);
            Bound::Excluded(e)
        }
    };
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_bucket_then_part() {
        let mut rows = [
            row("ab", b"\xff"),
            row("a", b"zz"),
            row("abc", b""),
            row("ab", b""),
        ];
        rows.sort();
        assert_eq!(
            rows,
            [
                row("a", b"zz"),
                row("ab", b""),
                row("ab", b"\xff"),
                row("abc", b"")
            ]
        );
        assert!(change("b", 255) < change("b", 256));
        assert_eq!(split(&row("b", b"k\0x")), Some(("b", &b"k\0x"[..])));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
