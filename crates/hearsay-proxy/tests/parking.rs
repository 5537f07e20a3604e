//! Quiet keep-alive connections are parked: hyper's connection and its buffers are dropped and the
//! next bytes from the client start a new one on the same socket. Seen from a client, nothing may
//! change: every request is answered, whatever moment it arrives at, and the connection keeps its
//! timeouts and its close accounting.

mod support;

use std::time::Duration;

use hearsay_proxy::CloseReason;
use support::{wait_until, Backend, Client, TestProxy};

/// Pauses on both sides of the parking delay (10 ms) and of its backed-off values.
const PAUSES_MS: [u64; 6] = [0, 3, 12, 30, 80, 250];

/// A proxy in front of one backend, and a client connection that made one request and has been
/// quiet since, until it was parked (waiting on its bare socket).
async fn quiet_client() -> (Backend, TestProxy, Client) {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    assert_eq!(client.get("/").await.status, 200);
    wait_parked(&proxy, 1).await;
    (backend, proxy, client)
}

/// Waits (bounded) until `parked` connections wait on their bare socket (the pause before
/// parking backs off to a second on a busy connection: a few of them fit).
async fn wait_parked(proxy: &TestProxy, parked: u64) {
    assert!(
        wait_until(Duration::from_secs(5), || proxy.stats().parked_now
            == parked)
        .await,
        "expected {parked} parked: {:?}",
        proxy.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_is_parked_and_its_next_request_unparks_it() {
    let (_backend, proxy, mut client) = quiet_client().await;
    let parked = proxy.stats().parked;
    assert!(parked >= 1, "{:?}", proxy.stats());
    let response = client.get("/").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello from b1");
    // Quiet again: parked once more, on the same connection.
    wait_parked(&proxy, 1).await;
    let stats = proxy.stats();
    assert_eq!(stats.parked, parked + 1, "{stats:?}");
    assert_eq!((stats.accepted, stats.open, stats.requests), (1, 1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_answers_its_next_request_whatever_the_pause() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    // The first request after a silent start (parked at once), then requests after pauses of
    // every length.
    wait_parked(&proxy, 1).await;
    for pause in PAUSES_MS.iter().chain(PAUSES_MS.iter().rev()) {
        let response = client.get("/").await;
        assert_eq!(response.status, 200, "after a {pause} ms pause");
        assert_eq!(response.text(), "hello from b1");
        tokio::time::sleep(Duration::from_millis(*pause)).await;
    }
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1, "every request on one connection");
    assert_eq!(stats.requests, 2 * PAUSES_MS.len() as u64);
    assert_eq!(stats.idle, 1);
    // How often the connection was parked during the pauses depends on how busy the machine is
    // (each look that finds it busy doubles the next pause, up to a second). Quiet for long
    // enough, it is parked again, and still answers.
    assert!(stats.parked >= 1, "{stats:?}");
    assert!(
        wait_until(Duration::from_secs(5), || proxy.stats().parked_now == 1).await,
        "parked again once quiet: {:?}",
        proxy.stats()
    );
    let response = client.get("/").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello from b1");
    assert_eq!(proxy.stats().accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_split_by_a_pause_is_served() {
    let (_backend, proxy, mut client) = quiet_client().await;
    let parked = proxy.stats().parked;
    client.send(b"GET /headers HTTP/1.1\r\nHo").await;
    // Unparked by the first bytes; a connection holding part of a head is never parked.
    wait_parked(&proxy, 0).await;
    assert!(client.still_open_after(Duration::from_millis(50)).await);
    assert_eq!(proxy.stats().parked, parked, "{:?}", proxy.stats());
    client.send(b"st: split.example\r\nX-Part: 2\r\n\r\n").await;
    let response = client.read_response().await.expect("a response");
    assert_eq!(response.status, 200);
    let text = response.text();
    assert!(text.contains("host: split.example"), "{text}");
    assert!(text.contains("x-part: 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_after_a_pause_are_all_answered_in_order() {
    let (_backend, _proxy, mut client) = quiet_client().await;
    client
        .send(
            b"GET /headers HTTP/1.1\r\nHost: x\r\nX-N: 1\r\n\r\n\
              GET /headers HTTP/1.1\r\nHost: x\r\nX-N: 2\r\n\r\n\
              GET /headers HTTP/1.1\r\nHost: x\r\nX-N: 3\r\n\r\n",
        )
        .await;
    for n in 1..=3 {
        let response = client.read_response().await.expect("a response");
        assert_eq!(response.status, 200);
        assert!(
            response.text().contains(&format!("x-n: {n}")),
            "request {n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_of_a_pipelined_request_read_before_a_pause_is_kept() {
    // hyper reads the first request and the start of the second in one go; the connection goes
    // quiet with those bytes read but not parsed, and is parked: they must not be lost (they go
    // to the next hyper connection at once, so it never waits on the bare socket).
    let (_backend, proxy, mut client) = quiet_client().await;
    let parked = proxy.stats().parked;
    client
        .send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /headers HTTP/1.1\r\nX-Early: ")
        .await;
    assert_eq!(
        client.read_response().await.expect("a response").status,
        200
    );
    assert!(
        wait_until(Duration::from_secs(2), || proxy.stats().parked
            == parked + 1)
        .await,
        "parked with unparsed bytes: {:?}",
        proxy.stats()
    );
    assert_eq!(proxy.stats().parked_now, 0);
    client.send(b"yes\r\nHost: x\r\n\r\n").await;
    let response = client.read_response().await.expect("a response");
    assert_eq!(response.status, 200);
    assert!(
        response.text().contains("x-early: yes"),
        "{}",
        response.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_sent_after_an_early_answer_is_not_taken_for_a_request() {
    // The backend answers `/` without reading the body; the rest of the body arrives after a
    // pause. Those bytes belong to the first request: they are never parsed as a new one.
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    client
        .send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 38\r\n\r\nfirst part;")
        .await;
    let response = client.read_response().await.expect("the early answer");
    assert_eq!(response.status, 200);
    // hyper does not wait for a body nobody reads: it ends the connection after the answer (and
    // says so with `Connection: close` when it has let go of the body before the answer's head
    // is written, which depends on timing); no idle timeout is promised.
    assert_eq!(
        response.header("keep-alive"),
        None,
        "{:?}",
        response.headers
    );
    // The rest of the body never reaches a parser: never a 400 for the body's bytes.
    let _ = client.stream.try_write(b"second part of the body");
    assert!(
        client.wait_closed(Duration::from_secs(2)).await.is_some(),
        "the connection ends after the early answer"
    );
    assert!(
        client.read_response().await.is_none(),
        "nothing after the answer"
    );
    assert!(
        wait_until(Duration::from_secs(2), || proxy.stats().open == 0).await,
        "{:?}",
        proxy.stats()
    );
    assert_eq!(proxy.stats().closed(CloseReason::Error), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_a_quiet_connection_is_counted_as_such() {
    let (_backend, proxy, client) = quiet_client().await;
    drop(client);
    assert!(
        wait_until(Duration::from_secs(2), || {
            let stats = proxy.stats();
            stats.open == 0 && stats.parked_now == 0 && stats.closed(CloseReason::ClientClosed) == 1
        })
        .await,
        "{:?}",
        proxy.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_new_connection_is_still_cut_at_the_header_timeout() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("header_timeout = \"300ms\"", &[backend.address], "").await;
    // Taken before the connection is made: the proxy counts from its accept, which comes after
    // (a stamp taken after `connect` returns can be late on a busy machine).
    let opened = std::time::Instant::now();
    let mut client = Client::connect(proxy.address).await;
    // Nothing to read when hyper first looks: parked at once.
    wait_parked(&proxy, 1).await;
    let closed = client
        .wait_closed(Duration::from_secs(2))
        .await
        .expect("cut at the header timeout");
    // Not before the timeout; a parked connection whose timer was lost would never be cut.
    let after = closed - opened;
    assert!(after >= Duration::from_millis(300), "cut after {after:?}");
    assert!(
        wait_until(Duration::from_secs(1), || proxy
            .stats()
            .closed(CloseReason::HeaderTimeout)
            == 1)
        .await
    );
    assert_eq!(proxy.stats().parked_now, 0);
}
