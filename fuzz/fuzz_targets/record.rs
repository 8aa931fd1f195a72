//! Arbitrary bytes into the record decoder (crc, format version, postcard, contents): never a
//! panic, and any record it accepts re-encodes to exactly the bytes it was decoded from (so no
//! two encodings of one record are both accepted, and nothing is silently dropped).

#![no_main]

use libfuzzer_sys::fuzz_target;
use metakv_store::Record;

fuzz_target!(|bytes: &[u8]| {
    match Record::decode(bytes) {
        Ok(record) => {
            assert_eq!(record.encode(), bytes, "{record:?}");
            assert!(!record.deleted || record.value.is_empty());
            assert!(record.create_rev <= record.rev);
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
