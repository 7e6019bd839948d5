//! Why a module did not load, in one line that names the module and the cause.
//!
//! The file's header is checked before wasmtime sees it, so the usual mistakes (a text file, a
//! truncated download, a core module built for `wasm32-unknown-unknown`) are named as such
//! instead of surfacing as a parser's byte dump.

use std::fmt;

use wasmparser::{BinaryReaderError, Parser};

/// Why a WASM device could not be loaded: [`kind`](Self::kind) says what went wrong, and the
/// message (one line) names the module file when it was loaded from one.
#[derive(Debug)]
pub struct LoadError {
    module: Option<Box<str>>,
    kind: LoadErrorKind,
}

/// What went wrong when loading a WASM device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// The engine could not be set up (not about the module).
    #[error("the WASM engine cannot be set up: {0}")]
    Engine(String),
    /// The module file could not be read.
    #[error("cannot be read: {0}")]
    Read(#[source] std::io::Error),
    /// The file is empty.
    #[error("is empty, not a WebAssembly component")]
    Empty,
    /// The file does not start with the WebAssembly magic number.
    #[error(
        "is not a WebAssembly component (bad magic number{})",
        if *.text { "; it is a text file" } else { "" }
    )]
    NotWasm {
        /// The first bytes are printable text (a `.wat`, a config, an HTML error page…).
        text: bool,
    },
    /// The file ends before its header or one of its sections does.
    #[error("is truncated ({size} bytes, {expected})")]
    Truncated {
        /// The file's size.
        size: usize,
        /// What was cut off.
        expected: String,
    },
    /// A core module, not a component: built for another target or not componentized.
    #[error(
        "is a core WebAssembly module, not a component (build it for wasm32-wasip2, or turn it \
         into one with `wasm-tools component new`)"
    )]
    CoreModule,
    /// A WebAssembly header of a version or layer this host does not read.
    #[error(
        "is a WebAssembly binary of an unsupported version ({version:#x}, layer {layer}), not a \
         component"
    )]
    UnknownVersion {
        /// The header's version field.
        version: u16,
        /// The header's layer field (0: core module, 1: component).
        layer: u16,
    },
    /// The component does not parse or validate.
    #[error("is not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The component imports something the host does not provide.
    #[error(
        "imports {}, which Snakeway does not provide (a device may import only \
         `snakeway:device/host@1.0.0`, and WASI's io, cli, clocks and random, which trap)",
        ticked(.0)
    )]
    Import(Vec<String>),
    /// The component does not export the device interface this host calls.
    #[error("{}", no_export(.0))]
    NoExport(Vec<String>),
    /// The component exports the device interface with other types.
    #[error(
        "does not match the snakeway device interface (`{wanted}`): {cause}",
        wanted = crate::DEVICE_INTERFACE,
        cause = .0
    )]
    Link(String),
    /// The limits do not fit the engine.
    #[error("cannot be loaded with these limits: {0}")]
    Limits(String),
    /// `init` answered an error, trapped or timed out.
    #[error("failed in init: {0}")]
    Init(String),
}

// === impl LoadError ===

impl LoadError {
    /// What went wrong.
    pub fn kind(&self) -> &LoadErrorKind {
        &self.kind
    }

    /// The module file, when it was loaded from one.
    pub fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    /// The same error, about the module file `path`.
    pub(crate) fn in_file(mut self, path: &std::path::Path) -> Self {
        self.module = Some(path.display().to_string().into());
        self
    }
}

impl From<LoadErrorKind> for LoadError {
    fn from(kind: LoadErrorKind) -> Self {
        Self { module: None, kind }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.module) {
            (LoadErrorKind::Engine(_), _) => write!(f, "{}", self.kind),
            (_, Some(module)) => write!(f, "{module} {}", self.kind),
            (_, None) => write!(f, "the module {}", self.kind),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

// === the checks ===

/// `\0asm`.
const MAGIC: [u8; 4] = *b"\0asm";

/// Names what `bytes` is when it is not a component, from its header and section sizes alone.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), LoadErrorKind> {
    if bytes.is_empty() {
        return Err(LoadErrorKind::Empty);
    }
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    if head != &MAGIC[..head.len()] {
        let sample = &bytes[..bytes.len().min(64)];
        let text = std::str::from_utf8(sample)
            .is_ok_and(|s| s.chars().all(|c| !c.is_control() || c.is_whitespace()));
        return Err(LoadErrorKind::NotWasm { text });
    }
    if bytes.len() < 8 {
        return Err(LoadErrorKind::Truncated {
            size: bytes.len(),
            expected: "the 8-byte header is incomplete".to_owned(),
        });
    }
    if Parser::is_core_wasm(bytes) {
        return Err(LoadErrorKind::CoreModule);
    }
    if !Parser::is_component(bytes) {
        return Err(LoadErrorKind::UnknownVersion {
            version: u16::from_le_bytes([bytes[4], bytes[5]]),
            layer: u16::from_le_bytes([bytes[6], bytes[7]]),
        });
    }
    check_sections(bytes)
}

/// Walks the top-level sections (an id byte, a LEB128 size, the payload) and reports the first
/// one that runs past the end of the file: the mark of a cut-off copy or download.
fn check_sections(bytes: &[u8]) -> Result<(), LoadErrorKind> {
    let truncated = |at: usize| LoadErrorKind::Truncated {
        size: bytes.len(),
        expected: format!("the section at byte {at} runs past the end"),
    };
    let mut at = 8;
    while at < bytes.len() {
        let start = at;
        at += 1;
        let mut size: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&byte) = bytes.get(at) else {
                return Err(truncated(start));
            };
            at += 1;
            size |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                // Not a valid u32: leave the details to the parser.
                return Ok(());
            }
        }
        let end = u64::try_from(at).unwrap_or(u64::MAX).saturating_add(size);
        if end > u64::try_from(bytes.len()).unwrap_or(u64::MAX) {
            return Err(truncated(start));
        }
        at = usize::try_from(end).unwrap_or(usize::MAX);
    }
    Ok(())
}

/// wasmtime's compilation error as one line: the parser's message and offset when the parser
/// refused the bytes, else the root cause with its line breaks folded.
pub(crate) fn invalid(error: &wasmtime::Error) -> LoadErrorKind {
    let cause = match error
        .chain()
        .find_map(|e| e.downcast_ref::<BinaryReaderError>())
    {
        Some(e) => format!("{} (at byte {:#x})", e.message(), e.offset()),
        None => one_line(&error.root_cause().to_string()),
    };
    LoadErrorKind::Invalid(cause)
}

/// `text` with every run of whitespace that holds a line break folded into one space.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn ticked(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_export(found: &[String]) -> String {
    let wanted = crate::DEVICE_INTERFACE;
    if found.is_empty() {
        format!(
            "does not export the snakeway device interface (`{wanted}`): build it for the \
             `snakeway-device` world (`snakeway wasm new` writes a crate that does)"
        )
    } else {
        format!(
            "exports {}, not the version this Snakeway calls (`{wanted}`): rebuild it against \
             this Snakeway's WIT (`snakeway wasm new` writes it out)",
            ticked(found)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(bytes: &[u8]) -> String {
        check_header(bytes).unwrap_err().to_string()
    }

    #[test]
    fn headers_are_named_by_what_they_are() {
        assert_eq!(kind(b""), "is empty, not a WebAssembly component");
        assert_eq!(
            kind(b"hello\nworld\n"),
            "is not a WebAssembly component (bad magic number; it is a text file)"
        );
        assert_eq!(
            kind(b"\x7fELF\x02\x01\x01\0"),
            "is not a WebAssembly component (bad magic number)"
        );
        assert!(kind(b"\0as").starts_with("is truncated (3 bytes"));
        assert!(kind(b"\0asm\x0d\0").starts_with("is truncated (6 bytes"));
        assert!(kind(b"\0asm\x01\0\0\0").starts_with("is a core WebAssembly module"));
        assert_eq!(
            kind(b"\0asm\x0e\0\x02\0"),
            "is a WebAssembly binary of an unsupported version (0xe, layer 2), not a component"
        );
    }

    #[test]
    fn a_section_past_the_end_is_truncation() {
        // An empty component is fine; one section of 2 bytes, present or cut.
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert!(check_header(b"\0asm\x0d\0\x01\0\x00\x02ab").is_ok());
        assert_eq!(
            kind(b"\0asm\x0d\0\x01\0\x00\x02a"),
            "is truncated (11 bytes, the section at byte 8 runs past the end)"
        );
        // A size cut in the middle of its LEB128 encoding; a huge declared size.
        assert!(kind(b"\0asm\x0d\0\x01\0\x00\x80").starts_with("is truncated"));
        assert!(kind(b"\0asm\x0d\0\x01\0\x00\xff\xff\xff\xff\x0f").starts_with("is truncated"));
    }

    #[test]
    fn messages_name_the_module_in_one_line() {
        let err = LoadError::from(LoadErrorKind::CoreModule).in_file("devices/x.wasm".as_ref());
        assert!(
            err.to_string()
                .starts_with("devices/x.wasm is a core WebAssembly module, not a component"),
            "{err}"
        );
        let err = LoadError::from(LoadErrorKind::NoExport(vec![
            "snakeway:device/device@0.9.0".into(),
        ]));
        assert!(
            err.to_string()
                .starts_with("the module exports `snakeway:device/device@0.9.0`, not the version"),
            "{err}"
        );
        assert_eq!(one_line("a -\n  [\n 0x0,\n]"), "a - [ 0x0, ]");
    }
}
