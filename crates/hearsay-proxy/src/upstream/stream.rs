//! An upstream connection's transport: plain TCP, or TLS over TCP (rustls).
//!
//! One enum rather than a boxed trait object: the plain path is one match arm away from the
//! socket (no allocation, no dynamic call), and the TLS state (rustls' buffers and keys, over a
//! kilobyte) is boxed so a plain connection stays as small as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to a backend.
#[derive(Debug)]
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl From<TcpStream> for UpstreamStream {
    fn from(stream: TcpStream) -> Self {
        UpstreamStream::Plain(stream)
    }
}

impl UpstreamStream {
    /// Whether the socket has bytes to read or was closed, from the readiness the reactor
    /// recorded (no system call). Over TLS this is the TCP socket's: an idle connection gets
    /// nothing (TLS 1.3 session tickets arrive before the first response and are read with it),
    /// so readiness means the backend sent a close (`close_notify`, FIN) or something unasked.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            UpstreamStream::Plain(stream) => stream.poll_read_ready(cx),
            UpstreamStream::Tls(stream) => stream.get_ref().0.poll_read_ready(cx),
        }
    }
}

/// A TLS connection leaves with a `close_notify` (a backend then tells a clean close from a
/// truncation), written if the socket takes it at once: dropping never waits.
impl Drop for UpstreamStream {
    fn drop(&mut self) {
        if let UpstreamStream::Tls(stream) = self {
            let (socket, session) = stream.get_mut();
            session.send_close_notify();
            let _ = session.write_tls(&mut WriteNow(socket));
        }
    }
}

/// Writes to a socket only what it takes without waiting.
struct WriteNow<'a>(&'a TcpStream);

impl io::Write for WriteNow<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.try_write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_write(cx, bytes),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, bytes),
        }
    }

    /// A no-op for TCP; over TLS, writes the records rustls still holds.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(_) => Poll::Ready(Ok(())),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
