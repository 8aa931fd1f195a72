//! The archive format: one streaming format for Raft snapshots, backups and hibernation
//! archives.
//!
//! ```text
//!  stream  := magic "MKVA" | format u32 LE | frame*
//!  frame   := len u32 LE | crc32 u32 LE | payload (len bytes, postcard of Frame)
//!
//!  Header  { scope, rev, meta }          exactly one, first
//!  Bucket  { name, info }                before any Records frame of that bucket
//!  Records { bucket, records: [(key, Record)] }   a chunk, in key order
//!  End     { buckets, records, chunks }   exactly one, last; then the stream ends
//! ```
//!
//! The crc covers the payload of each frame, so every chunk is checked on its own; the `End`
//! frame's counts catch a stream cut between frames, and a reader refuses anything after it.
//! A frame longer than [`FRAME_BYTES_MAX`] is refused before anything is allocated for it.
//! [`ARCHIVE_FORMAT`] changes whenever any of this does.

use std::io::{Read, Write};

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::bucket::BucketInfo;
use crate::error::{Doing, Error, Result, io};
use crate::keys;
use crate::record::Record;
use crate::store::{ReadView, Store, check_key, decode_record};
use crate::tables::{BUCKETS, CHANGES, META, META_FORMAT, RECORDS, TOMBSTONES};
use crate::write::bucket_end;

pub const ARCHIVE_MAGIC: [u8; 4] = *b"MKVA";
pub const ARCHIVE_FORMAT: u32 = 1;
/// Longest frame payload: a chunk of small records, or one record at the largest value the
/// store may be configured for, with room to spare.
pub const FRAME_BYTES_MAX: usize = crate::store::VALUE_BYTES_MAX_CEILING + (1 << 20);
/// A chunk is closed once its records reach this many bytes (or [`CHUNK_RECORDS_MAX`]).
pub const CHUNK_BYTES_TARGET: usize = 1 << 20;
pub const CHUNK_RECORDS_MAX: usize = 4096;

/// What an archive holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// The whole store with its meta table: a snapshot or a backup.
    Store,
    /// One bucket's records: a hibernation archive.
    Bucket(String),
}

/// One frame of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Header {
        scope: Scope,
        rev: u64,
        meta: Vec<(String, Vec<u8>)>,
    },
    Bucket {
        name: String,
        info: BucketInfo,
    },
    Records {
        bucket: String,
        records: Vec<(Vec<u8>, Record)>,
    },
    End {
        buckets: u64,
        records: u64,
        chunks: u64,
    },
}

/// One `Records` frame as written: enough for a manifest to check it again later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSummary {
    pub bucket: String,
    pub records: u64,
    /// Frame bytes, header included.
    pub bytes: u64,
    pub crc32: u32,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArchiveSummary {
    /// The store's last applied revision when the archive was taken.
    pub rev: u64,
    pub buckets: u64,
    pub records: u64,
    pub bytes: u64,
    pub chunks: Vec<ChunkSummary>,
}

/// Writes frames, counting what it wrote.
#[derive(Debug)]
pub struct ArchiveWriter<W: Write> {
    out: W,
    summary: ArchiveSummary,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(mut out: W, scope: Scope, rev: u64, meta: Vec<(String, Vec<u8>)>) -> Result<Self> {
        out.write_all(&ARCHIVE_MAGIC)
            .map_err(io("writing an archive"))?;
        out.write_all(&ARCHIVE_FORMAT.to_le_bytes())
            .map_err(io("writing an archive"))?;
        let mut w = ArchiveWriter {
            out,
            summary: ArchiveSummary {
                rev,
                bytes: 8,
                ..Default::default()
            },
        };
        w.frame(&Frame::Header { scope, rev, meta })?;
        Ok(w)
    }

    fn frame(&mut self, frame: &Frame) -> Result<(u32, u64)> {
        let payload = postcard::to_stdvec(frame)
            .map_err(|e| Error::archive(format!("encoding a frame: {e}")))?;
        if payload.len() > FRAME_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: "archive frame bytes",
                len: payload.len(),
                max: FRAME_BYTES_MAX,
            });
        }
        let crc = crc32fast::hash(&payload);
        self.out
            .write_all(&(payload.len() as u32).to_le_bytes())
            .map_err(io("writing an archive"))?;
        self.out
            .write_all(&crc.to_le_bytes())
            .map_err(io("writing an archive"))?;
        self.out
            .write_all(&payload)
            .map_err(io("writing an archive"))?;
        let bytes = 8 + payload.len() as u64;
        self.summary.bytes += bytes;
        Ok((crc, bytes))
    }

    pub fn bucket(&mut self, name: &str, info: &BucketInfo) -> Result<()> {
        self.summary.buckets += 1;
        self.frame(&Frame::Bucket {
            name: name.to_owned(),
            info: info.clone(),
        })?;
        Ok(())
    }

    pub fn records(
        &mut self,
        bucket: &str,
        records: Vec<(Vec<u8>, Record)>,
    ) -> Result<&ChunkSummary> {
        let n = records.len() as u64;
        let (crc32, bytes) = self.frame(&Frame::Records {
            bucket: bucket.to_owned(),
            records,
        })?;
        self.summary.records += n;
        self.summary.chunks.push(ChunkSummary {
            bucket: bucket.to_owned(),
            records: n,
            bytes,
            crc32,
        });
        Ok(self.summary.chunks.last().expect("just pushed"))
    }

    /// Writes the `End` frame and flushes; returns what was written and the sink.
    pub fn finish(mut self) -> Result<(ArchiveSummary, W)> {
        let end = Frame::End {
            buckets: self.summary.buckets,
            records: self.summary.records,
            chunks: self.summary.chunks.len() as u64,
        };
        self.frame(&end)?;
        self.out.flush().map_err(io("flushing an archive"))?;
        Ok((self.summary, self.out))
    }
}

/// Reads and checks frames: magic, version, each frame's length and crc, their order, and the
/// `End` counts. [`ArchiveReader::next`] returns `Ok(None)` only after a complete, valid `End`
/// at the very end of the stream; a cut anywhere is an error.
#[derive(Debug)]
pub struct ArchiveReader<R: Read> {
    input: R,
    scope: Scope,
    rev: u64,
    meta: Vec<(String, Vec<u8>)>,
    current_bucket: Option<String>,
    buckets: u64,
    records: u64,
    chunks: u64,
    /// crc32 and bytes (header included) of the frame read last.
    last_frame: (u32, u64),
    done: bool,
}

impl<R: Read> ArchiveReader<R> {
    pub fn open(mut input: R) -> Result<Self> {
        let mut head = [0u8; 8];
        read_exact(&mut input, &mut head, "the archive header")?;
        if head[..4] != ARCHIVE_MAGIC {
            return Err(Error::archive("not a metakv archive (bad magic)"));
        }
        let version = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if version != ARCHIVE_FORMAT {
            return Err(Error::ArchiveVersion {
                found: version,
                supported: ARCHIVE_FORMAT,
            });
        }
        let Some((Frame::Header { scope, rev, meta }, ..)) = read_frame(&mut input)? else {
            return Err(Error::archive("the first frame is not a header"));
        };
        Ok(ArchiveReader {
            input,
            scope,
            rev,
            meta,
            current_bucket: None,
            buckets: 0,
            records: 0,
            chunks: 0,
            last_frame: (0, 0),
            done: false,
        })
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }
    pub fn rev(&self) -> u64 {
        self.rev
    }
    pub fn meta(&self) -> &[(String, Vec<u8>)] {
        &self.meta
    }

    /// The crc32 and size in bytes (frame header included) of the frame [`Self::next`]
    /// returned last: what a [`ChunkSummary`] recorded when it was written.
    pub fn last_frame(&self) -> (u32, u64) {
        self.last_frame
    }

    /// The next `Bucket` or `Records` frame, or `None` after a valid end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        let (frame, crc32, bytes) = read_frame(&mut self.input)?
            .ok_or_else(|| Error::archive("truncated: the stream ends before its End frame"))?;
        self.last_frame = (crc32, bytes);
        match &frame {
            Frame::Header { .. } => return Err(Error::archive("a second header")),
            Frame::Bucket { name, .. } => {
                if let Scope::Bucket(only) = &self.scope
                    && only != name
                {
                    return Err(Error::archive(format!(
                        "bucket {name:?} in an archive of bucket {only:?}"
                    )));
                }
                self.buckets += 1;
                self.current_bucket = Some(name.clone());
            }
            Frame::Records { bucket, records } => {
                if self.current_bucket.as_deref() != Some(bucket.as_str()) {
                    return Err(Error::archive(format!(
                        "records of bucket {bucket:?} outside its section"
                    )));
                }
                self.records += records.len() as u64;
                self.chunks += 1;
            }
            Frame::End {
                buckets,
                records,
                chunks,
            } => {
                if (*buckets, *records, *chunks) != (self.buckets, self.records, self.chunks) {
                    return Err(Error::archive(format!(
                        "End frame counts {buckets} buckets, {records} records, {chunks} chunks; read {}, {}, {}",
                        self.buckets, self.records, self.chunks
                    )));
                }
                let mut extra = [0u8; 1];
                match self.input.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(Error::archive("bytes after the End frame")),
                    Err(e) => {
                        return Err(Error::Io {
                            doing: "reading an archive",
                            source: e,
                        });
                    }
                }
                self.done = true;
                return Ok(None);
            }
        }
        Ok(Some(frame))
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::archive(format!("truncated in {what}")),
        _ => Error::Io {
            doing: "reading an archive",
            source: e,
        },
    })
}

/// Reads one frame, with its crc and size; `None` on a clean end of stream before its first
/// byte.
fn read_frame(input: &mut impl Read) -> Result<Option<(Frame, u32, u64)>> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(Error::archive("truncated in a frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::Io {
                    doing: "reading an archive",
                    source: e,
                });
            }
        }
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len > FRAME_BYTES_MAX {
        return Err(Error::archive(format!(
            "frame of {len} bytes is over the limit of {FRAME_BYTES_MAX}"
        )));
    }
    let mut payload = vec![0u8; len];
    read_exact(input, &mut payload, "a frame")?;
    if crc32fast::hash(&payload) != crc {
        return Err(Error::archive("frame crc mismatch"));
    }
    let frame = postcard::from_bytes(&payload)
        .map_err(|e| Error::archive(format!("undecodable frame: {e}")))?;
    Ok(Some((frame, crc, 8 + len as u64)))
}

impl ReadView {
    /// Writes this view as an archive of `scope` to `out`: the whole store (with its meta) or
    /// one bucket. `on_chunk` sees every chunk as it is written (for progress).
    pub fn export<W: Write>(
        &self,
        scope: Scope,
        out: W,
        mut on_chunk: impl FnMut(&ChunkSummary),
    ) -> Result<(ArchiveSummary, W)> {
        let rev = match self.meta(crate::write::META_LAST_REV)? {
            Some(b) => {
                u64::from_le_bytes(b.as_slice().try_into().map_err(|_| Error::CorruptIndex {
                    table: "meta",
                    reason: "last revision is not 8 bytes".into(),
                })?)
            }
            None => 0,
        };
        let (buckets, meta) = match &scope {
            Scope::Store => {
                let table = self.txn().open_table(META).doing("opening meta")?;
                let mut meta = Vec::new();
                for row in table.iter().doing("reading meta")? {
                    let (k, v) = row.doing("reading meta")?;
                    if k.value() != META_FORMAT {
                        meta.push((k.value().to_owned(), v.value().to_vec()));
                    }
                }
                (self.buckets()?, meta)
            }
            Scope::Bucket(name) => (vec![(name.clone(), self.bucket(name)?)], Vec::new()),
        };
        let mut w = ArchiveWriter::new(out, scope, rev, meta)?;
        let records = self.txn().open_table(RECORDS).doing("opening records")?;
        for (name, info) in &buckets {
            w.bucket(name, info)?;
            let (start, end) = (keys::row(name, &[]), bucket_end(name));
            let mut chunk = Vec::new();
            let mut chunk_bytes = 0;
            for row in records
                .range::<&[u8]>(start.as_slice()..end.as_slice())
                .doing("exporting records")?
            {
                let (k, v) = row.doing("exporting records")?;
                let key = &k.value()[name.len() + 1..];
                let record = decode_record(name, key, v.value())?;
                chunk_bytes += key.len() + record.value.len() + 32;
                chunk.push((key.to_vec(), record));
                if chunk.len() == CHUNK_RECORDS_MAX || chunk_bytes >= CHUNK_BYTES_TARGET {
                    on_chunk(w.records(name, std::mem::take(&mut chunk))?);
                    chunk_bytes = 0;
                }
            }
            if !chunk.is_empty() {
                on_chunk(w.records(name, chunk)?);
            }
        }
        w.finish()
    }
}

/// What [`Store::import`] loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub rev: u64,
    pub buckets: u64,
    pub records: u64,
}

impl Store {
    /// Replaces the whole store with a `Scope::Store` archive, in one write transaction: the
    /// store holds either everything the archive holds or, on any error (bad crc, cut stream,
    /// wrong version or scope), exactly what it held before.
    pub fn import<R: Read>(&self, input: R) -> Result<ImportSummary> {
        let mut reader = ArchiveReader::open(input)?;
        if reader.scope() != &Scope::Store {
            return Err(Error::archive(
                "a bucket archive cannot replace the whole store",
            ));
        }
        let mut txn = self.db.begin_write().doing("beginning an import")?;
        if !self.durable {
            txn.set_durability(redb::Durability::None)
                .doing("setting durability")?;
        }
        let summary = {
            let mut records = txn.open_table(RECORDS).doing("opening records")?;
            let mut tombstones = txn.open_table(TOMBSTONES).doing("opening tombstones")?;
            let mut changes = txn.open_table(CHANGES).doing("opening changes")?;
            let mut buckets = txn.open_table(BUCKETS).doing("opening buckets")?;
            let mut meta = txn.open_table(META).doing("opening meta")?;
            records.retain(|_, _| false).doing("clearing records")?;
            tombstones
                .retain(|_, _| false)
                .doing("clearing tombstones")?;
            changes.retain(|_, _| false).doing("clearing changes")?;
            buckets.retain(|_, _| false).doing("clearing buckets")?;
            meta.retain(|k, _| k == META_FORMAT)
                .doing("clearing meta")?;
            for (k, v) in reader.meta() {
                if k != META_FORMAT {
                    meta.insert(k.as_str(), v.as_slice())
                        .doing("importing meta")?;
                }
            }
            let mut current: Option<(String, BucketInfo)> = None;
            let mut n_records = 0;
            let mut n_buckets = 0;
            let put_bucket = |buckets: &mut redb::Table<&str, &[u8]>,
                              b: Option<(String, BucketInfo)>|
             -> Result<()> {
                if let Some((name, info)) = b {
                    let bytes = crate::codec::seal(crate::tables::BUCKET_FORMAT, &info);
                    buckets
                        .insert(name.as_str(), bytes.as_slice())
                        .doing("importing a bucket")?;
                }
                Ok(())
            };
            while let Some(frame) = reader.next()? {
                match frame {
                    Frame::Bucket { name, mut info } => {
                        if name != crate::bucket::SYS_BUCKET {
                            crate::bucket::validate_bucket_name(&name)?;
                        }
                        put_bucket(&mut buckets, current.take())?;
                        info.records = 0;
                        info.tombstones = 0;
                        current = Some((name, info));
                        n_buckets += 1;
                    }
                    Frame::Records {
                        bucket,
                        records: chunk,
                    } => {
                        let (_, info) = current.as_mut().expect("the reader checks sections");
                        for (key, record) in chunk {
                            check_key(&bucket, &key)?;
                            if record.deleted && !record.value.is_empty() {
                                return Err(Error::archive(format!(
                                    "a tombstone with a value in bucket {bucket:?}"
                                )));
                            }
                            let row = keys::row(&bucket, &key);
                            let bytes = record.encode();
                            if records
                                .insert(row.as_slice(), bytes.as_slice())
                                .doing("importing a record")?
                                .is_some()
                            {
                                return Err(Error::archive(format!(
                                    "a key twice in bucket {bucket:?}"
                                )));
                            }
                            changes
                                .insert(
                                    keys::change(&bucket, record.rev).as_slice(),
                                    key.as_slice(),
                                )
                                .doing("importing a change")?;
                            if record.deleted {
                                tombstones
                                    .insert(row.as_slice(), (record.rev, record.mtime_ms))
                                    .doing("importing a tombstone")?;
                                info.tombstones += 1;
                            } else {
                                info.records += 1;
                            }
                            n_records += 1;
                        }
                    }
                    Frame::Header { .. } | Frame::End { .. } => {
                        unreachable!("the reader returns neither")
                    }
                }
            }
            put_bucket(&mut buckets, current.take())?;
            if buckets
                .get(crate::bucket::SYS_BUCKET)
                .doing("reading buckets")?
                .is_none()
            {
                return Err(Error::archive("a store archive without the _sys bucket"));
            }
            ImportSummary {
                rev: reader.rev(),
                buckets: n_buckets,
                records: n_records,
            }
        };
        // Bucket states change wholesale: commit under the states lock, then reload them.
        {
            let _states = self
                .states
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            txn.commit().doing("committing an import")?;
        }
        self.reload_states()?;
        Ok(summary)
    }

    /// Shorthand: export `scope` as of now.
    pub fn export<W: Write>(&self, scope: Scope, out: W) -> Result<(ArchiveSummary, W)> {
        self.read()?.export(scope, out, |_| {})
    }
}
