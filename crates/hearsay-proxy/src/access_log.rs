//! The access log: one JSON line per request, written off the request path. A request's end puts
//! its entry on a bounded channel (`try_send`: a full channel drops the line and counts it); one
//! writer thread formats and writes, in one call whenever the channel runs empty, reopens its
//! file on request (SIGHUP, for logrotate) and writes what is queued at shutdown.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::TraceId;
use tokio::sync::mpsc;

/// Lines waiting for the writer at most; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 8192;
/// How often the writer takes what is queued.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// A logged path (with its query) is cut to this many bytes.
pub const MAX_PATH: usize = 4096;

/// One request, as its access log line says it, or an answer the proxy wrote outside a request
/// it read whole (no method, no path: see [`Entry::without_request`]).
#[derive(Debug)]
pub(crate) struct Entry {
    /// When the request began (its head was read; for an answer without a request, when its
    /// first byte arrived, else when the connection was accepted).
    pub(crate) time: SystemTime,
    pub(crate) client: SocketAddr,
    pub(crate) listener: Arc<str>,
    pub(crate) method: Option<http::Method>,
    pub(crate) path: Option<String>,
    pub(crate) status: u16,
    /// The response was written whole (not: the client left, or the backend broke off).
    pub(crate) complete: bool,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration_nanos: u64,
    pub(crate) upstream_nanos: Option<u64>,
    pub(crate) backend: Option<Arc<crate::upstream::Backend>>,
    pub(crate) attempts: u32,
    /// `None`: refused at accept, before the connection had an id.
    pub(crate) connection: Option<u64>,
    pub(crate) request_index: u64,
    pub(crate) trace_id: Option<TraceId>,
}

impl Entry {
    /// An answer the proxy wrote itself, outside any request it read whole: the 429 of a
    /// connection over its client's limit, the 408 of a head that came too slowly, hyper's 400,
    /// 414 or 431 to a head it could not parse. `duration_nanos` ran until the answer was
    /// written; the line's time is that much earlier. The rest is set by the caller.
    pub(crate) fn without_request(
        client: SocketAddr,
        listener: Arc<str>,
        status: u16,
        duration_nanos: u64,
    ) -> Entry {
        let now = SystemTime::now();
        Entry {
            time: now
                .checked_sub(std::time::Duration::from_nanos(duration_nanos))
                .unwrap_or(now),
            client,
            listener,
            method: None,
            path: None,
            status,
            complete: true,
            bytes_in: 0,
            bytes_out: 0,
            duration_nanos,
            upstream_nanos: None,
            backend: None,
            attempts: 0,
            connection: None,
            request_index: 1,
            trace_id: None,
        }
    }

    /// The line as written (field names are the log's interface), by hand: the writer thread
    /// shares the node's cores, and `format!` and a serde struct of `String`s cost a line
    /// several times what writing the bytes does.
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut numbers = itoa::Buffer::new();
        let mut number =
            |out: &mut Vec<u8>, value: u64| out.extend_from_slice(numbers.format(value).as_bytes());
        out.extend_from_slice(b"{\"time\":\"");
        // RFC 3339 UTC with milliseconds (`2026-12-03T15:19:46.276Z`; humantime panics on a
        // time before 1970, which only a clock set wrong gives).
        let time = self.time.max(SystemTime::UNIX_EPOCH);
        let _ = write!(out, "{}", humantime::format_rfc3339_millis(time));
        out.extend_from_slice(b"\",\"client\":\"");
        match self.client.ip() {
            std::net::IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    number(out, u64::from(octet));
                }
            }
            ip @ std::net::IpAddr::V6(_) => {
                let _ = write!(out, "{ip}");
            }
        }
        out.extend_from_slice(b"\",\"listener\":");
        json_string(out, &self.listener);
        out.extend_from_slice(b",\"method\":");
        match &self.method {
            Some(method) => json_string(out, method.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"path\":");
        match &self.path {
            Some(path) => json_string(out, path),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"status\":");
        number(out, u64::from(self.status));
        out.extend_from_slice(if self.complete {
            b",\"complete\":true"
        } else {
            b",\"complete\":false"
        });
        out.extend_from_slice(b",\"bytes_in\":");
        number(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        number(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        write_millis(out, self.duration_nanos);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_nanos {
            Some(nanos) => write_millis(out, nanos),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"backend\":");
        match &self.backend {
            Some(backend) => json_string(out, &backend.address),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"retries\":");
        number(out, u64::from(self.attempts.saturating_sub(1)));
        out.extend_from_slice(b",\"connection_id\":");
        match self.connection {
            Some(id) => number(out, id),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"request_index\":");
        number(out, self.request_index);
        out.extend_from_slice(b",\"trace_id\":");
        match self.trace_id {
            Some(id) => {
                out.push(b'"');
                out.extend_from_slice(crate::trace::trace_id_hex(id).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}\n");
    }
}

/// A JSON string: copied as it is when it needs no escape (the usual case), else by serde_json.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if text
        .bytes()
        .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// Milliseconds with three decimals (microsecond precision) from nanoseconds.
fn write_millis(out: &mut Vec<u8>, nanos: u64) {
    let micros = nanos / 1_000;
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(numbers.format(micros / 1_000).as_bytes());
    let fraction = micros % 1_000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stderr,
    File(PathBuf),
}

impl From<&hearsay_config::AccessLog> for Target {
    fn from(config: &hearsay_config::AccessLog) -> Target {
        match config {
            hearsay_config::AccessLog::Stderr => Target::Stderr,
            hearsay_config::AccessLog::File(path) => Target::File(path.clone()),
        }
    }
}

enum Message {
    Entry(Box<Entry>),
    /// Look at the reopen flag now (SIGHUP while the log is quiet).
    Wake,
    /// Write what is queued and stop; the sender hears when it is done.
    Close(std::sync::mpsc::Sender<()>),
}

/// The request side of the access log.
#[derive(Debug)]
pub struct AccessLog {
    sender: mpsc::Sender<Message>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Message>>>,
    target: Target,
    /// Set by [`AccessLog::reopen`], taken by the writer before its next write.
    reopen: Arc<AtomicBool>,
    /// Lines dropped because the writer was behind.
    pub dropped: AtomicU64,
    /// Lines written.
    pub written: Arc<AtomicU64>,
    /// Lines lost because writing them failed (a full disk, a closed pipe).
    pub failed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Entry(_) => "Entry",
            Message::Wake => "Wake",
            Message::Close(_) => "Close",
        })
    }
}

impl AccessLog {
    pub(crate) fn new(target: Target) -> AccessLog {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        AccessLog {
            sender,
            receiver: std::sync::Mutex::new(Some(receiver)),
            target,
            reopen: Arc::default(),
            dropped: AtomicU64::new(0),
            written: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// Queues a request's line; never waits.
    pub(crate) fn record(&self, entry: Entry) {
        if self
            .sender
            .try_send(Message::Entry(Box::new(entry)))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens the target and starts the writer (once), on a thread of its own: a write that
    /// blocks (a slow disk, a stderr pipe nobody reads) holds up the log, never the runtime.
    /// The file is opened here, so a path that cannot be written is an error at start.
    pub fn start(&self) -> std::io::Result<()> {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| std::io::Error::other("the access log writer runs already"))?;
        let output = Output::open(&self.target)?;
        let writer = Writer {
            output,
            target: self.target.clone(),
            reopen: Arc::clone(&self.reopen),
            written: Arc::clone(&self.written),
            failed: Arc::clone(&self.failed),
            failing: false,
        };
        std::thread::Builder::new()
            .name("hearsay-access-log".to_owned())
            .spawn(move || writer.run(receiver))?;
        Ok(())
    }

    /// Asks the writer to reopen its file (after logrotate moved it) before its next write.
    /// Never waits.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
        let _ = self.sender.try_send(Message::Wake);
    }

    /// Writes what is queued and stops the writer, waiting at most `grace` (at shutdown, after
    /// the drain: the last requests' lines are not lost).
    pub async fn close(&self, grace: std::time::Duration) {
        let (done, closed) = std::sync::mpsc::channel();
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, self.sender.send(Message::Close(done)))
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "access log writer behind at shutdown; lines still queued are lost"
            );
            return;
        }
        let wait = tokio::task::spawn_blocking(move || closed.recv_timeout(grace).is_ok());
        if !matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(true))) {
            tracing::warn!(?grace, "access log not written to its end at shutdown");
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }
}

enum Output {
    Stderr,
    File(std::fs::File),
}

impl Output {
    fn open(target: &Target) -> std::io::Result<Output> {
        match target {
            Target::Stderr => Ok(Output::Stderr),
            Target::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Output::File)
                .map_err(|error| {
                    std::io::Error::new(
                        error.kind(),
                        format!("cannot open the access log {}: {error}", path.display()),
                    )
                }),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stderr => std::io::stderr().lock().write_all(bytes),
            Output::File(file) => file.write_all(bytes),
        }
    }
}

/// The writer thread.
struct Writer {
    output: Output,
    target: Target,
    reopen: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// The last write failed (one warning per run of failures).
    failing: bool,
}

impl Writer {
    /// Every [`WRITE_EVERY`] the queue is taken whole and written in one call (or one per
    /// 64 KiB). The writer never waits on the queue: a request that queues a line wakes no
    /// thread (a wake-up per line cost a request more than the rest of its line).
    fn run(mut self, mut receiver: mpsc::Receiver<Message>) {
        let mut buffer = Vec::with_capacity(64 * 1024);
        let mut lines = 0u64;
        loop {
            let mut next = match receiver.try_recv() {
                Ok(message) => Some(message),
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.reopen_if_asked(&mut buffer, &mut lines);
                    std::thread::sleep(WRITE_EVERY);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            };
            while let Some(message) = next.take() {
                match message {
                    Message::Entry(entry) => {
                        self.reopen_if_asked(&mut buffer, &mut lines);
                        entry.write_json(&mut buffer);
                        lines += 1;
                    }
                    Message::Wake => self.reopen_if_asked(&mut buffer, &mut lines),
                    Message::Close(done) => {
                        self.flush(&mut buffer, &mut lines);
                        let _ = done.send(());
                        return;
                    }
                }
                if buffer.len() >= 64 * 1024 {
                    self.flush(&mut buffer, &mut lines);
                }
                next = receiver.try_recv().ok();
            }
            self.flush(&mut buffer, &mut lines);
        }
    }

    /// After SIGHUP: what is gathered goes to the old file, the rest to the file at the path now.
    fn reopen_if_asked(&mut self, buffer: &mut Vec<u8>, lines: &mut u64) {
        if !self.reopen.swap(false, Ordering::Relaxed) {
            return;
        }
        self.flush(buffer, lines);
        match Output::open(&self.target) {
            Ok(reopened) => {
                self.output = reopened;
                tracing::info!(target = ?self.target, "access log reopened");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reopen the access log; writing to the file open before")
            }
        }
    }

    fn flush(&mut self, buffer: &mut Vec<u8>, lines: &mut u64) {
        if buffer.is_empty() {
            return;
        }
        match self.output.write_all(buffer) {
            Ok(()) => {
                self.written.fetch_add(*lines, Ordering::Relaxed);
                self.failing = false;
            }
            Err(error) => {
                self.failed.fetch_add(*lines, Ordering::Relaxed);
                // One line per run of failures (a full disk fails every write).
                if !self.failing {
                    tracing::warn!(%error, lines = *lines, "cannot write the access log; lines lost");
                }
                self.failing = true;
            }
        }
        buffer.clear();
        *lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_that_need_it_are_escaped() {
        for text in [
            "/plain?a=1",
            "/q\"uote",
            "/back\\slash",
            "/tab\there",
            "/ünï",
            "\u{7f}",
        ] {
            let mut out = Vec::new();
            json_string(&mut out, text);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn a_line_holds_every_field() {
        let entry = Entry {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            client: "192.0.2.7:40000".parse().unwrap(),
            listener: Arc::from("web"),
            method: Some(http::Method::POST),
            path: Some("/a?b=\"c\"".to_owned()),
            status: 201,
            complete: true,
            bytes_in: 12,
            bytes_out: 34,
            duration_nanos: 1_234_567,
            upstream_nanos: Some(1_000_000),
            backend: None,
            attempts: 2,
            connection: Some(9),
            request_index: 3,
            trace_id: Some(TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736u128)),
        };
        let mut out = Vec::new();
        entry.write_json(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(line["client"], "192.0.2.7");
        assert_eq!(line["listener"], "web");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/a?b=\"c\"");
        assert_eq!(line["status"], 201);
        assert_eq!(line["complete"], true);
        assert_eq!(line["bytes_in"], 12);
        assert_eq!(line["bytes_out"], 34);
        assert_eq!(line["duration_ms"], 1.234);
        assert_eq!(line["upstream_ms"], 1.0);
        assert_eq!(line["backend"], serde_json::Value::Null);
        assert_eq!(line["retries"], 1);
        assert_eq!(line["connection_id"], 9);
        assert_eq!(line["request_index"], 3);
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_full_queue_drops_lines_and_counts_them() {
        // No writer started: nothing takes the queue.
        let log = AccessLog::new(Target::Stderr);
        let entry =
            || Entry::without_request("192.0.2.7:1".parse().unwrap(), Arc::from("web"), 400, 0);
        for _ in 0..QUEUE_CAPACITY + 10 {
            log.record(entry());
        }
        assert_eq!(log.dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn an_answer_without_a_request_has_null_method_path_and_connection() {
        let before = SystemTime::now();
        let entry = Entry::without_request(
            "[2001:db8::1]:40000".parse().unwrap(),
            Arc::from("web"),
            429,
            2_000_000_000,
        );
        // Its time is when the answer's wait began: two seconds before it was written.
        let written = entry.time + std::time::Duration::from_secs(2);
        assert!(before <= written && written <= SystemTime::now());
        let mut out = Vec::new();
        entry.write_json(&mut out);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["client"], "2001:db8::1");
        assert_eq!(line["method"], serde_json::Value::Null);
        assert_eq!(line["path"], serde_json::Value::Null);
        assert_eq!(line["status"], 429);
        assert_eq!(line["complete"], true);
        assert_eq!(line["duration_ms"], 2000.0);
        assert_eq!(line["upstream_ms"], serde_json::Value::Null);
        assert_eq!(line["retries"], 0);
        assert_eq!(line["connection_id"], serde_json::Value::Null);
        assert_eq!(line["request_index"], 1);
        assert_eq!(line["trace_id"], serde_json::Value::Null);
    }
}
