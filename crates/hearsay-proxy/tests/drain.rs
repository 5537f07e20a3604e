//! How connections end when the server ends them gracefully: a lingering close (no TCP reset
//! for a request already on its way), and a drain that spreads the closes of idle connections and
//! still answers a request that arrives on one before its turn.

mod support;

use std::time::{Duration, Instant};

use support::{Backend, Client, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads for `window` after the server's end of stream; an error (a reset) is returned.
async fn reset_within(client: &mut Client, window: Duration) -> Option<std::io::Error> {
    let deadline = tokio::time::Instant::now() + window;
    let mut buffer = [0u8; 1024];
    // (The deadline is checked here: a read that is always ready, at end of stream, would never
    // let `timeout_at` expire.)
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, client.stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Err(error)) => return Some(error),
            // End of stream (read again: a reset would show on a later read) or late bytes.
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    None
}

/// A backend that answers every request with a 1 MiB body.
async fn big_backend() -> std::net::SocketAddr {
    support::raw_backend(|mut stream| async move {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                buffer.drain(..end + 4);
                let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
                answer.resize(answer.len() + BIG, b'a');
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

const BIG: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_is_not_destroyed_by_closing_on_a_request_the_server_will_not_read() {
    // One request per connection: a second request sent behind it is never read. Closing
    // with it unread would send a reset and throw away what of the first response is still in
    // the socket's send buffer; a lingering close lets the client read it all.
    let backend = big_backend().await;
    let proxy = TestProxy::start("max_requests_per_connection = 1", &[backend], "").await;
    for round in 0..3 {
        let mut client = Client::connect(proxy.address).await;
        client.send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 65536];
        // The answer is coming; the next request goes out behind it (hyper no longer reads).
        let n = tokio::time::timeout(Duration::from_secs(5), client.stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        received.extend_from_slice(&buffer[..n]);
        client.send(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n").await;
        // A slow reader: the response fills the socket buffers before it reads on.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let result = loop {
            match tokio::time::timeout(Duration::from_secs(5), client.stream.read(&mut buffer))
                .await
                .expect("bytes or the end within 5 s")
            {
                Ok(0) => break Ok(()),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(error) => break Err(error),
            }
        };
        let head_end = received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |at| at + 4);
        assert!(
            result.is_ok() && received.len() - head_end == BIG,
            "round {round}: {result:?} after {} of {BIG} body bytes",
            received.len().saturating_sub(head_end)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_spreads_idle_closes_and_answers_requests_that_arrive_before_their_turn() {
    let backend = Backend::start("a").await;
    // Closes a second apart: the requests below are written before the first, however slowly.
    let proxy = TestProxy::start_with_node("close_spread = \"4s\"", &[backend.address]).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = Client::connect(proxy.address).await;
        assert_eq!(client.get("/").await.status, 200);
        clients.push(client);
    }
    let shutdown = {
        let proxy = proxy.proxy.clone();
        tokio::spawn(async move { proxy.shutdown(Duration::from_secs(10)).await })
    };
    let started = Instant::now();
    // The drain has begun once the listener is gone.
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(proxy.address).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Each idle connection closes at its moment of the spread: 1, 2, 3, 4 s. A request
    // arriving first is answered, with Connection: close; one arriving as its connection closes
    // meets a clean end of stream, never a reset.
    let mut answered = 0;
    for client in &mut clients {
        client
            .stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
    }
    let mut closed_at = Vec::new();
    for client in &mut clients {
        if let Some(response) = client.read_response().await {
            assert_eq!(response.status, 200);
            assert_eq!(response.header("connection"), Some("close"));
            answered += 1;
        }
        assert!(client.wait_closed(Duration::from_secs(6)).await.is_some());
        closed_at.push(started.elapsed());
        assert!(reset_within(client, Duration::from_millis(50))
            .await
            .is_none());
    }
    assert!(answered >= 2, "answered {answered} of 4");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();

    // Without requests, the closes themselves are spread (at 1, 2, 3, 4 s): the last is at least
    // 2 s after the first (its moment comes no earlier, however busy the machine; the first may
    // be seen a second late).
    let proxy = TestProxy::start_with_node("close_spread = \"4s\"", &[backend.address]).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut client = Client::connect(proxy.address).await;
        assert_eq!(client.get("/").await.status, 200);
        idle.push(client);
    }
    let shutdown = {
        let proxy = proxy.proxy.clone();
        tokio::spawn(async move { proxy.shutdown(Duration::from_secs(10)).await })
    };
    let started = Instant::now();
    let mut closes = Vec::new();
    for client in &mut idle {
        assert!(client.wait_closed(Duration::from_secs(6)).await.is_some());
        closes.push(started.elapsed());
    }
    closes.sort();
    assert!(
        closes[3] - closes[0] >= Duration::from_secs(2),
        "closes at {closes:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
}
