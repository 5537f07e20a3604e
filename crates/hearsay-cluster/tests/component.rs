//! Component tests: several nodes in one test process, each a real `Proxy` (listeners, pools,
//! registry, as the binary builds them) and a real `Cluster`, gossiping over chitchat's
//! in-process `ChannelTransport` (links cut and healed at will). Gossip runs on the real clock
//! (node clocks are unix time: stamps, ejections), with a short interval and bounded waits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearsay_cluster::{
    Caller, ChannelTransport, Cluster, ClusterOptions, FileValues, ListenerField, MemberState,
    SettingOrigin,
};
use hearsay_config::{ClusterConfig, Config};
use hearsay_proxy::{ClientKey, Proxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const GOSSIP_INTERVAL: Duration = Duration::from_millis(50);
/// Generous: the machine may be loaded; a passing run takes a few rounds.
const DEADLINE: Duration = Duration::from_secs(30);

struct Node {
    proxy: Arc<Proxy>,
    cluster: Arc<Cluster>,
    gossip: SocketAddr,
    data_dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn gossip_address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn data_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hearsay-component-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts node `name` gossiping on virtual port `port` of `transport`, joining through `seeds`,
/// with one listener `web` (extra keys `listener_keys`) on an ephemeral port, not yet serving.
async fn start(
    name: &str,
    port: u16,
    seeds: &[u16],
    transport: &ChannelTransport,
    listener_keys: &str,
) -> Node {
    let forget = Duration::from_secs(3600);
    start_node(name, port, seeds, transport, listener_keys, "", forget).await
}

/// [`start`], with keys of the pool `app` (of one backend, `127.0.0.1:9`, where nothing
/// listens) and the time a dead node's state is kept (`cluster.dead_node_grace`).
async fn start_node(
    name: &str,
    port: u16,
    seeds: &[u16],
    transport: &ChannelTransport,
    listener_keys: &str,
    pool_keys: &str,
    dead_node_grace: Duration,
) -> Node {
    let text = format!(
        "[node]\nid = \"{name}\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener_keys}\n\
         [[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9\"]\n{pool_keys}\n"
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    let proxy = Proxy::new(&config).unwrap();
    let gossip = gossip_address(port);
    let data_dir = data_dir(name);
    let cluster = ClusterConfig {
        listen: gossip,
        advertise: gossip,
        seeds: seeds
            .iter()
            .map(|port| gossip_address(*port).to_string())
            .collect(),
        cluster_id: "component".to_owned(),
        gossip_interval: GOSSIP_INTERVAL,
        keys: Vec::new(),
        failure_threshold: 8.0,
        dead_node_grace,
        probers_per_backend: 2,
        published_clients: 1000,
        max_clock_skew: Duration::from_secs(60),
    };
    let cluster = Cluster::start(
        Arc::clone(&proxy),
        ClusterOptions {
            node_id: name.to_owned(),
            data_dir: data_dir.clone(),
            admin_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            version: "test".to_owned(),
            config: Some(cluster),
            file: FileValues::of(&config),
            transport: Some(Arc::new(transport.clone())),
        },
    )
    .await
    .unwrap();
    cluster.set_ready(true);
    Node {
        proxy,
        cluster,
        gossip,
        data_dir,
    }
}

/// Polls `check` until it holds; fails after [`DEADLINE`].
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn keepalive(node: &Node) -> Duration {
    node.proxy
        .listener("web")
        .unwrap()
        .settings()
        .keepalive_timeout
}

fn set_keepalive(node: &Node, timeout: Duration) {
    node.cluster
        .update_listener(
            "web",
            None,
            &[ListenerField::KeepaliveTimeout],
            Caller::default(),
            |settings| {
                let mut new = settings.clone();
                new.keepalive_timeout = timeout;
                Ok::<_, String>(new)
            },
        )
        .expect("listener web")
        .expect("a valid change");
}

fn written_by(node: &Node) -> Option<String> {
    node.cluster
        .listener_origins("web")
        .into_iter()
        .find(|(field, _)| *field == ListenerField::KeepaliveTimeout)
        .and_then(|(_, origin)| match origin {
            SettingOrigin::Written { node, .. } => Some(node),
            SettingOrigin::File => None,
        })
}

async fn cut(transport: &ChannelTransport, a: &Node, b: &Node) {
    transport.remove_link(a.gossip, b.gossip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_ratio_written_on_one_node_reaches_every_node_and_survives_a_restart() {
    let transport = ChannelTransport::default();
    let a = start("a", 11, &[12, 13], &transport, "").await;
    let b = start("b", 12, &[11, 13], &transport, "").await;
    let c = start("c", 13, &[11, 12], &transport, "").await;
    for node in [&a, &b, &c] {
        assert_eq!(node.proxy.sample_ratio().get(), 0.01, "the config default");
        assert_eq!(node.cluster.sample_ratio_origin(), SettingOrigin::File);
    }
    assert!(b
        .cluster
        .set_sample_ratio(1.5, Caller::default())
        .unwrap_err()
        .contains("out of range"));
    assert_eq!(
        b.cluster.set_sample_ratio(0.5, Caller::default()),
        Ok((0.01, 0.5))
    );
    until("sample ratio 0.5 on a, b and c", || {
        [&a, &b, &c]
            .iter()
            .all(|node| node.proxy.sample_ratio().get() == 0.5)
    })
    .await;
    for node in [&a, &c] {
        assert!(matches!(
            node.cluster.sample_ratio_origin(),
            SettingOrigin::Written { node, .. } if node == "b"
        ));
    }
    // Persisted: c restarted alone (no peer to learn it from) starts with the written ratio,
    // not its file's.
    let data_dir = c.data_dir.clone();
    c.cluster.leave().await;
    let config = Config::parse(
        "[node]\nid = \"c\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let proxy = Proxy::new(&config).unwrap();
    let _alone = Cluster::start(
        Arc::clone(&proxy),
        ClusterOptions {
            node_id: "c".to_owned(),
            data_dir,
            admin_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            version: "test".to_owned(),
            config: None,
            file: FileValues::of(&config),
            transport: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(proxy.sample_ratio().get(), 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_setting_written_on_one_node_reaches_every_node() {
    let transport = ChannelTransport::default();
    let a = start("a", 1, &[2, 3], &transport, "").await;
    let b = start("b", 2, &[1, 3], &transport, "").await;
    let c = start("c", 3, &[1, 2], &transport, "").await;
    until("three members alive everywhere", || {
        [&a, &b, &c].iter().all(|node| {
            let members = node.cluster.members();
            members.len() == 3 && members.iter().all(|m| m.state == MemberState::Alive)
        })
    })
    .await;
    set_keepalive(&b, Duration::from_secs(7));
    until("keepalive_timeout 7s on a, b and c", || {
        [&a, &b, &c]
            .iter()
            .all(|node| keepalive(node) == Duration::from_secs(7))
    })
    .await;
    for node in [&a, &c] {
        assert_eq!(written_by(node).as_deref(), Some("b"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writes_of_one_setting_end_with_the_later_stamp_everywhere() {
    let transport = ChannelTransport::default();
    transport
        .remove_link(gossip_address(11), gossip_address(12))
        .await;
    let a = start("a", 11, &[12], &transport, "").await;
    let b = start("b", 12, &[11], &transport, "").await;
    // Partitioned: each writes the same setting. a, the lower node id (which loses a tie of
    // equal milliseconds), writes second, a few milliseconds later: only the later stamp can
    // make its write win.
    set_keepalive(&b, Duration::from_secs(22));
    let b_wrote = std::time::Instant::now();
    until("a later millisecond", || {
        b_wrote.elapsed() >= Duration::from_millis(5)
    })
    .await;
    set_keepalive(&a, Duration::from_secs(11));
    assert_eq!(keepalive(&a), Duration::from_secs(11));
    assert_eq!(keepalive(&b), Duration::from_secs(22));
    transport.add_link(a.gossip, b.gossip).await;
    until("a's later write wins on a and b", || {
        keepalive(&a) == Duration::from_secs(11) && keepalive(&b) == Duration::from_secs(11)
    })
    .await;
    assert_eq!(written_by(&a).as_deref(), Some("a"));
    assert_eq!(written_by(&b).as_deref(), Some("a"));
}

/// Entries outlive their writer: every node adopts them into its own gossip state, so a node
/// that joins after the writer died and was forgotten still gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writers_setting_reaches_a_node_that_joins_after_it_was_forgotten() {
    let transport = ChannelTransport::default();
    // Dead for a while before it is forgotten: long enough to be seen Dead by a polling test on
    // a busy machine.
    let forget = Duration::from_secs(3);
    let a = start_node("a", 21, &[22], &transport, "", "", forget).await;
    let b = start_node("b", 22, &[21], &transport, "", "", forget).await;
    set_keepalive(&a, Duration::from_secs(9));
    until("b has a's write", || {
        keepalive(&b) == Duration::from_secs(9)
    })
    .await;
    // a goes silent for good; b declares it dead, then forgets its state.
    cut(&transport, &a, &b).await;
    transport.remove_link(a.gossip, gossip_address(23)).await;
    until("b declares a dead", || {
        b.cluster
            .members()
            .iter()
            .any(|m| m.node_id == "a" && m.state == MemberState::Dead)
    })
    .await;
    until("b forgets a", || {
        b.cluster.members().iter().all(|m| m.node_id != "a")
    })
    .await;
    let c = start_node("c", 23, &[22], &transport, "", "", forget).await;
    until("c has a's write, from b's own state", || {
        keepalive(&c) == Duration::from_secs(9)
    })
    .await;
    assert_eq!(written_by(&c).as_deref(), Some("a"));
    assert!(c.cluster.members().iter().all(|m| m.node_id != "a"));
}

/// A dead node's client counts and ejections stop counting once it is declared dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_client_counts_and_ejections_stop_counting() {
    let transport = ChannelTransport::default();
    let limit = "max_connections_per_client = 10";
    // One failure ejects the pool's only backend (where nothing listens) for a minute.
    let outlier = "[pool.outlier]\nconsecutive_failures = 1\nbase_ejection = \"60s\"\n\
                   max_ejected_percent = 100";
    let forget = Duration::from_secs(3600);
    let a = start_node("a", 31, &[32], &transport, limit, outlier, forget).await;
    let b = start_node("b", 32, &[31], &transport, limit, outlier, forget).await;
    let client = ClientKey::new("192.0.2.1".parse().unwrap(), 64);
    let table = &b.proxy.listener("web").unwrap().clients;
    // 6 of 10 on b: over the publish threshold (3 with two nodes), so b leads the client.
    let held: Vec<_> = (0..6)
        .map(|_| table.try_admit(client, None).unwrap())
        .collect();
    // b forwards a request to the backend, fails to connect and ejects it.
    let b_backend = b.proxy.pools()[0].backend("127.0.0.1:9").unwrap();
    for (listener, socket) in b.proxy.bind().unwrap() {
        let address = socket.local_addr().unwrap();
        b.proxy.serve(listener, socket);
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
    }
    until("b ejects the backend", || {
        b_backend.local_ejection().is_some()
    })
    .await;

    let a_web = a.proxy.listener("web").unwrap();
    let a_backend = a.proxy.pools()[0].backend("127.0.0.1:9").unwrap();
    until("a counts b's 6 and honours b's ejection", || {
        a_web.remote_count(&client) == 6 && !a_backend.health().healthy
    })
    .await;
    assert_eq!(a.cluster.client("web", &client, 0).total, 6);
    assert!(
        a_backend.local_ejection().is_none(),
        "b's ejection, not a's"
    );
    cut(&transport, &a, &b).await;
    until(
        "a declares b dead and stops counting its connections and ejection",
        || a_web.remote_count(&client) == 0 && a_backend.health().healthy,
    )
    .await;
    // The member list is published at the end of the round that stopped the counting.
    until("a lists b as dead", || {
        a.cluster
            .members()
            .iter()
            .any(|m| m.node_id == "b" && m.state == MemberState::Dead)
    })
    .await;
    assert_eq!(a.cluster.client("web", &client, 0).total, 0);
    assert!(b_backend.local_ejection().is_some(), "b still ejects it");
    drop(held);
}

/// Whether the proxy closed `stream` (anything it sent first is read and dropped).
fn closed(stream: &TcpStream) -> bool {
    let mut buffer = [0u8; 512];
    loop {
        match stream.try_read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_cap_after_a_partition_loses_the_surplus_once() {
    let transport = ChannelTransport::default();
    transport
        .remove_link(gossip_address(41), gossip_address(42))
        .await;
    let limit = "max_connections_per_client = 4";
    let a = start("a", 41, &[42], &transport, limit).await;
    let b = start("b", 42, &[41], &transport, limit).await;
    let mut streams = Vec::new();
    for node in [&a, &b] {
        for (listener, socket) in node.proxy.bind().unwrap() {
            let address = socket.local_addr().unwrap();
            node.proxy.serve(listener, socket);
            // Partitioned, each node admits 3 (of 4): 6 in all.
            for _ in 0..3 {
                let mut stream = TcpStream::connect(address).await.unwrap();
                stream.flush().await.unwrap();
                streams.push(stream);
            }
        }
    }
    let client = ClientKey::new("127.0.0.1".parse().unwrap(), 64);
    let count = |node: &Node| node.proxy.listener("web").unwrap().clients.count(&client);
    until("3 on each node", || count(&a) == 3 && count(&b) == 3).await;
    assert!(!streams.iter().any(closed));

    transport.add_link(a.gossip, b.gossip).await;
    // The surplus of 2 is split 3:3: each node closes one of its connections.
    until("2 connections closed, 2 left on each node", || {
        streams.iter().filter(|s| closed(s)).count() == 2 && count(&a) == 2 && count(&b) == 2
    })
    .await;
    // Nothing more is trimmed once the total is within the limit (a few settle times).
    let later = Instant::now() + GOSSIP_INTERVAL * 20;
    while Instant::now() < later {
        assert_eq!(streams.iter().filter(|s| closed(s)).count(), 2);
        tokio::time::sleep(GOSSIP_INTERVAL).await;
    }
    assert_eq!((count(&a), count(&b)), (2, 2));
    // Each node counted the one connection it trimmed (what the metrics expose).
    let trimmed = |node: &Node| node.proxy.listener("web").unwrap().stats.trimmed();
    assert_eq!((trimmed(&a), trimmed(&b)), (1, 1));
}

/// The spans the node's tracer ends, kept in memory (the tracer is installed once per test
/// process; tests tell their spans apart by trace id).
#[derive(Debug, Clone, Default)]
struct Spans(Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for Spans {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

fn installed_tracer() -> &'static Spans {
    static SPANS: std::sync::OnceLock<Spans> = std::sync::OnceLock::new();
    SPANS.get_or_init(|| {
        use opentelemetry::trace::TracerProvider as _;
        let spans = Spans::default();
        // Records whatever it is asked to (not the default parent-based sampler): an unsampled
        // write's missing spans must come from the cluster's own decision.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .with_simple_exporter(spans.clone())
            .build();
        let tracer = provider.tracer("component");
        assert!(hearsay_proxy::trace::install(
            opentelemetry::global::BoxedTracer::new(Box::new(tracer))
        ));
        std::mem::forget(provider);
        spans
    })
}

/// The `hearsay.cluster.apply` spans of `trace`: (node, its span).
fn apply_spans(
    spans: &Spans,
    trace: opentelemetry::trace::TraceId,
) -> Vec<(String, opentelemetry_sdk::trace::SpanData)> {
    spans
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|span| {
            span.span_context.trace_id() == trace && span.name == "hearsay.cluster.apply"
        })
        .map(|span| (attribute(span, "hearsay.node"), span.clone()))
        .collect()
}

fn attribute(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
        .unwrap_or_default()
}

/// A caller inside a trace: as if the admin RPC's span were `span` of `trace`.
fn traced_caller(trace: u128, span: u64, sampled: bool) -> Caller {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Caller {
        peer: None,
        trace: Some(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            true,
            TraceState::default(),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_write_is_recorded_once_by_every_node_that_applies_it() {
    let spans = installed_tracer();
    let transport = ChannelTransport::default();
    let a = start("a", 21, &[22, 23], &transport, "").await;
    let b = start("b", 22, &[21, 23], &transport, "").await;
    let c = start("c", 23, &[21, 22], &transport, "").await;
    until("three members alive everywhere", || {
        [&a, &b, &c].iter().all(|node| {
            let members = node.cluster.members();
            members.len() == 3 && members.iter().all(|m| m.state == MemberState::Alive)
        })
    })
    .await;
    let set = |node: &Node, caller: Caller, seconds: u64| {
        node.cluster
            .update_listener(
                "web",
                None,
                &[ListenerField::KeepaliveTimeout],
                caller,
                |settings| {
                    let mut new = settings.clone();
                    new.keepalive_timeout = Duration::from_secs(seconds);
                    Ok::<_, String>(new)
                },
            )
            .expect("listener web")
            .expect("a valid change");
    };
    let (trace, admin_span) = (0x5eed_0000_0000_0000_0000_0000_0000_0001_u128, 0xad_u64);
    let unsampled = 0x5eed_0000_0000_0000_0000_0000_0000_0002_u128;
    // An unsampled call carries nothing and records nothing.
    set(&a, traced_caller(unsampled, admin_span, false), 6);
    set(&a, traced_caller(trace, admin_span, true), 7);
    until("an apply span from a, b and c", || {
        let mut nodes: Vec<String> = apply_spans(spans, trace.into())
            .into_iter()
            .map(|(node, _)| node)
            .collect();
        nodes.sort();
        nodes == ["a", "b", "c"]
    })
    .await;
    // Later rounds (a later untraced write reaching every node) record no second span.
    set(&c, Caller::default(), 9);
    until("keepalive_timeout 9s on a, b and c", || {
        [&a, &b, &c]
            .iter()
            .all(|node| keepalive(node) == Duration::from_secs(9))
    })
    .await;
    let applied = apply_spans(spans, trace.into());
    assert_eq!(applied.len(), 3, "{applied:#?}");
    let stamp = attribute(&applied[0].1, "hearsay.cluster.stamp");
    assert!(stamp.ends_with("@a"), "{stamp}");
    for (node, span) in &applied {
        assert_eq!(
            span.parent_span_id,
            opentelemetry::trace::SpanId::from(admin_span),
            "{node}"
        );
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Internal);
        assert_eq!(
            attribute(span, "hearsay.cluster.stamp"),
            stamp,
            "{node}: one write"
        );
        assert_eq!(attribute(span, "hearsay.listener"), "web");
        assert_eq!(
            attribute(span, "hearsay.cluster.settings"),
            "keepalive_timeout=7s"
        );
        assert_eq!(attribute(span, "hearsay.cluster.changed"), "true", "{node}");
        let delay: u64 = attribute(span, "hearsay.cluster.delay_ms").parse().unwrap();
        assert!(delay < DEADLINE.as_millis() as u64, "{node}: {delay} ms");
    }
    assert!(apply_spans(spans, unsampled.into()).is_empty());

    // A backend's state change and the sample ratio are traced the same way.
    let backend_trace = 0x5eed_0000_0000_0000_0000_0000_0000_0003_u128;
    b.cluster
        .set_backend_state(
            "app",
            "127.0.0.1:9",
            hearsay_proxy::BackendState::Draining,
            traced_caller(backend_trace, admin_span, true),
        )
        .expect("pool app")
        .expect("backend 127.0.0.1:9");
    let ratio_trace = 0x5eed_0000_0000_0000_0000_0000_0000_0004_u128;
    c.cluster
        .set_sample_ratio(0.5, traced_caller(ratio_trace, admin_span, true))
        .unwrap();
    until(
        "the backend and ratio writes recorded by a, b and c",
        || {
            apply_spans(spans, backend_trace.into()).len() == 3
                && apply_spans(spans, ratio_trace.into()).len() == 3
        },
    )
    .await;
    for (_, span) in apply_spans(spans, backend_trace.into()) {
        assert_eq!(attribute(&span, "hearsay.pool"), "app");
        assert_eq!(attribute(&span, "hearsay.backend"), "127.0.0.1:9");
        assert_eq!(
            attribute(&span, "hearsay.cluster.settings"),
            "state=draining"
        );
    }
    for (_, span) in apply_spans(spans, ratio_trace.into()) {
        assert_eq!(
            attribute(&span, "hearsay.cluster.settings"),
            "sample_ratio=0.5"
        );
    }
}

/// A node alone (no gossip) on `data_dir`, its file's `telemetry.sample_ratio` being `ratio`.
async fn start_alone(data_dir: &std::path::Path, ratio: f64) -> (Arc<Proxy>, Arc<Cluster>) {
    let config = Config::parse(&format!(
        "[node]\nid = \"a\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9\"]\n\
         [telemetry]\nsample_ratio = {ratio:?}\n"
    ))
    .unwrap();
    let proxy = Proxy::new(&config).unwrap();
    let cluster = Cluster::start(
        Arc::clone(&proxy),
        ClusterOptions {
            node_id: "a".to_owned(),
            data_dir: data_dir.to_owned(),
            admin_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            version: "test".to_owned(),
            config: None,
            file: FileValues::of(&config),
            transport: None,
        },
    )
    .await
    .unwrap();
    (proxy, cluster)
}

#[tokio::test]
async fn the_files_sample_ratio_is_the_start_value_and_an_edit_of_it_a_write() {
    let dir = data_dir("ratio-file");
    let (proxy, cluster) = start_alone(&dir, 0.25).await;
    assert_eq!(proxy.sample_ratio().get(), 0.25);
    assert_eq!(cluster.sample_ratio_origin(), SettingOrigin::File);
    cluster.set_sample_ratio(0.5, Caller::default()).unwrap();
    cluster.leave().await;
    // The file unchanged: the written value stands.
    let (proxy, cluster) = start_alone(&dir, 0.25).await;
    assert_eq!(proxy.sample_ratio().get(), 0.5);
    cluster.leave().await;
    // The file edited: the edit is a write, stamped at start, that outranks the earlier one.
    let (proxy, cluster) = start_alone(&dir, 0.75).await;
    assert_eq!(proxy.sample_ratio().get(), 0.75);
    assert!(matches!(
        cluster.sample_ratio_origin(),
        SettingOrigin::Written {
            source: hearsay_cluster::Source::File,
            ..
        }
    ));
    cluster.leave().await;
    let _ = std::fs::remove_dir_all(&dir);
}
