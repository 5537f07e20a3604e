//! What one request leaves behind: its spans (a server span for the request, a client span per
//! upstream attempt), the trace context each attempt carries to the backend, and the facts its
//! access log line holds (backend, attempts, upstream time).
//!
//! Cheap when unrecorded: with traces off the incoming context passes through untouched; with
//! traces on and the request not sampled, one non-recording span gives the context the backend
//! sees (its flags say "not sampled"), and no attribute is built.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, Method, Version};
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};

use super::Backend;
use crate::error::ForwardError;
use crate::registry::Connection;
use crate::trace;

/// One request's spans and upstream facts.
pub(crate) struct Trail {
    /// The context sent to the backend when no client span is recorded: the incoming one (traces
    /// off) or the unrecorded server span's.
    propagate: Option<SpanContext>,
    /// The recorded server span, in a context its client spans are children of.
    server: Option<Context>,
    /// The current (or last) attempt's client span, when recorded.
    client: Option<BoxedSpan>,
    /// The backend of the last attempt, kept when the access log wants it (`keep_backend`).
    pub(crate) backend: Option<Arc<Backend>>,
    pub(crate) keep_backend: bool,
    /// Upstream attempts made (0: none; 2 and more: retried).
    pub(crate) attempts: u32,
    /// From sending the request to the backend's response head, in nanoseconds.
    pub(crate) upstream_nanos: Option<u64>,
}

/// The facts of a request its server span is named and described by.
pub(crate) struct SpanFacts<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) version: Version,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) scheme: &'static str,
    pub(crate) listener: &'a Arc<str>,
    pub(crate) connection: &'a Connection,
    pub(crate) index: u64,
}

/// A span name from a method (semantic conventions: the method, or `HTTP` for one not known).
fn method_name(method: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "HTTP",
    })
}

/// The method as an attribute value (a known one without an allocation).
fn method_value(method: &Method) -> opentelemetry::Value {
    match method_name(method) {
        Cow::Borrowed("HTTP") => method.as_str().to_owned().into(),
        name => name.into(),
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_09 => "0.9",
        _ => "1.1",
    }
}

impl Trail {
    fn new(propagate: Option<SpanContext>, server: Option<Context>) -> Trail {
        Trail {
            propagate,
            server,
            client: None,
            backend: None,
            keep_backend: false,
            attempts: 0,
            upstream_nanos: None,
        }
    }

    /// Starts a request's trail from the context its client sent (`parent`, taken out of its
    /// headers).
    pub(crate) fn start(parent: Option<SpanContext>, facts: &SpanFacts<'_>) -> Trail {
        let Some(tracing) = trace::requests() else {
            return Trail::new(parent, None);
        };
        // Decided here, before any span: an unrecorded request gets ids, not a span.
        let record = match &parent {
            Some(parent) => parent.is_sampled(),
            None => tracing.draw(),
        };
        if !record {
            let (trace_id, state) = match &parent {
                Some(parent) => (parent.trace_id(), parent.trace_state().clone()),
                None => (trace::new_trace_id(), TraceState::NONE),
            };
            return Trail::new(
                Some(SpanContext::new(
                    trace_id,
                    trace::new_span_id(),
                    TraceFlags::default(),
                    false,
                    state,
                )),
                None,
            );
        }
        let tracer = &tracing.recording;
        let parent = match parent {
            Some(context) => Context::new().with_remote_span_context(context),
            None => Context::new(),
        };
        let connection = facts.connection;
        let client: opentelemetry::StringValue = Arc::<str>::from(
            connection
                .client_header
                .to_str()
                .map_or_else(|_| connection.client.ip().to_string(), str::to_owned),
        )
        .into();
        // Room for what is set later (status code, error type).
        let mut attributes = Vec::with_capacity(16);
        attributes.extend([
            KeyValue::new("http.request.method", method_value(facts.method)),
            KeyValue::new("url.path", bounded(facts.path).to_owned()),
            KeyValue::new("url.scheme", facts.scheme),
            KeyValue::new("client.address", client.clone()),
            KeyValue::new("network.peer.address", client),
            KeyValue::new("network.peer.port", i64::from(connection.client.port())),
            KeyValue::new("network.protocol.version", protocol_version(facts.version)),
            KeyValue::new("hearsay.listener", Arc::clone(facts.listener)),
            KeyValue::new("hearsay.connection.id", connection.id as i64),
            KeyValue::new(
                "hearsay.connection.request_index",
                i64::try_from(facts.index).unwrap_or(i64::MAX),
            ),
        ]);
        if let Some(host) = facts
            .headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
        {
            let (name, port) = split_host(host);
            attributes.push(KeyValue::new("server.address", name.to_owned()));
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(agent) = facts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|agent| agent.to_str().ok())
        {
            attributes.push(KeyValue::new(
                "user_agent.original",
                bounded(agent).to_owned(),
            ));
        }
        // Attributes given to the builder: the span takes the vector as it is.
        let span = tracer
            .span_builder(method_name(facts.method))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Trail::new(None, Some(parent.with_span(span)))
    }

    /// The trace this request is part of, when it has one.
    pub(crate) fn context(&self) -> Option<SpanContext> {
        match &self.server {
            Some(server) => Some(server.span().span_context().clone()),
            None => self.propagate.clone(),
        }
    }

    /// The id of the trace this request is part of (recorded or not), when it has one.
    pub(crate) fn trace_id(&self) -> Option<opentelemetry::trace::TraceId> {
        let trace_id = match &self.server {
            Some(server) => server.span().span_context().trace_id(),
            None => self.propagate.as_ref()?.trace_id(),
        };
        (trace_id != opentelemetry::trace::TraceId::INVALID).then_some(trace_id)
    }

    /// Whether the request's spans are recorded.
    pub(crate) fn recorded(&self) -> bool {
        self.server.is_some()
    }

    /// An attempt on `backend` begins: a client span when recorded, and the context the backend
    /// is sent: its `traceparent` line for the upstream head (and its `tracestate`, if any,
    /// written into the request's headers).
    pub(crate) fn attempt<B>(
        &mut self,
        request: &mut http::Request<B>,
        backend: &Arc<Backend>,
        pool: &str,
    ) -> Option<[u8; trace::TRACEPARENT_LINE]> {
        self.attempts += 1;
        if self.keep_backend {
            self.backend = Some(Arc::clone(backend));
        }
        let (Some(server), Some(tracing)) = (&self.server, trace::requests()) else {
            let context = self.propagate.as_ref()?;
            if self.attempts == 1 {
                trace::inject_state(request.headers_mut(), context);
            }
            return Some(trace::traceparent_line(context));
        };
        let tracer = &tracing.recording;
        let method = request.method();
        let (host, port) = split_host(&backend.address);
        let host: opentelemetry::StringValue = Arc::<str>::from(host).into();
        let path = bounded(request.uri().path());
        let mut url = String::with_capacity(7 + backend.address.len() + path.len());
        url.push_str("http://");
        url.push_str(&backend.address);
        url.push_str(path);
        // Room for what is set later (connection reused, status code, error type).
        let mut attributes = Vec::with_capacity(13);
        attributes.extend([
            KeyValue::new("http.request.method", method_value(method)),
            KeyValue::new("url.full", url),
            KeyValue::new("server.address", host.clone()),
            KeyValue::new("network.peer.address", host),
            KeyValue::new("network.protocol.version", "1.1"),
            KeyValue::new("hearsay.pool", pool.to_owned()),
            KeyValue::new("hearsay.backend", backend.address.clone()),
        ]);
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if self.attempts > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(self.attempts - 1),
            ));
        }
        let span = tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, server);
        if self.attempts == 1 {
            trace::inject_state(request.headers_mut(), span.span_context());
        }
        let line = trace::traceparent_line(span.span_context());
        self.client = Some(span);
        Some(line)
    }

    /// The attempt's upstream connection: a pooled one (`true`) or a new one.
    pub(crate) fn connection_reused(&mut self, reused: bool) {
        if let Some(client) = &mut self.client {
            client.set_attribute(KeyValue::new("hearsay.upstream.connection_reused", reused));
        }
    }

    /// The attempt failed with `error` (before a response head): its client span ends.
    pub(crate) fn attempt_failed(&mut self, error: &ForwardError) {
        if let Some(mut client) = self.client.take() {
            client.set_attribute(KeyValue::new("error.type", error.kind()));
            client.set_status(Status::error(error.to_string()));
            client.end();
        }
    }

    /// The backend's response head arrived after `waited` nanoseconds.
    pub(crate) fn answered(&mut self, status: http::StatusCode, waited: u64) {
        self.upstream_nanos = Some(waited);
        if let Some(client) = &mut self.client {
            client.add_event("hearsay.upstream.first_byte", Vec::new());
            client.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() {
                client.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
                client.set_status(Status::error(""));
            }
        }
    }

    /// The response to the client is written (or abandoned): the spans end. `error` names what
    /// went wrong when the proxy answered itself.
    pub(crate) fn finish(&mut self, status: Option<http::StatusCode>, error: Option<&'static str>) {
        if let Some(mut client) = self.client.take() {
            client.end();
        }
        let Some(server) = self.server.take() else {
            return;
        };
        let span = server.span();
        match status {
            Some(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                if status.is_server_error() {
                    span.set_attribute(KeyValue::new(
                        "error.type",
                        error.map_or_else(|| status.as_str().to_owned(), str::to_owned),
                    ));
                    span.set_status(Status::error(""));
                }
            }
            None => {
                span.set_attribute(KeyValue::new("error.type", "response_abandoned"));
                span.set_status(Status::error("the response was not written whole"));
            }
        }
        span.end();
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        // A trail dropped before `finish` (the request's future was dropped) still ends its spans.
        if self.server.is_some() || self.client.is_some() {
            self.finish(None, None);
        }
    }
}

/// A connection's event as a span of its own, ended at once: a child of `parent` (the trace of
/// the connection's last request) when there is one, else the root of a new trace, recorded as
/// the sampler decides. Nothing is built when traces are not exported.
pub(crate) fn connection_event(
    name: &'static str,
    parent: Option<&SpanContext>,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) {
    let Some(tracer) = trace::tracer() else {
        return;
    };
    let parent = match parent {
        Some(context) => Context::new().with_remote_span_context(context.clone()),
        None => Context::new(),
    };
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .start_with_context(tracer, &parent);
    if span.is_recording() {
        span.set_attributes(attributes());
    }
    span.end();
}

/// Attribute values taken from a request are cut to this many bytes: any client can ask for its
/// request to be recorded (a sampled `traceparent`), and the export queue holds thousands of
/// spans.
pub(crate) const MAX_ATTRIBUTE: usize = 1024;

/// `text` cut to [`MAX_ATTRIBUTE`] bytes, at a character boundary.
fn bounded(text: &str) -> &str {
    cut(text, MAX_ATTRIBUTE)
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `host:port` into the host and the port (IPv6 brackets removed).
fn split_host(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("abcdef", 3), "abc");
        assert_eq!(cut("aé", 2), "a", "é is two bytes");
        assert_eq!(bounded(&"x".repeat(5000)).len(), MAX_ATTRIBUTE);
    }

    #[test]
    fn hosts_and_ports_are_split() {
        assert_eq!(split_host("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host("example.com"), ("example.com", None));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("::1"), ("::1", None));
        assert_eq!(split_host("10.0.0.1:80"), ("10.0.0.1", Some(80)));
    }
}
