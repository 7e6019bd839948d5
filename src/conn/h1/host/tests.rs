use super::is_valid;

#[test]
fn accepted_hosts() {
    for ok in [
        "a",
        "example.com",
        "EXAMPLE.com:8080",
        "a.example:",
        "127.0.0.1",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8443",
        "[2001:db8::7]:1",
        "xn--bcher-kva.example",
        "under_score.example",
        "pct%41.example",
        "a:65535",
    ] {
        assert!(is_valid(ok.as_bytes()), "{ok:?} should be valid");
    }
}

#[test]
fn refused_hosts() {
    for bad in [
        "",
        ":80",
        "a b",
        "a@b",
        "user@a.example",
        "a/b",
        "a?b",
        "a#b",
        "a\tb",
        "a:8o",
        "a:123456",
        "a:80:80",
        "[::1",
        "[::1]x",
        "[::1]:x",
        "[zz::1]",
        "[v1.x]",
        "::1",
        "pct%4.example",
        "pct%zz",
        "caf\u{e9}.example",
        "a\"b",
        "a\\b",
        "[]",
    ] {
        assert!(!is_valid(bad.as_bytes()), "{bad:?} should be refused");
    }
}
