//! [`RateLimit`]: the throttling device.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, Response, StatusCode, request};
use pin_project_lite::pin_project;
use snakeway_core::metrics::Counters;
use snakeway_core::request_id::X_REQUEST_ID;
use snakeway_core::respond::{self, TEXT_PLAIN};
use snakeway_core::{Body, Device, DeviceResult, Flow, Pending, Phase, Phases, RequestCtx};

use crate::gcra::{Decision, Quota};
use crate::key::{RateKey, under};
use crate::local::LocalStore;
use crate::metrics::{Outcome, RATE_LIMIT_REQUESTS};
use crate::redis::{LogThrottle, RedisStore, StoreError};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the quota policy.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers): what is left of the quota.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Where a device keeps its buckets.
#[derive(Clone, Debug)]
pub enum Store {
    /// In this process, shared by its workers.
    Local(Arc<LocalStore>),
    /// In Redis, shared by every Snakeway using it.
    Redis(Arc<RedisStore>),
}

// === impl Store ===

impl Store {
    /// The quota the store counts against.
    pub fn quota(&self) -> &Quota {
        match self {
            Self::Local(s) => s.quota(),
            Self::Redis(s) => s.quota(),
        }
    }
}

/// What a request gets when the store cannot decide (Redis down or slow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnStoreError {
    /// Let the request through (unlimited), and count the error.
    #[default]
    Open,
    /// Answer 503 Service Unavailable, and count the error.
    Closed,
}

// === impl OnStoreError ===

impl OnStoreError {
    /// The setting as written in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// A throttling device's settings (besides its store).
#[derive(Clone, Debug)]
pub struct RateLimitOptions {
    /// The device's name: in logs, metrics and the policy name of the `RateLimit` headers.
    pub name: String,
    /// What requests are counted by.
    pub key: RateKey,
    /// Non-empty: only requests whose (normalized) path is under one of these prefixes count.
    pub routes: Vec<String>,
    /// The status of a refusal (default 429).
    pub status: StatusCode,
    /// What a store failure does.
    pub on_store_error: OnStoreError,
}

impl RateLimitOptions {
    /// Options for a device named `name` counting by `key`, with the defaults: every route,
    /// 429, open on store errors.
    pub fn new(name: impl Into<String>, key: RateKey) -> Self {
        Self {
            name: name.into(),
            key,
            routes: Vec::new(),
            status: StatusCode::TOO_MANY_REQUESTS,
            on_store_error: OnStoreError::Open,
        }
    }
}

/// The throttling device: counts each request against its key's GCRA bucket in its [`Store`]
/// and answers early with `status` (429) once the key is over its quota.
///
/// In `on_request` (before routing, so `routes` match the normalized path by prefix, as
/// routes do, without the host):
///
/// 1. a path under none of `routes` (when given) is not counted;
/// 2. a request without its key is not limited (counted as `no_key`);
/// 3. over the quota: `status` with `Retry-After` (whole seconds, rounded up),
///    `RateLimit-Policy` and `RateLimit`; the upstream is not called;
/// 4. a store failure: `on_store_error` lets the request through or answers 503 with
///    `Retry-After: 1`; each failure is counted, and logged at most once a second.
///
/// A request it allowed gets the `RateLimit` header on whatever answers it, through
/// [`RequestCtx::add_response_header`] (after one an earlier throttling device added: together
/// they make one list).
///
/// Most allowed requests find their key's bucket full (a client well within its quota between
/// two of its requests): their `RateLimit` value is always the same, made once with the device
/// and shared; any other value is formatted for its request.
pub struct RateLimit {
    inner: Arc<Inner>,
}

/// The device's settings and counters, shared with its requests waiting on Redis.
struct Inner {
    options: RateLimitOptions,
    store: Store,
    /// `RateLimit` for a request that found its key's bucket full: `r` one less than the
    /// bucket, `t` one emission interval (rounded up).
    full: Shared,
    /// `"name";q=limit;w=seconds`.
    policy: HeaderValue,
    /// The policy name as a structured-field string, quotes included.
    quoted: String,
    outcomes: Arc<Counters<4>>,
    log: LogThrottle,
}

/// What a device that allowed a request tells it in `RateLimit`: the remaining requests and
/// the seconds until the bucket is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Allowance {
    remaining: u64,
    reset: u64,
}

/// A `RateLimit` value made once and handed to every request it fits (its first clone makes
/// its buffer shared; every clone after that is a reference count).
struct Shared {
    allowance: Allowance,
    value: HeaderValue,
}

// === impl RateLimit ===

impl RateLimit {
    /// A device with `options`, counting in `store`.
    pub fn new(options: RateLimitOptions, store: Store) -> Self {
        let quoted = quoted(&options.name);
        let quota = store.quota();
        let window = seconds(quota.period());
        let policy = format!("{quoted};q={};w={window}", quota.limit());
        let allowance = Allowance {
            remaining: quota.capacity() - 1,
            reset: seconds(quota.emission_interval()),
        };
        // Cloned for most requests under the limit: held by an owner, a clone is one reference
        // count (a `Bytes` made from a `Vec` checks its kind first).
        let value = field_value(Bytes::from_owner(ratelimit_bytes(&quoted, allowance)));
        let full = Shared { allowance, value };
        let inner = Inner {
            outcomes: RATE_LIMIT_REQUESTS.get(&[&options.name]),
            policy: HeaderValue::try_from(policy).unwrap_or(HeaderValue::from_static("\"\"")),
            quoted,
            options,
            store,
            full,
            log: LogThrottle::new(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The store the device counts in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
}

// === impl Inner ===

impl Inner {
    /// What the store answered for a request, as the hook's result: its decision
    /// ([`Inner::answer`]), or what `on_store_error` says when the store failed.
    fn decided(&self, ctx: &mut RequestCtx, decided: Result<Decision, StoreError>) -> Flow {
        match decided {
            Ok(decision) => self.answer(ctx, &decision),
            Err(error) => {
                self.count(Outcome::StoreError);
                if self.log.allow() {
                    tracing::warn!(
                        device = %self.options.name,
                        %error,
                        on_store_error = self.options.on_store_error.as_str(),
                        "rate limit store failed (logged at most once a second; all are counted)"
                    );
                }
                match self.options.on_store_error {
                    OnStoreError::Open => Flow::Continue,
                    OnStoreError::Closed => Flow::respond(self.unavailable(ctx)),
                }
            }
        }
    }

    /// The request's way on a store's decision: on, with its `RateLimit` field, when allowed;
    /// else refused.
    #[inline]
    fn answer(&self, ctx: &mut RequestCtx, decision: &Decision) -> Flow {
        if !decision.allowed {
            self.count(Outcome::Limited);
            return Flow::respond(self.refuse(decision, ctx));
        }
        self.count(Outcome::Allowed);
        let allowance = Allowance {
            remaining: decision.remaining,
            reset: seconds(decision.reset),
        };
        let value = if allowance == self.full.allowance {
            self.full.value.clone()
        } else {
            ratelimit(&self.quoted, allowance)
        };
        ctx.add_response_header(RATELIMIT.clone(), value);
        Flow::Continue
    }

    /// The early answer for a refused request.
    fn refuse(&self, decision: &Decision, ctx: &RequestCtx) -> Response<Body> {
        let status = self.options.status;
        let retry = seconds(decision.retry_after);
        let mut text = String::with_capacity(64);
        let _ = write!(text, "{}", status.as_u16());
        if let Some(reason) = status.canonical_reason() {
            text.push(' ');
            text.push_str(reason);
        }
        let _ = writeln!(text, ": rate limit exceeded, retry in {retry} s");
        let mut response = respond::fixed(status, TEXT_PLAIN.clone(), Bytes::from(text));
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), ctx.request_id().clone());
        headers.insert(RETRY_AFTER, HeaderValue::from(retry));
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        let refused = Allowance {
            remaining: 0,
            reset: retry,
        };
        headers.insert(RATELIMIT.clone(), ratelimit(&self.quoted, refused));
        response
    }

    /// The answer when the store failed and `on_store_error` is closed.
    fn unavailable(&self, ctx: &RequestCtx) -> Response<Body> {
        let text = "503 Service Unavailable: the rate limit store is unavailable\n";
        let mut response = respond::fixed(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT_PLAIN.clone(),
            Bytes::from_static(text.as_bytes()),
        );
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), ctx.request_id().clone());
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }

    /// The device's route prefix the request's path is under (the longest), `Some("")` when
    /// the device has no routes (the path is not read), `None` when the request is not
    /// counted.
    fn route<'a>(&'a self, ctx: &RequestCtx) -> Option<&'a str> {
        if self.options.routes.is_empty() {
            return Some("");
        }
        let path = ctx.path();
        self.options
            .routes
            .iter()
            .filter(|prefix| under(path, prefix))
            .max_by_key(|prefix| prefix.len())
            .map(String::as_str)
    }

    #[inline]
    fn count(&self, outcome: Outcome) {
        self.outcomes.add(outcome as usize, 1);
    }
}

impl Device for RateLimit {
    fn name(&self) -> &str {
        &self.inner.options.name
    }

    fn phases(&self) -> Phases {
        Phases::only(Phase::Request)
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut request::Parts) -> DeviceResult {
        let inner = &self.inner;
        let Some(route) = inner.route(ctx) else {
            return Ok(Flow::Continue);
        };
        let key = &inner.options.key;
        let flow = match &inner.store {
            Store::Local(store) => key
                .with_bytes(ctx, req, Some(route), |key| {
                    store.check(key, ctx.info().started)
                })
                .map(|decision| inner.answer(ctx, &decision)),
            Store::Redis(store) => key
                .with_bytes(ctx, req, Some(route), |key| store.check(key))
                .map(|call| {
                    Flow::Defer(Box::pin(Asked {
                        call,
                        device: inner.clone(),
                    }))
                }),
        };
        Ok(flow.unwrap_or_else(|| {
            inner.count(Outcome::NoKey);
            Flow::Continue
        }))
    }
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("options", &self.inner.options)
            .field("store", &self.inner.store)
            .finish()
    }
}

pin_project! {
    /// A request's question to the Redis store, waited on by the pipeline.
    struct Asked<F> {
        #[pin]
        call: F,
        device: Arc<Inner>,
    }
}

impl<F> Pending for Asked<F>
where
    F: Future<Output = Result<Decision, StoreError>> + Send,
{
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        ctx: &mut RequestCtx,
    ) -> Poll<DeviceResult> {
        let this = self.project();
        let decided = ready!(this.call.poll(cx));
        Poll::Ready(Ok(this.device.decided(ctx, decided)))
    }
}

/// The `RateLimit` field value of the policy named `quoted` for `allowance`.
fn ratelimit(quoted: &str, allowance: Allowance) -> HeaderValue {
    field_value(Bytes::from(ratelimit_bytes(quoted, allowance)))
}

/// A formatted value as a field value. `quoted` is printable ASCII (see `quoted`), the rest
/// digits and punctuation, so this never falls back.
fn field_value(bytes: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static("\"\""))
}

/// The `RateLimit` item of the policy named `quoted` for `allowance`, formatted without `fmt`
/// into one allocation of its exact size (which `Bytes` then owns as it is).
fn ratelimit_bytes(quoted: &str, allowance: Allowance) -> Vec<u8> {
    let mut remaining = itoa::Buffer::new();
    let mut reset = itoa::Buffer::new();
    let parts: [&[u8]; 4] = [
        quoted.as_bytes(),
        b";r=",
        remaining.format(allowance.remaining).as_bytes(),
        b";t=",
    ];
    let reset = reset.format(allowance.reset).as_bytes();
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + reset.len();
    let mut value = Vec::with_capacity(len);
    for part in parts {
        value.extend_from_slice(part);
    }
    value.extend_from_slice(reset);
    value
}

/// Whole seconds, rounded up.
fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `name` as a structured-field string (RFC 9651): quoted, `"` and `\` escaped, anything
/// outside printable ASCII replaced by `?`.
fn quoted(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds(Duration::from_millis(200)), 1);
        assert_eq!(seconds(Duration::from_secs(2)), 2);
        assert_eq!(seconds(Duration::from_millis(2001)), 3);
        assert_eq!(seconds(Duration::ZERO), 0);
    }

    #[test]
    fn policy_names_are_structured_field_strings() {
        assert_eq!(quoted("per-client"), "\"per-client\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quoted("é"), "\"?\"");
    }
}
