//! The shape of a log line, written straight into a byte buffer, and the timestamp format.

use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};

use crate::json;

/// The value logged in place of a redacted header's.
pub(crate) const REDACTED: &str = "[redacted]";

/// One log line, written in field order by [`Record::write`].
pub(crate) struct Record<'a> {
    pub(crate) ts: &'a str,
    pub(crate) event: &'static str,
    /// The `x-request-id` bytes (logged with invalid UTF-8 replaced).
    pub(crate) request_id: &'a [u8],
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    /// Left out when `None`.
    pub(crate) status: Option<u16>,
    pub(crate) duration_ms: f64,
    pub(crate) route: Option<&'a str>,
    pub(crate) upstream: Option<&'a str>,
    pub(crate) origin: Option<&'static str>,
    pub(crate) peer: SocketAddr,
    /// `None` (`null`) when nothing counted the request body's bytes.
    pub(crate) bytes_in: Option<u64>,
    /// Logged on `response` lines only (left out when `None`).
    pub(crate) bytes_out: Option<u64>,
    /// Logged on `response` lines only: whether the body was sent to its end.
    pub(crate) complete: Option<bool>,
    /// Left out when `None`.
    pub(crate) error: Option<ErrorRecord<'a>>,
    /// Outer `None`: headers not enabled; inner `None`: not captured (`null`).
    pub(crate) headers: Option<Option<HeaderFields<'a>>>,
    /// Outer `None`: identity not enabled; inner `None`: nothing known (`null`).
    pub(crate) identity: Option<Option<&'a serde_json::Map<String, serde_json::Value>>>,
}

impl Record<'_> {
    /// Appends the line as one JSON object (without the newline).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":");
        json::string(out, self.ts);
        out.extend_from_slice(b",\"event\":");
        json::string(out, self.event);
        out.extend_from_slice(b",\"request_id\":");
        json::string_lossy(out, self.request_id);
        out.extend_from_slice(b",\"method\":");
        json::string(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json::string(out, self.path);
        if let Some(status) = self.status {
            out.extend_from_slice(b",\"status\":");
            json::u64(out, u64::from(status));
        }
        out.extend_from_slice(b",\"duration_ms\":");
        json::f64(out, self.duration_ms);
        out.extend_from_slice(b",\"route\":");
        optional_string(out, self.route);
        out.extend_from_slice(b",\"upstream\":");
        optional_string(out, self.upstream);
        out.extend_from_slice(b",\"origin\":");
        optional_string(out, self.origin);
        out.extend_from_slice(b",\"peer\":");
        json::socket_addr(out, &self.peer);
        out.extend_from_slice(b",\"bytes_in\":");
        match self.bytes_in {
            Some(n) => json::u64(out, n),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(n) = self.bytes_out {
            out.extend_from_slice(b",\"bytes_out\":");
            json::u64(out, n);
        }
        if let Some(complete) = self.complete {
            out.extend_from_slice(b",\"complete\":");
            json::bool(out, complete);
        }
        if let Some(error) = &self.error {
            out.extend_from_slice(b",\"error\":{\"kind\":");
            json::string(out, error.kind);
            out.extend_from_slice(b",\"message\":");
            json::display(out, error.message);
            out.push(b'}');
        }
        if let Some(headers) = &self.headers {
            out.extend_from_slice(b",\"headers\":");
            match headers {
                Some(headers) => headers.write(out),
                None => out.extend_from_slice(b"null"),
            }
        }
        if let Some(identity) = self.identity {
            out.extend_from_slice(b",\"identity\":");
            match identity {
                // Serializing a map of strings, numbers and arrays into a `Vec` cannot fail.
                Some(fields) => {
                    let _ = serde_json::to_writer(&mut *out, fields);
                }
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
}

fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json::string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A line a device logged for the request (a WASM guest's `log`), written just before the
/// request's next line.
pub(crate) struct DeviceLogRecord<'a> {
    pub(crate) ts: &'a str,
    pub(crate) request_id: &'a [u8],
    pub(crate) device: &'a str,
    pub(crate) level: &'static str,
    pub(crate) message: &'a str,
}

impl DeviceLogRecord<'_> {
    /// Appends the line as one JSON object (without the newline).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":");
        json::string(out, self.ts);
        out.extend_from_slice(b",\"event\":\"device_log\",\"request_id\":");
        json::string_lossy(out, self.request_id);
        out.extend_from_slice(b",\"device\":");
        json::string(out, self.device);
        out.extend_from_slice(b",\"level\":");
        json::string(out, self.level);
        out.extend_from_slice(b",\"message\":");
        json::string(out, self.message);
        out.push(b'}');
    }
}

/// The `error` object of an `error` event.
pub(crate) struct ErrorRecord<'a> {
    pub(crate) kind: &'static str,
    /// Logged as it displays (with its cause chain).
    pub(crate) message: &'a snakeway_core::Error,
}

/// A captured header: its value, or `None` when redacted.
pub(crate) type CapturedHeader = (HeaderName, Option<HeaderValue>);

/// Captured headers as a JSON object; repeated names (adjacent, as captured) are joined with
/// `", "`.
pub(crate) struct HeaderFields<'a>(pub(crate) &'a [CapturedHeader]);

impl HeaderFields<'_> {
    /// Appends the headers as one JSON object.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut rest = self.0;
        let mut first = true;
        while let Some(((name, value), tail)) = rest.split_first() {
            if !first {
                out.push(b',');
            }
            first = false;
            let repeats = tail.iter().take_while(|(n, _)| n == name).count();
            let (same, after) = tail.split_at(repeats);
            json::string(out, name.as_str());
            out.extend_from_slice(b":\"");
            value_into(out, value.as_ref());
            for (_, v) in same {
                out.extend_from_slice(b", ");
                value_into(out, v.as_ref());
            }
            out.push(b'"');
            rest = after;
        }
        out.push(b'}');
    }
}

/// Appends a header's value (or [`REDACTED`]) escaped, invalid UTF-8 replaced.
fn value_into(out: &mut Vec<u8>, value: Option<&HeaderValue>) {
    match value {
        None => json::escape(out, REDACTED),
        Some(v) => json::escape_lossy(out, v.as_bytes()),
    }
}

/// A timestamp as RFC 3339 UTC with milliseconds: `2026-11-23T10:00:00.123Z`.
#[derive(Clone, Copy)]
pub(crate) struct Timestamp([u8; 24]);

impl Timestamp {
    pub(crate) fn now() -> Self {
        Self::at(SystemTime::now())
    }

    pub(crate) fn at(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days(secs / 86_400);
        let of_day = secs % 86_400;
        let mut out = *b"0000-00-00T00:00:00.000Z";
        put(&mut out[0..4], u64::from(year % 10_000));
        put(&mut out[5..7], u64::from(month));
        put(&mut out[8..10], u64::from(day));
        put(&mut out[11..13], of_day / 3600);
        put(&mut out[14..16], of_day / 60 % 60);
        put(&mut out[17..19], of_day % 60);
        put(&mut out[20..23], u64::from(since.subsec_millis()));
        Self(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `value` as decimal digits filling `digits`, zero-padded.
fn put(digits: &mut [u8], mut value: u64) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year as u32, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, millis: u64) -> String {
        Timestamp::at(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)).to_string()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(951_868_799, 999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(1_735_689_599, 500), "2024-12-31T23:59:59.500Z");
    }

    #[test]
    fn every_day_of_four_centuries_is_consecutive() {
        // Walk 1970..2370 day by day: dates strictly increase and months/days stay in range.
        let mut last = (1969, 12, 31);
        for days in 0..146_097 {
            let date = civil_from_days(days);
            assert!(date > last, "{date:?} after {last:?}");
            assert!((1..=12).contains(&date.1) && (1..=31).contains(&date.2));
            if date.0 == last.0 && date.1 == last.1 {
                assert_eq!(date.2, last.2 + 1);
            } else {
                assert_eq!(date.2, 1);
            }
            last = date;
        }
        assert_eq!(last, (2369, 12, 31));
    }

    #[test]
    fn repeated_and_redacted_headers() {
        let headers = [
            (
                HeaderName::from_static("accept"),
                Some(HeaderValue::from_static("a/b")),
            ),
            (
                HeaderName::from_static("accept"),
                Some(HeaderValue::from_static("c/d")),
            ),
            (HeaderName::from_static("cookie"), None),
            (
                HeaderName::from_static("x-bin"),
                Some(HeaderValue::from_bytes(b"caf\xe9").unwrap()),
            ),
        ];
        let mut out = Vec::new();
        HeaderFields(&headers).write(&mut out);
        let json = String::from_utf8(out).unwrap();
        assert_eq!(
            json,
            "{\"accept\":\"a/b, c/d\",\"cookie\":\"[redacted]\",\"x-bin\":\"caf\u{fffd}\"}"
        );
    }
}
