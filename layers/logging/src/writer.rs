//! [`LogWriter`]: a dedicated writer thread behind a bounded queue.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use snakeway_core::metrics::{Counter, LOG_LINES_DROPPED};

use crate::Output;

/// The size of the writer thread's buffer; it is flushed when full and whenever the queue runs
/// empty.
const BUFFER_BYTES: usize = 64 * 1024;

/// The capacity a fresh line buffer starts with (a typical line is 250–400 bytes).
const LINE_CAPACITY: usize = 512;

/// Line buffers that grew beyond this are not recycled (a line with many headers).
const KEEP_BUFFER_BYTES: usize = 8 * 1024;

/// The most line buffers kept for reuse: with [`KEEP_BUFFER_BYTES`], at most 2 MiB per writer.
const SPARE_BUFFERS: usize = 256;

/// The most often a [`LogWriter`] warns that it dropped lines.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// A dedicated writer thread and the queue in front of it, bounded in bytes, for one output.
///
/// Request handlers hand it finished lines without blocking. The queue holds at most its
/// `queue_bytes` of lines: a line that would go beyond is dropped and counted
/// ([`LogWriter::dropped`]), and a warning is logged (at most once a second), so a slow disk
/// or a stalled pipe never holds up a request nor grows the queue without bound. The thread
/// writes through a `BufWriter` and flushes whenever the queue runs empty.
///
/// Line buffers are recycled: the thread hands each written (or dropped) line's buffer back to
/// a bounded lock-free pool ([`SPARE_BUFFERS`] buffers of at most [`KEEP_BUFFER_BYTES`]), from
/// which [`LogWriter::buffer`] takes the next one, so a steady stream of lines allocates
/// nothing.
///
/// Cheap to clone (an `Arc` inside). When the last clone is dropped, the thread writes what is
/// still queued, flushes and exits (without being waited for: call [`LogWriter::flush`] first
/// where the lines must be out, as at shutdown).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    /// Unbounded by itself: `Stats::queued` bounds the lines in it.
    sender: Sender<Msg>,
    stats: Arc<Stats>,
    output: String,
    /// The bound of `Stats::queued`.
    queue_bytes: usize,
    /// When the writer started; the clock of `next_warning_ms`.
    started: Instant,
    /// Milliseconds after `started` before which no drop warning is logged.
    next_warning_ms: AtomicU64,
    /// The process-wide `log_lines_dropped` metric (summed over every writer).
    dropped_metric: Arc<Counter>,
    /// Emptied line buffers for the next lines, given back by the thread.
    spare: Arc<ArrayQueue<Vec<u8>>>,
}

#[derive(Default)]
struct Stats {
    written: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    /// Bytes of the lines in the queue, as the capacities of their buffers (what they hold in
    /// memory): added before a line is sent, taken off by the thread once the line is
    /// written.
    queued: AtomicUsize,
}

enum Msg {
    Line(Vec<u8>),
    Flush(mpsc::Sender<io::Result<()>>),
}

// === impl LogWriter ===

impl LogWriter {
    /// Opens `output` (a file is created if missing and opened in append mode) and starts its
    /// writer thread with a queue holding at most `queue_bytes` bytes of lines.
    ///
    /// Fails when the file cannot be opened or the thread cannot be started.
    pub fn open(output: &Output, queue_bytes: usize) -> io::Result<Self> {
        let name = output.to_string();
        match output {
            Output::Stdout => Self::spawn(io::stdout(), queue_bytes, name),
            Output::Stderr => Self::spawn(io::stderr(), queue_bytes, name),
            Output::File(path) => {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                Self::spawn(file, queue_bytes, name)
            }
        }
    }

    /// Starts a writer thread writing to `sink`, with a queue holding at most `queue_bytes`
    /// bytes of lines: for outputs other than those of [`Output`] (a pipe, a socket, a test
    /// double).
    pub fn with_sink(sink: impl Write + Send + 'static, queue_bytes: usize) -> io::Result<Self> {
        Self::spawn(sink, queue_bytes, "custom sink".to_owned())
    }

    fn spawn(
        sink: impl Write + Send + 'static,
        queue_bytes: usize,
        output: String,
    ) -> io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let thread_output = output.clone();
        let spare = Arc::new(ArrayQueue::new(SPARE_BUFFERS));
        let thread_spare = spare.clone();
        std::thread::Builder::new()
            .name("snakeway-log-writer".to_owned())
            .spawn(move || {
                run(
                    &receiver,
                    sink,
                    &thread_stats,
                    &thread_spare,
                    &thread_output,
                );
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                sender,
                stats,
                output,
                queue_bytes,
                started: Instant::now(),
                next_warning_ms: AtomicU64::new(0),
                dropped_metric: LOG_LINES_DROPPED.get(&[]),
                spare,
            }),
        })
    }

    /// An empty buffer to format the next line into: a recycled one when there is one (no
    /// allocation), else a new one. Hand it back with [`LogWriter::send`].
    #[inline]
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.shared
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LINE_CAPACITY))
    }

    /// Queues one line (which must end with `\n`) without blocking. Returns false, and counts
    /// the line as dropped, when its buffer does not fit in the queue's bytes or the thread is
    /// gone.
    pub(crate) fn send(&self, line: Vec<u8>) -> bool {
        let shared = &*self.shared;
        // A buffer's capacity is what it holds in memory while queued.
        let len = line.capacity();
        // Reserve the line's bytes first: concurrent senders never take the queue past its
        // bound together.
        let before = shared.stats.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > shared.queue_bytes {
            shared.stats.queued.fetch_sub(len, Ordering::Relaxed);
            recycle(&shared.spare, line);
            self.count_drop();
            return false;
        }
        if let Err(mpsc::SendError(msg)) = shared.sender.send(Msg::Line(line)) {
            shared.stats.queued.fetch_sub(len, Ordering::Relaxed);
            if let Msg::Line(line) = msg {
                recycle(&shared.spare, line);
            }
            self.count_drop();
            return false;
        }
        true
    }

    /// Counts a dropped line; warns about the drops at most once per [`WARNING_INTERVAL`].
    #[cold]
    fn count_drop(&self) {
        let shared = &*self.shared;
        let dropped = shared.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        shared.dropped_metric.inc();
        let now = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = shared.next_warning_ms.load(Ordering::Relaxed);
        let interval = WARNING_INTERVAL.as_millis() as u64;
        if now >= next
            && shared
                .next_warning_ms
                .compare_exchange(next, now + interval, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                output = %shared.output,
                dropped,
                queue_bytes = shared.queue_bytes,
                "access log lines dropped: the log queue is full (the output is slower than the traffic)"
            );
        }
    }

    /// Lines dropped because they did not fit in the queue (or the writer thread had died).
    pub fn dropped(&self) -> u64 {
        self.shared.stats.dropped.load(Ordering::Relaxed)
    }

    /// Bytes of the lines queued and not yet written (the capacities of their buffers); at
    /// most the queue's `queue_bytes`.
    pub fn queued_bytes(&self) -> usize {
        self.shared.stats.queued.load(Ordering::Relaxed)
    }

    /// The queue's bound in bytes, as given when the writer was opened.
    pub fn queue_bytes(&self) -> usize {
        self.shared.queue_bytes
    }

    /// Lines handed to the output (into the thread's buffer; see [`LogWriter::flush`]).
    pub fn written(&self) -> u64 {
        self.shared.stats.written.load(Ordering::Relaxed)
    }

    /// Writes or flushes that failed (each failure also logs a `tracing` error once per run of
    /// failures).
    pub fn write_errors(&self) -> u64 {
        self.shared.stats.errors.load(Ordering::Relaxed)
    }

    /// Blocks until every line queued before this call is written and the output flushed, or
    /// `timeout` passed (`ErrorKind::TimedOut`). For shutdown and tests: never call it on the
    /// request path.
    pub fn flush(&self, timeout: Duration) -> io::Result<()> {
        // A flush request is not counted in the queue's bytes: each caller waits for its
        // answer, so there are never more of them than threads calling `flush`.
        let (ack, acked) = mpsc::channel();
        if self.shared.sender.send(Msg::Flush(ack)).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the log writer thread is gone",
            ));
        }
        match acked.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(io::ErrorKind::TimedOut.into()),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the log writer thread is gone",
            )),
        }
    }
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter")
            .field("output", &self.shared.output)
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .field("queued_bytes", &self.queued_bytes())
            .field("queue_bytes", &self.queue_bytes())
            .field("write_errors", &self.write_errors())
            .finish()
    }
}

/// How long the writer thread collects lines after its queue ran empty before it blocks; the
/// most a line waits for its write beyond the time it spends queued.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// The writer thread: write lines as they come, flush whenever the queue runs empty, and exit
/// (after draining and flushing) when every sender is gone.
fn run(
    receiver: &Receiver<Msg>,
    sink: impl Write,
    stats: &Stats,
    spare: &ArrayQueue<Vec<u8>>,
    output: &str,
) {
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, sink);
    let mut failing = false;
    loop {
        let msg = match receiver.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Empty) => {
                if !out.buffer().is_empty() {
                    let result = out.flush();
                    note(result.as_ref().err(), &mut failing, stats, output);
                }
                // Sleep through a short window before blocking in `recv`: while this thread
                // sleeps, workers hand lines over without waking it, so a busy server pays one
                // wake-up per batch instead of one (a context switch) per line.
                std::thread::sleep(BATCH_WINDOW);
                match receiver.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => match receiver.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    },
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match msg {
            Msg::Line(line) => {
                let result = out.write_all(&line);
                stats.queued.fetch_sub(line.capacity(), Ordering::Relaxed);
                match result {
                    Ok(()) => {
                        stats.written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => note(Some(&e), &mut failing, stats, output),
                }
                recycle(spare, line);
            }
            Msg::Flush(ack) => {
                let result = out.flush();
                note(result.as_ref().err(), &mut failing, stats, output);
                let _ = ack.send(result);
            }
        }
    }
    let result = out.flush();
    note(result.as_ref().err(), &mut failing, stats, output);
}

/// Empties `line` and keeps it for a later line, unless it grew large or enough are kept.
#[inline]
fn recycle(spare: &ArrayQueue<Vec<u8>>, mut line: Vec<u8>) {
    if line.capacity() <= KEEP_BUFFER_BYTES {
        line.clear();
        // A full pool drops the buffer.
        let _ = spare.push(line);
    }
}

/// Counts a write failure, and reports the first of a run of failures.
fn note(error: Option<&io::Error>, failing: &mut bool, stats: &Stats, output: &str) {
    match error {
        Some(error) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if !*failing {
                tracing::error!(%output, %error, "cannot write access log lines");
            }
            *failing = true;
        }
        None => *failing = false,
    }
}
