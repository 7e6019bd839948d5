//! What is known about one file: its identity (device, inode, size, mtime), the response
//! headers derived from it, and, for cached files, its bytes and compressed variants.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::sync::OnceCell;

use crate::encoding::Coding;

/// The identity of a file's content as the file system reports it. A file whose stamp
/// changed is a different file: replaced (rename), rewritten (size/mtime) or swapped for a
/// link to somewhere else (device/inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    pub(crate) len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    pub(crate) fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }

    /// A strong entity tag from mtime (with nanoseconds) and size, like nginx's and
    /// tower-http's: stable across processes and across hosts that copied the file with its
    /// mtime. The format is tower-http's; variants add `-gz` or `-br`.
    pub(crate) fn etag(&self, coding: Coding) -> HeaderValue {
        let s = match coding {
            Coding::Identity => {
                format!(
                    "\"{:x}.{:08x}-{:x}\"",
                    self.mtime, self.mtime_nsec, self.len
                )
            }
            c => format!(
                "\"{:x}.{:08x}-{:x}-{}\"",
                self.mtime,
                self.mtime_nsec,
                self.len,
                c.suffix()
            ),
        };
        HeaderValue::from_str(&s).expect("hex digits and quotes are a valid header value")
    }

    /// Seconds since the epoch of the mtime (0 before the epoch).
    pub(crate) fn mtime_secs(&self) -> u64 {
        u64::try_from(self.mtime).unwrap_or(0)
    }

    pub(crate) fn last_modified(&self) -> HeaderValue {
        let t = UNIX_EPOCH + Duration::from_secs(self.mtime_secs());
        HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("an HTTP date is ASCII")
    }
}

/// The headers and validators every response about a file carries.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    pub(crate) content_type: HeaderValue,
    pub(crate) last_modified: HeaderValue,
    pub(crate) mtime_secs: u64,
    /// Size of the file itself (the identity representation).
    pub(crate) len: u64,
    /// Strong entity tag of the identity representation.
    pub(crate) etag: HeaderValue,
    /// The response may differ by `Accept-Encoding` (there is a compressed variant).
    pub(crate) vary: bool,
}

/// One representation held in memory: the file or one of its compressed variants.
#[derive(Debug)]
pub(crate) struct Rep {
    pub(crate) etag: HeaderValue,
    pub(crate) bytes: Bytes,
    /// The complete header block of a `200` with this representation, built once: a response
    /// clones it (two allocations, no hashing) instead of inserting eight headers.
    pub(crate) headers: HeaderMap,
    /// For a precompressed sibling (`file.gz`): where it is and what it was, to revalidate.
    pub(crate) sibling: Option<(PathBuf, Stamp)>,
}

/// A compressed variant of a cached file.
#[derive(Debug)]
pub(crate) enum Variant {
    /// Not offered (coding disabled, type not compressible, file too small, no sibling).
    None,
    /// A precompressed sibling read when the entry was filled.
    Sibling(Rep),
    /// Compressed on first demand, once: concurrent first requests wait for the one
    /// compression in flight instead of each compressing. `None` inside when compression did
    /// not make the file smaller.
    Lazy(OnceCell<Option<Rep>>),
}

impl Variant {
    /// Whether this variant can be offered (a lazy one that turned out useless cannot).
    pub(crate) fn offered(&self) -> bool {
        match self {
            Self::None => false,
            Self::Sibling(_) => true,
            Self::Lazy(cell) => cell.get().is_none_or(Option::is_some),
        }
    }
}

/// A cached file.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The path that is `stat`ed to revalidate (below the configured root, not canonical, so
    /// that a root that is a symlink switched by a deploy is followed).
    pub(crate) path: PathBuf,
    pub(crate) stamp: Stamp,
    pub(crate) head: Head,
    pub(crate) identity: Rep,
    pub(crate) gzip: Variant,
    pub(crate) brotli: Variant,
    /// When the stamp was last checked (ms on the cache clock), with `revalidate_after`.
    pub(crate) checked_ms: AtomicU64,
    /// Set on every hit, cleared by the eviction sweep (CLOCK second-chance).
    pub(crate) referenced: AtomicBool,
    /// Bytes held: the file, variants compressed so far, and a fixed overhead.
    pub(crate) weight: AtomicU64,
}

/// Bookkeeping bytes counted per entry besides its bodies, so that many empty files still
/// fill the cache.
pub(crate) const ENTRY_OVERHEAD: u64 = 512;

impl Entry {
    pub(crate) fn variant(&self, coding: Coding) -> &Variant {
        match coding {
            Coding::Gzip => &self.gzip,
            Coding::Brotli => &self.brotli,
            Coding::Identity => &Variant::None,
        }
    }

    /// Marks the entry as recently used; a store only when the bit was clear, so hot entries
    /// cost one shared load.
    #[inline]
    pub(crate) fn touch(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }
}
