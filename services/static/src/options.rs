//! Typed constructor options (the crate does not know the TOML schema; `src/stack.rs` maps a
//! `static_dir` route onto these).

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;

/// How a [`StaticFiles`](crate::StaticFiles) service serves one directory.
///
/// Built with [`StaticOptions::new`] and the `with_*` methods; every option not set keeps the
/// default of the `static_dir` route keys.
#[derive(Clone, Debug)]
pub struct StaticOptions {
    pub(crate) root: PathBuf,
    pub(crate) prefix: String,
    pub(crate) index: Option<String>,
    pub(crate) directory_listing: bool,
    pub(crate) max_file_size: Option<u64>,
    pub(crate) cache_control: Option<HeaderValue>,
    pub(crate) compression: CompressionOptions,
    pub(crate) serve_hidden: bool,
    pub(crate) cache: CacheOptions,
}

/// On-the-fly and precompressed content codings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressionOptions {
    /// Offer `gzip` (compressed on the fly, or a `file.gz` sibling).
    pub gzip: bool,
    /// Offer `br` (compressed on the fly, or a `file.br` sibling).
    pub brotli: bool,
    /// Files smaller than this many bytes are never compressed on the fly.
    pub min_size: u64,
}

impl Default for CompressionOptions {
    fn default() -> Self {
        Self {
            gzip: true,
            brotli: true,
            min_size: 1024,
        }
    }
}

/// The in-memory cache of small files and their compressed variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// Upper bound of the bytes held (file bodies plus compressed variants); 0 disables the
    /// cache. Default 64 MiB.
    pub max_bytes: u64,
    /// Files larger than this are streamed from disk on every request. Default 1 MiB.
    pub max_file_size: u64,
    /// How long a cached file is trusted before its metadata (device, inode, size, mtime) is
    /// checked again with one `statx`. Default 1 s: a file changed on disk may be served in
    /// its previous version (bytes and validators together, never a mix) for up to a second,
    /// which is also the resolution of `Last-Modified`. Zero checks on every request, which
    /// costs about 10 % of a small file's CPU time per request.
    pub revalidate_after: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_file_size: 1 << 20,
            revalidate_after: Duration::from_secs(1),
        }
    }
}

// === impl StaticOptions ===

impl StaticOptions {
    /// Files below `root`, for a route mounted at `/`, with the route defaults: index file
    /// `index.html`, no listings, no size limit (files stream in constant memory), no
    /// `cache-control`, gzip and brotli above 1 KiB, no dotfiles.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            prefix: String::new(),
            index: Some("index.html".to_owned()),
            directory_listing: false,
            max_file_size: None,
            cache_control: None,
            compression: CompressionOptions::default(),
            serve_hidden: false,
            cache: CacheOptions::default(),
        }
    }

    /// The route's path prefix, removed from the request path before it is mapped to a file
    /// (`/assets` serves `/assets/app.js` from `root/app.js`). A trailing `/` is ignored.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// The file served for a directory request (`/dir/`); `None` turns index files off.
    pub fn with_index(mut self, index: Option<&str>) -> Self {
        self.index = index.filter(|i| !i.is_empty()).map(str::to_owned);
        self
    }

    /// Generate an HTML listing for directories without an index file.
    pub fn with_directory_listing(mut self, enabled: bool) -> Self {
        self.directory_listing = enabled;
        self
    }

    /// Files larger than `bytes` are refused with 404; `None` (the default) serves files of
    /// any size.
    pub fn with_max_file_size(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.max_file_size = bytes.into();
        self
    }

    /// The `cache-control` value sent with every file (and its 304s). A value that is not a
    /// valid header value is ignored with a warning (the config crate validates it first).
    pub fn with_cache_control(mut self, value: Option<&str>) -> Self {
        self.cache_control = value.and_then(|v| match HeaderValue::from_str(v) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(value = v, "ignoring an invalid cache-control value");
                None
            }
        });
        self
    }

    /// Content codings offered.
    pub fn with_compression(mut self, compression: CompressionOptions) -> Self {
        self.compression = compression;
        self
    }

    /// Serve files and directories whose name starts with `.` (default: 404).
    pub fn with_serve_hidden(mut self, serve: bool) -> Self {
        self.serve_hidden = serve;
        self
    }

    /// In-memory cache settings.
    pub fn with_cache(mut self, cache: CacheOptions) -> Self {
        self.cache = cache;
        self
    }
}
