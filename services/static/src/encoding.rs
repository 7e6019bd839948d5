//! Content types and content codings: the `Content-Type` of a file name, which types are worth
//! compressing, `Accept-Encoding` negotiation with q-values, and the compressors.

use std::io::{self, Write};
use std::path::Path;

use http::HeaderValue;

/// A content coding this crate can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Identity,
    Gzip,
    Brotli,
}

impl Coding {
    /// The `Content-Encoding` value (none for identity).
    pub(crate) fn header(self) -> Option<HeaderValue> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some(HeaderValue::from_static("gzip")),
            Self::Brotli => Some(HeaderValue::from_static("br")),
        }
    }

    /// Suffix of the precompressed sibling (`app.js.gz`) and of the entity tag.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Self::Identity => "",
            Self::Gzip => "gz",
            Self::Brotli => "br",
        }
    }
}

/// The q-values (in thousandths) a request gives each coding, from `Accept-Encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AcceptPrefs {
    pub(crate) brotli: u16,
    pub(crate) gzip: u16,
    /// identity's q-value when the header names it (or excludes it with `*;q=0`); when it
    /// does not, identity is acceptable but preferred least.
    pub(crate) identity: Option<u16>,
}

impl AcceptPrefs {
    /// No `Accept-Encoding`: identity only (RFC 9110 §12.5.3 would allow any coding, but
    /// every server sends identity then, and so do we).
    pub(crate) const IDENTITY: Self = Self {
        brotli: 0,
        gzip: 0,
        identity: None,
    };

    /// Parses every line of `Accept-Encoding`.
    pub(crate) fn parse<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Self {
        let (mut br, mut gz, mut id, mut star) = (None, None, None, None);
        for value in values {
            for item in value.as_bytes().split(|&b| b == b',') {
                let mut parts = item.split(|&b| b == b';');
                let coding = parts.next().unwrap_or_default().trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                let mut q = 1000;
                for param in parts {
                    let param = param.trim_ascii();
                    if let Some(v) = param
                        .strip_prefix(b"q=")
                        .or_else(|| param.strip_prefix(b"Q="))
                    {
                        q = parse_q(v.trim_ascii()).unwrap_or(0);
                    }
                }
                let slot = if coding.eq_ignore_ascii_case(b"br") {
                    &mut br
                } else if coding.eq_ignore_ascii_case(b"gzip")
                    || coding.eq_ignore_ascii_case(b"x-gzip")
                {
                    &mut gz
                } else if coding.eq_ignore_ascii_case(b"identity") {
                    &mut id
                } else if coding == b"*" {
                    &mut star
                } else {
                    continue;
                };
                // The highest q wins if a coding is named twice.
                *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
            }
        }
        Self {
            brotli: br.or(star).unwrap_or(0),
            gzip: gz.or(star).unwrap_or(0),
            // identity stays acceptable unless excluded by name or by `*;q=0`.
            identity: id.or(star.filter(|&q| q == 0)),
        }
    }

    /// The coding to send among those `available`: highest q first, then br, gzip, identity.
    /// When nothing acceptable is available the response is sent as identity anyway (a
    /// 406 helps nobody for static files).
    pub(crate) fn choose(&self, brotli: bool, gzip: bool) -> Coding {
        let mut best = (Coding::Identity, 0);
        if gzip && self.gzip > best.1 {
            best = (Coding::Gzip, self.gzip);
        }
        if brotli && self.brotli > 0 && self.brotli >= best.1 {
            best = (Coding::Brotli, self.brotli);
        }
        match self.identity {
            Some(q) if q > best.1 => Coding::Identity,
            _ => best.0,
        }
    }
}

/// `0`, `0.5`, `1.000` → thousandths.
fn parse_q(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut q = match int[0] {
        b'0' => 0u16,
        b'1' => 1000,
        _ => return None,
    };
    for (i, d) in frac.iter().enumerate() {
        q += u16::from(d - b'0') * [100, 10, 1][i];
    }
    Some(q.min(1000))
}

/// What the file name says about a file.
pub(crate) struct FileType {
    pub(crate) content_type: HeaderValue,
    /// Worth compressing on the fly (text, JSON, JavaScript, SVG, WASM, uncompressed fonts...);
    /// false for images, audio, video, archives and already-compressed fonts.
    pub(crate) compressible: bool,
}

/// `Content-Type` from the extension (`charset=utf-8` for text types), and compressibility.
pub(crate) fn file_type(path: &Path) -> FileType {
    let mime = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let text = is_text(mime);
    let content_type = if text {
        HeaderValue::from_str(&format!("{mime}; charset=utf-8"))
    } else {
        HeaderValue::from_str(mime)
    }
    .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    FileType {
        content_type,
        compressible: text || is_compressible_binary(mime),
    }
}

fn is_text(mime: &str) -> bool {
    mime.starts_with("text/")
        || mime.ends_with("+xml")
        || mime.ends_with("+json")
        || matches!(
            mime,
            "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/json"
                | "application/ld+json"
                | "application/xml"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/x-sh"
                | "application/toml"
                | "application/yaml"
                | "application/x-yaml"
        )
}

fn is_compressible_binary(mime: &str) -> bool {
    matches!(
        mime,
        "application/wasm"
            | "font/ttf"
            | "font/otf"
            | "font/collection"
            | "application/font-sfnt"
            | "application/x-font-ttf"
            | "application/x-font-otf"
            | "application/vnd.ms-fontobject"
            | "image/x-icon"
            | "image/vnd.microsoft.icon"
            | "image/bmp"
            | "application/x-tar"
    )
}

/// gzip level for cached variants (compressed once, so the best ratio is worth it).
const GZIP_CACHED: u32 = 9;
/// gzip level for files streamed with on-the-fly compression.
const GZIP_STREAMED: u32 = 6;
/// brotli quality for cached variants up to `BROTLI_MAX_QUALITY_SIZE` bytes.
const BROTLI_CACHED: u32 = 11;
const BROTLI_MAX_QUALITY_SIZE: usize = 256 << 10;
/// brotli quality for larger cached files (quality 11 costs about 1 s per MiB).
const BROTLI_CACHED_LARGE: u32 = 9;
/// brotli quality and window for files streamed with on-the-fly compression: fast, and the
/// encoder state stays around 1–2 MiB per stream.
const BROTLI_STREAMED: u32 = 5;
const BROTLI_STREAMED_WINDOW: u32 = 20;

/// Compressions done, by input length (tests check that concurrent requests share one).
#[cfg(test)]
pub(crate) static COMPRESSED_LENGTHS: std::sync::Mutex<Vec<usize>> =
    std::sync::Mutex::new(Vec::new());

/// Compresses a whole cached file once.
pub(crate) fn compress(coding: Coding, data: &[u8]) -> io::Result<Vec<u8>> {
    #[cfg(test)]
    COMPRESSED_LENGTHS.lock().unwrap().push(data.len());
    match coding {
        Coding::Identity => Ok(data.to_vec()),
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2 + 64),
                flate2::Compression::new(GZIP_CACHED),
            );
            e.write_all(data)?;
            e.finish()
        }
        Coding::Brotli => {
            let quality = if data.len() <= BROTLI_MAX_QUALITY_SIZE {
                BROTLI_CACHED
            } else {
                BROTLI_CACHED_LARGE
            };
            let mut out = Vec::with_capacity(data.len() / 2 + 64);
            let params = brotli::enc::BrotliEncoderParams {
                quality: quality as i32,
                lgwin: 22,
                size_hint: data.len(),
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &data[..], &mut out, &params)?;
            Ok(out)
        }
    }
}

/// An on-the-fly compressor for a streamed file, fed one chunk at a time.
pub(crate) enum StreamEncoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl StreamEncoder {
    pub(crate) fn new(coding: Coding) -> Option<Self> {
        match coding {
            Coding::Identity => None,
            Coding::Gzip => Some(Self::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_STREAMED),
            ))),
            Coding::Brotli => Some(Self::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                64 << 10,
                BROTLI_STREAMED,
                BROTLI_STREAMED_WINDOW,
            )))),
        }
    }

    /// Feeds `data` and returns the compressed bytes produced so far (possibly none).
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Self::Gzip(e) => {
                e.write_all(data)?;
                Ok(std::mem::take(e.get_mut()))
            }
            Self::Brotli(e) => {
                e.write_all(data)?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// Ends the stream and returns the last bytes.
    pub(crate) fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Self::Gzip(e) => e.finish(),
            Self::Brotli(e) => Ok(e.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(s: &str) -> AcceptPrefs {
        AcceptPrefs::parse([HeaderValue::from_str(s).unwrap()].iter())
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q(b"1"), Some(1000));
        assert_eq!(parse_q(b"0.5"), Some(500));
        assert_eq!(parse_q(b"0.125"), Some(125));
        assert_eq!(parse_q(b"1.000"), Some(1000));
        assert_eq!(parse_q(b"0"), Some(0));
        assert_eq!(parse_q(b"2"), None);
        assert_eq!(parse_q(b"0.1234"), None);
    }

    #[test]
    fn negotiation() {
        assert_eq!(
            prefs("gzip, deflate, br").choose(true, true),
            Coding::Brotli
        );
        assert_eq!(prefs("gzip, deflate, br").choose(false, true), Coding::Gzip);
        assert_eq!(prefs("gzip;q=1, br;q=0.5").choose(true, true), Coding::Gzip);
        assert_eq!(prefs("br;q=0, gzip").choose(true, true), Coding::Gzip);
        assert_eq!(prefs("*").choose(true, true), Coding::Brotli);
        assert_eq!(
            prefs("*;q=0.5, identity").choose(true, true),
            Coding::Identity
        );
        assert_eq!(prefs("identity").choose(true, true), Coding::Identity);
        assert_eq!(prefs("deflate").choose(true, true), Coding::Identity);
        assert_eq!(prefs("").choose(true, true), Coding::Identity);
        assert_eq!(prefs("GZIP; Q=0.8").choose(true, true), Coding::Gzip);
        assert_eq!(prefs("x-gzip").choose(true, true), Coding::Gzip);
        assert_eq!(prefs("gzip;q=0").choose(true, true), Coding::Identity);
        // Not acceptable: identity is still sent.
        assert_eq!(prefs("identity;q=0").choose(false, false), Coding::Identity);
        assert_eq!(prefs("*;q=0").identity, Some(0));
        assert_eq!(prefs("gzip;q=0.5").choose(true, true), Coding::Gzip);
        assert_eq!(
            prefs("gzip;q=0.5, identity;q=0.8").choose(true, true),
            Coding::Identity
        );
        assert_eq!(AcceptPrefs::IDENTITY.choose(true, true), Coding::Identity);
    }

    #[test]
    fn types() {
        let t = |p: &str| file_type(Path::new(p));
        assert_eq!(t("a.html").content_type, "text/html; charset=utf-8");
        assert_eq!(t("a.css").content_type, "text/css; charset=utf-8");
        assert!(
            t("a.js")
                .content_type
                .to_str()
                .unwrap()
                .ends_with("; charset=utf-8")
        );
        assert_eq!(t("a.json").content_type, "application/json; charset=utf-8");
        assert_eq!(t("a.svg").content_type, "image/svg+xml; charset=utf-8");
        assert_eq!(t("a.png").content_type, "image/png");
        assert_eq!(t("noext").content_type, "application/octet-stream");
        assert!(t("a.html").compressible && t("a.svg").compressible && t("a.wasm").compressible);
        for p in [
            "a.png", "a.jpg", "a.woff2", "a.gz", "a.zip", "a.mp4", "noext",
        ] {
            assert!(!t(p).compressible, "{p}");
        }
    }

    #[test]
    fn compressors_round_trip() {
        use std::io::Read;
        let data = b"hello hello hello hello hello hello hello hello".repeat(50);
        let gz = compress(Coding::Gzip, &data).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let br = compress(Coding::Brotli, &data).unwrap();
        let mut out = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);

        for coding in [Coding::Gzip, Coding::Brotli] {
            let mut e = StreamEncoder::new(coding).unwrap();
            let mut stream = Vec::new();
            for chunk in data.chunks(100) {
                stream.extend(e.write(chunk).unwrap());
            }
            stream.extend(e.finish().unwrap());
            let mut out = Vec::new();
            match coding {
                Coding::Gzip => flate2::read::GzDecoder::new(&stream[..])
                    .read_to_end(&mut out)
                    .unwrap(),
                _ => brotli::Decompressor::new(&stream[..], 4096)
                    .read_to_end(&mut out)
                    .unwrap(),
            };
            assert_eq!(out, data);
        }
    }
}
