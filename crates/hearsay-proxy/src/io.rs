//! Client sockets: [`ClientStream`] joins the reactor only when it first has to wait,
//! [`ClientIo`] is that socket bare (HTTP) or under TLS (HTTPS), and [`TrackedIo`] records when
//! bytes (of HTTP, decrypted) last moved, so the connection task can tell an idle connection from
//! a slow one without waking on every read.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::registry::Connection;

pin_project_lite::pin_project! {
    pub(crate) struct TrackedIo<T> {
        #[pin]
        inner: T,
        connection: Arc<Connection>,
        // Bytes read off the socket by an earlier hyper connection and not parsed by it; read
        // again before the socket.
        unread: Bytes,
    }
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, connection: Arc<Connection>) -> Self {
        TrackedIo {
            inner,
            connection,
            unread: Bytes::new(),
        }
    }

    /// Puts bytes back in front of what the socket gives next.
    pub(crate) fn rewind(&mut self, bytes: Bytes) {
        debug_assert!(self.unread.is_empty());
        self.unread = bytes;
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.unread.is_empty() {
            let take = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(take));
            this.connection.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.connection.on_read();
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            this.connection.on_write();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            this.connection.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.connection.parking.load(Ordering::Relaxed) {
            // hyper is done with the socket (and has flushed what it had to write before it
            // asks for the shutdown), the connection is not: it is being parked.
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_shutdown(cx)
    }
}

/// An accepted client socket that joins the reactor (epoll) only when it first has to wait.
///
/// A short connection rarely waits on its client: the request is already in the socket buffer
/// when it is accepted and the response fits the send buffer. Served directly with non-blocking
/// calls it never costs the two `epoll_ctl` calls of a registration, and the client's packets
/// wake nobody (HAProxy does the same). The first `WouldBlock` registers the socket with tokio
/// and everything after goes through it.
pub(crate) enum ClientStream {
    /// Not registered yet (non-blocking). `None` only if registering failed half-way.
    Direct(Option<std::net::TcpStream>),
    Registered(tokio::net::TcpStream),
}

impl ClientStream {
    /// `stream` must be in non-blocking mode.
    pub(crate) fn new(stream: std::net::TcpStream) -> Self {
        ClientStream::Direct(Some(stream))
    }

    /// Hands the socket to the reactor; from now on readiness comes from epoll.
    fn register(&mut self) -> io::Result<&mut tokio::net::TcpStream> {
        if let ClientStream::Direct(direct) = self {
            let stream = direct.take().ok_or_else(gone)?;
            *self = ClientStream::Registered(tokio::net::TcpStream::from_std(stream)?);
        }
        match self {
            ClientStream::Registered(stream) => Ok(stream),
            ClientStream::Direct(_) => Err(gone()),
        }
    }

    /// Ready when the client has sent something (or closed); registers the socket if needed.
    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.register()?.poll_read_ready(cx)
    }

    /// Runs `op` on the unregistered socket; `None` means it would block (and the socket is
    /// now registered, so the caller polls it through tokio).
    fn direct<R>(
        &mut self,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<R>,
    ) -> Option<io::Result<R>> {
        let ClientStream::Direct(direct) = self else {
            return None;
        };
        let Some(stream) = direct.as_ref() else {
            return Some(Err(gone()));
        };
        loop {
            match op(stream) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return self.register().err().map(Err);
                }
                result => return Some(result),
            }
        }
    }
}

/// Most bytes one direct (unregistered) read takes.
const DIRECT_READ: usize = 4096;

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "client socket lost while registering",
    )
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let ClientStream::Direct(_) = this {
            // Safe reads need initialised memory. A zeroed buffer on the stack, copied from,
            // leaves hyper's 8 KiB read buffer untouched beyond the bytes received: zeroing that
            // buffer itself would make it resident for every connection, which shows in memory
            // per idle connection. A head longer than this takes another read.
            let mut bounce = [0u8; DIRECT_READ];
            let room = buf.remaining().min(DIRECT_READ);
            match this.direct(|mut stream| stream.read(&mut bounce[..room])) {
                Some(Ok(read)) => {
                    buf.put_slice(&bounce[..read]);
                    return Poll::Ready(Ok(()));
                }
                Some(Err(error)) => return Poll::Ready(Err(error)),
                None => {}
            }
        }
        match this {
            ClientStream::Registered(stream) => Pin::new(stream).poll_read(cx, buf),
            ClientStream::Direct(_) => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(result) = this.direct(|mut stream| stream.write(buf)) {
            return Poll::Ready(result);
        }
        match this {
            ClientStream::Registered(stream) => Pin::new(stream).poll_write(cx, buf),
            ClientStream::Direct(_) => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: writes go straight to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Direct(Some(stream)) => Poll::Ready(stream.shutdown(Shutdown::Write)),
            ClientStream::Direct(None) => Poll::Ready(Err(gone())),
            ClientStream::Registered(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// A client connection as hyper sees it: the socket itself, or a TLS session over it. The TLS
/// session is boxed (rustls' state is a few hundred bytes before its buffers), so a plain
/// connection's task does not grow, and plain reads and writes cost one match.
pub(crate) enum ClientIo {
    Plain(ClientStream),
    Tls(Box<TlsStream<ClientStream>>),
}

impl ClientIo {
    /// Ready when hyper has something to read: bytes (or the close) on the socket, or, under TLS,
    /// plaintext rustls decrypted already or the client's `close_notify`. A parked connection
    /// waits on this; rustls keeps the session meanwhile.
    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientIo::Plain(stream) => stream.poll_read_ready(cx),
            ClientIo::Tls(tls) => {
                let (socket, session) = tls.get_mut();
                match session.process_new_packets() {
                    Ok(state)
                        if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() =>
                    {
                        socket.poll_read_ready(cx)
                    }
                    // Something to read, or an error hyper will meet when it reads.
                    _ => Poll::Ready(Ok(())),
                }
            }
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ClientIo::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ClientIo::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ClientIo::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    /// Under TLS: `close_notify` first, then the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ClientIo::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}
