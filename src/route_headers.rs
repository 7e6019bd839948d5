//! A route's configured header changes: `response_headers` set on every response of the
//! route, `request_headers` set and `remove_request_headers` removed before forwarding.
//!
//! Names and values are checked and converted once, when the snapshot is built. A route that
//! sets none holds empty slices: applying them is a length check.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields to set, in configured order.
type Fields = Box<[(HeaderName, HeaderValue)]>;

/// The key (under the route) and message of a field that cannot be converted.
type Problem = (String, String);

/// The header changes of one route.
#[derive(Debug, Default)]
pub(crate) struct RouteHeaders {
    /// Set on the response, replacing the upstream's (or the device's) field of the same name.
    response: Fields,
    /// Set on the request before it is forwarded.
    request_set: Fields,
    /// Removed from the request before it is forwarded.
    request_remove: Box<[HeaderName]>,
}

// === impl RouteHeaders ===

impl RouteHeaders {
    /// The changes configured on `route`, or the key and message of the first field that is
    /// not valid (validation has refused those already; this only keeps conversion honest).
    pub(crate) fn build(route: &snakeway_config::Route) -> Result<Self, Problem> {
        fn fields<'a>(
            key: &str,
            table: impl IntoIterator<Item = (&'a String, &'a String)>,
        ) -> Result<Fields, Problem> {
            table
                .into_iter()
                .map(|(name, value)| {
                    let bad = |what: &str| (format!("{key}.{name}"), format!("{value:?} {what}"));
                    Ok((
                        HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| bad("has an invalid header name"))?,
                        HeaderValue::from_str(value)
                            .map_err(|_| bad("is not a valid header value"))?,
                    ))
                })
                .collect()
        }
        let request_remove = route
            .remove_request_headers
            .iter()
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    (
                        "remove_request_headers".to_owned(),
                        format!("{name:?} is not a header name"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            response: fields("response_headers", &route.response_headers)?,
            request_set: fields("request_headers", &route.request_headers)?,
            request_remove,
        })
    }

    /// Applies `request_headers` and `remove_request_headers` to a request's headers.
    #[inline]
    pub(crate) fn apply_to_request(&self, headers: &mut HeaderMap) {
        for name in &self.request_remove {
            headers.remove(name);
        }
        for (name, value) in &self.request_set {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Applies `response_headers` to a response's headers.
    #[inline]
    pub(crate) fn apply_to_response(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.response {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(toml_route: &str) -> snakeway_config::Route {
        let text = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[service]]\nname = \"s\"\n\
             upstreams = [{{ url = \"http://127.0.0.1:1\" }}]\n[[route]]\n{toml_route}\n"
        );
        let path = std::env::temp_dir().join("route-headers.toml");
        let config = snakeway_config::load_str(&text, &path).expect("valid config");
        config.routes.into_iter().next().unwrap()
    }

    #[test]
    fn set_replaces_and_remove_removes() {
        let headers = RouteHeaders::build(&route(
            "path = \"/\"\nservice = \"s\"\n\
             response_headers = { strict-transport-security = \"max-age=63072000\" }\n\
             request_headers = { x-env = \"prod\" }\n\
             remove_request_headers = [\"x-debug\"]",
        ))
        .unwrap();
        let mut request = HeaderMap::new();
        request.insert("x-env", HeaderValue::from_static("dev"));
        request.append("x-env", HeaderValue::from_static("test"));
        request.insert("x-debug", HeaderValue::from_static("1"));
        headers.apply_to_request(&mut request);
        assert_eq!(request.get_all("x-env").iter().count(), 1);
        assert_eq!(request["x-env"], "prod");
        assert!(request.get("x-debug").is_none());

        let mut response = HeaderMap::new();
        response.insert(
            "strict-transport-security",
            HeaderValue::from_static("max-age=1"),
        );
        headers.apply_to_response(&mut response);
        assert_eq!(response["strict-transport-security"], "max-age=63072000");
    }
}
