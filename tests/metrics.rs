//! End-to-end tests of the metrics endpoint (`[telemetry] metrics_listen`): a real node after
//! known traffic, scraped over HTTP; the exposition checked by `promtool check metrics` (the
//! Debian package `prometheus`), and scraped by a real Prometheus server when it is installed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{request, start_backend, temp_data_dir, wait_for, Node};

/// A node with one listener `web` over pool `app` and its metrics on a port of its choosing.
fn node_with_metrics(backend: SocketAddr) -> (Node, SocketAddr) {
    let node = Node::start(&format!(
        "[node]\nid = \"metrics-e2e\"\ndata_dir = \"{}\"\n[runtime]\nworker_threads = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n",
        temp_data_dir()
    ));
    let address = |line: &str| {
        let rest = line
            .contains("metrics endpoint listening")
            .then(|| line.split("address=").nth(1))??;
        rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
    };
    let logged = node.started.iter().find_map(|line| address(line));
    let metrics = logged.unwrap_or_else(|| {
        wait_for(
            "the node to log its metrics address",
            Duration::from_secs(10),
            || address(&node.log.try_recv().ok()?),
        )
    });
    (node, metrics)
}

/// Sends one request to the metrics server and returns the whole response (it closes).
fn http(address: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn scrape(address: SocketAddr) -> String {
    let response = http(
        address,
        "GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of one sample, by its exact name and labels as exposed.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[test]
fn metrics_count_known_traffic_and_pass_promtool() {
    let (backend, _slow) = start_backend();
    let (node, metrics) = node_with_metrics(backend);

    // Three requests on one keep-alive connection, and a bad one (two Host headers: 400).
    let mut client = TcpStream::connect(node.address).unwrap();
    for _ in 0..3 {
        let response = request(&mut client, "/hello");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    }
    let bad = http(
        node.address,
        "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

    let backend_series =
        format!("hearsay_backend_requests_total{{pool=\"app\",backend=\"{backend}\"}}");
    // A response is counted when hyper is done with it, just after the client has it all.
    let exposition = wait_for(
        "the four responses to be counted",
        Duration::from_secs(10),
        || {
            let exposition = scrape(metrics);
            (sample(
                &exposition,
                "hearsay_responses_total{listener=\"web\",code=\"4xx\"}",
            ) == Some(1.0)
                && sample(
                    &exposition,
                    "hearsay_responses_total{listener=\"web\",code=\"2xx\"}",
                ) == Some(3.0))
            .then_some(exposition)
        },
    );
    for (series, expected) in [
        ("hearsay_requests_total{listener=\"web\"}", 4.0),
        ("hearsay_connections_accepted_total{listener=\"web\"}", 2.0),
        (
            "hearsay_responses_total{listener=\"web\",code=\"5xx\"}",
            0.0,
        ),
        (
            "hearsay_request_duration_seconds_count{listener=\"web\",code=\"2xx\"}",
            3.0,
        ),
        (
            "hearsay_request_duration_seconds_bucket{listener=\"web\",code=\"2xx\",le=\"+Inf\"}",
            3.0,
        ),
        (
            "hearsay_request_duration_seconds_count{listener=\"web\",code=\"4xx\"}",
            1.0,
        ),
        (
            "hearsay_upstream_response_duration_seconds_count{pool=\"app\"}",
            3.0,
        ),
        (backend_series.as_str(), 3.0),
        ("hearsay_connections_refused_total{listener=\"web\"}", 0.0),
        ("hearsay_cluster_members{state=\"alive\"}", 1.0),
        ("hearsay_listener_settings_version{listener=\"web\"}", 1.0),
        ("hearsay_pool_selection_rebuilds_total{pool=\"app\"}", 1.0),
        ("hearsay_build_info{version=\"0.1.0\"}", 1.0),
    ] {
        assert_eq!(
            sample(&exposition, series),
            Some(expected),
            "{series} in:\n{exposition}"
        );
    }
    let backend_healthy = format!("hearsay_backend_healthy{{pool=\"app\",backend=\"{backend}\"}}");
    assert_eq!(sample(&exposition, &backend_healthy), Some(1.0));
    // The duration sums are real times: positive, and under the test's own bound.
    let sum = sample(
        &exposition,
        "hearsay_request_duration_seconds_sum{listener=\"web\",code=\"2xx\"}",
    )
    .unwrap();
    assert!(sum > 0.0 && sum < 30.0, "{sum}");
    // The keep-alive connection is still open; the bad one closed.
    assert_eq!(
        sample(&exposition, "hearsay_connections_open{listener=\"web\"}"),
        Some(1.0)
    );
    assert!(!exposition.contains("client="), "no per-client labels");

    // Other paths and methods.
    let other = http(
        metrics,
        "GET / HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    );
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    let post = http(
        metrics,
        "POST /metrics HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(
        post.to_ascii_lowercase().contains("allow: get, head"),
        "{post}"
    );
    // Prometheus asks for OpenMetrics first, and gets it.
    let openmetrics = http(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: m\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
    );
    assert!(
        openmetrics.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{openmetrics}"
    );
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    assert!(
        openmetrics.contains("hearsay_requests_total{listener=\"web\"} 4"),
        "{openmetrics}"
    );

    promtool_check(&exposition);
    drop(client);
}

/// `promtool check metrics` on an exposition (lint: names, units, help, types). Skipped, with a
/// message, only where promtool is not installed (`.ci/run` installs it).
fn promtool_check(exposition: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        support::missing_tool(
            "promtool check: promtool is not installed (Debian package `prometheus`)",
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\nexposition:\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A real Prometheus server scrapes the node: the target is up and a known value arrives
/// through Prometheus' query API. Skipped, with a message, where `prometheus` is not installed.
#[test]
fn a_real_prometheus_scrapes_the_node() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        support::missing_tool(
            "the prometheus server is not installed (Debian package `prometheus`)",
        );
        return;
    }
    let (backend, _slow) = start_backend();
    let (node, metrics) = node_with_metrics(backend);
    let mut client = TcpStream::connect(node.address).unwrap();
    for _ in 0..3 {
        let response = request(&mut client, "/hello");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    }

    let dir = std::path::PathBuf::from(temp_data_dir());
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n\
             scrape_configs:\n  - job_name: hearsay\n    static_configs:\n      - targets: [\"{metrics}\"]\n"
        ),
    )
    .unwrap();
    let web = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let stop = KillOnDrop(&mut prometheus, dir.clone());

    let query = |expression: &str| -> Option<String> {
        let mut stream = TcpStream::connect(web).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let head = format!(
            "GET /api/v1/query?query={expression} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    };
    let up = wait_for(
        &format!(
            "Prometheus to see the node up (its log: {})",
            dir.join("prometheus.log").display()
        ),
        Duration::from_secs(60),
        || {
            let response = query("up")?;
            response
                .contains(&format!("\"instance\":\"{metrics}\""))
                .then_some(response)
                .filter(|response| response.contains(",\"1\"]"))
        },
    );
    assert!(up.contains("\"job\":\"hearsay\""), "{up}");
    // The value Prometheus stored is the node's count of the three requests.
    wait_for(
        "Prometheus to hold hearsay_requests_total = 3",
        Duration::from_secs(30),
        || {
            let response = query("hearsay_requests_total%7Blistener%3D%22web%22%7D")?;
            response.contains(",\"3\"]").then_some(())
        },
    );
    drop(stop);
    drop(client);
}

/// Kills (and reaps) the Prometheus server when the test ends, pass or fail, and removes its
/// directory (its database) unless the test failed (its log is there).
struct KillOnDrop<'a>(&'a mut std::process::Child, std::path::PathBuf);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
}
