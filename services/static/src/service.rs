//! [`StaticFiles`]: the request flow from method and path to a file, a redirect, a listing
//! or a refusal, through the cache (hot path) or the disk (slow path, on the blocking pool).

use std::convert::Infallible;
use std::fs::{self, File, Metadata};
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, LAST_MODIFIED, LOCATION, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use snakeway_core::{Body, path as core_path};
use tokio::sync::OnceCell;

use crate::beneath::{RootDir, is_escape};
use crate::body::FileBody;
use crate::cache::Cache;
use crate::conditional::{
    ByteRange, Conditions, http_date_secs, match_hits, none_match_hits, parse_range, strong_eq,
};
use crate::encoding::{AcceptPrefs, Coding, StreamEncoder, compress, file_type};
use crate::entry::{ENTRY_OVERHEAD, Entry, Head, Rep, Stamp, Variant};
use crate::listing;
use crate::options::{CompressionOptions, StaticOptions};
use crate::path::{strip_prefix, to_relative_path};

static BYTES: HeaderValue = HeaderValue::from_static("bytes");
static ACCEPT_ENCODING_VALUE: HeaderValue = HeaderValue::from_static("accept-encoding");
static TEXT_HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Serves the files below one directory (a `static_dir` route).
///
/// Cheap to clone (one `Arc`). Usable directly (`serve`) or as a Tower [`Service`] for any
/// request body type, for example as an axum fallback.
///
/// [`Service`]: tower::Service
#[derive(Clone, Debug)]
pub struct StaticFiles {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// As configured (not canonicalized: a root that is a symlink may be switched).
    root: PathBuf,
    /// The root held open: files are opened beneath it (see [`RootDir`]). `None` until the
    /// directory could be opened.
    root_dir: ArcSwapOption<RootDir>,
    prefix: String,
    index: Option<String>,
    listing: bool,
    max_file_size: Option<u64>,
    cache_control: Option<HeaderValue>,
    compression: CompressionOptions,
    serve_hidden: bool,
    cache: Cache,
    cache_max_file_size: u64,
    revalidate_ms: u64,
    clock: Instant,
}

/// What the slow path found for a request path.
enum Resolved {
    NotFound,
    Forbidden,
    Redirect,
    Listing(String),
    Cached(Arc<Entry>),
    Large(Box<Large>),
    Failed(io::Error),
}

/// A file too large for the cache, opened, with its precompressed siblings (br, gz).
struct Large {
    head: Head,
    stamp: Stamp,
    file: File,
    dynamic: bool,
    brotli: Option<(File, Stamp)>,
    gzip: Option<(File, Stamp)>,
}

// === impl StaticFiles ===

impl StaticFiles {
    /// A service for `options`.
    pub fn new(options: StaticOptions) -> Self {
        let StaticOptions {
            root,
            prefix,
            index,
            directory_listing,
            max_file_size,
            cache_control,
            compression,
            serve_hidden,
            cache,
        } = options;
        let root = std::path::absolute(&root).unwrap_or(root);
        let root_dir = RootDir::open(&root).map(Arc::new).ok();
        Self {
            inner: Arc::new(Inner {
                root,
                root_dir: ArcSwapOption::new(root_dir),
                prefix,
                index,
                listing: directory_listing,
                max_file_size,
                cache_control,
                compression,
                serve_hidden,
                cache: Cache::new(cache.max_bytes),
                cache_max_file_size: cache.max_file_size.min(max_file_size.unwrap_or(u64::MAX)),
                revalidate_ms: u64::try_from(cache.revalidate_after.as_millis())
                    .unwrap_or(u64::MAX),
                clock: Instant::now(),
            }),
        }
    }

    /// Answers one request. The request body is not read.
    pub async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        drop(body);
        self.respond(&parts.method, &parts.uri, &parts.headers)
            .await
    }

    /// Answers a request given its method, target and headers.
    pub async fn respond(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response<Body> {
        let head_only = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, false);
                res.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                return res;
            }
        };
        // The server normalized the path for routing already; this is cheap (no copy) for a
        // normal path, and makes the crate safe on its own.
        let Ok(normalized) = core_path::normalize(uri.path()) else {
            return plain(StatusCode::BAD_REQUEST, head_only);
        };
        let inner = &*self.inner;
        let Some(rel) = strip_prefix(&normalized, &inner.prefix) else {
            return plain(StatusCode::NOT_FOUND, head_only);
        };
        if rel.is_empty() {
            return redirect(&normalized, uri.query());
        }
        let cond = Conditions::parse(headers);

        if let Some(entry) = inner.cache.get(rel) {
            if inner.fresh(&entry) {
                return inner.send_cached(&entry, &cond, head_only).await;
            }
            inner.cache.remove(rel, &entry);
        }

        let this = Arc::clone(&self.inner);
        let key = rel.to_owned();
        let resolved = tokio::task::spawn_blocking(move || this.resolve(&key))
            .await
            .unwrap_or_else(|e| Resolved::Failed(io::Error::other(e)));
        match resolved {
            Resolved::NotFound => plain(StatusCode::NOT_FOUND, head_only),
            Resolved::Forbidden => plain(StatusCode::FORBIDDEN, head_only),
            Resolved::Redirect => redirect(&normalized, uri.query()),
            Resolved::Listing(html) => {
                let mut res = sized(
                    StatusCode::OK,
                    Bytes::from(html),
                    TEXT_HTML.clone(),
                    head_only,
                );
                res.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                res
            }
            Resolved::Cached(entry) => inner.send_cached(&entry, &cond, head_only).await,
            Resolved::Large(large) => inner.send_large(*large, &cond, head_only),
            Resolved::Failed(e) => {
                tracing::warn!(path = %normalized, error = %e, "static file error");
                plain(StatusCode::INTERNAL_SERVER_ERROR, head_only)
            }
        }
    }
}

impl<B> tower::Service<Request<B>> for StaticFiles {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let (parts, body) = req.into_parts();
        drop(body);
        Box::pin(async move {
            Ok(this
                .respond(&parts.method, &parts.uri, &parts.headers)
                .await)
        })
    }
}

// === impl Inner ===

impl Inner {
    /// Whether a cached entry still describes the file on disk, and its precompressed
    /// siblings theirs (one `statx` each, unless checked less than `revalidate_after` ago).
    fn fresh(&self, entry: &Entry) -> bool {
        let now = if self.revalidate_ms > 0 {
            let now = self.now_ms();
            if now.saturating_sub(entry.checked_ms.load(Ordering::Relaxed)) < self.revalidate_ms {
                return true;
            }
            Some(now)
        } else {
            None
        };
        let unchanged = |path: &Path, stamp: &Stamp| matches!(fs::metadata(path), Ok(m) if Stamp::of(&m) == *stamp);
        let ok = unchanged(&entry.path, &entry.stamp)
            && [&entry.gzip, &entry.brotli].into_iter().all(|v| match v {
                Variant::Sibling(Rep {
                    sibling: Some((path, stamp)),
                    ..
                }) => unchanged(path, stamp),
                _ => true,
            });
        if let (true, Some(now)) = (ok, now) {
            entry.checked_ms.store(now, Ordering::Relaxed);
        }
        ok
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    // --- the hot path --------------------------------------------------------------------

    async fn send_cached(
        &self,
        entry: &Arc<Entry>,
        cond: &Conditions<'_>,
        head_only: bool,
    ) -> Response<Body> {
        let head = &entry.head;
        let range = range_request(head, cond, head_only);
        let rep = if range.is_some() {
            &entry.identity
        } else {
            let prefs = match cond.accept_encoding {
                Some(v) if head.vary => AcceptPrefs::parse(cond.all(&ACCEPT_ENCODING, v)),
                _ => AcceptPrefs::IDENTITY,
            };
            self.pick_cached(entry, prefs).await
        };

        if let Some(status) = preconditions(head, &rep.etag, cond) {
            return self.not_modified_or_failed(status, head, &rep.etag);
        }
        match range.map(|r| r.resolve(head.len)) {
            None => {
                let body = if head_only {
                    Body::empty()
                } else {
                    Body::full(rep.bytes.clone())
                };
                response(StatusCode::OK, rep.headers.clone(), body)
            }
            Some(Some((start, end))) => {
                let mut h = HeaderMap::with_capacity(12);
                self.file_headers(&mut h, head, &rep.etag, Coding::Identity);
                h.insert(CONTENT_RANGE, content_range(start, end, head.len));
                h.insert(CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                let body = if head_only {
                    Body::empty()
                } else {
                    Body::full(rep.bytes.slice(to_usize(start)..=to_usize(end)))
                };
                response(StatusCode::PARTIAL_CONTENT, h, body)
            }
            Some(None) => self.unsatisfiable(head),
        }
    }

    /// The representation of a cached file to send for `prefs`: a precompressed sibling, a
    /// variant compressed once (now, on the blocking pool, if this is the first request for
    /// it), or the file itself.
    async fn pick_cached<'e>(&self, entry: &'e Arc<Entry>, prefs: AcceptPrefs) -> &'e Rep {
        loop {
            let coding = prefs.choose(entry.brotli.offered(), entry.gzip.offered());
            match entry.variant(coding) {
                Variant::None => return &entry.identity,
                Variant::Sibling(rep) => return rep,
                Variant::Lazy(cell) => {
                    let compressed = cell
                        .get_or_init(|| async {
                            let data = entry.identity.bytes.clone();
                            let out = tokio::task::spawn_blocking(move || compress(coding, &data))
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .filter(|c| c.len() < entry.identity.bytes.len())?;
                            self.cache.grow(entry, out.len() as u64);
                            let etag = weak(&entry.stamp.etag(coding));
                            Some(self.rep(&entry.head, coding, etag, Bytes::from(out), None))
                        })
                        .await;
                    match compressed {
                        Some(rep) => return rep,
                        None => continue, // not worth it: `offered` is false now
                    }
                }
            }
        }
    }

    // --- the slow path (blocking pool) ---------------------------------------------------

    /// Finds what `key` (a normalized, prefix-free request path) names on disk. Retries a
    /// few times when the file changes while it is being read.
    fn resolve(&self, key: &str) -> Resolved {
        for _ in 0..3 {
            match self.try_resolve(key) {
                Ok(resolved) => return resolved,
                Err(Retry) => continue,
            }
        }
        tracing::debug!(key, "file kept changing while being read");
        Resolved::Failed(io::Error::other("the file kept changing while being read"))
    }

    fn try_resolve(&self, key: &str) -> Result<Resolved, Retry> {
        let rel = match to_relative_path(key, self.serve_hidden) {
            Ok(rel) => rel,
            Err(why) => {
                tracing::debug!(key, ?why, "refused path");
                return Ok(Resolved::NotFound);
            }
        };
        let wants_dir = key.ends_with('/');
        let root = match self.root_dir() {
            Ok(root) => root,
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e, "static_dir is not readable");
                return Ok(Resolved::NotFound);
            }
        };
        // Opened beneath the root, then the descriptor is what is looked at and served.
        let (file, meta) = match root.open_read(&rel) {
            Ok(opened) => opened,
            Err(e) => return Ok(refusal(key, &e)),
        };
        if meta.is_dir() {
            if !wants_dir {
                return Ok(Resolved::Redirect);
            }
            if let Some(index) = &self.index {
                let index_rel = rel.join(index);
                match root.open_read(&index_rel) {
                    Ok((f, m)) if m.is_file() => return self.file(key, &root, &index_rel, f, &m),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Ok(refusal(key, &e)),
                }
            }
            if self.listing {
                let shown = listing::display_path(&format!("{}{key}", self.prefix));
                let has_parent = !rel.as_os_str().is_empty();
                return Ok(
                    match listing::render(file, &root, &rel, &shown, has_parent, self.serve_hidden)
                    {
                        Ok(html) => Resolved::Listing(html),
                        Err(e) => refusal(key, &e),
                    },
                );
            }
            return Ok(Resolved::NotFound);
        }
        if wants_dir || !meta.is_file() {
            return Ok(Resolved::NotFound);
        }
        self.file(key, &root, &rel, file, &meta)
    }

    /// The open root directory. The configured path is looked at (one `stat`) on every
    /// lookup that misses the cache: when it names another directory now (a deploy switched
    /// a symlink), that one is opened and used from then on.
    fn root_dir(&self) -> io::Result<Arc<RootDir>> {
        let meta = fs::metadata(&self.root)?;
        if let Some(dir) = self.root_dir.load_full()
            && dir.is(&meta)
        {
            return Ok(dir);
        }
        let dir = Arc::new(RootDir::open(&self.root)?);
        self.root_dir.store(Some(Arc::clone(&dir)));
        Ok(dir)
    }

    /// Serves a regular file opened beneath the root (`meta` is the descriptor's): a cache
    /// entry if small enough, else the open file to stream.
    fn file(
        &self,
        key: &str,
        root: &RootDir,
        rel: &Path,
        file: File,
        meta: &Metadata,
    ) -> Result<Resolved, Retry> {
        if let Some(max) = self.max_file_size
            && meta.len() > max
        {
            tracing::debug!(
                key,
                len = meta.len(),
                max,
                "refused: larger than max_file_size"
            );
            return Ok(Resolved::NotFound);
        }
        let stamp = Stamp::of(meta);
        // The path is only named, never opened: for the content type and for revalidation.
        let path = self.root.join(rel);
        let ft = file_type(&path);
        let c = self.compression;
        let dynamic = ft.compressible && stamp.len >= c.min_size && (c.gzip || c.brotli);
        let sibling = |coding: Coding, on: bool| -> Option<(PathBuf, File, Stamp)> {
            if !on {
                return None;
            }
            let with_suffix = |p: &Path| {
                let mut name = p.as_os_str().to_owned();
                name.push(".");
                name.push(coding.suffix());
                PathBuf::from(name)
            };
            let (f, m) = root.open_read(&with_suffix(rel)).ok()?;
            m.is_file().then(|| (with_suffix(&path), f, Stamp::of(&m)))
        };
        let brotli = sibling(Coding::Brotli, c.brotli);
        let gzip = sibling(Coding::Gzip, c.gzip);
        let head = Head {
            content_type: ft.content_type,
            last_modified: stamp.last_modified(),
            mtime_secs: stamp.mtime_secs(),
            len: stamp.len,
            etag: stamp.etag(Coding::Identity),
            vary: dynamic || brotli.is_some() || gzip.is_some(),
        };

        if !self.cache.enabled() || stamp.len > self.cache_max_file_size {
            return Ok(Resolved::Large(Box::new(Large {
                head,
                stamp,
                file,
                dynamic,
                brotli: brotli.map(|(_, f, s)| (f, s)),
                gzip: gzip.map(|(_, f, s)| (f, s)),
            })));
        }

        let bytes = read_all(file, stamp.len).map_err(|_| Retry)?;
        let mut weight = ENTRY_OVERHEAD + key.len() as u64 + bytes.len() as u64;
        let mut variant = |coding: Coding, on: bool, sib: Option<(PathBuf, File, Stamp)>| {
            if let Some((sib_path, f, s)) = sib
                && s.len <= self.cache_max_file_size
                && let Ok(data) = read_all(f, s.len)
            {
                weight += data.len() as u64;
                let rep = self.rep(&head, coding, s.etag(coding), data, Some((sib_path, s)));
                return Variant::Sibling(rep);
            }
            if on && dynamic {
                Variant::Lazy(OnceCell::new())
            } else {
                Variant::None
            }
        };
        let brotli = variant(Coding::Brotli, c.brotli, brotli);
        let gzip = variant(Coding::Gzip, c.gzip, gzip);
        let identity = self.rep(&head, Coding::Identity, head.etag.clone(), bytes, None);
        let entry = Arc::new(Entry {
            path,
            stamp,
            head,
            identity,
            gzip,
            brotli,
            checked_ms: AtomicU64::new(self.now_ms()),
            referenced: AtomicBool::new(true),
            weight: AtomicU64::new(weight),
        });
        Ok(Resolved::Cached(self.cache.insert(key, entry)))
    }

    // --- responses -----------------------------------------------------------------------

    fn send_large(&self, large: Large, cond: &Conditions<'_>, head_only: bool) -> Response<Body> {
        let Large {
            head,
            stamp,
            file,
            dynamic,
            brotli,
            gzip,
        } = large;
        let range = range_request(&head, cond, head_only);
        let coding = if range.is_some() {
            Coding::Identity
        } else {
            let prefs = match cond.accept_encoding {
                Some(v) if head.vary => AcceptPrefs::parse(cond.all(&ACCEPT_ENCODING, v)),
                _ => AcceptPrefs::IDENTITY,
            };
            let c = self.compression;
            prefs.choose(
                brotli.is_some() || (dynamic && c.brotli),
                gzip.is_some() || (dynamic && c.gzip),
            )
        };
        let sibling = match coding {
            Coding::Brotli => brotli,
            Coding::Gzip => gzip,
            Coding::Identity => None,
        };
        let etag = match (&sibling, coding) {
            (_, Coding::Identity) => head.etag.clone(),
            (Some((_, s)), c) => s.etag(c),
            (None, c) => weak(&stamp.etag(c)),
        };
        if let Some(status) = preconditions(&head, &etag, cond) {
            return self.not_modified_or_failed(status, &head, &etag);
        }
        let mut h = HeaderMap::with_capacity(12);
        let (status, body) = match range.map(|r| r.resolve(head.len)) {
            Some(Some((start, end))) => {
                self.file_headers(&mut h, &head, &etag, Coding::Identity);
                h.insert(CONTENT_RANGE, content_range(start, end, head.len));
                h.insert(CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                let body = if head_only {
                    Body::empty()
                } else {
                    Body::new(FileBody::new(file, start, end - start + 1, None))
                };
                (StatusCode::PARTIAL_CONTENT, body)
            }
            Some(None) => return self.unsatisfiable(&head),
            None => {
                self.file_headers(&mut h, &head, &etag, coding);
                let (body_file, len, encoder) = match (sibling, coding) {
                    (Some((f, s)), _) => (f, Some(s.len), None),
                    (None, Coding::Identity) => (file, Some(head.len), None),
                    (None, c) => (file, None, StreamEncoder::new(c)),
                };
                if let Some(len) = len {
                    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
                }
                let body = if head_only {
                    Body::empty()
                } else {
                    let n = len.unwrap_or(head.len);
                    Body::new(FileBody::new(body_file, 0, n, encoder))
                };
                (StatusCode::OK, body)
            }
        };
        response(status, h, body)
    }

    /// A representation held in memory, with its `200` header block.
    fn rep(
        &self,
        head: &Head,
        coding: Coding,
        etag: HeaderValue,
        bytes: Bytes,
        sibling: Option<(PathBuf, Stamp)>,
    ) -> Rep {
        // Room for what the server adds (`x-request-id`) without growing.
        let mut headers = HeaderMap::with_capacity(12);
        self.file_headers(&mut headers, head, &etag, coding);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Rep {
            etag,
            bytes,
            headers,
            sibling,
        }
    }

    /// The headers of a 200 or 206 about a file.
    fn file_headers(&self, h: &mut HeaderMap, head: &Head, etag: &HeaderValue, coding: Coding) {
        h.insert(CONTENT_TYPE, head.content_type.clone());
        h.insert(ETAG, etag.clone());
        h.insert(LAST_MODIFIED, head.last_modified.clone());
        h.insert(ACCEPT_RANGES, BYTES.clone());
        if let Some(cc) = &self.cache_control {
            h.insert(CACHE_CONTROL, cc.clone());
        }
        if head.vary {
            h.insert(VARY, ACCEPT_ENCODING_VALUE.clone());
        }
        if let Some(ce) = coding.header() {
            h.insert(CONTENT_ENCODING, ce);
        }
    }

    /// 304 (with the validators and caching headers a 200 would carry) or 412.
    fn not_modified_or_failed(
        &self,
        status: StatusCode,
        head: &Head,
        etag: &HeaderValue,
    ) -> Response<Body> {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = status;
        let h = res.headers_mut();
        if status == StatusCode::NOT_MODIFIED {
            h.insert(ETAG, etag.clone());
            h.insert(LAST_MODIFIED, head.last_modified.clone());
            if let Some(cc) = &self.cache_control {
                h.insert(CACHE_CONTROL, cc.clone());
            }
            if head.vary {
                h.insert(VARY, ACCEPT_ENCODING_VALUE.clone());
            }
        } else {
            h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        res
    }

    /// 416 with `Content-Range: bytes */len`.
    fn unsatisfiable(&self, head: &Head) -> Response<Body> {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
        let h = res.headers_mut();
        h.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{}", head.len)).expect("ASCII"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        h.insert(ACCEPT_RANGES, BYTES.clone());
        h.insert(ETAG, head.etag.clone());
        h.insert(LAST_MODIFIED, head.last_modified.clone());
        res
    }
}

/// The file changed between two looks at it.
struct Retry;

/// The `Range` that applies to this request, if any: GET only, one syntactically valid byte
/// range, and an `If-Range` (when sent) that matches the file (strong entity tag, or exactly
/// its `Last-Modified`). Anything else means: send the whole representation.
fn range_request(head: &Head, cond: &Conditions<'_>, head_only: bool) -> Option<ByteRange> {
    if head_only {
        return None;
    }
    let range = parse_range(cond.range?)?;
    if let Some(if_range) = cond.if_range {
        let v = if_range.as_bytes().trim_ascii();
        let matches = if v.starts_with(b"\"") || v.starts_with(b"W/") {
            strong_eq(v, &head.etag)
        } else {
            http_date_secs(if_range) == Some(head.mtime_secs)
        };
        if !matches {
            return None;
        }
    }
    Some(range)
}

/// RFC 9110 §13.2.2, steps 1–4: `If-Match`, else `If-Unmodified-Since` (412 when they fail);
/// then `If-None-Match`, else `If-Modified-Since` (304 for GET and HEAD). A header whose date
/// does not parse is ignored.
fn preconditions(head: &Head, etag: &HeaderValue, cond: &Conditions<'_>) -> Option<StatusCode> {
    if let Some(first) = cond.if_match {
        if !match_hits(cond.all(&IF_MATCH, first), etag) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let Some(since) = cond.if_unmodified_since.and_then(http_date_secs)
        && head.mtime_secs > since
    {
        return Some(StatusCode::PRECONDITION_FAILED);
    }
    if let Some(first) = cond.if_none_match {
        if none_match_hits(cond.all(&IF_NONE_MATCH, first), etag) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    } else if let Some(since) = cond.if_modified_since.and_then(http_date_secs)
        && head.mtime_secs <= since
    {
        return Some(StatusCode::NOT_MODIFIED);
    }
    None
}

/// `W/"…"` from a strong tag.
fn weak(etag: &HeaderValue) -> HeaderValue {
    let mut v = Vec::with_capacity(etag.len() + 2);
    v.extend_from_slice(b"W/");
    v.extend_from_slice(etag.as_bytes());
    HeaderValue::from_bytes(&v).expect("a valid tag stays valid")
}

fn content_range(start: u64, end: u64, len: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ASCII")
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("cached files fit in memory")
}

/// Reads a whole small file of `len` bytes; an error if the length changed.
fn read_all(mut file: File, len: u64) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(to_usize(len) + 1);
    file.read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(io::Error::other("the file changed while it was read"));
    }
    Ok(Bytes::from(buf))
}

/// How an I/O error on a path is answered: 404 for what does not exist (or is not a
/// directory on the way, or leads outside the root, or loops), 403 for what may not be read,
/// 500 for the rest.
fn refusal(key: &str, e: &io::Error) -> Resolved {
    if is_escape(e) {
        tracing::debug!(key, "refused: resolves outside static_dir");
        return Resolved::NotFound;
    }
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename => {
            Resolved::NotFound
        }
        io::ErrorKind::PermissionDenied => Resolved::Forbidden,
        _ if matches!(
            e.raw_os_error(),
            Some(libc::ENAMETOOLONG | libc::ELOOP | libc::ENXIO)
        ) =>
        {
            Resolved::NotFound
        }
        _ => Resolved::Failed(io::Error::new(e.kind(), e.to_string())),
    }
}

/// `301` to the directory's URL with a trailing slash (query kept).
fn redirect(path: &str, query: Option<&str>) -> Response<Body> {
    let location = match query {
        Some(q) => format!("{path}/?{q}"),
        None => format!("{path}/"),
    };
    let mut res = plain(StatusCode::MOVED_PERMANENTLY, false);
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}

fn response(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

/// A response with a body of known length (left out for HEAD, length kept).
fn sized(
    status: StatusCode,
    body: Bytes,
    content_type: HeaderValue,
    head_only: bool,
) -> Response<Body> {
    let len = HeaderValue::from(body.len());
    let mut res = Response::new(if head_only {
        Body::empty()
    } else {
        Body::full(body)
    });
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, content_type);
    h.insert(CONTENT_LENGTH, len);
    res
}

/// A short plain-text response naming the status.
fn plain(status: StatusCode, head_only: bool) -> Response<Body> {
    let text: &'static str = match status {
        StatusCode::BAD_REQUEST => "400 Bad Request\n",
        StatusCode::FORBIDDEN => "403 Forbidden\n",
        StatusCode::NOT_FOUND => "404 Not Found\n",
        StatusCode::METHOD_NOT_ALLOWED => "405 Method Not Allowed\n",
        StatusCode::MOVED_PERMANENTLY => "301 Moved Permanently\n",
        StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable\n",
        _ => "500 Internal Server Error\n",
    };
    sized(
        status,
        Bytes::from_static(text.as_bytes()),
        TEXT_PLAIN.clone(),
        head_only,
    )
}

#[cfg(test)]
impl StaticFiles {
    pub(crate) fn inner_cache_len(&self) -> usize {
        self.inner.cache.len()
    }

    pub(crate) fn inner_cache_usage(&self) -> (u64, usize) {
        (self.inner.cache.used(), self.inner.cache.len())
    }
}
