//! gRPC-shaped answers: what a gRPC client receives when Snakeway itself fails its call.
//!
//! A gRPC client reads the outcome of a call from `grpc-status`, not from the HTTP status. A
//! failure Snakeway generates for a gRPC request is therefore answered the way a gRPC server
//! answers a failed call without a message: HTTP 200, `content-type: application/grpc`, no
//! body, and `grpc-status` and `grpc-message` in the headers ("Trailers-Only", which HTTP/2
//! sends as one HEADERS frame with END_STREAM).
//!
//! The gRPC code comes from the HTTP status Snakeway would have answered with, by
//! [`code_for_status`]; one table serves errors and device refusals alike.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::Body;
use crate::request_id::X_REQUEST_ID;

/// `grpc-status`: the call's status code, in decimal.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the call's status message, percent-encoded.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

static APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// The gRPC status codes Snakeway answers with (the numbering of the gRPC spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// 2: a failure that fits no other code.
    Unknown = 2,
    /// 4: the call ran out of time (upstream or client too slow).
    DeadlineExceeded = 4,
    /// 7: a policy refused the call.
    PermissionDenied = 7,
    /// 8: a limit was hit (rate limit, size limit).
    ResourceExhausted = 8,
    /// 12: nothing serves this method (no route).
    Unimplemented = 12,
    /// 13: Snakeway failed internally, or the request broke the protocol.
    Internal = 13,
    /// 14: no upstream could take the call; retrying may help.
    Unavailable = 14,
    /// 16: the call lacks valid credentials.
    Unauthenticated = 16,
}

// === impl Code ===

impl Code {
    /// The code as a `grpc-status` value.
    pub const fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Unknown => "2",
            Self::DeadlineExceeded => "4",
            Self::PermissionDenied => "7",
            Self::ResourceExhausted => "8",
            Self::Unimplemented => "12",
            Self::Internal => "13",
            Self::Unavailable => "14",
            Self::Unauthenticated => "16",
        })
    }
}

/// Whether `headers` have a gRPC `content-type`: `application/grpc`, alone or followed by
/// `+format` (`application/grpc+proto`) or parameters, in any case.
///
/// gRPC-Web (`application/grpc-web*`) is not gRPC here: its clients run in browsers, read
/// HTTP statuses, and need CORS headers Snakeway cannot know; they get the usual error pages.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    const PREFIX: &[u8] = b"application/grpc";
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value.len() >= PREFIX.len()
        && value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(value.get(PREFIX.len()), None | Some(b'+' | b';' | b' '))
}

/// The gRPC code for a failure Snakeway would otherwise answer with `status`.
///
/// | HTTP status | gRPC code |
/// | --- | --- |
/// | 401 | 16 `UNAUTHENTICATED` |
/// | 403 | 7 `PERMISSION_DENIED` |
/// | 404 (no route), 405 | 12 `UNIMPLEMENTED` |
/// | 408, 504 (timeouts) | 4 `DEADLINE_EXCEEDED` |
/// | 413, 429, 431 | 8 `RESOURCE_EXHAUSTED` |
/// | 400 | 13 `INTERNAL` |
/// | 502, 503 | 14 `UNAVAILABLE` |
/// | 500 and any other 5xx | 13 `INTERNAL` |
/// | any other status | 2 `UNKNOWN` |
pub const fn code_for_status(status: StatusCode) -> Code {
    match status.as_u16() {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 405 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        413 | 429 | 431 => Code::ResourceExhausted,
        400 => Code::Internal,
        502 | 503 => Code::Unavailable,
        500..=599 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// A headers-only gRPC answer: HTTP 200, `content-type: application/grpc`, `grpc-status` for
/// `status` (see [`code_for_status`]), `grpc-message` (percent-encoded) and `x-request-id`.
pub fn trailers_only(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    set_status(response.headers_mut(), status, message);
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}

/// Turns a device's refusal (a non-2xx answer that is not gRPC) into a headers-only gRPC
/// answer with the same meaning: the device's headers stay (e.g. `www-authenticate`), its body
/// goes, and the status becomes `grpc-status` with the status line as message
/// (`403 Forbidden`). Any other response is returned as it is.
pub fn refusal(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    if status.is_success() || is_grpc(response.headers()) {
        return response;
    }
    let (mut head, _body) = response.into_parts();
    head.status = StatusCode::OK;
    let message = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    set_status(&mut head.headers, status, message.trim_end());
    Response::from_parts(head, Body::empty())
}

/// Makes `headers` those of a headers-only gRPC answer for `status`.
fn set_status(headers: &mut HeaderMap, status: StatusCode, message: &str) {
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, APPLICATION_GRPC.clone());
    headers.insert(GRPC_STATUS.clone(), code_for_status(status).header_value());
    if let Some(message) = encode_message(message) {
        headers.insert(GRPC_MESSAGE.clone(), message);
    }
}

/// `message` percent-encoded as the gRPC spec wants `grpc-message`: every byte outside
/// printable ASCII (0x20–0x7E), and `%` itself, as `%XX`. `None` for an empty message.
fn encode_message(message: &str) -> Option<HeaderValue> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if message.is_empty() {
        return None;
    }
    let mut encoded = Vec::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte);
        } else {
            encoded.extend_from_slice(&[
                b'%',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        }
    }
    // Only visible ASCII and spaces remain: always a valid header value.
    HeaderValue::from_bytes(&encoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_content_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn grpc_content_types_are_recognised_and_grpc_web_is_not() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc(&with_content_type(grpc)), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web-text+proto",
            "application/grpcx",
            "application/json",
            "text/plain",
        ] {
            assert!(!is_grpc(&with_content_type(other)), "{other}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn statuses_map_to_grpc_codes() {
        let code = |s: u16| code_for_status(StatusCode::from_u16(s).unwrap()) as u8;
        assert_eq!(code(502), 14);
        assert_eq!(code(503), 14);
        assert_eq!(code(504), 4);
        assert_eq!(code(408), 4);
        assert_eq!(code(404), 12);
        assert_eq!(code(401), 16);
        assert_eq!(code(403), 7);
        assert_eq!(code(429), 8);
        assert_eq!(code(413), 8);
        assert_eq!(code(400), 13);
        assert_eq!(code(500), 13);
        assert_eq!(code(418), 2);
        for s in [2u8, 4, 7, 8, 12, 13, 14, 16] {
            let c = [
                Code::Unknown,
                Code::DeadlineExceeded,
                Code::PermissionDenied,
                Code::ResourceExhausted,
                Code::Unimplemented,
                Code::Internal,
                Code::Unavailable,
                Code::Unauthenticated,
            ]
            .into_iter()
            .find(|c| *c as u8 == s)
            .unwrap();
            assert_eq!(c.header_value(), s.to_string().as_str());
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            encode_message("no route for /a%b\tñ").unwrap(),
            "no route for /a%25b%09%C3%B1"
        );
        assert!(encode_message("").is_none());
    }

    #[test]
    fn refusals_become_headers_only_grpc_answers() {
        let mut refused = crate::respond::fixed(
            StatusCode::FORBIDDEN,
            crate::respond::TEXT_PLAIN.clone(),
            "403 Forbidden: header x-evil is denied\n".into(),
        );
        refused
            .headers_mut()
            .insert("x-kept", HeaderValue::from_static("yes"));
        let answer = refusal(refused);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(answer.headers()[&GRPC_STATUS], "7");
        assert_eq!(answer.headers()[&GRPC_MESSAGE], "403 Forbidden");
        assert_eq!(answer.headers()["x-kept"], "yes");
        assert!(answer.headers().get(CONTENT_LENGTH).is_none());
        assert!(http_body::Body::is_end_stream(answer.body()));

        let ok = refusal(crate::respond::fixed(
            StatusCode::OK,
            crate::respond::TEXT_PLAIN.clone(),
            "fine".into(),
        ));
        assert_eq!(ok.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
    }
}
