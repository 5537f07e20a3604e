//! Trace export: the OpenTelemetry SDK's tracer provider with a parent-based sampler that reads
//! the node's live sample ratio, and a bounded queue to an OTLP/gRPC exporter task.
//!
//! The queue is ours, not the SDK's `BatchSpanProcessor`, for two reasons: a full queue must
//! drop spans *and count them* (`hearsay_trace_spans_dropped_total`; the SDK's processor only
//! logs its count at shutdown), and the exporter runs as a task on the node's runtime, so the
//! flush at shutdown is awaited rather than blocking a runtime thread (a node may run on one).
//! Ending a span costs the request path one `try_send`; nothing it does waits on the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearsay_proxy::trace::SampleRatio;
use opentelemetry::trace::{Link, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingResult, SdkTracerProvider, ShouldSample, Span, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot};

/// Spans waiting for export at most; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export call at most.
const MAX_BATCH: usize = 512;
/// How long a span waits for companions before its batch goes out (`OTEL_BSP_SCHEDULE_DELAY`,
/// in milliseconds, overrides it).
const DEFAULT_DELAY: Duration = Duration::from_secs(1);
/// How long one export call may take (`OTEL_EXPORTER_OTLP_TIMEOUT` is read by the exporter).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning about failing exports per this long.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What the export has done since start, for the metrics.
#[derive(Debug, Default)]
pub struct SpanCounters {
    /// Spans handed to the exporter and accepted by the collector.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans lost with an export call that failed (collector unreachable, refused, timed out).
    pub failed: AtomicU64,
}

/// The node's counters of span export (zero when traces are off).
pub static SPANS: SpanCounters = SpanCounters {
    exported: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// Who the spans are from.
#[derive(Debug, Clone)]
pub struct TraceIdentity {
    pub service_name: String,
    pub node_id: String,
    pub version: String,
    pub cluster_id: Option<String>,
}

/// Where spans go: the config's endpoint, else the standard environment variables.
pub fn endpoint(config: &hearsay_config::TelemetryConfig) -> Option<String> {
    if let Some(endpoint) = &config.otlp_endpoint {
        return Some(endpoint.clone());
    }
    hearsay_config::otlp_endpoint_in_environment("TRACES").then(String::new)
}

/// Trace export while it runs.
#[derive(Debug)]
pub struct Traces {
    /// The sampling provider (admin, cluster, connection events) and the recording one
    /// (proxied requests, decided in the proxy).
    providers: [SdkTracerProvider; 2],
    flush: mpsc::Sender<oneshot::Sender<()>>,
    endpoint: String,
}

impl Traces {
    /// Starts exporting (on the current tokio runtime) and installs the tracer the proxy, the
    /// admin API and the cluster build spans with. `None` when no endpoint is configured.
    pub fn start(
        config: &hearsay_config::TelemetryConfig,
        identity: &TraceIdentity,
        ratio: Arc<SampleRatio>,
    ) -> anyhow::Result<Option<Traces>> {
        let Some(endpoint) = endpoint(config) else {
            return Ok(None);
        };
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        // An empty endpoint: the exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT itself.
        if !endpoint.is_empty() {
            builder = builder.with_endpoint(endpoint.clone());
        }
        // https:// (here or in the environment): TLS trusting the system's roots.
        let named = if endpoint.is_empty() {
            std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .unwrap_or_default()
        } else {
            endpoint.clone()
        };
        if named.trim().starts_with("https://") {
            builder = builder
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_enabled_roots());
        }
        let exporter = builder
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| anyhow::anyhow!("cannot set up the OTLP trace exporter: {error}"))?;
        let (traces, _) = Self::with_exporter(exporter, identity, ratio, schedule_delay());
        Ok(Some(Traces {
            endpoint: if endpoint.is_empty() {
                "from OTEL_EXPORTER_OTLP_ENDPOINT".to_owned()
            } else {
                endpoint
            },
            ..traces
        }))
    }

    fn with_exporter<E: SpanExporter + 'static>(
        mut exporter: E,
        identity: &TraceIdentity,
        ratio: Arc<SampleRatio>,
        delay: Duration,
    ) -> (Traces, tokio::task::JoinHandle<()>) {
        let resource = resource(identity);
        exporter.set_resource(&resource);
        let (spans, queue) = mpsc::channel(QUEUE_CAPACITY);
        let (flush, flushes) = mpsc::channel(4);
        let task = tokio::spawn(export(exporter, queue, flushes, delay));
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_sampler(Sampler::parent_based(LiveRatio(Arc::clone(&ratio))))
            .with_span_processor(Queue {
                spans: spans.clone(),
            })
            .build();
        // Proxied requests decide in the proxy whether they are recorded (an unrecorded one then
        // costs no span): this provider records what it is asked to, into the same queue.
        let recording = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(Sampler::AlwaysOn)
            .with_span_processor(Queue { spans })
            .build();
        let boxed = |provider: &SdkTracerProvider| {
            opentelemetry::global::BoxedTracer::new(Box::new(provider.tracer("hearsay")))
        };
        let installed = hearsay_proxy::trace::install(boxed(&provider))
            & hearsay_proxy::trace::install_requests(hearsay_proxy::trace::RequestTracing {
                recording: boxed(&recording),
                ratio,
            });
        if !installed {
            tracing::warn!("a tracer was installed already; keeping it");
        }
        (
            Traces {
                providers: [provider, recording],
                flush,
                endpoint: String::new(),
            },
            task,
        )
    }

    /// Where the spans go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends what is queued (bounded by `grace`) and stops the provider: spans ended later are
    /// not recorded.
    pub async fn shutdown(self, grace: Duration) {
        let (done, flushed) = oneshot::channel();
        if self.flush.send(done).await.is_ok()
            && tokio::time::timeout(grace, flushed).await.is_err()
        {
            tracing::warn!(?grace, "spans still unsent at shutdown; dropping them");
        }
        for provider in &self.providers {
            let _ = provider.shutdown();
        }
    }
}

fn schedule_delay() -> Duration {
    std::env::var("OTEL_BSP_SCHEDULE_DELAY")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_DELAY)
}

/// `service.name` (the config's unless `OTEL_SERVICE_NAME` is set), `service.instance.id` (the
/// node id), `service.version`, `hearsay.cluster.id`, and `OTEL_RESOURCE_ATTRIBUTES`.
pub(crate) fn resource(identity: &TraceIdentity) -> Resource {
    let mut builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|name| name.is_empty()) {
        builder = builder.with_service_name(identity.service_name.clone());
    }
    let mut attributes = vec![
        KeyValue::new("service.instance.id", identity.node_id.clone()),
        KeyValue::new("service.version", identity.version.clone()),
    ];
    if let Some(cluster) = &identity.cluster_id {
        attributes.push(KeyValue::new("hearsay.cluster.id", cluster.clone()));
    }
    builder.with_attributes(attributes).build()
}

/// The root sampler: a trace id ratio read from the live setting on each new trace. (A valid
/// parent's decision is followed by the parent-based sampler around it.)
#[derive(Debug, Clone)]
struct LiveRatio(Arc<SampleRatio>);

impl ShouldSample for LiveRatio {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        Sampler::TraceIdRatioBased(self.0.get()).should_sample(
            parent_context,
            trace_id,
            name,
            span_kind,
            attributes,
            links,
        )
    }
}

/// Ended spans into the bounded queue; a full queue drops the span and counts it.
#[derive(Debug)]
struct Queue {
    spans: mpsc::Sender<SpanData>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            SPANS.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // The flush is awaited by `Traces::shutdown`, never blocked on here.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The exporter task: a batch goes out when it is full or `delay` after its first span, and at
/// once on a flush request (everything queued then, before the answer).
async fn export<E: SpanExporter>(
    exporter: E,
    mut queue: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    delay: Duration,
) {
    let mut failures = Failures::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // When the batch being gathered goes out at the latest (set by its first span).
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let room = MAX_BATCH - batch.len();
        tokio::select! {
            received = queue.recv_many(&mut batch, room), if room > 0 => {
                if received == 0 {
                    // Every sender is gone: the provider was dropped.
                    if !batch.is_empty() {
                        send(&exporter, std::mem::take(&mut batch), &mut failures).await;
                    }
                    return;
                }
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + delay);
                if batch.len() >= MAX_BATCH {
                    send(&exporter, std::mem::take(&mut batch), &mut failures).await;
                    deadline = None;
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                send(&exporter, std::mem::take(&mut batch), &mut failures).await;
                deadline = None;
            }
            Some(done) = flushes.recv() => {
                while let Ok(span) = queue.try_recv() {
                    batch.push(span);
                    if batch.len() == MAX_BATCH {
                        send(&exporter, std::mem::take(&mut batch), &mut failures).await;
                    }
                }
                if !batch.is_empty() {
                    send(&exporter, std::mem::take(&mut batch), &mut failures).await;
                }
                deadline = None;
                let _ = done.send(());
            }
        }
    }
}

async fn send<E: SpanExporter>(exporter: &E, batch: Vec<SpanData>, failures: &mut Failures) {
    let count = batch.len() as u64;
    let result = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
    };
    match result {
        Ok(()) => {
            SPANS.exported.fetch_add(count, Ordering::Relaxed);
            failures.recovered();
        }
        Err(error) => {
            SPANS.failed.fetch_add(count, Ordering::Relaxed);
            failures.failed(count, &error);
        }
    }
}

/// Failing exports cost one warning per `WARN_EVERY`, with what was lost since the last.
#[derive(Debug, Default)]
struct Failures {
    last_warning: Option<Instant>,
    lost_since: u64,
}

impl Failures {
    fn failed(&mut self, spans: u64, error: &str) {
        self.lost_since += spans;
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            %error,
            spans_lost = self.lost_since,
            "cannot export spans to the OTLP collector (at most one line per {}s)",
            WARN_EVERY.as_secs()
        );
        self.last_warning = Some(now);
        self.lost_since = 0;
    }

    fn recovered(&mut self) {
        if self.last_warning.take().is_some() {
            tracing::info!(
                spans_lost = self.lost_since,
                "span export to the OTLP collector works again"
            );
            self.lost_since = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _};

    /// An exporter whose calls never end (a collector that accepts and never answers).
    #[derive(Debug)]
    struct Stuck;

    impl SpanExporter for Stuck {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_spans_and_counts_them_without_waiting() {
        let identity = TraceIdentity {
            service_name: "test".to_owned(),
            node_id: "n1".to_owned(),
            version: "0".to_owned(),
            cluster_id: None,
        };
        let (traces, _task) = Traces::with_exporter(
            Stuck,
            &identity,
            Arc::new(SampleRatio::new(1.0)),
            Duration::from_millis(1),
        );
        let tracer = traces.providers[0].tracer("test");
        // One batch is stuck in the exporter, the queue fills behind it, and the rest is
        // dropped: ending a span never waits.
        let before = SPANS.dropped.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let total = QUEUE_CAPACITY + MAX_BATCH + 100;
        for _ in 0..total {
            tracer.start("request").end();
            // Let the exporter task take its batch first.
            tokio::task::yield_now().await;
        }
        let dropped = SPANS.dropped.load(Ordering::Relaxed) - before;
        assert!(
            (100..=(total - QUEUE_CAPACITY) as u64).contains(&dropped),
            "dropped {dropped} of {total}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_live_ratio_decides_new_traces_and_a_parent_decides_its_children() {
        let ratio = Arc::new(SampleRatio::new(0.0));
        let sampler = Sampler::parent_based(LiveRatio(Arc::clone(&ratio)));
        let decide = |parent: Option<&Context>| {
            sampler
                .should_sample(
                    parent,
                    TraceId::from(0x0123_4567_89ab_cdef_0123_4567_89ab_cdefu128),
                    "GET",
                    &SpanKind::Server,
                    &[],
                    &[],
                )
                .decision
        };
        use opentelemetry::trace::{SpanContext, TraceContextExt as _};
        use opentelemetry_sdk::trace::SamplingDecision;
        assert_eq!(decide(None), SamplingDecision::Drop);
        ratio.set(1.0);
        assert_eq!(decide(None), SamplingDecision::RecordAndSample);
        let parent = |flags| {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(7u128),
                opentelemetry::trace::SpanId::from(9u64),
                flags,
                true,
                Default::default(),
            ))
        };
        ratio.set(0.0);
        assert_eq!(
            decide(Some(&parent(opentelemetry::trace::TraceFlags::SAMPLED))),
            SamplingDecision::RecordAndSample
        );
        ratio.set(1.0);
        assert_eq!(
            decide(Some(&parent(opentelemetry::trace::TraceFlags::default()))),
            SamplingDecision::Drop
        );
    }
}
