//! From a request path to a file below the root: prefix removal, percent-decoding, and the
//! segment rules (no dotfiles unless allowed).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// `path` without the route `prefix` (which has no trailing `/`; the root route's is empty),
/// on a segment boundary: `/assets/x` → `/x`, `/assets` → ``, `/assetsx` → `None`.
pub(crate) fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Why a relative path maps to no file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A segment starts with `.` and hidden files are not served.
    Hidden,
    /// A segment decodes to something that is not a plain file name (`.`, `..`, or bytes
    /// containing `/` or NUL). The server's normalization rejects these first; this is the
    /// second line of defence for users of the crate without that server.
    Invalid,
}

/// The relative file-system path of the normalized, prefix-free request path `rel` (which
/// starts with `/` or is empty). Every segment is percent-decoded exactly once.
pub(crate) fn to_relative_path(rel: &str, serve_hidden: bool) -> Result<PathBuf, Refused> {
    let mut out = PathBuf::new();
    for segment in rel.split('/').filter(|s| !s.is_empty()) {
        let decoded: std::borrow::Cow<'_, [u8]> =
            percent_encoding::percent_decode_str(segment).into();
        let bytes = &decoded[..];
        if bytes == b"." || bytes == b".." || bytes.iter().any(|&b| b == b'/' || b == 0) {
            return Err(Refused::Invalid);
        }
        if bytes.first() == Some(&b'.') && !serve_hidden {
            return Err(Refused::Hidden);
        }
        out.push(OsStr::from_bytes(bytes));
    }
    Ok(out)
}

/// Whether a file name is hidden (starts with `.`).
pub(crate) fn is_hidden(name: &OsStr) -> bool {
    name.as_bytes().first() == Some(&b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_strip_on_segment_boundaries() {
        assert_eq!(strip_prefix("/assets/x", "/assets"), Some("/x"));
        assert_eq!(strip_prefix("/assets", "/assets"), Some(""));
        assert_eq!(strip_prefix("/assets/", "/assets"), Some("/"));
        assert_eq!(strip_prefix("/assetsx", "/assets"), None);
        assert_eq!(strip_prefix("/x/y", ""), Some("/x/y"));
        assert_eq!(strip_prefix("/", ""), Some("/"));
    }

    #[test]
    fn segments_decode_once() {
        assert_eq!(
            to_relative_path("/a%20b/c%C3%A9.txt", false).unwrap(),
            PathBuf::from("a b/cé.txt")
        );
        // A double-encoded dot-dot stays a literal name: one decoding only.
        assert_eq!(
            to_relative_path("/%252e%252e/x", false).unwrap(),
            PathBuf::from("%2e%2e/x")
        );
        assert_eq!(to_relative_path("/", false).unwrap(), PathBuf::new());
    }

    #[test]
    fn refusals() {
        assert_eq!(to_relative_path("/.env", false), Err(Refused::Hidden));
        assert_eq!(
            to_relative_path("/.git/config", false),
            Err(Refused::Hidden)
        );
        assert_eq!(
            to_relative_path("/a/%2Ehtaccess", false),
            Err(Refused::Hidden)
        );
        assert!(to_relative_path("/.env", true).is_ok());
        assert_eq!(to_relative_path("/a/%2e%2e/b", true), Err(Refused::Invalid));
        assert_eq!(to_relative_path("/a/../b", true), Err(Refused::Invalid));
        assert_eq!(to_relative_path("/a%2fb", true), Err(Refused::Invalid));
        assert_eq!(to_relative_path("/a%00b", true), Err(Refused::Invalid));
    }
}
