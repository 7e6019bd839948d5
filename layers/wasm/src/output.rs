//! What goes into a guest (views of the request) and what comes out (validated edits and
//! answers).

use std::fmt;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Response, StatusCode, Uri, request, response};
use snakeway_core::Body;

use crate::bindings::snakeway::device::types::{Edit, Reply};

/// Caps on what a guest may output in one hook call; beyond them the output is invalid (a
/// device failure).
#[derive(Clone, Copy, Debug)]
pub struct OutputLimits {
    /// Edits per action, or headers per early answer.
    pub max_edits: usize,
    /// One header's name plus value, in bytes.
    pub max_header_bytes: usize,
    /// All header names and values of one action, in bytes.
    pub max_total_header_bytes: usize,
    /// An early answer's body, in bytes.
    pub max_body_bytes: usize,
    /// A new path (with query), in bytes.
    pub max_path_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self {
            max_edits: 64,
            max_header_bytes: 8 << 10,
            max_total_header_bytes: 64 << 10,
            max_body_bytes: 1 << 20,
            max_path_bytes: 8 << 10,
        }
    }
}

/// A guest hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    OnRequest,
    OnRequestBody,
    BeforeProxy,
    AfterProxy,
    OnResponse,
}

impl Hook {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::OnRequest => "on-request",
            Self::OnRequestBody => "on-request-body",
            Self::BeforeProxy => "before-proxy",
            Self::AfterProxy => "after-proxy",
            Self::OnResponse => "on-response",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a status a guest asked for: 100–599, not 101 (a guest cannot switch protocols).
pub(crate) fn status(code: u16) -> Result<StatusCode, String> {
    if !(100..=599).contains(&code) || code == 101 {
        return Err(format!("status {code} is not allowed (100-599, not 101)"));
    }
    StatusCode::from_u16(code).map_err(|_| format!("status {code} is not a status"))
}

/// Tracks the output size of one action.
struct Budget<'a> {
    limits: &'a OutputLimits,
    header_bytes: usize,
}

impl<'a> Budget<'a> {
    fn new(limits: &'a OutputLimits, count: usize) -> Result<Self, String> {
        if count > limits.max_edits {
            return Err(format!(
                "{count} edits or headers (at most {})",
                limits.max_edits
            ));
        }
        Ok(Self {
            limits,
            header_bytes: 0,
        })
    }

    fn name(&mut self, name: &str) -> Result<HeaderName, String> {
        self.charge(name.len())?;
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        if parsed == CONTENT_LENGTH || parsed == TRANSFER_ENCODING || parsed == CONNECTION {
            return Err(format!("header {name:?} is managed by the proxy"));
        }
        Ok(parsed)
    }

    fn header(&mut self, name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
        if name.len() + value.len() > self.limits.max_header_bytes {
            return Err(format!(
                "header {name:?} has {} bytes (at most {})",
                name.len() + value.len(),
                self.limits.max_header_bytes
            ));
        }
        let parsed = self.name(name)?;
        self.charge(value.len())?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| format!("the value of header {name:?} is not a valid header value"))?;
        Ok((parsed, value))
    }

    fn charge(&mut self, bytes: usize) -> Result<(), String> {
        self.header_bytes += bytes;
        if self.header_bytes > self.limits.max_total_header_bytes {
            return Err(format!(
                "more than {} bytes of headers",
                self.limits.max_total_header_bytes
            ));
        }
        Ok(())
    }

    fn path(&self, uri: &Uri, new: &str) -> Result<Uri, String> {
        if new.len() > self.limits.max_path_bytes {
            return Err(format!(
                "a path of {} bytes (at most {})",
                new.len(),
                self.limits.max_path_bytes
            ));
        }
        let (path, query) = match new.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (new, uri.query()),
        };
        let path = snakeway_core::path::normalize(path)
            .map_err(|e| format!("path {path:?} is not acceptable: {e}"))?;
        let joined = match query {
            Some(query) => format!("{path}?{query}"),
            None => path.into_owned(),
        };
        let pq = PathAndQuery::try_from(joined)
            .map_err(|_| format!("{new:?} is not a valid path and query"))?;
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).map_err(|e| format!("{new:?} makes an invalid URI: {e}"))
    }
}

enum Op {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
    Uri(Uri),
    Status(StatusCode),
}

/// Validates every edit of a request-side hook, then applies them all (or none).
pub(crate) fn apply_request_edits(
    edits: Vec<Edit>,
    hook: Hook,
    head: &mut request::Parts,
    limits: &OutputLimits,
) -> Result<(), String> {
    let mut budget = Budget::new(limits, edits.len())?;
    let mut ops = Vec::with_capacity(edits.len());
    let mut uri = None::<Uri>;
    for edit in edits {
        ops.push(match header_op(&mut budget, edit)? {
            Ok(op) => op,
            // Re-routing belongs to on-request, the upstream path to before-proxy.
            Err(Edit::Reroute(path)) if hook == Hook::OnRequest => {
                path_op(&mut budget, &mut uri, &head.uri, &path)?
            }
            Err(Edit::UpstreamPath(path)) if hook == Hook::BeforeProxy => {
                path_op(&mut budget, &mut uri, &head.uri, &path)?
            }
            Err(edit) => return Err(not_allowed(&edit, hook)),
        });
    }
    for op in ops {
        match apply_header(&mut head.headers, op) {
            None => {}
            Some(Op::Uri(uri)) => head.uri = uri,
            Some(_) => unreachable!("no status edit on a request"),
        }
    }
    Ok(())
}

/// Validates a header edit into its operation; hands any other edit back.
fn header_op(budget: &mut Budget<'_>, edit: Edit) -> Result<Result<Op, Edit>, String> {
    Ok(Ok(match edit {
        Edit::SetHeader((name, value)) => {
            let (name, value) = budget.header(&name, &value)?;
            Op::Set(name, value)
        }
        Edit::AppendHeader((name, value)) => {
            let (name, value) = budget.header(&name, &value)?;
            Op::Append(name, value)
        }
        Edit::RemoveHeader(name) => Op::Remove(budget.name(&name)?),
        other => return Ok(Err(other)),
    }))
}

/// Validates a new path (relative to the latest one, `uri`, or else `current`).
fn path_op(
    budget: &mut Budget<'_>,
    uri: &mut Option<Uri>,
    current: &Uri,
    path: &str,
) -> Result<Op, String> {
    let new = budget.path(uri.as_ref().unwrap_or(current), path)?;
    *uri = Some(new.clone());
    Ok(Op::Uri(new))
}

/// Why `edit` is refused in `hook`.
fn not_allowed(edit: &Edit, hook: Hook) -> String {
    let what = match edit {
        Edit::Reroute(_) => "reroute",
        Edit::UpstreamPath(_) => "upstream-path",
        Edit::SetStatus(_) => "set-status",
        Edit::SetHeader(_) | Edit::AppendHeader(_) | Edit::RemoveHeader(_) => "this edit",
    };
    format!("{what} is not allowed in {hook}")
}

/// Applies a header edit to `headers`; hands any other edit back.
fn apply_header(headers: &mut http::HeaderMap, op: Op) -> Option<Op> {
    match op {
        Op::Set(name, value) => {
            headers.insert(name, value);
        }
        Op::Append(name, value) => {
            headers.append(name, value);
        }
        Op::Remove(name) => {
            headers.remove(name);
        }
        other => return Some(other),
    }
    None
}

/// Validates every edit of a response-side hook, then applies them all (or none).
pub(crate) fn apply_response_edits(
    edits: Vec<Edit>,
    hook: Hook,
    head: &mut response::Parts,
    limits: &OutputLimits,
) -> Result<(), String> {
    let mut budget = Budget::new(limits, edits.len())?;
    let mut ops = Vec::with_capacity(edits.len());
    for edit in edits {
        ops.push(match header_op(&mut budget, edit)? {
            Ok(op) => op,
            Err(Edit::SetStatus(code)) => Op::Status(status(code)?),
            Err(edit) => return Err(not_allowed(&edit, hook)),
        });
    }
    for op in ops {
        match apply_header(&mut head.headers, op) {
            None => {}
            Some(Op::Status(status)) => head.status = status,
            Some(_) => unreachable!("no path edit on a response"),
        }
    }
    Ok(())
}

/// Validates an early answer and builds the response.
pub(crate) fn reply(reply: Reply, limits: &OutputLimits) -> Result<Response<Body>, String> {
    let status = status(reply.status)?;
    if reply.body.len() > limits.max_body_bytes {
        return Err(format!(
            "a body of {} bytes (at most {})",
            reply.body.len(),
            limits.max_body_bytes
        ));
    }
    let mut budget = Budget::new(limits, reply.headers.len())?;
    let mut response = Response::new(Body::full(Bytes::from(reply.body)));
    *response.status_mut() = status;
    for (name, value) in reply.headers {
        let (name, value) = budget.header(&name, &value)?;
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str) -> request::Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn statuses() {
        assert!(status(100).is_ok());
        assert!(status(599).is_ok());
        assert!(status(101).is_err());
        assert!(status(99).is_err());
        assert!(status(600).is_err());
    }

    #[test]
    fn request_edits_apply_all_or_nothing() {
        let limits = OutputLimits::default();
        let mut h = head("/a?q=1");
        h.headers.append("x-a", HeaderValue::from_static("1"));
        apply_request_edits(
            vec![
                Edit::AppendHeader(("x-a".into(), b"\xff2".to_vec())),
                Edit::SetHeader(("x-b".into(), b"b".to_vec())),
                Edit::Reroute("/b/../c".into()),
            ],
            Hook::OnRequest,
            &mut h,
            &limits,
        )
        .unwrap();
        let all: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].as_bytes(), b"\xff2");
        assert_eq!(h.uri, "/c?q=1");

        let err = apply_request_edits(
            vec![
                Edit::SetHeader(("x-c".into(), b"c".to_vec())),
                Edit::SetHeader(("bad name".into(), b"c".to_vec())),
            ],
            Hook::OnRequest,
            &mut h,
            &limits,
        )
        .unwrap_err();
        assert!(err.contains("not a valid header name"), "{err}");
        assert!(h.headers.get("x-c").is_none());

        for (edit, hook) in [
            (Edit::Reroute("/x".into()), Hook::BeforeProxy),
            (Edit::UpstreamPath("/x".into()), Hook::OnRequest),
            (Edit::SetStatus(200), Hook::OnRequest),
            (
                Edit::SetHeader(("content-length".into(), b"1".to_vec())),
                Hook::OnRequest,
            ),
            (
                Edit::SetHeader(("x".into(), b"a\nb".to_vec())),
                Hook::OnRequest,
            ),
            (Edit::Reroute("/../etc".into()), Hook::OnRequest),
            (Edit::Reroute("relative".into()), Hook::OnRequest),
        ] {
            assert!(apply_request_edits(vec![edit], hook, &mut h, &limits).is_err());
        }
        let many = vec![Edit::RemoveHeader("x".into()); 65];
        assert!(apply_request_edits(many, Hook::OnRequest, &mut h, &limits).is_err());
    }

    #[test]
    fn upstream_path_keeps_or_replaces_the_query() {
        let limits = OutputLimits::default();
        let mut h = head("http://up:80/a?q=1");
        apply_request_edits(
            vec![Edit::UpstreamPath("/v2/a".into())],
            Hook::BeforeProxy,
            &mut h,
            &limits,
        )
        .unwrap();
        assert_eq!(h.uri, "http://up:80/v2/a?q=1");
        apply_request_edits(
            vec![Edit::UpstreamPath("/v3?z=2".into())],
            Hook::BeforeProxy,
            &mut h,
            &limits,
        )
        .unwrap();
        assert_eq!(h.uri, "http://up:80/v3?z=2");
    }

    #[test]
    fn replies_are_checked() {
        let limits = OutputLimits {
            max_body_bytes: 4,
            ..OutputLimits::default()
        };
        let ok = Reply {
            status: 403,
            headers: vec![("x-why".into(), b"no".to_vec())],
            body: b"no".to_vec(),
        };
        let res = reply(ok.clone(), &limits).unwrap();
        assert_eq!(res.status(), 403);
        assert_eq!(res.headers()["x-why"], "no");
        let big = Reply {
            body: b"12345".to_vec(),
            ..ok.clone()
        };
        assert!(reply(big, &limits).is_err());
        let switching = Reply { status: 101, ..ok };
        assert!(reply(switching, &limits).is_err());
    }
}
