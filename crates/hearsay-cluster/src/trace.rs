//! Cluster changes traced across nodes. A write made under a sampled span (an admin RPC's) gets a
//! [`TraceNote`]: the span's `traceparent`, the write's stamp and its wall-clock time, gossiped
//! beside the entry (`t:<key>`, see [`crate::keys`]). Every node that applies the write, the
//! writer included, records a `hearsay.cluster.apply` span as a child of that context, with
//! the node, the stamp, what was applied and the delay since the write: one trace shows a change
//! reaching every node.
//!
//! Only the OpenTelemetry API is used here; without a tracer (`hearsay_proxy::trace::tracer()`)
//! nothing is recorded, and a write under no sampled span carries no note.

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::KeyValue;

use crate::hlc::Stamp;
use crate::keys::{parse_key, Target, TraceNote};
use crate::replicated::{ApplyError, Entry};

/// The name of the span a node records when it applies a traced write.
pub const APPLY_SPAN: &str = "hearsay.cluster.apply";

/// The note a write made under `context` carries: only a valid, sampled context (an unsampled
/// one would record nothing anywhere).
pub(crate) fn note_of(context: &SpanContext, stamp: &Stamp, written_ms: u64) -> Option<TraceNote> {
    (context.is_valid() && context.is_sampled()).then(|| TraceNote {
        stamp: stamp.clone(),
        traceparent: hearsay_proxy::trace::format_traceparent(context),
        written_ms,
    })
}

/// How a stamp reads in a span: `<unix ms>.<counter>@<node>`.
pub(crate) fn stamp_text(stamp: &Stamp) -> String {
    format!("{}.{}@{}", stamp.millis, stamp.counter, stamp.node)
}

/// Starts the apply span of `note`'s write of `entry` (`key`) on `node` at `now_ms`; `None`
/// without a tracer or a sampled context.
pub(crate) fn start_apply(
    note: &TraceNote,
    node: &str,
    key: &str,
    entry: &Entry,
    now_ms: u64,
) -> Option<BoxedSpan> {
    let tracer = hearsay_proxy::trace::tracer()?;
    let parent = hearsay_proxy::trace::context_from_text(&note.traceparent)?;
    if !parent.is_sampled() {
        return None;
    }
    let delay_ms = i64::try_from(now_ms.saturating_sub(note.written_ms)).unwrap_or(i64::MAX);
    let settings: Vec<String> = entry
        .fields_stamped(&note.stamp)
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let mut attributes = vec![
        KeyValue::new("hearsay.node", node.to_owned()),
        KeyValue::new("hearsay.cluster.key", key.to_owned()),
        KeyValue::new("hearsay.cluster.stamp", stamp_text(&note.stamp)),
        KeyValue::new("hearsay.cluster.writer", note.stamp.node.clone()),
        KeyValue::new("hearsay.cluster.delay_ms", delay_ms),
        KeyValue::new("hearsay.cluster.settings", settings.join(", ")),
    ];
    match parse_key(key) {
        Some(Target::Listener(name)) => {
            attributes.push(KeyValue::new("hearsay.listener", name.to_owned()))
        }
        Some(Target::Backend { pool, address }) => {
            attributes.push(KeyValue::new("hearsay.pool", pool.to_owned()));
            attributes.push(KeyValue::new("hearsay.backend", address.to_owned()));
        }
        Some(Target::Telemetry) | None => {}
    }
    let context = opentelemetry::Context::new().with_remote_span_context(parent);
    Some(
        tracer
            .span_builder(APPLY_SPAN)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(tracer, &context),
    )
}

/// Ends an apply span with the outcome: whether this node's data plane changed, or why the
/// entry does not apply here.
pub(crate) fn end_apply(span: Option<BoxedSpan>, outcome: &Result<bool, ApplyError>) {
    let Some(mut span) = span else {
        return;
    };
    match outcome {
        Ok(changed) => span.set_attribute(KeyValue::new("hearsay.cluster.changed", *changed)),
        Err(error) => span.set_status(Status::error(error.to_string())),
    }
    span.end();
}
