//! Arbitrary bytes, and cuts and byte flips of valid archives, into the archive reader and
//! `Store::import` (snapshot install and restore): never a panic, and never a partial import
//! reported as success. The store imported into holds other data first: after a refused
//! import it must hold exactly that; after an accepted one, exactly what the archive held.

#![no_main]

use std::sync::{Mutex, OnceLock};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use metakv_store::archive::{ArchiveReader, Scope};
use metakv_store::{Config, Expect, Op, Stamp, Store};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    /// A whole-store archive of a store with buckets, records and tombstones.
    valid: Vec<u8>,
    /// A bucket archive (the hibernation format) of one of its buckets.
    bucket: Vec<u8>,
    /// What the store imported into holds before each import.
    prior: Vec<u8>,
    /// What it holds after importing `valid`.
    imported: Vec<u8>,
}

fn export(store: &Store) -> Vec<u8> {
    store.export(Scope::Store, Vec::new()).expect("an export").1
}

fn fixture() -> &'static Mutex<Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let open = |name: &str| {
            Store::open(Config {
                durable: false,
                ..Config::new(dir.path().join(name))
            })
            .expect("a store")
        };
        let source = open("source.redb");
        let mut rev = 0;
        let mut apply = |store: &Store, op: Op| {
            rev += 1;
            store
                .apply(&op, Stamp { rev, time_ms: rev })
                .expect("an op");
        };
        for b in ["users", "roles"] {
            apply(&source, Op::CreateBucket { bucket: b.into() });
            for i in 0..40u32 {
                let value = vec![i as u8; (i as usize * 7) % 300];
                let key = format!("{b}/{i:03}").into_bytes();
                let put = Op::Put {
                    bucket: b.into(),
                    key: key.clone(),
                    value,
                    expect: Expect::Any,
                };
                apply(&source, put);
                if i % 3 == 0 {
                    let delete = Op::Delete {
                        bucket: b.into(),
                        key,
                        expect: Expect::Any,
                    };
                    apply(&source, delete);
                }
            }
        }
        let valid = export(&source);
        let bucket = source
            .export(Scope::Bucket("users".into()), Vec::new())
            .expect("a bucket export")
            .1;
        let store = open("target.redb");
        apply(
            &store,
            Op::CreateBucket {
                bucket: "old".into(),
            },
        );
        let put = Op::Put {
            bucket: "old".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expect: Expect::Any,
        };
        apply(&store, put);
        let prior = export(&store);
        store
            .import(valid.as_slice())
            .expect("importing the valid archive");
        let imported = export(&store);
        store
            .import(prior.as_slice())
            .expect("restoring the prior state");
        Mutex::new(Fixture {
            _dir: dir,
            store,
            valid,
            bucket,
            prior,
            imported,
        })
    })
}

/// Reads every frame; `true` when the reader vouched for a complete, valid archive.
fn read_all(bytes: &[u8]) -> bool {
    let Ok(mut reader) = ArchiveReader::open(bytes) else {
        return false;
    };
    loop {
        match reader.next() {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return false;
            }
        }
    }
}

/// The bytes to try, and the valid archive they were made from (`None` for raw input).
fn input(u: &mut Unstructured, f: &Fixture) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let base = if u.arbitrary()? { &f.valid } else { &f.bucket };
    Ok(match u.int_in_range(0..=2)? {
        0 => (u.bytes(u.len())?.to_vec(), None),
        1 => {
            let at = u.int_in_range(0..=base.len() - 1)?;
            (base[..at].to_vec(), Some(base.clone()))
        }
        _ => {
            let mut bytes = base.clone();
            for _ in 0..u.int_in_range(1..=4)? {
                let at = u.int_in_range(0..=bytes.len() - 1)?;
                bytes[at] ^= u.int_in_range(1..=255)?;
            }
            (bytes, Some(base.clone()))
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let mut u = Unstructured::new(data);
    let Ok((bytes, original)) = input(&mut u, &f) else {
        return;
    };
    let complete = read_all(&bytes);
    if let Some(original) = &original {
        // A cut or flipped archive is never vouched for (two flips may restore a byte).
        assert_eq!(
            complete,
            bytes == *original,
            "a damaged archive was read as whole"
        );
    }
    match f.store.import(bytes.as_slice()) {
        Ok(_) => {
            assert!(complete, "an import succeeded where the reader refused");
            if original.is_some() {
                assert_eq!(bytes, f.valid, "a damaged archive was imported");
                assert_eq!(
                    export(&f.store),
                    f.imported,
                    "the import differs from the archive"
                );
            }
            let prior = f.prior.clone();
            f.store
                .import(prior.as_slice())
                .expect("restoring the prior state");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(
                export(&f.store),
                f.prior,
                "a refused import changed the store"
            );
        }
    }
});
