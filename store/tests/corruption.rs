//! Damage to records on disk: a flipped byte inside a record's value is caught by the record's
//! crc on `get`, and reported by `check` with its bucket and key, while other records still
//! read normally.

use metakv_store::*;

#[test]
fn flipped_value_byte_is_corrupt_on_get_and_in_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let marker = b"MARKER-value-that-is-easy-to-find-in-the-file".to_vec();
    {
        let store = Store::open(Config::new(&path)).unwrap();
        store
            .apply(
                &Op::CreateBucket {
                    bucket: "users".into(),
                },
                Stamp { rev: 1, time_ms: 0 },
            )
            .unwrap();
        for (rev, (key, value)) in [
            (b"ada".to_vec(), marker.clone()),
            (b"bob".to_vec(), b"fine".to_vec()),
        ]
        .into_iter()
        .enumerate()
        {
            let op = Op::Put {
                bucket: "users".into(),
                key,
                value,
                expect: Expect::Any,
            };
            store
                .apply(
                    &op,
                    Stamp {
                        rev: 2 + rev as u64,
                        time_ms: 0,
                    },
                )
                .unwrap();
        }
    }
    let mut file = std::fs::read(&path).unwrap();
    let at = file
        .windows(marker.len())
        .position(|w| w == marker.as_slice())
        .expect("the value is in the file");
    assert_eq!(
        file.windows(marker.len())
            .filter(|w| *w == marker.as_slice())
            .count(),
        1
    );
    file[at + 10] ^= 0x01;
    std::fs::write(&path, &file).unwrap();

    let mut store = Store::open(Config::new(&path)).unwrap();
    match store.get("users", b"ada") {
        Err(Error::Corrupt {
            bucket,
            key,
            reason,
        }) => {
            assert_eq!(
                (bucket.as_str(), key.to_string().as_str()),
                ("users", "\"ada\"")
            );
            assert!(reason.contains("crc"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.get("users", b"bob").unwrap().unwrap().value, b"fine");
    let report = store.check().unwrap();
    assert!(!report.is_ok());
    assert!(
        report.problems.iter().any(|p| matches!(p, Problem::Record { bucket, key, .. } if bucket == "users" && key.0 == b"ada")),
        "{report:?}"
    );
    assert_eq!(report.records_checked, 2);
    // redb's page checksums see the damage too.
    assert!(
        matches!(report.file, FileCheck::Failed(_) | FileCheck::Repaired),
        "{:?}",
        report.file
    );
}
