//! The keys the schema accepts, read off the serde mirror in `raw` itself.
//!
//! [`Schema::get`] drives each section's `Deserialize` impl with a tracing deserializer: every
//! struct it meets reports its field list (the one `deny_unknown_fields` checks against) and
//! every field is followed into its type, so a key added to `raw` is known here with no list to
//! keep in step. Unknown keys are found against it (with a "did you mean" suggestion), and
//! the docs test uses it to hold `docs/config.md` to the schema.
//!
//! A key path is dotted and has no indices: `listener.tls.sni.hosts`, `service.upstreams.url`.
//! Device keys sit under their type: `device.wasm.path` (the `type` key itself is
//! `device.<type>.type`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Visitor};
use toml::Spanned;
use toml::de::DeValue;

use crate::raw::*;

/// The top-level sections, in the order messages list them.
pub(crate) const SECTIONS: [&str; 7] = [
    "server", "admin", "listener", "service", "route", "device", "wasm",
];

/// What a key path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// A table with these keys (each a path of its own).
    Table(&'static [&'static str]),
    /// A table whose keys are free (a WASM device's `config`).
    Open,
}

/// Every key path of the schema and what it holds (leaves are not listed here; they are the
/// fields of the tables).
#[derive(Debug, Default)]
pub(crate) struct Schema {
    pub(crate) nodes: BTreeMap<String, Node>,
    /// Sections the tracer could not follow (a field type it does not know); the schema tests
    /// require this to be empty.
    pub(crate) untraced: Vec<String>,
}

/// A key that the schema does not accept.
#[derive(Debug)]
pub(crate) struct UnknownKey {
    /// Its path below the element, with indices (`upstreams[1].wieght`).
    pub(crate) path: String,
    /// Where it is in the file.
    pub(crate) span: Range<usize>,
    /// The message: the key, the closest known key when one is close, and the choices.
    pub(crate) message: String,
}

impl Schema {
    /// The schema, traced once per process.
    pub(crate) fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let mut schema = Schema::default();
            schema.trace::<RawServer>("server");
            schema.trace::<RawAdmin>("admin");
            schema.trace::<RawWasmSettings>("wasm");
            schema.trace::<RawListener>("listener");
            schema.trace::<RawService>("service");
            schema.trace::<RawRoute>("route");
            for kind in DEVICE_TYPES {
                schema.trace_device(kind);
            }
            schema
        })
    }

    /// Traces the struct `type = "kind"` deserializes into (see `parse`).
    fn trace_device(&mut self, kind: &str) {
        let path = format!("device.{kind}");
        match kind {
            "identity" => self.trace::<RawIdentity>(&path),
            "request_filter" => self.trace::<RawRequestFilter>(&path),
            "wasm" => self.trace::<RawWasm>(&path),
            "structured_logging" => self.trace::<RawLogging>(&path),
            "rate_limit" => self.trace::<RawRateLimit>(&path),
            // A type `parse` accepts must be traced here; the schema tests fail until it is.
            _ => self.untraced.push(format!(
                "{path}: no struct for this device type (add it to Schema::trace_device)"
            )),
        }
    }

    fn trace<'de, T: Deserialize<'de>>(&mut self, path: &str) {
        // The tracer feeds every field a neutral value; no derived type can refuse them all,
        // so an error here means a field type the tracer does not know (see the tests).
        if let Err(e) = T::deserialize(Tracer { path, schema: self }) {
            self.untraced.push(e.0);
        }
    }

    /// The keys of the table at `path`, if it is a table with fixed keys.
    pub(crate) fn fields(&self, path: &str) -> Option<&'static [&'static str]> {
        match self.nodes.get(path) {
            Some(Node::Table(fields)) => Some(fields),
            _ => None,
        }
    }

    /// Every key path, tables included (`device.<type>.type` too).
    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (path, node) in &self.nodes {
            if let Node::Table(fields) = node {
                keys.extend(fields.iter().map(|f| format!("{path}.{f}")));
                if let Some(kind) = path.strip_prefix("device.")
                    && !kind.contains('.')
                {
                    keys.push(format!("{path}.type"));
                }
            }
        }
        keys.sort();
        keys
    }

    /// The keys of `value` (found at schema path `path`) that the schema does not accept,
    /// at every depth.
    pub(crate) fn unknown_keys(&self, path: &str, value: &Spanned<DeValue<'_>>) -> Vec<UnknownKey> {
        let mut out = Vec::new();
        self.walk(path, "", value, &mut out);
        out
    }

    fn walk(&self, path: &str, at: &str, value: &Spanned<DeValue<'_>>, out: &mut Vec<UnknownKey>) {
        match value.get_ref() {
            DeValue::Table(table) => {
                let Some(fields) = self.fields(path) else {
                    return; // an open table, or a leaf given a table (serde reports the type)
                };
                for (key, value) in table {
                    let key_text: &str = key.get_ref();
                    let here = if at.is_empty() {
                        key_text.to_owned()
                    } else {
                        format!("{at}.{key_text}")
                    };
                    if fields.contains(&key_text) {
                        self.walk(&format!("{path}.{key_text}"), &here, value, out);
                    } else {
                        out.push(UnknownKey {
                            path: here,
                            span: key.span(),
                            message: unknown_field(key_text, fields),
                        });
                    }
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk(path, &format!("{at}[{i}]"), item, out);
                }
            }
            _ => {}
        }
    }
}

/// "unknown field `x`", with the closest of `fields` when it is close, and all of them.
pub(crate) fn unknown_field(key: &str, fields: &[&str]) -> String {
    let listed: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
    let listed = listed.join(", ");
    let hint = crate::suggest::did_you_mean(key, fields.iter().copied());
    format!("unknown field `{key}`{hint} (expected one of {listed})")
}

// === the tracer ===

#[derive(Debug)]
struct TraceError(String);

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// A deserializer that answers every request with a neutral value and records each struct's
/// fields under its key path.
struct Tracer<'a> {
    path: &'a str,
    schema: &'a mut Schema,
}

macro_rules! neutral {
    ($($method:ident => $visit:ident($($value:expr)?);)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError(format!("{}: a self-describing type", self.path)))
    }

    neutral! {
        deserialize_bool => visit_bool(false);
        deserialize_i8 => visit_i64(0);
        deserialize_i16 => visit_i64(0);
        deserialize_i32 => visit_i64(0);
        deserialize_i64 => visit_i64(0);
        deserialize_u8 => visit_u64(0);
        deserialize_u16 => visit_u64(0);
        deserialize_u32 => visit_u64(0);
        deserialize_u64 => visit_u64(0);
        deserialize_f32 => visit_f64(0.0);
        deserialize_f64 => visit_f64(0.0);
        deserialize_char => visit_char('a');
        deserialize_str => visit_str("");
        deserialize_string => visit_str("");
        deserialize_bytes => visit_bytes(&[]);
        deserialize_byte_buf => visit_bytes(&[]);
        deserialize_unit => visit_unit();
        deserialize_identifier => visit_str("");
        deserialize_ignored_any => visit_unit();
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    /// A sequence of one element: array elements share their array's key path.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_seq(OneElement { tracer: Some(self) })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, TraceError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(v)
    }

    /// A free map: its keys are not the schema's.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.schema.nodes.insert(self.path.to_owned(), Node::Open);
        visitor.visit_map(Fields {
            fields: &[],
            next: 0,
            path: self.path,
            schema: self.schema,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.schema
            .nodes
            .insert(self.path.to_owned(), Node::Table(fields));
        visitor.visit_map(Fields {
            fields,
            next: 0,
            path: self.path,
            schema: self.schema,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, TraceError> {
        Err(TraceError(format!("{}: an enum", self.path)))
    }
}

/// Hands a struct every one of its fields, each traced under `path.field`.
struct Fields<'a> {
    fields: &'static [&'static str],
    next: usize,
    path: &'a str,
    schema: &'a mut Schema,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(de::value::BorrowedStrDeserializer::new(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        let field = self.fields[self.next];
        self.next += 1;
        let path = format!("{}.{field}", self.path);
        seed.deserialize(Tracer {
            path: &path,
            schema: self.schema,
        })
    }
}

/// A sequence holding one traced element.
struct OneElement<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        self.tracer.take().map(|t| seed.deserialize(t)).transpose()
    }
}
