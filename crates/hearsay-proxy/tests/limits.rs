//! The per-client connection cap over real sockets: the N+1th connection refused as configured,
//! capacity returning on close, exempt networks, IPv6 prefix grouping.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hearsay_proxy::CloseReason;
use support::{wait_until, Backend, Client, TestProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_over_the_limit_gets_429_and_capacity_returns_on_close() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("max_connections_per_client = 3", &[backend.address], "").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(proxy.address).await;
        assert_eq!(client.get("/").await.status, 200);
        held.push(client);
    }

    let mut refused = Client::connect(proxy.address).await;
    refused.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let response = refused.read_response().await.expect("a 429 answer");
    assert_eq!(response.status, 429);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(response.text().contains("too many"), "{}", response.text());
    assert!(refused.wait_closed(Duration::from_secs(2)).await.is_some());
    assert_eq!(proxy.stats().closed(CloseReason::OverLimit), 1);
    let listener = proxy.proxy.listener("web").unwrap();
    assert_eq!(listener.stats.refused(), 1, "counted as refused at accept");
    assert_eq!(listener.stats.trimmed(), 0);
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "refused request never reached a backend"
    );

    // The held connections are unaffected, and closing one frees a place.
    assert_eq!(held[0].get("/").await.status, 200);
    drop(held.pop());
    let key = hearsay_proxy::ClientKey::new("127.0.0.1".parse().unwrap(), 64);
    let clients = &proxy.proxy.listener("web").unwrap().clients;
    assert!(wait_until(Duration::from_secs(2), || clients.count(&key) == 2).await);
    let mut again = Client::connect(proxy.address).await;
    assert_eq!(again.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_close_drops_the_connection_without_an_answer() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start(
        "max_connections_per_client = 1\nover_limit = \"close\"",
        &[backend.address],
        "",
    )
    .await;
    let mut first = Client::connect(proxy.address).await;
    assert_eq!(first.get("/").await.status, 200);
    let mut refused = Client::connect(proxy.address).await;
    let _ = refused
        .stream
        .try_write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        refused.read_response().await.is_none(),
        "closed with no response"
    );
    assert_eq!(proxy.stats().closed(CloseReason::OverLimit), 1);
    assert_eq!(proxy.proxy.listener("web").unwrap().stats.refused(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_networks_are_never_limited() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start(
        "max_connections_per_client = 1\nlimit_exempt = [\"127.0.0.0/8\"]",
        &[backend.address],
        "",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connect(proxy.address).await;
        assert_eq!(client.get("/").await.status, 200);
        held.push(client);
    }
    assert_eq!(proxy.stats().closed(CloseReason::OverLimit), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_limit_change_applies_to_the_next_accept() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("", &[backend.address], "").await;
    let mut first = Client::connect(proxy.address).await;
    assert_eq!(first.get("/").await.status, 200);
    let listener = proxy.proxy.listener("web").unwrap();
    let mut settings = (*listener.settings()).clone();
    settings.max_connections_per_client = Some(1);
    listener.set_settings(settings);
    let mut second = Client::connect(proxy.address).await;
    second.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(second.read_response().await.unwrap().status, 429);
}

/// Makes every address of 2001:db8:4ea7::/48 local, so a test can connect from many IPv6 clients.
fn local_ipv6_block() -> bool {
    std::process::Command::new("ip")
        .args([
            "-6",
            "route",
            "replace",
            "local",
            "2001:db8:4ea7::/48",
            "dev",
            "lo",
        ])
        .status()
        .is_ok_and(|status| status.success())
}

async fn connect_from(source: &str, to: SocketAddr) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    socket.set_freebind_v6(true).unwrap();
    let source: SocketAddr = format!("[{source}]:0").parse().unwrap();
    socket.bind(&source.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    Client::from_stream(socket.connect(to).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_counted_by_prefix() {
    assert!(
        local_ipv6_block(),
        "this test needs root to run `ip -6 route replace local 2001:db8:4ea7::/48 dev lo`"
    );
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start_on(
        "[::1]:0",
        "max_connections_per_client = 2\nclient_ipv6_prefix = 64",
        &[backend.address],
        "",
    )
    .await;
    // Two hosts of one /64 share its two places.
    let mut a = connect_from("2001:db8:4ea7:1::a", proxy.address).await;
    let mut b = connect_from("2001:db8:4ea7:1::b", proxy.address).await;
    assert_eq!(a.get("/").await.status, 200);
    assert_eq!(b.get("/").await.status, 200);
    let mut c = connect_from("2001:db8:4ea7:1::c", proxy.address).await;
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        c.read_response().await.unwrap().status,
        429,
        "third host of the same /64"
    );
    // Another /64 has its own places.
    let mut d = connect_from("2001:db8:4ea7:2::a", proxy.address).await;
    assert_eq!(d.get("/").await.status, 200);
    let headers = d.get("/headers").await.text();
    assert!(
        headers.contains("x-forwarded-for: 2001:db8:4ea7:2::a"),
        "{headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_connections_gets_429_each_and_does_not_pile_up() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("max_connections_per_client = 1", &[backend.address], "").await;
    let mut held = Client::connect(proxy.address).await;
    assert_eq!(held.get("/").await.status, 200);
    // 400 refused connections that stay open and read nothing until the flood is over: each
    // gets its 429 at accept, and at most 256 of them keep a descriptor on the server while they
    // linger (the others are closed right after their answer).
    let mut flood = Vec::new();
    let mut most_lingering = 0;
    for _ in 0..400 {
        flood.push(tokio::net::TcpStream::connect(proxy.address).await.unwrap());
        most_lingering = most_lingering.max(proxy.proxy.lingering_refusals());
    }
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .stats()
            .closed(CloseReason::OverLimit)
            == 400)
        .await
    );
    most_lingering = most_lingering.max(proxy.proxy.lingering_refusals());
    assert!(most_lingering <= 256, "{most_lingering} lingering");
    let mut answered = 0;
    for (index, stream) in flood.into_iter().enumerate() {
        let mut client = Client::from_stream(stream);
        // Half of them send their request late, after the server may have closed.
        if index % 2 == 0 {
            let _ = client
                .stream
                .try_write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        let response = client
            .read_response()
            .await
            .unwrap_or_else(|| panic!("refused connection {index} closed without its 429"));
        assert_eq!(response.status, 429);
        answered += 1;
    }
    assert_eq!(answered, 400);
    assert_eq!(
        held.get("/").await.status,
        200,
        "the admitted client is unaffected"
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "no refused request reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_connection_that_asked_nothing_yet_gets_the_429() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("max_connections_per_client = 5", &[backend.address], "").await;
    let mut served = Client::connect(proxy.address).await;
    assert_eq!(served.get("/").await.status, 200);
    let mut silent = Client::connect(proxy.address).await;
    let registry = proxy.proxy.registry();
    assert!(wait_until(Duration::from_secs(2), || registry.connections().len() == 2).await);
    // The cluster trims a client over its cluster-wide cap this way (both connections idle).
    for connection in registry.connections() {
        connection.request_close(CloseReason::OverLimit);
    }
    let response = silent
        .read_response()
        .await
        .expect("the connection that asked nothing gets an answer");
    assert_eq!(response.status, 429);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        served.read_response().await.is_none(),
        "an idle keep-alive connection that was answered before is just closed"
    );
    assert!(
        wait_until(Duration::from_secs(2), || proxy
            .stats()
            .closed(CloseReason::OverLimit)
            == 2)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_trimmed_halfway_through_its_first_head_gets_the_429() {
    let backend = Backend::start("b1").await;
    let proxy = TestProxy::start("max_connections_per_client = 5", &[backend.address], "").await;
    let mut halfway = Client::connect(proxy.address).await;
    // Part of a head: hyper holds it, so the connection is not parked.
    halfway.send(b"GET / HTTP/1.1\r\nHost: t\r\n").await;
    let registry = proxy.proxy.registry();
    assert!(
        wait_until(Duration::from_secs(2), || registry
            .connections()
            .iter()
            .any(
                |connection| connection.info().state == hearsay_proxy::ConnectionState::Idle
            ))
        .await
    );
    for connection in registry.connections() {
        connection.request_close(CloseReason::OverLimit);
    }
    let response = halfway
        .read_response()
        .await
        .expect("the connection that had not finished asking gets an answer");
    assert_eq!(response.status, 429);
    assert!(halfway.wait_closed(Duration::from_secs(2)).await.is_some());
}
