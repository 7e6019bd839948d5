use super::{BodyFraming, Parsed, Violation, find_end, parse, parse_content_length};

const MAX: usize = 4096;

fn refused(raw: &str) -> Violation {
    match parse(raw.as_bytes(), MAX) {
        Parsed::Invalid(v, _) => v,
        other => panic!("{raw:?} should be refused, got {other:?}"),
    }
}

fn accepted(raw: &str) -> super::Head<'_> {
    match parse(raw.as_bytes(), MAX) {
        Parsed::Complete(head) => head,
        other => panic!("{raw:?} should be accepted, got {other:?}"),
    }
}

#[test]
fn content_length_values() {
    assert_eq!(parse_content_length(b"0"), Some(0));
    assert_eq!(parse_content_length(b" 0042\t"), Some(42));
    assert_eq!(
        parse_content_length(b"9999999999999999999"),
        Some(9_999_999_999_999_999_999)
    );
    for bad in [
        &b""[..],
        b" ",
        b"+1",
        b"-1",
        b"1,1",
        b"1 1",
        b"1e3",
        b"0x10",
        b"99999999999999999999",
    ] {
        assert_eq!(
            parse_content_length(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn host_must_be_one_valid_uri_host() {
    for (raw, reason) in [
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "duplicate host",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            "duplicate host",
        ),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid host"),
        ("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", "invalid host"),
        ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "invalid host"),
        ("GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", "invalid host"),
        ("GET / HTTP/1.1\r\nHost:\r\n\r\n", "empty host"),
        ("GET / HTTP/1.1\r\nHost:   \r\n\r\n", "empty host"),
        ("GET / HTTP/1.0\r\nHost:\r\n\r\n", "empty host"),
        (
            "GET / HTTP/1.1\r\nX: y\r\n\r\n",
            "HTTP/1.1 requests need a Host header",
        ),
    ] {
        let v = refused(raw);
        assert_eq!((v.status, v.reason), (400, reason), "{raw:?}");
    }
    assert_eq!(
        accepted("GET / HTTP/1.1\r\nHost: A.example:8080 \r\n\r\n").host,
        Some(&b"A.example:8080"[..])
    );
    assert_eq!(
        accepted("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n").host,
        Some(&b"[::1]:80"[..])
    );
    assert_eq!(accepted("GET / HTTP/1.0\r\n\r\n").host, None);
}

#[test]
fn absolute_form_authority_wins() {
    let head = accepted("GET http://a.example:81/x?q HTTP/1.1\r\nHost: b.example\r\n\r\n");
    assert_eq!(head.host, Some(&b"a.example:81"[..]));
    assert_eq!(head.target, "http://a.example:81/x?q");
    assert_eq!(
        accepted("GET https://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n").host,
        Some(&b"a.example"[..])
    );
    assert_eq!(
        accepted("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n").host,
        Some(&b"a.example:443"[..])
    );
    assert_eq!(
        accepted("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").host,
        Some(&b"a"[..])
    );
    for (raw, reason) in [
        (
            "GET http://u@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid request target authority",
        ),
        (
            "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid request target authority",
        ),
        (
            "GET a.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid request target",
        ),
        (
            "GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "invalid request target",
        ),
        (
            "GET http://a/ HTTP/1.1\r\nHost: a b\r\n\r\n",
            "invalid host",
        ),
    ] {
        assert_eq!(refused(raw).reason, reason, "{raw:?}");
    }
}

#[test]
fn framing_is_read_once_and_strictly() {
    assert_eq!(
        accepted("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").body,
        BodyFraming::Length(5)
    );
    assert_eq!(
        accepted("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").body,
        BodyFraming::Chunked
    );
    assert_eq!(
        accepted("GET / HTTP/1.1\r\nHost: a\r\n\r\n").body,
        BodyFraming::None
    );
    assert_eq!(
        refused(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .reason,
        "both content-length and transfer-encoding"
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "x".repeat(MAX)
    );
    assert_eq!(refused(&big).status, 431);
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nHost: a\r\n", MAX),
        Parsed::Partial
    );
}

#[test]
fn refused_heads_keep_their_request_line() {
    let Parsed::Invalid(_, Some(line)) =
        parse(b"PUT /x?y HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", MAX)
    else {
        panic!("a request line");
    };
    assert_eq!((line.method, line.target), ("PUT", "/x?y"));
}

#[test]
fn the_end_of_a_head_is_found_incrementally() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
    assert_eq!(find_end(head, 0), Ok(head.len() - 4));
    assert_eq!(find_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Ok(24));
    // Resuming where the previous search stopped finds the same end, at any split.
    for at in 1..head.len() - 4 {
        let next = find_end(&head[..at], 0).unwrap_err();
        assert!(next <= at);
        assert_eq!(find_end(head, next), Ok(head.len() - 4), "split at {at}");
    }
}
