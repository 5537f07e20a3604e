//! W3C trace context (`traceparent`, `tracestate`) and the node's tracer.
//!
//! The proxy, the admin API and the cluster use the OpenTelemetry *API* only; the SDK (sampler,
//! batching, the OTLP exporter) lives in `hearsay-telemetry`, which installs the tracer here at
//! start. Without it (`telemetry.otlp_endpoint` unset) no span is built and a valid incoming
//! `traceparent` passes through unchanged; a malformed one is never forwarded.

use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use crate::random::random;

/// The W3C `traceparent` header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C `tracestate` header.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A `tracestate` longer than this is dropped (W3C: propagate at least 512 characters).
const MAX_TRACESTATE: usize = 512;

static TRACER: OnceLock<BoxedTracer> = OnceLock::new();
static REQUESTS: OnceLock<RequestTracing> = OnceLock::new();

/// Installs the node's tracer (once; `false` if one was installed already): its sampler decides
/// (parent-based, the live ratio for new traces). The admin API, the cluster and connection
/// events build their spans with it.
pub fn install(tracer: BoxedTracer) -> bool {
    TRACER.set(tracer).is_ok()
}

/// The node's tracer; `None` when traces are not exported.
pub fn tracer() -> Option<&'static BoxedTracer> {
    TRACER.get()
}

/// How proxied requests are traced: the request path decides itself whether a request is
/// recorded (parent-based, then `ratio`), so an unrecorded request costs no span at all, only
/// ids; `recording` records every span it is asked to build.
#[derive(Debug)]
pub struct RequestTracing {
    pub recording: BoxedTracer,
    pub ratio: std::sync::Arc<SampleRatio>,
}

/// Installs the request path's tracing (once; `false` if installed already).
pub fn install_requests(tracing: RequestTracing) -> bool {
    REQUESTS.set(tracing).is_ok()
}

pub(crate) fn requests() -> Option<&'static RequestTracing> {
    REQUESTS.get()
}

impl RequestTracing {
    /// Whether a new trace (no parent) is recorded: `ratio` of them, drawn at random.
    pub(crate) fn draw(&self) -> bool {
        let ratio = self.ratio.get();
        ratio >= 1.0
            || (ratio > 0.0 && (random() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < ratio)
    }
}

/// A new span id (never zero).
pub(crate) fn new_span_id() -> SpanId {
    SpanId::from(random() | 1)
}

/// A new trace id (never zero).
pub(crate) fn new_trace_id() -> TraceId {
    TraceId::from(u128::from(random()) << 64 | u128::from(random() | 1))
}

/// The share of new traces recorded, a live setting (`telemetry.sample_ratio`, replicated by the
/// cluster). Stored as the bits of an `f64`.
#[derive(Debug)]
pub struct SampleRatio(AtomicU64);

impl SampleRatio {
    pub fn new(ratio: f64) -> SampleRatio {
        SampleRatio(AtomicU64::new(clamp(ratio).to_bits()))
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, ratio: f64) {
        self.0.store(clamp(ratio).to_bits(), Ordering::Relaxed);
    }
}

fn clamp(ratio: f64) -> f64 {
    if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    }
}

/// Parses a `traceparent` value as W3C Trace Context level 1 says: version `00` exactly 55
/// characters; a later version at least that, its extra fields after a `-` ignored; lowercase
/// hex only; neither id all zeros; version `ff` invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&value[3..35])?;
    let span_id = hex_u64(&value[36..52])?;
    let flags = hex_u8(&value[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((
        TraceId::from(trace_id),
        SpanId::from(span_id),
        // Only the sampled flag is defined; others are not passed on as ours.
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
    ))
}

/// The `traceparent` value of `context` (version 00).
pub fn format_traceparent(context: &SpanContext) -> String {
    let bytes = traceparent_bytes(context);
    // Only ASCII hex digits and dashes.
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The `traceparent` value of `context` (version 00), written digit by digit (`format!` costs
/// a request more than everything else tracing does for it).
fn traceparent_bytes(context: &SpanContext) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    for (i, byte) in context.trace_id().to_bytes().into_iter().enumerate() {
        out[3 + 2 * i..5 + 2 * i].copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    for (i, byte) in context.span_id().to_bytes().into_iter().enumerate() {
        out[36 + 2 * i..38 + 2 * i].copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    let flags = context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8();
    out[53..55].copy_from_slice(&HEX_PAIRS[usize::from(flags)]);
    out
}

/// Every byte as two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// The length of a [`traceparent_line`].
pub(crate) const TRACEPARENT_LINE: usize = 13 + 55 + 2;

/// `traceparent: <value>\r\n`, as a request head carries it: the upstream head writer appends it
/// as it is (no header value to allocate, check and hash on every request).
pub(crate) fn traceparent_line(context: &SpanContext) -> [u8; TRACEPARENT_LINE] {
    let mut line = [0u8; TRACEPARENT_LINE];
    line[..13].copy_from_slice(b"traceparent: ");
    line[13..68].copy_from_slice(&traceparent_bytes(context));
    line[68..].copy_from_slice(b"\r\n");
    line
}

/// A trace id as 32 lowercase hex digits.
pub fn trace_id_hex(trace_id: TraceId) -> String {
    let mut hex = String::with_capacity(32);
    for byte in trace_id.to_bytes() {
        let [high, low] = HEX_PAIRS[usize::from(byte)];
        hex.push(char::from(high));
        hex.push(char::from(low));
    }
    hex
}

/// A trace context written as text (a `traceparent` value), as replicated entries carry it.
pub fn context_from_text(text: &str) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(text.as_bytes())?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

/// Takes the trace context out of a request's headers: both headers are removed (the caller
/// writes its own), and the context is returned when `traceparent` is valid (one line, W3C
/// format). A `tracestate` goes with a valid `traceparent` only, and only when well-formed.
pub fn extract(headers: &mut HeaderMap) -> Option<SpanContext> {
    if !headers.contains_key(&TRACEPARENT) {
        if headers.contains_key(&TRACESTATE) {
            headers.remove(&TRACESTATE);
        }
        return None;
    }
    let parent = {
        let mut lines = headers.get_all(&TRACEPARENT).iter();
        match (lines.next(), lines.next()) {
            (Some(value), None) => parse_traceparent(value.as_bytes().trim_ascii()),
            // Several traceparent lines: W3C says the context is invalid.
            _ => None,
        }
    };
    headers.remove(&TRACEPARENT);
    let state = if headers.contains_key(&TRACESTATE) {
        let state = parent.and_then(|_| trace_state(headers));
        headers.remove(&TRACESTATE);
        state
    } else {
        None
    };
    let (trace_id, span_id, flags) = parent?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        state.unwrap_or_default(),
    ))
}

/// The request's `tracestate` lines, joined; `None` if too long or malformed.
fn trace_state(headers: &HeaderMap) -> Option<TraceState> {
    let mut joined = String::new();
    for line in headers.get_all(&TRACESTATE) {
        let text = line.to_str().ok()?.trim();
        if text.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
        if joined.len() > MAX_TRACESTATE {
            return None;
        }
    }
    if joined.is_empty() {
        return None;
    }
    TraceState::from_str(&joined).ok()
}

/// Writes `context` into a request's headers (`traceparent`, and `tracestate` when it has any).
pub fn inject(headers: &mut HeaderMap, context: &SpanContext) {
    if !context.is_valid() {
        return;
    }
    if let Ok(value) = HeaderValue::from_bytes(&traceparent_bytes(context)) {
        headers.insert(TRACEPARENT.clone(), value);
    }
    inject_state(headers, context);
}

/// Writes the `tracestate` of `context` into a request's headers, when it has one.
pub(crate) fn inject_state(headers: &mut HeaderMap, context: &SpanContext) {
    if context.trace_state() == &TraceState::NONE {
        return;
    }
    let state = context.trace_state().header();
    if !state.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&state) {
            headers.insert(TRACESTATE.clone(), value);
        }
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

fn hex_u128(text: &[u8]) -> Option<u128> {
    text.iter().try_fold(0u128, |value, &byte| {
        Some(value << 4 | u128::from(hex_digit(byte)?))
    })
}

fn hex_u64(text: &[u8]) -> Option<u64> {
    text.iter().try_fold(0u64, |value, &byte| {
        Some(value << 4 | u64::from(hex_digit(byte)?))
    })
}

fn hex_u8(text: &[u8]) -> Option<u8> {
    text.iter()
        .try_fold(0u8, |value, &byte| Some(value << 4 | hex_digit(byte)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_parsed_as_w3c_says() {
        let (trace_id, span_id, flags) = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(
            format!("{trace_id:032x}"),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{span_id:016x}"), "00f067aa0ba902b7");
        assert!(flags.is_sampled());
        let unsampled = VALID.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes())
            .unwrap()
            .2
            .is_sampled());
        // A later version may carry more fields after a dash.
        let later = VALID.replacen("00-", "cc-", 1) + "-what-comes-next";
        assert!(parse_traceparent(later.as_bytes()).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn contexts_round_trip_through_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        headers.append(
            &TRACESTATE,
            HeaderValue::from_static("rojo=00f067aa0ba902b7"),
        );
        let context = extract(&mut headers).unwrap();
        assert!(headers.is_empty(), "both headers are taken out");
        assert!(context.is_remote());
        assert_eq!(
            context.trace_state().header(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        inject(&mut headers, &context);
        assert_eq!(headers.get(&TRACEPARENT).unwrap(), VALID);
        assert_eq!(
            headers.get(&TRACESTATE).unwrap(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        assert_eq!(
            format_traceparent(&context_from_text(VALID).unwrap()),
            VALID
        );
        assert_eq!(
            traceparent_line(&context).as_slice(),
            format!("traceparent: {VALID}\r\n").as_bytes()
        );
    }

    #[test]
    fn malformed_or_repeated_contexts_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static("00-xyz"));
        headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        assert!(extract(&mut headers).is_none());
        assert!(headers.is_empty(), "a malformed context is not forwarded");

        headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(extract(&mut headers).is_none());
        assert!(headers.is_empty());

        // A bad tracestate is dropped; the traceparent still holds.
        headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(&TRACESTATE, HeaderValue::from_static("not a list member"));
        let context = extract(&mut headers).unwrap();
        assert_eq!(context.trace_state().header(), "");
        assert!(headers.is_empty());

        // A tracestate without a traceparent is not forwarded either.
        headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        assert!(extract(&mut headers).is_none());
        assert!(headers.is_empty());
    }

    #[test]
    fn ids_are_never_zero_and_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let trace = new_trace_id();
            assert_ne!(trace, TraceId::INVALID);
            assert!(seen.insert(trace));
            assert_ne!(new_span_id(), SpanId::INVALID);
        }
        assert_eq!(
            trace_id_hex(TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736u128)),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn the_draw_records_its_share_of_new_traces() {
        let draws = |ratio: f64| {
            let tracing = RequestTracing {
                recording: BoxedTracer::new(
                    Box::new(opentelemetry::trace::noop::NoopTracer::new()),
                ),
                ratio: std::sync::Arc::new(SampleRatio::new(ratio)),
            };
            (0..100_000).filter(|_| tracing.draw()).count()
        };
        assert_eq!(draws(0.0), 0);
        assert_eq!(draws(1.0), 100_000);
        let tenth = draws(0.1);
        assert!((9_000..11_000).contains(&tenth), "{tenth}");
    }

    #[test]
    fn the_sample_ratio_stays_a_share() {
        let ratio = SampleRatio::new(0.25);
        assert_eq!(ratio.get(), 0.25);
        ratio.set(7.0);
        assert_eq!(ratio.get(), 1.0);
        ratio.set(f64::NAN);
        assert_eq!(ratio.get(), 0.0);
    }
}
