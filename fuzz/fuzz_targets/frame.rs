//! Arbitrary bytes into the transport's frame and handshake decoders: never a panic, a length
//! over the frame limit refused from the header alone, the streaming reader agreeing with the
//! whole-frame decoder (its buffer grows with the bytes that arrive, never past the limit),
//! every accepted frame re-encoding to a frame that decodes the same, and a handshake admitted
//! only with this cluster's id and protocol version.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metakv_raft::wire::{
    FRAME_BYTES_MAX, Hello, HelloReply, PROTOCOL_VERSION, Reply, Request, WireError, check_header,
    decode_frame, encode_frame, read_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `bytes` as a `T` frame; an accepted one must survive a round trip.
fn one<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    match decode_frame::<T>(bytes) {
        Ok((msg, used)) => {
            assert!(used <= bytes.len());
            let again = encode_frame(&msg);
            let (back, used_again) = decode_frame::<T>(&again).expect("a re-encoded frame");
            assert_eq!(used_again, again.len());
            assert_eq!(encode_frame(&back), again, "encoding is stable");
        }
        Err(e) => {
            // Every refusal says what was wrong.
            assert!(!e.to_string().is_empty());
            if let WireError::TooLarge { len, max } = e {
                assert!(len > max && max == FRAME_BYTES_MAX);
            }
        }
    }
}

const CLUSTER: &str = "fuzz-cluster";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|bytes: &[u8]| {
    // The reader the server runs on a connection, over the same bytes.
    let streamed = runtime().block_on(async {
        let mut r = bytes;
        read_frame::<_, Hello>(&mut r).await
    });
    match (&streamed, decode_frame::<Hello>(bytes)) {
        (Ok(Some(a)), Ok((b, _))) => {
            assert_eq!(a, &b);
            let admitted = a.admit(CLUSTER);
            assert_eq!(
                admitted.is_ok(),
                a.protocol == PROTOCOL_VERSION && a.cluster_id == CLUSTER,
                "{admitted:?}"
            );
        }
        (Ok(None), Err(WireError::Truncated)) => assert!(bytes.is_empty()),
        (Err(_), Err(_)) => {}
        (s, d) => panic!("the reader said {s:?}, the decoder {d:?}"),
    }
    if let Some(header) = bytes.get(..8) {
        let header: [u8; 8] = header.try_into().unwrap();
        // What `read_frame` allocates is the length this check let through.
        if let Ok((len, _)) = check_header(header) {
            assert!(len <= FRAME_BYTES_MAX);
        }
    }
    one::<Hello>(bytes);
    one::<HelloReply>(bytes);
    one::<Request>(bytes);
    one::<Reply>(bytes);
});
