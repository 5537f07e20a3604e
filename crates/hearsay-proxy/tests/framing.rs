//! How backend responses are framed and passed on, against a scripted backend that writes exact
//! bytes: chunked, close-delimited, HEAD, 204, interim 1xx, split heads, broken and short
//! responses, and when the upstream connection is reused.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{Client, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the scripted backend answers for a request path: the byte pieces it writes (with a short
/// pause between them) and whether it closes the connection afterwards.
fn script(path: &str) -> (Vec<&'static [u8]>, bool) {
    match path {
        "/chunked" => (
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"],
            false,
        ),
        "/close-delimited" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"],
            true,
        ),
        "/http10-chunked" => (
            vec![b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
            false,
        ),
        "/http10-close-delimited" => (
            vec![b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"],
            true,
        ),
        "/head" => (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"], false),
        "/no-content" => (vec![b"HTTP/1.1 204 No Content\r\n\r\n"], false),
        "/early-hints" => (
            vec![b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"],
            false,
        ),
        "/garbage" => (vec![b"HTTP/1.1 abc\r\n\r\n"], true),
        "/short-body" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a bit"],
            true,
        ),
        "/closing" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"],
            true,
        ),
        "/split" => (
            vec![
                b"HTTP/1.1 200 OK\r\nConte",
                b"nt-Length: 5\r\n\r\nsp",
                b"lit",
            ],
            false,
        ),
        "/big" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n", big()],
            false,
        ),
        _ => (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], false),
    }
}

/// 8 MiB of body: more than the socket buffers between proxy and client hold.
fn big() -> &'static [u8] {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BIG.get_or_init(|| vec![b'a'; 8 << 20])
}

/// Starts the scripted backend; returns its address and how many connections it accepted.
async fn scripted_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = socket.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    buffer.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let (pieces, close) = script(&path);
                    for (index, piece) in pieces.iter().enumerate() {
                        if index > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (address, connections)
}

/// A client connected to a proxy in front of a fresh scripted backend, and the backend's
/// connection count. Keep the proxy for as long as the test runs.
async fn through_proxy() -> (Client, TestProxy, Arc<AtomicUsize>) {
    let (backend, connections) = scripted_backend().await;
    let proxy = TestProxy::start("", &[backend], "").await;
    let client = Client::connect(proxy.address).await;
    (client, proxy, connections)
}

async fn get(client: &mut Client, path: &str) -> support::RawResponse {
    tokio::time::timeout(Duration::from_secs(10), client.get(path))
        .await
        .expect("a response within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_are_decoded_and_the_connection_reused() {
    let (mut client, _proxy, connections) = through_proxy().await;
    let response = get(&mut client, "/chunked").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello world");
    assert_eq!(get(&mut client, "/").await.text(), "ok");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_response_with_transfer_encoding_is_read_and_its_connection_not_reused() {
    // RFC 9112 §6.1: a Transfer-Encoding in an HTTP/1.0 message is read, then the connection
    // closes, whatever its Connection header says.
    let (mut client, _proxy, connections) = through_proxy().await;
    let response = get(&mut client, "/http10-chunked").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.version, "HTTP/1.1",
        "the client is answered in its own version"
    );
    assert_eq!(response.text(), "hello");
    // An HTTP/1.0 backend's body delimited by its close reaches an HTTP/1.1 client whole.
    let response = get(&mut client, "/http10-close-delimited").await;
    assert_eq!(response.text(), "until the end");
    assert_eq!(get(&mut client, "/").await.text(), "ok");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "a new upstream connection after each HTTP/1.0 one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_length_is_read_to_the_end_and_its_connection_not_reused() {
    let (mut client, _proxy, connections) = through_proxy().await;
    let response = get(&mut client, "/close-delimited").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "until the end");
    assert_eq!(get(&mut client, "/").await.text(), "ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_204_responses_have_no_body_and_keep_both_connections() {
    let (mut client, _proxy, connections) = through_proxy().await;
    client.send(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), client.stream.read_exact(&mut byte))
            .await
            .expect("the HEAD response within 10 s")
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 11"), "{head}");
    let response = get(&mut client, "/no-content").await;
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    // Nothing of a body was left in between: the next answer is exactly the next response.
    assert_eq!(get(&mut client, "/").await.text(), "ok");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped_and_split_heads_reassembled() {
    let (mut client, _proxy, _) = through_proxy().await;
    let response = get(&mut client, "/early-hints").await;
    assert_eq!((response.status, response.text().as_str()), (200, "final"));
    let response = get(&mut client, "/split").await;
    assert_eq!((response.status, response.text().as_str()), (200, "split"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_response_head_gives_502_and_the_client_connection_stays_usable() {
    let (mut client, _proxy, _) = through_proxy().await;
    let response = get(&mut client, "/garbage").await;
    assert_eq!(response.status, 502);
    assert_eq!(response.text(), "502 bad gateway: backend failed\n");
    assert_eq!(get(&mut client, "/").await.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_before_the_promised_length_cuts_the_client_connection() {
    let (mut client, _proxy, _) = through_proxy().await;
    client
        .send(b"GET /short-body HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        client.stream.read_to_end(&mut received),
    )
    .await
    .expect("the proxy closes within 10 s");
    let _ = read; // closed (EOF) or reset: either way the client cannot mistake it for complete
                  // hyper may or may not have flushed the part it had before the error: whatever arrived is
                  // less than the promised 100 body bytes.
    let text = String::from_utf8_lossy(&received);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(body.len() < 100, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_asking_to_close_gets_a_fresh_connection_next_time() {
    let (mut client, _proxy, connections) = through_proxy().await;
    let response = get(&mut client, "/closing").await;
    assert_eq!((response.status, response.text().as_str()), (200, "ok"));
    assert_eq!(
        response.header("connection"),
        None,
        "the backend's Connection header stays on its hop"
    );
    assert_eq!(get(&mut client, "/").await.text(), "ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_reaches_a_client_that_reads_it_in_slices_with_pauses() {
    // Each pause is longer than the parking delay while the proxy still has bytes to write: the
    // connection must not lose them to parking.
    let (mut client, _proxy, _) = through_proxy().await;
    client.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let expected = b"HTTP/1.1 200 OK\r\n".len();
    let mut received = Vec::new();
    let mut slice = vec![0u8; 512 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let body_start = loop {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let read = tokio::time::timeout_at(deadline, client.stream.read(&mut slice))
            .await
            .expect("the whole response within 20 s")
            .unwrap();
        assert!(read > 0, "closed after {} bytes", received.len());
        received.extend_from_slice(&slice[..read]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            if received.len() >= at + 4 + (8 << 20) {
                break at + 4;
            }
        }
    };
    assert!(received.len() > expected && received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(received.len() - body_start, 8 << 20);
    assert!(received[body_start..].iter().all(|&byte| byte == b'a'));
    assert_eq!(get(&mut client, "/").await.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_larger_than_the_socket_buffers_reaches_a_client_that_reads_late() {
    let (mut client, _proxy, _) = through_proxy().await;
    client.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // The proxy has to wait for the client to make room (its socket joins epoll for writing).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = tokio::time::timeout(Duration::from_secs(20), client.read_response())
        .await
        .expect("the whole body within 20 s")
        .expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 8 << 20);
    assert!(response.body.iter().all(|&byte| byte == b'a'));
    assert_eq!(get(&mut client, "/").await.text(), "ok");
}
