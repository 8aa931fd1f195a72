//! metakv-store against raw redb, at 100k records (16-byte keys, 256-byte values), in the same
//! run, so that the store layer's overhead reads as a ratio on any machine.
//!
//! | bench        | metakv-store                                   | raw redb baseline                       |
//! |--------------|------------------------------------------------|-----------------------------------------|
//! | put          | 100 `Op::Put` (updates) in one transaction     | 100 `insert`s in one transaction        |
//! | get          | `Store::get` of a random key                   | `begin_read` + `get` + copy of the value |
//! | delete       | 100 `Op::Delete` in one transaction            | 100 `remove`s in one transaction        |
//! | collect      | every tombstone (10% of records) via the index | full scan filtering a deleted flag      |
//! | purge        | `Op::Purge` of 100 tombstones (guarded)        | 100 `remove`s in one transaction        |
//!
//! | put_durable  | 1 `Op::Put` in a durable (fsynced) transaction | 1 `insert` in a durable transaction     |
//!
//! All but `put_durable` commit with `Durability::None` on both sides: an fsync costs the same
//! for both and would hide the store's own work; `put_durable` shows what a single durable
//! write pays end to end. Run with `cargo bench --bench store`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use metakv_store::{Config, Expect, Op, Stamp, Store, TombstoneQuery, TombstoneRef};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const N: u64 = 100_000;
const BATCH: u64 = 100;
const RAW: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raw");

fn key(i: u64) -> Vec<u8> {
    format!("key{:013}", i).into_bytes()
}

/// A cheap deterministic spread over 0..N.
fn spread(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % N
}

struct Sides {
    _dir: tempfile::TempDir,
    store: Store,
    raw: Database,
    rev: Cell<u64>,
    durable: bool,
}

impl Sides {
    fn new() -> Sides {
        Sides::with(false)
    }

    fn with(durable: bool) -> Sides {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            durable,
            ..Config::new(dir.path().join("state.redb"))
        };
        let store = Store::open(config).unwrap();
        let raw = Database::builder()
            .set_cache_size(metakv_store::CACHE_BYTES_DEFAULT)
            .create(dir.path().join("raw.redb"))
            .unwrap();
        let s = Sides {
            _dir: dir,
            store,
            raw,
            rev: Cell::new(0),
            durable,
        };
        s.apply(vec![Op::CreateBucket { bucket: "b".into() }]);
        for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
            s.apply(chunk.iter().map(|i| put(*i)).collect());
            s.raw_write(|t| {
                for i in chunk {
                    t.insert(key(*i).as_slice(), [b'v'; 256].as_slice())
                        .unwrap();
                }
            });
        }
        s
    }

    fn apply(&self, ops: Vec<Op>) {
        let first = self.rev.get() + 1;
        self.rev.set(self.rev.get() + ops.len() as u64);
        self.store
            .write(|w| {
                for (i, op) in ops.iter().enumerate() {
                    w.apply(
                        op,
                        Stamp {
                            rev: first + i as u64,
                            time_ms: 0,
                        },
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }

    fn raw_write(&self, f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>)) {
        let mut txn = self.raw.begin_write().unwrap();
        if !self.durable {
            txn.set_durability(Durability::None).unwrap();
        }
        {
            let mut t = txn.open_table(RAW).unwrap();
            f(&mut t);
        }
        txn.commit().unwrap();
    }

    fn raw_put(&self, keys: &[u64], value: &[u8]) {
        self.raw_write(|t| {
            for i in keys {
                t.insert(key(*i).as_slice(), value).unwrap();
            }
        })
    }

    fn raw_remove(&self, keys: Vec<u64>) {
        self.raw_write(|t| {
            for i in keys {
                t.remove(key(i).as_slice()).unwrap();
            }
        })
    }
}

fn put(i: u64) -> Op {
    Op::Put {
        bucket: "b".into(),
        key: key(i),
        value: vec![b'v'; 256],
        expect: Expect::Any,
    }
}

fn delete(i: u64) -> Op {
    Op::Delete {
        bucket: "b".into(),
        key: key(i),
        expect: Expect::Any,
    }
}

fn benches(c: &mut Criterion) {
    let s = Sides::new();
    let at = Cell::new(0u64);
    // The next `n` keys of the spread.
    let next_keys = |n: u64| {
        let from = at.get();
        at.set(from + n);
        (from..from + n).map(spread).collect::<Vec<_>>()
    };

    let mut g = c.benchmark_group("put");
    g.bench_function("metakv", |b| {
        b.iter(|| s.apply(next_keys(BATCH).into_iter().map(put).collect()))
    });
    g.bench_function("raw_redb", |b| {
        b.iter(|| s.raw_put(&next_keys(BATCH), &[b'v'; 256]))
    });
    g.finish();

    let mut g = c.benchmark_group("get");
    g.bench_function("metakv", |b| {
        b.iter(|| black_box(s.store.get("b", &key(next_keys(1)[0])).unwrap().unwrap()))
    });
    g.bench_function("raw_redb", |b| {
        b.iter(|| {
            let txn = s.raw.begin_read().unwrap();
            let t = txn.open_table(RAW).unwrap();
            black_box(
                t.get(key(next_keys(1)[0]).as_slice())
                    .unwrap()
                    .unwrap()
                    .value()
                    .to_vec(),
            )
        })
    });
    g.finish();

    // Deletes: each batch deletes 100 keys that the (untimed) setup has just put back.
    let mut g = c.benchmark_group("delete");
    g.bench_function("metakv", |b| {
        b.iter_batched(
            || {
                let keys = next_keys(BATCH);
                s.apply(keys.iter().map(|i| put(*i)).collect());
                keys
            },
            |keys| s.apply(keys.into_iter().map(delete).collect()),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("raw_redb", |b| {
        b.iter_batched(
            || {
                let keys = next_keys(BATCH);
                s.raw_put(&keys, &[b'v'; 256]);
                keys
            },
            |keys| s.raw_remove(keys),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    drop(s);

    let s = Sides::with(true);
    let mut g = c.benchmark_group("put_durable");
    g.sample_size(30);
    g.bench_function("metakv", |b| b.iter(|| s.apply(vec![put(next_keys(1)[0])])));
    g.bench_function("raw_redb", |b| {
        b.iter(|| s.raw_put(&next_keys(1), &[b'v'; 256]))
    });
    g.finish();
    drop(s);

    // Collection: 10% of the records become tombstones (the store's via deletes; the raw
    // table's value becomes a 'd' flag, as a store without a tombstone index would keep it).
    let s = Sides::new();
    let doomed: Vec<u64> = (0..N).filter(|i| i % 10 == 0).collect();
    for chunk in doomed.chunks(10_000) {
        s.apply(chunk.iter().map(|i| delete(*i)).collect());
        s.raw_put(chunk, b"d");
    }
    let query = TombstoneQuery {
        after: None,
        limit: 1000,
        max_rev: u64::MAX,
        deleted_at_or_before_ms: u64::MAX,
        pins: BTreeMap::new(),
    };
    let mut g = c.benchmark_group("collect_10k_of_100k");
    g.sample_size(20);
    g.bench_function("metakv", |b| {
        b.iter(|| {
            let view = s.store.read().unwrap();
            let mut n = 0;
            let mut q = query.clone();
            loop {
                let page = view.tombstones(&q).unwrap();
                n += page.items.len();
                match page.next {
                    Some(after) => q.after = Some(after),
                    None => break,
                }
            }
            assert_eq!(n as u64, N / 10);
        })
    });
    g.bench_function("raw_redb_scan", |b| {
        b.iter(|| {
            let txn = s.raw.begin_read().unwrap();
            let t = txn.open_table(RAW).unwrap();
            let mut found = Vec::new();
            for row in t.iter().unwrap() {
                let (k, v) = row.unwrap();
                if v.value() == b"d" {
                    found.push(k.value().to_vec());
                }
            }
            assert_eq!(found.len() as u64, N / 10);
        })
    });
    g.finish();

    // Purge: 100 tombstones per batch, made again by the (untimed) setup.
    let next = Cell::new(0u64);
    let next_doomed = || {
        let from = next.get();
        next.set(from + BATCH);
        (from..from + BATCH)
            .map(|j| doomed[(j % doomed.len() as u64) as usize])
            .collect::<Vec<_>>()
    };
    let mut g = c.benchmark_group("purge");
    g.bench_function("metakv", |b| {
        b.iter_batched(
            || {
                let keys = next_doomed();
                let first = s.rev.get() + 1;
                s.apply(keys.iter().map(|i| put(*i)).collect());
                s.apply(keys.iter().map(|i| delete(*i)).collect());
                let revs = first + BATCH..first + 2 * BATCH;
                let refs = keys.iter().zip(revs);
                refs.map(|(i, rev)| TombstoneRef {
                    bucket: "b".into(),
                    key: key(*i),
                    rev,
                })
                .collect::<Vec<_>>()
            },
            |items| s.apply(vec![Op::Purge { items }]),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("raw_redb", |b| {
        b.iter_batched(
            || {
                let keys = next_doomed();
                s.raw_put(&keys, b"d");
                keys
            },
            |keys| s.raw_remove(keys),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = store;
    config = Criterion::default()
        .measurement_time(std::time::Duration::from_secs(4))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(store);
