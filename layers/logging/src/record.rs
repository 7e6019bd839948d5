//! The shape of a log line, and the timestamp format.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// The value logged in place of a redacted header's.
pub(crate) const REDACTED: &str = "[redacted]";

/// One log line, serialized in field order.
#[derive(serde::Serialize)]
pub(crate) struct Record<'a> {
    pub(crate) ts: &'a str,
    pub(crate) event: &'static str,
    pub(crate) request_id: Cow<'a, str>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<u16>,
    pub(crate) duration_ms: f64,
    pub(crate) route: Option<&'a str>,
    pub(crate) upstream: Option<&'a str>,
    pub(crate) origin: Option<&'static str>,
    pub(crate) peer: SocketAddr,
    /// `None` (`null`) when nothing counted the request body's bytes.
    pub(crate) bytes_in: Option<u64>,
    /// Logged on `response` lines only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bytes_out: Option<u64>,
    /// Logged on `response` lines only: whether the body was sent to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ErrorRecord<'a>>,
    /// Outer `None`: headers not enabled; inner `None`: not captured (`null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<Option<HeaderFields<'a>>>,
    /// Outer `None`: identity not enabled; inner `None`: nothing known (`null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) identity: Option<Option<&'a serde_json::Map<String, serde_json::Value>>>,
}

/// A line a device logged for the request (a WASM guest's `log`), written just before the
/// request's next line.
#[derive(serde::Serialize)]
pub(crate) struct DeviceLogRecord<'a> {
    pub(crate) ts: &'a str,
    pub(crate) event: &'static str,
    pub(crate) request_id: &'a str,
    pub(crate) device: &'a str,
    pub(crate) level: &'static str,
    pub(crate) message: &'a str,
}

/// The `error` object of an `error` event.
#[derive(serde::Serialize)]
pub(crate) struct ErrorRecord<'a> {
    pub(crate) kind: &'static str,
    #[serde(serialize_with = "display")]
    pub(crate) message: &'a snakeway_core::Error,
}

fn display<S: Serializer>(value: &&snakeway_core::Error, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(*value)
}

/// A captured header: its value, or `None` when redacted.
pub(crate) type CapturedHeader = (HeaderName, Option<HeaderValue>);

/// Captured headers as a JSON object; repeated names (adjacent, as captured) are joined with
/// `", "`.
pub(crate) struct HeaderFields<'a>(pub(crate) &'a [CapturedHeader]);

impl Serialize for HeaderFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        let mut rest = self.0;
        while let Some(((name, value), tail)) = rest.split_first() {
            let repeats = tail.iter().take_while(|(n, _)| n == name).count();
            let (same, after) = tail.split_at(repeats);
            if same.is_empty() {
                map.serialize_entry(name.as_str(), &value_str(value.as_ref()))?;
            } else {
                let mut joined = value_str(value.as_ref()).into_owned();
                for (_, v) in same {
                    joined.push_str(", ");
                    joined.push_str(&value_str(v.as_ref()));
                }
                map.serialize_entry(name.as_str(), &joined)?;
            }
            rest = after;
        }
        map.end()
    }
}

fn value_str(value: Option<&HeaderValue>) -> Cow<'_, str> {
    match value {
        None => Cow::Borrowed(REDACTED),
        Some(v) => String::from_utf8_lossy(v.as_bytes()),
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
        let json = serde_json::to_string(&HeaderFields(&headers)).unwrap();
        assert_eq!(
            json,
            "{\"accept\":\"a/b, c/d\",\"cookie\":\"[redacted]\",\"x-bin\":\"caf\u{fffd}\"}"
        );
    }
}
