//! Records: what the store keeps for every key of a bucket, live or deleted.
//!
//! A record is stored as a sealed blob (see `codec.rs`) of format [`RECORD_FORMAT`]:
//!
//! ```text
//!  +----+-------------------------------------------------------------------+-------+
//!  | 01 | value: varint len + bytes | rev | create_rev | version | mtime_ms | crc32 |
//!  |    |                           | (varint u64 each)                     |u32 LE |
//!  |    |                           | deleted: u8 (0 or 1)                  |       |
//!  +----+-------------------------------------------------------------------+-------+
//! ```
//!
//! - `rev`: revision (Raft log index) of the entry that last changed the record. Unique and
//!   increasing cluster-wide.
//! - `create_rev`: revision that created the current life of the key (a put over a tombstone
//!   starts a new life).
//! - `version`: changes since the current life began, starting at 1.
//! - `mtime_ms`: the leader's clock when it proposed the change (never the local clock).
//! - `deleted`: a tombstone. Its value is empty and its `rev` is the delete's revision.

use serde::{Deserialize, Serialize};

use crate::codec;

/// Format version of a sealed record. Changing the layout above is a format change: bump it
/// and teach `decode` the old one.
pub const RECORD_FORMAT: u8 = 1;

/// One key's current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "crate::codec::bytes")]
    pub value: Vec<u8>,
    pub rev: u64,
    pub create_rev: u64,
    pub version: u64,
    pub mtime_ms: u64,
    pub deleted: bool,
}

impl Record {
    /// Sealed bytes of this record.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(
            !self.deleted || self.value.is_empty(),
            "a tombstone has no value"
        );
        codec::seal(RECORD_FORMAT, self)
    }

    /// Decodes sealed bytes, checking crc, version, and canonical encoding, and that a
    /// tombstone carries no value. The error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        let record: Record = codec::unseal(RECORD_FORMAT, bytes)?;
        if record.deleted && !record.value.is_empty() {
            return Err("a tombstone with a value".to_owned());
        }
        if record.create_rev > record.rev {
            return Err(format!(
                "create_rev {} is above rev {}",
                record.create_rev, record.rev
            ));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_drawn() {
        let r = Record {
            value: b"ab".to_vec(),
            rev: 300,
            create_rev: 5,
            version: 2,
            mtime_ms: 1,
            deleted: false,
        };
        let bytes = r.encode();
        // version, len 2, 'a', 'b', 300 = ac 02, 5, 2, 1, deleted 0, then the crc.
        assert_eq!(
            &bytes[..bytes.len() - 4],
            &[1, 2, b'a', b'b', 0xac, 0x02, 5, 2, 1, 0]
        );
        assert_eq!(Record::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn inconsistent_records_refused() {
        let tomb_with_value = Record {
            value: b"x".to_vec(),
            rev: 2,
            create_rev: 1,
            version: 1,
            mtime_ms: 0,
            deleted: true,
        };
        let bytes = codec::seal(RECORD_FORMAT, &tomb_with_value);
        assert!(Record::decode(&bytes).unwrap_err().contains("tombstone"));
        let future_create = Record {
            value: vec![],
            deleted: false,
            create_rev: 3,
            ..tomb_with_value
        };
        let bytes = codec::seal(RECORD_FORMAT, &future_create);
        assert!(Record::decode(&bytes).unwrap_err().contains("create_rev"));
    }
}
