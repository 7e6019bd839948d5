//! The HTML listing of a directory (`directory_listing = true`).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use crate::beneath::RootDir;
use crate::path::is_hidden;

/// Listings stop after this many entries (and say so).
const MAX_ENTRIES: usize = 10_000;

/// Everything but RFC 3986 unreserved characters is encoded in links, so that no name can
/// become a scheme (`javascript:x`), a query, a fragment or another path.
const HREF: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

struct Item {
    name: String,
    href: String,
    dir: bool,
    len: u64,
    modified: Option<SystemTime>,
}

/// The listing page of the directory `dir` (opened as `rel` beneath `root`), for the URL
/// path `url_path` (decoded, ends with `/`). Dotfiles are left out unless `serve_hidden`; so
/// are links that leave the root, and anything that is not a file or a directory. What an
/// entry is (and its size and date) is what opening it beneath the root finds.
pub(crate) fn render(
    dir: File,
    root: &RootDir,
    rel: &Path,
    url_path: &str,
    has_parent: bool,
    serve_hidden: bool,
) -> io::Result<String> {
    let mut items = Vec::new();
    let mut truncated = false;
    let mut entries = rustix::fs::Dir::new(OwnedFd::from(dir))?;
    while let Some(dirent) = entries.read() {
        let Ok(dirent) = dirent else { continue };
        let name = OsStr::from_bytes(dirent.file_name().to_bytes());
        if name == "." || name == ".." || (is_hidden(name) && !serve_hidden) {
            continue;
        }
        let Ok(meta) = root.metadata(&rel.join(name)) else {
            continue;
        };
        if !meta.is_dir() && !meta.is_file() {
            continue;
        }
        if items.len() == MAX_ENTRIES {
            truncated = true;
            break;
        }
        let mut href: String = percent_encoding::percent_encode(name.as_bytes(), HREF).collect();
        if meta.is_dir() {
            href.push('/');
        }
        items.push(Item {
            name: name.to_string_lossy().into_owned(),
            href,
            dir: meta.is_dir(),
            len: meta.len(),
            modified: meta.modified().ok(),
        });
    }
    items.sort_by(|a, b| b.dir.cmp(&a.dir).then_with(|| a.name.cmp(&b.name)));

    let title = escape(url_path);
    let mut html = String::with_capacity(512 + items.len() * 160);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Index of {title}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td{{padding:.15em 1.5em .15em 0}}\
         td.n{{text-align:right}}</style></head>\n<body>\n<h1>Index of {title}</h1>\n\
         <table>\n<thead><tr><th>Name</th><th>Size</th><th>Modified</th></tr></thead>\n<tbody>\n"
    );
    if has_parent {
        html.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    for item in &items {
        let size = if item.dir {
            "-".to_owned()
        } else {
            item.len.to_string()
        };
        let date = item
            .modified
            .map(httpdate::fmt_http_date)
            .unwrap_or_default();
        let slash = if item.dir { "/" } else { "" };
        let _ = writeln!(
            html,
            "<tr><td><a href=\"{}\">{}{slash}</a></td><td class=\"n\">{size}</td><td>{date}</td></tr>",
            item.href,
            escape(&item.name),
        );
    }
    html.push_str("</tbody>\n</table>\n");
    if truncated {
        let _ = writeln!(
            html,
            "<p>Only the first {MAX_ENTRIES} entries are listed.</p>"
        );
    }
    html.push_str("</body></html>\n");
    Ok(html)
}

/// HTML-escapes text for element content and double-quoted attributes.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A request path, percent-decoded for display.
pub(crate) fn display_path(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;

    #[test]
    fn escapes_and_encodes() {
        let root = std::env::temp_dir().join(format!("snakeway-listing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("sub dir")).unwrap();
        fs::write(root.join("<b>&\"x\".txt"), "12345").unwrap();
        fs::write(root.join("javascript:alert(1)"), "").unwrap();
        fs::write(root.join(".secret"), "s").unwrap();
        let root = fs::canonicalize(&root).unwrap();

        let dir = RootDir::open(&root).unwrap();
        let open = || dir.open_read(Path::new("")).unwrap().0;
        let html = render(open(), &dir, Path::new(""), "/files/<a>/", true, false).unwrap();
        assert!(html.contains("Index of /files/&lt;a&gt;/"), "{html}");
        assert!(html.contains(
            "<a href=\"%3Cb%3E%26%22x%22.txt\">&lt;b&gt;&amp;&quot;x&quot;.txt</a></td><td class=\"n\">5</td>"
        ), "{html}");
        assert!(
            html.contains("href=\"javascript%3Aalert%281%29\""),
            "{html}"
        );
        assert!(
            html.contains("<a href=\"sub%20dir/\">sub dir/</a>"),
            "{html}"
        );
        assert!(html.contains("<a href=\"../\">"), "{html}");
        assert!(!html.contains("secret"), "{html}");
        // Directories first.
        assert!(html.find("sub%20dir").unwrap() < html.find("%3Cb%3E").unwrap());

        let with_hidden = render(open(), &dir, Path::new(""), "/", false, true).unwrap();
        assert!(with_hidden.contains(".secret"));
        assert!(!with_hidden.contains("../"));
        fs::remove_dir_all(&root).unwrap();
    }
}
