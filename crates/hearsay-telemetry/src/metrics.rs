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
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
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

/// A node's metrics: handles on the proxy and the cluster, read when a scrape or a push asks.
#[derive(Debug)]
pub struct Metrics {
    proxy: Arc<Proxy>,
    cluster: Arc<Cluster>,
    version: String,
}

/// One reading of the node: every metric family, in a neutral form that both the Prometheus
/// exposition (`render`) and the OTLP push (`otlp.rs`) encode. Reading once and encoding twice
/// is what keeps the two from drifting apart.
pub(crate) type Reading = Vec<Family>;

/// One metric family: what the node counts, with its samples now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Family {
    /// Without the `hearsay_` prefix, the unit or `_total` (each encoding adds what its format
    /// wants).
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<MetricUnit>,
    pub samples: Samples,
}

/// The base unit a family's values are in (part of its name in Prometheus, a field in OTLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricUnit {
    Seconds,
    Bytes,
}

/// A family's labelled values; the variant is the kind of metric.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Samples {
    /// Monotonic totals since the node started.
    Counter(Vec<(Labels, u64)>),
    /// Values now.
    Gauge(Vec<(Labels, u64)>),
    /// Cumulative histograms since the node started (buckets as the proxy keeps them: not
    /// cumulative, +Inf last).
    Histogram(Vec<(Labels, HistogramSnapshot)>),
}

/// A sample's labels, in order.
pub(crate) type Labels = Vec<(&'static str, String)>;

impl Metrics {
    pub fn new(proxy: Arc<Proxy>, cluster: Arc<Cluster>, version: &str) -> Metrics {
        Metrics {
            proxy,
            cluster,
            version: version.to_owned(),
        }
    }

    /// The exposition of every metric now.
    pub fn render(&self, format: Format) -> String {
        render(self.read(), format)
    }

    /// One reading of every family now.
    pub(crate) fn read(&self) -> Reading {
        let mut reading = Vec::with_capacity(48);
        reading.gauges(
            "build_info",
            "The running hearsay's version (always 1).",
            [([("version", self.version.as_str())], 1)],
        );
        self.read_listeners(&mut reading);
        self.read_pools(&mut reading);
        self.read_backends(&mut reading);
        self.read_cluster(&mut reading);
        self.read_telemetry(&mut reading);
        reading
    }
}

/// The Prometheus exposition of one reading.
pub(crate) fn render(reading: Reading, format: Format) -> String {
    let mut registry = Registry::with_prefix("hearsay");
    registry.register_collector(Box::new(ReadingCollector(reading)));
    let mut text = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; an encoder error would be a bug in a name.
    let result = match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut text, &registry),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry),
    };
    if let Err(error) = result {
        tracing::warn!(%error, "cannot encode the metrics");
    }
    text
}

/// A reading handed to `prometheus-client`'s encoders.
#[derive(Debug)]
struct ReadingCollector(Reading);

impl Collector for ReadingCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let unit = family.unit.map(|unit| match unit {
                MetricUnit::Seconds => Unit::Seconds,
                MetricUnit::Bytes => Unit::Bytes,
            });
            let kind = match family.samples {
                Samples::Counter(_) => MetricType::Counter,
                Samples::Gauge(_) => MetricType::Gauge,
                Samples::Histogram(_) => MetricType::Histogram,
            };
            let mut encoder =
                encoder.encode_descriptor(family.name, family.help, unit.as_ref(), kind)?;
            match &family.samples {
                Samples::Counter(samples) => {
                    for (labels, value) in samples {
                        encoder
                            .encode_family(labels)?
                            .encode_counter::<NoLabelSet, u64, u64>(value, None)?;
                    }
                }
                Samples::Gauge(samples) => {
                    for (labels, value) in samples {
                        encoder.encode_family(labels)?.encode_gauge(value)?;
                    }
                }
                Samples::Histogram(samples) => {
                    for (labels, histogram) in samples {
                        encoder
                            .encode_family(labels)?
                            .encode_histogram::<NoLabelSet>(
                                histogram.sum_seconds,
                                histogram.count,
                                &histogram.buckets,
                                None,
                            )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Label sets as the readers write them: fixed keys, borrowed values.
type LabelArray<'a, const N: usize> = [(&'static str, &'a str); N];

/// The label set of a metric without labels.
const NO_LABELS: LabelArray<'static, 0> = [];

fn owned<const N: usize>(labels: LabelArray<'_, N>) -> Labels {
    labels
        .iter()
        .map(|(key, value)| (*key, (*value).to_owned()))
        .collect()
}

/// Labelled values with their labels owned.
fn owned_samples<'a, const N: usize>(
    samples: impl IntoIterator<Item = (LabelArray<'a, N>, u64)>,
) -> Vec<(Labels, u64)> {
    samples
        .into_iter()
        .map(|(labels, value)| (owned(labels), value))
        .collect()
}

/// Adding families to a reading.
trait Add {
    fn counters<'a, const N: usize>(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (LabelArray<'a, N>, u64)>,
    );
    fn gauges<'a, const N: usize>(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (LabelArray<'a, N>, u64)>,
    );
    /// A family of duration histograms (in seconds).
    fn histograms<'a, 'h, const N: usize>(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (LabelArray<'a, N>, &'h HistogramSnapshot)>,
    );
    /// One unlabelled counter of bytes.
    fn bytes(&mut self, name: &'static str, help: &'static str, value: u64);
}

impl Add for Reading {
    fn counters<'a, const N: usize>(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (LabelArray<'a, N>, u64)>,
    ) {
        self.push(Family {
            name,
            help,
            unit: None,
            samples: Samples::Counter(owned_samples(samples)),
        });
    }

    fn gauges<'a, const N: usize>(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (LabelArray<'a, N>, u64)>,
    ) {
        self.push(Family {
            name,
            help,
            unit: None,
            samples: Samples::Gauge(owned_samples(samples)),
        });
    }

    fn histograms<'a, 'h, const N: usize>(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: impl IntoIterator<Item = (LabelArray<'a, N>, &'h HistogramSnapshot)>,
    ) {
        let samples = samples
            .into_iter()
            .map(|(labels, histogram)| (owned(labels), histogram.clone()));
        self.push(Family {
            name,
            help,
            unit: Some(MetricUnit::Seconds),
            samples: Samples::Histogram(samples.collect()),
        });
    }

    fn bytes(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.push(Family {
            name,
            help,
            unit: Some(MetricUnit::Bytes),
            samples: Samples::Counter(vec![(Labels::new(), value)]),
        });
    }
}

impl Metrics {
    fn read_listeners(&self, reading: &mut Reading) {
        let listeners = self.proxy.listeners();
        let snapshots: Vec<_> = listeners
            .iter()
            .map(|listener| (listener, listener.stats.snapshot()))
            .collect();
        let each = |value: &dyn Fn(&hearsay_proxy::StatsSnapshot) -> u64| {
            snapshots
                .iter()
                .map(move |(listener, stats)| ([("listener", &*listener.name)], value(stats)))
                .collect::<Vec<(LabelArray<'_, 1>, u64)>>()
        };
        reading.gauges(
            "connections_open",
            "Client connections open now.",
            each(&|stats| stats.open),
        );
        reading.gauges(
            "connections_idle",
            "Open client connections with no request in flight.",
            each(&|stats| stats.idle),
        );
        reading.gauges(
            "connections_parked",
            "Idle client connections waiting on their bare socket (hyper's buffers let go).",
            each(&|stats| stats.parked_now),
        );
        reading.counters(
            "connection_parks",
            "Times an idle client connection let go of hyper's buffers.",
            each(&|stats| stats.parked),
        );
        reading.counters(
            "connections_accepted",
            "Client connections accepted (refused ones included).",
            each(&|stats| stats.accepted),
        );
        reading.counters(
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
        );
        reading.counters(
            "connections_refused",
            "Client connections refused at accept over the per-client limit.",
            listeners
                .iter()
                .map(|listener| ([("listener", &*listener.name)], listener.stats.refused())),
        );
        reading.counters(
            "connections_trimmed",
            "Open client connections closed because their client was over its cluster-wide cap.",
            listeners
                .iter()
                .map(|listener| ([("listener", &*listener.name)], listener.stats.trimmed())),
        );
        reading.counters(
            "requests",
            "Requests received (counted when they begin).",
            each(&|stats| stats.requests),
        );
        let responses: Vec<_> = listeners
            .iter()
            .map(|listener| (listener, listener.stats.responses()))
            .collect();
        reading.counters(
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
        );
        reading.histograms(
            "request_duration",
            "From the first byte of a request's head to the end of its response, by status class.",
            responses.iter().flat_map(|(listener, classes)| {
                classes.iter().zip(STATUS_CLASSES).map(|(histogram, code)| {
                    ([("listener", &*listener.name), ("code", code)], histogram)
                })
            }),
        );
        reading.gauges(
            "listener_settings_version",
            "Version of the listener's replicated settings (the same on every node with the same writes).",
            listeners
                .iter()
                .map(|listener| ([("listener", &*listener.name)], listener.version())),
        );
    }

    fn read_pools(&self, reading: &mut Reading) {
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
        reading.counters(
            "pool_retries",
            "Requests sent again to another backend after a failed connection.",
            each(|stats| &stats.retries),
        );
        reading.counters(
            "pool_fail_open_requests",
            "Requests forwarded while every enabled backend was unhealthy (fail-open).",
            each(|stats| &stats.fail_open_requests),
        );
        reading.gauges(
            "pool_failing_open",
            "1 while the pool forwards to unhealthy backends because none is healthy.",
            pools.iter().map(|pool| {
                (
                    [("pool", pool.name.as_str())],
                    u64::from(pool.is_failing_open()),
                )
            }),
        );
        reading.counters(
            "pool_outlier_ejections",
            "Backends ejected by passive outlier detection on this node.",
            each(|stats| &stats.ejections),
        );
        reading.counters(
            "pool_health_transitions",
            "Healthy/unhealthy transitions of the pool's backends' active-check verdict.",
            each(|stats| &stats.health_transitions),
        );
        reading.counters(
            "pool_selection_rebuilds",
            "Times the pool's selection structures were built (at start and per backend-set change).",
            each(|stats| &stats.selection_rebuilds),
        );
        let upstream: Vec<_> = pools
            .iter()
            .map(|pool| {
                (
                    [("pool", pool.name.as_str())],
                    pool.stats.upstream_response.snapshot(),
                )
            })
            .collect();
        reading.histograms(
            "upstream_response_duration",
            "From picking a backend to its response head (a new connection's connect included), per answered attempt.",
            upstream
                .iter()
                .map(|(labels, histogram)| (*labels, histogram)),
        );
    }

    fn read_backends(&self, reading: &mut Reading) {
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
        reading.counters(
            "backend_requests",
            "Requests sent to the backend (every attempt).",
            each(&|backend| backend.requests()),
        );
        reading.gauges(
            "backend_requests_in_flight",
            "Requests sent to the backend whose response has not been read to its end.",
            each(&|backend| backend.in_flight()),
        );
        reading.gauges(
            "backend_healthy",
            "1 when the backend is healthy by the active checks and not ejected, else 0.",
            each(&|backend| u64::from(backend.health().healthy)),
        );
        reading.gauges(
            "backend_ejected",
            "1 while this node's passive outlier detection ejects the backend, else 0.",
            each(&|backend| u64::from(backend.local_ejection_remaining().is_some())),
        );
        reading.gauges(
            "backend_idle_connections",
            "Idle keep-alive connections to the backend.",
            each(&|backend| backend.idle_connections() as u64),
        );
        reading.gauges(
            "backend_weight",
            "The backend's balancing weight.",
            each(&|backend| u64::from(backend.weight())),
        );
    }

    /// The node's own telemetry: span export and the access log.
    fn read_telemetry(&self, reading: &mut Reading) {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let spans = &crate::traces::SPANS;
        reading.counters(
            "trace_spans_exported",
            "Spans accepted by the OTLP collector.",
            [(NO_LABELS, get(&spans.exported))],
        );
        reading.counters(
            "trace_spans_dropped",
            "Spans dropped because the export queue was full.",
            [(NO_LABELS, get(&spans.dropped))],
        );
        reading.counters(
            "trace_spans_export_failed",
            "Spans lost with an export call that failed (collector unreachable, refused, timed out).",
            [(NO_LABELS, get(&spans.failed))],
        );
        if let Some(access_log) = self.proxy.access_log() {
            reading.counters(
                "access_log_lines_written",
                "Access log lines written.",
                [(NO_LABELS, get(&access_log.written))],
            );
            reading.counters(
                "access_log_lines_dropped",
                "Access log lines dropped because the writer was behind.",
                [(NO_LABELS, get(&access_log.dropped))],
            );
            reading.counters(
                "access_log_lines_failed",
                "Access log lines lost because writing them failed (a full disk, a closed pipe).",
                [(NO_LABELS, get(&access_log.failed))],
            );
        }
    }

    fn read_cluster(&self, reading: &mut Reading) {
        let members = self.cluster.members();
        let states = [
            (MemberState::Alive, "alive"),
            (MemberState::Draining, "draining"),
            (MemberState::Dead, "dead"),
            (MemberState::Left, "left"),
        ];
        reading.gauges(
            "cluster_members",
            "Cluster members this node knows (itself included), by state.",
            states.iter().map(|(state, name)| {
                let count = members.iter().filter(|m| m.state == *state).count();
                ([("state", *name)], count as u64)
            }),
        );
        reading.counters(
            "cluster_unpublished_client_counts",
            "Client counts left out of gossip over cluster.published_clients.",
            [(NO_LABELS, self.cluster.unpublished_clients())],
        );
        let Some((stats, _authenticated)) = self.cluster.transport_stats() else {
            return;
        };
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        reading.bytes(
            "gossip_sent",
            "Gossip bytes sent (sealed datagrams).",
            get(&stats.bytes_sent),
        );
        reading.bytes(
            "gossip_received",
            "Gossip bytes received.",
            get(&stats.bytes_received),
        );
        reading.counters(
            "gossip_sent_datagrams",
            "Gossip datagrams sent.",
            [(NO_LABELS, get(&stats.datagrams_sent))],
        );
        reading.counters(
            "gossip_received_datagrams",
            "Gossip datagrams received.",
            [(NO_LABELS, get(&stats.datagrams_received))],
        );
        reading.counters(
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
        );
        reading.counters(
            "gossip_send_errors",
            "Outgoing gossip messages that could not be sent.",
            [(NO_LABELS, get(&stats.send_errors))],
        );
    }
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
