//! [`StructuredLogging`]: the device.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, request, response};
use snakeway_core::{
    Device, DeviceError, DeviceResult, Error, Flow, Origin, Phase, Phases, RequestCtx, ResponseCtx,
    Transfer,
};

use crate::layer::StructuredLoggingLayer;
use crate::record::{
    CapturedHeader, DeviceLogRecord, ErrorRecord, HeaderFields, Record, Timestamp,
};
use crate::{IdentityExtractor, LogPhase, LogWriter, LoggingOptions};

/// Tells apart the captures of several logging devices in one pipeline.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The structured-logging device: one JSON line per configured event, handed to a
/// [`LogWriter`] without blocking. See the [crate docs](crate) for the line format.
pub struct StructuredLogging {
    id: u64,
    /// The events logged.
    events: Phases,
    /// The phases taken part in: the events, plus `Request` when headers are captured, and
    /// `Complete` when `response` lines are logged (they are written once the body has gone).
    phases: Phases,
    include_headers: bool,
    allowed_headers: Box<[HeaderName]>,
    redacted_headers: Box<[HeaderName]>,
    /// `Some` when identity fields are logged (the extractor may still be missing).
    identity: Option<Option<IdentityExtractor>>,
    writer: LogWriter,
}

/// What this device captured of the request head at `on_request` for its later lines, and of
/// the response head at `on_response` for the `response` line.
#[derive(Clone, Debug)]
struct Capture {
    device: u64,
    headers: Option<Vec<CapturedHeader>>,
    response: Option<Answered>,
}

/// The response as this device saw it at `on_response`.
#[derive(Clone, Copy, Debug)]
struct Answered {
    status: u16,
    origin: Origin,
}

/// The captures of the logging devices of a pipeline (almost always one), in the request's
/// context extensions.
#[derive(Clone, Debug)]
struct Captures {
    first: Capture,
    more: Vec<Capture>,
}

/// What a line knows beyond the request context.
#[derive(Default)]
struct Event<'a> {
    status: Option<u16>,
    bytes_out: Option<u64>,
    complete: Option<bool>,
    origin: Option<Origin>,
    error: Option<&'a Error>,
}

// === impl StructuredLogging ===

impl StructuredLogging {
    /// A device logging as `options` say, to `writer` (`options.output` and
    /// `options.queue_bytes` are not used: the writer is already open).
    pub fn new(options: LoggingOptions, writer: LogWriter) -> Self {
        let events: Phases = options.phases.iter().map(|p| p.phase()).collect();
        let mut phases = events;
        // Headers are captured at `on_request` for the later lines; without them, nothing
        // needs `on_request` unless `request` lines are logged.
        if options.include_headers && events != Phases::NONE {
            phases = phases.with(Phase::Request);
        }
        if events.contains(Phase::Response) {
            phases = phases.with(Phase::Complete);
        }
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            events,
            phases,
            include_headers: options.include_headers,
            allowed_headers: options.allowed_headers.into(),
            redacted_headers: options.redacted_headers.into(),
            identity: options.include_identity.then_some(options.identity),
            writer,
        }
    }

    /// Opens `options.output` with a queue of at most `options.queue_bytes` bytes (see
    /// [`LogWriter::open`]) and builds the device on it.
    pub fn open(options: LoggingOptions) -> io::Result<Self> {
        let writer = LogWriter::open(&options.output, options.queue_bytes)?;
        Ok(Self::new(options, writer))
    }

    /// The device's writer (for its `dropped` and `written` counters).
    pub fn writer(&self) -> &LogWriter {
        &self.writer
    }

    /// Whether `event` is logged.
    pub fn logs(&self, event: LogPhase) -> bool {
        self.events.contains(event.phase())
    }

    /// The device alone as a Tower layer (see [`StructuredLoggingLayer`]).
    pub fn into_layer(self) -> StructuredLoggingLayer {
        StructuredLoggingLayer::new(self)
    }

    /// The request headers to log (`include_headers`).
    fn capture(&self, headers: &HeaderMap) -> Capture {
        let mut captured = Vec::new();
        if self.allowed_headers.is_empty() {
            captured.reserve_exact(headers.len());
            for name in headers.keys() {
                self.capture_header(headers, name, &mut captured);
            }
        } else {
            for name in self.allowed_headers.iter() {
                self.capture_header(headers, name, &mut captured);
            }
        }
        Capture {
            device: self.id,
            headers: Some(captured),
            response: None,
        }
    }

    fn capture_header(
        &self,
        headers: &HeaderMap,
        name: &HeaderName,
        out: &mut Vec<CapturedHeader>,
    ) {
        let redacted = self.redacted_headers.contains(name);
        for value in headers.get_all(name) {
            out.push((name.clone(), (!redacted).then(|| value.clone())));
        }
    }

    fn stored<'c>(&self, ctx: &'c RequestCtx) -> Option<&'c Capture> {
        let captures = ctx.extensions.get::<Captures>()?;
        std::iter::once(&captures.first)
            .chain(&captures.more)
            .find(|c| c.device == self.id)
    }

    fn stored_mut<'c>(&self, ctx: &'c mut RequestCtx) -> Option<&'c mut Capture> {
        let captures = ctx.extensions.get_mut::<Captures>()?;
        std::iter::once(&mut captures.first)
            .chain(&mut captures.more)
            .find(|c| c.device == self.id)
    }

    fn store(&self, ctx: &mut RequestCtx, capture: Capture) {
        match ctx.extensions.get_mut::<Captures>() {
            Some(captures) => captures.more.push(capture),
            None => {
                ctx.extensions.insert(Captures {
                    first: capture,
                    more: Vec::new(),
                });
            }
        }
    }

    /// Formats one line and queues it; never blocks.
    fn emit(
        &self,
        phase: LogPhase,
        ctx: &RequestCtx,
        capture: Option<&Capture>,
        event: &Event<'_>,
    ) {
        let ts = Timestamp::now();
        let identity = match &self.identity {
            None => None,
            Some(None) => Some(None),
            Some(Some(extract)) => Some(extract(ctx)),
        };
        let info = ctx.info();
        let elapsed = info.started.elapsed();
        let record = Record {
            ts: ts.as_str(),
            event: phase.as_str(),
            request_id: info.request_id.as_bytes(),
            method: info.method.as_str(),
            path: info.uri.path(),
            status: event.status,
            duration_ms: (elapsed.as_micros() as f64) / 1000.0,
            route: ctx.route.as_deref(),
            upstream: ctx.service.as_deref(),
            origin: event.origin.or(ctx.origin).map(Origin::as_str),
            peer: info.peer,
            bytes_in: info.received.get(),
            bytes_out: event.bytes_out,
            complete: event.complete,
            error: event.error.map(|error| ErrorRecord {
                kind: error.kind().as_str(),
                message: error,
            }),
            headers: self
                .include_headers
                .then(|| capture.and_then(|c| c.headers.as_deref().map(HeaderFields))),
            identity: identity.as_ref().map(Option::as_ref),
        };
        // What devices (WASM guests) logged for the request since its previous line.
        for log in info.device_logs.take() {
            let log = DeviceLogRecord {
                ts: ts.as_str(),
                request_id: record.request_id,
                device: &log.device,
                level: log.level,
                message: &log.message,
            };
            self.queue(|line| log.write(line));
        }
        self.queue(|line| record.write(line));
    }

    /// Writes one line into a buffer from the writer's pool and queues it; never blocks.
    #[inline]
    fn queue(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut line = self.writer.buffer();
        write(&mut line);
        line.push(b'\n');
        self.writer.send(line);
    }
}

impl Device for StructuredLogging {
    fn name(&self) -> &str {
        "structured_logging"
    }

    fn phases(&self) -> Phases {
        self.phases
    }

    /// Captures the headers (when enabled) for later lines, and writes the `request` line if
    /// configured. (Without either, the device does not take part in this phase.)
    fn on_request(&self, ctx: &mut RequestCtx, req: &mut request::Parts) -> DeviceResult {
        let capture = self.include_headers.then(|| self.capture(&req.headers));
        if self.events.contains(Phase::Request) {
            self.emit(LogPhase::Request, ctx, capture.as_ref(), &Event::default());
        }
        // Only later events read the capture.
        if let Some(capture) = capture
            && self.events != Phases::only(Phase::Request)
        {
            self.store(ctx, capture);
        }
        Ok(Flow::Continue)
    }

    fn before_proxy(&self, ctx: &mut RequestCtx, _req: &mut request::Parts) -> DeviceResult {
        self.emit(
            LogPhase::BeforeProxy,
            ctx,
            self.stored(ctx),
            &Event::default(),
        );
        Ok(Flow::Continue)
    }

    fn after_proxy(&self, ctx: &mut RequestCtx, res: &mut response::Parts) -> DeviceResult {
        let event = Event {
            status: Some(res.status.as_u16()),
            origin: Some(Origin::Upstream),
            ..Event::default()
        };
        self.emit(LogPhase::AfterProxy, ctx, self.stored(ctx), &event);
        Ok(Flow::Continue)
    }

    /// Notes the response as this device sees it (later devices may still change it); the
    /// `response` line is written at `on_complete`, with the bytes that went out.
    fn on_response(
        &self,
        ctx: &mut RequestCtx,
        res: &mut ResponseCtx<'_>,
    ) -> Result<(), DeviceError> {
        let answered = Answered {
            status: res.head.status.as_u16(),
            origin: res.origin,
        };
        match self.stored_mut(ctx) {
            Some(capture) => capture.response = Some(answered),
            // No `on_request` ran for this request (another device answered first, or the
            // framing guard refused it).
            None => self.store(
                ctx,
                Capture {
                    device: self.id,
                    headers: None,
                    response: Some(answered),
                },
            ),
        }
        Ok(())
    }

    fn on_error(&self, ctx: &mut RequestCtx, error: &Error) {
        let event = Event {
            status: Some(error.status().as_u16()),
            // The response that follows is the error's.
            origin: Some(Origin::Error),
            error: Some(error),
            ..Event::default()
        };
        self.emit(LogPhase::Error, ctx, self.stored(ctx), &event);
    }

    /// Writes the `response` line: the response as noted at `on_response`, and the body bytes
    /// that actually went in and out.
    fn on_complete(&self, ctx: &RequestCtx, transfer: &Transfer) {
        let capture = self.stored(ctx);
        let Some(answered) = capture.and_then(|c| c.response) else {
            return;
        };
        let event = Event {
            status: Some(answered.status),
            bytes_out: Some(transfer.bytes_out),
            complete: Some(transfer.complete),
            origin: Some(answered.origin),
            error: None,
        };
        self.emit(LogPhase::Response, ctx, capture, &event);
    }

    /// Waits (up to two seconds) for the queued lines to reach the output.
    fn flush(&self) {
        if let Err(e) = self.writer.flush(std::time::Duration::from_secs(2)) {
            tracing::warn!(error = %e, "structured log lines may be lost at shutdown");
        }
    }
}

impl fmt::Debug for StructuredLogging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StructuredLogging")
            .field("events", &self.events)
            .field("include_headers", &self.include_headers)
            .field("allowed_headers", &self.allowed_headers)
            .field("redacted_headers", &self.redacted_headers)
            .field("include_identity", &self.identity.is_some())
            .field("writer", &self.writer)
            .finish()
    }
}
