//! One SERVER span per admin RPC (`<service>/<method>`, e.g. `hearsay.admin.v1.Admin/UpdateListener`),
//! as a tower layer on the tonic server: it continues the caller's `traceparent` (grpcurl
//! `-H 'traceparent: 00-…-01'`), carries the OpenTelemetry gRPC attributes (`rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `client.address`) and ends when the
//! response is produced. The span's context goes to the handler in the request's extensions
//! ([`RpcSpan`]), so a cluster write made under it carries it to every node.
//!
//! Without a tracer (`hearsay_proxy::trace::tracer()` is `None`) no span is built: a request
//! costs one `OnceLock` read. Only the Admin service's calls have spans: an orchestrator's
//! `grpc.health.v1` probes and reflection lookups are not operators' actions (each would be a
//! trace of its own at a high sample ratio).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::KeyValue;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The admin RPC's span context, in the request's extensions for the handler.
#[derive(Debug, Clone)]
pub(crate) struct RpcSpan(pub(crate) SpanContext);

/// Wraps the admin server's services with [`RpcSpans`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RpcSpanLayer;

impl<S> tower_layer::Layer<S> for RpcSpanLayer {
    type Service = RpcSpans<S>;

    fn layer(&self, inner: S) -> RpcSpans<S> {
        RpcSpans { inner }
    }
}

/// A service that records a span per call when the node exports traces.
#[derive(Debug, Clone)]
pub(crate) struct RpcSpans<S> {
    inner: S,
}

impl<S, B, ResponseBody> tower_service::Service<http::Request<B>> for RpcSpans<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<ResponseBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let tracer = hearsay_proxy::trace::tracer().filter(|_| traced(request.uri().path()));
        let Some(tracer) = tracer else {
            return RpcFuture {
                inner: self.inner.call(request),
                span: None,
            };
        };
        let span = start(tracer, &mut request);
        request
            .extensions_mut()
            .insert(RpcSpan(span.span_context().clone()));
        RpcFuture {
            inner: self.inner.call(request),
            span: Some(span),
        }
    }
}

/// Whether a call on `path` has a span: the Admin service's (see the module's doc).
fn traced(path: &str) -> bool {
    rpc_name(path).0 == crate::pb::admin_server::SERVICE_NAME
}

/// The `(service, method)` of a gRPC path `/<service>/<method>`.
fn rpc_name(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// The caller's address, as tonic's connection info has it (plain TCP or TLS).
fn client_address<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// Starts the call's span, as a child of a valid incoming `traceparent` (the header is taken out
/// of the request: the handler never sees it).
fn start<B>(
    tracer: &'static opentelemetry::global::BoxedTracer,
    request: &mut http::Request<B>,
) -> opentelemetry::global::BoxedSpan {
    let parent = match hearsay_proxy::trace::extract(request.headers_mut()) {
        Some(remote) => opentelemetry::Context::new().with_remote_span_context(remote),
        None => opentelemetry::Context::new(),
    };
    let (service, method) = rpc_name(request.uri().path());
    let mut attributes = vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
    ];
    if let Some(address) = client_address(request) {
        attributes.push(KeyValue::new("client.address", address.ip().to_string()));
        attributes.push(KeyValue::new("client.port", i64::from(address.port())));
    }
    tracer
        .span_builder(format!("{service}/{method}"))
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent)
}

/// The gRPC status of a response: `grpc-status` in its headers (an error answered at once, as
/// tonic does) or else OK (a successful call sends its status in the trailers, after the
/// span ends).
fn grpc_status<B>(response: &http::Response<B>) -> i64 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// Codes that are the server's failure by OpenTelemetry's gRPC conventions (UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); the others are the
/// client's and leave the server span unset.
fn is_server_error(code: i64) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

pin_project_lite::pin_project! {
    /// The inner call's future; ends the span with the response.
    pub(crate) struct RpcFuture<F> {
        #[pin]
        inner: F,
        span: Option<opentelemetry::global::BoxedSpan>,
    }
}

impl<F, ResponseBody, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<ResponseBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(mut span) = this.span.take() {
            match &output {
                Ok(response) => {
                    let code = grpc_status(response);
                    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
                    if is_server_error(code) {
                        span.set_status(Status::error(format!("grpc-status {code}")));
                    }
                }
                Err(_) => span.set_status(Status::error("the service failed")),
            }
            span.end();
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_name_the_service_and_method() {
        assert_eq!(
            rpc_name("/hearsay.admin.v1.Admin/UpdateListener"),
            ("hearsay.admin.v1.Admin", "UpdateListener")
        );
        assert_eq!(rpc_name("/odd"), ("odd", ""));
        assert!(traced("/hearsay.admin.v1.Admin/UpdateListener"));
        assert!(!traced("/grpc.health.v1.Health/Check"));
        assert!(!traced(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
    }

    #[test]
    fn the_status_comes_from_the_headers_of_an_error_and_is_ok_otherwise() {
        let response = |status: Option<&str>| {
            let mut builder = http::Response::builder();
            if let Some(status) = status {
                builder = builder.header("grpc-status", status);
            }
            builder.body(()).unwrap()
        };
        assert_eq!(grpc_status(&response(None)), 0);
        assert_eq!(grpc_status(&response(Some("3"))), 3);
        assert_eq!(grpc_status(&response(Some("x"))), 0);
        assert!(is_server_error(13) && !is_server_error(3) && !is_server_error(0));
    }
}
