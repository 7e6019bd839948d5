//! Templates with request placeholders: `https://{host}{path}{query}`.
//!
//! A template is parsed once, at load, into literal pieces and placeholders; expanding it is one
//! pass that copies bytes into a buffer sized up front, with no parsing per request.
//!
//! A placeholder is `{` + a lower-case name + `}`. Any other `{` is literal text, so JSON bodies
//! (`{"ok": true}`) need no escaping; a lower-case name that is not a known placeholder is an
//! error, so a typo (`{hots}`) is caught at load rather than sent to clients.

use std::fmt;

/// A value taken from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    /// `http` or `https`: how the client reached Snakeway.
    Scheme,
    /// The request's host without its port (the target's authority, else `host`).
    Host,
    /// The (normalized) request path.
    Path,
    /// `?` and the query when the request has one, else nothing.
    Query,
}

/// The placeholder names, in the order messages list them.
const VARS: [(&str, Var); 4] = [
    ("scheme", Var::Scheme),
    ("host", Var::Host),
    ("path", Var::Path),
    ("query", Var::Query),
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    Var(Var),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Box<[Piece]>,
    /// Bytes of literal text, to size the buffer.
    text_len: usize,
}

/// A template names a placeholder that does not exist.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownPlaceholder(pub String);

impl fmt::Display for UnknownPlaceholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<String> = VARS.iter().map(|(name, _)| format!("{{{name}}}")).collect();
        write!(
            f,
            "unknown placeholder {{{}}} (expected one of {})",
            self.0,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownPlaceholder {}

/// What a template's placeholders expand to for one request.
#[derive(Clone, Copy, Debug)]
pub struct Vars<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The host without port (an IPv6 literal keeps its brackets); empty when unknown.
    pub host: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The query without `?`, if any.
    pub query: Option<&'a str>,
}

// === impl Template ===

impl Template {
    /// Parses `text`.
    pub(crate) fn parse(text: &str) -> Result<Self, UnknownPlaceholder> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                .count();
            if name_len > 0 && after.as_bytes().get(name_len) == Some(&b'}') {
                let name = &after[..name_len];
                let var = VARS
                    .iter()
                    .find(|(known, _)| *known == name)
                    .map(|(_, var)| *var)
                    .ok_or_else(|| UnknownPlaceholder(name.to_owned()))?;
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal).into()));
                }
                pieces.push(Piece::Var(var));
                rest = &after[name_len + 1..];
            } else {
                literal.push('{');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal.into()));
        }
        let text_len = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                Piece::Var(_) => 0,
            })
            .sum();
        Ok(Self {
            pieces: pieces.into(),
            text_len,
        })
    }

    /// Whether the template has no placeholder (it is its own expansion).
    pub(crate) fn is_literal(&self) -> bool {
        !self.pieces.iter().any(|p| matches!(p, Piece::Var(_)))
    }

    /// The template with `vars` filled in.
    pub(crate) fn expand(&self, vars: &Vars<'_>) -> Vec<u8> {
        let value = |var: Var| match var {
            Var::Scheme => vars.scheme,
            Var::Host => vars.host,
            Var::Path => vars.path,
            Var::Query => vars.query.unwrap_or(""),
        };
        let vars_len: usize = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Text(_) => 0,
                Piece::Var(Var::Query) => vars.query.map_or(0, |q| q.len() + 1),
                Piece::Var(var) => value(*var).len(),
            })
            .sum();
        let mut out = Vec::with_capacity(self.text_len + vars_len);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Var(Var::Query) => {
                    if let Some(query) = vars.query {
                        out.push(b'?');
                        out.extend_from_slice(query.as_bytes());
                    }
                }
                Piece::Var(var) => out.extend_from_slice(value(*var).as_bytes()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS_A: Vars<'static> = Vars {
        scheme: "http",
        host: "example.com",
        path: "/a/b",
        query: Some("x=1"),
    };

    fn expand(text: &str, vars: &Vars<'_>) -> String {
        String::from_utf8(Template::parse(text).unwrap().expand(vars)).unwrap()
    }

    #[test]
    fn placeholders_expand_and_query_brings_its_question_mark() {
        assert_eq!(
            expand("https://{host}{path}{query}", &VARS_A),
            "https://example.com/a/b?x=1"
        );
        let no_query = Vars {
            query: None,
            ..VARS_A
        };
        assert_eq!(
            expand("{scheme}://{host}{path}{query}", &no_query),
            "http://example.com/a/b"
        );
    }

    #[test]
    fn other_braces_are_literal_text() {
        assert_eq!(expand(r#"{"ok": true}"#, &VARS_A), r#"{"ok": true}"#);
        assert_eq!(expand("{}{ host}{Host}{", &VARS_A), "{}{ host}{Host}{");
        assert_eq!(expand("{{host}}", &VARS_A), "{example.com}");
        assert!(Template::parse("plain").unwrap().is_literal());
        assert!(!Template::parse("{path}").unwrap().is_literal());
    }

    #[test]
    fn unknown_placeholders_are_errors_naming_them() {
        let err = Template::parse("https://{hots}/").unwrap_err();
        assert_eq!(err, UnknownPlaceholder("hots".into()));
        assert!(err.to_string().contains("{hots}"), "{err}");
        assert!(err.to_string().contains("{query}"), "{err}");
    }
}
