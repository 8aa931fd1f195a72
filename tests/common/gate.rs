//! Archives that stop at a chosen point: the real local-directory store behind `Archives`,
//! with one call held forever once it reaches that point, so a test can kill the leader
//! exactly there.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use metakv::{ArchiveError, Archives, UriArchives};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};

/// Where the gate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A pause starts uploading its archive: `Pausing` applied, nothing written yet.
    ArchiveUpload,
    /// A pause has uploaded every part of its archive; the object is not complete yet.
    ArchiveComplete,
    /// A pause has verified its archive and reads its manifest back: the last step before
    /// the drop.
    ManifestRead,
    /// A resume has read half of the archive (and restored what it read).
    ArchiveHalfRead,
}

#[derive(Debug)]
pub struct Gate {
    armed: Mutex<Option<Point>>,
    reached: tokio::sync::watch::Sender<Option<Point>>,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            armed: Mutex::new(None),
            reached: tokio::sync::watch::channel(None).0,
        })
    }

    /// Holds the next call that reaches `point` (once).
    pub fn arm(&self, point: Point) {
        *self.armed.lock().unwrap() = Some(point);
    }

    /// Waits until a call is held at `point`.
    pub async fn reached(&self, point: Point) {
        let mut rx = self.reached.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            rx.wait_for(|p| *p == Some(point)),
        )
        .await
        .expect("the gate's point is reached in time")
        .unwrap();
    }

    fn is_armed(&self, point: Point) -> bool {
        *self.armed.lock().unwrap() == Some(point)
    }

    /// Whether this call holds: the first one at the armed point.
    fn hit(&self, point: Point) -> bool {
        let mut armed = self.armed.lock().unwrap();
        if *armed != Some(point) {
            return false;
        }
        *armed = None;
        self.reached.send_replace(Some(point));
        true
    }
}

async fn hold<T>() -> T {
    std::future::pending().await
}

/// [`UriArchives`] with every store it opens behind `gate`.
#[derive(Debug, Clone)]
pub struct GatedArchives(pub Arc<Gate>);

impl Archives for GatedArchives {
    fn open(
        &self,
        uri: &str,
        create: bool,
    ) -> std::result::Result<(Arc<dyn ObjectStore>, Path), ArchiveError> {
        let (inner, base) = UriArchives.open(uri, create)?;
        Ok((
            Arc::new(Gated {
                inner,
                gate: Arc::clone(&self.0),
            }),
            base,
        ))
    }

    fn make_durable(&self, uri: &str, paths: &[Path]) -> std::result::Result<(), ArchiveError> {
        UriArchives.make_durable(uri, paths)
    }
}

#[derive(Debug)]
struct Gated {
    inner: Arc<dyn ObjectStore>,
    gate: Arc<Gate>,
}

impl std::fmt::Display for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

fn is(location: &Path, name: &str) -> bool {
    location.filename() == Some(name)
}

#[async_trait]
impl ObjectStore for Gated {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if is(location, "archive.mkva") && self.gate.hit(Point::ArchiveUpload) {
            return hold().await;
        }
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(GatedUpload {
            inner,
            gate: Arc::clone(&self.gate),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if is(location, "manifest.json") && self.gate.hit(Point::ManifestRead) {
            return hold().await;
        }
        let got = self.inner.get_opts(location, options).await?;
        if !(is(location, "archive.mkva") && self.gate.is_armed(Point::ArchiveHalfRead)) {
            return Ok(got);
        }
        let (meta, range, attributes, extensions) = (
            got.meta.clone(),
            got.range.clone(),
            got.attributes.clone(),
            got.extensions.clone(),
        );
        let half = meta.size / 2;
        let gate = Arc::clone(&self.gate);
        let mut sent = 0u64;
        let stream = got
            .into_stream()
            .then(move |item| {
                let gate = Arc::clone(&gate);
                let before = sent;
                if let Ok(b) = &item {
                    sent += b.len() as u64;
                }
                async move {
                    if before >= half && gate.hit(Point::ArchiveHalfRead) {
                        return hold::<Result<Bytes>>().await;
                    }
                    item
                }
            })
            .boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct GatedUpload {
    inner: Box<dyn MultipartUpload>,
    gate: Arc<Gate>,
}

#[async_trait]
impl MultipartUpload for GatedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        if self.gate.hit(Point::ArchiveComplete) {
            return hold().await;
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
