//! Where the binary's text goes, without ever dying of it: `println!` and `eprintln!` panic when
//! the other end of a pipe has gone (`hearsay run 2>&1 | head`, a log shipper restarting), and
//! with `panic = "abort"` that killed the node. Here a write that fails is dropped and counted.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Log lines that could not be written since the last one that could.
static DROPPED_LOG_LINES: AtomicU64 = AtomicU64::new(0);

/// Writes `text` to stdout; a failure (a closed pipe) is ignored.
pub fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes `text` to stderr; a failure is ignored.
pub fn stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The log's writer: stderr, where a line that cannot be written is dropped and counted, and the
/// next line that can be says how many were lost.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        let dropped = DROPPED_LOG_LINES.load(Ordering::Relaxed);
        if dropped > 0 {
            let notice =
                format!("hearsay: {dropped} log line(s) dropped: stderr was not writable\n");
            if err.write_all(notice.as_bytes()).is_ok() {
                DROPPED_LOG_LINES.fetch_sub(dropped, Ordering::Relaxed);
            }
        }
        if err.write_all(line).is_err() {
            DROPPED_LOG_LINES.fetch_add(1, Ordering::Relaxed);
        }
        // Never an error: the subscriber would report it by writing to stderr again.
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().lock().flush();
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_write_never_fails() {
        let mut writer = LogWriter;
        assert_eq!(writer.write(b"a line\n").unwrap(), 7);
        assert!(writer.flush().is_ok());
    }
}
