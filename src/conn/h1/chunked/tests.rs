use super::{Chunked, Malformed};

#[test]
fn chunked_decoder_matches_hyper() {
    let mut c = Chunked::default();
    assert_eq!(
        c.advance(b"3 ;ext\r\nabc\r\n0\r\nT: 1\r\n\r\nnext"),
        Ok((24, true))
    );
    for bad in [
        &b"g\r\n"[..],
        b"3\n",
        b"3;a\nb",
        b"3\r\nabcX",
        b"3\r\nabc\rX",
        b"1 2\r\n",
        b"0\r\n\r\r",
    ] {
        assert_eq!(
            Chunked::default().advance(bad),
            Err(Malformed),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut c = Chunked::default();
    assert_eq!(c.advance(b"ffffffffffffffff\r\n"), Ok((18, false)));
    assert_eq!(
        Chunked::default().advance(b"10000000000000000\r\n"),
        Err(Malformed)
    );
}

#[test]
fn split_anywhere() {
    let body = b"5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\n";
    for at in 0..=body.len() {
        let mut c = Chunked::default();
        let (n, done) = c.advance(&body[..at]).unwrap();
        assert_eq!((n, done), (at, at == body.len()));
        if done {
            continue;
        }
        let (m, done) = c.advance(&body[at..]).unwrap();
        assert_eq!((n + m, done), (body.len(), true), "split at {at}");
    }
}
