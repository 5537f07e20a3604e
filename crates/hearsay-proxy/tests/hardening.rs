//! Defects found by an outside attack-and-fault run, each kept found: a request lost behind an
//! upstream connection answered early, client mistakes counted against backends, ambiguous
//! response framing, the 408 on a slow head.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Backend, Client, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that answers `200 ok` as soon as a request head arrives, before reading any of its
/// body (as a backend answering 401 or 413 to an upload does), then reads what body comes. It
/// records the request line of every head it sees.
async fn early_answering_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let address = support::raw_backend(move |mut stream| {
        let record = Arc::clone(&record);
        async move {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                buffer.drain(..end + 4);
                record
                    .lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_owned());
                let length: usize = head
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, value)| value.trim().parse().ok())
                    .unwrap_or(0);
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                // Then the body, as far as it comes.
                while buffer.len() < length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                buffer.drain(..length);
            }
        }
    })
    .await;
    (address, seen)
}

async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 5 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_not_lost_behind_an_upstream_connection_answered_before_its_body() {
    let (backend, seen) = early_answering_backend().await;
    let proxy = TestProxy::start("body_timeout = \"30s\"", &[backend], "").await;

    // A: an upload whose client sends 1 byte of 1000 and waits; the backend answers at once.
    let mut a = Client::connect(proxy.address).await;
    a.send(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nx")
        .await;
    let answer = bounded("A's early answer", a.read_response())
        .await
        .unwrap();
    assert_eq!(answer.status, 200);

    // B: a complete upload on another client connection must reach the backend and be answered
    // at once, not queue behind A's unfinished body on the same upstream connection.
    for round in 0..3 {
        let mut b = Client::connect(proxy.address).await;
        b.send(b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            .await;
        let answer = bounded("B's answer", b.read_response()).await;
        assert_eq!(answer.map(|r| r.status), Some(200), "round {round}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .filter(|line| line.starts_with("POST /b "))
            .count(),
        3,
        "{seen:?}"
    );
    drop(a);
}

fn outlier_pool() -> &'static str {
    // 100 %: even a pool's only backend can be ejected.
    "[pool.outlier]\nconsecutive_failures = 3\nbase_ejection = \"30s\"\nmax_ejected_percent = 100"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_answers_400_and_ejects_no_backend() {
    let backend = Backend::start("a").await;
    let proxy = TestProxy::start("", &[backend.address], outlier_pool()).await;
    let pool = proxy.proxy.pools()[0].clone();
    for round in 0..10 {
        let mut client = Client::connect(proxy.address).await;
        // A good chunk, then a chunk size that is not hex.
        client
            .send(b"POST /count-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n")
            .await;
        let answer = bounded("the answer", client.read_response()).await;
        let answer = answer.unwrap_or_else(|| panic!("round {round}: closed without an answer"));
        assert_eq!(answer.status, 400, "round {round}: {}", answer.text());
        assert!(answer.text().contains("malformed"), "{}", answer.text());
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(
            bounded("the close", client.wait_closed(Duration::from_secs(2)))
                .await
                .is_some(),
            "round {round}: the connection closes after the 400"
        );
    }
    assert_eq!(pool.stats.ejections.load(Ordering::SeqCst), 0);
    let health = pool.backend(&backend.address.to_string()).unwrap().health();
    assert!(health.healthy, "{health:?}");
    let mut client = Client::connect(proxy.address).await;
    assert_eq!(client.get("/").await.text(), "hello from a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_cut_short_by_their_clients_eject_no_backend() {
    let backend = Backend::start("a").await;
    let proxy = TestProxy::start("", &[backend.address], outlier_pool()).await;
    let pool = proxy.proxy.pools()[0].clone();
    for _ in 0..8 {
        let mut client = Client::connect(proxy.address).await;
        // Counted before sending: the chunk may reach the backend before the next line runs.
        let seen = backend.body_chunks_seen.load(Ordering::SeqCst);
        client
            .send(b"POST /count-body HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\npartial")
            .await;
        // Wait until the body is on its way to the backend, then leave.
        assert!(
            support::wait_until(Duration::from_secs(2), || {
                backend.body_chunks_seen.load(Ordering::SeqCst) > seen
            })
            .await
        );
        drop(client);
    }
    // The aborted uploads end on the proxy's side too.
    assert!(
        support::wait_until(Duration::from_secs(3), || proxy.stats().open == 0).await,
        "{:?}",
        proxy.stats()
    );
    assert_eq!(pool.stats.ejections.load(Ordering::SeqCst), 0);
    let health = pool.backend(&backend.address.to_string()).unwrap().health();
    assert!(health.healthy, "{health:?}");
}

/// A backend that frames its response with both Content-Length (wrong) and chunked coding.
async fn both_framings_backend() -> SocketAddr {
    support::raw_backend(|mut stream| async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                    // Small requests only: answer once the head (and a short body) is in.
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        if buffer.ends_with(b"hello") || buffer.len() == end + 4 {
                            buffer.clear();
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_both_content_length_and_chunked_is_passed_on_whole() {
    let backend = both_framings_backend().await;
    let proxy = TestProxy::start("", &[backend], "").await;
    let mut client = Client::connect(proxy.address).await;
    // Body-less (the in-task client) and with a body (hyper's client).
    let requests: [&[u8]; 2] = [
        b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for request in requests {
        for _ in 0..2 {
            client.send(request).await;
            let answer = bounded("the answer", client.read_response()).await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.text(), "hello");
            assert_ne!(answer.header("content-length"), Some("3"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_cut_at_header_timeout_gets_408_and_a_silent_connection_nothing() {
    let backend = Backend::start("a").await;
    // Long enough that the part of a head is sent before it, on a loaded machine (a connection
    // still silent at the timeout gets no 408).
    let proxy = TestProxy::start("header_timeout = \"1s\"", &[backend.address], "").await;

    let mut slow = Client::connect(proxy.address).await;
    slow.send(b"GET / HTTP/1.1\r\nHost: t\r\n").await;
    let answer = bounded("the 408", slow.read_response()).await.unwrap();
    assert_eq!(answer.status, 408);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(slow.wait_closed(Duration::from_secs(5)).await.is_some());

    // The same on a keep-alive connection whose next head is slow.
    let mut keep = Client::connect(proxy.address).await;
    assert_eq!(keep.get("/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    keep.send(b"GET / HTTP/1.1\r\n").await;
    let answer = bounded("the 408", keep.read_response()).await.unwrap();
    assert_eq!(answer.status, 408);

    // A connection that never sent a byte is closed without a word.
    let mut silent = Client::connect(proxy.address).await;
    let mut bytes = Vec::new();
    let read = bounded("the close", silent.stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok() && bytes.is_empty(), "{read:?} {bytes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_request_header_size_gets_431() {
    let backend = Backend::start("a").await;
    // The default, 16 KiB.
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "x".repeat(15 * 1024)
    );
    let mut client = Client::connect(proxy.address).await;
    client.send(fits.as_bytes()).await;
    let answer = bounded("the answer", client.read_response()).await.unwrap();
    assert_eq!(answer.status, 200);

    let too_big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "x".repeat(17 * 1024)
    );
    let mut client = Client::connect(proxy.address).await;
    client.send(too_big.as_bytes()).await;
    let answer = bounded("the answer", client.read_response()).await.unwrap();
    assert_eq!(answer.status, 431);
    assert!(client.wait_closed(Duration::from_secs(2)).await.is_some());
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
}
