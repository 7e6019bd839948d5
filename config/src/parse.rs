//! One file's text into [`RawConfig`] parts.
//!
//! The document is parsed once (a syntax error stops the file), then each top-level table and
//! each array element is deserialized on its own, so a bad key in one `[[route]]` does not hide
//! problems in the others. Errors keep toml's byte span, turned into a line and column.

use std::ops::Range;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::raw::{DEVICE_TYPES, FileId, Item, RawConfig, RawDevice, RawServer};
use crate::report::Problems;
use crate::schema::{SECTIONS, Schema};
use crate::suggest::did_you_mean;

/// Whether a file is the main one or an include (which may not hold `[server]`, `[admin]` or
/// `[wasm]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Main,
    Include,
}

/// Reads one file's text into `out`, reporting against `out.files[file]`.
pub(crate) fn parse_file(
    text: &str,
    file: FileId,
    role: Role,
    out: &mut RawConfig,
    problems: &mut Problems,
) {
    let mut p = Parser {
        text,
        file,
        out,
        problems,
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root.into_inner(),
        Err(err) => {
            let (line, column) = p.line_col(err.span());
            let name = p.name();
            problems.push(
                name,
                format!("line {line}, column {column}"),
                one_line(err.message()),
            );
            return;
        }
    };
    // Schema order, so problems read top to bottom like the file usually does.
    let order = [
        "server", "admin", "listener", "service", "route", "device", "wasm",
    ];
    let mut entries: Vec<_> = root.into_iter().collect();
    entries.sort_by_key(|(key, _)| {
        order
            .iter()
            .position(|k| *k == key.get_ref().as_ref())
            .unwrap_or(order.len())
    });
    for (key, value) in entries {
        let key_span = key.span();
        match (key.get_ref().as_ref(), role) {
            ("server", Role::Main) => p.server(value),
            ("admin", Role::Main) => p.out.admin = p.de(value, "admin".to_owned(), "admin"),
            ("wasm", Role::Main) => p.out.wasm = p.de(value, "wasm".to_owned(), "wasm"),
            (k @ ("server" | "admin" | "wasm"), Role::Include) => {
                p.problem_at(k, key_span, "only allowed in the main file");
            }
            ("listener", _) => {
                for (value, key) in p.elements(value, "listener", |o| o.listeners.len()) {
                    let item = p.item(value, key, "listener");
                    p.out.listeners.push(item);
                }
            }
            ("service", _) => {
                for (value, key) in p.elements(value, "service", |o| o.services.len()) {
                    let item = p.item(value, key, "service");
                    p.out.services.push(item);
                }
            }
            ("route", _) => {
                for (value, key) in p.elements(value, "route", |o| o.routes.len()) {
                    let item = p.item(value, key, "route");
                    p.out.routes.push(item);
                }
            }
            ("device", _) => {
                for (value, key) in p.elements(value, "device", |o| o.devices.len()) {
                    let item = p.device(value, key);
                    p.out.devices.push(item);
                }
            }
            ("include", Role::Main) => {
                p.problem_at(
                    "include",
                    key_span,
                    "unknown key; did you mean `include` under [server]?",
                );
            }
            ("include", Role::Include) => {
                p.problem_at("include", key_span, "included files cannot include others");
            }
            (other, _) => {
                let hint = did_you_mean(other, SECTIONS);
                let message = format!(
                    "unknown key{hint} (expected one of {})",
                    SECTIONS.join(", ")
                );
                p.problem_at(other, key_span, message);
            }
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    file: FileId,
    out: &'a mut RawConfig,
    problems: &'a mut Problems,
}

impl<'i> Parser<'_> {
    fn name(&self) -> std::path::PathBuf {
        self.out.files[self.file].name.clone()
    }

    /// `[server]`; if it does not deserialize, its `include` list is still honoured.
    fn server(&mut self, value: Spanned<DeValue<'i>>) {
        let include = peek_strings(&value, "include");
        let server = self.de(value, "server".to_owned(), "server");
        self.out.server = Some(server.unwrap_or(RawServer {
            include,
            ..RawServer::default()
        }));
    }

    /// The elements of a top-level array of tables, each with its key in the merged list.
    fn elements(
        &mut self,
        value: Spanned<DeValue<'i>>,
        name: &str,
        len: impl Fn(&RawConfig) -> usize,
    ) -> Vec<(Spanned<DeValue<'i>>, String)> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => {
                let first = len(self.out);
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (v, format!("{name}[{}]", first + i)))
                    .collect()
            }
            _ => {
                self.problem_at(
                    name,
                    span,
                    format!("must be an array of tables: write [[{name}]]"),
                );
                Vec::new()
            }
        }
    }

    fn item<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'i>>,
        key: String,
        section: &str,
    ) -> Item<T> {
        let name = peek_string(&value, "name");
        let raw = self.de(value, key, section);
        Item {
            file: self.file,
            raw,
            name,
        }
    }

    /// A `[[device]]`: `type` picks the struct the other keys deserialize into.
    fn device(&mut self, value: Spanned<DeValue<'i>>, key: String) -> Item<RawDevice> {
        let name = peek_string(&value, "name");
        let raw = self.device_raw(value, key);
        Item {
            file: self.file,
            raw,
            name,
        }
    }

    fn device_raw(&mut self, value: Spanned<DeValue<'i>>, key: String) -> Option<RawDevice> {
        let span = value.span();
        let expected = DEVICE_TYPES.join(", ");
        let DeValue::Table(mut table) = value.into_inner() else {
            self.problem_at(&key, span, "a device must be a table");
            return None;
        };
        let kind = match table.remove("type") {
            Some(kind) => match kind.get_ref().as_str() {
                Some(k) => Spanned::new(kind.span(), k.to_owned()),
                None => {
                    let message = format!("must be a string, one of {expected}");
                    self.problem_at(&format!("{key}.type"), kind.span(), message);
                    return None;
                }
            },
            None => {
                self.problem_at(
                    &format!("{key}.type"),
                    span,
                    format!("missing (one of {expected})"),
                );
                return None;
            }
        };
        let rest = Spanned::new(span, DeValue::Table(table));
        let section = format!("device.{}", kind.get_ref());
        match kind.get_ref().as_str() {
            "identity" => self.de(rest, key, &section).map(RawDevice::Identity),
            "request_filter" => self.de(rest, key, &section).map(RawDevice::RequestFilter),
            "wasm" => self.de(rest, key, &section).map(RawDevice::Wasm),
            "structured_logging" => self
                .de(rest, key, &section)
                .map(RawDevice::StructuredLogging),
            "rate_limit" => self.de(rest, key, &section).map(RawDevice::RateLimit),
            other => {
                let hint = did_you_mean(other, DEVICE_TYPES);
                let message =
                    format!("unknown device type {other:?}{hint} (expected one of {expected})");
                self.problem_at(&format!("{key}.type"), kind.span(), message);
                None
            }
        }
    }

    /// Deserializes `value` (found at `key`, schema path `section`), reporting the failing
    /// key path on error. Unknown keys are looked for first, at every depth, so that each is
    /// reported (with the closest known key) and not only the first serde meets.
    fn de<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'i>>,
        key: String,
        section: &str,
    ) -> Option<T> {
        let unknown = Schema::get().unknown_keys(section, &value);
        if !unknown.is_empty() {
            for u in unknown {
                self.problem_at(&format!("{key}.{}", u.path), u.span, u.message);
            }
            return None;
        }
        match serde_path_to_error::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(err) => {
                let mut path = key;
                for segment in err.path() {
                    match segment {
                        Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                        Segment::Map { key } => {
                            path.push('.');
                            path.push_str(key);
                        }
                        Segment::Enum { variant } => {
                            path.push('.');
                            path.push_str(variant);
                        }
                        Segment::Unknown => {}
                    }
                }
                let inner = err.into_inner();
                self.problem_at(
                    &path,
                    inner.span().unwrap_or_default(),
                    one_line(inner.message()),
                );
                None
            }
        }
    }

    /// A problem at `key`, with the line and column of `span` appended.
    fn problem_at(&mut self, key: &str, span: Range<usize>, message: impl std::fmt::Display) {
        let (line, column) = self.line_col(Some(span));
        let name = self.name();
        self.problems.push(
            name,
            key,
            format!("{message} (line {line}, column {column})"),
        );
    }

    /// 1-based line and column (in characters) of the start of `span`.
    fn line_col(&self, span: Option<Range<usize>>) -> (usize, usize) {
        let start = span.map_or(0, |s| s.start).min(self.text.len());
        let before = self.text.get(..start).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .unwrap_or_default()
            .chars()
            .count()
            + 1;
        (line, column)
    }
}

/// A string value of `table.key`, if `value` is a table that has one.
fn peek_string(value: &Spanned<DeValue<'_>>, key: &str) -> Option<String> {
    let DeValue::Table(table) = value.get_ref() else {
        return None;
    };
    table.get(key)?.get_ref().as_str().map(str::to_owned)
}

/// The string items of the array `table.key`, if present.
fn peek_strings(value: &Spanned<DeValue<'_>>, key: &str) -> Option<Vec<String>> {
    let DeValue::Table(table) = value.get_ref() else {
        return None;
    };
    let items = table.get(key)?.get_ref().as_array()?;
    Some(
        items
            .iter()
            .filter_map(|v| v.get_ref().as_str().map(str::to_owned))
            .collect(),
    )
}

/// toml messages may span lines; a problem is one line.
fn one_line(message: &str) -> String {
    message
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}
