//! Sealed blobs: the one checked encoding under every persisted value of the store.
//!
//! ```text
//!  0         1                                   n          n+4
//!  +---------+-----------------------------------+----------+
//!  | version |  postcard body                    |  crc32   |
//!  |   u8    |  (serde fields in declared order) |  u32 LE  |
//!  +---------+-----------------------------------+----------+
//!             crc32 (crc32fast, IEEE) covers bytes 0..n
//! ```
//!
//! Decoding is strict, so that every accepted blob re-encodes to exactly the same bytes:
//! the crc must match, the version must be the one asked for, the body must be consumed
//! whole, and postcard's varints must be minimal (postcard itself accepts over-long varints;
//! we compare the body length with the canonical length to refuse them).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes a seal adds around a body: the version byte and the crc.
pub const SEAL_OVERHEAD: usize = 1 + 4;

/// Encodes `value` as a sealed blob of format `version`.
pub fn seal<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let body_len =
        postcard::experimental::serialized_size(value).expect("postcard can size every store type");
    let mut out = Vec::with_capacity(body_len + SEAL_OVERHEAD);
    out.push(version);
    let mut out = postcard::to_extend(value, out).expect("postcard can encode every store type");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a sealed blob of format `version`; the error says what is wrong with it.
pub fn unseal<T: Serialize + DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, String> {
    if bytes.len() < SEAL_OVERHEAD {
        return Err(format!(
            "{} bytes is too short for a sealed value",
            bytes.len()
        ));
    }
    let (payload, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("split at 4"));
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(format!(
            "crc mismatch: stored {stored:08x}, computed {computed:08x}"
        ));
    }
    if payload[0] != version {
        return Err(format!(
            "format version {} is not the expected {version}",
            payload[0]
        ));
    }
    let body = &payload[1..];
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| format!("decode: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the value", rest.len()));
    }
    match postcard::experimental::serialized_size(&value) {
        Ok(n) if n == body.len() => Ok(value),
        _ => Err("non-canonical encoding".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_detected() {
        let v: (u64, Vec<u8>, bool) = (300, b"hello".to_vec(), true);
        let sealed = seal(7, &v);
        assert_eq!(unseal::<(u64, Vec<u8>, bool)>(7, &sealed).unwrap(), v);
        assert!(
            unseal::<(u64, Vec<u8>, bool)>(8, &sealed)
                .unwrap_err()
                .contains("version")
        );
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    unseal::<(u64, Vec<u8>, bool)>(7, &bad).is_err(),
                    "flip {i}.{bit}"
                );
            }
        }
        for n in 0..sealed.len() {
            assert!(
                unseal::<(u64, Vec<u8>, bool)>(7, &sealed[..n]).is_err(),
                "cut at {n}"
            );
        }
    }

    #[test]
    fn overlong_varint_refused() {
        // 0 encoded as 0x80 0x00 instead of 0x00, with a correct crc.
        let mut payload = vec![1u8, 0x80, 0x00];
        let crc = crc32fast::hash(&payload);
        payload.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            unseal::<u64>(1, &payload).unwrap_err(),
            "non-canonical encoding"
        );
    }
}

/// Serde glue for `Vec<u8>` fields: bytes in one piece instead of one element at a time.
///
/// postcard writes a byte string and a sequence of `u8` identically (a varint length, then
/// the bytes), so this changes no format; it makes encoding, decoding and sizing a value a
/// copy instead of a trip through serde's visitor per byte. Use as
/// `#[serde(with = "crate::codec::bytes")]`.
pub mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}
