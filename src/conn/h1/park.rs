//! The guard's side of parking: the one-shot slot through which it hands its transport back to
//! the connection task (`conn::park` drives the rest).

use std::sync::{Arc, OnceLock};

/// Where a parked transport waits, shared by the connection task and the guard of its current
/// hyper connection. Set once per park, by the guard; emptied by the task once hyper's
/// connection (and the guard's handle with it) is dropped, so the task then holds it alone
/// and needs no lock.
pub(crate) type Slot<IO> = Arc<OnceLock<IO>>;

/// A guard's handle on its connection's [`Slot`].
pub(crate) struct Park<IO> {
    slot: Slot<IO>,
    /// Parking is allowed: the connection was parked before, or this guard has handed hyper a
    /// request (never before the first request, whose head is bounded from accept).
    armed: bool,
}

// === impl Park ===

impl<IO> Park<IO> {
    /// A handle on `slot`; `resumed`: the connection was parked before, so it may park again
    /// before its next request (a wake-up that brought no request).
    pub(crate) fn new(slot: Slot<IO>, resumed: bool) -> Self {
        Self {
            slot,
            armed: resumed,
        }
    }

    /// Whether the guard may park.
    pub(super) fn armed(&self) -> bool {
        self.armed
    }

    /// A request was handed to hyper: the guard may park once it is answered.
    pub(super) fn arm(&mut self) {
        self.armed = true;
    }

    /// Hands `io` to the connection task.
    pub(super) fn put(&self, io: IO) {
        if self.slot.set(io).is_err() {
            // Not reachable: a guard parks once, and each hyper connection has its own guard.
            tracing::debug!("a parked transport was already in the slot; connection closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, OnceLock};
    use std::task::{Context, Poll, Waker};

    use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

    use super::{Park, Slot};
    use crate::conn::h1::{Rejections, StrictH1};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";

    fn guard(resumed: bool) -> (StrictH1<DuplexStream>, DuplexStream, Slot<DuplexStream>) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let slot: Slot<DuplexStream> = Arc::new(OnceLock::new());
        let guard = StrictH1::new(server, 4096, Rejections::default())
            .parking(Park::new(slot.clone(), resumed));
        (guard, client, slot)
    }

    /// One read as hyper makes it: `None` while pending, else the bytes (empty: end of stream).
    fn read(guard: &mut StrictH1<DuplexStream>) -> Option<Vec<u8>> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut space = [0u8; 8192];
        let mut buf = ReadBuf::new(&mut space);
        match Pin::new(guard).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Some(buf.filled().to_vec()),
            Poll::Ready(Err(e)) => panic!("read failed: {e}"),
            Poll::Pending => None,
        }
    }

    fn write(guard: &mut StrictH1<DuplexStream>, bytes: &[u8]) {
        let mut cx = Context::from_waker(Waker::noop());
        let poll = Pin::new(guard).poll_write(&mut cx, bytes);
        assert!(matches!(poll, Poll::Ready(Ok(n)) if n == bytes.len()));
    }

    #[tokio::test]
    async fn parks_once_the_answer_is_written_and_the_socket_is_empty() {
        let (mut guard, mut client, slot) = guard(false);
        assert_eq!(read(&mut guard), None, "never before the first request");
        assert!(slot.get().is_none());

        client.write_all(GET).await.unwrap();
        assert_eq!(read(&mut guard).as_deref(), Some(GET));
        assert_eq!(read(&mut guard), None, "a response is owed");
        write(&mut guard, &OK[..20]);
        assert_eq!(read(&mut guard), None, "half a response is written");
        write(&mut guard, &OK[20..]);
        assert_eq!(
            read(&mut guard).as_deref(),
            Some(&b""[..]),
            "parked: end of stream"
        );
        assert!(slot.get().is_some(), "the transport is in the slot");
        assert_eq!(read(&mut guard).as_deref(), Some(&b""[..]));
    }

    #[tokio::test]
    async fn a_waiting_byte_or_a_held_head_keeps_the_connection() {
        let (mut guard, mut client, slot) = guard(true);
        // Half a head comes: the guard holds it, nothing parks.
        client.write_all(&GET[..10]).await.unwrap();
        assert_eq!(read(&mut guard), None);
        assert!(slot.get().is_none());
        // The rest, and a pipelined second request behind it.
        client.write_all(&GET[10..]).await.unwrap();
        client.write_all(GET).await.unwrap();
        let mut got = read(&mut guard).unwrap();
        while got.len() < 2 * GET.len() {
            got.extend(read(&mut guard).unwrap());
        }
        write(&mut guard, OK);
        assert_eq!(read(&mut guard), None, "the second answer is owed");
        write(&mut guard, OK);
        assert_eq!(read(&mut guard).as_deref(), Some(&b""[..]));
        assert!(slot.get().is_some());
    }

    #[tokio::test]
    async fn a_resumed_guard_parks_again_when_woken_for_nothing() {
        let (mut guard, _client, slot) = guard(true);
        assert_eq!(read(&mut guard).as_deref(), Some(&b""[..]));
        assert!(slot.get().is_some());
    }

    #[tokio::test]
    async fn never_after_an_upgrade() {
        let (mut guard, mut client, slot) = guard(false);
        client
            .write_all(b"GET /ws HTTP/1.1\r\nHost: t.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        assert!(read(&mut guard).is_some());
        write(
            &mut guard,
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        );
        assert_eq!(read(&mut guard), None, "an upgraded stream waits for bytes");
        assert!(slot.get().is_none());
    }
}
