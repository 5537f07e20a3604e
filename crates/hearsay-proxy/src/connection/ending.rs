//! The endings of a connection that need more than dropping the socket: the lingering close, and
//! the answers written straight to the socket (408 for a slow head, 429 over the client's cap).
//! They are rare, so the connection task boxes their futures: their buffers would otherwise
//! enlarge every connection's task.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::io::{ClientIo, TrackedIo};

/// Takes in what the client already sent (without waiting), then closes: the best a close can
/// do when too many connections linger already.
pub(super) async fn discard_ready(mut io: TrackedIo<ClientIo>) {
    use tokio::io::AsyncReadExt as _;
    let mut discard = [0u8; 1024];
    for _ in 0..64 {
        match tokio::time::timeout(Duration::ZERO, io.read(&mut discard)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => return,
        }
    }
}

/// How long a gracefully closed connection keeps reading what its client still sends, at most,
/// and how long it waits for a next byte (or the client's close).
const LINGER_MAX: Duration = Duration::from_secs(2);
const LINGER_QUIET: Duration = Duration::from_millis(500);

/// Lingering close, as NGINX does: our side is shut down (the client has our FIN); what the
/// client still sends — a request already on its way when we closed — is read and dropped until
/// the client closes too, or goes quiet. Closing with unread bytes, or with bytes still to
/// arrive, would answer them with a TCP reset, which can also destroy a response the client has
/// not read yet; after a lingering close the client sees a clean end of stream and retries.
/// Shuts the write side (over TLS: sends `close_notify` first), waiting at most 100 ms: a client
/// that stopped reading (its window full) must not hold the task, its per-client place and the
/// node's shutdown forever.
pub(super) async fn shut_write(io: &mut TrackedIo<ClientIo>) {
    let _ = tokio::time::timeout(SHUT_WRITE_MAX, tokio::io::AsyncWriteExt::shutdown(io)).await;
}

/// How long closing the write side may wait for the socket to take `close_notify`.
const SHUT_WRITE_MAX: Duration = Duration::from_millis(100);

pub(super) async fn linger_close(mut io: TrackedIo<ClientIo>, abort: &CancellationToken) {
    use tokio::io::AsyncReadExt as _;
    // Usually shut down already (hyper, or the parked close); not after hyper's own 400/431.
    shut_write(&mut io).await;
    let give_up = tokio::time::Instant::now() + LINGER_MAX;
    let mut discard = [0u8; 1024];
    loop {
        let quiet_until = (tokio::time::Instant::now() + LINGER_QUIET).min(give_up);
        tokio::select! {
            biased;
            _ = abort.cancelled() => return,
            read = tokio::time::timeout_at(quiet_until, io.read(&mut discard)) => match read {
                Ok(Ok(read)) if read > 0 => {}
                // The client closed (or the socket failed), or it went quiet: done.
                _ => return,
            },
        }
    }
}

/// Writes the 408 answer to a request head that did not arrive in time, and closes. Bounded: a
/// client that does not read gets nothing after a moment. Whether the answer was written whole.
pub(super) async fn answer_request_timeout(io: &mut TrackedIo<ClientIo>) -> bool {
    use tokio::io::AsyncWriteExt as _;
    let write = async {
        io.write_all(crate::error::REQUEST_TIMEOUT).await?;
        io.shutdown().await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), write).await,
        Ok(Ok(()))
    )
}

/// Writes the 429 of an over-limit connection and closes, taking in (and dropping) what the
/// client sends meanwhile for a moment, so its request does not meet a closed socket (a reset
/// that could cost it the answer). Bounded: a client that neither reads nor closes is dropped
/// after a second. Whether the answer was written whole.
pub(super) async fn answer_over_limit(io: &mut TrackedIo<ClientIo>) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut written = false;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(crate::error::TOO_MANY_CONNECTIONS).await?;
        io.shutdown().await?;
        written = true;
        let mut sink = [0u8; 2048];
        let mut total = 0;
        loop {
            let read = io.read(&mut sink).await?;
            total += read;
            if read == 0 || total > 64 * 1024 {
                return Ok::<(), std::io::Error>(());
            }
        }
    })
    .await;
    written
}
