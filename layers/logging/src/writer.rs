//! [`LogWriter`]: a dedicated writer thread behind a bounded queue.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use crate::Output;

/// The size of the writer thread's buffer; it is flushed when full and whenever the queue runs
/// empty.
const BUFFER_BYTES: usize = 64 * 1024;

/// A dedicated writer thread and the bounded queue in front of it, for one output.
///
/// Request handlers hand it finished lines with a non-blocking `try_send`: when the queue is
/// full the line is dropped and counted ([`LogWriter::dropped`]), so a slow disk or a stalled
/// pipe never holds up a request. The thread writes through a `BufWriter` and flushes whenever
/// the queue runs empty.
///
/// Cheap to clone (an `Arc` inside). When the last clone is dropped, the thread writes what is
/// still queued, flushes and exits (without being waited for: call [`LogWriter::flush`] first
/// where the lines must be out, as at shutdown).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    sender: SyncSender<Msg>,
    stats: Arc<Stats>,
    output: String,
}

#[derive(Default)]
struct Stats {
    written: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
}

enum Msg {
    Line(Box<[u8]>),
    Flush(mpsc::Sender<io::Result<()>>),
}

// === impl LogWriter ===

impl LogWriter {
    /// Opens `output` (a file is created if missing and opened in append mode) and starts its
    /// writer thread with a queue of `capacity` lines (at least 1).
    ///
    /// Fails when the file cannot be opened or the thread cannot be started.
    pub fn open(output: &Output, capacity: usize) -> io::Result<Self> {
        let name = output.to_string();
        match output {
            Output::Stdout => Self::spawn(io::stdout(), capacity, name),
            Output::Stderr => Self::spawn(io::stderr(), capacity, name),
            Output::File(path) => {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                Self::spawn(file, capacity, name)
            }
        }
    }

    /// Starts a writer thread writing to `sink`, with a queue of `capacity` lines (at least 1):
    /// for outputs other than those of [`Output`] (a pipe, a socket, a test double).
    pub fn with_sink(sink: impl Write + Send + 'static, capacity: usize) -> io::Result<Self> {
        Self::spawn(sink, capacity, "custom sink".to_owned())
    }

    fn spawn(
        sink: impl Write + Send + 'static,
        capacity: usize,
        output: String,
    ) -> io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel(capacity.max(1));
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        let thread_output = output.clone();
        std::thread::Builder::new()
            .name("snakeway-log-writer".to_owned())
            .spawn(move || run(&receiver, sink, &thread_stats, &thread_output))?;
        Ok(Self {
            shared: Arc::new(Shared {
                sender,
                stats,
                output,
            }),
        })
    }

    /// Queues one line (which must end with `\n`) without blocking. Returns false, and counts
    /// the line as dropped, when the queue is full or the thread is gone.
    pub(crate) fn send(&self, line: Box<[u8]>) -> bool {
        match self.shared.sender.try_send(Msg::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Lines dropped because the queue was full (or the writer thread had died).
    pub fn dropped(&self) -> u64 {
        self.shared.stats.dropped.load(Ordering::Relaxed)
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
        let deadline = Instant::now() + timeout;
        let (ack, acked) = mpsc::channel();
        let mut msg = Msg::Flush(ack);
        loop {
            match self.shared.sender.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    msg = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the log writer thread is gone",
                    ));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match acked.recv_timeout(left) {
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
            .field("write_errors", &self.write_errors())
            .finish()
    }
}

/// How long the writer thread collects lines after its queue ran empty before it blocks; the
/// most a line waits for its write beyond the time it spends queued.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// The writer thread: write lines as they come, flush whenever the queue runs empty, and exit
/// (after draining and flushing) when every sender is gone.
fn run(receiver: &Receiver<Msg>, sink: impl Write, stats: &Stats, output: &str) {
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
            Msg::Line(line) => match out.write_all(&line) {
                Ok(()) => {
                    stats.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => note(Some(&e), &mut failing, stats, output),
            },
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
