//! Routing: host (exact, `*.suffix`, or none) plus the longest path prefix on a segment
//! boundary, on the normalized path.
//!
//! Routes are sorted once, when a snapshot is built, so that the first match is the best one:
//! routes with an exact host, then wildcard hosts (longer suffix first), then routes without a
//! host; within each group, longer prefixes first. Matching is a linear scan with no allocation;
//! route tables are small, and a scan over a few dozen entries beats a trie's pointer chasing.

use snakeway_core::path::has_prefix;

/// Which hosts a route applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (lower case, no port).
    Exact(String),
    /// Any host ending in this suffix, which starts with a dot (from `*.example.com`).
    Suffix(String),
}

// === impl HostMatch ===

impl HostMatch {
    /// Parses a configured host pattern (already validated and lower-cased by the config).
    pub(crate) fn parse(pattern: Option<&str>) -> Self {
        match pattern {
            None => Self::Any,
            Some(p) => match p.strip_prefix('*') {
                Some(suffix) => Self::Suffix(suffix.to_ascii_lowercase()),
                None => Self::Exact(p.to_ascii_lowercase()),
            },
        }
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (Self::Any, _) => true,
            (_, None) => false,
            (Self::Exact(h), Some(host)) => h.eq_ignore_ascii_case(host),
            (Self::Suffix(s), Some(host)) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// Sort key: more specific host patterns first.
    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(h) => (2, h.len()),
            Self::Suffix(s) => (1, s.len()),
            Self::Any => (0, 0),
        }
    }
}

/// One routing entry: where it applies and what it leads to.
#[derive(Debug)]
pub(crate) struct Route<T> {
    /// The route's name in logs and device contexts: `[host]path` as configured.
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) host: HostMatch,
    /// The path prefix, without a trailing `/` (the root route is the empty string).
    pub(crate) prefix: String,
    pub(crate) target: T,
}

/// An immutable route table.
#[derive(Debug)]
pub(crate) struct Router<T> {
    routes: Vec<Route<T>>,
}

// === impl Router ===

impl<T> Router<T> {
    /// Builds a router; `routes` may come in any order.
    pub(crate) fn new(mut routes: Vec<Route<T>>) -> Self {
        for route in &mut routes {
            let trimmed = route.prefix.trim_end_matches('/').len();
            route.prefix.truncate(trimmed);
        }
        // Stable sort: among equally specific routes, configuration order decides.
        routes.sort_by_key(|r| std::cmp::Reverse((r.host.rank(), r.prefix.len())));
        Self { routes }
    }

    /// Every route, most specific first.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &Route<T>> {
        self.routes.iter()
    }

    /// The best route for `host` (without port) and a normalized `path`, with its index for
    /// [`Router::get`].
    #[inline]
    pub(crate) fn route_index(&self, host: Option<&str>, path: &str) -> Option<(usize, &Route<T>)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| has_prefix(path, &r.prefix) && r.host.matches(host))
    }

    /// The route at `index` (see [`Router::route_index`]).
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&Route<T>> {
        self.routes.get(index)
    }
}

/// The host of a request without its port: the URI's authority (an absolute-form HTTP/1 target,
/// HTTP/2's `:authority`), which wins over `host` (RFC 9112 §3.2.2), else the `host` header.
pub(crate) fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(authority) => authority.as_str(),
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080` → `::1`.
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(Option<&str>, &str, &'static str)]) -> Router<&'static str> {
        Router::new(
            routes
                .iter()
                .map(|(host, prefix, name)| Route {
                    name: (*name).into(),
                    host: HostMatch::parse(*host),
                    prefix: (*prefix).to_owned(),
                    target: *name,
                })
                .collect(),
        )
    }

    fn hit(r: &Router<&'static str>, host: Option<&str>, path: &str) -> Option<&'static str> {
        r.route_index(host, path).map(|(_, r)| r.target)
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let r = router(&[
            (None, "/", "root"),
            (None, "/api", "api"),
            (None, "/api/v2/", "v2"),
        ]);
        assert_eq!(hit(&r, None, "/api"), Some("api"));
        assert_eq!(hit(&r, None, "/api/x"), Some("api"));
        assert_eq!(hit(&r, None, "/apix"), Some("root"));
        assert_eq!(hit(&r, None, "/api/v2"), Some("v2"));
        assert_eq!(hit(&r, None, "/api/v2/y"), Some("v2"));
        assert_eq!(hit(&r, None, "/"), Some("root"));
    }

    #[test]
    fn no_match_without_a_root_route() {
        let r = router(&[(None, "/api", "api")]);
        assert_eq!(hit(&r, None, "/other"), None);
    }

    #[test]
    fn host_routes_win_over_hostless_ones() {
        let r = router(&[
            (None, "/api/long/prefix", "hostless"),
            (Some("*.example.com"), "/", "wild"),
            (Some("api.example.com"), "/", "exact"),
        ]);
        assert_eq!(
            hit(&r, Some("api.example.com"), "/api/long/prefix"),
            Some("exact")
        );
        assert_eq!(hit(&r, Some("API.Example.COM"), "/"), Some("exact"));
        assert_eq!(
            hit(&r, Some("www.example.com"), "/api/long/prefix"),
            Some("wild")
        );
        assert_eq!(hit(&r, Some("a.b.example.com"), "/"), Some("wild"));
        assert_eq!(
            hit(&r, Some("example.com"), "/api/long/prefix"),
            Some("hostless")
        );
        assert_eq!(hit(&r, Some("example.com"), "/"), None);
        assert_eq!(hit(&r, None, "/api/long/prefix/x"), Some("hostless"));
    }

    #[test]
    fn ports_are_ignored() {
        let req = |host: &str| {
            http::Request::builder()
                .header("host", host)
                .body(())
                .unwrap()
        };
        assert_eq!(request_host(&req("a.example:8080")), Some("a.example"));
        assert_eq!(request_host(&req("a.example")), Some("a.example"));
        assert_eq!(request_host(&req("[::1]:8080")), Some("::1"));
        let h2 = http::Request::builder()
            .uri("https://b.example:443/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2), Some("b.example"));
    }

    #[test]
    fn the_target_authority_wins_over_host() {
        let req = http::Request::builder()
            .uri("http://a.example:8080/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("a.example"));
    }
}
