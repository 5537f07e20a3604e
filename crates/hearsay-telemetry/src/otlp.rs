//! The OTLP metrics push (`[telemetry] otlp_metrics = true`): every `otlp_metrics_interval`, one
//! reading of the node (the very families `GET /metrics` encodes) is sent as an
//! `ExportMetricsServiceRequest` over OTLP/gRPC. Counters go as cumulative monotonic sums, gauges
//! as gauges, our pre-aggregated histograms as cumulative explicit-bucket histograms.
//!
//! We build the protocol's messages ourselves (`opentelemetry-proto`) rather than going through
//! the SDK's metrics pipeline: the SDK's API has no observable histogram, so the histograms the
//! proxy already keeps could not go through it without being observed again request by request.
//!
//! The push never holds up the proxy: it runs in its own task, each push is bounded by a timeout,
//! a failing collector costs one warning a minute at most (with the count of failed pushes), and
//! the last push at shutdown is bounded too.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::metrics::{Labels, MetricUnit, Metrics, Reading, Samples};
use crate::traces::TraceIdentity;

/// How long the last push at shutdown may take.
pub const FINAL_PUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// A periodic push is given at most this long (or its interval, when shorter).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// A failing collector is warned about at most this often.
const WARNING_EVERY: Duration = Duration::from_secs(60);
/// The prefix of every metric name, as in the Prometheus exposition.
const PREFIX: &str = "hearsay_";

/// The running push task.
#[derive(Debug)]
pub struct OtlpMetricsPush {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("the collector rejected {rejected} data point(s): {message}")]
    Rejected { rejected: i64, message: String },
}

impl OtlpMetricsPush {
    /// Starts pushing `metrics` when `config` asks for it (`telemetry.otlp_metrics`), to
    /// `telemetry.otlp_endpoint` or else the standard `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` /
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`. `None` when not asked for, or (logged) when no usable
    /// endpoint is found. Must be called within the tokio runtime. The pushes carry the resource
    /// the spans carry (`identity`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn start(
        config: &hearsay_config::Config,
        identity: &TraceIdentity,
        metrics: Arc<Metrics>,
    ) -> Option<OtlpMetricsPush> {
        let telemetry = &config.telemetry;
        if !telemetry.otlp_metrics {
            return None;
        }
        let environment = |name: &str| std::env::var(name).ok();
        let endpoint = match metrics_endpoint(telemetry.otlp_endpoint.as_deref(), environment) {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => {
                tracing::warn!("telemetry.otlp_metrics is on but no OTLP endpoint is set; metrics are not pushed");
                return None;
            }
            Err(error) => {
                tracing::warn!(%error, "metrics are not pushed over OTLP");
                return None;
            }
        };
        let channel = match channel(&endpoint, push_timeout(telemetry.otlp_metrics_interval)) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(%endpoint, %error, "metrics are not pushed over OTLP: bad endpoint");
                return None;
            }
        };
        tracing::info!(%endpoint, interval = ?telemetry.otlp_metrics_interval, "pushing metrics over OTLP");
        let stop = CancellationToken::new();
        let task = tokio::spawn(push_loop(
            Pusher {
                client: MetricsServiceClient::new(channel),
                metrics,
                resource: resource(identity),
                version: identity.version.clone(),
                started: unix_nanos(SystemTime::now()),
                endpoint,
            },
            telemetry.otlp_metrics_interval,
            stop.clone(),
        ));
        Some(OtlpMetricsPush { task, stop })
    }

    /// Stops the periodic pushes and makes a last one (within [`FINAL_PUSH_TIMEOUT`]), so the
    /// collector has the node's final counts.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Everything one push needs.
struct Pusher {
    client: MetricsServiceClient<Channel>,
    metrics: Arc<Metrics>,
    resource: Resource,
    /// The node's version (the instrumentation scope's).
    version: String,
    /// When the cumulative values began (unix nanoseconds).
    started: u64,
    endpoint: String,
}

impl Pusher {
    async fn push(&mut self, timeout: Duration) -> Result<(), PushError> {
        let request = export_request(
            self.metrics.read(),
            &self.resource,
            &self.version,
            self.started,
            unix_nanos(SystemTime::now()),
        );
        // Our own bound, the only one (the channel's would race it with a vaguer error).
        let response = tokio::time::timeout(timeout, self.client.export(request))
            .await
            .map_err(|_| PushError::Timeout(timeout))??;
        match response.into_inner().partial_success {
            Some(partial) if partial.rejected_data_points > 0 => Err(PushError::Rejected {
                rejected: partial.rejected_data_points,
                message: partial.error_message,
            }),
            _ => Ok(()),
        }
    }
}

async fn push_loop(mut pusher: Pusher, interval: Duration, stop: CancellationToken) {
    let timeout = push_timeout(interval);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // A slow push delays the next one instead of making them bunch up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = Failures::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let outcome = tokio::select! {
            // A push under way at shutdown gives way to the last one.
            () = stop.cancelled() => break,
            outcome = pusher.push(timeout) => outcome,
        };
        match outcome {
            Ok(()) => {
                if let Some(failed_pushes) = failures.succeeded() {
                    tracing::info!(endpoint = %pusher.endpoint, failed_pushes, "metrics pushed over OTLP again");
                }
            }
            Err(error) => {
                if let Some(failed_pushes) = failures.failed(Instant::now()) {
                    tracing::warn!(endpoint = %pusher.endpoint, %error, failed_pushes, "cannot push the metrics over OTLP (said once a minute at most)");
                }
            }
        }
    }
    match pusher.push(FINAL_PUSH_TIMEOUT).await {
        Ok(()) => tracing::debug!(endpoint = %pusher.endpoint, "last metrics pushed over OTLP"),
        Err(error) => {
            tracing::warn!(endpoint = %pusher.endpoint, %error, "cannot push the last metrics over OTLP")
        }
    }
}

/// The rate limit of the push's warning: the first failure is said at once, then at most one
/// line per [`WARNING_EVERY`], each with the count of failed pushes since the last line.
#[derive(Debug, Default)]
struct Failures {
    last_warning: Option<Instant>,
    unreported: u64,
    failing: bool,
}

impl Failures {
    /// A failed push: the count to report if a warning is due now.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        self.failing = true;
        let due = self
            .last_warning
            .is_none_or(|last| now.saturating_duration_since(last) >= WARNING_EVERY);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }

    /// A push went through: after failures, the count not yet reported (to say it recovered).
    fn succeeded(&mut self) -> Option<u64> {
        if !std::mem::take(&mut self.failing) {
            return None;
        }
        Some(std::mem::take(&mut self.unreported))
    }
}

/// A periodic push's bound: never longer than its interval.
fn push_timeout(interval: Duration) -> Duration {
    interval.min(PUSH_TIMEOUT)
}

/// Where metrics go: the configured endpoint, else the standard variables (the metrics-specific
/// one first), checked as the config checks `telemetry.otlp_endpoint`.
fn metrics_endpoint(
    configured: Option<&str>,
    environment: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if let Some(endpoint) = configured {
        return Ok(Some(endpoint.to_owned()));
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        let Some(value) = environment(variable).filter(|value| !value.trim().is_empty()) else {
            continue;
        };
        return hearsay_config::otlp_endpoint(&value)
            .map(Some)
            .map_err(|why| format!("{variable}={value:?} {why}"));
    }
    Ok(None)
}

/// A lazily connected gRPC channel (a collector that is down at start is tried again at each
/// push); TLS with the system's roots for `https://`.
fn channel(endpoint: &str, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    let mut builder = Endpoint::from_shared(endpoint.to_owned())?.connect_timeout(timeout);
    if endpoint.starts_with("https://") {
        builder = builder.tls_config(ClientTlsConfig::new().with_native_roots())?;
    }
    Ok(builder.connect_lazy())
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// The resource of the node's spans (see [`crate::traces::resource`]), as OTLP writes it.
fn resource(identity: &TraceIdentity) -> Resource {
    let converted = ResourceAttributesWithSchema::from(&crate::traces::resource(identity));
    Resource {
        attributes: converted.attributes.0,
        ..Default::default()
    }
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(key, value)| string_attribute(key, value))
        .collect()
}

/// One reading as an OTLP export request: cumulative values since `started`, read at `now`
/// (unix nanoseconds). Names are the Prometheus family names (prefix, no unit, no `_total`):
/// a collector's Prometheus exporter adds the unit and `_total` back, so both paths give the
/// same series names.
fn export_request(
    reading: Reading,
    resource: &Resource,
    version: &str,
    started: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    let number = |labels: &Labels, value: u64| NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: started,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(value).unwrap_or(i64::MAX),
        )),
        ..Default::default()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let metrics = reading
        .into_iter()
        .filter(|family| match &family.samples {
            Samples::Counter(samples) | Samples::Gauge(samples) => !samples.is_empty(),
            Samples::Histogram(samples) => !samples.is_empty(),
        })
        .map(|family| {
            let data = match &family.samples {
                Samples::Counter(samples) => metric::Data::Sum(Sum {
                    data_points: samples.iter().map(|(l, v)| number(l, *v)).collect(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                Samples::Gauge(samples) => metric::Data::Gauge(Gauge {
                    data_points: samples.iter().map(|(l, v)| number(l, *v)).collect(),
                }),
                Samples::Histogram(samples) => metric::Data::Histogram(Histogram {
                    data_points: samples
                        .iter()
                        .map(|(labels, histogram)| {
                            let mut bucket_counts: Vec<u64> =
                                histogram.buckets.iter().map(|(_, count)| *count).collect();
                            let explicit_bounds: Vec<f64> = histogram
                                .buckets
                                .iter()
                                .map(|(bound, _)| *bound)
                                .filter(|bound| bound.is_finite())
                                .collect();
                            // OTLP's last bucket is the overflow one, bounded by nothing.
                            bucket_counts.resize(explicit_bounds.len() + 1, 0);
                            HistogramDataPoint {
                                attributes: attributes(labels),
                                start_time_unix_nano: started,
                                time_unix_nano: now,
                                count: histogram.count,
                                sum: Some(histogram.sum_seconds),
                                bucket_counts,
                                explicit_bounds,
                                ..Default::default()
                            }
                        })
                        .collect(),
                    aggregation_temporality: cumulative,
                }),
            };
            Metric {
                name: format!("{PREFIX}{}", family.name),
                description: family.help.to_owned(),
                unit: match family.unit {
                    Some(MetricUnit::Seconds) => "s",
                    Some(MetricUnit::Bytes) => "By",
                    None => "",
                }
                .to_owned(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "hearsay".to_owned(),
                    version: version.to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metrics::{Family, Format};
    use hearsay_proxy::HistogramSnapshot;

    /// A series as Prometheus names it (labels sorted, `le` normalised) and its value.
    type Series = BTreeMap<String, f64>;

    fn series_name(name: &str, labels: &[(String, String)]) -> String {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(key, value)| {
                let value = match (key.as_str(), value.as_str()) {
                    ("le", "+Inf") => "inf".to_owned(),
                    ("le", bound) => format!("{:?}", bound.parse::<f64>().unwrap()),
                    _ => value.clone(),
                };
                (key.clone(), value)
            })
            .collect();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!("{name}{{{}}}", labels.join(","))
    }

    /// Every sample of a Prometheus text exposition.
    fn parse_text(text: &str) -> Series {
        let mut series = Series::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (name_and_labels, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match name_and_labels.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').unwrap();
                    let labels: Vec<(String, String)> = labels
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").unwrap();
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (name_and_labels, Vec::new()),
            };
            let previous = series.insert(series_name(name, &labels), value.parse().unwrap());
            assert!(previous.is_none(), "{line} twice");
        }
        series
    }

    fn labels_of(attributes: &[KeyValue]) -> Vec<(String, String)> {
        attributes
            .iter()
            .map(|attribute| {
                let Some(any_value::Value::StringValue(value)) =
                    attribute.value.as_ref().and_then(|v| v.value.as_ref())
                else {
                    panic!("{attribute:?} is not a string");
                };
                (attribute.key.clone(), value.clone())
            })
            .collect()
    }

    /// The series a Prometheus exporter (the OpenTelemetry Collector's, with its default name
    /// suffixes) makes of an export request: the unit and `_total` added to the name, cumulative
    /// `_bucket`s with `le`, `_sum` and `_count`.
    fn as_prometheus(request: &ExportMetricsServiceRequest) -> Series {
        let mut series = Series::new();
        let mut insert = |name: String, labels: Vec<(String, String)>, value: f64| {
            let previous = series.insert(series_name(&name, &labels), value);
            assert!(previous.is_none(), "{name} {labels:?} twice");
        };
        let number = |point: &NumberDataPoint| match point.value {
            Some(number_data_point::Value::AsInt(value)) => value as f64,
            other => panic!("{other:?}"),
        };
        for metric in &request.resource_metrics[0].scope_metrics[0].metrics {
            let name = match metric.unit.as_str() {
                "s" => format!("{}_seconds", metric.name),
                "By" => format!("{}_bytes", metric.name),
                "" => metric.name.clone(),
                other => panic!("unit {other}"),
            };
            match metric.data.as_ref().unwrap() {
                metric::Data::Sum(sum) => {
                    assert!(sum.is_monotonic);
                    assert_eq!(
                        sum.aggregation_temporality,
                        AggregationTemporality::Cumulative as i32
                    );
                    for point in &sum.data_points {
                        insert(
                            format!("{name}_total"),
                            labels_of(&point.attributes),
                            number(point),
                        );
                    }
                }
                metric::Data::Gauge(gauge) => {
                    for point in &gauge.data_points {
                        insert(name.clone(), labels_of(&point.attributes), number(point));
                    }
                }
                metric::Data::Histogram(histogram) => {
                    assert_eq!(
                        histogram.aggregation_temporality,
                        AggregationTemporality::Cumulative as i32
                    );
                    for point in &histogram.data_points {
                        let labels = labels_of(&point.attributes);
                        assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
                        assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
                        let mut cumulative = 0;
                        let bounds = point
                            .explicit_bounds
                            .iter()
                            .map(|b| format!("{b:?}"))
                            .chain(["+Inf".to_owned()]);
                        for (bound, count) in bounds.zip(&point.bucket_counts) {
                            cumulative += count;
                            let mut labels = labels.clone();
                            labels.push(("le".to_owned(), bound));
                            insert(format!("{name}_bucket"), labels, cumulative as f64);
                        }
                        insert(format!("{name}_sum"), labels.clone(), point.sum.unwrap());
                        insert(format!("{name}_count"), labels, point.count as f64);
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        series
    }

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    /// A reading with every kind and unit and values that are not zero.
    fn hand_built() -> Reading {
        let mut histogram = HistogramSnapshot {
            buckets: vec![(0.001, 2), (0.01, 0), (0.1, 5), (f64::INFINITY, 1)],
            count: 8,
            sum_seconds: 1.375,
        };
        let other = histogram.clone();
        histogram.buckets[1].1 = 3;
        histogram.count = 11;
        vec![
            Family {
                name: "things",
                help: "Things.",
                unit: None,
                samples: Samples::Counter(vec![
                    (labels(&[("listener", "web"), ("code", "2xx")]), 7),
                    (labels(&[("listener", "api"), ("code", "5xx")]), 1 << 40),
                ]),
            },
            Family {
                name: "level",
                help: "A level.",
                unit: None,
                samples: Samples::Gauge(vec![(labels(&[("pool", "app")]), 3)]),
            },
            Family {
                name: "wire",
                help: "Bytes.",
                unit: Some(MetricUnit::Bytes),
                samples: Samples::Counter(vec![(Labels::new(), 12345)]),
            },
            Family {
                name: "took",
                help: "Durations.",
                unit: Some(MetricUnit::Seconds),
                samples: Samples::Histogram(vec![
                    (labels(&[("pool", "app")]), histogram),
                    (labels(&[("pool", "other")]), other),
                ]),
            },
        ]
    }

    #[tokio::test]
    async fn the_prometheus_exposition_and_the_otlp_push_carry_the_same_reading() {
        let (metrics, data_dir) = crate::metrics::tests::metrics().await;
        let mut reading = metrics.read();
        reading.extend(hand_built());
        let identity = TraceIdentity {
            service_name: "hearsay".to_owned(),
            node_id: "t".to_owned(),
            version: "9.9.9".to_owned(),
            cluster_id: None,
        };
        let text = crate::metrics::render(reading.clone(), Format::Text);
        let request = export_request(reading, &resource(&identity), &identity.version, 1, 2);
        let exposed = parse_text(&text);
        let pushed = as_prometheus(&request);
        assert_eq!(exposed, pushed);
        // The comparison saw real families of the node and the hand-built values.
        assert_eq!(
            pushed.get("hearsay_requests_total{listener=\"web\"}"),
            Some(&0.0)
        );
        assert_eq!(
            pushed.get("hearsay_build_info{version=\"9.9.9\"}"),
            Some(&1.0)
        );
        assert_eq!(pushed.get("hearsay_wire_bytes_total{}"), Some(&12345.0));
        assert_eq!(
            pushed.get("hearsay_took_seconds_bucket{le=\"0.01\",pool=\"app\"}"),
            Some(&5.0)
        );
        assert_eq!(
            pushed.get("hearsay_took_seconds_bucket{le=\"inf\",pool=\"app\"}"),
            Some(&11.0)
        );
        assert_eq!(
            pushed.get("hearsay_took_seconds_sum{pool=\"other\"}"),
            Some(&1.375)
        );
        assert!(pushed.len() > 100, "{}", pushed.len());
        let _ = std::fs::remove_dir_all(data_dir);
    }

    #[test]
    fn points_are_cumulative_since_the_start_with_the_resource_of_the_node() {
        let identity = TraceIdentity {
            service_name: "lb".to_owned(),
            node_id: "n1".to_owned(),
            version: "1.2.3".to_owned(),
            cluster_id: Some("prod".to_owned()),
        };
        let request = export_request(
            hand_built(),
            &resource(&identity),
            &identity.version,
            100,
            200,
        );
        let resource_metrics = &request.resource_metrics[0];
        // The spans' resource: these and the SDK's own (`telemetry.sdk.*`).
        let attributes = labels_of(&resource_metrics.resource.as_ref().unwrap().attributes);
        for (key, value) in [
            ("service.name", "lb"),
            ("service.instance.id", "n1"),
            ("service.version", "1.2.3"),
            ("hearsay.cluster.id", "prod"),
        ] {
            assert!(
                attributes.contains(&(key.to_owned(), value.to_owned())),
                "{key}={value} in {attributes:?}"
            );
        }
        let scope = &resource_metrics.scope_metrics[0];
        assert_eq!(scope.scope.as_ref().unwrap().version, "1.2.3");
        let names: Vec<&str> = scope.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hearsay_things",
                "hearsay_level",
                "hearsay_wire",
                "hearsay_took"
            ]
        );
        let metric::Data::Histogram(histogram) = scope.metrics[3].data.as_ref().unwrap() else {
            panic!("not a histogram");
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, [0.001, 0.01, 0.1]);
        assert_eq!(point.bucket_counts, [2, 3, 5, 1]);
        assert_eq!((point.count, point.sum), (11, Some(1.375)));
        assert_eq!(
            (point.start_time_unix_nano, point.time_unix_nano),
            (100, 200)
        );

        // Alone (no cluster): no cluster id.
        let alone = resource(&TraceIdentity {
            cluster_id: None,
            ..identity
        });
        assert!(!alone
            .attributes
            .iter()
            .any(|a| a.key == "hearsay.cluster.id"));
    }

    #[test]
    fn a_failing_collector_is_warned_about_once_a_minute_with_the_count() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut failures = Failures::default();
        assert_eq!(
            failures.succeeded(),
            None,
            "nothing to say while all is well"
        );
        assert_eq!(
            failures.failed(at(0)),
            Some(1),
            "the first failure is said at once"
        );
        for second in 1..60 {
            assert_eq!(failures.failed(at(second)), None, "at {second} s");
        }
        assert_eq!(
            failures.failed(at(60)),
            Some(60),
            "a minute later, with the count"
        );
        assert_eq!(failures.failed(at(61)), None);
        assert_eq!(
            failures.succeeded(),
            Some(1),
            "recovery says what was left unsaid"
        );
        assert_eq!(failures.succeeded(), None);
        // A new outage a while later is said at once again.
        assert_eq!(failures.failed(at(200)), Some(1));
    }

    #[test]
    fn the_endpoint_is_the_configured_one_else_the_standard_variables() {
        let environment = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        let both: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://all:4317"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://metrics:4317/",
            ),
        ];
        assert_eq!(
            metrics_endpoint(Some("http://conf:4317"), environment(both)),
            Ok(Some("http://conf:4317".to_owned()))
        );
        assert_eq!(
            metrics_endpoint(None, environment(both)),
            Ok(Some("http://metrics:4317".to_owned()))
        );
        assert_eq!(
            metrics_endpoint(
                None,
                environment(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://all:4317")])
            ),
            Ok(Some("https://all:4317".to_owned()))
        );
        assert_eq!(
            metrics_endpoint(None, environment(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])),
            Ok(None)
        );
        let bad = metrics_endpoint(
            None,
            environment(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "all:4317")]),
        );
        assert!(bad
            .unwrap_err()
            .starts_with("OTEL_EXPORTER_OTLP_ENDPOINT=\"all:4317\" is not"));
    }

    #[test]
    fn a_push_never_waits_longer_than_its_interval() {
        assert_eq!(push_timeout(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(push_timeout(Duration::from_secs(15)), PUSH_TIMEOUT);
    }
}
