//! Pools over real sockets: distribution per algorithm, active health checks with thresholds,
//! passive ejection, fail-open, retries, draining with a request in flight.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{closed_port, wait_until, Backend, Client, TestProxy};

async fn names_of(client: &mut Client, requests: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..requests {
        let response = client.get("/").await;
        assert_eq!(response.status, 200, "{}", response.text());
        *counts.entry(response.text()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights_over_real_requests() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let text = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n\
         algorithm = \"weighted_round_robin\"\nbackends = [{{ address = \"{}\", weight = 3 }}, \"{}\"]\n",
        a.address, b.address
    );
    let proxy = TestProxy::from_config(&text).await;
    let mut client = Client::connect(proxy.address).await;
    let counts = names_of(&mut client, 80).await;
    assert_eq!(counts.get("hello from a"), Some(&60), "{counts:?}");
    assert_eq!(counts.get("hello from b"), Some(&20), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_client_on_one_backend() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addresses: Vec<_> = backends.iter().map(|b| b.address).collect();
    let proxy = TestProxy::start("", &addresses, "algorithm = \"consistent_hash\"").await;
    let mut client = Client::connect(proxy.address).await;
    let counts = names_of(&mut client, 30).await;
    assert_eq!(counts.len(), 1, "one client, one backend: {counts:?}");
    // Other connections of the same client (same key) land there too.
    let mut again = Client::connect(proxy.address).await;
    let other = names_of(&mut again, 5).await;
    assert_eq!(
        other.keys().collect::<Vec<_>>(),
        counts.keys().collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_and_p2c_avoid_a_busy_backend() {
    for algorithm in ["least_connections", "p2c"] {
        let one = Backend::start("one").await;
        let two = Backend::start("two").await;
        let proxy = TestProxy::start(
            "",
            &[one.address, two.address],
            &format!("algorithm = \"{algorithm}\""),
        )
        .await;
        // Three requests that never end leave one backend busier than the other (for as long as
        // the quick requests take, however slow); quick requests must then avoid the busier one.
        let mut holders = Vec::new();
        for _ in 0..3 {
            let mut holder = Client::connect(proxy.address).await;
            holder.send(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n").await;
            holders.push(holder);
        }
        let pool = &proxy.proxy.pools()[0];
        assert!(
            wait_until(Duration::from_secs(2), || pool
                .backends()
                .iter()
                .map(|b| b.in_flight())
                .sum::<u64>()
                == 3)
            .await
        );
        let busy = pool
            .backends()
            .iter()
            .max_by_key(|b| b.in_flight())
            .unwrap()
            .address
            .clone();
        let mut client = Client::connect(proxy.address).await;
        let counts = names_of(&mut client, 10).await;
        let busy_name = if busy == one.address.to_string() {
            "hello from one"
        } else {
            "hello from two"
        };
        assert!(
            counts.get(busy_name).copied().unwrap_or(0) <= 1,
            "{algorithm}: the busier backend got {counts:?}"
        );
        drop(holders);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_http_checks_mark_a_backend_unhealthy_and_back_with_thresholds() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = TestProxy::start(
        "",
        &[a.address, b.address],
        "[pool.health_check]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"2s\"\n\
         healthy_threshold = 2\nunhealthy_threshold = 3",
    )
    .await;
    let pool = proxy.proxy.pools()[0].clone();
    let backend_a = pool.backend(&a.address.to_string()).unwrap();
    // Counted from before the switch: every failed check is among those counted.
    let checks_before = a.switches.health_checks.load(Ordering::SeqCst);
    a.switches.health_ok.store(false, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(3), || !backend_a.health().healthy).await,
        "marked unhealthy"
    );
    assert!(
        a.switches.health_checks.load(Ordering::SeqCst) - checks_before >= 3,
        "not before three failed checks"
    );
    assert!(
        backend_a.health().reason.contains("status 503"),
        "{:?}",
        backend_a.health()
    );
    // No traffic reaches it while unhealthy.
    let mut client = Client::connect(proxy.address).await;
    let counts = names_of(&mut client, 10).await;
    assert_eq!(counts.get("hello from b"), Some(&10), "{counts:?}");

    a.switches.health_ok.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(3), || backend_a.health().healthy).await,
        "healthy again"
    );
    let counts = names_of(&mut client, 10).await;
    assert_eq!(
        counts.get("hello from a"),
        Some(&5),
        "back in rotation: {counts:?}"
    );
    assert_eq!(
        pool.stats.health_transitions.load(Ordering::SeqCst),
        2,
        "each transition counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_find_a_stopped_backend() {
    let alive = Backend::start("alive").await;
    let (_held, stopped) = closed_port().await;
    let proxy = TestProxy::start(
        "",
        &[alive.address, stopped],
        "[pool.health_check]\nkind = \"tcp\"\ninterval = \"50ms\"\nunhealthy_threshold = 1",
    )
    .await;
    let pool = proxy.proxy.pools()[0].clone();
    let dead = pool.backend(&stopped.to_string()).unwrap();
    assert!(wait_until(Duration::from_secs(3), || !dead.health().healthy).await);
    assert!(
        dead.health().reason.contains("connect"),
        "{:?}",
        dead.health()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_backend_is_unhealthy_the_pool_fails_open() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = TestProxy::start(
        "",
        &[a.address, b.address],
        "[pool.health_check]\npath = \"/healthz\"\ninterval = \"50ms\"\nunhealthy_threshold = 1",
    )
    .await;
    let pool = proxy.proxy.pools()[0].clone();
    a.switches.health_ok.store(false, Ordering::SeqCst);
    b.switches.health_ok.store(false, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(3), || pool
            .backends()
            .iter()
            .all(|b| !b.health().healthy))
        .await
    );
    let mut client = Client::connect(proxy.address).await;
    let counts = names_of(&mut client, 10).await;
    assert_eq!(
        counts.values().sum::<usize>(),
        10,
        "still served: {counts:?}"
    );
    assert_eq!(counts.len(), 2, "forwarded to all of them: {counts:?}");
    assert!(pool.is_failing_open());
    assert!(pool.stats.fail_open_requests.load(Ordering::SeqCst) >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_a_backend_which_returns_after_the_ejection_time() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = TestProxy::start(
        "",
        &[a.address, b.address],
        "[pool.outlier]\nconsecutive_failures = 3\nbase_ejection = \"3s\"",
    )
    .await;
    let pool = proxy.proxy.pools()[0].clone();
    a.switches.broken.store(true, Ordering::SeqCst);
    let mut client = Client::connect(proxy.address).await;
    let mut errors = 0;
    for _ in 0..20 {
        if client.get("/").await.status == 500 {
            errors += 1;
        }
    }
    // (The ejection outlasts the 17 requests after it, however slow they are.)
    assert_eq!(errors, 3, "a is ejected after its third 500");
    assert_eq!(pool.stats.ejections.load(Ordering::SeqCst), 1);
    let backend_a = pool.backend(&a.address.to_string()).unwrap();
    assert!(
        backend_a.health().reason.contains("3 consecutive failures"),
        "{:?}",
        backend_a.health()
    );
    a.switches.broken.store(false, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || backend_a.health().healthy).await,
        "back after the 3 s ejection"
    );
    let counts = names_of(&mut client, 10).await;
    assert_eq!(counts.get("hello from a"), Some(&5), "{counts:?}");
}

/// A pool of `a` and `b` whose `a` is ejected (three 500s in a row, its checks failing too, as a
/// backend that went down), with an ejection far longer than any wait below. The failing checks
/// never reach the unhealthy threshold in the test's time (100 checks 100 ms apart): `a` stays
/// in rotation until the outlier detection ejects it, however slowly the requests go; a failing
/// check still lifts nothing, and the first passing one lifts the ejection.
async fn eject_a(outlier: &str) -> (Backend, Backend, TestProxy) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = TestProxy::start(
        "",
        &[a.address, b.address],
        &format!(
            "[pool.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"2s\"\n\
             healthy_threshold = 2\nunhealthy_threshold = 100\n\
             [pool.outlier]\nconsecutive_failures = 3\nbase_ejection = \"30s\"\n{outlier}"
        ),
    )
    .await;
    a.switches.health_ok.store(false, Ordering::SeqCst);
    a.switches.broken.store(true, Ordering::SeqCst);
    let mut client = Client::connect(proxy.address).await;
    let mut errors = 0;
    for _ in 0..20 {
        if client.get("/").await.status == 500 {
            errors += 1;
        }
    }
    assert_eq!(errors, 3, "a is ejected after its third 500");
    let pool = &proxy.proxy.pools()[0];
    assert_eq!(pool.stats.ejections.load(Ordering::SeqCst), 1);
    (a, b, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_active_check_ends_an_ejection_early() {
    let (a, _b, proxy) = eject_a("").await;
    let pool = proxy.proxy.pools()[0].clone();
    let backend_a = pool.backend(&a.address.to_string()).unwrap();
    let (remaining, since) = backend_a.local_ejection().expect("ejected");
    assert!(remaining > Duration::from_secs(25), "{remaining:?}");
    // A check that began before the ejection (or in its millisecond) says nothing about after.
    assert!(!backend_a.lift_ejection(since));
    assert!(!backend_a.health().healthy);

    // The backend comes back: its first passing check lifts the 30 s ejection at once.
    let back = std::time::Instant::now();
    a.switches.broken.store(false, Ordering::SeqCst);
    a.switches.health_ok.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || backend_a.health().healthy).await,
        "still out: {:?}",
        backend_a.health()
    );
    println!(
        "ejection lifted {:?} after the backend came back",
        back.elapsed()
    );
    assert!(backend_a.local_ejection().is_none());
    assert!(
        backend_a.health().reason.contains("passed an active check"),
        "{:?}",
        backend_a.health()
    );
    let mut client = Client::connect(proxy.address).await;
    let counts = names_of(&mut client, 10).await;
    assert_eq!(
        counts.get("hello from a"),
        Some(&5),
        "back in rotation: {counts:?}"
    );

    // Failures count afresh, and the next ejection is longer (down again: checks fail too, or
    // the next one would lift it).
    a.switches.health_ok.store(false, Ordering::SeqCst);
    a.switches.broken.store(true, Ordering::SeqCst);
    let mut errors = 0;
    for _ in 0..20 {
        if client.get("/").await.status == 500 {
            errors += 1;
        }
    }
    assert_eq!(errors, 3, "ejected again after three more");
    let (remaining, _) = backend_a.local_ejection().expect("ejected again");
    assert!(
        remaining > Duration::from_secs(55),
        "twice the base: {remaining:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_uneject_on_healthy_check_an_ejection_runs_its_course() {
    let (a, _b, proxy) = eject_a("uneject_on_healthy_check = false").await;
    let pool = proxy.proxy.pools()[0].clone();
    let backend_a = pool.backend(&a.address.to_string()).unwrap();
    a.switches.broken.store(false, Ordering::SeqCst);
    a.switches.health_ok.store(true, Ordering::SeqCst);
    // Passing checks call it healthy, yet it stays ejected.
    let checks = a.switches.health_checks.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || backend_a.checked_healthy()
            && a.switches.health_checks.load(Ordering::SeqCst) >= checks + 4)
        .await
    );
    assert!(!backend_a.health().healthy, "{:?}", backend_a.health());
    assert!(backend_a.local_ejection().is_some());
    let mut client = Client::connect(proxy.address).await;
    let counts = names_of(&mut client, 6).await;
    assert_eq!(counts.get("hello from b"), Some(&6), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_another_backend_when_safe() {
    let alive = Backend::start("alive").await;
    let (_held, dead) = closed_port().await;
    let proxy = TestProxy::start(
        "",
        &[dead, alive.address],
        "[pool.outlier]\nconsecutive_failures = 0",
    )
    .await;
    let mut client = Client::connect(proxy.address).await;
    for _ in 0..6 {
        let response = client.get("/").await;
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, "hello from alive")
        );
    }
    let pool = proxy.proxy.pools()[0].clone();
    assert_eq!(
        pool.stats.retries.load(Ordering::SeqCst),
        3,
        "every other request was retried"
    );
    // A POST is not retried: the dead backend's turn answers 502.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        client
            .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .await;
        statuses.push(client.read_response().await.unwrap().status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_backend_lets_its_request_finish_and_sends_it_no_more() {
    use hearsay_proxy::BackendState;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = TestProxy::start("", &[a.address, b.address], "").await;
    let pool = proxy.proxy.pools()[0].clone();
    let mut slow = Client::connect(proxy.address).await;
    // Long enough to be seen in flight, and to still be when a is set draining, under load.
    slow.send(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        wait_until(Duration::from_secs(2), || pool.backends()[0].in_flight()
            == 1
            && a.requests.load(Ordering::SeqCst) == 1)
        .await,
        "the first request reached a"
    );
    pool.set_backend_state(&a.address.to_string(), BackendState::Draining)
        .unwrap();
    let before = a.requests.load(Ordering::SeqCst);
    let mut client = Client::connect(proxy.address).await;
    let counts = names_of(&mut client, 6).await;
    assert_eq!(counts.get("hello from b"), Some(&6), "{counts:?}");
    assert_eq!(
        a.requests.load(Ordering::SeqCst),
        before,
        "no new request reached a"
    );
    let response = slow.read_response().await.unwrap();
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "slow 2000"),
        "the in-flight request finished"
    );
    assert!(
        wait_until(Duration::from_secs(1), || pool.backends()[0].in_flight()
            == 0)
        .await
    );
    assert_eq!(
        pool.backends()[0].idle_connections(),
        0,
        "a draining backend keeps no idle connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_is_built_per_change_of_the_backend_set_not_per_request_or_retry() {
    let alive = Backend::start("alive").await;
    let other = Backend::start("other").await;
    let (_held, dead) = closed_port().await;
    for algorithm in [
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "p2c",
        "consistent_hash",
    ] {
        let proxy = TestProxy::start(
            "",
            &[dead, alive.address],
            &format!("algorithm = \"{algorithm}\"\n[pool.outlier]\nconsecutive_failures = 0"),
        )
        .await;
        let pool = proxy.proxy.pools()[0].clone();
        let rebuilds = || pool.stats.selection_rebuilds.load(Ordering::SeqCst);
        assert_eq!(rebuilds(), 1, "{algorithm}: built once at start");
        let mut client = Client::connect(proxy.address).await;
        let counts = names_of(&mut client, 20).await;
        assert_eq!(counts.get("hello from alive"), Some(&20), "{algorithm}");
        let retries = pool.stats.retries.load(Ordering::SeqCst);
        if algorithm != "consistent_hash" {
            // (One client sticks to one backend under consistent hashing.)
            assert!(
                retries > 0,
                "{algorithm}: the dead backend's turns were retried"
            );
        }
        assert_eq!(rebuilds(), 1, "{algorithm}: none per request or retry");

        // Each change of the set rebuilds once; operator state only filters.
        let other_address = other.address.to_string();
        pool.add_backend(&other_address, 1).unwrap();
        assert_eq!(rebuilds(), 2, "{algorithm}: added");
        pool.set_backend_weight(&other_address, 3).unwrap();
        pool.set_backend_weight(&other_address, 3).unwrap();
        assert_eq!(rebuilds(), 3, "{algorithm}: weight changed (once)");
        pool.set_backend_state(&dead.to_string(), hearsay_proxy::BackendState::Disabled)
            .unwrap();
        assert_eq!(rebuilds(), 3, "{algorithm}: a state change is a filter");
        let counts = names_of(&mut client, 20).await;
        assert_eq!(
            counts.values().sum::<usize>(),
            20,
            "{algorithm}: {counts:?}"
        );
        pool.remove_backend(&other_address).unwrap();
        let counts = names_of(&mut client, 10).await;
        assert_eq!(counts.get("hello from alive"), Some(&10), "{algorithm}");
        assert_eq!(rebuilds(), 4, "{algorithm}: removed");
    }
}
