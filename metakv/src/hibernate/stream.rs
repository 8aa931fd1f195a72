//! Bytes between the store's archive format (written and read on blocking threads) and an
//! object store (async): an upload fed in bounded pieces, a download read as a stream.

use super::*;

/// A `Write` for the exporting thread that hands its bytes to the async uploader.
pub(super) struct Handoff {
    pub(super) tx: mpsc::Sender<Bytes>,
    pub(super) buf: Vec<u8>,
}

impl Handoff {
    pub(super) fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(HANDOFF_BYTES),
        ));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the archive upload stopped"))
    }
}

impl Write for Handoff {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= HANDOFF_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A `Read` for a blocking thread over an object's byte stream.
pub(super) struct Download {
    path: ObjectPath,
    rx: mpsc::Receiver<std::result::Result<Bytes, object_store::Error>>,
    cur: Bytes,
}

impl Read for Download {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!("reading {}: {e}", self.path)));
                }
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Streams `path` into a [`Download`] for a blocking reader.
pub(super) async fn download(store: Arc<dyn ObjectStore>, path: ObjectPath) -> Result<Download> {
    let got = store
        .get(&path)
        .await
        .map_err(|e| archive_err(format!("reading {path}: {e}")))?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut stream = got.into_stream();
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    Ok(Download {
        path,
        rx,
        cur: Bytes::new(),
    })
}

/// Reads an archive to its end on a blocking thread: every frame's crc, every chunk against
/// the manifest, and the end. `each` sees every chunk's records (a resume proposes them).
pub(super) async fn read_archive(
    download: Download,
    bucket: String,
    manifest: Manifest,
    each: mpsc::Sender<Vec<(Vec<u8>, metakv_store::Record)>>,
    progress: Arc<Mutex<OpProgress>>,
) -> Result<()> {
    let name = bucket.clone();
    // Every failure is the archive's, named with its bucket.
    let bad = move |e: &dyn std::fmt::Display| {
        archive_err(format!("the archive of bucket {name:?}: {e}"))
    };
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut reader =
            ArchiveReader::open(std::io::BufReader::new(download)).map_err(|e| bad(&e))?;
        if *reader.scope() != Scope::Bucket(bucket.clone()) {
            return Err(bad(&"not an archive of that bucket"));
        }
        let rev = reader.rev();
        let (mut chunks, mut records) = (0usize, 0u64);
        while let Some(frame) = reader.next().map_err(|e| bad(&e))? {
            let Frame::Records { records: rs, .. } = frame else {
                continue;
            };
            let (crc32, bytes) = reader.last_frame();
            let n = rs.len() as u64;
            manifest
                .check_chunk(
                    chunks,
                    ChunkEntry {
                        records: n,
                        bytes,
                        crc32,
                    },
                )
                .map_err(|e| bad(&e))?;
            chunks += 1;
            records += n;
            {
                let mut p = lock(&progress);
                p.records += n;
                p.bytes += bytes;
            }
            if each.blocking_send(rs).is_err() {
                return Err(bad(&"its reader stopped"));
            }
        }
        manifest
            .check_end(rev, chunks, records)
            .map_err(|e| bad(&e))
    })
    .await
    .map_err(|e| Error::Storage(format!("archive reader: {e}")))?
}
