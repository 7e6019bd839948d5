//! A flood of new connections beyond `max_connections`: the connections the server has keep
//! being served, the listener never serves more than its limit at once, and every flooding
//! client gets its answer in the end (it waited in the kernel's accept queue, or retried its
//! SYN while that queue was full) or a connect error it can see: none is dropped silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{T, parse_response, read_one_response};
use crate::harness::Server;

const LIMIT: usize = 1000;
const FLOOD: usize = 5000;
/// How long a served flooding client keeps its connection, so that slots stay taken.
const HOLD: Duration = Duration::from_millis(200);
/// Ample for a client whose SYN was dropped while the accept queue was full: Linux retries it
/// after 1, 3, 7, 15 and 31 s.
const PATIENCE: Duration = Duration::from_secs(90);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n";

/// What became of one flooding client.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Answered 200.
    Served,
    /// `connect` failed (refused, or gave up): the client knows.
    Refused,
    /// Connected, then closed or reset without an answer, or no answer in `PATIENCE`.
    Dropped(String),
}

/// Raises this process's soft open-files limit (the server inherits it) to fit the flood.
fn raise_open_files(needed: u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= needed,
        "the flood needs {needed} open files; the hard limit is {hard}"
    );
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).unwrap();
    }
}

async fn flood_one(
    addr: std::net::SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
) -> Fate {
    let Ok(Ok(mut stream)) = tokio::time::timeout(PATIENCE, TcpStream::connect(addr)).await else {
        return Fate::Refused;
    };
    if let Err(e) = stream.write_all(REQUEST).await {
        return Fate::Dropped(format!("write: {e}"));
    }
    let mut bytes = Vec::new();
    let mut buf = [0u8; 1024];
    let answer = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(p) = parse_response(&bytes) {
                return Ok(p.status);
            }
            match stream.read(&mut buf).await {
                Ok(0) => return Err("closed without an answer".to_owned()),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    })
    .await;
    match answer {
        Ok(Ok(200)) => {
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(HOLD).await;
            open.fetch_sub(1, Ordering::SeqCst);
            Fate::Served
        }
        Ok(Ok(status)) => Fate::Dropped(format!("status {status}")),
        Ok(Err(e)) => Fate::Dropped(e),
        Err(_) => Fate::Dropped(format!("no answer within {PATIENCE:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_beyond_max_connections_drops_nothing_silently() {
    raise_open_files((FLOOD + LIMIT + 256) as u64);
    let server = Server::start(&format!(
        r#"
[server]
threads = 2

[[listener]]
listen = "127.0.0.1:0"
max_connections = {LIMIT}

[[route]]
path = "/"
respond = {{ status = 200, body = "ok" }}
"#
    ))
    .await;
    let addr = server.addr();

    // The steady client holds one of the slots before the flood starts.
    let mut steady = TcpStream::connect(addr).await.unwrap();
    steady.write_all(REQUEST).await.unwrap();
    assert_eq!(read_one_response(&mut steady).await.status, 200);

    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| tokio::spawn(flood_one(addr, open.clone(), peak.clone())))
        .collect();

    // While the flood runs, the steady client keeps getting answers on its connection.
    let mut answered = 0;
    while !flood.iter().all(tokio::task::JoinHandle::is_finished) {
        steady.write_all(REQUEST).await.unwrap();
        let res = tokio::time::timeout(T, read_one_response(&mut steady))
            .await
            .expect("the steady client got no answer during the flood");
        assert_eq!(res.status, 200);
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answered > 0,
        "the flood was over before the steady client asked"
    );

    let mut fates = Vec::with_capacity(FLOOD);
    for task in flood {
        fates.push(task.await.unwrap());
    }
    let served = fates.iter().filter(|f| **f == Fate::Served).count();
    let refused = fates.iter().filter(|f| **f == Fate::Refused).count();
    let dropped: Vec<_> = fates
        .iter()
        .filter(|f| matches!(f, Fate::Dropped(_)))
        .collect();
    assert!(
        dropped.is_empty(),
        "{} of {FLOOD} flooding clients dropped silently (served {served}, refused {refused}); first: {:?}",
        dropped.len(),
        dropped[0]
    );
    assert_eq!(served + refused, FLOOD);
    assert!(
        served > LIMIT,
        "only {served} flooding clients served (refused {refused})"
    );
    // The steady client holds a slot: the flood never had more than LIMIT - 1 at once.
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak < LIMIT,
        "{peak} flooding connections served at once beside the steady one, beyond max_connections = {LIMIT}"
    );
    assert!(
        peak > LIMIT / 2,
        "the flood never filled the listener (peak {peak})"
    );
}
