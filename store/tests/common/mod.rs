//! Helpers shared by the store's integration tests (each test crate uses some of them).

#![allow(dead_code)]

use std::collections::BTreeMap;

use metakv_store::{
    BucketInfo, PAGE_ITEMS_MAX, ReadView, Record, Scan, Store, TombstoneQuery, TombstoneRef,
};

/// Everything a caller can observe of a store: bucket rows, every record of every readable
/// bucket (tombstones included), one meta value, and the last applied revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    pub buckets: Vec<(String, BucketInfo)>,
    pub records: BTreeMap<(String, Vec<u8>), Record>,
    pub meta: Option<Vec<u8>>,
    pub last_rev: u64,
}

pub fn dump(store: &Store) -> Dump {
    let view = store.read().unwrap();
    let buckets = view.buckets().unwrap();
    let mut records = BTreeMap::new();
    for (b, info) in &buckets {
        if !info.state.allows_reads() {
            continue;
        }
        let mut scan = Scan {
            limit: PAGE_ITEMS_MAX,
            include_tombstones: true,
            ..Scan::all()
        };
        loop {
            let page = view.scan(b, &scan).unwrap();
            records.extend(page.items.into_iter().map(|(k, r)| ((b.clone(), k), r)));
            match page.next {
                Some(n) => scan.after = Some(n),
                None => break,
            }
        }
    }
    let meta = view.meta("raft.applied").unwrap();
    let last_rev = store.write(|w| Ok(w.last_rev())).unwrap();
    Dump {
        buckets,
        records,
        meta,
        last_rev,
    }
}

/// Every tombstone `query` selects, page after page.
pub fn all_tombstones(view: &ReadView, query: &TombstoneQuery) -> Vec<TombstoneRef> {
    let mut out = Vec::new();
    let mut query = query.clone();
    loop {
        let page = view.tombstones(&query).unwrap();
        out.extend(page.items);
        match page.next {
            Some(after) => query.after = Some(after),
            None => return out,
        }
    }
}
