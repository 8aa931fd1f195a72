//! What travels between nodes (and from clients) over TCP.
//!
//! ```text
//!  frame := len u32 LE | crc32 u32 LE (of payload) | payload (len bytes, postcard)
//! ```
//!
//! A connection opens with a [`Hello`] from the dialing side and a [`HelloReply`]; after a
//! `Welcome`, the dialer sends [`Request`]s and reads one [`Reply`] for each, in order. A frame
//! whose length is over [`FRAME_BYTES_MAX`] is refused before anything is allocated for it; a
//! bad crc or an undecodable payload closes the connection after an error reply. Any change
//! to these types is a protocol change: bump [`PROTOCOL_VERSION`].

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::types::{SnapshotMeta, TypeConfig, Vote};

/// Version of everything in this module, and of the services' payloads it carries (the
/// library's client requests, the GC agents' calls). Nodes and clients of other versions are
/// refused. 2: a client `Join` carries the joining node's incarnation. 3: join tokens
/// (`Enroll`, `JoinToken`, `RevokeJoinToken`), TLS under the hello, users and roles (`Access`,
/// a hello's `token`). 4: a request forwarded for a user carries the user (`OnBehalf`).
pub const PROTOCOL_VERSION: u32 = 4;
/// Longest frame payload: an append of entries with the largest values the store may be
/// configured for still fits, with room for the envelope.
pub const FRAME_BYTES_MAX: usize = metakv_store::VALUE_BYTES_MAX_CEILING + (16 << 20);
/// Bytes of snapshot per chunk frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
const HEADER_BYTES: usize = 8;
/// Most bytes reserved for a payload before any of it has arrived.
const PAYLOAD_PREALLOC_MAX: usize = 64 << 10;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame crc mismatch: stored {stored:08x}, computed {computed:08x}")]
    Crc { stored: u32, computed: u32 },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes one frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_BYTES];
    let mut out = postcard::to_extend(msg, std::mem::take(&mut out))
        .expect("postcard encodes every wire type");
    let len = (out.len() - HEADER_BYTES) as u32;
    let crc = crc32fast::hash(&out[HEADER_BYTES..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a frame header; returns the payload length and crc.
pub fn check_header(header: [u8; HEADER_BYTES]) -> Result<(usize, u32), WireError> {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    Ok((
        len,
        u32::from_le_bytes(header[4..].try_into().expect("4 bytes")),
    ))
}

/// Checks a payload against its crc and decodes it.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8], stored: u32) -> Result<T, WireError> {
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(WireError::Crc { stored, computed });
    }
    let (msg, rest) =
        postcard::take_from_bytes(payload).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// Decodes one whole frame from `bytes`, returning the message and the bytes it used; for
/// tests and fuzzing, the same checks as [`read_frame`].
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), WireError> {
    let header: [u8; HEADER_BYTES] = bytes
        .get(..HEADER_BYTES)
        .ok_or(WireError::Truncated)?
        .try_into()
        .expect("8 bytes");
    let (len, crc) = check_header(header)?;
    let payload = bytes
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or(WireError::Truncated)?;
    Ok((decode_payload(payload, crc)?, HEADER_BYTES + len))
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, WireError> {
    read_frame_max(r, FRAME_BYTES_MAX).await
}

/// [`read_frame`] of a frame at most `max` bytes long (a client's frames are bounded by the
/// largest value the node takes, not by what a peer node may send).
pub async fn read_frame_max<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, WireError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        let n = match r.read(&mut header[got..]).await {
            Ok(n) => n,
            // A TLS peer that closed between frames without a close_notify (a process that
            // exited) has closed the connection, as a plain one that read 0 bytes.
            Err(e) if got == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        match n {
            0 if got == 0 => return Ok(None),
            0 => return Err(WireError::Truncated),
            n => got += n,
        }
    }
    let (len, crc) = check_header(header)?;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    // The buffer grows with the bytes that arrive, not with the length a peer claims: a header
    // announcing the largest frame and then silence costs one small allocation.
    let mut payload = Vec::with_capacity(len.min(PAYLOAD_PREALLOC_MAX));
    r.take(len as u64).read_to_end(&mut payload).await?;
    if payload.len() < len {
        return Err(WireError::Truncated);
    }
    decode_payload(&payload, crc).map(Some)
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    w.write_all(&encode_frame(msg)).await?;
    w.flush().await
}

/// The dialer's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: String,
    /// The dialing node, or `None` for a client.
    pub from: Option<u64>,
    pub protocol: u32,
    /// A client's user token (`metakv user token`), which names the user this connection
    /// acts for in place of its certificate's. The node checks it; the transport only carries
    /// it.
    pub token: Option<String>,
}

impl Hello {
    /// Whether a listener of cluster `cluster_id` admits this dialer; the refusal says why.
    ///
    /// A refusal names what the dialer sent, never what this node expected: a stranger does
    /// not learn the cluster's id by guessing wrong.
    pub fn admit(&self, cluster_id: &str) -> Result<(), String> {
        if self.protocol != PROTOCOL_VERSION {
            Err(format!(
                "protocol version {} is not this node's {PROTOCOL_VERSION}",
                self.protocol
            ))
        } else if self.cluster_id != cluster_id {
            Err(format!(
                "cluster id {:?} is not this node's",
                self.cluster_id
            ))
        } else {
            Ok(())
        }
    }
}

/// The listener's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome { node_id: u64 },
    Refused { reason: String },
}

/// A request after the handshake.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Opens a snapshot transfer of `len` bytes; `SnapshotChunk`s follow, then `SnapshotDone`.
    SnapshotBegin {
        vote: Vote,
        meta: SnapshotMeta,
        len: u64,
    },
    SnapshotChunk(#[serde(with = "metakv_store::codec::bytes")] Vec<u8>),
    SnapshotDone,
    /// A call to a named service of the node (the client API, GC and hibernation agents,
    /// admin): its payload is the service's own postcard message.
    Service {
        service: String,
        #[serde(with = "metakv_store::codec::bytes")]
        payload: Vec<u8>,
    },
}

/// The answer to one [`Request`]. Errors cross the wire as text: the caller reports them, it
/// does not act on their structure (openraft conveys a higher vote inside its responses).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Reply {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    SnapshotChunkAck,
    Snapshot(SnapshotResponse<TypeConfig>),
    Service(#[serde(with = "metakv_store::codec::bytes")] Vec<u8>),
    /// The request failed; the connection stays usable.
    Failed(String),
    /// The request was malformed; the listener closes the connection after this.
    Malformed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_damage() {
        let hello = Hello {
            cluster_id: "c".into(),
            from: Some(3),
            protocol: PROTOCOL_VERSION,
            token: None,
        };
        let bytes = encode_frame(&hello);
        let (back, used) = decode_frame::<Hello>(&bytes).unwrap();
        assert_eq!((back, used), (hello, bytes.len()));
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    decode_frame::<Hello>(&bytes[..cut]),
                    Err(WireError::Truncated)
                ),
                "cut {cut}"
            );
        }
        for i in 4..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode_frame::<Hello>(&bad).is_err(), "flip {i}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame::<Hello>(&huge),
            Err(WireError::TooLarge { .. })
        ));
    }
}
