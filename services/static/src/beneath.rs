//! Opening what a request names beneath the root directory, free of races with the file
//! system: the root is held open as a directory descriptor and every path is resolved
//! relative to it by the kernel, never by a check on one path followed by an open of another.
//!
//! * `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` (Linux 5.6+): the kernel refuses
//!   any resolution step that would leave the root, whatever a symlink says, however often it
//!   is swapped, and whatever directory is renamed meanwhile.
//! * A walk, one component at a time, each opened with `O_NOFOLLOW` from the descriptor of the
//!   directory before it, and symlinks read and followed by hand (at most [`MAX_LINKS`]), with
//!   `..` popping the walk's own stack of descriptors, never above the root. It serves what
//!   `openat2` refuses only because it cannot judge it: an absolute symlink naming a place
//!   inside the root by its absolute path. And it replaces `openat2` where the kernel lacks it
//!   (`ENOSYS`: for the rest of the process) or a seccomp filter refuses it (`EPERM`). Unlike
//!   `openat2` it does not notice a directory that is renamed out of the root while the walk
//!   holds it.
//!
//! Either way, what is served is what the returned descriptor refers to: the caller stats
//! the descriptor, not a path.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Symlinks followed in one walk before it gives up with `ELOOP` (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Whether `openat2` may be tried; cleared for the process the first time the kernel (or a
/// seccomp filter) refuses it.
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// The flags a file or directory to serve is opened with. `O_NONBLOCK` so that a FIFO in the
/// root cannot block the thread (it is then refused as not a regular file).
const READ: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// The flags of a descriptor used only to stat what a name refers to.
const LOOK: OFlags = OFlags::PATH.union(OFlags::CLOEXEC);

/// The root directory of a `static_dir` route, held open.
#[derive(Debug)]
pub(crate) struct RootDir {
    fd: OwnedFd,
    /// Device and inode of the directory, to notice when the configured path names another
    /// one (a deploy switching a symlink).
    dev: u64,
    ino: u64,
    /// The absolute paths by which an absolute symlink may name a place inside the root: the
    /// canonical one and the one configured.
    prefixes: [PathBuf; 2],
}

impl RootDir {
    /// Opens the directory at `path` (absolute).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let canonical = std::fs::canonicalize(path)?;
        let fd = rustix::fs::open(
            canonical.as_path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        Ok(Self {
            fd,
            dev: stat.st_dev,
            ino: stat.st_ino,
            prefixes: [canonical, path.to_owned()],
        })
    }

    /// Whether `meta` (of the configured path, links followed) describes this directory.
    pub(crate) fn is(&self, meta: &Metadata) -> bool {
        meta.dev() == self.dev && meta.ino() == self.ino
    }

    /// Opens `rel` (relative, plain names only) beneath the root for reading, a file or a
    /// directory, with what it is (`fstat` of the descriptor).
    pub(crate) fn open_read(&self, rel: &Path) -> io::Result<(File, Metadata)> {
        let file = File::from(self.open_beneath(rel, READ)?);
        let meta = file.metadata()?;
        Ok((file, meta))
    }

    /// What `rel` beneath the root refers to (links followed, inside the root only), without
    /// opening it for reading.
    pub(crate) fn metadata(&self, rel: &Path) -> io::Result<Metadata> {
        File::from(self.open_beneath(rel, LOOK)?).metadata()
    }

    fn open_beneath(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        if OPENAT2.load(Ordering::Relaxed) {
            let path: &Path = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            };
            match rustix::fs::openat2(
                &self.fd,
                path,
                flags,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOSYS) => {
                    tracing::info!(
                        "openat2 is not available: static files are opened by a component walk"
                    );
                    OPENAT2.store(false, Ordering::Relaxed);
                }
                // EXDEV: a step would leave the root, or a symlink is absolute; the walk tells
                // the two apart. EAGAIN: a rename raced a `..` step. EPERM: a seccomp filter
                // refusing openat2 (older container runtimes), or the file system refusing
                // the open, which the walk then reports.
                Err(Errno::XDEV | Errno::AGAIN | Errno::PERM) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.walk(rel, flags)
    }

    /// Resolves `rel` component by component (see the module docs).
    fn walk(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        // Names still to resolve, the next one last.
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, rel);
        // The directories entered below the root, innermost last.
        let mut dirs: Vec<OwnedFd> = Vec::new();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                dirs.pop().ok_or_else(escape)?;
                continue;
            }
            let cur = current(&self.fd, &dirs);
            match rustix::fs::readlinkat(cur, name.as_os_str(), Vec::new()) {
                Ok(target) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Errno::LOOP.into());
                    }
                    let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                    if target.is_absolute() {
                        let inside = self
                            .prefixes
                            .iter()
                            .find_map(|p| target.strip_prefix(p).ok())
                            .ok_or_else(escape)?;
                        dirs.clear();
                        push_components(&mut pending, inside);
                    } else {
                        push_components(&mut pending, &target);
                    }
                    continue;
                }
                Err(Errno::INVAL) => {} // not a symlink
                Err(e) => return Err(e.into()),
            }
            let last = pending.is_empty();
            let oflags = if last {
                flags
            } else {
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
            };
            match rustix::fs::openat(
                cur,
                name.as_os_str(),
                oflags | OFlags::NOFOLLOW,
                Mode::empty(),
            ) {
                Ok(fd) if last => return Ok(fd),
                Ok(fd) => dirs.push(fd),
                // It became a symlink after `readlinkat` looked: look again.
                Err(Errno::LOOP) if links < MAX_LINKS => {
                    links += 1;
                    pending.push(name);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The walk ended on a directory (`rel` was empty, or ended with `..`).
        Ok(rustix::fs::openat(
            current(&self.fd, &dirs),
            ".",
            flags,
            Mode::empty(),
        )?)
    }
}

/// The directory the walk is in.
fn current<'a>(root: &'a OwnedFd, dirs: &'a [OwnedFd]) -> BorrowedFd<'a> {
    dirs.last().unwrap_or(root).as_fd()
}

/// Adds the components of `path` (relative) to the walk's stack, the first one last; `.`
/// and empty ones are dropped, `..` is kept for the walk to pop a directory.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let start = pending.len();
    for component in path.components() {
        match component {
            Component::Normal(name) => pending.push(name.to_owned()),
            Component::ParentDir => pending.push(OsStr::from_bytes(b"..").to_owned()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    pending[start..].reverse();
}

/// The error of a path that would leave the root (answered like a missing file).
fn escape() -> io::Error {
    Errno::XDEV.into()
}

/// Whether `e` says that a path leads outside the root.
pub(crate) fn is_escape(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::XDEV.raw_os_error())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Tmp(PathBuf);

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `root/` with files, and links inside it to in-root and out-of-root places.
    fn tree(tag: &str) -> (Tmp, PathBuf) {
        let base =
            std::env::temp_dir().join(format!("snakeway-beneath-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(base.join("secret"), "SECRET").unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(root.join("sub/deeper/b.txt"), "b").unwrap();
        symlink("../secret", root.join("up")).unwrap();
        symlink(base.join("secret"), root.join("abs-out")).unwrap();
        symlink(root.join("a.txt"), root.join("abs-in")).unwrap();
        symlink("sub/deeper/../../a.txt", root.join("rel-in")).unwrap();
        symlink("../../a.txt", root.join("sub/deeper/back")).unwrap();
        symlink("../../../secret", root.join("sub/deeper/out")).unwrap();
        symlink("/proc/self/root/etc/hostname", root.join("magic")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        symlink(base.clone(), root.join("outdir")).unwrap();
        (Tmp(base), root)
    }

    fn read(root: &RootDir, rel: &str) -> io::Result<String> {
        let (mut file, _) = root.open_read(Path::new(rel))?;
        let mut s = String::new();
        io::Read::read_to_string(&mut file, &mut s)?;
        Ok(s)
    }

    fn check(root: &RootDir) {
        assert_eq!(read(root, "a.txt").unwrap(), "a");
        assert_eq!(read(root, "sub/deeper/b.txt").unwrap(), "b");
        assert_eq!(read(root, "abs-in").unwrap(), "a");
        assert_eq!(read(root, "rel-in").unwrap(), "a");
        assert_eq!(read(root, "sub/deeper/back").unwrap(), "a");
        assert!(root.metadata(Path::new("")).unwrap().is_dir());
        assert!(root.metadata(Path::new("sub")).unwrap().is_dir());
        for out in ["up", "abs-out", "sub/deeper/out", "outdir/secret", "magic"] {
            let e = read(root, out).unwrap_err();
            assert!(
                is_escape(&e) || e.raw_os_error() == Some(libc::ELOOP),
                "{out}: {e}"
            );
        }
        let e = read(root, "loop1").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(
            read(root, "missing").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn links_resolve_inside_the_root_only() {
        let (_tmp, root) = tree("openat2");
        check(&RootDir::open(&root).unwrap());
    }

    #[test]
    fn the_walk_alone_resolves_the_same() {
        let (_tmp, root) = tree("walk");
        let root = RootDir::open(&root).unwrap();
        // The walk directly (as on a kernel without openat2), without touching the global
        // switch other tests rely on.
        let read = |rel: &str| -> io::Result<String> {
            let mut file = File::from(root.walk(Path::new(rel), READ)?);
            let mut s = String::new();
            io::Read::read_to_string(&mut file, &mut s)?;
            Ok(s)
        };
        assert_eq!(read("a.txt").unwrap(), "a");
        assert_eq!(read("abs-in").unwrap(), "a");
        assert_eq!(read("rel-in").unwrap(), "a");
        assert_eq!(read("sub/deeper/back").unwrap(), "a");
        for out in ["up", "abs-out", "sub/deeper/out", "outdir/secret", "magic"] {
            assert!(is_escape(&read(out).unwrap_err()), "{out}");
        }
        assert_eq!(read("loop1").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert!(
            File::from(root.walk(Path::new("sub"), LOOK).unwrap())
                .metadata()
                .unwrap()
                .is_dir()
        );
    }
}
