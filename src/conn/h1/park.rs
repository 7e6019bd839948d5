//! The guard's side of parking: the one-shot slot through which it hands its transport back to
//! the connection task (`conn::park` drives the rest), and the watch's bell that says when.

use std::sync::{Arc, OnceLock};
use std::task::Context;

use crate::conn::watch::Meter;

/// Where a parked transport waits, shared by the connection task and the guard of its current
/// hyper connection. Set once per park, by the guard; emptied by the task once hyper's
/// connection (and the guard's handle with it) is dropped, so the task then holds it alone
/// and needs no lock.
pub(crate) type Slot<IO> = Arc<OnceLock<IO>>;

/// A guard's handle on its connection's [`Slot`].
pub(crate) struct Park<IO> {
    slot: Slot<IO>,
    /// The connection's meter, whose [`ParkBell`](crate::conn::watch::ParkBell) the watch
    /// rings once the connection has been quiet for a tick.
    meter: Arc<Meter>,
    /// Parking is allowed: the connection was parked before, or this guard has handed hyper a
    /// request (never before the first request, whose head is bounded from accept).
    armed: bool,
    /// The connection has never parked: this guard serves its first requests.
    fresh: bool,
    /// Park without waiting for the watch: a fresh connection has had exactly one request.
    /// Many clients pause after their first request, and a connection that parks at once
    /// holds no hyper buffers for the whole of its idle time; a busy one pays one resume for
    /// it, and parks lazily from then on.
    eager: bool,
}

// === impl Park ===

impl<IO> Park<IO> {
    /// A handle on `slot`, told when to park by `meter`'s bell; `resumed`: the connection was
    /// parked before, so it may park again before its next request (a wake-up that brought no
    /// request).
    pub(crate) fn new(slot: Slot<IO>, meter: Arc<Meter>, resumed: bool) -> Self {
        Self {
            slot,
            meter,
            armed: resumed,
            fresh: !resumed,
            eager: false,
        }
    }

    /// Whether the connection should park: at once after a fresh connection's first request,
    /// else once the watch asks; until it does, a ring wakes `cx`.
    #[inline]
    pub(super) fn poll_asked(&self, cx: &Context<'_>) -> bool {
        self.eager || self.meter.park.poll_asked(cx)
    }

    /// Whether the guard may park.
    pub(super) fn armed(&self) -> bool {
        self.armed
    }

    /// Requests were handed to hyper, `heads` so far through this guard: the guard may park
    /// once they are answered (at once if it is a fresh connection's only one).
    pub(super) fn arm(&mut self, heads: u32) {
        self.eager = self.fresh && heads == 1;
        self.armed = true;
        self.meter.park.clear();
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::task::{Context, Poll, Wake, Waker};

    use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

    use super::{Park, Slot};
    use crate::conn::h1::{Rejections, StrictH1};
    use crate::conn::watch::Meter;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";

    /// A guard over one end of a pipe, the other end, the slot, and the connection's meter
    /// (whose bell the watch would ring).
    struct Setup {
        guard: StrictH1<DuplexStream>,
        client: DuplexStream,
        slot: Slot<DuplexStream>,
        meter: Arc<Meter>,
    }

    fn setup(resumed: bool) -> Setup {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let slot: Slot<DuplexStream> = Arc::new(OnceLock::new());
        let meter = Arc::new(Meter::default());
        let guard = StrictH1::new(server, 4096, Rejections::default()).parking(Park::new(
            slot.clone(),
            meter.clone(),
            resumed,
        ));
        Setup {
            guard,
            client,
            slot,
            meter,
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One read as hyper makes it, waking `waker`: `None` while pending, else the bytes
    /// (empty: end of stream).
    fn read_waking(guard: &mut StrictH1<DuplexStream>, waker: &Waker) -> Option<Vec<u8>> {
        let mut cx = Context::from_waker(waker);
        let mut space = [0u8; 8192];
        let mut buf = ReadBuf::new(&mut space);
        match Pin::new(guard).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Some(buf.filled().to_vec()),
            Poll::Ready(Err(e)) => panic!("read failed: {e}"),
            Poll::Pending => None,
        }
    }

    fn read(guard: &mut StrictH1<DuplexStream>) -> Option<Vec<u8>> {
        read_waking(guard, Waker::noop())
    }

    fn write(guard: &mut StrictH1<DuplexStream>, bytes: &[u8]) {
        let mut cx = Context::from_waker(Waker::noop());
        let poll = Pin::new(guard).poll_write(&mut cx, bytes);
        assert!(matches!(poll, Poll::Ready(Ok(n)) if n == bytes.len()));
    }

    /// The client sends a GET, the guard hands it over and hyper's answer goes back.
    async fn one_request(guard: &mut StrictH1<DuplexStream>, client: &mut DuplexStream) {
        client.write_all(GET).await.unwrap();
        assert_eq!(read(guard).as_deref(), Some(GET));
        write(guard, OK);
    }

    #[tokio::test]
    async fn a_fresh_connection_parks_as_soon_as_its_first_request_is_answered() {
        let Setup {
            mut guard,
            mut client,
            slot,
            meter,
        } = setup(false);
        assert_eq!(read(&mut guard), None, "never before the first request");
        meter.park.ring();
        assert_eq!(read(&mut guard), None, "not even when asked");
        assert!(slot.get().is_none());

        client.write_all(GET).await.unwrap();
        assert_eq!(read(&mut guard).as_deref(), Some(GET));
        assert_eq!(read(&mut guard), None, "a response is owed");
        write(&mut guard, &OK[..20]);
        assert_eq!(read(&mut guard), None, "half a response is written");
        write(&mut guard, &OK[20..]);
        // The request cleared the ask: the first answer alone parks a fresh connection.
        assert_eq!(
            read(&mut guard).as_deref(),
            Some(&b""[..]),
            "parked: end of stream"
        );
        assert!(slot.get().is_some(), "the transport is in the slot");
    }

    #[tokio::test]
    async fn after_a_second_request_it_parks_once_answered_the_socket_empty_and_the_watch_asks() {
        let Setup {
            mut guard,
            mut client,
            slot,
            meter,
        } = setup(false);
        // The next request is already waiting when the first is answered: no park.
        one_request(&mut guard, &mut client).await;
        one_request(&mut guard, &mut client).await;
        assert!(slot.get().is_none());

        // The request cleared any earlier ask: the guard waits for the watch.
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        assert_eq!(read_waking(&mut guard, &waker), None, "not asked since");
        assert!(slot.get().is_none());
        meter.park.ring();
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the ring wakes the guard"
        );
        meter.park.ring();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "once per ask");
        assert_eq!(
            read_waking(&mut guard, &waker).as_deref(),
            Some(&b""[..]),
            "parked: end of stream"
        );
        assert!(slot.get().is_some(), "the transport is in the slot");
        assert_eq!(read(&mut guard).as_deref(), Some(&b""[..]));
    }

    #[tokio::test]
    async fn a_resumed_connection_parks_only_when_the_watch_asks() {
        let Setup {
            mut guard,
            mut client,
            slot,
            meter,
        } = setup(true);
        one_request(&mut guard, &mut client).await;
        assert_eq!(read(&mut guard), None, "not asked since the request");
        assert!(slot.get().is_none());
        meter.park.ring();
        assert_eq!(read(&mut guard).as_deref(), Some(&b""[..]));
        assert!(slot.get().is_some());
    }

    #[tokio::test]
    async fn a_waiting_byte_or_a_held_head_keeps_the_connection() {
        let Setup {
            mut guard,
            mut client,
            slot,
            meter,
        } = setup(true);
        meter.park.ring();
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
        meter.park.ring();
        write(&mut guard, OK);
        assert_eq!(read(&mut guard), None, "the second answer is owed");
        write(&mut guard, OK);
        assert_eq!(read(&mut guard).as_deref(), Some(&b""[..]));
        assert!(slot.get().is_some());
    }

    #[tokio::test]
    async fn a_resumed_guard_parks_again_when_woken_for_nothing() {
        let Setup {
            mut guard,
            client: _client,
            slot,
            meter,
        } = setup(true);
        // The ask that parked the connection before still holds: no request came since.
        meter.park.ring();
        assert_eq!(read(&mut guard).as_deref(), Some(&b""[..]));
        assert!(slot.get().is_some());
    }

    #[tokio::test]
    async fn never_after_an_upgrade() {
        let Setup {
            mut guard,
            mut client,
            slot,
            meter,
        } = setup(false);
        client
            .write_all(b"GET /ws HTTP/1.1\r\nHost: t.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        assert!(read(&mut guard).is_some());
        write(
            &mut guard,
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        );
        meter.park.ring();
        assert_eq!(read(&mut guard), None, "an upgraded stream waits for bytes");
        assert!(slot.get().is_none());
    }
}
