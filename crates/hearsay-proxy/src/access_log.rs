//! The access log: one JSON line per request, written off the request path. A request's end puts
//! its entry on a bounded channel (`try_send`: a full channel drops the line and counts it); one
//! writer task formats and writes, flushing whenever the channel runs empty, and reopens its file
//! on request (SIGHUP, for logrotate).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::TraceId;
use serde::Serialize;
use tokio::sync::mpsc;

/// Lines waiting for the writer at most; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 8192;

/// One request, as its access log line says it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) time: SystemTime,
    pub(crate) client: SocketAddr,
    pub(crate) listener: Arc<str>,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) status: u16,
    /// The response was written whole (not: the client left, or the backend broke off).
    pub(crate) complete: bool,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration_nanos: u64,
    pub(crate) upstream_nanos: Option<u64>,
    pub(crate) backend: Option<Arc<crate::upstream::Backend>>,
    pub(crate) attempts: u32,
    pub(crate) connection: u64,
    pub(crate) request_index: u64,
    pub(crate) trace_id: Option<TraceId>,
}

/// The line as written: field names are the log's interface.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client: String,
    listener: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    complete: bool,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    backend: Option<&'a str>,
    retries: u32,
    connection_id: u64,
    request_index: u64,
    trace_id: Option<String>,
}

impl Entry {
    fn write_json(&self, out: &mut Vec<u8>) {
        let millis = |nanos: u64| (nanos / 1_000) as f64 / 1_000.0;
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            client: self.client.ip().to_string(),
            listener: &self.listener,
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            complete: self.complete,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: millis(self.duration_nanos),
            upstream_ms: self.upstream_nanos.map(millis),
            backend: self
                .backend
                .as_deref()
                .map(|backend| backend.address.as_str()),
            retries: self.attempts.saturating_sub(1),
            connection_id: self.connection,
            request_index: self.request_index,
            trace_id: self.trace_id.map(|id| format!("{id:032x}")),
        };
        // Serializing plain fields into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
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
    Reopen,
}

/// The request side of the access log.
#[derive(Debug)]
pub struct AccessLog {
    sender: mpsc::Sender<Message>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Message>>>,
    target: Target,
    /// Lines dropped because the writer was behind.
    pub dropped: AtomicU64,
    /// Lines written.
    pub written: Arc<AtomicU64>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Entry(_) => "Entry",
            Message::Reopen => "Reopen",
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
            dropped: AtomicU64::new(0),
            written: Arc::new(AtomicU64::new(0)),
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

    /// Opens the target and starts the writer (once). The file is opened here, so a path that
    /// cannot be written is an error at start, not a silent loss.
    pub fn start(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| std::io::Error::other("the access log writer runs already"))?;
        let output = Output::open(&self.target)?;
        let written = Arc::clone(&self.written);
        Ok(tokio::spawn(write_lines(
            receiver,
            output,
            self.target.clone(),
            written,
        )))
    }

    /// Asks the writer to reopen its file (after logrotate moved it). Waits only if the queue is
    /// full, for room.
    pub async fn reopen(&self) {
        let _ = self.sender.send(Message::Reopen).await;
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

/// The writer task: lines are gathered while they keep coming and written in one call when the
/// queue runs empty (or 64 KiB have gathered).
async fn write_lines(
    mut receiver: mpsc::Receiver<Message>,
    mut output: Output,
    target: Target,
    written: Arc<AtomicU64>,
) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut lines = 0u64;
    let mut failing = false;
    while let Some(message) = receiver.recv().await {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            match message {
                Message::Entry(entry) => {
                    entry.write_json(&mut buffer);
                    lines += 1;
                }
                Message::Reopen => {
                    flush(&mut output, &mut buffer, &mut lines, &written, &mut failing);
                    match Output::open(&target) {
                        Ok(reopened) => {
                            output = reopened;
                            tracing::info!(target = ?target, "access log reopened");
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot reopen the access log; writing to the file open before")
                        }
                    }
                }
            }
            if buffer.len() >= 64 * 1024 {
                flush(&mut output, &mut buffer, &mut lines, &written, &mut failing);
            }
            next = receiver.try_recv().ok();
        }
        flush(&mut output, &mut buffer, &mut lines, &written, &mut failing);
    }
}

fn flush(
    output: &mut Output,
    buffer: &mut Vec<u8>,
    lines: &mut u64,
    written: &AtomicU64,
    failing: &mut bool,
) {
    if buffer.is_empty() {
        return;
    }
    match output.write_all(buffer) {
        Ok(()) => {
            written.fetch_add(*lines, Ordering::Relaxed);
            *failing = false;
        }
        Err(error) => {
            // One line per run of failures (a full disk fails every write).
            if !*failing {
                tracing::warn!(%error, lines = *lines, "cannot write the access log; lines lost");
            }
            *failing = true;
        }
    }
    buffer.clear();
    *lines = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_holds_every_field() {
        let entry = Entry {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            client: "192.0.2.7:40000".parse().unwrap(),
            listener: Arc::from("web"),
            method: http::Method::POST,
            path: "/a?b=\"c\"".to_owned(),
            status: 201,
            complete: true,
            bytes_in: 12,
            bytes_out: 34,
            duration_nanos: 1_234_567,
            upstream_nanos: Some(1_000_000),
            backend: None,
            attempts: 2,
            connection: 9,
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
}
