//! Where an upstream lives: `http://host:port`, `https://host[:port]` or `unix:/path`.

use std::fmt;
use std::path::PathBuf;

use http::uri::{Authority, Scheme, Uri};

/// Where one upstream lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Plain HTTP over TCP (HTTP/1.1, or prior-knowledge h2c when the service asks for HTTP/2).
    Http {
        /// `host[:port]`; the port defaults to 80.
        authority: Authority,
    },
    /// HTTP over TLS; HTTP/2 is negotiated by ALPN when the service allows it.
    Https {
        /// `host[:port]`; the port defaults to 443. The host is also the TLS server name (SNI).
        authority: Authority,
    },
    /// Plain HTTP over a Unix domain socket.
    Unix(PathBuf),
}

/// Why an upstream URL was rejected by [`Target::parse`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The URL does not parse as a URI.
    #[error("invalid upstream url {url:?}: {source}")]
    Invalid {
        /// The rejected URL.
        url: String,
        /// What the URI parser said.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The scheme is not `http`, `https` or `unix`.
    #[error("upstream url {url:?}: the scheme must be http, https or unix")]
    UnsupportedScheme {
        /// The rejected URL.
        url: String,
    },
    /// An `http`/`https` URL without a host.
    #[error("upstream url {url:?} has no host")]
    MissingHost {
        /// The rejected URL.
        url: String,
    },
    /// User information (`user:pass@`) in the authority.
    #[error("upstream url {url:?}: user information is not supported")]
    UserInfo {
        /// The rejected URL.
        url: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("upstream url {url:?} has an invalid port")]
    InvalidPort {
        /// The rejected URL.
        url: String,
    },
    /// A path (other than `/`) or a query: upstream URLs name a server, not a resource.
    #[error("upstream url {url:?} must not have a path or query")]
    HasPath {
        /// The rejected URL.
        url: String,
    },
    /// `unix:` with no socket path.
    #[error("upstream url {url:?} has no socket path")]
    EmptySocketPath {
        /// The rejected URL.
        url: String,
    },
}

/// The authority used in request URIs sent to Unix-socket upstreams.
static UNIX_AUTHORITY: Authority = Authority::from_static("localhost");

// === impl Target ===

impl Target {
    /// Parses `http://host[:port]`, `https://host[:port]` or `unix:/path/to.sock`.
    ///
    /// A trailing `/` is accepted; any other path, a query or user information is an error.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        if let Some(path) = url.strip_prefix("unix:") {
            // `unix:///run/app.sock` is the URL spelling of `unix:/run/app.sock`.
            let path = path
                .strip_prefix("//")
                .filter(|p| p.starts_with('/'))
                .unwrap_or(path);
            if path.is_empty() {
                return Err(TargetError::EmptySocketPath {
                    url: url.to_owned(),
                });
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }

        let uri: Uri = url.parse().map_err(|source| TargetError::Invalid {
            url: url.to_owned(),
            source,
        })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(TargetError::UnsupportedScheme {
                    url: url.to_owned(),
                });
            }
        };
        let authority = match uri.authority() {
            Some(a) if a.host().is_empty() => {
                return Err(TargetError::MissingHost {
                    url: url.to_owned(),
                });
            }
            Some(a) if a.as_str().contains('@') => {
                return Err(TargetError::UserInfo {
                    url: url.to_owned(),
                });
            }
            Some(a) => a.clone(),
            None => {
                return Err(TargetError::MissingHost {
                    url: url.to_owned(),
                });
            }
        };
        // `Authority` accepts any text after the colon; only a real port will do.
        let after_host = &authority.as_str()[authority.host().len()..];
        if !after_host.is_empty() && !matches!(authority.port_u16(), Some(p) if p > 0) {
            return Err(TargetError::InvalidPort {
                url: url.to_owned(),
            });
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(TargetError::HasPath {
                url: url.to_owned(),
            });
        }
        Ok(if https {
            Self::Https { authority }
        } else {
            Self::Http { authority }
        })
    }

    /// Whether connections to this target are TLS.
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Https { .. })
    }

    /// The scheme of request URIs sent to this target.
    #[inline]
    pub(crate) fn scheme(&self) -> Scheme {
        match self {
            Self::Https { .. } => Scheme::HTTPS,
            Self::Http { .. } | Self::Unix(_) => Scheme::HTTP,
        }
    }

    /// The authority of request URIs sent to this target (`localhost` for Unix sockets).
    #[inline]
    pub(crate) fn uri_authority(&self) -> &Authority {
        match self {
            Self::Http { authority } | Self::Https { authority } => authority,
            Self::Unix(_) => &UNIX_AUTHORITY,
        }
    }

    /// The host to connect to (brackets of IPv6 literals removed) and the port, for TCP targets.
    pub(crate) fn host_port(&self) -> Option<(&str, u16)> {
        let (authority, default_port) = match self {
            Self::Http { authority } => (authority, 80),
            Self::Https { authority } => (authority, 443),
            Self::Unix(_) => return None,
        };
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Some((host, authority.port_u16().unwrap_or(default_port)))
    }

    /// A short name for messages: `host:port` for TCP targets, `unix:/path` for sockets.
    pub(crate) fn short_name(&self) -> String {
        match self {
            Self::Http { authority } | Self::Https { authority } => authority.to_string(),
            Self::Unix(path) => format!("unix:{}", path.display()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http { authority } => write!(f, "http://{authority}"),
            Self::Https { authority } => write!(f, "https://{authority}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_https_and_unix() {
        let t = Target::parse("http://127.0.0.1:3001").unwrap();
        assert_eq!(
            t,
            Target::Http {
                authority: Authority::from_static("127.0.0.1:3001")
            }
        );
        assert_eq!(t.host_port(), Some(("127.0.0.1", 3001)));
        assert_eq!(t.to_string(), "http://127.0.0.1:3001");

        let t = Target::parse("https://app.internal/").unwrap();
        assert!(t.is_tls());
        assert_eq!(t.host_port(), Some(("app.internal", 443)));
        assert_eq!(t.uri_authority().as_str(), "app.internal");

        let t = Target::parse("http://[::1]:8080").unwrap();
        assert_eq!(t.host_port(), Some(("::1", 8080)));

        let t = Target::parse("http://example.com").unwrap();
        assert_eq!(t.host_port(), Some(("example.com", 80)));

        let t = Target::parse("unix:/run/app.sock").unwrap();
        assert_eq!(t, Target::Unix("/run/app.sock".into()));
        assert_eq!(t.to_string(), "unix:/run/app.sock");
        assert_eq!(t.uri_authority().as_str(), "localhost");
        assert_eq!(Target::parse("unix:///run/app.sock").unwrap(), t);
        assert_eq!(
            Target::parse("unix:app.sock").unwrap(),
            Target::Unix("app.sock".into())
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "ftp://h:1",
            "h:1",
            "/path",
            "http://",
            "http://h:1/api",
            "http://h:1/?q",
            "http://user:pw@h:1",
            "unix:",
            "http://h:notaport",
            "http://h:",
            "http://h:0",
            "http://h:65536",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
