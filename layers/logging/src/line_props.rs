//! Property tests of the hand-written JSON line: for any field values (control characters,
//! quotes, backslashes, non-ASCII, invalid UTF-8 in header values and request ids), the line
//! is byte for byte what `serde_json` writes for the same fields in the same order, and it
//! parses back to the values it was given.

use std::borrow::Cow;
use std::net::{SocketAddr, SocketAddrV6};

use http::{HeaderName, HeaderValue};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Value};
use snakeway_core::{Error, ErrorKind};

use crate::record::{CapturedHeader, DeviceLogRecord, ErrorRecord, HeaderFields, REDACTED, Record};

/// The line as `serde_json` writes it: the oracle (the device's former serialization).
#[derive(serde::Serialize)]
struct Oracle<'a> {
    ts: &'a str,
    event: &'a str,
    request_id: Cow<'a, str>,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    duration_ms: f64,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    origin: Option<&'a str>,
    peer: SocketAddr,
    bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<OracleError<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<Option<Ordered>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<Option<&'a Map<String, Value>>>,
}

/// A JSON object with its keys in the given order (as the headers are captured).
struct Ordered(Vec<(String, String)>);

impl serde::Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct OracleError<'a> {
    kind: &'a str,
    message: String,
}

/// Any text, weighted towards what needs escaping.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[\"\\\\\u{0}-\u{1f}\u{7f}a-z/é✓😀]{0,24}",]
}

/// Header value bytes `HeaderValue` accepts: tab, visible ASCII and any byte above 0x7f (so
/// invalid UTF-8 too), plus the characters JSON escapes.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            Just(b'\t'),
            Just(b'"'),
            Just(b'\\'),
            0x20u8..0x7f,
            0x80u8..=0xff,
        ],
        0..24,
    )
}

/// Request ids: any bytes a `HeaderValue` takes.
fn request_id() -> impl Strategy<Value = HeaderValue> {
    header_value().prop_map(|bytes| HeaderValue::from_bytes(&bytes).unwrap())
}

fn peer() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u16; 8]>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| {
            SocketAddr::V6(SocketAddrV6::new(ip.into(), port, 0, scope))
        }),
    ]
}

/// Header groups: distinct names, each with one to three values (`None`: redacted).
fn headers() -> impl Strategy<Value = Vec<CapturedHeader>> {
    let names = [
        "accept",
        "user-agent",
        "x-custom",
        "authorization",
        "cookie",
    ];
    vec(
        vec(option::weighted(0.8, header_value()), 1..4),
        0..=names.len(),
    )
    .prop_map(move |groups| {
        let mut captured = Vec::new();
        for (name, values) in names.iter().zip(groups) {
            for value in values {
                captured.push((
                    HeaderName::from_static(name),
                    value.map(|v| HeaderValue::from_bytes(&v).unwrap()),
                ));
            }
        }
        captured
    })
}

fn identity() -> impl Strategy<Value = Map<String, Value>> {
    btree_map(
        text(),
        prop_oneof![
            text().prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ],
        0..4,
    )
    .prop_map(|fields| fields.into_iter().collect())
}

/// Every field of a line, owned.
#[derive(Debug)]
struct Fields {
    ts: String,
    event: String,
    request_id: HeaderValue,
    method: String,
    path: String,
    status: Option<u16>,
    /// Microseconds, as the device measures.
    micros: u64,
    route: Option<String>,
    upstream: Option<String>,
    origin: Option<String>,
    peer: SocketAddr,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    complete: Option<bool>,
    error: Option<(String, Error)>,
    headers: Option<Option<Vec<CapturedHeader>>>,
    identity: Option<Option<Map<String, Value>>>,
}

fn fields() -> impl Strategy<Value = Fields> {
    let head = (
        text(),
        text(),
        request_id(),
        text(),
        text(),
        any::<Option<u16>>(),
        0u64..(1 << 50),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        peer(),
    );
    let tail = (
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<bool>>(),
        option::of((text(), text())),
        option::of(option::of(headers())),
        option::of(option::of(identity())),
    );
    (head, tail).prop_map(
        |(
            (ts, event, request_id, method, path, status, micros, route, upstream, origin, peer),
            (bytes_in, bytes_out, complete, error, headers, identity),
        )| Fields {
            ts,
            event,
            request_id,
            method,
            path,
            status,
            micros,
            route,
            upstream,
            origin,
            peer,
            bytes_in,
            bytes_out,
            complete,
            error: error.map(|(kind, message)| (kind, Error::new(ErrorKind::Internal, message))),
            headers,
            identity,
        },
    )
}

/// What `leak` gives a `&'static str` field (the device's are static names): fine in a test.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// Writes the line for `fields` as the device does.
fn written(f: &Fields) -> String {
    let record = Record {
        ts: &f.ts,
        event: leak(&f.event),
        request_id: f.request_id.as_bytes(),
        method: &f.method,
        path: &f.path,
        status: f.status,
        duration_ms: f.micros as f64 / 1000.0,
        route: f.route.as_deref(),
        upstream: f.upstream.as_deref(),
        origin: f.origin.as_deref().map(leak),
        peer: f.peer,
        bytes_in: f.bytes_in,
        bytes_out: f.bytes_out,
        complete: f.complete,
        error: f.error.as_ref().map(|(kind, error)| ErrorRecord {
            kind: leak(kind),
            message: error,
        }),
        headers: f.headers.as_ref().map(|h| h.as_deref().map(HeaderFields)),
        identity: f.identity.as_ref().map(Option::as_ref),
    };
    let mut out = Vec::new();
    record.write(&mut out);
    String::from_utf8(out).expect("a line is UTF-8")
}

/// The headers the line should carry, in capture order: adjacent repeats joined with `", "`,
/// redacted values masked, invalid UTF-8 replaced.
fn expected_headers(captured: &[CapturedHeader]) -> Ordered {
    let mut expected: Vec<(String, String)> = Vec::new();
    for (name, value) in captured {
        let value = match value {
            None => Cow::Borrowed(REDACTED),
            Some(v) => String::from_utf8_lossy(v.as_bytes()),
        };
        match expected.last_mut() {
            Some((last, joined)) if last == name.as_str() => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => expected.push((name.as_str().to_owned(), value.into_owned())),
        }
    }
    Ordered(expected)
}

fn oracle(f: &Fields) -> String {
    serde_json::to_string(&Oracle {
        ts: &f.ts,
        event: &f.event,
        request_id: String::from_utf8_lossy(f.request_id.as_bytes()),
        method: &f.method,
        path: &f.path,
        status: f.status,
        duration_ms: f.micros as f64 / 1000.0,
        route: f.route.as_deref(),
        upstream: f.upstream.as_deref(),
        origin: f.origin.as_deref(),
        peer: f.peer,
        bytes_in: f.bytes_in,
        bytes_out: f.bytes_out,
        complete: f.complete,
        error: f.error.as_ref().map(|(kind, error)| OracleError {
            kind,
            message: error.to_string(),
        }),
        headers: f
            .headers
            .as_ref()
            .map(|h| h.as_deref().map(expected_headers)),
        identity: f.identity.as_ref().map(Option::as_ref),
    })
    .unwrap()
}

fn text_or_null(value: Option<&str>) -> Value {
    value.map_or(Value::Null, Value::from)
}

fn number_or_null(value: Option<u64>) -> Value {
    value.map_or(Value::Null, Value::from)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_line_is_what_serde_json_writes(f in fields()) {
        prop_assert_eq!(written(&f), oracle(&f));
    }

    #[test]
    fn every_line_parses_back_to_its_fields(f in fields()) {
        let line = written(&f);
        prop_assert!(!line.contains('\n'), "one line: {}", line);
        let parsed: Value = serde_json::from_str(&line).expect("a line is JSON");
        let obj = parsed.as_object().expect("a line is an object");
        prop_assert_eq!(&obj["ts"], &Value::from(f.ts.as_str()));
        prop_assert_eq!(&obj["event"], &Value::from(f.event.as_str()));
        prop_assert_eq!(
            &obj["request_id"],
            &Value::from(String::from_utf8_lossy(f.request_id.as_bytes()))
        );
        prop_assert_eq!(&obj["method"], &Value::from(f.method.as_str()));
        prop_assert_eq!(&obj["path"], &Value::from(f.path.as_str()));
        prop_assert_eq!(obj.get("status").cloned(), f.status.map(Value::from));
        let duration = obj["duration_ms"].as_f64().expect("a number");
        let micros = f.micros as f64;
        prop_assert!(
            (duration * 1000.0 - micros).abs() <= micros * 1e-12,
            "{} {}",
            duration,
            micros
        );
        prop_assert_eq!(&obj["route"], &text_or_null(f.route.as_deref()));
        prop_assert_eq!(&obj["upstream"], &text_or_null(f.upstream.as_deref()));
        prop_assert_eq!(&obj["origin"], &text_or_null(f.origin.as_deref()));
        let peer: SocketAddr = obj["peer"].as_str().expect("a string").parse().expect("an address");
        prop_assert_eq!(peer, f.peer);
        prop_assert_eq!(&obj["bytes_in"], &number_or_null(f.bytes_in));
        prop_assert_eq!(obj.get("bytes_out").cloned(), f.bytes_out.map(Value::from));
        prop_assert_eq!(obj.get("complete").cloned(), f.complete.map(Value::from));
        match &f.error {
            None => prop_assert!(!obj.contains_key("error")),
            Some((kind, error)) => {
                prop_assert_eq!(&obj["error"]["kind"], &Value::from(kind.as_str()));
                prop_assert_eq!(&obj["error"]["message"], &Value::from(error.to_string()));
            }
        }
        match &f.headers {
            None => prop_assert!(!obj.contains_key("headers")),
            Some(None) => prop_assert_eq!(&obj["headers"], &Value::Null),
            Some(Some(captured)) => {
                let expected: Map<String, Value> = expected_headers(captured)
                    .0
                    .into_iter()
                    .map(|(name, value)| (name, Value::from(value)))
                    .collect();
                prop_assert_eq!(&obj["headers"], &Value::Object(expected));
            }
        }
        match &f.identity {
            None => prop_assert!(!obj.contains_key("identity")),
            Some(None) => prop_assert_eq!(&obj["identity"], &Value::Null),
            Some(Some(fields)) => prop_assert_eq!(&obj["identity"], &Value::Object(fields.clone())),
        }
    }

    #[test]
    fn device_log_lines_parse_back_to_their_fields(
        request_id in request_id(),
        device in text(),
        message in text(),
    ) {
        let mut out = Vec::new();
        DeviceLogRecord {
            ts: "2026-12-07T05:00:00.000Z",
            request_id: request_id.as_bytes(),
            device: &device,
            level: "warn",
            message: &message,
        }
        .write(&mut out);
        let parsed: Value = serde_json::from_slice(&out).expect("a line is JSON");
        let expected = serde_json::json!({
            "ts": "2026-12-07T05:00:00.000Z",
            "event": "device_log",
            "request_id": String::from_utf8_lossy(request_id.as_bytes()),
            "device": device,
            "level": "warn",
            "message": message,
        });
        prop_assert_eq!(parsed, expected);
    }
}
