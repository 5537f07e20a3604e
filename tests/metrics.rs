//! End-to-end tests of the metrics endpoint (`[telemetry] metrics_listen`): a real node after
//! known traffic, scraped over HTTP; the exposition checked by `promtool check metrics` (the
//! Debian package `prometheus`), and scraped by a real Prometheus server when it is installed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{http, request, sample, scrape, start_backend, temp_data_dir, wait_for, Node};

/// A node with one listener `web` over pool `app` and its metrics on a port of its choosing.
fn node_with_metrics(backend: SocketAddr) -> (Node, SocketAddr) {
    node_with_metrics_and(backend, "", "")
}

/// As [`node_with_metrics`], with more `[telemetry]` keys and more top-level config text.
fn node_with_metrics_and(backend: SocketAddr, telemetry: &str, more: &str) -> (Node, SocketAddr) {
    let node = Node::start(&format!(
        "[node]\nid = \"metrics-e2e\"\ndata_dir = \"{}\"\nshutdown_grace = \"2s\"\n\
         [runtime]\nworker_threads = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n{telemetry}\n{more}\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n",
        temp_data_dir()
    ));
    let metrics = support::metrics_address(&node);
    (node, metrics)
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
    // Prometheus binds its web port itself: a free port is picked, then released for it, and
    // another test may take it meanwhile; Prometheus then exits, and is started again on another
    // port (a few times at most).
    let start = |web: SocketAddr| {
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
        let prometheus = Command::new("prometheus")
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
        KillOnDrop(prometheus, dir.clone())
    };
    let ready = |web: SocketAddr| -> bool {
        let Ok(mut stream) = TcpStream::connect(web) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let head = "GET /-/ready HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n";
        let mut response = String::new();
        stream.write_all(head.as_bytes()).is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && response.contains("Prometheus Server is Ready")
    };
    let mut attempt = 0;
    let (web, stop) = loop {
        attempt += 1;
        let web = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap()
        };
        let mut stop = start(web);
        let started = wait_for(
            &format!(
                "Prometheus to be ready on {web} (its log: {})",
                dir.join("prometheus.log").display()
            ),
            Duration::from_secs(60),
            || match stop.0.try_wait().unwrap() {
                Some(status) => Some(Err(status)),
                None => ready(web).then_some(Ok(())),
            },
        );
        match started {
            Ok(()) => break (web, stop),
            Err(status) => {
                let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
                assert!(
                    attempt < 3,
                    "Prometheus exited ({status}) at each of {attempt} starts; the last log:\n{log}"
                );
                eprintln!("Prometheus exited ({status}) on {web}, started again:\n{log}");
            }
        }
    };

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
struct KillOnDrop(std::process::Child, std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
}

// ---- The OTLP push (`[telemetry] otlp_metrics = true`) to a real OTLP/gRPC receiver. ----

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric};

/// An OTLP metrics receiver: the generated tonic server, on its own runtime, handing every
/// export request it gets to the test.
struct Receiver {
    address: SocketAddr,
    requests: std::sync::mpsc::Receiver<ExportMetricsServiceRequest>,
    _runtime: tokio::runtime::Runtime,
}

struct Collect(std::sync::Mutex<std::sync::mpsc::Sender<ExportMetricsServiceRequest>>);

#[tonic::async_trait]
impl MetricsService for Collect {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let _ = self.0.lock().unwrap().send(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Receiver {
    fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let socket = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let (sender, requests) = std::sync::mpsc::channel();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(Collect(std::sync::Mutex::new(
                    sender,
                ))))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(socket)),
        );
        Receiver {
            address,
            requests,
            _runtime: runtime,
        }
    }

    /// The next export request, within `limit`.
    fn next(&self, limit: Duration) -> Option<ExportMetricsServiceRequest> {
        self.requests.recv_timeout(limit).ok()
    }
}

fn string_attributes(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|attribute| {
            let value = match attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(value)) => value.clone(),
                other => panic!("{}: {other:?}", attribute.key),
            };
            (attribute.key.clone(), value)
        })
        .collect()
}

fn pushed_metric<'r>(request: &'r ExportMetricsServiceRequest, name: &str) -> &'r Metric {
    request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|metric| metric.name == name)
        .unwrap_or_else(|| panic!("{name} not pushed"))
}

fn has_labels(attributes: &[KeyValue], labels: &[(&str, &str)]) -> bool {
    let attributes = string_attributes(attributes);
    labels.len() == attributes.len()
        && labels
            .iter()
            .all(|(k, v)| attributes.iter().any(|(key, value)| key == k && value == v))
}

/// A counter's (cumulative, monotonic sum) or a gauge's value for exactly these labels.
fn pushed_value(
    request: &ExportMetricsServiceRequest,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<i64> {
    let points = match pushed_metric(request, name).data.as_ref()? {
        metric::Data::Sum(sum) => {
            assert!(sum.is_monotonic, "{name}");
            assert_eq!(sum.aggregation_temporality, 2, "{name}: cumulative");
            &sum.data_points
        }
        metric::Data::Gauge(gauge) => &gauge.data_points,
        other => panic!("{name}: {other:?}"),
    };
    let point = points.iter().find(|p| has_labels(&p.attributes, labels))?;
    assert!(point.start_time_unix_nano > 0 && point.start_time_unix_nano <= point.time_unix_nano);
    match point.value {
        Some(number_data_point::Value::AsInt(value)) => Some(value),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn otlp_push_carries_the_metrics_of_known_traffic_to_a_real_receiver() {
    let receiver = Receiver::start();
    let (backend, _slow) = start_backend();
    let (node, metrics) = node_with_metrics_and(
        backend,
        &format!(
            "otlp_endpoint = \"http://{}\"\notlp_metrics = true\notlp_metrics_interval = \"1s\"\n\
             service_name = \"hearsay-otlp-e2e\"",
            receiver.address
        ),
        "",
    );
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

    let web_2xx = [("listener", "web"), ("code", "2xx")];
    let pushed = wait_for(
        "a push with the four responses counted",
        Duration::from_secs(15),
        || {
            let request = receiver.next(Duration::from_millis(100))?;
            (pushed_value(&request, "hearsay_responses", &web_2xx) == Some(3)
                && pushed_value(
                    &request,
                    "hearsay_responses",
                    &[("listener", "web"), ("code", "4xx")],
                ) == Some(1))
            .then_some(request)
        },
    );
    // Who pushed: the resource of the node's spans (alone: no cluster id), with the SDK's own
    // `telemetry.sdk.*` beside it.
    let resource = pushed.resource_metrics[0].resource.as_ref().unwrap();
    let mut attributes = string_attributes(&resource.attributes);
    attributes.sort();
    let (sdk, attributes): (Vec<_>, Vec<_>) = attributes
        .into_iter()
        .partition(|(key, _)| key.starts_with("telemetry.sdk."));
    assert!(
        sdk.contains(&("telemetry.sdk.language".to_owned(), "rust".to_owned())),
        "{sdk:?}"
    );
    assert_eq!(
        attributes,
        [
            ("service.instance.id", "metrics-e2e"),
            ("service.name", "hearsay-otlp-e2e"),
            ("service.version", "0.1.0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    let backend_address = backend.to_string();
    for (name, labels, expected) in [
        ("hearsay_requests", vec![("listener", "web")], 4),
        ("hearsay_connections_accepted", vec![("listener", "web")], 2),
        (
            "hearsay_responses",
            vec![("listener", "web"), ("code", "5xx")],
            0,
        ),
        ("hearsay_connections_open", vec![("listener", "web")], 1),
        (
            "hearsay_backend_requests",
            vec![("pool", "app"), ("backend", backend_address.as_str())],
            3,
        ),
        ("hearsay_cluster_members", vec![("state", "alive")], 1),
        ("hearsay_build_info", vec![("version", "0.1.0")], 1),
    ] {
        assert_eq!(
            pushed_value(&pushed, name, &labels),
            Some(expected),
            "{name} {labels:?}"
        );
    }
    // The histogram: our buckets as explicit bounds (1 ms to 10 s), cumulative, sum and count.
    let duration = pushed_metric(&pushed, "hearsay_request_duration");
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(histogram)) = &duration.data else {
        panic!("{duration:?}");
    };
    assert_eq!(histogram.aggregation_temporality, 2, "cumulative");
    let point = histogram
        .data_points
        .iter()
        .find(|p| has_labels(&p.attributes, &web_2xx))
        .unwrap();
    assert_eq!(point.count, 3);
    assert_eq!(point.explicit_bounds.first(), Some(&0.001));
    assert_eq!(point.explicit_bounds.last(), Some(&10.0));
    assert_eq!(point.explicit_bounds.len(), 13);
    assert_eq!(point.bucket_counts.len(), 14);
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), 3);
    let sum = point.sum.unwrap();
    assert!(sum > 0.0 && sum < 30.0, "{sum}");

    // The pushed values are the exposition's: the same reading, encoded twice.
    let exposition = scrape(metrics);
    assert_eq!(
        sample(&exposition, "hearsay_requests_total{listener=\"web\"}"),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &exposition,
            "hearsay_request_duration_seconds_sum{listener=\"web\",code=\"2xx\"}"
        ),
        Some(sum)
    );
    // And it goes on, every interval (about a second apart, not bunched).
    let next = receiver.next(Duration::from_secs(5)).expect("a next push");
    let time =
        |request: &ExportMetricsServiceRequest| match pushed_metric(request, "hearsay_requests")
            .data
            .as_ref()
        {
            Some(metric::Data::Sum(sum)) => sum.data_points[0].time_unix_nano,
            other => panic!("{other:?}"),
        };
    let apart = time(&next).saturating_sub(time(&pushed));
    assert!(apart >= 500_000_000, "pushes {apart} ns apart");
    drop(client);
}

#[test]
fn the_last_push_at_shutdown_has_the_drained_nodes_final_counts() {
    let receiver = Receiver::start();
    let (backend, _slow) = start_backend();
    let gossip = support::cluster::free_udp_port([127, 0, 0, 1]);
    let (mut node, _metrics) = node_with_metrics_and(
        backend,
        &format!(
            "otlp_endpoint = \"http://{}\"\notlp_metrics = true\notlp_metrics_interval = \"1h\"",
            receiver.address
        ),
        &format!(
            "[cluster]\nlisten = \"{gossip}\"\nseeds = [\"{gossip}\"]\nsecret = \"{}\"\ncluster_id = \"otlp-e2e\"",
            support::cluster::KEY
        ),
    );
    let mut client = TcpStream::connect(node.address).unwrap();
    for _ in 0..2 {
        let response = request(&mut client, "/hello");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    }
    drop(client);
    // An hour's interval: nothing is pushed while the node runs...
    assert!(receiver.next(Duration::from_millis(200)).is_none());
    node.signal("-TERM");
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    // ...and once at shutdown, after the drain, with every request counted.
    let last = receiver
        .next(Duration::from_secs(1))
        .expect("the last push before the node exited");
    assert_eq!(
        pushed_value(&last, "hearsay_requests", &[("listener", "web")]),
        Some(2)
    );
    assert_eq!(
        pushed_value(&last, "hearsay_connections_open", &[("listener", "web")]),
        Some(0)
    );
    let resource = string_attributes(
        &last.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes,
    );
    assert!(
        resource.contains(&("hearsay.cluster.id".to_owned(), "otlp-e2e".to_owned())),
        "{resource:?}"
    );
    assert!(
        receiver.next(Duration::from_millis(100)).is_none(),
        "one last push only"
    );
}

#[test]
fn a_collector_that_never_answers_costs_a_warning_and_never_the_proxy() {
    // Connections are queued by the kernel but never served: every push waits for its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (backend, _slow) = start_backend();
    let (mut node, _metrics) = node_with_metrics_and(
        backend,
        &format!(
            "otlp_endpoint = \"http://{}\"\notlp_metrics = true\notlp_metrics_interval = \"1s\"",
            silent.local_addr().unwrap()
        ),
        "",
    );
    let mut client = TcpStream::connect(node.address).unwrap();
    let warning = "cannot push the metrics over OTLP";
    let mut warnings = Vec::new();
    // Requests keep being served, at once, while pushes fail; four seconds: several failed pushes.
    // A push that held requests up would hold up every request near it; a busy core may delay
    // one or two of them by itself: at most two over 500 ms, none over 2 s.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut slow = Vec::new();
    while std::time::Instant::now() < until {
        let sent = std::time::Instant::now();
        let response = request(&mut client, "/hello");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(2), "a request took {took:?}");
        if took > Duration::from_millis(500) {
            slow.push(took);
        }
        while let Ok(line) = node.log.recv_timeout(Duration::from_millis(50)) {
            if line.contains(warning) {
                warnings.push(line);
            }
        }
    }
    assert!(slow.len() <= 2, "requests over 500 ms: {slow:?}");
    // Said once (the first failure), not once per push.
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("failed_pushes=1"), "{}", warnings[0]);
    drop(client);
    // The stop is not held up by the collector: the last push gives up within its bound.
    let stopping = std::time::Instant::now();
    node.signal("-TERM");
    let status = node.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
    let last = wait_for("the last push's warning", Duration::from_secs(5), || {
        let line = node.log.recv_timeout(Duration::from_millis(100)).ok()?;
        line.contains("cannot push the last metrics over OTLP")
            .then_some(line)
    });
    assert!(last.contains("no answer within 2s"), "{last}");
    drop(silent);
}
