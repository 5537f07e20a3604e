//! Forwarding over real sockets: proxy headers, 502 and 504, streaming bodies, graceful shutdown,
//! and what the registry shows.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearsay_proxy::{CloseReason, ConnectionState};
use support::{closed_port, wait_until, Backend, Client, TestProxy};
use tokio::io::AsyncWriteExt;

/// Waits at most 10 s: a streaming test must fail, not hang, when bytes stop coming.
async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("no progress within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_balanced_round_robin_over_the_pool() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let proxy = TestProxy::start("", &[one.address, two.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(client.get("/").await.text());
    }
    assert_eq!(
        bodies,
        [
            "hello from one",
            "hello from two",
            "hello from one",
            "hello from two"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_are_rewritten_both_ways() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    client
        .send(
            b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 198.51.100.7\r\n\
              X-Forwarded-Proto: https\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\n\
              Keep-Alive: timeout=3\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\n\
              X-Custom: kept\r\n\r\n",
        )
        .await;
    let response = client.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    let seen = response.text();
    for expected in [
        "host: shop.example",
        "x-forwarded-for: 198.51.100.7, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example",
        "x-custom: kept",
    ] {
        assert!(
            seen.lines().any(|line| line == expected),
            "backend did not see {expected:?}:\n{seen}"
        );
    }
    for removed in ["x-private", "keep-alive", "proxy-authorization", "te:"] {
        assert!(!seen.contains(removed), "backend saw {removed:?}:\n{seen}");
    }
    assert!(
        !seen
            .lines()
            .any(|line| line.starts_with("connection: keep-alive, ")),
        "{seen}"
    );

    let response = client.get("/hop").await;
    assert_eq!(response.header("x-end-to-end"), Some("1"));
    assert_eq!(
        response.header("x-hop"),
        None,
        "header named in the backend's Connection is dropped"
    );
    assert_eq!(
        response.header("keep-alive"),
        Some("timeout=75"),
        "the client sees our keep-alive, not the backend's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_gives_502_and_the_connection_stays_usable() {
    let (_held, dead) = closed_port().await;
    let proxy = TestProxy::start("", &[dead], "").await;
    let mut client = Client::connect(proxy.address).await;
    for _ in 0..2 {
        let response = client.get("/").await;
        assert_eq!(response.status, 502);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(response.text(), "502 bad gateway: backend unreachable\n");
        assert_eq!(response.header("connection"), None);
    }
    assert_eq!(proxy.stats().accepted, 1);
    let retries = &proxy.proxy.pools()[0].stats.retries;
    assert_eq!(
        retries.load(Ordering::SeqCst),
        0,
        "no other backend, so no retry counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_shuts_its_write_side_after_the_request_still_gets_the_response() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    client
        .send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    client.stream.shutdown().await.unwrap();
    let response = bounded(client.read_response()).await.expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slow 200");
    assert!(client.wait_closed(Duration::from_secs(2)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_head_and_pipelined_requests_arriving_at_once_are_all_served() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("max_request_header_size = 32768", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    // 20 KiB of head in one write (more than one read takes), then a second request right behind.
    let big = "x".repeat(20 * 1024);
    let bytes = format!(
        "GET /headers HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\nGET /other HTTP/1.1\r\nHost: a\r\n\r\n"
    );
    client.send(bytes.as_bytes()).await;
    let first = bounded(client.read_response())
        .await
        .expect("first response");
    assert_eq!(first.status, 200);
    assert!(first.text().contains(&format!("x-big: {big}")));
    let second = bounded(client.read_response())
        .await
        .expect("second response");
    assert_eq!(second.text(), "hello from b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_in_time_gives_504() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "response_timeout = \"300ms\"").await;
    let mut client = Client::connect(proxy.address).await;
    let started = Instant::now();
    let response = client.get("/hang").await;
    assert_eq!(response.status, 504);
    assert_eq!(
        response.text(),
        "504 gateway timeout: backend did not answer in time\n"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let response = client.get("/").await;
    assert_eq!(response.status, 200, "the client connection stays usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_stream_without_being_buffered() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    client
        .send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    backend.chunk_sender.send(chunk.clone()).await.unwrap();
    // The head and the first chunk arrive while the backend has not finished its body.
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    while !received.windows(1024).any(|w| w.iter().all(|b| *b == b'x')) {
        bounded(client.stream.readable()).await.unwrap();
        match client.stream.try_read(&mut buffer) {
            Ok(0) => panic!("closed"),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        }
    }
    // Now a large remainder: 32 MiB passes through, read while it is sent.
    let sender = backend.chunk_sender.clone();
    drop(backend);
    tokio::spawn(async move {
        for _ in 0..512 {
            sender.send(chunk.clone()).await.unwrap();
        }
    });
    let mut total = 0usize;
    loop {
        bounded(client.stream.readable()).await.unwrap();
        match client.stream.try_read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                if buffer[..n].ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(total >= 512 * 64 * 1024, "received {total} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_to_the_backend() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    let total: usize = 16 * 1024 * 1024;
    client
        .send(
            format!("POST /count-body HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let chunk = vec![b'y'; 64 * 1024];
    client.stream.write_all(&chunk).await.unwrap();
    // The backend sees the first bytes before the client has sent the rest.
    assert!(
        wait_until(Duration::from_secs(5), || backend
            .body_chunks_seen
            .load(Ordering::SeqCst)
            > 0)
        .await
    );
    for _ in 1..(total / chunk.len()) {
        bounded(client.stream.write_all(&chunk)).await.unwrap();
    }
    let response = client.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), total.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_and_closes_idle_connections_at_once() {
    let backend = Backend::start("b1").await;
    // No close spread: idle connections close the moment the drain begins.
    let proxy = TestProxy::start_with_node("close_spread = \"0s\"", &[backend.address]).await;
    let mut idle = Client::connect(proxy.address).await;
    assert_eq!(idle.get("/").await.status, 200);
    let mut busy = Client::connect(proxy.address).await;
    busy.send(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(wait_until(Duration::from_secs(2), || proxy.stats().active == 1).await);

    let shutdown = {
        let proxy = proxy.proxy.clone();
        tokio::spawn(async move { proxy.shutdown(Duration::from_secs(30)).await })
    };
    let started = Instant::now();
    // At once: while the busy request is still in flight (it takes 3 s).
    assert!(
        idle.wait_closed(Duration::from_secs(2)).await.is_some(),
        "idle connection closed"
    );
    assert_eq!(proxy.stats().active, 1, "the idle one closed first");
    // Our close too: the proxy's lingering close ends at once rather than when we go quiet.
    drop(idle);
    let response = busy
        .read_response()
        .await
        .expect("in-flight request finished");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slow 3000");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(busy.wait_closed(Duration::from_secs(5)).await.is_some());
    drop(busy);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
    // Done when the connections were, not at the end of the 30 s grace.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        tokio::net::TcpStream::connect(proxy.address).await.is_err(),
        "no longer accepting"
    );
    assert_eq!(proxy.stats().closed(CloseReason::Shutdown), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_gives_up_after_the_grace_period() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut stuck = Client::connect(proxy.address).await;
    stuck.send(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(wait_until(Duration::from_secs(2), || proxy.stats().active == 1).await);
    let started = Instant::now();
    proxy.proxy.shutdown(Duration::from_millis(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(stuck.wait_closed(Duration::from_secs(1)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_lists_open_connections_and_counts_them() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut idle = Client::connect(proxy.address).await;
    assert_eq!(idle.get("/").await.status, 200);
    assert_eq!(idle.get("/").await.status, 200);
    let mut busy = Client::connect(proxy.address).await;
    busy.send(b"GET /slow?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(wait_until(Duration::from_secs(2), || proxy.stats().active == 1).await);

    let stats = proxy.stats();
    assert_eq!(
        (
            stats.accepted,
            stats.open,
            stats.active,
            stats.idle,
            stats.requests
        ),
        (2, 2, 1, 1, 3)
    );
    let connections: Vec<_> = proxy
        .proxy
        .registry()
        .connections()
        .iter()
        .map(|c| c.info())
        .collect();
    assert_eq!(connections.len(), 2);
    assert_eq!(connections[0].state, ConnectionState::Idle);
    assert_eq!(connections[0].requests, 2);
    assert_eq!(connections[0].listener, "web");
    assert_eq!(connections[0].client, idle.stream.local_addr().unwrap());
    assert_eq!(connections[1].state, ConnectionState::Active);

    // An operator close is graceful: the busy connection finishes its request first.
    for connection in proxy.proxy.registry().connections() {
        connection.request_close(CloseReason::Admin);
    }
    // The idle one at once: while the busy one's request (5 s) is still in flight.
    assert!(idle.wait_closed(Duration::from_secs(2)).await.is_some());
    assert_eq!(proxy.stats().active, 1, "the idle one closed first");
    assert_eq!(busy.read_response().await.unwrap().status, 200);
    assert!(busy.wait_closed(Duration::from_secs(5)).await.is_some());
    assert!(wait_until(Duration::from_secs(5), || proxy.stats().open == 0).await);
    assert_eq!(proxy.stats().closed(CloseReason::Admin), 2);
}

/// A backend that answers one request per connection as if keeping it alive, then closes it
/// silently: the proxy's pooled connection goes stale.
async fn start_forgetful_backend() -> std::net::SocketAddr {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut served = 0usize;
        loop {
            let (mut stream, _) = socket.accept().await.unwrap();
            served += 1;
            let body = format!("connection {served}");
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut stream, &mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                // Closes without `Connection: close`, as a backend's own idle timeout would.
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pooled_upstream_connection_is_not_a_client_error() {
    let backend = start_forgetful_backend().await;
    let proxy = TestProxy::start("", &[backend], "").await;
    let mut client = Client::connect(proxy.address).await;
    let first = client.get("/").await;
    assert_eq!((first.status, first.text().as_str()), (200, "connection 1"));
    // Whether the pool notices the close before the next request or only when sending it, the
    // client must get its answer from a fresh connection.
    for expected in 2..=4 {
        let response = client.get("/").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.text(), format!("connection {expected}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    for _ in 0..3 {
        // Separate client connections, one after the other: one upstream connection serves all.
        let mut client = Client::connect(proxy.address).await;
        for _ in 0..3 {
            assert_eq!(client.get("/").await.status, 200);
        }
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 9);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_and_without_a_body_share_one_upstream_connection() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    for round in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
        // A body of known length, then one in chunks.
        client
            .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .await;
        let response = client.read_response().await.unwrap();
        assert_eq!((response.status, response.text().as_str()), (200, "hello"));
        client
            .send(b"PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .await;
        let response = client.read_response().await.unwrap();
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, "abcde"),
            "round {round}"
        );
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 9);
    // One HTTP/1 client, one idle stack per backend: a connection opened for a GET carries the
    // uploads too.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

/// A backend that answers the first request of each connection and, on the second, reads it and
/// closes without an answer: a keep-alive connection closing under a request.
async fn start_closing_under_request_backend() -> std::net::SocketAddr {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = socket.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                for request in 0..2 {
                    let mut read = 0;
                    while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::io::AsyncReadExt::read(&mut stream, &mut buffer[read..]).await
                        {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    if request == 1 {
                        return; // closes under the second request
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_is_resent_when_a_reused_connection_closes_under_it() {
    let backend = start_closing_under_request_backend().await;
    let proxy = TestProxy::start("", &[backend], "[pool.outlier]\nconsecutive_failures = 0").await;
    let mut client = Client::connect(proxy.address).await;
    for _ in 0..4 {
        let response = client.get("/").await;
        assert_eq!((response.status, response.text().as_str()), (200, "ok"));
    }
    // A request with a body is not re-sent: its bytes went to the closed connection. (The last
    // GET went out on a fresh connection, which the first POST reuses and which closes under it;
    // the second POST opens a fresh one; the third reuses that.)
    for expected in [502, 200, 502] {
        client
            .send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .await;
        assert_eq!(client.read_response().await.unwrap().status, expected);
    }
}

/// Reads from `stream` into `received` until it holds `wanted`; false after 3 s.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    received: &mut Vec<u8>,
    wanted: &[u8],
) -> bool {
    let reading = async {
        let mut chunk = [0u8; 4096];
        while !received.windows(wanted.len()).any(|w| w == wanted) {
            match tokio::io::AsyncReadExt::read(stream, &mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(3), reading)
        .await
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_keeps_flowing_while_the_backend_streams_its_answer() {
    // The backend answers at once, then echoes each piece of the upload as it arrives (the raw
    // chunked bytes) and ends its answer with the upload's: the proxy must keep sending the
    // request body after the response head went back.
    let backend = support::raw_backend(|mut stream| async move {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match tokio::io::AsyncReadExt::read(&mut stream, &mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        };
        let mut upload = received.split_off(end + 4);
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let mut total = Vec::new();
        loop {
            if !upload.is_empty() {
                let mut piece = format!("{:X}\r\n", upload.len()).into_bytes();
                piece.extend_from_slice(&upload);
                piece.extend_from_slice(b"\r\n");
                if stream.write_all(&piece).await.is_err() {
                    return;
                }
                total.append(&mut upload);
            }
            if total.ends_with(b"0\r\n\r\n") {
                let _ = stream.write_all(b"0\r\n\r\n").await;
                return;
            }
            match tokio::io::AsyncReadExt::read(&mut stream, &mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => upload.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let proxy = TestProxy::start("", &[backend], "").await;
    let mut client = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let mut received = Vec::new();
    client
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    assert!(
        read_until(&mut client, &mut received, b"hello").await,
        "the first piece came back: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    client.write_all(b"5\r\nworld\r\n").await.unwrap();
    assert!(
        read_until(&mut client, &mut received, b"world").await,
        "the second piece, sent after the response head, came back: {:?}",
        String::from_utf8_lossy(&received)
    );
    client.write_all(b"0\r\n\r\n").await.unwrap();
    assert!(
        read_until(&mut client, &mut received, b"\r\n0\r\n\r\n").await,
        "the answer ended: {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_counted_by_status_class_with_their_durations() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    assert_eq!(client.get("/slow?ms=300").await.status, 200);
    assert_eq!(client.get("/status?code=404").await.status, 404);
    assert_eq!(client.get("/status?code=503").await.status, 503);
    let listener = Arc::clone(proxy.proxy.listener("web").unwrap());
    let classes = || listener.stats.responses().map(|histogram| histogram.count);
    // Counted when hyper is done with the response, just after the client has read it.
    assert!(
        wait_until(Duration::from_secs(5), || classes() == [0, 1, 0, 1, 1]).await,
        "{:?}",
        classes()
    );
    let ok = &listener.stats.responses()[1];
    assert!(ok.sum_seconds >= 0.3 && ok.sum_seconds < 10.0, "{ok:?}");
    let at_most_quarter_second: u64 = ok
        .buckets
        .iter()
        .filter(|(bound, _)| *bound <= 0.25)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(
        at_most_quarter_second, 0,
        "the slow response is over 0.25 s: {ok:?}"
    );

    // The pool saw three answers, one of them after at least 0.3 s.
    let upstream = listener.pool.stats.upstream_response.snapshot();
    assert_eq!(upstream.count, 3, "{upstream:?}");
    assert!(upstream.sum_seconds >= 0.3, "{upstream:?}");
    let over_quarter_second: u64 = upstream
        .buckets
        .iter()
        .filter(|(bound, _)| *bound > 0.25)
        .map(|(_, count)| count)
        .sum();
    assert!(over_quarter_second >= 1, "{upstream:?}");

    // A backend that is gone: the proxy's own 502 is a 5xx; no upstream answer is timed.
    let (_held, gone) = closed_port().await;
    let gone = TestProxy::start("", &[gone], "").await;
    let mut client = Client::connect(gone.address).await;
    assert_eq!(client.get("/").await.status, 502);
    let gone_listener = Arc::clone(gone.proxy.listener("web").unwrap());
    assert!(
        wait_until(Duration::from_secs(5), || gone_listener.stats.responses()
            [4]
        .count
            == 1)
        .await
    );
    assert_eq!(
        gone_listener.pool.stats.upstream_response.snapshot().count,
        0
    );
}
