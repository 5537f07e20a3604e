//! The node's metrics, read at scrape time from the counters the proxy and the cluster keep
//! anyway (atomics, the published cluster views): a scrape costs the data plane nothing. Names
//! follow Prometheus' conventions: the `hearsay_` prefix, `_total` on counters, base units
//! (seconds, bytes) in the name.
//!
//! No label holds a client address: top clients stay in the admin API (a label per client would
//! grow without bound).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hearsay_cluster::{Cluster, MemberState};
use hearsay_proxy::{CloseReason, HistogramSnapshot, Proxy, STATUS_CLASSES};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The exposition formats a scraper can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (what `promtool check metrics` and curl get).
    Text,
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A node's metrics: a registry holding one collector that reads the proxy and the cluster.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(proxy: Arc<Proxy>, cluster: Arc<Cluster>, version: &str) -> Metrics {
        let mut registry = Registry::with_prefix("hearsay");
        registry.register_collector(Box::new(NodeCollector {
            proxy,
            cluster,
            version: version.to_owned(),
        }));
        Metrics { registry }
    }

    /// The exposition of every metric now.
    pub fn render(&self, format: Format) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; an encoder error would be a bug in a name.
        let result = match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, "cannot encode the metrics");
        }
        text
    }
}

#[derive(Debug)]
struct NodeCollector {
    proxy: Arc<Proxy>,
    cluster: Arc<Cluster>,
    version: String,
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        gauges(
            &mut encoder,
            "build_info",
            "The running hearsay's version (always 1).",
            [([("version", self.version.as_str())], 1)],
        )?;
        self.encode_listeners(&mut encoder)?;
        self.encode_pools(&mut encoder)?;
        self.encode_backends(&mut encoder)?;
        self.encode_cluster(&mut encoder)
    }
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

/// The label set of a metric without labels.
const NO_LABELS: Labels<'static, 0> = [];

impl NodeCollector {
    fn encode_listeners(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let listeners = self.proxy.listeners();
        let snapshots: Vec<_> = listeners
            .iter()
            .map(|listener| (listener, listener.stats.snapshot()))
            .collect();
        let each = |value: &dyn Fn(&hearsay_proxy::StatsSnapshot) -> u64| {
            snapshots
                .iter()
                .map(move |(listener, stats)| ([("listener", &*listener.name)], value(stats)))
                .collect::<Vec<(Labels<'_, 1>, u64)>>()
        };
        gauges(
            encoder,
            "connections_open",
            "Client connections open now.",
            each(&|stats| stats.open),
        )?;
        gauges(
            encoder,
            "connections_idle",
            "Open client connections with no request in flight.",
            each(&|stats| stats.idle),
        )?;
        gauges(
            encoder,
            "connections_parked",
            "Idle client connections waiting on their bare socket (hyper's buffers let go).",
            each(&|stats| stats.parked_now),
        )?;
        counters(
            encoder,
            "connection_parks",
            "Times an idle client connection let go of hyper's buffers.",
            each(&|stats| stats.parked),
        )?;
        counters(
            encoder,
            "connections_accepted",
            "Client connections accepted (refused ones included).",
            each(&|stats| stats.accepted),
        )?;
        counters(
            encoder,
            "connections_closed",
            "Client connections ended, by the first reason decided.",
            snapshots.iter().flat_map(|(listener, stats)| {
                CloseReason::ALL.iter().map(move |reason| {
                    (
                        [("listener", &*listener.name), ("reason", reason.as_str())],
                        stats.closed(*reason),
                    )
                })
            }),
        )?;
        counters(
            encoder,
            "connections_refused",
            "Client connections refused at accept over the per-client limit.",
            listeners
                .iter()
                .map(|listener| ([("listener", &*listener.name)], listener.stats.refused())),
        )?;
        counters(
            encoder,
            "connections_trimmed",
            "Open client connections closed because their client was over its cluster-wide cap.",
            listeners
                .iter()
                .map(|listener| ([("listener", &*listener.name)], listener.stats.trimmed())),
        )?;
        counters(
            encoder,
            "requests",
            "Requests received (counted when they begin).",
            each(&|stats| stats.requests),
        )?;
        let responses: Vec<_> = listeners
            .iter()
            .map(|listener| (listener, listener.stats.responses()))
            .collect();
        counters(
            encoder,
            "responses",
            "Responses sent, by status class (counted when they end).",
            responses.iter().flat_map(|(listener, classes)| {
                classes.iter().zip(STATUS_CLASSES).map(|(histogram, code)| {
                    (
                        [("listener", &*listener.name), ("code", code)],
                        histogram.count,
                    )
                })
            }),
        )?;
        histograms(
            encoder,
            "request_duration",
            "From the first byte of a request's head to the end of its response, by status class.",
            responses.iter().flat_map(|(listener, classes)| {
                classes.iter().zip(STATUS_CLASSES).map(|(histogram, code)| {
                    ([("listener", &*listener.name), ("code", code)], histogram)
                })
            }),
        )?;
        gauges(
            encoder,
            "listener_settings_version",
            "Version of the listener's replicated settings (the same on every node with the same writes).",
            listeners
                .iter()
                .map(|listener| ([("listener", &*listener.name)], listener.version())),
        )
    }

    fn encode_pools(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pools = self.proxy.pools();
        let each = |counter: fn(&hearsay_proxy::PoolStats) -> &AtomicU64| {
            pools
                .iter()
                .map(move |pool| {
                    (
                        [("pool", pool.name.as_str())],
                        counter(&pool.stats).load(Ordering::Relaxed),
                    )
                })
                .collect::<Vec<_>>()
        };
        counters(
            encoder,
            "pool_retries",
            "Requests sent again to another backend after a failed connection.",
            each(|stats| &stats.retries),
        )?;
        counters(
            encoder,
            "pool_fail_open_requests",
            "Requests forwarded while every enabled backend was unhealthy (fail-open).",
            each(|stats| &stats.fail_open_requests),
        )?;
        gauges(
            encoder,
            "pool_failing_open",
            "1 while the pool forwards to unhealthy backends because none is healthy.",
            pools.iter().map(|pool| {
                (
                    [("pool", pool.name.as_str())],
                    u64::from(pool.is_failing_open()),
                )
            }),
        )?;
        counters(
            encoder,
            "pool_outlier_ejections",
            "Backends ejected by passive outlier detection on this node.",
            each(|stats| &stats.ejections),
        )?;
        counters(
            encoder,
            "pool_health_transitions",
            "Healthy/unhealthy transitions of the pool's backends' active-check verdict.",
            each(|stats| &stats.health_transitions),
        )?;
        counters(
            encoder,
            "pool_selection_rebuilds",
            "Times the pool's selection structures were built (at start and per backend-set change).",
            each(|stats| &stats.selection_rebuilds),
        )?;
        let upstream: Vec<_> = pools
            .iter()
            .map(|pool| {
                (
                    [("pool", pool.name.as_str())],
                    pool.stats.upstream_response.snapshot(),
                )
            })
            .collect();
        histograms(
            encoder,
            "upstream_response_duration",
            "From picking a backend to its response head (a new connection's connect included), per answered attempt.",
            upstream
                .iter()
                .map(|(labels, histogram)| (*labels, histogram)),
        )
    }

    fn encode_backends(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let backends: Vec<_> = self
            .proxy
            .pools()
            .iter()
            .flat_map(|pool| {
                pool.backends()
                    .iter()
                    .map(|backend| (pool.name.clone(), Arc::clone(backend)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let each = |value: &dyn Fn(&hearsay_proxy::Backend) -> u64| {
            backends
                .iter()
                .map(|(pool, backend)| {
                    (
                        [
                            ("pool", pool.as_str()),
                            ("backend", backend.address.as_str()),
                        ],
                        value(backend),
                    )
                })
                .collect::<Vec<_>>()
        };
        counters(
            encoder,
            "backend_requests",
            "Requests sent to the backend (every attempt).",
            each(&|backend| backend.requests()),
        )?;
        gauges(
            encoder,
            "backend_requests_in_flight",
            "Requests sent to the backend whose response has not been read to its end.",
            each(&|backend| backend.in_flight()),
        )?;
        gauges(
            encoder,
            "backend_healthy",
            "1 when the backend is healthy by the active checks and not ejected, else 0.",
            each(&|backend| u64::from(backend.health().healthy)),
        )?;
        gauges(
            encoder,
            "backend_ejected",
            "1 while this node's passive outlier detection ejects the backend, else 0.",
            each(&|backend| u64::from(backend.local_ejection_remaining().is_some())),
        )?;
        gauges(
            encoder,
            "backend_idle_connections",
            "Idle keep-alive connections to the backend.",
            each(&|backend| backend.idle_connections() as u64),
        )?;
        gauges(
            encoder,
            "backend_weight",
            "The backend's balancing weight.",
            each(&|backend| u64::from(backend.weight())),
        )
    }

    fn encode_cluster(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let members = self.cluster.members();
        let states = [
            (MemberState::Alive, "alive"),
            (MemberState::Draining, "draining"),
            (MemberState::Dead, "dead"),
            (MemberState::Left, "left"),
        ];
        gauges(
            encoder,
            "cluster_members",
            "Cluster members this node knows (itself included), by state.",
            states.iter().map(|(state, name)| {
                let count = members.iter().filter(|m| m.state == *state).count();
                ([("state", *name)], count as u64)
            }),
        )?;
        counters(
            encoder,
            "cluster_unpublished_client_counts",
            "Client counts left out of gossip over cluster.published_clients.",
            [(NO_LABELS, self.cluster.unpublished_clients())],
        )?;
        let Some((stats, _authenticated)) = self.cluster.transport_stats() else {
            return Ok(());
        };
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut bytes = |name: &str, help: &str, value: u64| {
            encoder
                .encode_descriptor(name, help, Some(&Unit::Bytes), MetricType::Counter)?
                .encode_counter::<NoLabelSet, u64, u64>(&value, None)
        };
        bytes(
            "gossip_sent",
            "Gossip bytes sent (sealed datagrams).",
            get(&stats.bytes_sent),
        )?;
        bytes(
            "gossip_received",
            "Gossip bytes received.",
            get(&stats.bytes_received),
        )?;
        counters(
            encoder,
            "gossip_sent_datagrams",
            "Gossip datagrams sent.",
            [(NO_LABELS, get(&stats.datagrams_sent))],
        )?;
        counters(
            encoder,
            "gossip_received_datagrams",
            "Gossip datagrams received.",
            [(NO_LABELS, get(&stats.datagrams_received))],
        )?;
        counters(
            encoder,
            "gossip_dropped_datagrams",
            "Gossip datagrams received and dropped, by reason.",
            [
                ("forged", &stats.dropped_forged),
                ("replayed", &stats.dropped_replayed),
                ("stale", &stats.dropped_stale),
                ("malformed", &stats.dropped_malformed),
                ("oversized", &stats.dropped_oversized),
                ("local", &stats.dropped_local),
            ]
            .map(|(reason, counter)| ([("reason", reason)], get(counter))),
        )?;
        counters(
            encoder,
            "gossip_send_errors",
            "Outgoing gossip messages that could not be sent.",
            [(NO_LABELS, get(&stats.send_errors))],
        )
    }
}

/// One counter family (`name` gets `_total`).
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
    }
    Ok(())
}

/// One gauge family.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// One histogram family of durations (`name` gets `_seconds`).
fn histograms<'h, L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, &'h HistogramSnapshot)>,
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, histogram) in samples {
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(
                histogram.sum_seconds,
                histogram.count,
                &histogram.buckets,
                None,
            )?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_accept_header() {
        for (accept, format) in [
            (None, Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (
                Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
                Format::OpenMetrics,
            ),
        ] {
            assert_eq!(Format::from_accept(accept), format, "{accept:?}");
        }
    }

    /// A node alone (no `[cluster]`), built as the binary builds it, and its data directory.
    pub(crate) async fn metrics() -> (Metrics, std::path::PathBuf) {
        let data_dir = std::env::temp_dir().join(format!(
            "hearsay-telemetry-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let config = hearsay_config::Config::parse(&format!(
            "[node]\nid = \"t\"\ndata_dir = \"{}\"\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
             [[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9\"]\n",
            data_dir.display()
        ))
        .unwrap();
        let proxy = Proxy::new(&config).unwrap();
        let cluster = Cluster::start(
            Arc::clone(&proxy),
            hearsay_cluster::ClusterOptions {
                node_id: "t".to_owned(),
                data_dir: data_dir.clone(),
                admin_address: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                version: "test".to_owned(),
                config: None,
                file: hearsay_cluster::FileValues::of(&config),
                transport: None,
            },
        )
        .await
        .unwrap();
        (Metrics::new(proxy, cluster, "9.9.9"), data_dir)
    }

    #[tokio::test]
    async fn both_formats_name_counters_as_their_readers_expect() {
        let (metrics, data_dir) = metrics().await;
        let text = metrics.render(Format::Text);
        // Prometheus 0.0.4: the family is named as its samples, `_total` included.
        assert!(
            text.contains("# TYPE hearsay_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("hearsay_requests_total{listener=\"web\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE hearsay_request_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("hearsay_build_info{version=\"9.9.9\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        // Every family has its help, once.
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps.len(), types);
        let mut names: Vec<&str> = helps.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), helps.len(), "a family is exposed twice");
        // No cluster: no gossip counters, but the node counts itself.
        assert!(!text.contains("hearsay_gossip"), "{text}");
        assert!(
            text.contains("hearsay_cluster_members{state=\"alive\"} 1\n"),
            "{text}"
        );

        // OpenMetrics: the family without `_total`, the samples with it, and the end marker.
        let open = metrics.render(Format::OpenMetrics);
        assert!(open.contains("# TYPE hearsay_requests counter\n"), "{open}");
        assert!(
            open.contains("hearsay_requests_total{listener=\"web\"} 0\n"),
            "{open}"
        );
        assert!(
            open.contains("# UNIT hearsay_request_duration_seconds seconds\n"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
        let _ = std::fs::remove_dir_all(data_dir);
    }
}
