//! Keep-alive semantics seen from a real client over real sockets: short and persistent
//! connections, idle close timing, request and age caps, header and body timeouts.
//!
//! The exact deadlines are unit-tested as pure functions (`connection/rules.rs`). Here, a close
//! must never come before its deadline (a bound no load can break); how soon after it comes is
//! checked only by the tests named `real_clock_...`, with a slack a loaded 2-core machine keeps.
//! Elsewhere the upper bound is the wait's own limit, far from what a missing wake-up would give
//! (a timeout that did not apply would leave the connection open for a minute or more).

mod support;

use std::time::{Duration, Instant};

use hearsay_proxy::CloseReason;
use support::{wait_until, Backend, Client, TestProxy};

/// How late a close may be seen by the `real_clock_` tests: timers of a loaded machine (the
/// proxy's and this test's own) fire late, and a busy core can hold either task for hundreds of
/// milliseconds. Far from what a timeout that did not apply would give (the 75 s default).
const SLACK: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_connections_stay_open_and_announce_the_idle_timeout() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("keepalive_timeout = \"75s\"", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    for _ in 0..3 {
        let response = client.get("/").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "hello from b1");
        assert_eq!(response.header("keep-alive"), Some("timeout=75"));
        assert_eq!(response.header("connection"), None);
    }
    assert!(client.still_open_after(Duration::from_millis(200)).await);
    assert_eq!(
        proxy.stats().accepted,
        1,
        "all requests used one connection"
    );
    assert_eq!(proxy.stats().requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_header_can_be_turned_off() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("keepalive_header = false", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    let response = client.get("/").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("keep-alive"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_gets_a_short_connection_unless_it_asks_for_keep_alive() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;

    let mut short = Client::connect(proxy.address).await;
    short.send(b"GET / HTTP/1.0\r\n\r\n").await;
    let response = short.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello from b1");
    assert_eq!(response.header("keep-alive"), None);
    assert!(
        short.wait_closed(Duration::from_secs(2)).await.is_some(),
        "HTTP/1.0 connection closed after one response"
    );

    let mut persistent = Client::connect(proxy.address).await;
    for _ in 0..2 {
        persistent
            .send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let response = persistent.read_response().await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            response
                .header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive")
        );
        assert_eq!(response.header("keep-alive"), Some("timeout=75"));
    }
    assert!(
        persistent
            .still_open_after(Duration::from_millis(200))
            .await
    );
    assert!(
        wait_until(Duration::from_secs(2), || proxy
            .stats()
            .closed(CloseReason::ClientClosed)
            == 1)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_client_asking_for_close_gets_it() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    client
        .send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let response = client.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.wait_closed(Duration::from_secs(2)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_zero_closes_after_every_response() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("keepalive_timeout = \"0s\"", &[backend.address], "").await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let mut client = Client::connect(proxy.address).await;
        client.send(request).await;
        let response = client.read_response().await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("close"));
        assert_eq!(response.header("keep-alive"), None);
        assert!(client.wait_closed(Duration::from_secs(2)).await.is_some());
    }
    assert!(
        wait_until(Duration::from_secs(2), || proxy
            .stats()
            .closed(CloseReason::KeepaliveOff)
            == 2)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clock_an_idle_connection_closes_at_the_keepalive_timeout_not_before_and_promptly_after(
) {
    let backend = Backend::start("b1").await;
    let timeout = Duration::from_millis(400);
    let proxy = TestProxy::start("keepalive_timeout = \"400ms\"", &[backend.address], "").await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Client::connect(proxy.address).await);
    }
    // The proxy's last byte left between `sent` and `answered`, so a close before `sent + T`
    // would be early and one after `answered + T + SLACK` late, however late this (busy) test
    // process notices what arrived.
    for client in &mut clients {
        let sent = Instant::now();
        let response = client.get("/").await;
        assert_eq!(response.status, 200);
        let answered = Instant::now();
        let closed = client
            .wait_closed(Duration::from_secs(5))
            .await
            .expect("closed by the proxy");
        assert!(
            closed - sent >= timeout,
            "closed {:?} after the request, before the {timeout:?} timeout",
            closed - sent
        );
        assert!(
            closed - answered <= timeout + SLACK,
            "closed {:?} after the response, more than {SLACK:?} late",
            closed - answered
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .stats()
            .closed(CloseReason::IdleTimeout)
            == 5)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_pushes_the_idle_deadline_back() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("keepalive_timeout = \"1500ms\"", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    // Five requests 500 ms apart: 2.5 s in all, well over the timeout, on one connection (a
    // pause may run late by up to a second before it reaches the timeout).
    for request in 1..=5 {
        assert_eq!(client.get("/").await.status, 200, "request {request}");
        assert!(
            client.still_open_after(Duration::from_millis(500)).await,
            "closed within 500 ms of request {request}, before its 1.5 s timeout"
        );
    }
    let stats = proxy.stats();
    assert_eq!((stats.accepted, stats.requests), (1, 5), "{stats:?}");
    assert_eq!(stats.closed(CloseReason::IdleTimeout), 0, "{stats:?}");
    // Quiet from now on: it ends at the timeout.
    assert!(client.wait_closed(Duration::from_secs(5)).await.is_some());
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .stats()
            .closed(CloseReason::IdleTimeout)
            == 1)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortened_timeout_applies_to_connections_already_open() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("keepalive_timeout = \"60s\"", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    assert_eq!(client.get("/").await.status, 200);
    assert!(client.still_open_after(Duration::from_millis(300)).await);

    let listener = proxy.proxy.listener("web").unwrap();
    let mut settings = (*listener.settings()).clone();
    settings.keepalive_timeout = Duration::from_millis(200);
    listener.set_settings(settings);
    // Idle for 300 ms already: past the new 200 ms timeout, so it closes at once (under the
    // old one it would stay open for a minute).
    assert!(
        client.wait_closed(Duration::from_secs(2)).await.is_some(),
        "closed under the new timeout"
    );
    // The client sees the close before the task that closed it has counted it.
    assert!(
        wait_until(Duration::from_secs(2), || proxy
            .stats()
            .closed(CloseReason::IdleTimeout)
            == 1)
        .await,
        "counted as an idle-timeout close"
    );

    // And a fresh idle period runs on the new value.
    let mut client = Client::connect(proxy.address).await;
    let sent = Instant::now();
    assert_eq!(client.get("/").await.status, 200);
    let closed = client.wait_closed(Duration::from_secs(2)).await.unwrap();
    assert!(closed - sent >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_ends_the_connection_after_the_last_response() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("max_requests_per_connection = 3", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    for request in 1..=3 {
        let response = client.get("/").await;
        assert_eq!(response.status, 200);
        let expected = if request == 3 { Some("close") } else { None };
        assert_eq!(response.header("connection"), expected, "request {request}");
    }
    assert!(client.wait_closed(Duration::from_secs(2)).await.is_some());
    assert!(
        wait_until(Duration::from_secs(1), || proxy
            .stats()
            .closed(CloseReason::MaxRequests)
            == 1)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_ends_the_connection_gracefully() {
    let backend = Backend::start("b1").await;
    // An age that leaves a loaded machine time to connect and send two requests before it.
    let proxy = TestProxy::start("max_connection_age = \"1s\"", &[backend.address], "").await;

    // A request in flight when the age is reached gets its response, the last one.
    let mut busy = Client::connect(proxy.address).await;
    assert_eq!(busy.get("/").await.header("connection"), None);
    busy.send(b"GET /slow?ms=1300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let response = busy.read_response().await.unwrap();
    assert_eq!(response.status, 200, "the in-flight request finishes");
    assert_eq!(response.text(), "slow 1300");
    assert!(busy.wait_closed(Duration::from_secs(5)).await.is_some());

    // An idle connection is closed when it reaches the age.
    // Before the connection is made: the age counts from the proxy's accept, which comes after.
    let opened = Instant::now();
    let mut idle = Client::connect(proxy.address).await;
    assert_eq!(idle.get("/").await.status, 200);
    let closed = idle
        .wait_closed(Duration::from_secs(5))
        .await
        .expect("closed at max age");
    // Not before the age; without it, it would stay open for the 75 s keep-alive timeout.
    assert!(closed - opened >= Duration::from_secs(1));
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .stats()
            .closed(CloseReason::MaxAge)
            == 2)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clock_a_slow_request_head_is_cut_at_the_header_timeout() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("header_timeout = \"300ms\"", &[backend.address], "").await;
    // The timeout counts from the proxy's accept: after `opened` (a close before `opened + T`
    // would be early), and usually before `connected`, unless the proxy accepts late.
    let opened = Instant::now();
    let mut slowloris = Client::connect(proxy.address).await;
    let connected = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut_at = None;
    for byte in head.chunks(2) {
        if slowloris.stream.try_write(byte).is_err() {
            break;
        }
        if let Some(closed) = slowloris.wait_closed(Duration::from_millis(50)).await {
            cut_at = Some(closed);
            break;
        }
    }
    let cut_at = match cut_at {
        Some(at) => at,
        None => slowloris
            .wait_closed(Duration::from_secs(2))
            .await
            .expect("slow head cut"),
    };
    let elapsed = cut_at - opened;
    assert!(
        elapsed >= Duration::from_millis(300),
        "cut after {elapsed:?}"
    );
    let late = cut_at - connected;
    assert!(
        late <= Duration::from_millis(300) + SLACK,
        "cut {late:?} after the connection was made"
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // A connection that sends nothing at all is cut at the same timeout.
    let mut silent = Client::connect(proxy.address).await;
    assert!(silent.wait_closed(Duration::from_secs(5)).await.is_some());
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .stats()
            .closed(CloseReason::HeaderTimeout)
            == 2)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_does_not_cut_an_idle_keepalive_connection() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start(
        "header_timeout = \"200ms\"\nkeepalive_timeout = \"2s\"",
        &[backend.address],
        "",
    )
    .await;
    let mut client = Client::connect(proxy.address).await;
    assert_eq!(client.get("/").await.status, 200);
    assert!(
        client.still_open_after(Duration::from_millis(500)).await,
        "idle is governed by keepalive_timeout"
    );
    assert_eq!(client.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clock_a_stalled_request_body_is_cut_at_the_body_timeout() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("body_timeout = \"300ms\"", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    // The proxy read the last body bytes between `sending` and `stalled`.
    let sending = Instant::now();
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await;
    let stalled = Instant::now();
    let closed = client
        .wait_closed(Duration::from_secs(5))
        .await
        .expect("stalled body cut");
    assert!(
        closed - sending >= Duration::from_millis(300),
        "cut after {:?}",
        closed - stalled
    );
    assert!(
        closed - stalled <= Duration::from_millis(300) + SLACK,
        "cut after {:?}",
        closed - stalled
    );
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .stats()
            .closed(CloseReason::BodyTimeout)
            == 1)
        .await
    );

    // A body that keeps flowing, slower than the timeout in total, is not cut: 2 s of body
    // under a 1 s timeout, in pieces 250 ms apart (a pause may run 750 ms late before it
    // reaches the timeout).
    let proxy = TestProxy::start("body_timeout = \"1s\"", &[backend.address], "").await;
    let mut client = Client::connect(proxy.address).await;
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 18\r\n\r\n")
        .await;
    for part in [
        &b"he"[..],
        b"ll",
        b"o ",
        b"wo",
        b"rl",
        b"d,",
        b" a",
        b"gain",
    ] {
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.send(part).await;
    }
    let response = client.read_response().await.expect("answered");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello world, again");
}
